// Desktop sessions with the stock client, end to end (issue 9): virt-viewer's remote-viewer
// opens the brokered .vv on a virtual X screen (Xvfb) against a real libvirtd + QEMU
// (qemu:///system), through the broker's HTTP API, pool worker and host reconciler. Skips with a
// message where there is no qemu:///system, Xvfb or remote-viewer.
//
// A floating pool of one diskless VM (max_size 1, keep_on), client timeout 5 s. Checked:
//   - the viewer connects: the session is `connected` from libvirt's graphics events (the client
//     never reports), with the client's address, and stays connected well past the client
//     timeout; the screen shows the VM's console (a screenshot with more than two colours);
//   - the one-time ticket is retired once the viewer's SPICE channels are all in: the same .vv
//     used a second time is refused ("auth failure" in the second viewer's log) while the first
//     viewer stays connected;
//   - logoff drops the open viewer (its SPICE connections go, remote-viewer quits), the old
//     ticket is refused, and a second user launched right after gets the VM with no earlier
//     viewer attached, then connects with their own .vv.
// The diskless guest's SeaBIOS would reboot it after 60 s without a bootable device
// (rebootTimeout='-1' keeps it still). Domains are named atrium-sess-e2e-<pid>-* and removed at
// the end (tests/support/qemu_e2e.h).
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>

#include "api/daemon.h"
#include "support/desktop_client.h"
#include "support/qemu_e2e.h"
#include "support/test_support.h"

using namespace atrium;
using namespace atrium::testing;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr int kFirstPort = 5640;
constexpr int kLastPort = 5649;
constexpr const char* kFamily = "atrium-sess-e2e-";

void configure_broker(api::DaemonConfig& cfg) {
  fast_qemu_broker(cfg);
  cfg.pools.client_timeout = 5s;
}

std::string add_local_host(TestBroker& b, const json& extra = json::object()) {
  return add_qemu_host(b, kFirstPort, kLastPort, extra)["id"];
}

std::string diskless_template(const std::string& name) {
  return "<domain type='" + domain_type() + "'><name>" + name + "</name>"
         "<uuid>44444444-4444-4444-8444-444444444444</uuid>"
         "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
         "<os><type arch='x86_64' machine='pc'>hvm</type><bios rebootTimeout='-1'/></os>"
         "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
         "<devices><graphics type='spice' autoport='yes' listen='127.0.0.1'/>"
         "<video><model type='qxl'/></video></devices></domain>";
}

// Waits up to `limit` for `pred` on the established connection count to `port`.
template <typename F>
bool wait_connections(int port, F pred, std::chrono::milliseconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred(established_to(port))) return true;
    std::this_thread::sleep_for(100ms);
  }
  return pred(established_to(port));
}

}  // namespace

TEST_CASE("remote-viewer on qemu:///system: connected from graphics events, one-time ticket, logoff cuts the viewer") {
  auto q = open_qemu_system_or_skip();
  if (!q) return;
  std::string why;
  auto screen = VirtualScreen::start(&why);
  if (!screen) {
    MESSAGE("SKIPPED: " << why);
    return;
  }
  E2eGuard guard(*q->conn, kFamily);
  TempDir tmp;
  const std::string pool_name = guard.prefix() + "rv";
  TestBroker b(configure_broker);
  INFO("broker event log (last events):\n" << event_log(b));
  const std::string host_id = add_local_host(b);
  auto created = b.call("POST", "/v1/pools",
                        {{"name", pool_name},
                         {"kind", "floating"},
                         {"template", {{"domain_xml", diskless_template(pool_name + "-template")}}},
                         {"host_ids", {host_id}},
                         {"min_ready", 1},
                         {"max_size", 1},
                         {"power_policy", "keep_on"}});
  REQUIRE_MESSAGE(created.status == 201, created.body);
  std::string pool = created.json()["id"];
  auto [ann, ann_tok] = b.user("sess-e2e-ann");
  auto [bob, bob_tok] = b.user("sess-e2e-bob");
  for (const auto& u : {ann, bob}) {
    REQUIRE(b.call("POST", "/v1/pools/" + pool + "/entitlements", {{"user_id", u}}).status == 201);
  }
  poll(b, "/v1/pools/" + pool, [](const json& j) { return j["size"]["ready"] == 1; }, 90s);

  // ---- ann launches and opens the .vv with remote-viewer ---------------------------------
  auto l1 = b.call("POST", "/v1/launches", {{"pool_id", pool}}, ann_tok);
  REQUIRE_MESSAGE(l1.status == 201, l1.body);
  json launch = l1.json();
  std::string sid = launch["session_id"], vv = launch["connection_file"];
  int port = launch["port"];
  INFO("launch: session " << sid << " port " << port);
  RemoteViewer viewer(*screen, vv, tmp.str(), "ann");
  json s = poll(b, "/v1/sessions/" + sid, [](const json& j) { return j["state"] == "connected"; }, 30s);
  INFO("viewer log:\n" << viewer.log());
  CHECK(s["display_signal"] == true);
  CHECK(s["client_address"] == "127.0.0.1");
  CHECK(viewer.wait_log("display-2:0", 10000));  // the display channel is up
  // The ticket is retired once all of the viewer's channels are in (found from the events).
  s = poll(b, "/v1/sessions/" + sid, [](const json& j) { return j["ticket_retired"] == true; }, 15s);
  int channels = established_to(port);
  CHECK(channels >= 2);

  // Past the client timeout (5 s here; 90 s by default): still connected, viewer still on.
  std::this_thread::sleep_for(8s);
  s = b.call("GET", "/v1/sessions/" + sid).json();
  CHECK(s["state"] == "connected");
  CHECK(viewer.running());
  CHECK(established_to(port) == channels);
  std::string shot = tmp.str() + "/ann.png";
  if (screen->screenshot(shot)) {
    CHECK_MESSAGE(VirtualScreen::colours(shot) > 2, "the screen shows no VM console: " << shot);
  } else {
    MESSAGE("no screenshot: ImageMagick's import is missing");
  }

  // ---- the ticket was one-time -----------------------------------------------------------
  {
    RemoteViewer again(*screen, vv, tmp.str(), "ann-again");
    CHECK_MESSAGE(again.wait_log("auth failure", 15000), again.log());
    again.kill();
  }
  CHECK(viewer.running());
  CHECK(b.call("GET", "/v1/sessions/" + sid).json()["state"] == "connected");

  // ---- logoff cuts the viewer; bob gets a clean VM ---------------------------------------
  REQUIRE(b.call("DELETE", "/v1/sessions/" + sid, nullptr, ann_tok).status == 204);
  CHECK_MESSAGE(wait_connections(port, [](int n) { return n == 0; }, 15s),
                "viewer connections still open after logoff: " << established_to(port));
  CHECK_MESSAGE(viewer.wait_exit(15000), "remote-viewer still runs after logoff:\n" << viewer.log());
  {
    RemoteViewer stale(*screen, vv, tmp.str(), "ann-stale");
    CHECK_MESSAGE(stale.wait_log("auth failure", 15000), stale.log());
    stale.kill();
  }
  auto l2 = b.call("POST", "/v1/launches", {{"pool_id", pool}}, bob_tok);
  REQUIRE_MESSAGE(l2.status == 201, l2.body);
  json bobs = l2.json();
  CHECK(bobs["vm_id"] == launch["vm_id"]);  // the pool has one VM
  int bob_port = bobs["port"];
  CHECK(established_to(bob_port) == 0);  // nobody else's viewer is on it
  json vm = b.call("GET", "/v1/vms/" + bobs["vm_id"].get<std::string>()).json();
  CHECK(vm["desired_state"] == "running");
  RemoteViewer bview(*screen, bobs["connection_file"], tmp.str(), "bob");
  json bs = poll(b, "/v1/sessions/" + bobs["session_id"].get<std::string>(),
                 [](const json& j) { return j["state"] == "connected"; }, 30s);
  CHECK(bs["display_signal"] == true);
  bview.kill();
  // Closing the viewer disconnects the session (the display says so).
  poll(b, "/v1/sessions/" + bobs["session_id"].get<std::string>(),
       [](const json& j) { return j["state"] == "disconnected"; }, 30s);
  auto del = b.call("DELETE", "/v1/pools/" + pool);
  CHECK(del.status == 202);
}

// SPICE over TLS: a host added with spice_tls (the test CA that tools/start_libvirtd.sh made in
// libvirt's SPICE certificate dir, with spice_tls = 1 in qemu.conf). The member listens on a TLS
// port only; the .vv carries tls-port=, ca= and host-subject=; remote-viewer verifies the host
// ("subjects match") and shows the display; a .vv with another subject is refused by the client.
TEST_CASE("remote-viewer over SPICE TLS on qemu:///system: the .vv lets the client verify the host") {
  auto q = open_qemu_system_or_skip();
  if (!q) return;
  const std::string dir = "/etc/pki/libvirt-spice";
  std::string ca = shell("cat " + dir + "/ca-cert.pem");
  std::string subject = shell("openssl x509 -in " + dir + "/server-cert.pem -noout -subject -nameopt RFC2253");
  bool tls_on = shell("grep -c '^spice_tls = 1' /etc/libvirt/qemu.conf") != "0";
  if (ca.find("BEGIN CERTIFICATE") == std::string::npos || subject.rfind("subject=", 0) != 0 || !tls_on) {
    MESSAGE("SKIPPED: no SPICE TLS test CA in " << dir << " or spice_tls is off (tools/start_libvirtd.sh sets both up)");
    return;
  }
  // RFC 2253 lists the most specific part first; virt-viewer wants the certificate's order.
  std::vector<std::string> parts;
  std::string rest = subject.substr(8);
  for (size_t at; (at = rest.find(',')) != std::string::npos; rest = rest.substr(at + 1)) parts.push_back(rest.substr(0, at));
  parts.push_back(rest);
  std::string host_subject;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) host_subject += (host_subject.empty() ? "" : ",") + *it;
  std::string why;
  auto screen = VirtualScreen::start(&why);
  if (!screen) {
    MESSAGE("SKIPPED: " << why);
    return;
  }
  E2eGuard guard(*q->conn, kFamily);
  TempDir tmp;
  const std::string pool_name = guard.prefix() + "tls";
  TestBroker b(configure_broker);
  INFO("broker event log (last events):\n" << event_log(b));
  std::string host_id =
      add_local_host(b, {{"spice_tls", {{"ca_cert", ca + "\n"}, {"host_subject", host_subject}}}});
  json host = b.call("GET", "/v1/hosts/" + host_id).json();
  CHECK(host["spice_tls"]["host_subject"] == host_subject);
  auto created = b.call("POST", "/v1/pools",
                        {{"name", pool_name},
                         {"kind", "floating"},
                         {"template", {{"domain_xml", diskless_template(pool_name + "-template")}}},
                         {"host_ids", {host_id}},
                         {"min_ready", 1},
                         {"max_size", 1}});
  REQUIRE_MESSAGE(created.status == 201, created.body);
  std::string pool = created.json()["id"];
  auto [uid, tok] = b.user("sess-e2e-tls");
  REQUIRE(b.call("POST", "/v1/pools/" + pool + "/entitlements", {{"user_id", uid}}).status == 201);
  poll(b, "/v1/pools/" + pool, [](const json& j) { return j["size"]["ready"] == 1; }, 90s);
  auto l = b.call("POST", "/v1/launches", {{"pool_id", pool}}, tok);
  REQUIRE_MESSAGE(l.status == 201, l.body);
  json launch = l.json();
  CHECK(launch["tls"] == true);
  std::string vv = launch["connection_file"];
  int port = launch["port"];
  CHECK(vv.find("tls-port=" + std::to_string(port) + "\n") != std::string::npos);
  CHECK(vv.find("\nport=") == std::string::npos);
  CHECK(vv.find("ca=-----BEGIN CERTIFICATE-----\\n") != std::string::npos);
  CHECK(vv.find("host-subject=" + host_subject + "\n") != std::string::npos);
  std::string vm_name = b.call("GET", "/v1/vms/" + launch["vm_id"].get<std::string>()).json()["name"];
  std::string xml = virsh("dumpxml " + vm_name);
  CHECK_MESSAGE(xml.find("tlsPort='" + std::to_string(port) + "'") != std::string::npos, xml);
  CHECK_MESSAGE(xml.find("defaultMode='secure'") != std::string::npos, xml);
  // A .vv naming another subject: the client refuses the host (before sending the ticket).
  std::string forged = vv;
  forged.replace(forged.find("host-subject="), std::string("host-subject=").size() + host_subject.size(),
                 "host-subject=C=XX,O=Someone else,CN=127.0.0.1");
  {
    RemoteViewer bad(*screen, forged, tmp.str(), "forged");
    CHECK_MESSAGE(bad.wait_log("verification failed", 15000), bad.log());
    bad.kill();
  }
  RemoteViewer viewer(*screen, vv, tmp.str(), "tls");
  INFO("viewer log:\n" << viewer.log());
  CHECK(viewer.wait_log("subjects match", 15000));
  CHECK(viewer.wait_log("display-2:0", 15000));
  json s = poll(b, "/v1/sessions/" + launch["session_id"].get<std::string>(),
                [](const json& j) { return j["state"] == "connected"; }, 30s);
  CHECK(s["display_signal"] == true);
  viewer.kill();
  CHECK(b.call("DELETE", "/v1/pools/" + pool).status == 202);
}

// QEMU refuses a template at definition ("No PCI buses available": a qxl video card on the
// ISA-only machine type). The pool is refused at creation with libvirt's message, not at a
// user's launch.
TEST_CASE("a template QEMU refuses is a 400 at pool creation, with libvirt's message") {
  auto q = open_qemu_system_or_skip();
  if (!q) return;
  E2eGuard guard(*q->conn, kFamily);
  TestBroker b(configure_broker);
  const std::string host_id = add_local_host(b);
  std::string broken = "<domain type='" + domain_type() + "'><name>" + guard.prefix() + "isa</name>"
                       "<memory unit='MiB'>64</memory><os><type arch='x86_64' machine='isapc'>hvm</type></os>"
                       "<devices><video><model type='qxl'/></video></devices></domain>";
  auto r = b.call("POST", "/v1/pools", {{"name", guard.prefix() + "isa"}, {"kind", "floating"},
                                        {"template", {{"domain_xml", broken}}}, {"host_ids", {host_id}},
                                        {"max_size", 1}});
  CHECK(r.status == 400);
  CHECK(r.json()["reason"] == "invalid_template");
  CHECK_MESSAGE(r.json()["detail"].get<std::string>().find("No PCI buses available") != std::string::npos, r.body);
  CHECK(virsh("list --all --name").find("atrium-validate-") == std::string::npos);
}

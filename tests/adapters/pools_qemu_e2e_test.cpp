// End to end for desktop pools on a real libvirtd + QEMU (qemu:///system), through the broker's
// HTTP API, its pool worker and its host reconciler. Start the daemon with
// tools/start_libvirtd.sh (as root); without a reachable qemu:///system the test prints why and
// passes without checking anything.
//
// Through the API: add host qemu:///system with display ports 5620-5639 (clear of 5599 and
// 5697, which the other QEMU e2e tests use), create a floating pool of two diskless 64 MiB
// standby VMs (min_ready 0, min_standby 2, max_size 2, power_policy shutdown_on_logoff) from a
// template domain XML, entitle a user and wait until both are defined on the host. Launch as the
// user: the VM is defined with its allocated SPICE port and the ticket as passwd, then started.
// Checked for real:
//   - the launch answer and its .vv connection file agree (host, port, ticket);
//   - `virsh domstate` says running, `virsh domdisplay --include-password` and
//     `virsh dumpxml --security-info` show the port and the ticket as passwd;
//   - SPICE: the link handshake answers "REDQ", and the ticket really authenticates: the
//     server's RSA public key from the link reply encrypts the ticket (RSA-OAEP via the
//     `openssl` command, as SPICE clients do) and the server answers SPICE_LINK_ERR_OK (0); a
//     wrong ticket gets SPICE_LINK_ERR_PERMISSION_DENIED (7). Without the `openssl` command
//     only the "REDQ" reply and the virsh views of the password are checked.
//   - a second launch reconnects (200, same session and VM) and sets a fresh ticket on the
//     running VM (virDomainUpdateDeviceFlags): the new ticket authenticates, the old one not.
// Then logoff (DELETE /v1/sessions/{id}): the policy shuts the VM down; the diskless guest
// ignores ACPI, so the reconciler destroys it after its (here 3 s) shutdown timeout; `virsh
// domstate` must say "shut off" within 60 s. Finally the pool is deleted and its domains must be
// gone from the host. Every domain and storage pool named atrium-pool-e2e-<pid>-* is removed at
// the end, also on failure, and so are leftovers of an earlier killed run (see
// tests/support/qemu_e2e.h). (The family is not atrium-e2e-*: that is libvirt_qemu_e2e_test's,
// and ctest may run both at once.) On a failed check the broker's event log is printed.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>

#include "api/daemon.h"
#include "support/qemu_e2e.h"
#include "support/test_support.h"

using namespace atrium;
using namespace atrium::testing;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr int kFirstPort = 5620;
constexpr int kLastPort = 5639;

constexpr const char* kFamily = "atrium-pool-e2e-";

void check_vv(const json& launch) {
  std::string vv = launch["connection_file"];
  std::string host = launch["host"], ticket = launch["ticket"];
  int port = launch["port"];
  CHECK(vv.rfind("[virt-viewer]\n", 0) == 0);
  CHECK(vv.find("type=spice\n") != std::string::npos);
  CHECK(vv.find("host=" + host + "\n") != std::string::npos);
  CHECK(vv.find("port=" + std::to_string(port) + "\n") != std::string::npos);
  CHECK(vv.find("password=" + ticket + "\n") != std::string::npos);
  CHECK(vv.find("delete-this-file=1\n") != std::string::npos);
}

}  // namespace

TEST_CASE("desktop pool on qemu:///system: provision, launch with a SPICE ticket, logoff powers off, delete") {
  auto q = open_qemu_system_or_skip();
  if (!q) return;
  E2eGuard guard(*q->conn, kFamily);
  // The pool name is the prefix of its VMs' names (domain name = pool name + "-" + 8 hex).
  const std::string pool_name = guard.prefix() + "spice";
  const std::string type = domain_type();
  // Name and uuid are replaced per member; the graphics element is replaced by the broker's
  // SPICE display (port, passwd, listen = PoolWorkerOptions::spice_listen, set to 127.0.0.1).
  const std::string tmpl =
      "<domain type='" + type + "'><name>" + pool_name + "-template</name>"
      "<uuid>22222222-2222-4222-8222-222222222222</uuid>"
      "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
      "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
      "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
      "<devices><graphics type='spice' autoport='yes' listen='127.0.0.1'/>"
      "<video><model type='qxl'/></video></devices></domain>";

  TestBroker b([](api::DaemonConfig& cfg) {
    cfg.hosts.resync_interval = 1s;
    cfg.hosts.poll_interval = 20ms;
    cfg.hosts.shutdown_timeout = 3s;  // the diskless guest ignores ACPI: destroy after 3 s
    cfg.hosts.connect_timeout = 30s;
    cfg.pools.interval = 100ms;
    cfg.pools.spice_listen = "127.0.0.1";
  });
  // Printed with any failed check only (doctest evaluates INFO lazily); MESSAGE would print it
  // too, so the launch answers go into INFO as well.
  INFO("broker event log (last events):\n" << event_log(b));

  auto add = b.call("POST", "/v1/hosts", {{"name", "local-qemu"}, {"uri", "qemu:///system"},
                                          {"display_ports", {{"first", kFirstPort}, {"last", kLastPort}}}});
  REQUIRE_MESSAGE(add.status == 202, add.body);
  std::string host_id = add.json()["host_id"];
  json host = poll(b, "/v1/hosts/" + host_id, [](const json& j) { return j["state"] == "up"; });
  CHECK(host["address"] == "127.0.0.1");

  auto created = b.call("POST", "/v1/pools",
                        {{"name", pool_name},
                         {"kind", "floating"},
                         {"template", {{"domain_xml", tmpl}}},
                         {"host_ids", {host_id}},
                         {"min_ready", 0},
                         {"min_standby", 2},
                         {"max_size", 2},
                         {"power_policy", "shutdown_on_logoff"}});
  REQUIRE_MESSAGE(created.status == 201, created.body);
  std::string pool = created.json()["id"];
  auto [uid, tok] = b.user("pool-e2e-ann");
  REQUIRE(b.call("POST", "/v1/pools/" + pool + "/entitlements", {{"user_id", uid}}).status == 201);

  // Both members provisioned: defined shut off on the host (standby), names from the pool.
  json p = poll(b, "/v1/pools/" + pool, [](const json& j) { return j["size"]["standby"] == 2; }, 90s);
  CHECK(p["size"]["total"] == 2);
  json members = b.call("GET", "/v1/pools/" + pool + "/vms").json()["items"];
  REQUIRE(members.size() == 2);
  for (const auto& m : members) {
    std::string n = m["name"];
    CHECK(n.rfind(pool_name + "-", 0) == 0);
    CHECK(m["state"] == "ready");
    CHECK(virsh("domstate " + n) == "shut off");
  }

  // Launch: a standby VM is defined with its allocated port and the ticket, then started.
  auto l1 = b.call("POST", "/v1/launches", {{"pool_id", pool}}, tok);
  REQUIRE_MESSAGE(l1.status == 201, l1.body);
  json launch = l1.json();
  INFO("launch: " << [&] { json c = launch; c.erase("connection_file"); return c.dump(); }());
  std::string sid = launch["session_id"], vm_id = launch["vm_id"], ticket = launch["ticket"];
  int port = launch["port"];
  CHECK(launch["protocol"] == "spice");
  CHECK(launch["host"] == "127.0.0.1");
  CHECK(port >= kFirstPort);
  CHECK(port <= kLastPort);
  CHECK(ticket.size() == 24);
  CHECK(launch["ticket_applied"] == true);
  check_vv(launch);
  std::string name;
  for (const auto& m : members) {
    if (m["vm_id"] == vm_id) name = m["name"];
  }
  REQUIRE(!name.empty());
  CHECK(virsh("domstate " + name) == "running");
  // libvirt's view of the display: the allocated port and the ticket as passwd.
  std::string display = virsh("domdisplay --include-password " + name);
  CHECK_MESSAGE(display.find(":" + std::to_string(port)) != std::string::npos, display);
  CHECK_MESSAGE(display.find(ticket) != std::string::npos, display);
  std::string xml = virsh("dumpxml --security-info " + name);
  CHECK_MESSAGE(xml.find("port='" + std::to_string(port) + "'") != std::string::npos, xml);
  CHECK_MESSAGE(xml.find("passwd='" + ticket + "'") != std::string::npos, xml);
  CHECK_MESSAGE(xml.find("passwdValidTo=") != std::string::npos, xml);

  // SPICE on the port: the link reply, then the ticket authenticates and a wrong one does not.
  check_spice_ticket(port, ticket, "wrong-ticket-000000000000");

  // A second launch reconnects and sets a fresh ticket on the running VM.
  auto l2 = b.call("POST", "/v1/launches", {{"pool_id", pool}}, tok);
  REQUIRE_MESSAGE(l2.status == 200, l2.body);
  json again = l2.json();
  INFO("reconnect: " << [&] { json c = again; c.erase("connection_file"); return c.dump(); }());
  CHECK(again["session_id"] == sid);
  CHECK(again["vm_id"] == vm_id);
  CHECK(again["reconnected"] == true);
  CHECK(again["port"] == port);
  std::string ticket2 = again["ticket"];
  CHECK(ticket2 != ticket);
  check_vv(again);
  CHECK_MESSAGE(again["ticket_applied"] == true, again.value("ticket_note", ""));
  if (again["ticket_applied"] == true) {
    xml = virsh("dumpxml --security-info " + name);
    CHECK_MESSAGE(xml.find("passwd='" + ticket2 + "'") != std::string::npos, xml);
    check_spice_ticket(port, ticket2, ticket);  // the old ticket no longer authenticates
  }

  // Logoff: the session ends, the floating VM is freed and, by policy, powered off (shutdown,
  // ignored by the diskless guest, then destroy after the reconciler's shutdown timeout).
  auto off = b.call("DELETE", "/v1/sessions/" + sid, nullptr, tok);
  CHECK_MESSAGE(off.status == 204, off.body);
  json s = b.call("GET", "/v1/sessions/" + sid, nullptr, tok).json();
  CHECK(s["state"] == "ended");
  CHECK(s["end_reason"] == "logoff");
  std::string last;
  bool stopped = wait_domstate(name, "shut off", 60s, &last);
  CHECK_MESSAGE(stopped, "virsh domstate " << name << " still says '" << last << "' 60 s after logoff");
  json vm = poll(b, "/v1/vms/" + vm_id, [](const json& j) { return j["observed_state"] == "shut_off"; });
  CHECK(vm["desired_state"] == "shut_off");
  json freed = poll(b, "/v1/pools/" + pool, [](const json& j) { return j["size"]["standby"] == 2; });
  CHECK(freed["size"]["in_use"] == 0);
  for (const auto& m : b.call("GET", "/v1/pools/" + pool + "/vms").json()["items"]) {
    CHECK(m["assigned_user_id"].is_null());
    CHECK(virsh("domstate " + m["name"].get<std::string>()) == "shut off");  // nothing restarted it
  }

  // Delete the pool: its members are removed from the host, then the pool is gone.
  auto del = b.call("DELETE", "/v1/pools/" + pool);
  CHECK(del.status == 202);
  bool gone = false;
  for (int i = 0; i < 600 && !gone; ++i) {
    gone = b.call("GET", "/v1/pools/" + pool).status == 404;
    if (!gone) std::this_thread::sleep_for(100ms);
  }
  CHECK_MESSAGE(gone, "pool still there 60 s after DELETE: " << b.call("GET", "/v1/pools/" + pool).body);
  std::string left = virsh("list --all --name");
  for (const auto& m : members) {
    CHECK_MESSAGE(left.find(m["name"].get<std::string>()) == std::string::npos, left);
  }
}

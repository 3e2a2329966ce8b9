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
// gone from the host. A second case runs a pool whose members boot from qcow2 overlays over a
// base volume in a temporary dir storage pool (described at it). Every domain and storage pool
// named atrium-pool-e2e-<pid>-* is removed at the end, also on failure, and so are leftovers of
// an earlier killed run (see tests/support/qemu_e2e.h). (The family is not atrium-e2e-*: that is
// libvirt_qemu_e2e_test's, and ctest may run both at once.) On a failed check the broker's event
// log is printed.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

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

void configure_broker(api::DaemonConfig& cfg) { fast_qemu_broker(cfg); }

// Deletes the pool through the API (202) and waits up to 60 s until it is gone (404).
void delete_pool_and_wait(TestBroker& b, const std::string& pool) {
  auto del = b.call("DELETE", "/v1/pools/" + pool);
  CHECK(del.status == 202);
  bool gone = false;
  for (int i = 0; i < 600 && !gone; ++i) {
    gone = b.call("GET", "/v1/pools/" + pool).status == 404;
    if (!gone) std::this_thread::sleep_for(100ms);
  }
  CHECK_MESSAGE(gone, "pool still there 60 s after DELETE: " << b.call("GET", "/v1/pools/" + pool).body);
}

// Adds qemu:///system with display ports kFirstPort-kLastPort through the API; its id once up.
std::string add_local_host(TestBroker& b) {
  json host = add_qemu_host(b, kFirstPort, kLastPort);
  CHECK(host["address"] == "127.0.0.1");
  return host["id"];
}

// The file of the first <disk>'s top <source> in a domain XML ("" if none).
std::string first_disk_source(const std::string& xml) {
  auto d = xml.find("<disk");
  auto e = xml.find("</disk>", d);
  if (d == std::string::npos || e == std::string::npos) return {};
  const std::string key = "<source file='";
  auto src = xml.find(key, d);
  if (src == std::string::npos || src > e) return {};
  auto from = src + key.size();
  return xml.substr(from, xml.find('\'', from) - from);
}

// The guest device of the running domain that uses the image `path`, as HMP `info block` names
// it: "<node>: <path> (<format>)" followed by "Attached to: <qdev path>".
std::string block_device(const std::string& domain, const std::string& path) {
  std::string info = virsh("qemu-monitor-command " + domain + " --hmp 'info block'");
  auto at = info.find(": " + path + " (");
  if (at == std::string::npos) return {};
  const std::string key = "Attached to:";
  auto att = info.find(key, at);
  if (att == std::string::npos || info.find(": /", at + 1) < att) return {};
  auto from = info.find_first_not_of(' ', att + key.size());
  return info.substr(from, info.find_first_of("\r\n", from) - from);
}

// Whether the events of a stream answer include one of `type` for which `pred` holds.
template <typename F>
bool has_event(const json& stream, const std::string& type, F pred) {
  for (const auto& e : stream["items"]) {
    if (e["type"] == type && pred(e["data"])) return true;
  }
  return false;
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

  TestBroker b(configure_broker);
  // Printed with any failed check only (doctest evaluates INFO lazily); MESSAGE would print it
  // too, so the launch answers go into INFO as well.
  INFO("broker event log (last events):\n" << event_log(b));
  const std::string host_id = add_local_host(b);

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
  const json after = b.call("GET", "/v1/pools/" + pool + "/vms").json();  // outlives the loop
  for (const auto& m : after["items"]) {
    CHECK(m["assigned_user_id"].is_null());
    CHECK(virsh("domstate " + m["name"].get<std::string>()) == "shut off");  // nothing restarted it
  }

  // Delete the pool: its members are removed from the host, then the pool is gone.
  delete_pool_and_wait(b, pool);
  std::string left = virsh("list --all --name");
  for (const auto& m : members) {
    CHECK_MESSAGE(left.find(m["name"].get<std::string>()) == std::string::npos, left);
  }
}

// A desktop pool whose members boot from their own qcow2 overlay over a base volume. A
// transient dir storage pool atrium-pool-e2e-<pid>-disks in a temp directory holds a 16 MiB
// qcow2 base; a floating pool (max_size 1, min_ready 1, refresh_on_logoff) clones a template
// domain defined (shut off) on the host with one virtio disk whose file is the base: the pool
// names it (template.domain_name), so its definition is exported from QEMU and its disk becomes
// the base of the members' overlays. Checked for real:
//   - the pool records the exported definition and the base; the template domain is untouched;
//   - the member runs from <member name>.qcow2 in the dir pool (`virsh dumpxml`), an overlay with
//     the base as backing file (`qemu-img info`), and its SPICE port takes the launch ticket;
//   - what the user writes lands in the overlay: a pattern written through the running QEMU's
//     block layer (HMP qemu-io) makes `qemu-img compare` of overlay and base differ;
//   - logoff: the policy destroys the VM (libvirt's stopped/destroyed event, the broker's destroy
//     request), the worker recreates the overlay empty (refresh events; `qemu-img compare` says
//     identical again, still backed by the base) and the member is back to ready, started again
//     as the pool's ready spare;
//   - a template update to another base (PATCH template): the member is refreshed to version 2
//     and runs again from a fresh overlay backed by the new base;
//   - deleting the pool undefines the domain and deletes the overlay; only the bases are left in
//     the dir pool.
TEST_CASE("desktop pool on qemu:///system: members boot from a qcow2 overlay, refreshed on logoff, deleted with the pool") {
  DomainEvents events;  // outlives the connection that delivers to it
  auto q = open_qemu_system_or_skip();
  if (!q) return;
  if (!have_command("qemu-img")) {
    MESSAGE("SKIPPED: no qemu-img: libvirt cannot make qcow2 volumes in a dir pool without it "
            "(tools/start_libvirtd.sh installs qemu-utils)");
    return;
  }
  auto& conn = *q->conn;
  E2eGuard guard(conn, kFamily);
  REQUIRE(conn.subscribe(events.callback(), nullptr).ok());
  auto made = TempDirPool::create(conn, guard.prefix() + "disks");
  REQUIRE_MESSAGE(made.ok(), (made.ok() ? "" : made.error().message));
  TempDirPool& disks = **made;
  auto based = disks.create_volume("base.qcow2", 16 << 20, "qcow2");
  REQUIRE_MESSAGE(based.ok(), (based.ok() ? "" : based.error().message));
  const std::string base = *based;

  const std::string pool_name = guard.prefix() + "ovl";
  const std::string tmpl =
      "<domain type='" + domain_type() + "'><name>" + pool_name + "-template</name>"
      "<uuid>33333333-3333-4333-8333-333333333333</uuid>"
      "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
      "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
      "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
      "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
      "<source file='" + base + "'/><target dev='vda' bus='virtio'/></disk>"
      "<graphics type='spice' autoport='yes' listen='127.0.0.1'/>"
      "<video><model type='qxl'/></video></devices></domain>";

  // The template is a real (shut-off) domain on the host; the guard undefines it at the end.
  const std::string tmpl_name = pool_name + "-template";
  auto defined = conn.define(tmpl);
  REQUIRE_MESSAGE(defined.ok(), (defined.ok() ? "" : defined.error().message));

  TestBroker b(configure_broker);
  INFO("broker event log (last events):\n" << event_log(b));  // printed with a failed check only
  const std::string host_id = add_local_host(b);

  auto created = b.call(
      "POST", "/v1/pools",
      {{"name", pool_name},
       {"kind", "floating"},
       {"template", {{"domain_name", tmpl_name}, {"storage_pool", disks.name()}}},
       {"host_ids", {host_id}},
       {"min_ready", 1},
       {"max_size", 1},
       {"power_policy", "refresh_on_logoff"}});
  REQUIRE_MESSAGE(created.status == 201, created.body);
  std::string pool = created.json()["id"];
  CHECK(created.json()["template"]["domain_name"] == tmpl_name);
  CHECK(created.json()["template"]["host_id"] == host_id);
  CHECK(created.json()["template"]["base_volume"] == base);  // the template's own disk
  CHECK(created.json()["template"]["storage_pool"] == disks.name());
  CHECK(created.json()["template"]["domain_xml"].get<std::string>().find("<name>" + tmpl_name + "</name>") !=
        std::string::npos);
  auto [uid, tok] = b.user("pool-e2e-ovl-bo");
  REQUIRE(b.call("POST", "/v1/pools/" + pool + "/entitlements", {{"user_id", uid}}).status == 201);

  // The one member: provisioned with its overlay, then started as the ready spare.
  auto one_ready = [](const json& j) { return j["size"]["ready"] == 1; };
  json spare = poll(b, "/v1/pools/" + pool, one_ready, 90s);
  CHECK(spare["size"]["total"] == 1);
  json members = b.call("GET", "/v1/pools/" + pool + "/vms").json()["items"];
  REQUIRE(members.size() == 1);
  const std::string name = members[0]["name"], vm_id = members[0]["vm_id"];
  const std::string overlay = members[0]["overlay"];
  CHECK(name.rfind(pool_name + "-", 0) == 0);
  CHECK(overlay == name + ".qcow2");
  const std::string overlay_path = disks.dir() + "/" + overlay;
  INFO("member " << name << ", overlay " << overlay_path);

  // Launch: the user gets the running member; its disk is the overlay over the base.
  auto l = b.call("POST", "/v1/launches", {{"pool_id", pool}}, tok);
  REQUIRE_MESSAGE(l.status == 201, l.body);
  json launch = l.json();
  CHECK(launch["vm_id"] == vm_id);
  CHECK(launch["ticket_applied"] == true);
  std::string sid = launch["session_id"], ticket = launch["ticket"];
  int port = launch["port"];
  std::string last;
  CHECK_MESSAGE(wait_domstate(name, "running", 30s, &last),
                "virsh domstate " << name << ": " << last);
  std::string xml = virsh("dumpxml " + name);
  CHECK_MESSAGE(first_disk_source(xml) == overlay_path, xml);
  std::string info = qemu_img_info(overlay_path);
  CHECK_MESSAGE(info.find("file format: qcow2") != std::string::npos, info);
  CHECK_MESSAGE(info.find("backing file: " + base + "\n") != std::string::npos, info);
  CHECK_MESSAGE(info.find("backing file format: qcow2") != std::string::npos, info);
  CHECK_MESSAGE(info.find("virtual size: 16 MiB") != std::string::npos, info);
  auto vols = disks.volumes();
  REQUIRE_MESSAGE(vols.ok(), (vols.ok() ? "" : vols.error().message));
  CHECK(std::count(vols->begin(), vols->end(), overlay) == 1);
  check_spice_ticket(port, ticket, "wrong-ticket-000000000000");

  // The user's data: 64 KiB of 0x5a written at offset 0 of the guest's disk by the running QEMU
  // land in the overlay (the base stays as it was).
  CHECK(shell("qemu-img compare -U '" + overlay_path + "' '" + base + "'") ==
        "Images are identical.");
  std::string device = block_device(name, overlay_path);
  REQUIRE_MESSAGE(!device.empty(), virsh("qemu-monitor-command " + name + " --hmp 'info block'"));
  auto qemu_io = [&](const std::string& cmd) {
    return virsh("qemu-monitor-command " + name + " --hmp 'qemu-io -d " + device + " \"" + cmd +
                 "\"'");
  };
  std::string wrote = qemu_io("write -P 0x5a 0 64k");
  wrote += qemu_io("flush");  // the qcow2 metadata too, whatever the cache mode
  std::string differ = shell("qemu-img compare -U '" + overlay_path + "' '" + base + "'");
  REQUIRE_MESSAGE(differ.find("Content mismatch at offset 0") != std::string::npos,
                  "after qemu-io on "
                      << device << " (" << wrote << "): " << differ << "\n"
                      << virsh("qemu-monitor-command " + name + " --hmp 'info block'"));

  // Logoff: the policy destroys the VM, the worker recreates the overlay, the member is ready
  // again and, as the pool's ready spare, started again.
  const std::size_t before_logoff = events.mark();
  auto off = b.call("DELETE", "/v1/sessions/" + sid, nullptr, tok);
  CHECK_MESSAGE(off.status == 204, off.body);
  json s = b.call("GET", "/v1/sessions/" + sid, nullptr, tok).json();
  CHECK(s["state"] == "ended");
  CHECK(s["end_reason"] == "logoff");
  auto stopped = events.wait(name, "stopped", "destroyed", 60s, before_logoff);
  CHECK_MESSAGE(stopped.has_value(), "no stopped/destroyed event for "
                                         << name
                                         << " after logoff: " << events.trail(name, before_logoff));
  json pool_events = poll(b, "/v1/streams/pool-" + pool + "?limit=1000", [&](const json& j) {
    return has_event(j, "PoolVmRefreshed", [&](const json& d) { return d["vm_id"] == vm_id; });
  });
  CHECK(has_event(pool_events, "PoolVmRefreshStarted",
                  [&](const json& d) { return d["vm_id"] == vm_id && d["reason"] == "logoff"; }));
  CHECK(has_event(pool_events, "PoolVmRefreshed",
                  [&](const json& d) { return d["vm_id"] == vm_id && d["ok"] == true; }));
  json vm_events = b.call("GET", "/v1/streams/vm-" + vm_id + "?limit=1000").json();
  CHECK(has_event(vm_events, "VmPowerRequested",
                  [](const json& d) { return d["action"] == "destroy"; }));
  json member = poll(b, "/v1/pools/" + pool + "/vms", [](const json& j) {
    return j["items"].size() == 1 && j["items"][0]["state"] == "ready" &&
           j["items"][0]["observed_state"] == "running";
  })["items"][0];
  CHECK(member["vm_id"] == vm_id);
  CHECK(member["assigned_user_id"].is_null());
  CHECK(member["session_id"].is_null());
  CHECK(member["overlay"] == overlay);
  if (stopped) {
    auto restarted = events.wait(name, "started", "", 30s, *stopped + 1);
    CHECK_MESSAGE(restarted.has_value(),
                  "not started again after the refresh: " << events.trail(name, before_logoff));
  }
  CHECK_MESSAGE(wait_domstate(name, "running", 30s, &last),
                "virsh domstate " << name << ": " << last);
  // The fresh overlay: none of the user's data, still over the base, and it is what runs.
  CHECK(shell("qemu-img compare -U '" + overlay_path + "' '" + base + "'") ==
        "Images are identical.");
  info = qemu_img_info(overlay_path);
  CHECK_MESSAGE(info.find("backing file: " + base + "\n") != std::string::npos, info);
  xml = virsh("dumpxml " + name);
  CHECK_MESSAGE(first_disk_source(xml) == overlay_path, xml);

  // A template update, a new golden image on another base: the free member is refreshed to
  // template version 2 and runs again from a fresh overlay backed by the new base.
  auto based2 = disks.create_volume("base2.qcow2", 16 << 20, "qcow2");
  REQUIRE_MESSAGE(based2.ok(), (based2.ok() ? "" : based2.error().message));
  std::string tmpl2 = tmpl;
  tmpl2.replace(tmpl2.find(base), base.size(), *based2);
  auto patched = b.call("PATCH", "/v1/pools/" + pool,
                        {{"template", {{"domain_xml", tmpl2}, {"storage_pool", disks.name()}}}});
  REQUIRE_MESSAGE(patched.status == 200, patched.body);
  CHECK(patched.json()["template_version"] == 2);
  CHECK(patched.json()["template"]["base_volume"] == *based2);
  poll(
      b, "/v1/pools/" + pool + "/vms",
      [](const json& j) {
        return j["items"].size() == 1 && j["items"][0]["template_version"] == 2 &&
               j["items"][0]["state"] == "ready" && j["items"][0]["observed_state"] == "running";
      },
      90s);
  info = qemu_img_info(overlay_path);
  CHECK_MESSAGE(info.find("backing file: " + *based2 + "\n") != std::string::npos, info);
  xml = virsh("dumpxml " + name);
  CHECK_MESSAGE(first_disk_source(xml) == overlay_path, xml);

  // Delete the pool: the domain is undefined and the overlay deleted; the bases stay.
  const std::size_t before_delete = events.mark();
  delete_pool_and_wait(b, pool);
  CHECK_MESSAGE(events.wait(name, "undefined", "", 10s, before_delete).has_value(),
                events.trail(name, before_delete));
  auto looked = conn.lookup(name);
  CHECK_MESSAGE(!looked.ok(), name << " is still defined");
  if (!looked.ok()) CHECK(looked.error().code == Code::not_found);
  vols = disks.volumes();
  REQUIRE_MESSAGE(vols.ok(), (vols.ok() ? "" : vols.error().message));
  std::sort(vols->begin(), vols->end());
  CHECK(*vols == std::vector<std::string>{"base.qcow2", "base2.qcow2"});
  CHECK_FALSE(std::filesystem::exists(overlay_path));
  // The template domain was never touched: still defined, shut off, on the base.
  CHECK(virsh("domstate " + tmpl_name) == "shut off");
  CHECK(first_disk_source(virsh("dumpxml " + tmpl_name)) == base);
}

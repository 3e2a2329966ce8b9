// End to end on a real libvirtd + QEMU (qemu:///system), through the broker's HTTP API and its
// host reconciler. Start the daemon with tools/start_libvirtd.sh (as root); without a reachable
// qemu:///system the test prints why and passes without checking anything.
//
// The test defines a diskless 64 MiB domain atrium-hosts-e2e-<pid>-<time> with SPICE on port
// 5697 (inside the default display range 5500-5699) and an initial password, directly through
// libvirt; the broker imports it as an unmanaged VM. Then, through the API: power on, check with
// `virsh domstate`, speak SPICE to the port (the initial password authenticates, a wrong one
// does not), shut down (the guest has no OS and ignores ACPI, so the reconciler destroys it after
// the shutdown timeout), power on again, `virsh destroy` it behind the broker's back and watch
// the broker record the observation and the drift. The domain is destroyed and undefined at the
// end, also on failure; so are atrium-hosts-e2e-* leftovers of an earlier killed run (see
// tests/support/qemu_e2e.h).
#include <doctest/doctest.h>

#include <chrono>
#include <ctime>
#include <string>

#include "api/daemon.h"
#include "support/qemu_e2e.h"
#include "support/test_support.h"

using namespace atrium;
using namespace atrium::testing;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr int kSpicePort = 5697;
constexpr std::chrono::seconds kWait = 30s;  // for each state the broker has to reach

}  // namespace

TEST_CASE("qemu:///system through the broker: import, power on/off via the API, SPICE, drift behind its back") {
  auto q = open_qemu_system_or_skip();
  if (!q) return;
  auto& conn = *q->conn;
  E2eGuard guard(conn, "atrium-hosts-e2e-");
  const std::string name = guard.prefix() + std::to_string(std::time(nullptr));
  const std::string type = domain_type();
  const std::string xml =
      "<domain type='" + type + "'><name>" + name + "</name>"
      "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
      "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
      "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
      "<devices><graphics type='spice' port='" + std::to_string(kSpicePort) +
      "' autoport='no' listen='127.0.0.1' passwd='initial-secret'/>"
      "<video><model type='qxl'/></video></devices></domain>";
  auto def = conn.define(xml);
  REQUIRE_MESSAGE(def.ok(), (def.ok() ? "" : def.error().message));

  TestBroker b([](api::DaemonConfig& cfg) {
    cfg.hosts.resync_interval = 1s;
    cfg.hosts.poll_interval = 20ms;
    cfg.hosts.shutdown_timeout = 3s;  // the diskless guest ignores ACPI: destroy after 3 s
    cfg.hosts.connect_timeout = 30s;
  });
  INFO("broker event log (last events):\n" << event_log(b));  // printed with a failed check only
  auto add = b.call("POST", "/v1/hosts", {{"name", "local-qemu"}, {"uri", "qemu:///system"}});
  REQUIRE(add.status == 202);
  std::string host_id = add.json()["host_id"];
  // Finished: neither pending nor running (a poll can land while the connect is running).
  auto settled = [](const json& j) { return j["state"] != "pending" && j["state"] != "running"; };
  json op = poll(b, add.header("location"), settled, kWait);
  REQUIRE_MESSAGE(op["state"] == "succeeded", op.dump());
  json host = b.call("GET", "/v1/hosts/" + host_id).json();
  CHECK(host["state"] == "up");
  CHECK(host["capabilities"]["hypervisor"] == "QEMU");
  MESSAGE("host capabilities: " << host["capabilities"].dump());

  // Imported as unmanaged, shut off, with its fixed SPICE port.
  json vm;
  poll(b, "/v1/vms?host_id=" + host_id + "&limit=1000", [&](const json& j) {
    for (const auto& v : j["items"]) {
      if (v["name"] == name) vm = v;
    }
    return !vm.is_null();
  }, kWait);
  CHECK(vm["managed"] == false);
  CHECK(vm["observed_state"] == "shut_off");
  std::string vm_path = "/v1/vms/" + vm["id"].get<std::string>();


  // Power on through the API; virsh agrees.
  auto p = b.call("POST", vm_path + "/power", {{"action", "start"}});
  REQUIRE(p.status == 202);
  op = poll(b, p.header("location"), settled, kWait);
  REQUIRE_MESSAGE(op["state"] == "succeeded", op.dump());
  CHECK(virsh("domstate " + name) == "running");
  vm = poll(b, vm_path, [](const json& j) { return j["display_port"] == kSpicePort; }, kWait);
  CHECK(vm["observed_state"] == "running");
  CHECK(vm["host_address"] == "127.0.0.1");
  SpiceLink hello = spice_link(kSpicePort);
  REQUIRE_MESSAGE(hello.magic.size() == 4, hello.note);
  CHECK(hello.magic == "REDQ");
  CHECK(hello.link_error == 0);
  check_spice_ticket(kSpicePort, "initial-secret", "not-the-secret");

  // Power off through the API: shutdown, then destroy after the timeout.
  p = b.call("POST", vm_path + "/power", {{"action", "shutdown"}});
  REQUIRE(p.status == 202);
  op = poll(b, p.header("location"), settled, kWait);
  CHECK_MESSAGE(op["state"] == "succeeded", op.dump());
  CHECK(virsh("domstate " + name) == "shut off");

  // On again, then destroyed behind the broker's back.
  p = b.call("POST", vm_path + "/power", {{"action", "start"}});
  REQUIRE(p.status == 202);
  op = poll(b, p.header("location"), settled, kWait);
  REQUIRE(op["state"] == "succeeded");
  CHECK(virsh("domstate " + name) == "running");
  std::string out = virsh("destroy " + name);
  MESSAGE("virsh destroy: " << out);
  vm = poll(b, vm_path, [](const json& j) { return j["observed_state"] == "shut_off"; }, kWait);
  auto events = poll(b, "/v1/streams/vm-" + vm["id"].get<std::string>() + "?limit=1000", [](const json& j) {
    for (const auto& e : j["items"]) {
      if (e["type"] == "VmDriftResolved") return true;
    }
    return false;
  }, kWait);
  bool drift = false, resolved = false;
  for (const auto& e : events["items"]) {
    if (e["type"] == "VmDriftDetected") drift = drift || e["data"]["observed"] == "shut_off";
    if (e["type"] == "VmDriftResolved") resolved = true;
  }
  CHECK(drift);
  CHECK(resolved);  // given up: the VM is unmanaged and policy leaves it alone
  CHECK(virsh("domstate " + name) == "shut off");  // and indeed it was not started again
}

// Hosts, VMs and operations: given events, when command, then events or error.
#include <doctest/doctest.h>

#include <algorithm>

#include "domain/hosts.h"
#include "domain/state.h"
#include "given.h"

using namespace atrium;
using namespace atrium::domain;
using atrium::domain::testing::types;
using atrium::domain::testing::V;

namespace {

// The shared harness plus lookups of this module's entities.
struct Given : testing::Given {
  const Host& host(const std::string& id) { return *s.hosts.host(id); }
  const Vm& vm(const std::string& id) { return *s.hosts.vm(id); }
  const Operation& op(const std::string& id) { return *s.hosts.operation(id); }
};

AddHost add(const std::string& id, const std::string& name = "", PortRange ports = {}) {
  return AddHost{id, "op-" + id, name.empty() ? "host-" + id : name, "test:///default", "", ports};
}

// A host h1 that is up (epoch 1) with domains a (running, port 5500) and b (shut off).
Given up_host(PortRange ports = {}) {
  Given g;
  g.ok(add("h1", "", ports));
  g.ok(RecordHostConnected{"h1", 1, Json{{"cpus", 8}}});
  g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "running", 5500}, {"b", "uuid-b", "shut_off", -1}}});
  return g;
}

const std::string kA = vm_id_for("h1", "uuid-a");
const std::string kB = vm_id_for("h1", "uuid-b");

}  // namespace

TEST_CASE("AddHost: defaults, events and the table of refusals") {
  Given g;
  auto es = g.ok(AddHost{"h1", "op1", "kvm-01", "qemu+ssh://root@10.0.0.5/system", "", {}});
  CHECK(types(es) == V{"OperationStarted", "HostAdded"});
  const Host& h = g.host("h1");
  CHECK(h.state == "connecting");
  CHECK(h.address == "10.0.0.5");
  CHECK(h.ports.first == 5500);
  CHECK(h.ports.last == 5699);
  CHECK(g.s.hosts.ports_free("h1") == 200);
  CHECK(h.connect_operation == "op1");
  CHECK(g.op("op1").state == "pending");
  CHECK(g.op("op1").kind == "connect_host");
  CHECK(g.op("op1").events == std::vector<uint64_t>{1, 2});

  struct Row {
    const char* what;
    AddHost cmd;
    Code code;
    const char* reason;
  };
  std::vector<Row> rows = {
      {"duplicate id", {"h1", "o", "x", "test:///default", "", {}}, Code::already_exists, "host_exists"},
      {"duplicate name", {"h2", "o", "kvm-01", "test:///default", "", {}}, Code::already_exists, "host_name_taken"},
      {"empty name", {"h2", "o", "", "test:///default", "", {}}, Code::invalid_argument, "invalid_name"},
      {"empty uri", {"h2", "o", "n", "", "", {}}, Code::invalid_argument, "invalid_uri"},
      {"no scheme", {"h2", "o", "n", "/var/run/libvirt", "", {}}, Code::invalid_argument, "invalid_uri"},
      {"space in uri", {"h2", "o", "n", "qemu:///sys tem", "", {}}, Code::invalid_argument, "invalid_uri"},
      {"first > last", {"h2", "o", "n", "test:///default", "", {5600, 5500}}, Code::invalid_argument, "invalid_port_range"},
      {"port 0", {"h2", "o", "n", "test:///default", "", {0, 10}}, Code::invalid_argument, "invalid_port_range"},
      {"port > 65535", {"h2", "o", "n", "test:///default", "", {65000, 65536}}, Code::invalid_argument, "invalid_port_range"},
  };
  for (const auto& row : rows) {
    CAPTURE(row.what);
    Error e = g.err(row.cmd);
    CHECK(e.code == row.code);
    CHECK(e.reason == row.reason);
  }
  // A removed host's name may be reused.
  g.ok(RemoveHost{"h1", std::nullopt});
  g.ok(AddHost{"h2", "op2", "kvm-01", "test:///default", "192.0.2.1", {5900, 5909}});
  CHECK(g.host("h2").address == "192.0.2.1");
  CHECK(g.s.hosts.ports_free("h2") == 10);
}

TEST_CASE("address_from_uri: the URI's host, else loopback") {
  CHECK(address_from_uri("qemu:///system") == "127.0.0.1");
  CHECK(address_from_uri("test:///default") == "127.0.0.1");
  CHECK(address_from_uri("qemu+tcp://kvm1.example:16509/system") == "kvm1.example");
  CHECK(address_from_uri("qemu+ssh://user@[2001:db8::1]:22/system") == "2001:db8::1");
}

TEST_CASE("connect: a new epoch brings the host up and completes the operation; old epochs are ignored") {
  Given g;
  g.ok(add("h1"));
  auto es = g.ok(RecordHostConnected{"h1", 1, Json{{"cpu_model", "x86_64"}}});
  CHECK(types(es) == V{"HostConnected", "OperationSucceeded"});
  CHECK(g.host("h1").state == "up");
  CHECK(g.host("h1").epoch == 1);
  CHECK(g.host("h1").capabilities["cpu_model"] == "x86_64");
  CHECK(g.op("op-h1").state == "succeeded");
  CHECK(g.op("op-h1").events.size() == 4);
  // The same or an older epoch again: nothing.
  CHECK(g.ok(RecordHostConnected{"h1", 1, {}}).empty());
  CHECK(g.ok(RecordHostConnected{"h1", 0, {}}).empty());
  // Lost connection of the current epoch -> disconnected; a stale epoch's close is ignored.
  CHECK(g.ok(RecordHostDisconnected{"h1", 0, "eof"}).empty());
  CHECK(types(g.ok(RecordHostDisconnected{"h1", 1, "keepalive"})) == V{"HostDisconnected"});
  CHECK(g.host("h1").state == "disconnected");
  CHECK(g.host("h1").reason == "keepalive");
  CHECK(g.ok(RecordHostDisconnected{"h1", 1, "eof"}).empty());  // already
  // Reconnect: epoch 2, up again, no operation this time.
  CHECK(types(g.ok(RecordHostConnected{"h1", 2, {}})) == V{"HostConnected"});
  CHECK(g.host("h1").state == "up");
  CHECK(g.host("h1").epoch == 2);
}

TEST_CASE("connect failures: attempts are recorded; the final one fails the operation with libvirt's message") {
  Given g;
  g.ok(add("h1"));
  CHECK(types(g.ok(BeginOperations{"h1", 0, {"op-h1"}})) == V{"OperationRunning"});
  CHECK(g.op("op-h1").state == "running");
  CHECK(types(g.ok(RecordHostConnectFailed{"h1", "Connection refused", false})) ==
        V{"HostConnectAttemptFailed"});
  CHECK(g.host("h1").state == "connecting");
  CHECK(g.host("h1").failed_attempts == 1);
  auto es = g.ok(RecordHostConnectFailed{"h1", "unable to connect: Connection refused", true});
  CHECK(types(es) == V{"HostConnectAttemptFailed", "HostFailed", "OperationFailed"});
  CHECK(g.host("h1").state == "alert");
  CHECK(g.op("op-h1").state == "failed");
  CHECK(g.op("op-h1").error == "unable to connect: Connection refused");
  // Alert: late results are ignored until an admin activates the host.
  CHECK(g.ok(RecordHostConnected{"h1", 1, {}}).empty());
  CHECK(g.ok(RecordHostConnectFailed{"h1", "x", true}).empty());
  CHECK(types(g.ok(ActivateHost{"h1", std::nullopt})) == V{"HostActivated"});
  CHECK(g.host("h1").state == "connecting");
  CHECK(g.host("h1").failed_attempts == 0);
  g.ok(RecordHostConnected{"h1", 1, {}});
  CHECK(g.host("h1").state == "up");
  // Up and connected: a failed attempt report is stale.
  CHECK(g.ok(RecordHostConnectFailed{"h1", "x", false}).empty());
}

TEST_CASE("10.4: a host whose URI the broker may not open goes to alert at once, even in maintenance") {
  Given g;
  g.ok(add("h1"));
  auto es = g.ok(RecordHostConnectFailed{"h1", "uri not allowed: qemu+ext", false, true});
  CHECK(types(es) == V{"HostConnectAttemptFailed", "HostFailed", "OperationFailed"});
  CHECK(g.host("h1").state == "alert");
  CHECK(g.host("h1").reason == "refused: uri not allowed: qemu+ext");
  CHECK(g.op("op-h1").state == "failed");
  g.ok(add("h2"));
  CHECK(types(g.ok(EnterMaintenance{"h2", std::nullopt})) == V{"HostMaintenanceEntered"});
  CHECK(types(g.ok(RecordHostConnectFailed{"h2", "x", true, false})) == V{"HostConnectAttemptFailed"});
  CHECK(g.host("h2").state == "maintenance");  // a timeout does not end maintenance
  g.ok(RecordHostConnectFailed{"h2", "uri not allowed", false, true});
  CHECK(g.host("h2").state == "alert");
}

TEST_CASE("maintenance: no VM starts there; activate returns it; If-Match; removed hosts refuse") {
  Given g = up_host();
  CHECK(types(g.ok(EnterMaintenance{"h1", std::nullopt})) == V{"HostMaintenanceEntered"});
  CHECK(g.ok(EnterMaintenance{"h1", std::nullopt}).empty());
  CHECK(g.host("h1").state == "maintenance");
  Error e = g.err(RequestVmPower{kB, "p1", "start", std::nullopt});
  CHECK(e.code == Code::failed_precondition);
  CHECK(e.reason == "host_in_maintenance");
  // Stopping VMs is still allowed.
  g.ok(RequestVmPower{kA, "p2", "shutdown", std::nullopt});
  // Observations continue; a disconnect in maintenance keeps maintenance.
  g.ok(RecordHostDisconnected{"h1", 1, "eof"});
  CHECK(g.host("h1").state == "maintenance");
  CHECK(shown_observed(g.s.hosts, g.vm(kA)) == "unknown");
  uint64_t v = g.host("h1").version;
  CHECK(g.err(ActivateHost{"h1", v + 7}).code == Code::version_mismatch);
  CHECK(types(g.ok(ActivateHost{"h1", v})) == V{"HostActivated"});
  CHECK(g.host("h1").state == "connecting");  // not connected: reconnect first
  CHECK(g.ok(ActivateHost{"h1", std::nullopt}).empty());
  g.ok(RecordHostConnected{"h1", 2, {}});
  g.ok(EnterMaintenance{"h1", std::nullopt});
  g.ok(ActivateHost{"h1", std::nullopt});
  CHECK(g.host("h1").state == "up");  // still connected: straight back up

  g.ok(RemoveHost{"h1", std::nullopt});
  CHECK(g.host("h1").state == "removed");
  CHECK(g.s.hosts.vm(kA) == nullptr);
  CHECK(g.op("p2").state == "cancelled");
  CHECK(g.err(EnterMaintenance{"h1", std::nullopt}).reason == "host_removed");
  CHECK(g.err(RemoveHost{"h1", std::nullopt}).reason == "host_removed");
  CHECK(g.err(RemoveHost{"nope", std::nullopt}).code == Code::not_found);
}

TEST_CASE("RemoveHost refuses while a pool still owns VMs there") {
  Given g = up_host();
  g.ok(AdoptVm{kA, "pool-1"});
  CHECK(g.vm(kA).managed());
  CHECK(g.ok(AdoptVm{kA, "pool-1"}).empty());
  CHECK(g.err(AdoptVm{kA, "pool-2"}).reason == "vm_managed");
  CHECK(g.err(RemoveHost{"h1", std::nullopt}).reason == "host_has_managed_vms");
}

TEST_CASE("observations: import as unmanaged, record only changes, discard other epochs") {
  Given g;
  g.ok(add("h1"));
  // Not connected yet: nothing is recorded.
  CHECK(g.ok(RecordDomainsObserved{"h1", 0, {{"a", "uuid-a", "running", 5500}}}).empty());
  g.ok(RecordHostConnected{"h1", 1, {}});
  auto es = g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "running", 5500},
                                                  {"b", "uuid-b", "shut_off", -1}}});
  CHECK(types(es) == V{"VmImported", "VmImported"});
  const Vm& a = g.vm(kA);
  CHECK(a.name == "a");
  CHECK(!a.managed());
  CHECK(a.desired == "none");
  CHECK(a.observed == "running");
  CHECK(a.display_port == 5500);
  CHECK(g.s.hosts.ports_free("h1") == 199);  // a's live port is in the range
  // The same listing again: no events (second pass does nothing).
  CHECK(g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "running", 5500},
                                             {"b", "uuid-b", "shut_off", -1}}}).empty());
  // A change on one domain, the other vanished.
  es = g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "paused", 5500}}});
  CHECK(types(es) == V{"VmObserved", "VmObserved"});
  CHECK(g.vm(kA).observed == "paused");
  CHECK(g.vm(kB).observed == "missing");
  // A result from an older connection is discarded, however late it arrives.
  g.ok(RecordHostDisconnected{"h1", 1, "eof"});
  g.ok(RecordHostConnected{"h1", 2, {}});
  CHECK(g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "crashed", -1}}}).empty());
  CHECK(g.vm(kA).observed == "paused");
  // Duplicated and empty uuids in a listing are ignored.
  es = g.ok(RecordDomainsObserved{"h1", 2, {{"a", "uuid-a", "paused", 5500},
                                            {"a2", "uuid-a", "running", 5500},
                                            {"c", "", "running", -1},
                                            {"b", "uuid-b", "missing", -1}}});
  CHECK(es.empty());
}

TEST_CASE("views: VMs of a host that is not connected show unknown, without rewriting history") {
  Given g = up_host();
  CHECK(vm_to_json(g.s.hosts, g.vm(kA))["observed_state"] == "running");
  size_t events_before = g.log.size();
  g.ok(RecordHostDisconnected{"h1", 1, "keepalive"});
  CHECK(g.log.size() == events_before + 1);  // only HostDisconnected
  Json j = vm_to_json(g.s.hosts, g.vm(kA));
  CHECK(j["observed_state"] == "unknown");
  CHECK(j["last_observed_state"] == "running");
  CHECK(g.vm(kA).observed == "running");
  g.ok(RecordHostConnectFailed{"h1", "refused", true});
  CHECK(g.host("h1").state == "alert");
  CHECK(vm_to_json(g.s.hosts, g.vm(kA))["observed_state"] == "unknown");
}

TEST_CASE("power: desired state, operation lifecycle, completion by observation") {
  Given g = up_host();
  CHECK(g.err(RequestVmPower{kB, "p1", "suspend", std::nullopt}).reason == "invalid_action");
  CHECK(g.err(RequestVmPower{"nope", "p1", "start", std::nullopt}).code == Code::not_found);
  CHECK(g.err(RequestVmPower{kB, "p1", "reboot", std::nullopt}).reason == "vm_not_running");
  CHECK(g.err(RequestVmPower{kB, "p1", "start", uint64_t{9}}).code == Code::version_mismatch);

  auto es = g.ok(RequestVmPower{kB, "p1", "start", std::nullopt});
  CHECK(types(es) == V{"OperationStarted", "VmPowerRequested"});
  CHECK(g.vm(kB).desired == "running");
  CHECK(g.vm(kB).operation == "p1");
  CHECK(g.op("p1").state == "pending");
  CHECK(g.err(RequestVmPower{kB, "p1", "start", std::nullopt}).reason == "operation_exists");
  // Running is only for the current epoch's connection and pending operations.
  CHECK(g.ok(BeginOperations{"h1", 7, {"p1"}}).empty());
  CHECK(types(g.ok(BeginOperations{"h1", 1, {"p1", "op-h1", "nope"}})) == V{"OperationRunning"});
  CHECK(g.op("p1").state == "running");
  CHECK(g.ok(BeginOperations{"h1", 1, {"p1"}}).empty());
  // While the operation drives the VM, the difference is not drift.
  CHECK(g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "running", 5500},
                                             {"b", "uuid-b", "shut_off", -1}}}).empty());
  // The start call returned; the observation completes the operation.
  CHECK(g.ok(RecordVmActionResult{kB, 1, "p1", "start", true, ""}).empty());
  es = g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "running", 5500},
                                            {"b", "uuid-b", "running", 5501}}});
  CHECK(types(es) == V{"VmObserved", "OperationSucceeded"});
  CHECK(g.op("p1").state == "succeeded");
  CHECK(g.vm(kB).operation.empty());
  CHECK(g.vm(kB).desired == "running");
  std::vector<uint64_t> evs = g.op("p1").events;
  CHECK(evs.size() == 4);  // started, requested, running, succeeded
  CHECK(std::is_sorted(evs.begin(), evs.end()));

  // A reboot completes when the call succeeds.
  g.ok(RequestVmPower{kB, "p2", "reboot", std::nullopt});
  CHECK(types(g.ok(RecordVmActionResult{kB, 1, "p2", "reboot", true, ""})) == V{"OperationSucceeded"});
  // A request on a VM already in that state completes on the action report.
  g.ok(RequestVmPower{kB, "p3", "start", std::nullopt});
  CHECK(types(g.ok(RecordVmActionResult{kB, 1, "p3", "start", true, ""})) == V{"OperationSucceeded"});
}

TEST_CASE("power: failure restores the desired state; cancel; supersede; stale results") {
  Given g = up_host();
  g.ok(RequestVmPower{kB, "p1", "start", std::nullopt});
  // A result from another epoch or for another operation is ignored.
  CHECK(g.ok(RecordVmActionResult{kB, 0, "p1", "start", false, "x"}).empty());
  CHECK(g.ok(RecordVmActionResult{kB, 1, "other", "start", false, "x"}).empty());
  auto es = g.ok(RecordVmActionResult{kB, 1, "p1", "start", false, "Requested operation is not valid"});
  CHECK(types(es) == V{"OperationFailed"});
  CHECK(g.op("p1").state == "failed");
  CHECK(g.op("p1").error == "Requested operation is not valid");
  CHECK(g.vm(kB).desired == "none");
  CHECK(g.err(CancelOperation{"p1", ""}).reason == "operation_finished");
  CHECK(g.err(CancelOperation{"nope", ""}).code == Code::not_found);

  g.ok(RequestVmPower{kA, "p2", "shutdown", std::nullopt});
  // A second request supersedes the first, which is cancelled; the earlier desired state is kept
  // as the one to return to.
  es = g.ok(RequestVmPower{kA, "p3", "destroy", std::nullopt});
  CHECK(types(es) == V{"OperationCancelled", "OperationStarted", "VmPowerRequested"});
  CHECK(g.op("p2").state == "cancelled");
  CHECK(g.op("p3").previous_desired == "none");
  CHECK(types(g.ok(CancelOperation{"p3", "changed my mind"})) == V{"OperationCancelled"});
  CHECK(g.op("p3").error == "changed my mind");
  CHECK(g.vm(kA).desired == "none");
  CHECK(g.vm(kA).operation.empty());
  // FailOperation (e.g. not resumable after a restart) only acts on active operations.
  g.ok(RequestVmPower{kA, "p4", "reboot", std::nullopt});
  CHECK(types(g.ok(FailOperation{"p4", "interrupted by a restart"})) == V{"OperationFailed"});
  CHECK(g.ok(FailOperation{"p4", "again"}).empty());
}

TEST_CASE("cancel a connect operation: the host goes to alert") {
  Given g;
  g.ok(add("h1"));
  auto es = g.ok(CancelOperation{"op-h1", ""});
  CHECK(types(es) == V{"OperationCancelled", "HostFailed"});
  CHECK(g.host("h1").state == "alert");
  CHECK(g.host("h1").reason == "connect operation cancelled");
  CHECK(g.ok(RecordHostConnected{"h1", 1, {}}).empty());
}

TEST_CASE("drift: detected once, corrected when observed equal again, given up, superseded") {
  Given g = up_host();
  g.ok(RequestVmPower{kA, "p1", "start", std::nullopt});
  g.ok(RecordVmActionResult{kA, 1, "p1", "start", true, ""});  // already running
  CHECK(g.op("p1").state == "succeeded");
  // On its way down (QEMU says shutting_down even for a destroy): recorded, not drift yet.
  auto es = g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "shutting_down", 5500},
                                                  {"b", "uuid-b", "shut_off", -1}}});
  CHECK(types(es) == V{"VmObserved"});
  CHECK(!g.vm(kA).drift);
  // Destroyed behind the broker's back.
  es = g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "shut_off", -1},
                                                  {"b", "uuid-b", "shut_off", -1}}});
  CHECK(types(es) == V{"VmObserved", "VmDriftDetected"});
  CHECK(g.vm(kA).drift);
  CHECK(g.vm(kA).drift_reason == "desired running, observed shut_off");
  CHECK(g.vm(kA).observed == "shut_off");  // recorded, desired unchanged
  CHECK(g.vm(kA).desired == "running");
  // Seen again: no second detection.
  CHECK(g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "shut_off", -1},
                                             {"b", "uuid-b", "shut_off", -1}}}).empty());
  // Corrected: observed running again.
  es = g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "running", 5500},
                                            {"b", "uuid-b", "shut_off", -1}}});
  CHECK(types(es) == V{"VmObserved", "VmDriftResolved"});
  CHECK(es[1].data["resolution"] == "corrected");
  CHECK(!g.vm(kA).drift);

  // Again, and this time given up: the broker stops asserting a power state.
  g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "crashed", -1}, {"b", "uuid-b", "shut_off", -1}}});
  CHECK(g.vm(kA).drift);
  CHECK(g.ok(RecordDriftResolved{kA, 0, "given_up", "stale"}).empty());  // other epoch
  es = g.ok(RecordDriftResolved{kA, 1, "given_up", "unmanaged VM: policy leaves it alone"});
  CHECK(types(es) == V{"VmDriftResolved"});
  CHECK(g.vm(kA).desired == "none");
  CHECK(g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "crashed", -1},
                                             {"b", "uuid-b", "shut_off", -1}}}).empty());

  // A power request while drift is recorded supersedes it, explicitly.
  g.ok(RequestVmPower{kB, "p2", "start", std::nullopt});
  g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "crashed", -1}, {"b", "uuid-b", "running", 5501}}});
  g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "crashed", -1}, {"b", "uuid-b", "shut_off", -1}}});
  CHECK(g.vm(kB).drift);
  es = g.ok(RequestVmPower{kB, "p3", "destroy", std::nullopt});
  CHECK(types(es) == V{"VmDriftResolved", "OperationStarted", "VmPowerRequested"});
  CHECK(es[0].data["resolution"] == "superseded");
}

TEST_CASE("display ports: lowest free, never overlap with live ports, exhaustion, release on stop") {
  Given g = up_host({5500, 5502});
  // a runs on 5500 (in the range): it keeps its own port.
  g.ok(AllocateDisplayPort{kA});
  CHECK(g.vm(kA).allocated_port == 5500);
  CHECK(g.ok(AllocateDisplayPort{kA}).empty());  // idempotent
  g.ok(AllocateDisplayPort{kB});
  CHECK(g.vm(kB).allocated_port == 5501);
  // A third domain appears running on 5502 (outside our allocations): it occupies the port.
  g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "running", 5500},
                                       {"b", "uuid-b", "shut_off", -1},
                                       {"c", "uuid-c", "running", 5502},
                                       {"d", "uuid-d", "shut_off", -1}}});
  std::string kD = vm_id_for("h1", "uuid-d");
  CHECK(g.s.hosts.ports_free("h1") == 0);
  Error e = g.err(AllocateDisplayPort{kD});
  CHECK(e.code == Code::failed_precondition);
  CHECK(e.reason == "display_ports_exhausted");
  // b stays allocated while shut off? It was shut off at allocation; allocation survives until
  // b is observed stopping. a stops: its port returns to the pool.
  auto es = g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "shut_off", -1},
                                                  {"b", "uuid-b", "shut_off", -1},
                                                  {"c", "uuid-c", "running", 5502},
                                                  {"d", "uuid-d", "shut_off", -1}}});
  CHECK(types(es) == V{"VmObserved", "DisplayPortReleased"});
  CHECK(g.vm(kA).allocated_port == -1);
  g.ok(AllocateDisplayPort{kD});
  CHECK(g.vm(kD).allocated_port == 5500);
  // Ports of a removed VM (vanished domain) return as well.
  es = g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "shut_off", -1},
                                            {"c", "uuid-c", "running", 5502},
                                            {"d", "uuid-d", "shut_off", -1}}});
  CHECK(types(es) == V{"VmObserved", "DisplayPortReleased"});
  CHECK(g.s.hosts.ports_free("h1") == 1);
}

TEST_CASE("replay of the produced events rebuilds the same state") {
  Given g = up_host();
  g.ok(RequestVmPower{kB, "p1", "start", std::nullopt});
  g.ok(BeginOperations{"h1", 1, {"p1"}});
  g.ok(RecordDomainsObserved{"h1", 1, {{"a", "uuid-a", "shut_off", -1}, {"b", "uuid-b", "running", 5501}}});
  g.ok(AllocateDisplayPort{kB});
  g.ok(EnterMaintenance{"h1", std::nullopt});
  g.ok(RecordHostDisconnected{"h1", 1, "eof"});
  g.check_replay();  // from the log, and through the snapshot codec
  CHECK(state_to_json(g.s)["hosts"]["vms"].size() == 2);
}

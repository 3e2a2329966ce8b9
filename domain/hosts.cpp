#include "domain/hosts.h"

#include <algorithm>
#include <cctype>

#include "domain/evolve_table.h"
#include "domain/sha256.h"
#include "domain/state.h"
#include "domain/users.h"

namespace atrium::domain {

// ---- names and queries ------------------------------------------------------------------
std::string host_stream(const std::string& id) { return "host-" + id; }
std::string vm_stream(const std::string& id) { return "vm-" + id; }
std::string operation_stream(const std::string& id) { return "operation-" + id; }

std::string vm_id_for(const std::string& host_id, const std::string& uuid) {
  return sha256_hex(host_id + "/" + uuid).substr(0, 32);
}

std::string address_from_uri(const std::string& uri) {
  // scheme://[user@]host[:port]/path
  auto p = uri.find("://");
  if (p == std::string::npos) return "127.0.0.1";
  std::string rest = uri.substr(p + 3);
  rest = rest.substr(0, rest.find('/'));
  if (auto at = rest.rfind('@'); at != std::string::npos) rest = rest.substr(at + 1);
  if (!rest.empty() && rest[0] == '[') {  // [v6]:port
    auto close = rest.find(']');
    if (close != std::string::npos) return rest.substr(1, close - 1);
  }
  rest = rest.substr(0, rest.find(':'));
  return rest.empty() ? "127.0.0.1" : rest;
}

const Host* HostsState::host(const std::string& id) const {
  auto it = hosts.find(id);
  return it == hosts.end() ? nullptr : &it->second;
}
const Vm* HostsState::vm(const std::string& id) const {
  auto it = vms.find(id);
  return it == vms.end() ? nullptr : &it->second;
}
const Operation* HostsState::operation(const std::string& id) const {
  auto it = operations.find(id);
  return it == operations.end() ? nullptr : &it->second;
}

namespace {
bool is_running_state(const std::string& s) { return s == "running" || s == "blocked"; }

// Does an observed state satisfy a desired power state?
bool satisfies(const std::string& desired, const std::string& observed) {
  if (desired == "running") return is_running_state(observed);
  if (desired == "shut_off") return observed == "shut_off" || observed == "missing";
  return true;
}
}  // namespace

std::vector<const Vm*> HostsState::vms_of(const std::string& host_id) const {
  std::vector<const Vm*> out;
  auto it = vm_by_uuid.find(host_id);
  if (it == vm_by_uuid.end()) return out;
  for (const auto& [uuid, id] : it->second) {
    if (const Vm* v = vm(id)) out.push_back(v);
  }
  std::sort(out.begin(), out.end(), [](const Vm* a, const Vm* b) { return a->id < b->id; });
  return out;
}

std::map<int, std::string> HostsState::ports_in_use(const std::string& host_id) const {
  std::map<int, std::string> out;
  const Host* h = host(host_id);
  if (h == nullptr) return out;
  auto it = vm_by_uuid.find(host_id);
  if (it == vm_by_uuid.end()) return out;
  for (const auto& [uuid, id] : it->second) {
    const Vm* v = vm(id);
    if (v == nullptr) continue;
    if (v->allocated_port >= 0 && h->ports.contains(v->allocated_port)) out[v->allocated_port] = v->id;
    if (is_running_state(v->observed) && v->display_port >= 0 && h->ports.contains(v->display_port)) {
      out.emplace(v->display_port, v->id);
    }
  }
  return out;
}

int HostsState::ports_free(const std::string& host_id) const {
  const Host* h = host(host_id);
  if (h == nullptr) return 0;
  return h->ports.size() - static_cast<int>(ports_in_use(host_id).size());
}

std::string shown_observed(const HostsState& hs, const Vm& v) {
  const Host* h = hs.host(v.host_id);
  if (h == nullptr || !h->connected) return "unknown";
  if (h->state != "up" && h->state != "maintenance") return "unknown";
  return v.observed;
}

Json host_to_json(const HostsState& hs, const Host& h) {
  Json j{{"id", h.id},
         {"name", h.name},
         {"uri", h.uri},
         {"address", h.address},
         {"display_ports", Json{{"first", h.ports.first}, {"last", h.ports.last}}},
         {"display_ports_free", hs.ports_free(h.id)},
         {"state", h.state},
         {"reason", h.reason},
         {"connected", h.connected},
         {"epoch", h.epoch},
         {"capabilities", h.capabilities},
         {"last_error", h.last_error},
         {"failed_attempts", h.failed_attempts},
         {"state_since_ms", h.state_since_ms},
         {"created_at_ms", h.created_at_ms},
         {"updated_at_ms", h.updated_at_ms},
         {"version", h.version}};
  j["connect_operation_id"] = h.connect_operation.empty() ? Json(nullptr) : Json(h.connect_operation);
  j["spice_tls"] = h.spice_tls() ? Json{{"ca_cert", h.spice_ca_cert}, {"host_subject", h.spice_host_subject}}
                                 : Json(nullptr);
  auto it = hs.vm_by_uuid.find(h.id);
  j["vm_count"] = it == hs.vm_by_uuid.end() ? 0 : it->second.size();
  return j;
}

Json vm_to_json(const HostsState& hs, const Vm& v) {
  const Host* h = hs.host(v.host_id);
  Json j{{"id", v.id},
         {"name", v.name},
         {"uuid", v.uuid},
         {"host_id", v.host_id},
         {"host_address", h ? h->address : ""},
         {"managed", v.managed()},
         {"desired_state", v.desired},
         {"observed_state", shown_observed(hs, v)},
         {"last_observed_state", v.observed},
         {"drift", v.drift},
         {"created_at_ms", v.created_at_ms},
         {"updated_at_ms", v.updated_at_ms},
         {"version", v.version}};
  j["pool_id"] = v.pool_id.empty() ? Json(nullptr) : Json(v.pool_id);
  j["display_port"] = v.display_port >= 0 ? Json(v.display_port) : Json(nullptr);
  j["allocated_display_port"] = v.allocated_port >= 0 ? Json(v.allocated_port) : Json(nullptr);
  j["drift_reason"] = v.drift ? Json(v.drift_reason) : Json(nullptr);
  j["operation_id"] = v.operation.empty() ? Json(nullptr) : Json(v.operation);
  return j;
}

Json operation_to_json(const Operation& o) {
  Json j{{"id", o.id},
         {"kind", o.kind},
         {"target", o.target},
         {"state", o.state},
         {"events", o.events},
         {"created_at_ms", o.created_at_ms},
         {"updated_at_ms", o.updated_at_ms},
         {"version", o.version}};
  j["error"] = o.error.empty() ? Json(nullptr) : Json(o.error);
  if (!o.action.empty()) j["action"] = o.action;
  if (!o.host_id.empty()) j["host_id"] = o.host_id;
  return j;
}

// ---- decide -----------------------------------------------------------------------------
namespace {

Event host_event(const std::string& id, const char* type, Json data) {
  return {host_stream(id), type, 1, std::move(data)};
}
Event vm_event(const std::string& id, const char* type, Json data) {
  return {vm_stream(id), type, 1, std::move(data)};
}
Event op_event(const std::string& id, const char* type, Json data) {
  data["operation_id"] = id;
  return {operation_stream(id), type, 1, std::move(data)};
}

Error host_not_found(const std::string& id) { return not_found("host " + id + " not found"); }

Result<const Host*> live_host(const State& s, const std::string& id) {
  const Host* h = s.hosts.host(id);
  if (h == nullptr) return host_not_found(id);
  if (h->state == "removed") return refused("host_removed", "host " + id + " was removed");
  return h;
}

Status validate_uri(const std::string& uri) {
  if (uri.empty() || uri.size() > 1024) {
    return Error{Code::invalid_argument, "uri must be 1 to 1024 characters", "invalid_uri",
                 {{"uri", "must be 1 to 1024 characters"}}};
  }
  auto p = uri.find(":/");
  bool scheme_ok = p != std::string::npos && p > 0;
  for (size_t i = 0; scheme_ok && i < p; ++i) {
    char c = uri[i];
    scheme_ok = std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '.';
  }
  for (unsigned char c : uri) scheme_ok = scheme_ok && c > 0x20 && c != 0x7f;
  if (!scheme_ok) {
    return Error{Code::invalid_argument, "uri must be a libvirt URI such as qemu:///system",
                 "invalid_uri", {{"uri", "must be a libvirt URI, driver[+transport]://[host]/path"}}};
  }
  return Status::Ok();
}

}  // namespace

Result<Events> decide(const State& s, const AddHost& c, const Context&) {
  if (auto st = validate_name("name", c.name); !st) return st.error();
  if (auto st = validate_uri(c.uri); !st) return st.error();
  if (c.id.empty() || c.operation_id.empty()) return invalid("host and operation ids are required");
  if (c.ports.first < 1 || c.ports.last > 65535 || c.ports.first > c.ports.last) {
    return Error{Code::invalid_argument, "display_ports must be 1 <= first <= last <= 65535",
                 "invalid_port_range", {{"display_ports", "need 1 <= first <= last <= 65535"}}};
  }
  if (c.address.size() > 255) return invalid("address must be at most 255 characters", "invalid_address");
  if (c.spice_ca_cert.empty() != c.spice_host_subject.empty()) {
    return Error{Code::invalid_argument, "spice_tls needs both ca_cert and host_subject", "invalid_spice_tls",
                 {{"spice_tls", "give both ca_cert and host_subject"}}};
  }
  if (!c.spice_ca_cert.empty() &&
      (c.spice_ca_cert.find("-----BEGIN CERTIFICATE-----") == std::string::npos ||
       c.spice_ca_cert.size() > 16384)) {
    return Error{Code::invalid_argument, "spice_tls.ca_cert must be a PEM certificate of at most 16 KiB",
                 "invalid_spice_tls", {{"spice_tls.ca_cert", "a PEM certificate"}}};
  }
  if (c.spice_host_subject.size() > 512 ||
      c.spice_host_subject.find_first_of("\r\n") != std::string::npos) {
    return Error{Code::invalid_argument, "spice_tls.host_subject must be one line of at most 512 characters",
                 "invalid_spice_tls", {{"spice_tls.host_subject", "one line, e.g. C=XX,O=Org,CN=host"}}};
  }
  if (s.hosts.host(c.id) != nullptr) {
    return Error::make(Code::already_exists, "host " + c.id + " already exists", "host_exists");
  }
  for (const auto& [id, h] : s.hosts.hosts) {
    if (h.state != "removed" && h.name == c.name) {
      return Error::make(Code::already_exists, "a host named '" + c.name + "' already exists",
                         "host_name_taken");
    }
  }
  std::string address = c.address.empty() ? address_from_uri(c.uri) : c.address;
  Json added{{"id", c.id}, {"name", c.name}, {"uri", c.uri}, {"address", address},
             {"ports_first", c.ports.first}, {"ports_last", c.ports.last},
             {"operation_id", c.operation_id}};
  if (!c.spice_ca_cert.empty()) {
    added["spice_tls"] = Json{{"ca_cert", c.spice_ca_cert}, {"host_subject", c.spice_host_subject}};
  }
  return Events{
      op_event(c.operation_id, "OperationStarted",
               Json{{"kind", "connect_host"}, {"target", c.id}, {"host_id", c.id}}),
      host_event(c.id, "HostAdded", added),
  };
}

Result<Events> decide(const State& s, const RecordHostConnected& c, const Context&) {
  const Host* h = s.hosts.host(c.host_id);
  if (h == nullptr) return host_not_found(c.host_id);
  // Hosts that are removed or given up (alert) take no connections; old epochs are stale.
  if (h->state == "removed" || h->state == "alert" || c.epoch <= h->epoch) return Events{};
  Json d{{"epoch", c.epoch}, {"capabilities", c.capabilities}};
  if (!h->connect_operation.empty()) d["operation_id"] = h->connect_operation;
  Events out{host_event(c.host_id, "HostConnected", d)};
  if (const Operation* op = s.hosts.operation(h->connect_operation); op && op->active()) {
    out.push_back(op_event(op->id, "OperationSucceeded", Json::object()));
  }
  return out;
}

Result<Events> decide(const State& s, const RecordHostConnectFailed& c, const Context&) {
  const Host* h = s.hosts.host(c.host_id);
  if (h == nullptr) return host_not_found(c.host_id);
  if (h->connected || h->state == "removed" || h->state == "alert") return Events{};
  Events out{host_event(c.host_id, "HostConnectAttemptFailed",
                        Json{{"error", c.error}, {"attempt", h->failed_attempts + 1}})};
  if (c.refused || (c.final && h->state != "maintenance")) {
    Json d{{"reason", (c.refused ? "refused: " : "connect timeout: ") + c.error}};
    if (!h->connect_operation.empty()) d["operation_id"] = h->connect_operation;
    out.push_back(host_event(c.host_id, "HostFailed", d));
    if (const Operation* op = s.hosts.operation(h->connect_operation); op && op->active()) {
      out.push_back(op_event(op->id, "OperationFailed", Json{{"error", c.error}}));
    }
  }
  return out;
}

Result<Events> decide(const State& s, const RecordHostDisconnected& c, const Context&) {
  const Host* h = s.hosts.host(c.host_id);
  if (h == nullptr) return host_not_found(c.host_id);
  if (!h->connected || c.epoch != h->epoch) return Events{};
  return Events{host_event(c.host_id, "HostDisconnected",
                           Json{{"epoch", c.epoch}, {"reason", c.reason}})};
}

Result<Events> decide(const State& s, const EnterMaintenance& c, const Context&) {
  auto h = live_host(s, c.host_id);
  if (!h.ok()) return h.error();
  if (auto st = check_expected(s, host_stream(c.host_id), c.expected_version); !st) return st.error();
  if ((*h)->state == "maintenance") return Events{};
  return Events{host_event(c.host_id, "HostMaintenanceEntered",
                           Json{{"previous_state", (*h)->state}})};
}

Result<Events> decide(const State& s, const ActivateHost& c, const Context&) {
  auto h = live_host(s, c.host_id);
  if (!h.ok()) return h.error();
  if (auto st = check_expected(s, host_stream(c.host_id), c.expected_version); !st) return st.error();
  const Host& host = **h;
  if (host.state != "maintenance" && host.state != "alert") return Events{};
  std::string next = host.connected ? "up" : "connecting";
  return Events{host_event(c.host_id, "HostActivated", Json{{"state", next}})};
}

Result<Events> decide(const State& s, const RemoveHost& c, const Context&) {
  auto h = live_host(s, c.host_id);
  if (!h.ok()) return h.error();
  if (auto st = check_expected(s, host_stream(c.host_id), c.expected_version); !st) return st.error();
  for (const Vm* v : s.hosts.vms_of(c.host_id)) {
    if (v->managed()) {
      return refused("host_has_managed_vms", "host " + c.host_id + " still has VMs of pool " +
                                                 v->pool_id + " (e.g. " + v->name + ")");
    }
  }
  Events out;
  std::vector<const Operation*> ops;
  for (const auto& [id, op] : s.hosts.operations) {
    if (op.active() && op.host_id == c.host_id) ops.push_back(&op);
  }
  std::sort(ops.begin(), ops.end(), [](auto* a, auto* b) { return a->id < b->id; });
  for (const Operation* op : ops) {
    out.push_back(op_event(op->id, "OperationCancelled", Json{{"reason", "host removed"}}));
  }
  out.push_back(host_event(c.host_id, "HostRemoved", Json::object()));
  return out;
}

namespace {

// Events that follow from a VM reaching `observed`: port release, operation completion, drift.
void after_observation(const State& s, const Vm& v, const std::string& observed, Events& out) {
  // An allocation is made before a start: it returns when the VM stops (a transition from
  // running or paused) or disappears, not while a shut-off VM waits to be started.
  bool was_up = is_running_state(v.observed) || v.observed == "paused";
  bool now_down = !is_running_state(observed) && observed != "paused";
  if (v.allocated_port >= 0 && ((was_up && now_down) || observed == "missing")) {
    out.push_back(vm_event(v.id, "DisplayPortReleased",
                           Json{{"port", v.allocated_port}, {"reason", "vm " + observed}}));
  }
  const Operation* op = s.hosts.operation(v.operation);
  if (op != nullptr && op->active()) {
    if (op->action != "reboot" && satisfies(v.desired, observed)) {
      out.push_back(op_event(op->id, "OperationSucceeded", Json{{"observed", observed}}));
    }
    return;  // an operation drives the VM: a difference is pending work, not drift
  }
  if (v.desired == "none") return;
  // A transitional state (QEMU reports shutting_down on the way to shut_off, even for a
  // destroy) is not drift yet: the next observation shows where the VM settled.
  if (observed == "shutting_down") return;
  bool ok = satisfies(v.desired, observed);
  if (!ok && !v.drift) {
    out.push_back(vm_event(v.id, "VmDriftDetected",
                           Json{{"desired", v.desired}, {"observed", observed}}));
  } else if (ok && v.drift) {
    out.push_back(vm_event(v.id, "VmDriftResolved",
                           Json{{"resolution", "corrected"},
                                {"reason", "observed " + observed + " again"}}));
  }
}

}  // namespace

Result<Events> decide(const State& s, const RecordDomainsObserved& c, const Context&) {
  const Host* h = s.hosts.host(c.host_id);
  if (h == nullptr) return host_not_found(c.host_id);
  if (h->state == "removed" || !h->connected || c.epoch != h->epoch) return Events{};  // stale
  Events out;
  std::set<std::string> seen;
  for (const auto& d : c.domains) {
    if (d.uuid.empty() || !seen.insert(d.uuid).second) continue;
    if (d.name.rfind(kValidationDomainPrefix, 0) == 0) continue;  // a template check, gone in a moment
    std::string id = vm_id_for(c.host_id, d.uuid);
    const Vm* v = s.hosts.vm(id);
    if (v == nullptr) {
      out.push_back(vm_event(id, "VmImported",
                             Json{{"id", id}, {"host_id", c.host_id}, {"name", d.name},
                                  {"uuid", d.uuid}, {"observed", d.state},
                                  {"display_port", d.display_port}, {"epoch", c.epoch}}));
      continue;
    }
    if (v->observed != d.state || v->display_port != d.display_port || v->name != d.name) {
      out.push_back(vm_event(id, "VmObserved",
                             Json{{"observed", d.state}, {"display_port", d.display_port},
                                  {"name", d.name}, {"epoch", c.epoch}}));
    }
    after_observation(s, *v, d.state, out);
  }
  for (const Vm* v : s.hosts.vms_of(c.host_id)) {
    if (seen.count(v->uuid) != 0) continue;
    if (v->observed != "missing") {
      out.push_back(vm_event(v->id, "VmObserved",
                             Json{{"observed", "missing"}, {"display_port", -1},
                                  {"name", v->name}, {"epoch", c.epoch}}));
    }
    after_observation(s, *v, "missing", out);
  }
  // Operations of this host whose VM is gone from the view cannot complete.
  return out;
}

Result<Events> decide(const State& s, const RequestVmPower& c, const Context&) {
  const Vm* v = s.hosts.vm(c.vm_id);
  if (v == nullptr) return not_found("vm " + c.vm_id + " not found");
  if (auto st = check_expected(s, vm_stream(c.vm_id), c.expected_version); !st) return st.error();
  std::string desired;
  if (c.action == "start" || c.action == "reboot") {
    desired = "running";
  } else if (c.action == "shutdown" || c.action == "destroy") {
    desired = "shut_off";
  } else {
    return Error{Code::invalid_argument, "action must be start, shutdown, reboot or destroy",
                 "invalid_action", {{"action", "one of start, shutdown, reboot, destroy"}}};
  }
  if (c.operation_id.empty()) return invalid("operation id is required");
  if (s.hosts.operation(c.operation_id) != nullptr) {
    return Error::make(Code::already_exists, "operation " + c.operation_id + " exists",
                       "operation_exists");
  }
  auto h = live_host(s, v->host_id);
  if (!h.ok()) return h.error();
  if (c.action == "start" && (*h)->state == "maintenance") {
    return refused("host_in_maintenance",
                   "host " + v->host_id + " is in maintenance: no VM starts there");
  }
  if (c.action == "reboot" && v->observed == "shut_off") {
    return refused("vm_not_running", "vm " + v->name + " is shut off: start it instead");
  }
  Events out;
  std::string previous = v->desired;
  if (const Operation* old = s.hosts.operation(v->operation); old && old->active()) {
    out.push_back(op_event(old->id, "OperationCancelled",
                           Json{{"reason", "superseded by operation " + c.operation_id}}));
    previous = old->previous_desired;
  }
  if (v->drift) {
    out.push_back(vm_event(v->id, "VmDriftResolved",
                           Json{{"resolution", "superseded"},
                                {"reason", "power request " + c.action + " (operation " +
                                               c.operation_id + ")"}}));
  }
  out.push_back(op_event(c.operation_id, "OperationStarted",
                         Json{{"kind", "vm_power"}, {"target", c.vm_id}, {"host_id", v->host_id},
                              {"action", c.action}, {"previous_desired", previous}}));
  out.push_back(vm_event(c.vm_id, "VmPowerRequested",
                         Json{{"action", c.action}, {"desired", desired},
                              {"previous_desired", previous},
                              {"operation_id", c.operation_id}}));
  return out;
}

Result<Events> decide(const State& s, const BeginOperations& c, const Context&) {
  const Host* h = s.hosts.host(c.host_id);
  if (h == nullptr || c.epoch != h->epoch) return Events{};
  Events out;
  for (const auto& id : c.operation_ids) {
    const Operation* op = s.hosts.operation(id);
    if (op == nullptr || op->state != "pending" || op->host_id != c.host_id) continue;
    // A connect runs while not connected; VM work only on the current connection.
    if ((op->kind == "connect_host") == h->connected) continue;
    out.push_back(op_event(id, "OperationRunning", Json{{"epoch", c.epoch}}));
  }
  return out;
}

Result<Events> decide(const State& s, const RecordVmActionResult& c, const Context&) {
  const Vm* v = s.hosts.vm(c.vm_id);
  if (v == nullptr) return Events{};
  const Host* h = s.hosts.host(v->host_id);
  if (h == nullptr || c.epoch != h->epoch) return Events{};  // from an older connection
  if (c.operation_id.empty()) return Events{};  // drift corrections complete by observation
  const Operation* op = s.hosts.operation(c.operation_id);
  if (op == nullptr || !op->active() || v->operation != c.operation_id) return Events{};
  if (!c.ok) return Events{op_event(op->id, "OperationFailed", Json{{"error", c.error}})};
  if (op->action == "reboot" || satisfies(v->desired, v->observed)) {
    return Events{op_event(op->id, "OperationSucceeded", Json::object())};
  }
  return Events{};
}

Result<Events> decide(const State& s, const RecordDriftResolved& c, const Context&) {
  const Vm* v = s.hosts.vm(c.vm_id);
  if (v == nullptr || !v->drift) return Events{};
  const Host* h = s.hosts.host(v->host_id);
  if (h == nullptr || c.epoch != h->epoch) return Events{};
  if (c.resolution != "corrected" && c.resolution != "given_up") {
    return invalid("resolution must be corrected or given_up");
  }
  return Events{vm_event(v->id, "VmDriftResolved",
                         Json{{"resolution", c.resolution}, {"reason", c.reason}})};
}

Result<Events> decide(const State& s, const CancelOperation& c, const Context&) {
  const Operation* op = s.hosts.operation(c.operation_id);
  if (op == nullptr) return not_found("operation " + c.operation_id + " not found");
  if (!op->active()) {
    return refused("operation_finished", "operation " + c.operation_id + " is already " + op->state);
  }
  std::string reason = c.reason.empty() ? "cancelled" : c.reason;
  Events out{op_event(op->id, "OperationCancelled", Json{{"reason", reason}})};
  if (op->kind == "connect_host") {
    const Host* h = s.hosts.host(op->target);
    if (h != nullptr && !h->connected && h->state == "connecting") {
      out.push_back(host_event(h->id, "HostFailed",
                               Json{{"reason", "connect operation cancelled"},
                                    {"operation_id", op->id}}));
    }
  }
  return out;
}

Result<Events> decide(const State& s, const AdoptVm& c, const Context&) {
  const Vm* v = s.hosts.vm(c.vm_id);
  if (v == nullptr) return not_found("vm " + c.vm_id + " not found");
  if (c.pool_id.empty()) return invalid("pool id is required");
  if (v->pool_id == c.pool_id) return Events{};
  if (v->managed()) return refused("vm_managed", "vm " + v->name + " belongs to pool " + v->pool_id);
  return Events{vm_event(v->id, "VmAdopted", Json{{"pool_id", c.pool_id}})};
}

Result<Events> decide(const State& s, const ForgetVm& c, const Context&) {
  const Vm* v = s.hosts.vm(c.vm_id);
  if (v == nullptr) return not_found("vm " + c.vm_id + " not found");
  if (auto st = check_expected(s, vm_stream(c.vm_id), c.expected_version); !st) return st.error();
  if (const PoolMember* m = s.pools.member(c.vm_id); m != nullptr && !m->session_id.empty()) {
    return refused("vm_in_use", "vm " + v->name + " has a live desktop session");
  }
  if (v->managed() && v->observed != "missing") {
    return refused("vm_managed", "vm " + v->name + " belongs to pool " + v->pool_id +
                                     ": remove it through the pool (shrink or delete the pool)");
  }
  return Events{vm_event(v->id, "VmForgotten",
                         Json{{"observed", v->observed}, {"pool_id", v->pool_id}, {"name", v->name}})};
}

void forget_vm(HostsState& hs, const std::string& vm_id) {
  auto it = hs.vms.find(vm_id);
  if (it == hs.vms.end()) return;
  if (auto h = hs.vm_by_uuid.find(it->second.host_id); h != hs.vm_by_uuid.end()) {
    h->second.erase(it->second.uuid);
  }
  hs.vms.erase(it);
}

void release_pool_vms(HostsState& hs, const std::string& pool_id) {
  std::vector<std::string> gone;
  for (auto& [id, v] : hs.vms) {
    if (v.pool_id != pool_id) continue;
    if (v.observed == "missing") {
      gone.push_back(id);
    } else {
      v.pool_id.clear();
      v.desired = "none";
      v.drift = false;
    }
  }
  for (const auto& id : gone) forget_vm(hs, id);
}

Result<Events> decide(const State& s, const AllocateDisplayPort& c, const Context&) {
  const Vm* v = s.hosts.vm(c.vm_id);
  if (v == nullptr) return not_found("vm " + c.vm_id + " not found");
  auto h = live_host(s, v->host_id);
  if (!h.ok()) return h.error();
  if (v->allocated_port >= 0) return Events{};
  auto used = s.hosts.ports_in_use(v->host_id);
  int port = -1;
  // A running VM already on a port of the range keeps that port.
  if (auto it = used.find(v->display_port); it != used.end() && it->second == v->id) {
    port = v->display_port;
  }
  for (int p = (*h)->ports.first; port < 0 && p <= (*h)->ports.last; ++p) {
    if (used.count(p) == 0) port = p;
  }
  if (port < 0) {
    return refused("display_ports_exhausted",
                   "host " + (*h)->name + " has no free display port in " +
                       std::to_string((*h)->ports.first) + "-" + std::to_string((*h)->ports.last));
  }
  return Events{vm_event(v->id, "DisplayPortAllocated", Json{{"port", port}})};
}

Result<Events> decide(const State& s, const FailOperation& c, const Context&) {
  const Operation* op = s.hosts.operation(c.operation_id);
  if (op == nullptr || !op->active()) return Events{};
  return Events{op_event(op->id, "OperationFailed", Json{{"error", c.error}})};
}

// ---- evolve -----------------------------------------------------------------------------
namespace {

std::string id_of(const Event& e, size_t prefix) { return e.stream.substr(prefix); }

Host* host_of(State& s, const Event& e) {
  auto it = s.hosts.hosts.find(id_of(e, 5));  // "host-"
  return it == s.hosts.hosts.end() ? nullptr : &it->second;
}
Vm* vm_of(State& s, const Event& e) {
  auto it = s.hosts.vms.find(id_of(e, 3));  // "vm-"
  return it == s.hosts.vms.end() ? nullptr : &it->second;
}
Operation* op_of(State& s, const std::string& id) {
  auto it = s.hosts.operations.find(id);
  return it == s.hosts.operations.end() ? nullptr : &it->second;
}

// Every event carrying an operation id is listed on that operation.
void track(State& s, const Event& e, const Applied& at) {
  if (!e.data.is_object()) return;
  auto it = e.data.find("operation_id");
  if (it == e.data.end() || !it->is_string()) return;
  if (Operation* op = op_of(s, it->get<std::string>())) op->events.push_back(at.position);
}

void touch(Host& h, const Applied& at) {
  h.updated_at_ms = at.recorded_at_ms;
  h.version = at.stream_version;
}
void touch(Vm& v, const Applied& at) {
  v.updated_at_ms = at.recorded_at_ms;
  v.version = at.stream_version;
}
void set_state(Host& h, const std::string& state, const std::string& reason, const Applied& at) {
  if (h.state != state) h.state_since_ms = at.recorded_at_ms;
  h.state = state;
  h.reason = reason;
}

void on_host_added(State& s, const Event& e, const Applied& at) {
  Host h;
  h.id = e.data.at("id").get<std::string>();
  h.name = e.data.at("name").get<std::string>();
  h.uri = e.data.at("uri").get<std::string>();
  h.address = e.data.at("address").get<std::string>();
  h.ports = {int_of<int>(e.data.at("ports_first")), int_of<int>(e.data.at("ports_last"))};
  h.connect_operation = e.data.value("operation_id", "");
  if (auto tls = e.data.find("spice_tls"); tls != e.data.end() && tls->is_object()) {
    h.spice_ca_cert = tls->value("ca_cert", "");
    h.spice_host_subject = tls->value("host_subject", "");
  }
  h.created_at_ms = at.recorded_at_ms;
  set_state(h, "connecting", "added", at);
  touch(h, at);
  std::string id = h.id;
  s.hosts.hosts[id] = std::move(h);
  track(s, e, at);
}

void on_host_connected(State& s, const Event& e, const Applied& at) {
  Host* h = host_of(s, e);
  if (h == nullptr) return;
  h->epoch = int_of<uint64_t>(e.data.at("epoch"));
  h->capabilities = e.data.value("capabilities", Json::object());
  h->connected = true;
  h->failed_attempts = 0;
  h->last_error.clear();
  h->connect_operation.clear();
  if (h->state != "maintenance") {
    set_state(*h, "up", "connected (epoch " + std::to_string(h->epoch) + ")", at);
  }
  touch(*h, at);
  track(s, e, at);
}

void on_attempt_failed(State& s, const Event& e, const Applied& at) {
  Host* h = host_of(s, e);
  if (h == nullptr) return;
  h->failed_attempts = e.data.value("attempt", h->failed_attempts + 1);
  h->last_error = e.data.value("error", "");
  touch(*h, at);
}

void on_host_failed(State& s, const Event& e, const Applied& at) {
  Host* h = host_of(s, e);
  if (h == nullptr) return;
  h->connected = false;
  h->connect_operation.clear();
  set_state(*h, "alert", e.data.value("reason", ""), at);
  touch(*h, at);
  track(s, e, at);
}

void on_host_disconnected(State& s, const Event& e, const Applied& at) {
  Host* h = host_of(s, e);
  if (h == nullptr) return;
  h->connected = false;
  h->failed_attempts = 0;
  if (h->state == "up") set_state(*h, "disconnected", e.data.value("reason", ""), at);
  touch(*h, at);
}

void on_maintenance(State& s, const Event& e, const Applied& at) {
  Host* h = host_of(s, e);
  if (h == nullptr) return;
  set_state(*h, "maintenance", "maintenance requested", at);
  touch(*h, at);
}

void on_activated(State& s, const Event& e, const Applied& at) {
  Host* h = host_of(s, e);
  if (h == nullptr) return;
  h->failed_attempts = 0;
  set_state(*h, e.data.value("state", "connecting"), "activated", at);
  touch(*h, at);
}

void on_host_removed(State& s, const Event& e, const Applied& at) {
  Host* h = host_of(s, e);
  if (h == nullptr) return;
  h->connected = false;
  set_state(*h, "removed", "removed", at);
  touch(*h, at);
  auto it = s.hosts.vm_by_uuid.find(h->id);
  if (it != s.hosts.vm_by_uuid.end()) {
    for (const auto& [uuid, vid] : it->second) s.hosts.vms.erase(vid);
    s.hosts.vm_by_uuid.erase(it);
  }
}

void on_vm_imported(State& s, const Event& e, const Applied& at) {
  Vm v;
  v.id = e.data.at("id").get<std::string>();
  v.host_id = e.data.at("host_id").get<std::string>();
  v.name = e.data.at("name").get<std::string>();
  v.uuid = e.data.at("uuid").get<std::string>();
  v.observed = e.data.at("observed").get<std::string>();
  v.display_port = e.data.value("display_port", -1);
  v.created_at_ms = at.recorded_at_ms;
  touch(v, at);
  s.hosts.vm_by_uuid[v.host_id][v.uuid] = v.id;
  s.hosts.vms[v.id] = std::move(v);
}

void on_vm_observed(State& s, const Event& e, const Applied& at) {
  Vm* v = vm_of(s, e);
  if (v == nullptr) return;
  v->observed = e.data.at("observed").get<std::string>();
  v->display_port = e.data.value("display_port", -1);
  v->name = e.data.value("name", v->name);
  touch(*v, at);
}

void on_drift_detected(State& s, const Event& e, const Applied& at) {
  Vm* v = vm_of(s, e);
  if (v == nullptr) return;
  v->drift = true;
  v->drift_reason = "desired " + e.data.value("desired", "") + ", observed " +
                    e.data.value("observed", "");
  touch(*v, at);
}

void on_drift_resolved(State& s, const Event& e, const Applied& at) {
  Vm* v = vm_of(s, e);
  if (v == nullptr) return;
  v->drift = false;
  v->drift_reason.clear();
  // Given up: the broker stops asserting a power state for this VM.
  if (e.data.value("resolution", "") == "given_up") v->desired = "none";
  touch(*v, at);
}

void on_power_requested(State& s, const Event& e, const Applied& at) {
  Vm* v = vm_of(s, e);
  if (v == nullptr) return;
  v->desired = e.data.at("desired").get<std::string>();
  v->operation = e.data.at("operation_id").get<std::string>();
  touch(*v, at);
  track(s, e, at);
}

void on_vm_adopted(State& s, const Event& e, const Applied& at) {
  Vm* v = vm_of(s, e);
  if (v == nullptr) return;
  v->pool_id = e.data.at("pool_id").get<std::string>();
  touch(*v, at);
}

void on_port_allocated(State& s, const Event& e, const Applied& at) {
  Vm* v = vm_of(s, e);
  if (v == nullptr) return;
  v->allocated_port = int_of<int>(e.data.at("port"));
  touch(*v, at);
}

void on_port_released(State& s, const Event& e, const Applied& at) {
  Vm* v = vm_of(s, e);
  if (v == nullptr) return;
  v->allocated_port = -1;
  touch(*v, at);
}

void on_op_started(State& s, const Event& e, const Applied& at) {
  Operation op;
  op.id = e.data.at("operation_id").get<std::string>();
  op.kind = e.data.at("kind").get<std::string>();
  op.target = e.data.at("target").get<std::string>();
  op.host_id = e.data.value("host_id", "");
  op.action = e.data.value("action", "");
  op.previous_desired = e.data.value("previous_desired", "");
  op.state = "pending";
  op.created_at_ms = at.recorded_at_ms;
  op.updated_at_ms = at.recorded_at_ms;
  op.version = at.stream_version;
  std::string id = op.id;
  s.hosts.operations[id] = std::move(op);
  track(s, e, at);
}

// Ends an operation; a vm_power operation that did not succeed gives back the VM's
// previous desired state.
void finish_op(State& s, const Event& e, const Applied& at, const std::string& state) {
  Operation* op = op_of(s, e.data.at("operation_id").get<std::string>());
  if (op == nullptr) return;
  op->state = state;
  if (state == "failed") op->error = e.data.value("error", "");
  if (state == "cancelled") op->error = e.data.value("reason", "");
  op->updated_at_ms = at.recorded_at_ms;
  op->version = at.stream_version;
  track(s, e, at);
  if (op->kind == "vm_power") {
    auto it = s.hosts.vms.find(op->target);
    if (it != s.hosts.vms.end() && it->second.operation == op->id) {
      it->second.operation.clear();
      if (state != "succeeded") it->second.desired = op->previous_desired;
    }
  } else if (op->kind == "connect_host") {
    auto it = s.hosts.hosts.find(op->target);
    if (it != s.hosts.hosts.end() && it->second.connect_operation == op->id) {
      it->second.connect_operation.clear();
    }
  }
}

void on_op_running(State& s, const Event& e, const Applied& at) {
  Operation* op = op_of(s, e.data.at("operation_id").get<std::string>());
  if (op == nullptr) return;
  op->state = "running";
  op->updated_at_ms = at.recorded_at_ms;
  op->version = at.stream_version;
  track(s, e, at);
}
void on_op_succeeded(State& s, const Event& e, const Applied& at) { finish_op(s, e, at, "succeeded"); }
void on_op_failed(State& s, const Event& e, const Applied& at) { finish_op(s, e, at, "failed"); }
void on_op_cancelled(State& s, const Event& e, const Applied& at) { finish_op(s, e, at, "cancelled"); }

}  // namespace

void register_hosts(EvolveTable& t) {
  t["HostAdded"] = on_host_added;
  t["HostConnected"] = on_host_connected;
  t["HostConnectAttemptFailed"] = on_attempt_failed;
  t["HostFailed"] = on_host_failed;
  t["HostDisconnected"] = on_host_disconnected;
  t["HostMaintenanceEntered"] = on_maintenance;
  t["HostActivated"] = on_activated;
  t["HostRemoved"] = on_host_removed;
  t["VmImported"] = on_vm_imported;
  t["VmObserved"] = on_vm_observed;
  t["VmDriftDetected"] = on_drift_detected;
  t["VmDriftResolved"] = on_drift_resolved;
  t["VmPowerRequested"] = on_power_requested;
  t["VmAdopted"] = on_vm_adopted;
  t["VmForgotten"] = [](State& st, const Event& e, const Applied&) { forget_vm(st.hosts, e.stream.substr(3)); };
  t["DisplayPortAllocated"] = on_port_allocated;
  t["DisplayPortReleased"] = on_port_released;
  t["OperationStarted"] = on_op_started;
  t["OperationRunning"] = on_op_running;
  t["OperationSucceeded"] = on_op_succeeded;
  t["OperationFailed"] = on_op_failed;
  t["OperationCancelled"] = on_op_cancelled;
}

Json hosts_to_json(const HostsState& s) {
  std::map<std::string, Json> hosts, vms, ops;
  for (const auto& [id, h] : s.hosts) hosts[id] = host_to_json(s, h);
  for (const auto& [id, v] : s.vms) vms[id] = vm_to_json(s, v);
  for (const auto& [id, o] : s.operations) {
    Json j = operation_to_json(o);
    j["previous_desired"] = o.previous_desired;
    ops[id] = j;
  }
  return Json{{"hosts", hosts}, {"vms", vms}, {"operations", ops}};
}

}  // namespace atrium::domain

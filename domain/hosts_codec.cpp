// Snapshot codec of the hosts module: hosts_from_json inverts hosts_to_json (the
// round-trip test in tests/domain/snapshot_test.cpp keeps them in step).
#include "domain/evolve_table.h"
#include "domain/hosts.h"

namespace atrium::domain {

namespace {
std::string str_or_empty(const Json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? std::string() : it->get<std::string>();
}
int int_or(const Json& j, const char* key, int dflt) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? dflt : it->get<int>();
}
}  // namespace

Status hosts_from_json(HostsState& s, const Json& j) {
  s = HostsState{};
  for (const auto& [id, hj] : j.at("hosts").items()) {
    Host h;
    h.id = hj.at("id").get<std::string>();
    h.name = hj.at("name").get<std::string>();
    h.uri = hj.at("uri").get<std::string>();
    h.address = hj.at("address").get<std::string>();
    h.ports.first = int_of<int>(hj.at("display_ports").at("first"));
    h.ports.last = int_of<int>(hj.at("display_ports").at("last"));
    h.state = hj.at("state").get<std::string>();
    h.reason = hj.at("reason").get<std::string>();
    h.connected = hj.at("connected").get<bool>();
    h.epoch = int_of<uint64_t>(hj.at("epoch"));
    h.capabilities = hj.at("capabilities");
    h.last_error = hj.at("last_error").get<std::string>();
    h.failed_attempts = int_of<uint32_t>(hj.at("failed_attempts"));
    h.connect_operation = str_or_empty(hj, "connect_operation_id");
    if (auto tls = hj.find("spice_tls"); tls != hj.end() && tls->is_object()) {
      h.spice_ca_cert = tls->value("ca_cert", "");
      h.spice_host_subject = tls->value("host_subject", "");
    }
    h.state_since_ms = int_of<int64_t>(hj.at("state_since_ms"));
    h.created_at_ms = int_of<int64_t>(hj.at("created_at_ms"));
    h.updated_at_ms = int_of<int64_t>(hj.at("updated_at_ms"));
    h.version = int_of<uint64_t>(hj.at("version"));
    s.hosts[id] = std::move(h);
  }
  for (const auto& [id, vj] : j.at("vms").items()) {
    Vm v;
    v.id = vj.at("id").get<std::string>();
    v.name = vj.at("name").get<std::string>();
    v.uuid = vj.at("uuid").get<std::string>();
    v.host_id = vj.at("host_id").get<std::string>();
    v.pool_id = str_or_empty(vj, "pool_id");
    v.desired = vj.at("desired_state").get<std::string>();
    v.observed = vj.at("last_observed_state").get<std::string>();
    v.display_port = int_or(vj, "display_port", -1);
    v.allocated_port = int_or(vj, "allocated_display_port", -1);
    v.drift = vj.at("drift").get<bool>();
    v.drift_reason = str_or_empty(vj, "drift_reason");
    v.operation = str_or_empty(vj, "operation_id");
    v.created_at_ms = int_of<int64_t>(vj.at("created_at_ms"));
    v.updated_at_ms = int_of<int64_t>(vj.at("updated_at_ms"));
    v.version = int_of<uint64_t>(vj.at("version"));
    s.vm_by_uuid[v.host_id][v.uuid] = v.id;
    s.vms[id] = std::move(v);
  }
  for (const auto& [id, oj] : j.at("operations").items()) {
    Operation o;
    o.id = oj.at("id").get<std::string>();
    o.kind = oj.at("kind").get<std::string>();
    o.target = oj.at("target").get<std::string>();
    o.state = oj.at("state").get<std::string>();
    o.events = oj.at("events").get<std::vector<uint64_t>>();
    o.created_at_ms = int_of<int64_t>(oj.at("created_at_ms"));
    o.updated_at_ms = int_of<int64_t>(oj.at("updated_at_ms"));
    o.version = int_of<uint64_t>(oj.at("version"));
    o.error = str_or_empty(oj, "error");
    o.action = str_or_empty(oj, "action");
    o.host_id = str_or_empty(oj, "host_id");
    o.previous_desired = str_or_empty(oj, "previous_desired");
    s.operations[id] = std::move(o);
  }
  return Status::Ok();
}

}  // namespace atrium::domain

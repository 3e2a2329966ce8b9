// Snapshot codec of the application cloud: reads the appcloud_to_json form back
// (appcloud_from_json), rebuilding the indexes.
#include <stdexcept>

#include "domain/appcloud.h"
#include "domain/evolve_table.h"

namespace atrium::domain {

namespace {

template <typename T>
T get(const Json& j, const char* key) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    return int_of<T>(j.at(key));
  } else {
    return j.at(key).get<T>();
  }
}

Scope scope_field(const Json& j) {
  auto s = parse_scope(get<std::string>(j, "scope"));
  if (!s) throw std::invalid_argument("scope must be server or cluster");
  return *s;
}

void read_all(AppCloudState& s, const Json& j) {
  for (const auto& [id, cj] : j.at("clusters").items()) {
    Cluster c;
    c.id = get<std::string>(cj, "id");
    c.name = get<std::string>(cj, "name");
    c.description = get<std::string>(cj, "description");
    auto p = placement_from_json(cj.at("placement"));
    if (!p.ok()) throw std::invalid_argument(p.error().message);
    c.placement = *p;
    c.created_at_ms = get<int64_t>(cj, "created_at_ms");
    c.updated_at_ms = get<int64_t>(cj, "updated_at_ms");
    c.version = get<uint64_t>(cj, "version");
    s.clusters[id] = std::move(c);
  }
  for (const auto& [id, vj] : j.at("servers").items()) {
    Server v;
    v.id = get<std::string>(vj, "id");
    v.name = get<std::string>(vj, "name");
    v.address = get<std::string>(vj, "address");
    v.os_type = get<std::string>(vj, "os_type");
    v.os_version = get<std::string>(vj, "os_version");
    v.cpus = get<uint32_t>(vj, "cpus");
    v.memory_mb = get<uint64_t>(vj, "memory_mb");
    v.remote_app_service = get<std::string>(vj, "remote_app_service") == "enabled";
    if (!vj.at("cluster_id").is_null()) v.cluster_id = get<std::string>(vj, "cluster_id");
    v.applications = get<std::set<std::string>>(vj, "applications");
    if (vj.contains("agent_applications")) {  // absent in older snapshots
      v.agent_applications = get<std::set<std::string>>(vj, "agent_applications");
    }
    v.load_position = get<uint64_t>(vj, "load_position");
    if (const Json& l = vj.at("load"); !l.is_null()) {
      v.load = LoadReport{get<double>(l, "cpu_load"), get<double>(l, "memory_load"),
                          get<uint32_t>(l, "sessions"), get<int64_t>(l, "reported_at_ms"),
                          v.load_position};
    }
    v.launches_since_report = get<uint32_t>(vj, "launches_since_report");
    if (const Json& r = vj.at("reported"); !r.is_null()) {
      v.reported = InventoryReport{get<std::set<std::string>>(r, "apps"),
                                   get<std::set<std::string>>(r, "users"),
                                   get<int64_t>(r, "reported_at_ms")};
    }
    v.created_at_ms = get<int64_t>(vj, "created_at_ms");
    v.updated_at_ms = get<int64_t>(vj, "updated_at_ms");
    v.version = get<uint64_t>(vj, "version");
    s.servers[id] = std::move(v);
  }
  // "servers" and "clusters" of an application are derived from the servers.
  for (const auto& [id, aj] : j.at("applications").items()) {
    Application a;
    a.id = get<std::string>(aj, "id");
    a.name = get<std::string>(aj, "name");
    a.description = get<std::string>(aj, "description");
    a.executable_path = get<std::string>(aj, "executable_path");
    a.desktop_file = get<std::string>(aj, "desktop_file");
    a.created_at_ms = get<int64_t>(aj, "created_at_ms");
    a.version = get<uint64_t>(aj, "version");
    s.applications[id] = std::move(a);
  }
  for (const auto& [id, pj] : j.at("publications").items()) {
    Publication p;
    p.id = get<std::string>(pj, "id");
    p.application_id = get<std::string>(pj, "application_id");
    p.scope = scope_field(pj);
    p.target_id = get<std::string>(pj, "target_id");
    p.created_at_ms = get<int64_t>(pj, "created_at_ms");
    p.version = get<uint64_t>(pj, "version");
    s.publications[id] = std::move(p);
  }
  for (const auto& [id, aj] : j.at("authorizations").items()) {
    Authorization a;
    a.id = get<std::string>(aj, "id");
    a.user_id = get<std::string>(aj, "user_id");
    a.application_id = get<std::string>(aj, "application_id");
    a.scope = scope_field(aj);
    a.target_id = get<std::string>(aj, "target_id");
    a.created_at_ms = get<int64_t>(aj, "created_at_ms");
    a.version = get<uint64_t>(aj, "version");
    s.authorizations[id] = std::move(a);
  }
  for (const auto& [id, sj] : j.at("sessions").items()) s.sessions[id] = app_session_from_json(sj);
  s.round_robin = get<std::map<std::string, uint64_t>>(j, "round_robin");
}

}  // namespace

Status appcloud_from_json(AppCloudState& s, const Json& j) {
  AppCloudState fresh;
  try {
    read_all(fresh, j);
  } catch (const std::exception& ex) {
    return Error::make(Code::invalid_argument,
                       std::string("not an application-cloud snapshot: ") + ex.what(),
                       "invalid_snapshot");
  }
  fresh.reindex();
  s = std::move(fresh);
  return Status::Ok();
}

}  // namespace atrium::domain

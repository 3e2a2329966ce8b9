// JSON views of the application cloud (domain/appcloud.h): clusters and their placement,
// servers, applications, publications, authorizations, desired state, sync status, entitlements.
#include "domain/appcloud.h"
#include "domain/appcloud_internal.h"

namespace atrium::domain {

using namespace appcloud_detail;

Json placement_to_json(const ClusterPlacement& p) {
  return Json{
      {"policy", intra_policy_name(p.policy)},
      {"weights",
       {{"cpu", p.weights.cpu}, {"memory", p.weights.memory}, {"sessions", p.weights.sessions}}},
      {"max_sessions", p.max_sessions}};
}

Result<ClusterPlacement> placement_from_json(const Json& j) {
  ClusterPlacement p;
  auto bad = [](const std::string& field, const std::string& problem) {
    return field_error(field, problem, "invalid_placement");
  };
  if (!j.is_object()) return bad("placement", "must be an object");
  if (j.contains("policy")) {
    if (!j["policy"].is_string()) return bad("placement.policy", "must be a string");
    auto pol = parse_intra_policy(j["policy"].get<std::string>());
    if (!pol) {
      return bad("placement.policy",
                 "must be least_sessions, least_cpu, least_memory, round_robin or weighted");
    }
    p.policy = *pol;
  }
  if (j.contains("weights")) {
    const Json& w = j["weights"];
    if (!w.is_object()) return bad("placement.weights", "must be an object");
    for (auto [key, dst] :
         {std::pair{"cpu", &p.weights.cpu}, std::pair{"memory", &p.weights.memory},
          std::pair{"sessions", &p.weights.sessions}}) {
      if (!w.contains(key)) continue;
      if (!w[key].is_number())
        return bad(std::string("placement.weights.") + key, "must be a number");
      *dst = w[key].get<double>();
    }
  }
  if (j.contains("max_sessions")) {
    if (!j["max_sessions"].is_number_unsigned()) {
      return bad("placement.max_sessions", "must be a non-negative integer");
    }
    p.max_sessions = int_of<uint32_t>(j["max_sessions"]);
  }
  if (auto st = validate_placement(p); !st) return st.error();
  return p;
}

Json cluster_to_json(const Cluster& c) {
  return Json{{"id", c.id},
              {"name", c.name},
              {"description", c.description},
              {"placement", placement_to_json(c.placement)},
              {"created_at_ms", c.created_at_ms},
              {"updated_at_ms", c.updated_at_ms},
              {"version", c.version}};
}

namespace {
Json load_to_json(const std::optional<LoadReport>& l) {
  if (!l) return nullptr;
  return Json{{"cpu_load", l->cpu_load},
              {"memory_load", l->memory_load},
              {"sessions", l->sessions},
              {"reported_at_ms", l->reported_at_ms}};
}
Json inventory_to_json(const std::optional<InventoryReport>& r) {
  if (!r) return nullptr;
  return Json{{"apps", r->apps}, {"users", r->users}, {"reported_at_ms", r->reported_at_ms}};
}
}  // namespace

Json server_to_json(const Server& s) {
  return Json{{"id", s.id},
              {"name", s.name},
              {"address", s.address},
              {"os_type", s.os_type},
              {"os_version", s.os_version},
              {"cpus", s.cpus},
              {"memory_mb", s.memory_mb},
              {"remote_app_service", s.remote_app_service ? "enabled" : "disabled"},
              {"cluster_id", s.standalone() ? Json(nullptr) : Json(s.cluster_id)},
              {"applications", s.applications},
              {"agent_applications", s.agent_applications},
              {"load", load_to_json(s.load)},
              {"load_position", s.load_position},
              {"launches_since_report", s.launches_since_report},
              {"reported", inventory_to_json(s.reported)},
              {"created_at_ms", s.created_at_ms},
              {"updated_at_ms", s.updated_at_ms},
              {"version", s.version}};
}

Json application_to_json(const AppCloudState& s, const Application& a) {
  return Json{{"id", a.id},
              {"name", a.name},
              {"description", a.description},
              {"executable_path", a.executable_path},
              {"desktop_file", a.desktop_file},
              {"servers", s.servers_with(a.id)},
              {"clusters", s.clusters_with(a.id)},
              {"created_at_ms", a.created_at_ms},
              {"version", a.version}};
}

Json publication_to_json(const Publication& p) {
  return Json{{"id", p.id},
              {"application_id", p.application_id},
              {"scope", scope_name(p.scope)},
              {"target_id", p.target_id},
              {"created_at_ms", p.created_at_ms},
              {"version", p.version}};
}

Json authorization_to_json(const Authorization& a) {
  Json j{{"id", a.id},
         {"user_id", a.user_id},
         {"application_id", a.application_id},
         {"scope", scope_name(a.scope)},
         {"target_id", a.target_id},
         {"created_at_ms", a.created_at_ms},
         {"version", a.version}};
  if (a.user_id.rfind(kGroupPrincipal, 0) == 0) j["group"] = a.user_id.substr(6);
  return j;
}

Json desired_state_to_json(const DesiredState& d) {
  return Json{{"server_id", d.server_id},
              {"remote_app_service", d.remote_app_service ? "enabled" : "disabled"},
              {"remote_apps", d.remote_apps},
              {"remote_users", d.remote_users}};
}

Json sync_status_to_json(const SyncStatus& st) {
  return Json{{"status", st.in_sync ? "in_sync" : "out_of_sync"},
              {"reported", st.reported},
              {"missing_apps", st.missing_apps},
              {"extra_apps", st.extra_apps},
              {"missing_users", st.missing_users},
              {"extra_users", st.extra_users}};
}

Json entitlement_to_json(const Entitlement& e) {
  Json where = Json::array();
  for (const auto& w : e.where) {
    where.push_back(Json{{"authorization_id", w.authorization_id},
                         {"scope", scope_name(w.scope)},
                         {"target_id", w.target_id}});
  }
  return Json{{"application_id", e.application_id}, {"name", e.name}, {"where", where}};
}

Json appcloud_to_json(const AppCloudState& s) {
  auto each = [](const auto& m, auto f) {
    Json out = Json::object();
    for (const auto& [id, v] : m) out[id] = f(v);
    return out;
  };
  return Json{
      {"clusters", each(s.clusters, cluster_to_json)},
      {"servers", each(s.servers, server_to_json)},
      {"applications",
       each(s.applications, [&s](const Application& a) { return application_to_json(s, a); })},
      {"publications", each(s.publications, publication_to_json)},
      {"authorizations", each(s.authorizations, authorization_to_json)},
      {"sessions", each(s.sessions, session_to_json)},
      {"round_robin", s.round_robin}};
}

}  // namespace atrium::domain

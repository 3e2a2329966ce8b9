#include "domain/appcloud.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iterator>
#include <stdexcept>
#include <tuple>

#include "domain/evolve_table.h"
#include "domain/sha256.h"
#include "domain/state.h"
#include "domain/users.h"

namespace atrium::domain {

// ---- names and small helpers ------------------------------------------------------------
const char* scope_name(Scope s) {
  return s == Scope::server ? "server" : "cluster";
}

std::optional<Scope> parse_scope(std::string_view s) {
  if (s == "server") return Scope::server;
  if (s == "cluster") return Scope::cluster;
  return std::nullopt;
}

const char* intra_policy_name(IntraClusterPolicy p) {
  switch (p) {
    case IntraClusterPolicy::least_sessions:
      return "least_sessions";
    case IntraClusterPolicy::least_cpu:
      return "least_cpu";
    case IntraClusterPolicy::least_memory:
      return "least_memory";
    case IntraClusterPolicy::round_robin:
      return "round_robin";
    case IntraClusterPolicy::weighted:
      return "weighted";
  }
  return "weighted";
}

std::optional<IntraClusterPolicy> parse_intra_policy(std::string_view s) {
  for (auto p : {IntraClusterPolicy::least_sessions, IntraClusterPolicy::least_cpu,
                 IntraClusterPolicy::least_memory, IntraClusterPolicy::round_robin,
                 IntraClusterPolicy::weighted}) {
    if (s == intra_policy_name(p)) return p;
  }
  return std::nullopt;
}

std::string application_id(const std::string& name, const std::string& executable_path) {
  std::string input = name;
  input.push_back('\0');
  input += executable_path;
  return sha256_hex(input).substr(0, 16);
}

std::string cluster_stream(const std::string& id) {
  return "cluster-" + id;
}
std::string server_stream(const std::string& id) {
  return "server-" + id;
}
std::string server_load_stream(const std::string& id) {
  return "server-load-" + id;
}
std::string server_inventory_stream(const std::string& id) {
  return "server-inventory-" + id;
}
std::string application_stream(const std::string& id) {
  return "application-" + id;
}
std::string publication_stream(const std::string& id) {
  return "publication-" + id;
}
std::string authorization_stream(const std::string& id) {
  return "authorization-" + id;
}
std::string session_stream(const std::string& id) {
  return "session-" + id;
}

namespace {

Error already(std::string reason, std::string msg) {
  return Error::make(Code::already_exists, std::move(msg), std::move(reason));
}
Error missing(std::string reason, std::string msg) {
  return Error::make(Code::not_found, std::move(msg), std::move(reason));
}
Error field_error(const std::string& field, const std::string& problem, std::string reason) {
  return Error{
      Code::invalid_argument, field + " " + problem, std::move(reason), {{field, problem}}};
}

// Free text: at most `max` bytes, no control characters except (optionally) newlines and tabs.
Status validate_text(const std::string& field, const std::string& v, size_t max, bool multiline,
                     bool required = false) {
  if (required && v.empty()) return field_error(field, "must not be empty", "invalid_" + field);
  if (v.size() > max) {
    return field_error(field, "must be at most " + std::to_string(max) + " characters",
                       "invalid_" + field);
  }
  for (unsigned char c : v) {
    bool allowed_ws = multiline && (c == '\n' || c == '\t' || c == '\r');
    if ((c < 0x20 && !allowed_ws) || c == 0x7f) {
      return field_error(field, "must not contain control characters", "invalid_" + field);
    }
  }
  return Status::Ok();
}

Status validate_address(const std::string& a) {
  if (a.empty() || a.size() > 255) {
    return field_error("address", "must be 1 to 255 characters", "invalid_address");
  }
  for (unsigned char c : a) {
    if (c <= 0x20 || c == 0x7f) {
      return field_error("address", "must not contain spaces or control characters",
                         "invalid_address");
    }
  }
  return Status::Ok();
}

Status validate_os_type(const std::string& t) {
  if (t != "windows" && t != "linux") {
    return field_error("os_type", "must be windows or linux", "invalid_os_type");
  }
  return Status::Ok();
}

std::string join(const std::vector<std::string>& items, const char* sep = ", ") {
  std::string out;
  for (const auto& i : items) {
    if (!out.empty()) out += sep;
    out += i;
  }
  return out;
}

std::set<std::string> minus(const std::set<std::string>& a, const std::set<std::string>& b) {
  std::set<std::string> out;
  std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::inserter(out, out.end()));
  return out;
}

// What `srv` should hold if it were in cluster `cluster_id` ("" = standalone).
DesiredState desired_for(const AppCloudState& s, const Server& srv, const std::string& cluster_id) {
  DesiredState d;
  d.server_id = srv.id;
  d.remote_app_service = srv.remote_app_service;
  Scope scope = cluster_id.empty() ? Scope::server : Scope::cluster;
  const std::string& target = cluster_id.empty() ? srv.id : cluster_id;
  for (const Publication* p : s.publications_at(scope, target)) {
    if (srv.has(p->application_id)) d.remote_apps.insert(p->application_id);
  }
  for (const Authorization* a : s.authorizations_at(scope, target)) {
    if (d.remote_apps.count(a->application_id) != 0) d.remote_users.insert(a->user_id);
  }
  return d;
}

Json publication_removed(const Publication& p, const char* cause) {
  return Json{{"id", p.id},
              {"application_id", p.application_id},
              {"scope", scope_name(p.scope)},
              {"target_id", p.target_id},
              {"cause", cause}};
}

Json authorization_removed(const Authorization& a, const char* cause) {
  return Json{{"id", a.id},
              {"user_id", a.user_id},
              {"application_id", a.application_id},
              {"scope", scope_name(a.scope)},
              {"target_id", a.target_id},
              {"cause", cause}};
}

// Removes the authorizations, then the publications, at (scope, target), optionally of one
// application only. Authorizations of a removed publication carry cause "unpublished" when
// the publication itself is removed on request; otherwise both carry `cause`.
void remove_at(const AppCloudState& s, Scope scope, const std::string& target,
               const std::string* only_app, const char* pub_cause, const char* auth_cause,
               Events& out) {
  for (const Authorization* a : s.authorizations_at(scope, target)) {
    if (only_app != nullptr && a->application_id != *only_app) continue;
    out.push_back({authorization_stream(a->id), "ApplicationUnauthorized", 1,
                   authorization_removed(*a, auth_cause)});
  }
  for (const Publication* p : s.publications_at(scope, target)) {
    if (only_app != nullptr && p->application_id != *only_app) continue;
    out.push_back({publication_stream(p->id), "ApplicationUnpublished", 1,
                   publication_removed(*p, pub_cause)});
  }
}

const Cluster* cluster_named(const AppCloudState& s, const std::string& name) {
  auto it = s.index.cluster_by_name.find(name);
  return it == s.index.cluster_by_name.end() ? nullptr : s.cluster(it->second);
}

const Server* server_named(const AppCloudState& s, const std::string& name) {
  auto it = s.index.server_by_name.find(name);
  return it == s.index.server_by_name.end() ? nullptr : s.server(it->second);
}

// Checks that (scope, target) names an existing target a publication or authorization may
// use: an existing standalone server or an existing cluster.
Status check_target(const AppCloudState& s, Scope scope, const std::string& target) {
  if (scope == Scope::server) {
    const Server* srv = s.server(target);
    if (srv == nullptr) return missing("server_not_found", "server " + target + " not found");
    if (!srv->standalone()) {
      return refused("server_in_cluster", "server " + target + " is in cluster " + srv->cluster_id +
                                              "; publish and authorize at cluster scope instead");
    }
  } else if (s.cluster(target) == nullptr) {
    return missing("cluster_not_found", "cluster " + target + " not found");
  }
  return Status::Ok();
}

}  // namespace

Status validate_id(const std::string& field, const std::string& id) {
  if (id.empty() || id.size() > 128) {
    return field_error(field, "must be 1 to 128 characters", "invalid_id");
  }
  for (unsigned char c : id) {
    bool ok = std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.';
    if (!ok)
      return field_error(field, "may hold only letters, digits, '-', '_' and '.'", "invalid_id");
  }
  return Status::Ok();
}

Status validate_placement(const ClusterPlacement& p) {
  const Weights& w = p.weights;
  for (double v : {w.cpu, w.memory, w.sessions}) {
    if (!std::isfinite(v) || v < 0) {
      return field_error("placement.weights", "must be finite and not negative",
                         "invalid_placement");
    }
  }
  if (p.policy == IntraClusterPolicy::weighted && w.cpu + w.memory + w.sessions <= 0) {
    return field_error("placement.weights", "must not all be zero for the weighted policy",
                       "invalid_placement");
  }
  return Status::Ok();
}

// ---- queries ----------------------------------------------------------------------------
namespace {
template <typename M>
const typename M::mapped_type* find_in(const M& m, const std::string& id) {
  auto it = m.find(id);
  return it == m.end() ? nullptr : &it->second;
}
}  // namespace

const Cluster* AppCloudState::cluster(const std::string& id) const {
  return find_in(clusters, id);
}
const Server* AppCloudState::server(const std::string& id) const {
  return find_in(servers, id);
}
const Application* AppCloudState::application(const std::string& id) const {
  return find_in(applications, id);
}
const Publication* AppCloudState::publication(const std::string& id) const {
  return find_in(publications, id);
}
const Authorization* AppCloudState::authorization(const std::string& id) const {
  return find_in(authorizations, id);
}
const AppSession* AppCloudState::session(const std::string& id) const {
  return find_in(sessions, id);
}

namespace {
constexpr char kSep = '\x1f';
std::string at_key(Scope scope, const std::string& target) {
  return std::string(scope_name(scope)) + kSep + target;
}
std::string pub_key(const std::string& app, Scope scope, const std::string& target) {
  return app + kSep + at_key(scope, target);
}
std::string auth_key(const std::string& user, const std::string& app, Scope scope,
                     const std::string& target) {
  return user + kSep + pub_key(app, scope, target);
}
template <typename M>
void index_set(M& m, const std::string& key, const std::string& id, bool add) {
  if (add) {
    m[key].insert(id);
    return;
  }
  auto it = m.find(key);
  if (it == m.end()) return;
  it->second.erase(id);
  if (it->second.empty()) m.erase(it);
}
}  // namespace

void AppCloudState::index_publication(const Publication& p, bool add) {
  std::string key = pub_key(p.application_id, p.scope, p.target_id);
  if (add) {
    index.publication_by_key[key] = p.id;
  } else {
    index.publication_by_key.erase(key);
  }
  index_set(index.publications_at, at_key(p.scope, p.target_id), p.id, add);
}

void AppCloudState::index_authorization(const Authorization& a, bool add) {
  std::string key = auth_key(a.user_id, a.application_id, a.scope, a.target_id);
  if (add) {
    index.authorization_by_key[key] = a.id;
  } else {
    index.authorization_by_key.erase(key);
  }
  index_set(index.authorizations_at, at_key(a.scope, a.target_id), a.id, add);
  index_set(index.authorizations_by_user, a.user_id, a.id, add);
}

void AppCloudState::index_membership(const std::string& server_id, const std::string& cluster_id,
                                     bool add) {
  if (!cluster_id.empty()) index_set(index.members, cluster_id, server_id, add);
}

void AppCloudState::reindex() {
  index = Indexes{};
  for (const auto& [id, c] : clusters) index.cluster_by_name[c.name] = id;
  for (const auto& [id, v] : servers) {
    index.server_by_name[v.name] = id;
    index_membership(id, v.cluster_id, true);
  }
  for (const auto& [id, p] : publications) index_publication(p, true);
  for (const auto& [id, a] : authorizations) index_authorization(a, true);
  for (const auto& [id, a] : sessions) {
    if (a.active()) index.active_launches[a.server_id].insert(a.decided_position);
  }
}

const Publication* AppCloudState::find_publication(const std::string& app_id, Scope scope,
                                                   const std::string& target_id) const {
  auto it = index.publication_by_key.find(pub_key(app_id, scope, target_id));
  return it == index.publication_by_key.end() ? nullptr : publication(it->second);
}

const Authorization* AppCloudState::find_authorization(const std::string& user_id,
                                                       const std::string& app_id, Scope scope,
                                                       const std::string& target_id) const {
  auto it = index.authorization_by_key.find(auth_key(user_id, app_id, scope, target_id));
  return it == index.authorization_by_key.end() ? nullptr : authorization(it->second);
}

std::vector<const Publication*> AppCloudState::publications_at(Scope scope,
                                                               const std::string& target) const {
  std::vector<const Publication*> out;
  auto it = index.publications_at.find(at_key(scope, target));
  if (it == index.publications_at.end()) return out;
  for (const auto& id : it->second) out.push_back(publication(id));
  return out;
}

std::vector<const Authorization*> AppCloudState::authorizations_at(
    Scope scope, const std::string& target) const {
  std::vector<const Authorization*> out;
  auto it = index.authorizations_at.find(at_key(scope, target));
  if (it == index.authorizations_at.end()) return out;
  for (const auto& id : it->second) out.push_back(authorization(id));
  return out;
}

std::vector<const Authorization*> AppCloudState::authorizations_of(
    const std::string& user_id, const std::string& app_id) const {
  std::vector<const Authorization*> out;
  auto it = index.authorizations_by_user.find(user_id);
  if (it == index.authorizations_by_user.end()) return out;
  for (const auto& id : it->second) {
    const Authorization* a = authorization(id);
    if (a->application_id == app_id) out.push_back(a);
  }
  return out;
}

std::vector<const Authorization*> AppCloudState::authorizations_of(
    const std::string& user_id, const std::set<std::string>& groups,
    const std::string& app_id) const {
  auto out = authorizations_of(user_id, app_id);
  for (const auto& g : groups) {
    auto more = authorizations_of(kGroupPrincipal + g, app_id);
    out.insert(out.end(), more.begin(), more.end());
  }
  return out;
}

std::vector<const Server*> AppCloudState::members(const std::string& cluster_id) const {
  std::vector<const Server*> out;
  auto it = index.members.find(cluster_id);
  if (it == index.members.end()) return out;
  for (const auto& id : it->second) out.push_back(server(id));
  return out;
}

std::vector<std::string> AppCloudState::servers_with(const std::string& app_id) const {
  std::vector<std::string> out;
  for (const auto& [id, srv] : servers) {
    if (srv.has(app_id)) out.push_back(id);
  }
  return out;
}

std::vector<std::string> AppCloudState::clusters_with(const std::string& app_id) const {
  std::set<std::string> out;
  for (const auto& [id, srv] : servers) {
    if (!srv.standalone() && srv.has(app_id)) out.insert(srv.cluster_id);
  }
  return {out.begin(), out.end()};
}

bool AppCloudState::cluster_has(const std::string& cluster_id, const std::string& app_id) const {
  for (const Server* srv : members(cluster_id)) {
    if (srv->has(app_id)) return true;
  }
  return false;
}

std::vector<std::string> AppCloudState::publish_targets(const std::string& app_id,
                                                        Scope scope) const {
  std::vector<std::string> out;
  if (application(app_id) == nullptr) return out;
  if (scope == Scope::server) {
    for (const auto& [id, srv] : servers) {
      if (srv.standalone() && srv.has(app_id) &&
          find_publication(app_id, Scope::server, id) == nullptr) {
        out.push_back(id);
      }
    }
  } else {
    for (const auto& [id, c] : clusters) {
      if (cluster_has(id, app_id) && find_publication(app_id, Scope::cluster, id) == nullptr) {
        out.push_back(id);
      }
    }
  }
  return out;
}

std::vector<std::string> AppCloudState::authorize_targets(const std::string& app_id,
                                                          const std::string& user_id,
                                                          Scope scope) const {
  std::set<std::string> out;
  for (const auto& [id, p] : publications) {
    if (p.application_id == app_id && p.scope == scope &&
        find_authorization(user_id, app_id, scope, p.target_id) == nullptr) {
      out.insert(p.target_id);
    }
  }
  return {out.begin(), out.end()};
}

std::vector<Entitlement> AppCloudState::entitlements(const std::string& user_id,
                                                     const std::set<std::string>& groups) const {
  std::map<std::string, Entitlement> by_app;
  std::vector<std::string> ids;
  for (const auto& who : [&] {
         std::vector<std::string> w{user_id};
         for (const auto& g : groups) w.push_back(kGroupPrincipal + g);
         return w;
       }()) {
    auto mine = index.authorizations_by_user.find(who);
    if (mine != index.authorizations_by_user.end()) ids.insert(ids.end(), mine->second.begin(), mine->second.end());
  }
  for (const auto& id : ids) {
    const Authorization& a = *authorization(id);
    Entitlement& e = by_app[a.application_id];
    e.application_id = a.application_id;
    if (const Application* app = application(a.application_id)) e.name = app->name;
    e.where.push_back({a.id, a.scope, a.target_id});
  }
  std::vector<Entitlement> out;
  for (auto& [app_id, e] : by_app) {
    std::sort(e.where.begin(), e.where.end(), [](const auto& x, const auto& y) {
      return std::tie(x.scope, x.target_id) < std::tie(y.scope, y.target_id);
    });
    out.push_back(std::move(e));
  }
  return out;
}

std::optional<DesiredState> AppCloudState::desired_state(const std::string& server_id) const {
  const Server* srv = server(server_id);
  if (srv == nullptr) return std::nullopt;
  return desired_for(*this, *srv, srv->cluster_id);
}

std::optional<SyncStatus> AppCloudState::sync_status(const std::string& server_id) const {
  const Server* srv = server(server_id);
  if (srv == nullptr) return std::nullopt;
  DesiredState d = desired_for(*this, *srv, srv->cluster_id);
  InventoryReport held = srv->reported.value_or(InventoryReport{});
  SyncStatus st;
  st.reported = srv->reported.has_value();
  st.missing_apps = minus(d.remote_apps, held.apps);
  st.extra_apps = minus(held.apps, d.remote_apps);
  st.missing_users = minus(d.remote_users, held.users);
  st.extra_users = minus(held.users, d.remote_users);
  st.in_sync = st.missing_apps.empty() && st.extra_apps.empty() && st.missing_users.empty() &&
               st.extra_users.empty();
  return st;
}

// ---- decide: clusters -------------------------------------------------------------------
Result<Events> decide(const State& s, const CreateCluster& c, const Context&) {
  if (auto st = validate_id("id", c.id); !st) return st.error();
  if (auto st = validate_name("name", c.name); !st) return st.error();
  if (auto st = validate_text("description", c.description, 4096, true); !st) return st.error();
  if (auto st = validate_placement(c.placement); !st) return st.error();
  const AppCloudState& ac = s.appcloud;
  if (ac.cluster(c.id) != nullptr || s.version_of(cluster_stream(c.id)) != 0) {
    return already("cluster_exists", "cluster " + c.id + " already exists");
  }
  if (cluster_named(ac, c.name) != nullptr) {
    return already("cluster_name_taken", "a cluster named '" + c.name + "' already exists");
  }
  return Events{{cluster_stream(c.id), "ClusterCreated", 1,
                 Json{{"id", c.id},
                      {"name", c.name},
                      {"description", c.description},
                      {"placement", placement_to_json(c.placement)}}}};
}

Result<Events> decide(const State& s, const UpdateCluster& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  const Cluster* cl = ac.cluster(c.id);
  if (cl == nullptr) return missing("cluster_not_found", "cluster " + c.id + " not found");
  if (auto st = check_expected(s, cluster_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  Json changes = Json::object();
  if (c.name && *c.name != cl->name) {
    if (auto st = validate_name("name", *c.name); !st) return st.error();
    if (cluster_named(ac, *c.name) != nullptr) {
      return already("cluster_name_taken", "a cluster named '" + *c.name + "' already exists");
    }
    changes["name"] = *c.name;
  }
  if (c.description && *c.description != cl->description) {
    if (auto st = validate_text("description", *c.description, 4096, true); !st) {
      return st.error();
    }
    changes["description"] = *c.description;
  }
  if (c.placement) {
    if (auto st = validate_placement(*c.placement); !st) return st.error();
    Json p = placement_to_json(*c.placement);
    if (p != placement_to_json(cl->placement)) changes["placement"] = p;
  }
  if (changes.empty()) return Events{};
  changes["id"] = c.id;
  return Events{{cluster_stream(c.id), "ClusterUpdated", 1, changes}};
}

Result<Events> decide(const State& s, const DeleteCluster& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  if (ac.cluster(c.id) == nullptr) {
    return missing("cluster_not_found", "cluster " + c.id + " not found");
  }
  if (auto st = check_expected(s, cluster_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  auto members = ac.members(c.id);
  if (!members.empty()) {
    std::vector<std::string> ids;
    ids.reserve(members.size());
    for (const Server* m : members) ids.push_back(m->id);
    return refused("cluster_not_empty",
                   "cluster " + c.id + " still has " + std::to_string(ids.size()) +
                       " server(s): " + join(ids) + "; each must leave the cluster first");
  }
  Events out;
  remove_at(ac, Scope::cluster, c.id, nullptr, "cluster_deleted", "cluster_deleted", out);
  out.push_back({cluster_stream(c.id), "ClusterDeleted", 1, Json{{"id", c.id}}});
  return out;
}

// ---- decide: servers --------------------------------------------------------------------
Result<Events> decide(const State& s, const CreateServer& c, const Context&) {
  if (auto st = validate_id("id", c.id); !st) return st.error();
  if (auto st = validate_name("name", c.name); !st) return st.error();
  if (auto st = validate_address(c.address); !st) return st.error();
  if (auto st = validate_os_type(c.os_type); !st) return st.error();
  if (auto st = validate_text("os_version", c.os_version, 128, false); !st) return st.error();
  const AppCloudState& ac = s.appcloud;
  if (ac.server(c.id) != nullptr || s.version_of(server_stream(c.id)) != 0) {
    return already("server_exists", "server " + c.id + " already exists");
  }
  if (server_named(ac, c.name) != nullptr) {
    return already("server_name_taken", "a server named '" + c.name + "' already exists");
  }
  return Events{{server_stream(c.id), "ServerCreated", 1,
                 Json{{"id", c.id},
                      {"name", c.name},
                      {"address", c.address},
                      {"os_type", c.os_type},
                      {"os_version", c.os_version},
                      {"cpus", c.cpus},
                      {"memory_mb", c.memory_mb},
                      {"remote_app_service", c.remote_app_service}}}};
}

Result<Events> decide(const State& s, const UpdateServer& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  const Server* srv = ac.server(c.id);
  if (srv == nullptr) return missing("server_not_found", "server " + c.id + " not found");
  if (auto st = check_expected(s, server_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  Json changes = Json::object();
  if (c.name && *c.name != srv->name) {
    if (auto st = validate_name("name", *c.name); !st) return st.error();
    if (server_named(ac, *c.name) != nullptr) {
      return already("server_name_taken", "a server named '" + *c.name + "' already exists");
    }
    changes["name"] = *c.name;
  }
  if (c.address && *c.address != srv->address) {
    if (auto st = validate_address(*c.address); !st) return st.error();
    changes["address"] = *c.address;
  }
  if (c.os_version && *c.os_version != srv->os_version) {
    if (auto st = validate_text("os_version", *c.os_version, 128, false); !st) {
      return st.error();
    }
    changes["os_version"] = *c.os_version;
  }
  if (c.cpus && *c.cpus != srv->cpus) changes["cpus"] = *c.cpus;
  if (c.memory_mb && *c.memory_mb != srv->memory_mb) changes["memory_mb"] = *c.memory_mb;
  if (c.remote_app_service && *c.remote_app_service != srv->remote_app_service) {
    changes["remote_app_service"] = *c.remote_app_service;
  }
  if (changes.empty()) return Events{};
  changes["id"] = c.id;
  return Events{{server_stream(c.id), "ServerUpdated", 1, changes}};
}

Result<Events> decide(const State& s, const DeleteServer& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  if (ac.server(c.id) == nullptr) {
    return missing("server_not_found", "server " + c.id + " not found");
  }
  if (auto st = check_expected(s, server_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  Events out;
  remove_at(ac, Scope::server, c.id, nullptr, "server_deleted", "server_deleted", out);
  out.push_back({server_stream(c.id), "ServerDeleted", 1, Json{{"id", c.id}}});
  return out;
}

Result<Events> decide(const State& s, const AddServerApplication& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  const Server* srv = ac.server(c.server_id);
  if (srv == nullptr) return missing("server_not_found", "server " + c.server_id + " not found");
  if (auto st = validate_name("name", c.name); !st) return st.error();
  if (auto st = validate_text("executable_path", c.executable_path, 1024, false, true); !st) {
    return st.error();
  }
  if (auto st = validate_text("description", c.description, 4096, true); !st) return st.error();
  if (auto st = validate_text("desktop_file", c.desktop_file, 1024, false); !st) {
    return st.error();
  }
  std::string id = application_id(c.name, c.executable_path);
  if (srv->has(id)) return Events{};
  Events out;
  if (ac.application(id) == nullptr) {
    out.push_back({application_stream(id), "ApplicationRegistered", 1,
                   Json{{"id", id},
                        {"name", c.name},
                        {"description", c.description},
                        {"executable_path", c.executable_path},
                        {"desktop_file", c.desktop_file}}});
  }
  Json added{{"server_id", c.server_id}, {"application_id", id}};
  if (c.source == "agent") added["source"] = "agent";
  out.push_back({server_stream(c.server_id), "ServerApplicationAdded", 1, added});
  return out;
}

Result<Events> decide(const State& s, const RemoveServerApplication& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  const Server* srv = ac.server(c.server_id);
  if (srv == nullptr) return missing("server_not_found", "server " + c.server_id + " not found");
  if (!srv->has(c.application_id)) {
    return missing("application_not_on_server",
                   "application " + c.application_id + " is not on server " + c.server_id);
  }
  Events out;
  if (srv->standalone()) {
    remove_at(ac, Scope::server, c.server_id, &c.application_id, "application_removed",
              "application_removed", out);
  }
  out.push_back({server_stream(c.server_id), "ServerApplicationRemoved", 1,
                 Json{{"server_id", c.server_id}, {"application_id", c.application_id}}});
  return out;
}

// ---- decide: cluster membership ---------------------------------------------------------
Result<Events> decide(const State& s, const JoinCluster& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  const Server* srv = ac.server(c.server_id);
  if (srv == nullptr) return missing("server_not_found", "server " + c.server_id + " not found");
  if (ac.cluster(c.cluster_id) == nullptr) {
    return missing("cluster_not_found", "cluster " + c.cluster_id + " not found");
  }
  if (auto st = check_expected(s, server_stream(c.server_id), c.expected_version); !st) {
    return st.error();
  }
  if (!srv->standalone()) {
    return refused("server_already_in_cluster", "server " + c.server_id +
                                                    " is already in cluster " + srv->cluster_id +
                                                    "; a server joins at "
                                                    "most one cluster");
  }
  // (a) the server's published applications are a subset of the cluster's.
  auto pubs = ac.publications_at(Scope::server, c.server_id);
  std::vector<std::string> not_in_cluster;
  for (const Publication* p : pubs) {
    if (ac.find_publication(p->application_id, Scope::cluster, c.cluster_id) == nullptr) {
      not_in_cluster.push_back(p->application_id);
    }
  }
  if (!not_in_cluster.empty()) {
    return refused("join_publications_not_subset", "applications published on server " +
                                                       c.server_id + " but not in cluster " +
                                                       c.cluster_id + ": " + join(not_in_cluster));
  }
  // (b) for every user, the server's authorizations are a subset of the cluster's.
  auto auths = ac.authorizations_at(Scope::server, c.server_id);
  std::vector<std::string> not_authorized;
  for (const Authorization* a : auths) {
    if (ac.find_authorization(a->user_id, a->application_id, Scope::cluster, c.cluster_id) ==
        nullptr) {
      not_authorized.push_back(a->user_id + "/" + a->application_id);
    }
  }
  if (!not_authorized.empty()) {
    return refused("join_authorizations_not_subset",
                   "user/application authorized on server " + c.server_id + " but not in cluster " +
                       c.cluster_id + ": " + join(not_authorized));
  }

  DesiredState before = desired_for(ac, *srv, "");
  DesiredState after = desired_for(ac, *srv, c.cluster_id);
  Events out;
  std::vector<std::string> auths_dropped, pubs_dropped;
  for (const Authorization* a : auths) {  // transformation 3
    out.push_back({authorization_stream(a->id), "ApplicationUnauthorized", 1,
                   authorization_removed(*a, "joined_cluster")});
    auths_dropped.push_back(a->id);
  }
  for (const Publication* p : pubs) {  // transformation 1
    out.push_back({publication_stream(p->id), "ApplicationUnpublished", 1,
                   publication_removed(*p, "joined_cluster")});
    pubs_dropped.push_back(p->id);
  }
  out.push_back({server_stream(c.server_id), "ServerJoinedCluster", 1,
                 Json{{"server_id", c.server_id},
                      {"cluster_id", c.cluster_id},
                      {"publications_dropped", pubs_dropped},
                      {"authorizations_dropped", auths_dropped},
                      // transformations 2 and 4
                      {"remote_apps_added", minus(after.remote_apps, before.remote_apps)},
                      {"remote_users_added", minus(after.remote_users, before.remote_users)}}});
  return out;
}

Result<Events> decide(const State& s, const LeaveCluster& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  const Server* srv = ac.server(c.server_id);
  if (srv == nullptr) return missing("server_not_found", "server " + c.server_id + " not found");
  if (auto st = check_expected(s, server_stream(c.server_id), c.expected_version); !st) {
    return st.error();
  }
  if (srv->standalone()) {
    return refused("server_not_in_cluster", "server " + c.server_id + " is in no cluster");
  }
  DesiredState before = desired_for(ac, *srv, srv->cluster_id);
  DesiredState after = desired_for(ac, *srv, "");
  return Events{{server_stream(c.server_id), "ServerLeftCluster", 1,
                 Json{{"server_id", c.server_id},
                      {"cluster_id", srv->cluster_id},
                      {"remote_apps_removed", minus(before.remote_apps, after.remote_apps)},
                      {"remote_users_removed", minus(before.remote_users, after.remote_users)}}}};
}

// ---- decide: publications and authorizations --------------------------------------------
Result<Events> decide(const State& s, const Publish& c, const Context&) {
  if (auto st = validate_id("id", c.id); !st) return st.error();
  const AppCloudState& ac = s.appcloud;
  if (ac.publication(c.id) != nullptr || s.version_of(publication_stream(c.id)) != 0) {
    return already("publication_exists", "publication " + c.id + " already exists");
  }
  const Application* app = ac.application(c.application_id);
  if (app == nullptr) {
    return missing("application_not_found", "application " + c.application_id + " not found");
  }
  if (auto st = check_target(ac, c.scope, c.target_id); !st) return st.error();
  bool present = c.scope == Scope::server ? ac.server(c.target_id)->has(c.application_id)
                                          : ac.cluster_has(c.target_id, c.application_id);
  if (!present) {
    return refused("application_not_present",
                   "application " + c.application_id + " is not present on " +
                       (c.scope == Scope::server ? "server " : "any server of cluster ") +
                       c.target_id);
  }
  if (const Publication* p = ac.find_publication(c.application_id, c.scope, c.target_id)) {
    return already("already_published", "application " + c.application_id +
                                            " is already published at " + scope_name(c.scope) +
                                            " " + c.target_id + " (publication " + p->id + ")");
  }
  return Events{{publication_stream(c.id), "ApplicationPublished", 1,
                 Json{{"id", c.id},
                      {"application_id", c.application_id},
                      {"scope", scope_name(c.scope)},
                      {"target_id", c.target_id}}}};
}

Result<Events> decide(const State& s, const Unpublish& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  const Publication* p = ac.publication(c.id);
  if (p == nullptr) return missing("publication_not_found", "publication " + c.id + " not found");
  if (auto st = check_expected(s, publication_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  Events out;
  remove_at(ac, p->scope, p->target_id, &p->application_id, "requested", "unpublished", out);
  return out;
}

Result<Events> decide(const State& s, const Authorize& c, const Context&) {
  if (auto st = validate_id("id", c.id); !st) return st.error();
  const AppCloudState& ac = s.appcloud;
  if (ac.authorization(c.id) != nullptr || s.version_of(authorization_stream(c.id)) != 0) {
    return already("authorization_exists", "authorization " + c.id + " already exists");
  }
  if (c.user_id.rfind(kGroupPrincipal, 0) == 0) {
    if (auto st = validate_group(s, c.user_id.substr(6)); !st) return st.error();
  } else if (s.users.find(c.user_id) == nullptr) {
    return missing("user_not_found", "user " + c.user_id + " not found");
  }
  if (ac.application(c.application_id) == nullptr) {
    return missing("application_not_found", "application " + c.application_id + " not found");
  }
  if (auto st = check_target(ac, c.scope, c.target_id); !st) return st.error();
  if (ac.find_publication(c.application_id, c.scope, c.target_id) == nullptr) {
    return refused("not_published", "application " + c.application_id + " is not published at " +
                                        scope_name(c.scope) + " " + c.target_id +
                                        "; publish it there first");
  }
  if (const Authorization* a =
          ac.find_authorization(c.user_id, c.application_id, c.scope, c.target_id)) {
    return already("already_authorized", "user " + c.user_id + " is already authorized for " +
                                             c.application_id + " at " + scope_name(c.scope) + " " +
                                             c.target_id + " (authorization " + a->id + ")");
  }
  return Events{{authorization_stream(c.id), "ApplicationAuthorized", 1,
                 Json{{"id", c.id},
                      {"user_id", c.user_id},
                      {"application_id", c.application_id},
                      {"scope", scope_name(c.scope)},
                      {"target_id", c.target_id}}}};
}

Result<Events> decide(const State& s, const Unauthorize& c, const Context&) {
  const Authorization* a = s.appcloud.authorization(c.id);
  if (a == nullptr) {
    return missing("authorization_not_found", "authorization " + c.id + " not found");
  }
  if (auto st = check_expected(s, authorization_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  return Events{{authorization_stream(c.id), "ApplicationUnauthorized", 1,
                 authorization_removed(*a, "requested")}};
}

// ---- decide: reports --------------------------------------------------------------------
Status validate_load(const LoadReport& l) {
  if (!std::isfinite(l.cpu_load) || l.cpu_load < 0 || l.cpu_load > 1) {
    return field_error("cpu_load", "must be between 0 and 1", "invalid_load");
  }
  if (!std::isfinite(l.memory_load) || l.memory_load < 0 || l.memory_load > 1) {
    return field_error("memory_load", "must be between 0 and 1", "invalid_load");
  }
  return Status::Ok();
}

uint32_t AppCloudState::launches_after(const std::string& server_id, uint64_t after) const {
  auto it = index.active_launches.find(server_id);
  if (it == index.active_launches.end()) return 0;
  return static_cast<uint32_t>(std::distance(it->second.upper_bound(after), it->second.end()));
}

Result<Events> decide(const State& s, const ReportServerInventory& c, const Context& ctx) {
  const Server* srv = s.appcloud.server(c.server_id);
  if (srv == nullptr) return missing("server_not_found", "server " + c.server_id + " not found");
  for (const auto& a : c.apps) {
    if (auto st = validate_id("apps", a); !st) return st.error();
  }
  for (const auto& u : c.users) {
    if (auto st = validate_id("users", u); !st) return st.error();
  }
  int64_t at = c.reported_at_ms > 0 ? c.reported_at_ms : ctx.now_ms;
  if (srv->reported) {
    if (at < srv->reported->reported_at_ms) return Events{};
    if (srv->reported->apps == c.apps && srv->reported->users == c.users) return Events{};
  }
  return Events{{server_inventory_stream(c.server_id), "ServerInventoryReported", 1,
                 Json{{"server_id", c.server_id},
                      {"apps", c.apps},
                      {"users", c.users},
                      {"reported_at_ms", at}}}};
}

// ---- JSON views -------------------------------------------------------------------------
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
    p.max_sessions = j["max_sessions"].get<uint32_t>();
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

// ---- evolve -----------------------------------------------------------------------------
namespace {

std::string str(const Event& e, const char* key) {
  return e.data.at(key).get<std::string>();
}

Scope scope_of(const Event& e) {
  return parse_scope(e.data.value("scope", "server")).value_or(Scope::server);
}

Server* server_of(State& s, const Event& e, const char* key = "server_id") {
  auto it = s.appcloud.servers.find(str(e, key));
  return it == s.appcloud.servers.end() ? nullptr : &it->second;
}

void on_cluster_created(State& s, const Event& e, const Applied& at) {
  Cluster c;
  c.id = str(e, "id");
  c.name = str(e, "name");
  c.description = e.data.value("description", "");
  if (e.data.contains("placement")) {
    auto p = placement_from_json(e.data["placement"]);
    if (p) c.placement = *p;
  }
  c.created_at_ms = at.recorded_at_ms;
  c.updated_at_ms = at.recorded_at_ms;
  c.version = at.stream_version;
  s.appcloud.index.cluster_by_name[c.name] = c.id;
  s.appcloud.clusters[c.id] = std::move(c);
}

void on_cluster_updated(State& s, const Event& e, const Applied& at) {
  auto it = s.appcloud.clusters.find(str(e, "id"));
  if (it == s.appcloud.clusters.end()) return;
  Cluster& c = it->second;
  if (e.data.contains("name")) {
    s.appcloud.index.cluster_by_name.erase(c.name);
    c.name = str(e, "name");
    s.appcloud.index.cluster_by_name[c.name] = c.id;
  }
  if (e.data.contains("description")) c.description = str(e, "description");
  if (e.data.contains("placement")) {
    auto p = placement_from_json(e.data["placement"]);
    if (p) c.placement = *p;
  }
  c.updated_at_ms = at.recorded_at_ms;
  c.version = at.stream_version;
}

void on_cluster_deleted(State& s, const Event& e, const Applied&) {
  auto it = s.appcloud.clusters.find(str(e, "id"));
  if (it == s.appcloud.clusters.end()) return;
  s.appcloud.index.cluster_by_name.erase(it->second.name);
  s.appcloud.index.members.erase(it->first);
  s.appcloud.clusters.erase(it);
}

void on_server_created(State& s, const Event& e, const Applied& at) {
  Server v;
  v.id = str(e, "id");
  v.name = str(e, "name");
  v.address = str(e, "address");
  v.os_type = e.data.value("os_type", "");
  v.os_version = e.data.value("os_version", "");
  v.cpus = e.data.value("cpus", 0u);
  v.memory_mb = e.data.value("memory_mb", uint64_t{0});
  v.remote_app_service = e.data.value("remote_app_service", true);
  v.created_at_ms = at.recorded_at_ms;
  v.updated_at_ms = at.recorded_at_ms;
  v.version = at.stream_version;
  s.appcloud.index.server_by_name[v.name] = v.id;
  s.appcloud.servers[v.id] = std::move(v);
}

// Marks a change on the server-<id> stream.
void touch(Server& v, const Applied& at) {
  v.updated_at_ms = at.recorded_at_ms;
  v.version = at.stream_version;
}

void on_server_updated(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e, "id");
  if (v == nullptr) return;
  if (e.data.contains("name")) {
    s.appcloud.index.server_by_name.erase(v->name);
    v->name = str(e, "name");
    s.appcloud.index.server_by_name[v->name] = v->id;
  }
  if (e.data.contains("address")) v->address = str(e, "address");
  if (e.data.contains("os_version")) v->os_version = str(e, "os_version");
  if (e.data.contains("cpus")) v->cpus = e.data["cpus"].get<uint32_t>();
  if (e.data.contains("memory_mb")) v->memory_mb = e.data["memory_mb"].get<uint64_t>();
  if (e.data.contains("remote_app_service")) {
    v->remote_app_service = e.data["remote_app_service"].get<bool>();
  }
  touch(*v, at);
}

void on_server_deleted(State& s, const Event& e, const Applied&) {
  Server* v = server_of(s, e, "id");
  if (v == nullptr) return;
  s.appcloud.index.server_by_name.erase(v->name);
  s.appcloud.index_membership(v->id, v->cluster_id, false);
  s.appcloud.servers.erase(v->id);
}

void on_server_app_added(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  v->applications.insert(str(e, "application_id"));
  if (e.data.value("source", "") == "agent") v->agent_applications.insert(str(e, "application_id"));
  touch(*v, at);
}

void on_server_app_removed(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  v->applications.erase(str(e, "application_id"));
  v->agent_applications.erase(str(e, "application_id"));
  touch(*v, at);
}

void on_joined(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  s.appcloud.index_membership(v->id, v->cluster_id, false);
  v->cluster_id = str(e, "cluster_id");
  s.appcloud.index_membership(v->id, v->cluster_id, true);
  touch(*v, at);
}

void on_left(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  s.appcloud.index_membership(v->id, v->cluster_id, false);
  v->cluster_id.clear();
  touch(*v, at);
}

void on_load(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  LoadReport l;
  l.cpu_load = e.data.at("cpu_load").get<double>();
  l.memory_load = e.data.at("memory_load").get<double>();
  l.sessions = e.data.at("sessions").get<uint32_t>();
  l.reported_at_ms = e.data.at("reported_at_ms").get<int64_t>();
  l.since_position = at.position;
  v->load = l;
  v->load_position = at.position;
  v->launches_since_report = 0;
}

void on_inventory(State& s, const Event& e, const Applied&) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  InventoryReport r;
  r.apps = e.data.at("apps").get<std::set<std::string>>();
  r.users = e.data.at("users").get<std::set<std::string>>();
  r.reported_at_ms = e.data.at("reported_at_ms").get<int64_t>();
  v->reported = std::move(r);
}

void on_app_registered(State& s, const Event& e, const Applied& at) {
  Application a;
  a.id = str(e, "id");
  a.name = str(e, "name");
  a.description = e.data.value("description", "");
  a.executable_path = str(e, "executable_path");
  a.desktop_file = e.data.value("desktop_file", "");
  a.created_at_ms = at.recorded_at_ms;
  a.version = at.stream_version;
  s.appcloud.applications[a.id] = std::move(a);
}

void on_published(State& s, const Event& e, const Applied& at) {
  Publication p;
  p.id = str(e, "id");
  p.application_id = str(e, "application_id");
  p.scope = scope_of(e);
  p.target_id = str(e, "target_id");
  p.created_at_ms = at.recorded_at_ms;
  p.version = at.stream_version;
  if (const Publication* old = s.appcloud.publication(p.id)) s.appcloud.index_publication(*old, false);
  s.appcloud.index_publication(p, true);
  s.appcloud.publications[p.id] = std::move(p);
}

void on_unpublished(State& s, const Event& e, const Applied&) {
  auto it = s.appcloud.publications.find(str(e, "id"));
  if (it == s.appcloud.publications.end()) return;
  s.appcloud.index_publication(it->second, false);
  s.appcloud.publications.erase(it);
}

void on_authorized(State& s, const Event& e, const Applied& at) {
  Authorization a;
  a.id = str(e, "id");
  a.user_id = str(e, "user_id");
  a.application_id = str(e, "application_id");
  a.scope = scope_of(e);
  a.target_id = str(e, "target_id");
  a.created_at_ms = at.recorded_at_ms;
  a.version = at.stream_version;
  if (const Authorization* old = s.appcloud.authorization(a.id)) {
    s.appcloud.index_authorization(*old, false);
  }
  s.appcloud.index_authorization(a, true);
  s.appcloud.authorizations[a.id] = std::move(a);
}

void on_unauthorized(State& s, const Event& e, const Applied&) {
  auto it = s.appcloud.authorizations.find(str(e, "id"));
  if (it == s.appcloud.authorizations.end()) return;
  s.appcloud.index_authorization(it->second, false);
  s.appcloud.authorizations.erase(it);
}

}  // namespace

void register_appcloud(EvolveTable& t) {
  t["ClusterCreated"] = on_cluster_created;
  t["ClusterUpdated"] = on_cluster_updated;
  t["ClusterDeleted"] = on_cluster_deleted;
  t["ServerCreated"] = on_server_created;
  t["ServerUpdated"] = on_server_updated;
  t["ServerDeleted"] = on_server_deleted;
  t["ServerApplicationAdded"] = on_server_app_added;
  t["ServerApplicationRemoved"] = on_server_app_removed;
  t["ServerJoinedCluster"] = on_joined;
  t["ServerLeftCluster"] = on_left;
  t["ServerLoadReported"] = on_load;
  t["ServerInventoryReported"] = on_inventory;
  t["ApplicationRegistered"] = on_app_registered;
  t["ApplicationPublished"] = on_published;
  t["ApplicationUnpublished"] = on_unpublished;
  t["ApplicationAuthorized"] = on_authorized;
  t["ApplicationUnauthorized"] = on_unauthorized;
}

}  // namespace atrium::domain

// ---- snapshot codec ---------------------------------------------------------------------
namespace atrium::domain {

namespace {

template <typename T>
T get(const Json& j, const char* key) {
  return j.at(key).get<T>();
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

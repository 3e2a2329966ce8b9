// The application cloud of DOMAIN.md section 6 (domain/appcloud.h): names, stream ids, field
// validation, the error helpers shared by its files (domain/appcloud_internal.h) and the
// state's lookups and indexes. The decisions, views, evolve and codec live in appcloud_*.cpp.
#include "domain/appcloud.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iterator>

#include "domain/appcloud_internal.h"
#include "domain/sha256.h"
#include "domain/state.h"

namespace atrium::domain {

using namespace appcloud_detail;

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

namespace appcloud_detail {

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

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (const auto& i : items) {
    if (!out.empty()) out += sep;
    out += i;
  }
  return out;
}

}  // namespace appcloud_detail

// ---- validation ------------------------------------------------------------------------
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

Status validate_load(const LoadReport& l) {
  if (!std::isfinite(l.cpu_load) || l.cpu_load < 0 || l.cpu_load > 1) {
    return field_error("cpu_load", "must be between 0 and 1", "invalid_load");
  }
  if (!std::isfinite(l.memory_load) || l.memory_load < 0 || l.memory_load > 1) {
    return field_error("memory_load", "must be between 0 and 1", "invalid_load");
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

uint32_t AppCloudState::launches_after(const std::string& server_id, uint64_t after) const {
  auto it = index.active_launches.find(server_id);
  if (it == index.active_launches.end()) return 0;
  return static_cast<uint32_t>(std::distance(it->second.upper_bound(after), it->second.end()));
}

}  // namespace atrium::domain

#include "api/query_params.h"

#include <map>

namespace atrium::api {

namespace {

// Lists take limit and cursor; reads of the views take as_of (Api::page, Api::with_state).
const std::set<std::string> kNone;
std::set<std::string> list(std::set<std::string> more = {}) {
  more.insert({"limit", "cursor", "as_of"});
  return more;
}
const std::set<std::string> kAsOf{"as_of"};

}  // namespace

const std::vector<QueryRule>& query_rules() {
  static const std::vector<QueryRule> rules{
      // health, auth, users, audit (routes_core.cpp)
      {"GET", "/healthz", kNone},
      {"GET", "/readyz", kNone},
      {"GET", "/metrics", kNone},
      {"GET", "/openapi.yaml", kNone},
      {"POST", "/v1/auth/login", kNone},
      {"POST", "/v1/auth/logout", kNone},
      {"POST", "/v1/users", kNone},
      {"GET", "/v1/users", list()},
      {"GET", "/v1/cluster", kNone},
      {"POST", "/v1/cluster/liveness", kNone},
      {"GET", "/v1/users/{id}", kAsOf},
      {"PATCH", "/v1/users/{id}", kNone},
      {"DELETE", "/v1/users/{id}", kNone},
      {"GET", "/v1/events", {"after", "limit", "cursor", "stream", "type"}},
      {"GET", "/v1/events/stream", {"after"}},
      {"GET", "/v1/streams/{stream}", {"limit", "cursor"}},
      // directories (directory_auth.cpp)
      {"POST", "/v1/directories", kNone},
      {"GET", "/v1/directories", kAsOf},
      {"GET", "/v1/directories/{id}", kAsOf},
      {"PATCH", "/v1/directories/{id}", kNone},
      {"DELETE", "/v1/directories/{id}", kNone},
      // second factor (totp.cpp)
      {"POST", "/v1/me/totp", kNone},
      {"POST", "/v1/me/totp/confirm", kNone},
      {"DELETE", "/v1/users/{id}/totp", kNone},
      {"PUT", "/v1/users/{id}/totp-required", kNone},
      {"PUT", "/v1/totp-policy", kNone},
      {"GET", "/v1/totp-policy", kAsOf},
      // application cloud (routes_appcloud.cpp)
      {"POST", "/v1/clusters", kNone},
      {"GET", "/v1/clusters", list()},
      {"GET", "/v1/clusters/{id}", kAsOf},
      {"PATCH", "/v1/clusters/{id}", kNone},
      {"DELETE", "/v1/clusters/{id}", kNone},
      {"POST", "/v1/servers", kNone},
      {"GET", "/v1/servers", list({"cluster_id", "standalone"})},
      {"GET", "/v1/servers/{id}", kAsOf},
      {"PATCH", "/v1/servers/{id}", kNone},
      {"DELETE", "/v1/servers/{id}", kNone},
      {"POST", "/v1/servers/{id}/join", kNone},
      {"POST", "/v1/servers/{id}/leave", kNone},
      {"POST", "/v1/servers/{id}/applications", kNone},
      {"GET", "/v1/servers/{id}/applications", list()},
      {"DELETE", "/v1/servers/{id}/applications/{application_id}", kNone},
      {"POST", "/v1/servers/{id}/report", kNone},
      {"GET", "/v1/applications", list({"server_id"})},
      {"GET", "/v1/applications/{id}", kAsOf},
      {"GET", "/v1/applications/{id}/publish-targets", {"scope", "as_of"}},
      {"POST", "/v1/publications", kNone},
      {"GET", "/v1/publications", list({"scope", "application_id", "target_id"})},
      {"GET", "/v1/publications/{id}", kAsOf},
      {"DELETE", "/v1/publications/{id}", kNone},
      {"GET", "/v1/publications/{id}/authorize-targets", {"scope", "user_id", "as_of"}},
      {"POST", "/v1/authorizations", kNone},
      {"GET", "/v1/authorizations", list({"scope", "user_id", "application_id", "target_id"})},
      {"GET", "/v1/authorizations/{id}", kAsOf},
      {"DELETE", "/v1/authorizations/{id}", kNone},
      {"GET", "/v1/me/entitlements", list()},
      // launches and sessions (routes_appcloud.cpp and routes_pools.cpp share them)
      {"POST", "/v1/launches", kNone},
      {"GET", "/v1/sessions", list({"user_id", "kind", "state"})},
      {"GET", "/v1/sessions/{id}", kAsOf},
      {"DELETE", "/v1/sessions/{id}", kNone},
      {"POST", "/v1/sessions/{id}/report", kNone},
      // hosts, VMs, operations (routes_hosts.cpp)
      {"POST", "/v1/hosts", kNone},
      {"GET", "/v1/hosts", list({"state"})},
      {"GET", "/v1/hosts/{id}", kAsOf},
      {"DELETE", "/v1/hosts/{id}", kNone},
      {"POST", "/v1/hosts/{id}/maintenance", kNone},
      {"POST", "/v1/hosts/{id}/activate", kNone},
      {"GET", "/v1/vms", list({"host_id", "pool_id", "state"})},
      {"GET", "/v1/vms/{id}", kAsOf},
      {"DELETE", "/v1/vms/{id}", kNone},
      {"POST", "/v1/vms/{id}/power", kNone},
      {"POST", "/v1/vms/{id}/display-port", kNone},
      {"GET", "/v1/operations/{id}", kAsOf},
      {"POST", "/v1/operations/{id}/cancel", kNone},
      // desktop pools and admin channels (routes_pools.cpp)
      {"POST", "/v1/pools", kNone},
      {"GET", "/v1/pools", list()},
      {"GET", "/v1/pools/{id}", kAsOf},
      {"PATCH", "/v1/pools/{id}", kNone},
      {"DELETE", "/v1/pools/{id}", kNone},
      {"GET", "/v1/pools/{id}/vms", kAsOf},
      {"POST", "/v1/pools/{id}/vms/{vm_id}/refresh", kNone},
      {"POST", "/v1/pools/{id}/entitlements", kNone},
      {"GET", "/v1/pools/{id}/entitlements", kAsOf},
      {"DELETE", "/v1/pools/{id}/entitlements/{user_id}", kNone},
      {"DELETE", "/v1/pools/{id}/group-entitlements/{group}", kNone},
      {"POST", "/v1/users/{id}/messages", kNone},
      {"POST", "/v1/users/{id}/commands", kNone},
      {"GET", "/v1/me/notifications", {"after"}},
      // the web portal and admin console (routes_web.cpp)
      {"GET", "/", kNone},
      {"GET", "/admin", kNone},
      {"GET", "/web/{file}", kNone},
      // agents (routes_agents.cpp)
      {"POST", "/v1/agents/enrollment-tokens", kNone},
      {"GET", "/v1/agents/enrollment-tokens", list()},
      {"DELETE", "/v1/agents/enrollment-tokens/{id}", kNone},
      {"POST", "/v1/agents/enroll", kNone},
      {"GET", "/v1/agents", list({"kind", "registration", "server_id"})},
      {"GET", "/v1/agents/{id}", kAsOf},
      {"DELETE", "/v1/agents/{id}", kNone},
      {"POST", "/v1/agents/{id}/bind", kNone},
      {"POST", "/v1/agents/{id}/register", kNone},
      {"POST", "/v1/agents/{id}/heartbeat", kNone},
      {"POST", "/v1/agents/{id}/inventory", kNone},
  };
  return rules;
}

const std::set<std::string>* allowed_query(const std::string& method, const std::string& tmpl) {
  static const std::map<std::string, const std::set<std::string>*> index = [] {
    std::map<std::string, const std::set<std::string>*> m;
    for (const auto& r : query_rules()) m[r.method + ' ' + r.tmpl] = &r.names;
    return m;
  }();
  auto it = index.find(method + ' ' + tmpl);
  return it == index.end() ? nullptr : it->second;
}

}  // namespace atrium::api

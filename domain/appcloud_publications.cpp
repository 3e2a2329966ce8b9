// Publications and authorizations in the application cloud: publishing an application at a
// server or cluster, authorizing users and directory groups ("group:" principals) for it, the
// targets still open to either, and the entitlements a user (with their groups) holds.
#include <algorithm>
#include <map>
#include <tuple>

#include "domain/appcloud.h"
#include "domain/appcloud_internal.h"
#include "domain/directories.h"
#include "domain/state.h"

namespace atrium::domain {

using namespace appcloud_detail;

namespace appcloud_detail {

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

}  // namespace appcloud_detail

namespace {

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

// ---- queries: publish and authorize targets, entitlements (users and groups) ----------
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
    if (mine != index.authorizations_by_user.end())
      ids.insert(ids.end(), mine->second.begin(), mine->second.end());
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

}  // namespace atrium::domain

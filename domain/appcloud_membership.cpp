// Cluster membership in the application cloud: joining (the paper's subset rules (a) and (b)
// and transformations 1 to 4) and leaving a cluster, and the desired state and sync status of
// a server that follow from its membership, publications and authorizations.
#include <algorithm>
#include <iterator>

#include "domain/appcloud.h"
#include "domain/appcloud_internal.h"
#include "domain/state.h"

namespace atrium::domain {

using namespace appcloud_detail;

namespace {

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

}  // namespace

// ---- desired state ----------------------------------------------------------------------
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

}  // namespace atrium::domain

// Application cloud [DOMAIN.md section 6, seed 003]: clusters of application servers,
// applications found on them, publications (remote apps) and authorizations of users, with
// every rule of the paper as a decider check. Placement of launches is in domain/placement.h.
//
// Streams and events (type tags are stored forever):
//   cluster-<id>           ClusterCreated, ClusterUpdated, ClusterDeleted
//   server-<id>            ServerCreated, ServerUpdated, ServerDeleted, ServerApplicationAdded,
//                          ServerApplicationRemoved, ServerJoinedCluster, ServerLeftCluster
//   server-load-<id>       ServerLoadReported (logs from before issue 11 only: load is liveness
//                          now, kept in memory by the broker, pipeline/liveness.h)
//   server-inventory-<id>  ServerInventoryReported (on change only)
//   application-<id>       ApplicationRegistered
//   publication-<id>       ApplicationPublished, ApplicationUnpublished
//   authorization-<id>     ApplicationAuthorized, ApplicationUnauthorized
//   session-<id>           ApplicationLaunchDecided (decided in domain/placement.cpp),
//                          ApplicationSessionEnded (domain/app_sessions.cpp)
// Inventory reports have a stream of their own, so that an agent's report does not move the
// server's version under an admin's If-Match. Load figures are not events: placement takes them
// from the liveness table (LaunchApplication.live) and records the ones it used in its
// decision; the load folded from an older log's ServerLoadReported counts until it is stale.
//
// Rules (refusal reasons in brackets; codes: failed_precondition unless noted):
//   - publish at server scope only on a standalone server [server_in_cluster] that has the
//     application [application_not_present]; at cluster scope only where at least one server
//     of the cluster has it [application_not_present];
//   - one publication per (application, scope, target) [already_published, already_exists];
//   - authorize only what is published at that scope and target [not_published]; one
//     authorization per (user, application, scope, target) [already_authorized, already_exists];
//   - a server joins at most one cluster [server_already_in_cluster]; only when its published
//     applications are a subset of the cluster's [join_publications_not_subset] and, for every
//     user, its authorizations a subset of the cluster's [join_authorizations_not_subset].
//   On join, one decide returns the whole batch of the paper's four transformations:
//     1. app published both on the server and in the cluster: the server-scope publication is
//        dropped (ApplicationUnpublished, cause "joined_cluster");
//     2. app published only in the cluster and present on the server: added to the server's
//        remote-app list (listed in ServerJoinedCluster.remote_apps_added);
//     3. user authorized both on the server and in the cluster: the server-scope authorization
//        is dropped (ApplicationUnauthorized, cause "joined_cluster");
//     4. user authorized only in the cluster: added to the server's remote-user list (listed in
//        ServerJoinedCluster.remote_users_added).
//   The remote-app and remote-user lists themselves are derived (desired_state()), so 2 and 4
//   hold by construction; the event records them for the audit log and the reconciler.
//
// Cascades (each removal is an event of its own, in the same batch, with a "cause"):
//   - Unpublish removes the publication's authorizations (same application, scope, target).
//   - Unauthorize removes nothing else.
//   - DeleteServer removes the server-scope authorizations and publications on it. A server in
//     a cluster may be deleted: it simply stops being a member; the cluster's publications stay.
//   - RemoveServerApplication on a standalone server removes the server-scope publication of
//     that application there (and its authorizations). In a cluster nothing else changes: a
//     cluster publication whose last holder left stays, dormant, until unpublished.
//   - LeaveCluster: the server becomes standalone with no publication of its own; the apps and
//     users the cluster gave it leave its desired lists (ServerLeftCluster.remote_apps_removed,
//     .remote_users_removed). Nothing is republished at server scope: that is the admin's call.
//   - DeleteCluster requires the cluster to have no member servers [cluster_not_empty]: moving
//     servers out changes what they serve and deserves a deliberate LeaveCluster each. An empty
//     cluster's publications and authorizations are removed with it (they serve nobody).
//   - Deleting a user (domain/users.h) does not cascade here; that user's authorizations stay
//     until unauthorized, and placement refuses an unknown or disabled user.
//
// Create commands carry the new entity's id (the API generates them); an id is never reused,
// even after deletion [already_exists]. Update and delete commands take an optional
// expected_version (If-Match), checked with check_expected() [version_mismatch].
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "domain/event.h"

namespace atrium::domain {

// ---- value types ------------------------------------------------------------------------
enum class Scope { server, cluster };
const char* scope_name(Scope s);
std::optional<Scope> parse_scope(std::string_view s);

// How a cluster picks one of its servers for a launch (intra-cluster policy). The formulas are
// in domain/placement.h.
enum class IntraClusterPolicy { least_sessions, least_cpu, least_memory, round_robin, weighted };
const char* intra_policy_name(IntraClusterPolicy p);
std::optional<IntraClusterPolicy> parse_intra_policy(std::string_view s);

struct Weights {
  double cpu = 0.3;
  double memory = 0.6;
  double sessions = 0.1;
};

struct ClusterPlacement {
  IntraClusterPolicy policy = IntraClusterPolicy::weighted;
  Weights weights;
  // Sessions at which a server counts as full in the weighted score; 0 = normalise by the
  // busiest candidate instead.
  uint32_t max_sessions = 0;
};

// The application id: the first 16 hex characters of SHA-256(name + '\0' + executable_path).
std::string application_id(const std::string& name, const std::string& executable_path);

// ---- entities ---------------------------------------------------------------------------
struct Cluster {
  std::string id;
  std::string name;
  std::string description;
  ClusterPlacement placement;
  int64_t created_at_ms = 0;
  int64_t updated_at_ms = 0;
  uint64_t version = 0;
};

struct LoadReport {
  double cpu_load = 0;     // 0..1
  double memory_load = 0;  // 0..1
  uint32_t sessions = 0;
  int64_t reported_at_ms = 0;
  // The log position when the report arrived: launches decided after it are not in `sessions`
  // yet and are added to it (a burst between two reports spreads out).
  uint64_t since_position = 0;
};
// invalid_argument (invalid_load) unless cpu_load and memory_load are within 0..1.
Status validate_load(const LoadReport& l);

// What the server says its remote-app list and remote-user list hold.
struct InventoryReport {
  std::set<std::string> apps;
  std::set<std::string> users;
  int64_t reported_at_ms = 0;
};

struct Server {
  std::string id;
  std::string name;
  std::string address;
  std::string os_type;  // "windows" or "linux"
  std::string os_version;
  uint32_t cpus = 0;
  uint64_t memory_mb = 0;
  bool remote_app_service = true;      // false: maintenance, never chosen for a launch
  std::string cluster_id;              // empty: standalone
  std::set<std::string> applications;  // ids of the applications present
  // Those the server's agent found (ServerApplicationAdded source "agent"): the ones its
  // inventory may remove again; applications added by hand stay.
  std::set<std::string> agent_applications;
  std::optional<LoadReport> load;  // folded from an older log's ServerLoadReported
  uint64_t load_position = 0;  // log position of the load report kept (0: none)
  // Launches decided onto this server since its last load report and not ended since: added
  // to the reported session count so that a burst of launches between two reports spreads out.
  uint32_t launches_since_report = 0;
  std::optional<InventoryReport> reported;
  int64_t created_at_ms = 0;
  int64_t updated_at_ms = 0;
  uint64_t version = 0;

  bool standalone() const { return cluster_id.empty(); }
  bool has(const std::string& app_id) const { return applications.count(app_id) > 0; }
};

struct Application {
  std::string id;
  std::string name;
  std::string description;
  std::string executable_path;
  std::string desktop_file;
  int64_t created_at_ms = 0;
  uint64_t version = 0;
};

struct Publication {
  std::string id;
  std::string application_id;
  Scope scope = Scope::server;
  std::string target_id;  // a server id or a cluster id, per scope
  int64_t created_at_ms = 0;
  uint64_t version = 0;
};

// A user's, or a directory group's: user_id is then "group:<cn>@<directory>"
// (kGroupPrincipal), and the rules (uniqueness, subsets at join) hold for it as for a user.
inline constexpr const char* kGroupPrincipal = "group:";

struct Authorization {
  std::string id;
  std::string user_id;
  std::string application_id;
  Scope scope = Scope::server;
  std::string target_id;
  int64_t created_at_ms = 0;
  uint64_t version = 0;
};

// An application session: the launch decision, kept so that GET /v1/sessions/{id} can answer
// "why this server", and whether it still runs ("active") or has "ended" (logoff).
struct AppSession {
  std::string id;
  std::string user_id;
  std::string application_id;
  std::string server_id;
  int64_t decided_at_ms = 0;
  uint64_t decided_position = 0;  // log position of ApplicationLaunchDecided
  Json decision;  // the Decision as recorded (domain/placement.h decision_to_json)
  std::string state = "active";  // active | ended
  int64_t ended_at_ms = 0;
  std::string end_reason;  // logoff
  uint64_t version = 0;

  bool active() const { return state == "active"; }
};

// ---- query results ----------------------------------------------------------------------
struct DesiredState {
  std::string server_id;
  bool remote_app_service = true;
  std::set<std::string> remote_apps;   // application ids
  std::set<std::string> remote_users;  // user ids
};

struct SyncStatus {
  bool in_sync = false;
  bool reported = false;  // false: the server never reported; compared as if it held nothing
  std::set<std::string> missing_apps;  // desired, not reported
  std::set<std::string> extra_apps;    // reported, not desired
  std::set<std::string> missing_users;
  std::set<std::string> extra_users;
};

struct EntitlementPlace {
  std::string authorization_id;
  Scope scope = Scope::server;
  std::string target_id;
};

struct Entitlement {
  std::string application_id;
  std::string name;
  std::vector<EntitlementPlace> where;  // ordered by (scope, target)
};

// ---- state ------------------------------------------------------------------------------
struct AppCloudState {
  std::map<std::string, Cluster> clusters;
  std::map<std::string, Server> servers;
  std::map<std::string, Application> applications;
  std::map<std::string, Publication> publications;
  std::map<std::string, Authorization> authorizations;
  std::map<std::string, AppSession> sessions;
  // Round-robin counters ("app:<id>", "cluster:<id>"), advanced only by
  // ApplicationLaunchDecided so that replay gives the same choices.
  std::map<std::string, uint64_t> round_robin;

  // Derived lookup indexes, kept by evolve and rebuilt by appcloud_from_json (reindex());
  // never part of the JSON view. Keys join their parts with '\x1f'.
  struct Indexes {
    std::unordered_map<std::string, std::string> publication_by_key;    // app|scope|target
    std::unordered_map<std::string, std::string> authorization_by_key;  // user|app|scope|target
    std::unordered_map<std::string, std::set<std::string>> publications_at;    // scope|target
    std::unordered_map<std::string, std::set<std::string>> authorizations_at;  // scope|target
    std::unordered_map<std::string, std::set<std::string>> authorizations_by_user;
    std::unordered_map<std::string, std::set<std::string>> members;  // cluster -> servers
    std::unordered_map<std::string, std::string> cluster_by_name;
    std::unordered_map<std::string, std::string> server_by_name;
    // Decided positions of the active application sessions on each server.
    std::unordered_map<std::string, std::set<uint64_t>> active_launches;
  } index;
  // Active launches on `server_id` decided after log position `after`.
  uint32_t launches_after(const std::string& server_id, uint64_t after) const;
  void reindex();
  void index_publication(const Publication& p, bool add);
  void index_authorization(const Authorization& a, bool add);
  void index_membership(const std::string& server_id, const std::string& cluster_id, bool add);

  const Cluster* cluster(const std::string& id) const;
  const Server* server(const std::string& id) const;
  const Application* application(const std::string& id) const;
  const Publication* publication(const std::string& id) const;
  const Authorization* authorization(const std::string& id) const;
  const AppSession* session(const std::string& id) const;

  // The publication of `app_id` at (scope, target), or nullptr.
  const Publication* find_publication(const std::string& app_id, Scope scope,
                                      const std::string& target_id) const;
  // The authorization of `user_id` for `app_id` at (scope, target), or nullptr.
  const Authorization* find_authorization(const std::string& user_id, const std::string& app_id,
                                          Scope scope, const std::string& target_id) const;
  std::vector<const Publication*> publications_at(Scope scope, const std::string& target) const;
  std::vector<const Authorization*> authorizations_at(Scope scope, const std::string& target) const;
  std::vector<const Authorization*> authorizations_of(const std::string& user_id,
                                                      const std::string& app_id) const;
  // Those of the user and of each of its groups (domain/directories.h).
  std::vector<const Authorization*> authorizations_of(const std::string& user_id,
                                                      const std::set<std::string>& groups,
                                                      const std::string& app_id) const;
  // Member servers of a cluster, by id.
  std::vector<const Server*> members(const std::string& cluster_id) const;
  // Ids of the servers where the application is present, and of their clusters.
  std::vector<std::string> servers_with(const std::string& app_id) const;
  std::vector<std::string> clusters_with(const std::string& app_id) const;
  bool cluster_has(const std::string& cluster_id, const std::string& app_id) const;

  // Targets offered for publishing `app_id` at `scope`: standalone servers that have it, or
  // clusters where at least one server has it, minus those where it is already published at
  // that scope. Sorted by id. Empty for an unknown application.
  std::vector<std::string> publish_targets(const std::string& app_id, Scope scope) const;

  // Targets offered for authorizing `app_id` to `user_id` at `scope`: where it is published at
  // that scope, minus those already authorized for that user. Sorted by id. (The API resolves
  // a publication id to its application first.)
  std::vector<std::string> authorize_targets(const std::string& app_id, const std::string& user_id,
                                             Scope scope) const;

  // The applications authorized to `user_id`, each with where, ordered by application id.
  std::vector<Entitlement> entitlements(const std::string& user_id,
                                        const std::set<std::string>& groups = {}) const;

  // What the server should hold: apps published at server scope on it, or at cluster scope on
  // its cluster where the server has the app; users authorized for any of those. nullopt for
  // an unknown server.
  std::optional<DesiredState> desired_state(const std::string& server_id) const;

  // The desired state compared with the last inventory report. nullopt for an unknown server.
  std::optional<SyncStatus> sync_status(const std::string& server_id) const;
};

// ---- commands ---------------------------------------------------------------------------
struct CreateCluster {
  std::string id;
  std::string name;
  std::string description;
  ClusterPlacement placement;
};

struct UpdateCluster {
  std::string id;
  std::optional<uint64_t> expected_version;
  std::optional<std::string> name;
  std::optional<std::string> description;
  std::optional<ClusterPlacement> placement;
};

struct DeleteCluster {
  std::string id;
  std::optional<uint64_t> expected_version;
};

struct CreateServer {
  std::string id;
  std::string name;
  std::string address;
  std::string os_type;
  std::string os_version;
  uint32_t cpus = 0;
  uint64_t memory_mb = 0;
  bool remote_app_service = true;
};

struct UpdateServer {
  std::string id;
  std::optional<uint64_t> expected_version;
  std::optional<std::string> name;
  std::optional<std::string> address;
  std::optional<std::string> os_version;
  std::optional<uint32_t> cpus;
  std::optional<uint64_t> memory_mb;
  std::optional<bool> remote_app_service;  // enabled / disabled
};

struct DeleteServer {
  std::string id;
  std::optional<uint64_t> expected_version;
};

// Adds an application present on a server (found by the agent, or added by hand), creating
// the Application on first sight. Adding one already present changes nothing (no events).
struct AddServerApplication {
  std::string server_id;
  std::string name;
  std::string executable_path;
  std::string description;
  std::string desktop_file;
  std::string source = "admin";  // admin|agent (ServerApplicationAdded.source)
};

struct RemoveServerApplication {
  std::string server_id;
  std::string application_id;
};

struct JoinCluster {
  std::string server_id;
  std::string cluster_id;
  std::optional<uint64_t> expected_version;  // of the server
};

struct LeaveCluster {
  std::string server_id;
  std::optional<uint64_t> expected_version;  // of the server
};

struct Publish {
  std::string id;
  std::string application_id;
  Scope scope = Scope::server;
  std::string target_id;
};

struct Unpublish {
  std::string id;
  std::optional<uint64_t> expected_version;
};

struct Authorize {
  std::string id;
  std::string user_id;
  std::string application_id;
  Scope scope = Scope::server;
  std::string target_id;
};

struct Unauthorize {
  std::string id;
  std::optional<uint64_t> expected_version;
};

// What the server's remote-app and remote-user lists hold (agent or admin report).
// A report equal to the one kept changes nothing.
struct ReportServerInventory {
  std::string server_id;
  std::set<std::string> apps;
  std::set<std::string> users;
  int64_t reported_at_ms = 0;
};

// Ends an application session (DELETE /v1/sessions/{id}): its owner (actor_id) or an admin
// (as_admin) may; for anyone else the session does not exist (not_found). A session that has
// ended already changes nothing (no events). Emits ApplicationSessionEnded on "session-<id>"
// (schema 1): {session_id, user_id, server_id, reason, ended_at_ms}. A launch that is still
// counted in its server's launches_since_report stops counting.
struct EndApplicationSession {
  std::string session_id;
  std::string actor_id;
  bool as_admin = false;
  std::string reason = "logoff";
};

struct State;
// Each returns the events to append, or an Error with a stable reason (see the header
// comment). A command that changes nothing returns no events.
Result<Events> decide(const State& s, const CreateCluster& c, const Context& ctx);
Result<Events> decide(const State& s, const UpdateCluster& c, const Context& ctx);
Result<Events> decide(const State& s, const DeleteCluster& c, const Context& ctx);
Result<Events> decide(const State& s, const CreateServer& c, const Context& ctx);
Result<Events> decide(const State& s, const UpdateServer& c, const Context& ctx);
Result<Events> decide(const State& s, const DeleteServer& c, const Context& ctx);
Result<Events> decide(const State& s, const AddServerApplication& c, const Context& ctx);
Result<Events> decide(const State& s, const RemoveServerApplication& c, const Context& ctx);
Result<Events> decide(const State& s, const JoinCluster& c, const Context& ctx);
Result<Events> decide(const State& s, const LeaveCluster& c, const Context& ctx);
Result<Events> decide(const State& s, const Publish& c, const Context& ctx);
Result<Events> decide(const State& s, const Unpublish& c, const Context& ctx);
Result<Events> decide(const State& s, const Authorize& c, const Context& ctx);
Result<Events> decide(const State& s, const Unauthorize& c, const Context& ctx);
Result<Events> decide(const State& s, const ReportServerInventory& c, const Context& ctx);
Result<Events> decide(const State& s, const EndApplicationSession& c, const Context& ctx);

// Validation shared with the API layer.
Status validate_id(const std::string& field, const std::string& id);
Status validate_placement(const ClusterPlacement& p);

std::string cluster_stream(const std::string& id);
std::string server_stream(const std::string& id);
std::string server_load_stream(const std::string& id);
std::string server_inventory_stream(const std::string& id);
std::string application_stream(const std::string& id);
std::string publication_stream(const std::string& id);
std::string authorization_stream(const std::string& id);
std::string session_stream(const std::string& id);

// ---- JSON views -------------------------------------------------------------------------
Json placement_to_json(const ClusterPlacement& p);
// Reads a placement written by placement_to_json; absent fields keep their defaults.
// invalid_argument (reason invalid_placement) on a wrong shape or value.
Result<ClusterPlacement> placement_from_json(const Json& j);
Json cluster_to_json(const Cluster& c);
Json server_to_json(const Server& s);
// With "servers" and "clusters" where the application is present.
Json application_to_json(const AppCloudState& s, const Application& a);
Json publication_to_json(const Publication& p);
Json authorization_to_json(const Authorization& a);
Json session_to_json(const AppSession& s);
Json desired_state_to_json(const DesiredState& d);
Json sync_status_to_json(const SyncStatus& st);
Json entitlement_to_json(const Entitlement& e);

}  // namespace atrium::domain

// Placement: which application server runs a user's launch of an application
// [DOMAIN.md section 6, seed 003 section 4 "application centre policies"]. Pure: the state,
// the configuration and the clock come in; a Decision (or an Error) comes out.
//
// 1. Targets. Each authorization of (user, application) is a target: at server scope its one
//    server; at cluster scope every member server of the cluster.
// 2. Exclusions. A server of a target is excluded, with one recorded reason (first that
//    applies, in this order):
//      application_not_present      the server lacks the application
//      remote_app_service_disabled  the remote-app service is disabled (maintenance)
//      agent_unregistered           the server has an agent (domain/agents.h) and it is not
//                                   hard-registered; servers without an agent (added and
//                                   reported by hand) are not concerned
//      no_load_report               the server never reported its load
//      load_report_stale            now_ms - reported_at_ms > stale_after_ms (default 90 s)
//    The others are eligible.
// 3. Scope preference (the paper's server-vs-cluster policy): prefer_server uses the server-scope
//    targets that have an eligible server, and only if there is none the cluster-scope ones;
//    prefer_cluster the other way round.
// 4. Inter-target policy (the paper's inter-server and inter-cluster policies), among the
//    targets of the chosen scope that have an eligible server, sorted by target id (index i of
//    n). Each target gets a score; the lowest wins, ties to the lower index:
//      first         score = i
//      least_loaded  score = load(target) = mean over its eligible servers of
//                    w_cpu*cpu + w_mem*mem + w_sess*sessions/S, with the weights of
//                    PlacementConfig.load_weights and S = the largest session count among all
//                    eligible servers of these targets (the term is 0 when S = 0)
//      round_robin   score = (i - k) mod n, k = counter "app:<application id>"
// 5. Intra-target policy: a server-scope target is its one server ("single_server", score 0).
//    A cluster-scope target uses the cluster's placement policy over its eligible servers,
//    sorted by server id (index i of n); lowest score wins, ties to the lower index:
//      least_sessions  score = sessions
//      least_cpu       score = cpu
//      least_memory    score = mem
//      weighted        score = w_cpu*cpu + w_mem*mem + w_sess*sn, the cluster's weights
//                      (default 0.3, 0.6, 0.1); sn = min(1, sessions/max_sessions) when the
//                      cluster sets max_sessions, else sessions/S with S the largest session
//                      count among these servers (0 when S = 0)
//      round_robin     score = (i - k) mod n, k = counter "cluster:<cluster id>"
//    where cpu and mem are the last reported loads (0..1) and sessions = the reported session
//    count + launches decided onto the server since that report. The loads are live figures
//    (PlacementLive.load: the broker's liveness table), else the load folded from an older
//    log; each candidate's figures (and when they were reported) are recorded in the decision,
//    so a replay never needs the load history to explain a choice.
// 6. Round-robin counters live in AppCloudState::round_robin and advance only when the
//    ApplicationLaunchDecided event of a decision that used them is applied (Decision.advance),
//    so a replay of the log makes the same choices.
//
// Policies are tables of small scoring functions (intra_policies(), inter_policies()): a new
// policy is an enum value, a name and one table entry.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "domain/appcloud.h"
#include "domain/event.h"

namespace atrium::domain {

enum class ScopePreference { prefer_server, prefer_cluster };
const char* scope_preference_name(ScopePreference p);
std::optional<ScopePreference> parse_scope_preference(std::string_view s);

enum class InterTargetPolicy { first, least_loaded, round_robin };
const char* inter_policy_name(InterTargetPolicy p);
std::optional<InterTargetPolicy> parse_inter_policy(std::string_view s);

// Broker-wide placement settings (from the daemon's configuration). Per-cluster settings are
// in Cluster::placement.
struct PlacementConfig {
  ScopePreference scope_preference = ScopePreference::prefer_server;
  InterTargetPolicy inter_target = InterTargetPolicy::least_loaded;
  int64_t stale_after_ms = 90'000;
  Weights load_weights;  // for the least_loaded target load
};

// invalid_argument (reason invalid_placement_config) on a non-positive staleness limit or
// negative, non-finite or all-zero load weights.
Status validate_placement_config(const PlacementConfig& c);

// ---- pluggable scoring ------------------------------------------------------------------
struct ScoreInput {
  double cpu = 0;
  double memory = 0;
  double sessions = 0;       // reported + launched since the report
  double sessions_norm = 0;  // 0..1, see the header comment
  size_t index = 0;          // among the eligible servers, by id
  size_t count = 0;
  uint64_t counter = 0;  // the target's round-robin counter
  Weights weights;
};
using ScoreFn = double (*)(const ScoreInput&);
const std::map<IntraClusterPolicy, ScoreFn>& intra_policies();

struct TargetInput {
  double load = 0;  // mean weighted load of the target's eligible servers
  size_t index = 0;
  size_t count = 0;
  uint64_t counter = 0;
};
using TargetScoreFn = double (*)(const TargetInput&);
const std::map<InterTargetPolicy, TargetScoreFn>& inter_policies();

// ---- decisions --------------------------------------------------------------------------
struct Candidate {
  std::string server_id;
  double cpu_load = 0;
  double memory_load = 0;
  uint32_t sessions = 0;  // effective: reported + launched since
  double score = 0;
  int64_t reported_at_ms = 0;  // of the load figures used
};

struct Exclusion {
  std::string server_id;
  Scope scope = Scope::server;
  std::string target_id;
  std::string reason;  // stable, see the header comment
  std::string detail;  // for people, e.g. "load report stale (120 s old, limit 90 s)"
};

struct TargetScore {
  Scope scope = Scope::server;
  std::string target_id;
  std::string authorization_id;
  size_t eligible = 0;
  double load = 0;
  double score = 0;
};

struct Decision {
  std::string server_id;
  Scope scope = Scope::server;
  std::string target_id;
  std::string authorization_id;
  std::string scope_preference;  // policy names used at each step
  std::string inter_target;
  std::string intra_target;           // a cluster policy name, or "single_server"
  std::vector<TargetScore> targets;   // the competing targets of the chosen scope
  std::vector<Candidate> candidates;  // the eligible servers of the chosen target
  std::vector<Exclusion> excluded;    // every excluded server of every authorized target
  std::vector<std::string> advance;   // round-robin counters this decision advances
  int64_t stale_after_ms = 0;
};

// Chooses a server for `user_id` launching `application_id` at `now_ms`.
// Errors (failed_precondition): "not_authorized" when the user has no authorization for the
// application; "no_candidate" when no authorized target has an eligible server, with a message
// listing each excluded server and its reason.
// Live inputs of a decision, read from the broker's memory (none in a replay: the decision
// records what it used).
using LoadLookup = std::function<std::optional<LoadReport>(const std::string& server_id)>;
struct PlacementLive {
  LoadLookup load;  // the server's live load; empty or nullopt: the folded one, if any
  // The registration of the server's agent ("" when it has none), from domain/agents.h.
  std::function<std::string(const std::string& server_id)> agent_registration;
};
Result<Decision> place(const AppCloudState& s, const std::string& user_id,
                       const std::string& application_id, const PlacementConfig& cfg,
                       int64_t now_ms, const PlacementLive& live = {},
                       const std::set<std::string>& groups = {});  // the user's directory groups

Json decision_to_json(const Decision& d);

// ---- the launch command -----------------------------------------------------------------
// Decides where a new application session runs and records why.
struct LaunchApplication {
  std::string session_id;
  std::string user_id;
  std::string application_id;
  PlacementConfig config;  // filled by the pipeline from the daemon's configuration
  LoadLookup live_load = {};  // the liveness table (the agent registration comes from state)
};

// Emits ApplicationLaunchDecided on "session-<id>": {session_id, user_id, application_id,
// server_id, decided_at_ms, decision: decision_to_json(...)}.
// Errors: invalid_argument (invalid_id, invalid_placement_config); already_exists
// (session_exists); not_found (user_not_found, application_not_found); failed_precondition
// (user_disabled, not_authorized, no_candidate).
Result<Events> decide(const State& s, const LaunchApplication& c, const Context& ctx);

}  // namespace atrium::domain

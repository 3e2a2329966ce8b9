#include "domain/placement.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "domain/state.h"
#include "domain/users.h"

namespace atrium::domain {

const char* scope_preference_name(ScopePreference p) {
  return p == ScopePreference::prefer_server ? "prefer_server" : "prefer_cluster";
}

std::optional<ScopePreference> parse_scope_preference(std::string_view s) {
  if (s == "prefer_server") return ScopePreference::prefer_server;
  if (s == "prefer_cluster") return ScopePreference::prefer_cluster;
  return std::nullopt;
}

const char* inter_policy_name(InterTargetPolicy p) {
  switch (p) {
    case InterTargetPolicy::first:
      return "first";
    case InterTargetPolicy::least_loaded:
      return "least_loaded";
    case InterTargetPolicy::round_robin:
      return "round_robin";
  }
  return "first";
}

std::optional<InterTargetPolicy> parse_inter_policy(std::string_view s) {
  for (auto p : {InterTargetPolicy::first, InterTargetPolicy::least_loaded,
                 InterTargetPolicy::round_robin}) {
    if (s == inter_policy_name(p)) return p;
  }
  return std::nullopt;
}

Status validate_placement_config(const PlacementConfig& c) {
  auto bad = [](const std::string& field, const std::string& problem) {
    return Error{Code::invalid_argument,
                 field + " " + problem,
                 "invalid_placement_config",
                 {{field, problem}}};
  };
  if (c.stale_after_ms <= 0) return bad("stale_after_ms", "must be positive");
  const Weights& w = c.load_weights;
  for (double v : {w.cpu, w.memory, w.sessions}) {
    if (!std::isfinite(v) || v < 0) return bad("load_weights", "must be finite and not negative");
  }
  if (w.cpu + w.memory + w.sessions <= 0) return bad("load_weights", "must not all be zero");
  return Status::Ok();
}

// ---- scoring tables ---------------------------------------------------------------------
namespace {

double rotation(size_t index, size_t count, uint64_t counter) {
  if (count == 0) return 0;
  uint64_t k = counter % count;
  return static_cast<double>((index + count - k) % count);
}

double by_sessions(const ScoreInput& in) {
  return in.sessions;
}
double by_cpu(const ScoreInput& in) {
  return in.cpu;
}
double by_memory(const ScoreInput& in) {
  return in.memory;
}
double by_rotation(const ScoreInput& in) {
  return rotation(in.index, in.count, in.counter);
}
double by_weights(const ScoreInput& in) {
  return in.weights.cpu * in.cpu + in.weights.memory * in.memory +
         in.weights.sessions * in.sessions_norm;
}

double target_first(const TargetInput& in) {
  return static_cast<double>(in.index);
}
double target_least_loaded(const TargetInput& in) {
  return in.load;
}
double target_rotation(const TargetInput& in) {
  return rotation(in.index, in.count, in.counter);
}

}  // namespace

const std::map<IntraClusterPolicy, ScoreFn>& intra_policies() {
  static const std::map<IntraClusterPolicy, ScoreFn> t = {
      {IntraClusterPolicy::least_sessions, by_sessions},
      {IntraClusterPolicy::least_cpu, by_cpu},
      {IntraClusterPolicy::least_memory, by_memory},
      {IntraClusterPolicy::round_robin, by_rotation},
      {IntraClusterPolicy::weighted, by_weights},
  };
  return t;
}

const std::map<InterTargetPolicy, TargetScoreFn>& inter_policies() {
  static const std::map<InterTargetPolicy, TargetScoreFn> t = {
      {InterTargetPolicy::first, target_first},
      {InterTargetPolicy::least_loaded, target_least_loaded},
      {InterTargetPolicy::round_robin, target_rotation},
  };
  return t;
}

// ---- place ------------------------------------------------------------------------------
namespace {

struct Eligible {
  const Server* server;
  double sessions;  // effective
  LoadReport load;  // the figures used
};

struct Target {
  Scope scope;
  std::string id;
  std::string authorization_id;
  std::vector<Eligible> eligible;  // by server id
};

std::string seconds(int64_t ms) {
  return std::to_string(ms / 1000) + " s";
}

// The load placement uses for `srv`: live, else folded from an older log; with the log
// position after which launches are not in its session count.
std::optional<LoadReport> load_of(const Server& srv, const PlacementLive& live) {
  if (live.load) {
    if (auto l = live.load(srv.id)) return l;
  }
  return srv.load;
}

// The reason `srv` cannot run `app_id` now, or nullopt when it can.
std::optional<std::pair<std::string, std::string>> exclusion(const Server& srv,
                                                             const std::optional<LoadReport>& load,
                                                             const std::string& app_id,
                                                             const PlacementConfig& cfg,
                                                             const PlacementLive& live,
                                                             int64_t now_ms) {
  if (!srv.has(app_id)) return {{"application_not_present", "application not present"}};
  if (!srv.remote_app_service) {
    return {{"remote_app_service_disabled", "remote-app service disabled"}};
  }
  if (live.agent_registration) {
    std::string reg = live.agent_registration(srv.id);
    if (!reg.empty() && reg != "hard") {
      return {{"agent_unregistered", "the server's agent is " + reg + ", not hard-registered"}};
    }
  }
  if (!load) return {{"no_load_report", "no load report"}};
  int64_t age = now_ms - load->reported_at_ms;
  if (age > cfg.stale_after_ms) {
    return {{"load_report_stale", "load report stale (" + seconds(age) + " old, limit " +
                                      seconds(cfg.stale_after_ms) + ")"}};
  }
  return std::nullopt;
}

double max_sessions_of(const std::vector<Eligible>& es) {
  double m = 0;
  for (const auto& e : es) m = std::max(m, e.sessions);
  return m;
}

// Index of the lowest score, ties to the lower index; scores must not be empty.
size_t argmin(const std::vector<double>& scores) {
  size_t best = 0;
  for (size_t i = 1; i < scores.size(); ++i) {
    if (scores[i] < scores[best]) best = i;
  }
  return best;
}

uint64_t counter_of(const AppCloudState& s, const std::string& key) {
  auto it = s.round_robin.find(key);
  return it == s.round_robin.end() ? 0 : it->second;
}

std::string no_candidate_message(const AppCloudState& s, const std::string& user_id,
                                 const std::string& app_id, const std::vector<Target>& targets,
                                 const std::vector<Exclusion>& excluded) {
  std::string msg = "no server can run application ";
  const Application* app = s.application(app_id);
  msg += app != nullptr ? app->name + " (" + app_id + ")" : app_id;
  msg += " for user " + user_id + ": ";
  if (excluded.empty()) {
    msg += "the authorized targets have no servers (";
    for (size_t i = 0; i < targets.size(); ++i) {
      msg += (i ? ", " : "") + std::string(scope_name(targets[i].scope)) + " " + targets[i].id;
    }
    return msg + ")";
  }
  msg += std::to_string(excluded.size()) + (excluded.size() == 1 ? " server" : " servers") +
         " excluded: ";
  for (size_t i = 0; i < excluded.size(); ++i) {
    msg += (i ? "; " : "") + excluded[i].server_id + " " + excluded[i].detail;
  }
  return msg;
}

}  // namespace

Result<Decision> place(const AppCloudState& s, const std::string& user_id,
                       const std::string& application_id, const PlacementConfig& cfg,
                       int64_t now_ms, const PlacementLive& live,
                       const std::set<std::string>& groups) {
  auto auths = s.authorizations_of(user_id, groups, application_id);
  if (auths.empty()) {
    return refused("not_authorized",
                   "user " + user_id + " is not authorized for application " + application_id);
  }

  // 1-2: targets and exclusions.
  Decision d;
  std::vector<Target> targets;
  for (const Authorization* a : auths) {
    Target t{a->scope, a->target_id, a->id, {}};
    std::vector<const Server*> servers;
    if (a->scope == Scope::server) {
      if (const Server* srv = s.server(a->target_id)) servers.push_back(srv);
    } else {
      servers = s.members(a->target_id);
    }
    for (const Server* srv : servers) {
      std::optional<LoadReport> load = load_of(*srv, live);
      if (auto why = exclusion(*srv, load, application_id, cfg, live, now_ms)) {
        d.excluded.push_back({srv->id, a->scope, a->target_id, why->first, why->second});
      } else {
        double sessions = load->sessions + s.launches_after(srv->id, load->since_position);
        t.eligible.push_back({srv, sessions, *load});
      }
    }
    targets.push_back(std::move(t));
  }
  std::sort(targets.begin(), targets.end(), [](const Target& x, const Target& y) {
    return std::tie(x.scope, x.id) < std::tie(y.scope, y.id);
  });

  // 3: scope preference.
  std::vector<const Target*> competing;
  Scope order[2] = {Scope::server, Scope::cluster};
  if (cfg.scope_preference == ScopePreference::prefer_cluster) std::swap(order[0], order[1]);
  for (Scope scope : order) {
    for (const Target& t : targets) {
      if (t.scope == scope && !t.eligible.empty()) competing.push_back(&t);
    }
    if (!competing.empty()) break;
  }
  if (competing.empty()) {
    return refused("no_candidate",
                   no_candidate_message(s, user_id, application_id, targets, d.excluded));
  }

  // 4: inter-target policy.
  double s_max = 0;
  for (const Target* t : competing) s_max = std::max(s_max, max_sessions_of(t->eligible));
  const Weights& lw = cfg.load_weights;
  std::string app_key = "app:" + application_id;
  uint64_t app_counter = counter_of(s, app_key);
  TargetScoreFn inter = inter_policies().at(cfg.inter_target);
  std::vector<double> target_scores;
  for (size_t i = 0; i < competing.size(); ++i) {
    const Target& t = *competing[i];
    double sum = 0;
    for (const Eligible& e : t.eligible) {
      double sn = s_max > 0 ? e.sessions / s_max : 0;
      sum += lw.cpu * e.load.cpu_load + lw.memory * e.load.memory_load +
             lw.sessions * sn;
    }
    double load = sum / static_cast<double>(t.eligible.size());
    double score = inter(TargetInput{load, i, competing.size(), app_counter});
    target_scores.push_back(score);
    d.targets.push_back({t.scope, t.id, t.authorization_id, t.eligible.size(), load, score});
  }
  const Target& chosen = *competing[argmin(target_scores)];
  if (cfg.inter_target == InterTargetPolicy::round_robin) d.advance.push_back(app_key);

  // 5: intra-target policy.
  d.scope = chosen.scope;
  d.target_id = chosen.id;
  d.authorization_id = chosen.authorization_id;
  d.scope_preference = scope_preference_name(cfg.scope_preference);
  d.inter_target = inter_policy_name(cfg.inter_target);
  d.stale_after_ms = cfg.stale_after_ms;
  auto candidate = [](const Eligible& e, double score) {
    return Candidate{e.server->id, e.load.cpu_load, e.load.memory_load,
                     static_cast<uint32_t>(e.sessions), score, e.load.reported_at_ms};
  };
  if (chosen.scope == Scope::server) {
    d.intra_target = "single_server";
    d.candidates.push_back(candidate(chosen.eligible.front(), 0));
    d.server_id = chosen.eligible.front().server->id;
    return d;
  }
  const Cluster* cl = s.cluster(chosen.id);
  ClusterPlacement cp = cl != nullptr ? cl->placement : ClusterPlacement{};
  d.intra_target = intra_policy_name(cp.policy);
  std::string cluster_key = "cluster:" + chosen.id;
  uint64_t cluster_counter = counter_of(s, cluster_key);
  double c_max = max_sessions_of(chosen.eligible);
  ScoreFn intra = intra_policies().at(cp.policy);
  std::vector<double> scores;
  for (size_t i = 0; i < chosen.eligible.size(); ++i) {
    const Eligible& e = chosen.eligible[i];
    ScoreInput in;
    in.cpu = e.load.cpu_load;
    in.memory = e.load.memory_load;
    in.sessions = e.sessions;
    if (cp.max_sessions > 0) {
      in.sessions_norm = std::min(1.0, e.sessions / cp.max_sessions);
    } else {
      in.sessions_norm = c_max > 0 ? e.sessions / c_max : 0;
    }
    in.index = i;
    in.count = chosen.eligible.size();
    in.counter = cluster_counter;
    in.weights = cp.weights;
    scores.push_back(intra(in));
    d.candidates.push_back(candidate(e, scores.back()));
  }
  d.server_id = chosen.eligible[argmin(scores)].server->id;
  if (cp.policy == IntraClusterPolicy::round_robin) d.advance.push_back(cluster_key);
  return d;
}

Json decision_to_json(const Decision& d) {
  Json targets = Json::array();
  for (const auto& t : d.targets) {
    targets.push_back(Json{{"scope", scope_name(t.scope)},
                           {"target_id", t.target_id},
                           {"authorization_id", t.authorization_id},
                           {"eligible", t.eligible},
                           {"load", t.load},
                           {"score", t.score}});
  }
  Json candidates = Json::array();
  for (const auto& c : d.candidates) {
    candidates.push_back(Json{{"server_id", c.server_id},
                              {"cpu_load", c.cpu_load},
                              {"memory_load", c.memory_load},
                              {"sessions", c.sessions},
                              {"score", c.score},
                              {"reported_at_ms", c.reported_at_ms}});
  }
  Json excluded = Json::array();
  for (const auto& x : d.excluded) {
    excluded.push_back(Json{{"server_id", x.server_id},
                            {"scope", scope_name(x.scope)},
                            {"target_id", x.target_id},
                            {"reason", x.reason},
                            {"detail", x.detail}});
  }
  return Json{{"server_id", d.server_id},
              {"scope", scope_name(d.scope)},
              {"target_id", d.target_id},
              {"authorization_id", d.authorization_id},
              {"policy",
               {{"scope_preference", d.scope_preference},
                {"inter_target", d.inter_target},
                {"intra_target", d.intra_target}}},
              {"targets", targets},
              {"candidates", candidates},
              {"excluded", excluded},
              {"advance", d.advance},
              {"stale_after_ms", d.stale_after_ms}};
}

Result<Events> decide(const State& s, const LaunchApplication& c, const Context& ctx) {
  if (auto st = validate_id("session_id", c.session_id); !st) return st.error();
  if (auto st = validate_placement_config(c.config); !st) return st.error();
  const AppCloudState& ac = s.appcloud;
  if (ac.session(c.session_id) != nullptr || s.version_of(session_stream(c.session_id)) != 0) {
    return Error::make(Code::already_exists, "session " + c.session_id + " already exists",
                       "session_exists");
  }
  const User* u = s.users.find(c.user_id);
  if (u == nullptr) {
    return Error::make(Code::not_found, "user " + c.user_id + " not found", "user_not_found");
  }
  if (u->disabled) return refused("user_disabled", "user " + c.user_id + " is disabled");
  if (ac.application(c.application_id) == nullptr) {
    return Error::make(Code::not_found, "application " + c.application_id + " not found",
                       "application_not_found");
  }
  PlacementLive live;
  live.load = c.live_load;
  live.agent_registration = [&s](const std::string& server_id) -> std::string {
    const Agent* a = s.agents.of_server(server_id);
    return a == nullptr ? std::string() : effective_registration(s, *a);
  };
  auto d = place(ac, c.user_id, c.application_id, c.config, ctx.now_ms, live, u->groups);
  if (!d) return d.error();
  return Events{{session_stream(c.session_id), "ApplicationLaunchDecided", 1,
                 Json{{"session_id", c.session_id},
                      {"user_id", c.user_id},
                      {"application_id", c.application_id},
                      {"server_id", d->server_id},
                      {"decided_at_ms", ctx.now_ms},
                      {"decision", decision_to_json(*d)}}}};
}

}  // namespace atrium::domain

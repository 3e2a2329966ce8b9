// Placement as tables: servers with their loads, a policy, then the chosen server (and the
// exclusions with their reasons) or the refusal. Formulas are in domain/placement.h.
#include "domain/placement.h"

#include <doctest/doctest.h>

#include <map>

#include "appcloud_fixture.h"

using namespace atrium;
using namespace atrium::domain;
using namespace atrium::domain::testing;

namespace {

using V = std::vector<std::string>;

ClusterPlacement policy(IntraClusterPolicy p, Weights w = {}, uint32_t max_sessions = 0) {
  return ClusterPlacement{p, w, max_sessions};
}

// u1 authorized for word in cluster c1 (members m1, m2, m3 with word) under `cp`.
std::vector<Cmd> cluster_world(ClusterPlacement cp) {
  return {user("u1"), user("u2"), cluster("c1", cp),
          server("m1"), app_on("m1", "word"), join("m1", "c1"),
          server("m2"), app_on("m2", "word"), join("m2", "c1"),
          server("m3"), app_on("m3", "word"), join("m3", "c1"),
          publish("p1", "word", Scope::cluster, "c1"),
          authorize("a1", "u1", "word", Scope::cluster, "c1")};
}

// m1: low cpu, high memory, many sessions; m2: high cpu, fewest sessions; m3: low memory.
std::vector<Cmd> loads() {
  return {load("m1", 0.2, 0.9, 5), load("m2", 0.8, 0.4, 1), load("m3", 0.5, 0.1, 3)};
}

PlacementConfig config(ScopePreference sp = ScopePreference::prefer_server,
                       InterTargetPolicy it = InterTargetPolicy::first,
                       int64_t stale_after_ms = 90'000) {
  PlacementConfig c;
  c.scope_preference = sp;
  c.inter_target = it;
  c.stale_after_ms = stale_after_ms;
  return c;
}

struct Row {
  const char* name;
  std::vector<Cmd> given;
  PlacementConfig cfg;
  std::string server;                         // expected choice ("" when an error is expected)
  std::map<std::string, std::string> excluded;  // server -> reason
  std::string error_reason;
};

std::map<std::string, std::string> excluded_of(const Json& decision) {
  std::map<std::string, std::string> out;
  for (const auto& x : decision["excluded"]) {
    out[x["server_id"].get<std::string>()] = x["reason"].get<std::string>();
  }
  return out;
}

void run_rows(const std::vector<Row>& rows) {
  for (const Row& row : rows) {
    SUBCASE(row.name) {
      World w;
      w.given(row.given);
      auto r = w.decide(LaunchApplication{"x1", "u1", app("word"), row.cfg});
      if (!row.error_reason.empty()) {
        REQUIRE(!r.ok());
        CHECK(r.error().code == Code::failed_precondition);
        CHECK(r.error().reason == row.error_reason);
        continue;
      }
      REQUIRE_MESSAGE(r.ok(), r.error().reason << ": " << r.error().message);
      REQUIRE(r->size() == 1);
      const Event& e = r->front();
      CHECK(e.type == "ApplicationLaunchDecided");
      CHECK(e.stream == "session-x1");
      CHECK(e.data["server_id"] == row.server);
      CHECK(e.data["decision"]["server_id"] == row.server);
      CHECK(excluded_of(e.data["decision"]) == row.excluded);
    }
  }
}

}  // namespace

TEST_CASE("intra-cluster policies") {
  auto world = [](ClusterPlacement cp) { return cluster_world(cp) + loads(); };
  using P = IntraClusterPolicy;
  run_rows({
      {"least_sessions", world(policy(P::least_sessions)), config(), "m2", {}, ""},
      {"least_cpu", world(policy(P::least_cpu)), config(), "m1", {}, ""},
      {"least_memory", world(policy(P::least_memory)), config(), "m3", {}, ""},
      // 0.3 cpu + 0.6 mem + 0.1 sessions/5: m1 .70, m2 .50, m3 .27
      {"weighted, default weights", world(policy(P::weighted)), config(), "m3", {}, ""},
      {"weighted, cpu only", world(policy(P::weighted, {1, 0, 0})), config(), "m1", {}, ""},
      {"weighted, sessions only", world(policy(P::weighted, {0, 0, 1})), config(), "m2", {}, ""},
      // 0.5 cpu + 0.5 sessions/5: m1 .60, m2 .50, m3 .55
      {"weighted, sessions normalised by the busiest", world(policy(P::weighted, {0.5, 0, 0.5})),
       config(), "m2", {}, ""},
      // 0.5 cpu + 0.5 min(1, sessions/2): m1 .60, m2 .65, m3 .75
      {"weighted, sessions normalised by max_sessions",
       world(policy(P::weighted, {0.5, 0, 0.5}, 2)), config(), "m1", {}, ""},
      {"round_robin starts at the first server by id", world(policy(P::round_robin)), config(),
       "m1", {}, ""},
      {"ties go to the lower server id",
       cluster_world(policy(P::least_cpu)) +
           std::vector<Cmd>{load("m1", 0.5, 0.1, 0), load("m2", 0.5, 0.1, 0),
                            load("m3", 0.5, 0.1, 0)},
       config(), "m1", {}, ""},
  });
}

TEST_CASE("weighted scores are recorded per candidate") {
  World w;
  w.given(cluster_world(policy(IntraClusterPolicy::weighted)) + loads());
  auto d = place(w.s.appcloud, "u1", app("word"), config(), kNow);
  REQUIRE(d);
  CHECK(d->server_id == "m3");
  CHECK(d->scope == Scope::cluster);
  CHECK(d->target_id == "c1");
  CHECK(d->authorization_id == "a1");
  CHECK(d->intra_target == "weighted");
  REQUIRE(d->candidates.size() == 3);
  std::map<std::string, double> score;
  for (const auto& c : d->candidates) score[c.server_id] = c.score;
  CHECK(score["m1"] == doctest::Approx(0.3 * 0.2 + 0.6 * 0.9 + 0.1 * 5.0 / 5));
  CHECK(score["m2"] == doctest::Approx(0.3 * 0.8 + 0.6 * 0.4 + 0.1 * 1.0 / 5));
  CHECK(score["m3"] == doctest::Approx(0.3 * 0.5 + 0.6 * 0.1 + 0.1 * 3.0 / 5));
  CHECK(d->advance.empty());  // no round robin involved
}

TEST_CASE("exclusions, staleness and no candidate") {
  auto world = [](const std::vector<Cmd>& more) {
    return cluster_world(policy(IntraClusterPolicy::weighted)) + more;
  };
  run_rows({
      {"disabled remote-app service",
       world(loads() + std::vector<Cmd>{UpdateServer{"m3", {}, {}, {}, {}, {}, {}, false}}),
       config(), "m2", {{"m3", "remote_app_service_disabled"}}, ""},
      {"stale load report (91 s)",
       world({load("m1", 0.2, 0.9, 5), load("m2", 0.8, 0.4, 1), load("m3", 0.5, 0.1, 3, 91'000)}),
       config(), "m2", {{"m3", "load_report_stale"}}, ""},
      {"a report exactly at the limit is still fresh",
       world({load("m1", 0.2, 0.9, 5), load("m2", 0.8, 0.4, 1), load("m3", 0.5, 0.1, 3, 90'000)}),
       config(), "m3", {}, ""},
      {"a configured limit (30 s)",
       world({load("m1", 0.2, 0.9, 5), load("m2", 0.8, 0.4, 1), load("m3", 0.5, 0.1, 3, 40'000)}),
       config(ScopePreference::prefer_server, InterTargetPolicy::first, 30'000), "m2",
       {{"m3", "load_report_stale"}}, ""},
      {"never reported", world({load("m1", 0.2, 0.9, 5), load("m2", 0.8, 0.4, 1)}), config(),
       "m2", {{"m3", "no_load_report"}}, ""},
      {"a member without the application",
       world(loads() + std::vector<Cmd>{server("m4"), join("m4", "c1"), load("m4", 0, 0, 0)}),
       config(), "m3", {{"m4", "application_not_present"}}, ""},
      {"a member whose application was removed",
       world(loads() + std::vector<Cmd>{RemoveServerApplication{"m3", app("word")}}), config(),
       "m2", {{"m3", "application_not_present"}}, ""},
      {"every server excluded",
       world({UpdateServer{"m1", {}, {}, {}, {}, {}, {}, false}, load("m1", 0, 0, 0),
              load("m2", 0.1, 0.1, 0, 120'000)}),
       config(), "", {}, "no_candidate"},
      {"not authorized at all", {user("u1"), server("s1"), app_on("s1", "word")}, config(), "",
       {}, "not_authorized"},
      {"authorized in a cluster with no servers left",
       cluster_world(policy(IntraClusterPolicy::weighted)) +
           std::vector<Cmd>{LeaveCluster{"m1", {}}, LeaveCluster{"m2", {}},
                            LeaveCluster{"m3", {}}},
       config(), "", {}, "no_candidate"},
  });
}

TEST_CASE("no_candidate says why, server by server") {
  World w;
  w.given(cluster_world(policy(IntraClusterPolicy::weighted)) +
          std::vector<Cmd>{UpdateServer{"m1", {}, {}, {}, {}, {}, {}, false}, load("m1", 0, 0, 0),
                           load("m2", 0.1, 0.1, 0, 120'000)});
  auto r = w.decide(LaunchApplication{"x1", "u1", app("word"), config()});
  REQUIRE(!r.ok());
  CHECK(r.error().reason == "no_candidate");
  const std::string& m = r.error().message;
  CAPTURE(m);
  CHECK(m.find("3 servers excluded: m1 remote-app service disabled; m2 load report stale "
               "(120 s old, limit 90 s); m3 no load report") != std::string::npos);
  CHECK(m.find("word") != std::string::npos);

  World empty;
  empty.given(cluster_world({}) + std::vector<Cmd>{LeaveCluster{"m1", {}}, LeaveCluster{"m2", {}},
                                                   LeaveCluster{"m3", {}}});
  auto r2 = empty.decide(LaunchApplication{"x1", "u1", app("word"), config()});
  REQUIRE(!r2.ok());
  CHECK(r2.error().message.find("have no servers (cluster c1)") != std::string::npos);
}

namespace {
// u1 authorized for word on standalone s1 and s2 and in clusters c1 (m1, m2) and c2 (n1).
std::vector<Cmd> multi_world() {
  return {user("u1"),
          cluster("c1", policy(IntraClusterPolicy::least_cpu)),
          cluster("c2", policy(IntraClusterPolicy::least_cpu)),
          server("s1"), app_on("s1", "word"),
          server("s2"), app_on("s2", "word"),
          server("m1"), app_on("m1", "word"), join("m1", "c1"),
          server("m2"), app_on("m2", "word"), join("m2", "c1"),
          server("n1"), app_on("n1", "word"), join("n1", "c2"),
          publish("p1", "word", Scope::server, "s1"),
          publish("p2", "word", Scope::server, "s2"),
          publish("p3", "word", Scope::cluster, "c1"),
          publish("p4", "word", Scope::cluster, "c2"),
          authorize("a1", "u1", "word", Scope::server, "s1"),
          authorize("a2", "u1", "word", Scope::server, "s2"),
          authorize("a3", "u1", "word", Scope::cluster, "c1"),
          authorize("a4", "u1", "word", Scope::cluster, "c2")};
}
// s1 busier than s2; c1 (mean of m1, m2) busier than c2 (n1).
std::vector<Cmd> multi_loads() {
  return {load("s1", 0.9, 0.9, 4), load("s2", 0.1, 0.1, 0), load("m1", 0.6, 0.7, 2),
          load("m2", 0.4, 0.5, 2), load("n1", 0.2, 0.2, 1)};
}
}  // namespace

TEST_CASE("scope preference and inter-target policies") {
  using SP = ScopePreference;
  using IT = InterTargetPolicy;
  auto world = [](const std::vector<Cmd>& more = {}) { return multi_world() + multi_loads() + more; };
  Cmd disable_s1 = UpdateServer{"s1", {}, {}, {}, {}, {}, {}, false};
  Cmd disable_s2 = UpdateServer{"s2", {}, {}, {}, {}, {}, {}, false};
  run_rows({
      {"prefer_server, first", world(), config(SP::prefer_server, IT::first), "s1", {}, ""},
      {"prefer_server, least_loaded", world(), config(SP::prefer_server, IT::least_loaded), "s2",
       {}, ""},
      {"prefer_server, round_robin starts at the first target", world(),
       config(SP::prefer_server, IT::round_robin), "s1", {}, ""},
      {"prefer_cluster, first: c1, then its least-cpu member", world(),
       config(SP::prefer_cluster, IT::first), "m2", {}, ""},
      {"prefer_cluster, least_loaded: c2", world(), config(SP::prefer_cluster, IT::least_loaded),
       "n1", {}, ""},
      {"prefer_server falls back to clusters when no server target is eligible",
       world({disable_s1, disable_s2}), config(SP::prefer_server, IT::first), "m2",
       {{"s1", "remote_app_service_disabled"}, {"s2", "remote_app_service_disabled"}}, ""},
      {"prefer_cluster falls back to servers when no cluster member is eligible",
       multi_world() + std::vector<Cmd>{load("s1", 0.9, 0.9, 4), load("s2", 0.1, 0.1, 0)},
       config(SP::prefer_cluster, IT::least_loaded), "s2",
       {{"m1", "no_load_report"}, {"m2", "no_load_report"}, {"n1", "no_load_report"}}, ""},
      {"an excluded server target is skipped by the inter-target policy", world({disable_s2}),
       config(SP::prefer_server, IT::least_loaded), "s1",
       {{"s2", "remote_app_service_disabled"}}, ""},
  });
}

TEST_CASE("the decision records targets, scores and policy names") {
  World w;
  w.given(multi_world() + multi_loads());
  auto d = place(w.s.appcloud, "u1", app("word"),
                 config(ScopePreference::prefer_cluster, InterTargetPolicy::least_loaded), kNow);
  REQUIRE(d);
  CHECK(d->scope_preference == "prefer_cluster");
  CHECK(d->inter_target == "least_loaded");
  CHECK(d->intra_target == "least_cpu");
  REQUIRE(d->targets.size() == 2);  // only the cluster targets compete
  CHECK(d->targets[0].target_id == "c1");
  CHECK(d->targets[1].target_id == "c2");
  // Sessions normalised by the busiest eligible server of the competing targets (2).
  double m1 = 0.3 * 0.6 + 0.6 * 0.7 + 0.1 * 2 / 2;
  double m2 = 0.3 * 0.4 + 0.6 * 0.5 + 0.1 * 2 / 2;
  double n1 = 0.3 * 0.2 + 0.6 * 0.2 + 0.1 * 1 / 2;
  CHECK(d->targets[0].load == doctest::Approx((m1 + m2) / 2));
  CHECK(d->targets[1].load == doctest::Approx(n1));
  CHECK(d->targets[0].eligible == 2);
  CHECK(d->target_id == "c2");
  CHECK(d->server_id == "n1");
  Json j = decision_to_json(*d);
  CHECK(j["policy"]["scope_preference"] == "prefer_cluster");
  CHECK(j["targets"][1]["target_id"] == "c2");
  CHECK(j["candidates"][0]["server_id"] == "n1");
  CHECK(j["candidates"][0]["score"] == 0.2);  // least_cpu: the cpu load
  CHECK(j["stale_after_ms"] == 90'000);

  auto s = place(w.s.appcloud, "u1", app("word"), config(), kNow);
  REQUIRE(s);
  CHECK(s->intra_target == "single_server");
  CHECK(s->candidates.size() == 1);
}

TEST_CASE("round robin advances through launch events and replays identically") {
  SUBCASE("intra-cluster") {
    World w;
    w.given(cluster_world(policy(IntraClusterPolicy::round_robin)) + loads());
    V chosen;
    for (int i = 0; i < 5; ++i) {
      std::string id = "x" + std::to_string(i);
      auto r = w.decide(LaunchApplication{id, "u1", app("word"), config()});
      REQUIRE(r);
      chosen.push_back(r->front().data["server_id"].get<std::string>());
      CHECK(r->front().data["decision"]["advance"] == V{"cluster:c1"});
      w.apply(*r);
    }
    CHECK(chosen == V{"m1", "m2", "m3", "m1", "m2"});
    CHECK(w.s.appcloud.round_robin.at("cluster:c1") == 5);
    State fresh = w.replayed();
    CHECK(state_to_json(fresh) == state_to_json(w.s));
    auto next_live = w.decide(LaunchApplication{"y", "u1", app("word"), config()});
    auto next_replayed = domain::decide(fresh, LaunchApplication{"y", "u1", app("word"), config()},
                                        w.ctx);
    REQUIRE(next_live);
    REQUIRE(next_replayed);
    CHECK(next_live->front().data == next_replayed->front().data);
    CHECK(next_live->front().data["server_id"] == "m3");
  }
  SUBCASE("an excluded server is skipped in the rotation") {
    World w;
    w.given(cluster_world(policy(IntraClusterPolicy::round_robin)) + loads() +
            std::vector<Cmd>{UpdateServer{"m2", {}, {}, {}, {}, {}, {}, false}});
    V chosen;
    for (int i = 0; i < 3; ++i) {
      auto r = w.decide(LaunchApplication{"x" + std::to_string(i), "u1", app("word"), config()});
      REQUIRE(r);
      chosen.push_back(r->front().data["server_id"].get<std::string>());
      w.apply(*r);
    }
    CHECK(chosen == V{"m1", "m3", "m1"});
  }
  SUBCASE("inter-target") {
    World w;
    w.given(multi_world() + multi_loads());
    V chosen;
    for (int i = 0; i < 3; ++i) {
      auto r = w.decide(LaunchApplication{"x" + std::to_string(i), "u1", app("word"),
                                          config(ScopePreference::prefer_server,
                                                 InterTargetPolicy::round_robin)});
      REQUIRE(r);
      chosen.push_back(r->front().data["server_id"].get<std::string>());
      w.apply(*r);
    }
    CHECK(chosen == V{"s1", "s2", "s1"});
    CHECK(w.s.appcloud.round_robin.at("app:" + app("word")) == 3);
    CHECK(state_to_json(w.replayed()) == state_to_json(w.s));
  }
}

TEST_CASE("launches since the last load report count as sessions") {
  World w;
  w.given(cluster_world(policy(IntraClusterPolicy::least_sessions)) +
          std::vector<Cmd>{load("m1", 0.1, 0.1, 1), load("m2", 0.1, 0.1, 2),
                           load("m3", 0.1, 0.1, 4)});
  V chosen;
  for (int i = 0; i < 4; ++i) {
    auto r = w.decide(LaunchApplication{"x" + std::to_string(i), "u1", app("word"), config()});
    REQUIRE(r);
    chosen.push_back(r->front().data["server_id"].get<std::string>());
    w.apply(*r);
  }
  // m1: 1 -> 2 (ties m2, lower id wins) -> 3; m2: 2 -> 3; then m1 and m2 tie at 3.
  CHECK(chosen == V{"m1", "m1", "m2", "m1"});
  CHECK(w.s.appcloud.server("m1")->launches_since_report == 3);
  // A fresh report replaces the estimate.
  w.ctx.now_ms += 1000;
  w.given({ReportServerLoad{"m1", 0.1, 0.1, 0, 0}});
  CHECK(w.s.appcloud.server("m1")->launches_since_report == 0);
  auto r = w.decide(LaunchApplication{"y", "u1", app("word"), config()});
  REQUIRE(r);
  CHECK(r->front().data["server_id"] == "m1");
}

TEST_CASE("launch command refusals and the recorded session") {
  auto given = cluster_world(policy(IntraClusterPolicy::weighted)) + loads();
  struct ErrRow {
    const char* name;
    std::vector<Cmd> extra;
    LaunchApplication when;
    Code code;
    const char* reason;
  };
  PlacementConfig zero_stale = config();
  zero_stale.stale_after_ms = 0;
  PlacementConfig zero_weights = config();
  zero_weights.load_weights = {0, 0, 0};
  const ErrRow rows[] = {
      {"unknown user", {}, {"x1", "u9", app("word"), {}}, Code::not_found, "user_not_found"},
      {"disabled user", {UpdateUser{"u1", {}, {}, {}, true}}, {"x1", "u1", app("word"), {}},
       Code::failed_precondition, "user_disabled"},
      {"unknown application", {}, {"x1", "u1", "0000000000000000", {}}, Code::not_found,
       "application_not_found"},
      {"user not authorized", {}, {"x1", "u2", app("word"), {}}, Code::failed_precondition,
       "not_authorized"},
      {"session id taken", {LaunchApplication{"x1", "u1", app("word"), {}}},
       {"x1", "u1", app("word"), {}}, Code::already_exists, "session_exists"},
      {"bad session id", {}, {"", "u1", app("word"), {}}, Code::invalid_argument, "invalid_id"},
      {"staleness limit not positive", {}, {"x1", "u1", app("word"), zero_stale},
       Code::invalid_argument, "invalid_placement_config"},
      {"all-zero load weights", {}, {"x1", "u1", app("word"), zero_weights},
       Code::invalid_argument, "invalid_placement_config"},
  };
  for (const ErrRow& row : rows) {
    CAPTURE(row.name);
    World w;
    w.given(given + row.extra);
    expect(w, row.when, error(row.code, row.reason));
  }

  SUBCASE("the session answers 'why this server'") {
    World w;
    w.given(given + std::vector<Cmd>{UpdateServer{"m1", {}, {}, {}, {}, {}, {}, false}});
    expect(w, LaunchApplication{"x1", "u1", app("word"), {}},
           events({"ApplicationLaunchDecided session-x1"},
                  {{"session_id", "x1"}, {"user_id", "u1"}, {"application_id", app("word")},
                   {"server_id", "m3"}, {"decided_at_ms", kNow}}));
    const AppSession* s = w.s.appcloud.session("x1");
    REQUIRE(s != nullptr);
    CHECK(s->server_id == "m3");
    CHECK(s->decision["policy"]["intra_target"] == "weighted");
    CHECK(s->decision["excluded"][0]["server_id"] == "m1");
    CHECK(s->decision["excluded"][0]["reason"] == "remote_app_service_disabled");
    CHECK(s->decision["candidates"].size() == 2);
    Json j = session_to_json(*s);
    CHECK(j["server_id"] == "m3");
    CHECK(j["version"] == 1);
  }
}

TEST_CASE("policy names parse and the tables cover every policy") {
  for (auto p : {IntraClusterPolicy::least_sessions, IntraClusterPolicy::least_cpu,
                 IntraClusterPolicy::least_memory, IntraClusterPolicy::round_robin,
                 IntraClusterPolicy::weighted}) {
    CHECK(parse_intra_policy(intra_policy_name(p)) == p);
    CHECK(intra_policies().count(p) == 1);
  }
  for (auto p : {InterTargetPolicy::first, InterTargetPolicy::least_loaded,
                 InterTargetPolicy::round_robin}) {
    CHECK(parse_inter_policy(inter_policy_name(p)) == p);
    CHECK(inter_policies().count(p) == 1);
  }
  CHECK(parse_scope_preference("prefer_cluster") == ScopePreference::prefer_cluster);
  CHECK(!parse_scope_preference("prefer_nothing"));
  CHECK(!parse_intra_policy("random"));
  // Round-robin scoring: the server at the counter's position scores 0.
  ScoreInput in;
  in.count = 3;
  in.counter = 4;  // position 1
  in.index = 1;
  CHECK(intra_policies().at(IntraClusterPolicy::round_robin)(in) == 0);
  in.index = 0;
  CHECK(intra_policies().at(IntraClusterPolicy::round_robin)(in) == 2);
}

// ---- 9.8: application sessions end (logoff) ---------------------------------------------
TEST_CASE("9.8: an application session ends by its owner or an admin, once, for good") {
  World w;
  w.given(cluster_world(policy(IntraClusterPolicy::least_sessions)) + loads());
  w.given({LaunchApplication{"x1", "u1", app("word"), config()}});
  const AppSession* a = w.s.appcloud.session("x1");
  REQUIRE(a != nullptr);
  CHECK(a->state == "active");
  CHECK(session_to_json(*a)["ended_at_ms"].is_null());
  // Another user: the session does not exist for them (404, nothing appended).
  auto other = w.decide(EndApplicationSession{"x1", "u2", false, "logoff"});
  REQUIRE(!other.ok());
  CHECK(other.error().code == Code::not_found);
  auto missing = w.decide(EndApplicationSession{"nope", "u1", true, "logoff"});
  REQUIRE(!missing.ok());
  CHECK(missing.error().code == Code::not_found);
  // The owner ends it: one event, past tense, schema 1, on the session's stream.
  w.ctx.now_ms += 5000;
  auto r = w.decide(EndApplicationSession{"x1", "u1", false, "logoff"});
  REQUIRE(r.ok());
  REQUIRE(r->size() == 1);
  const Event& e = r->front();
  CHECK(e.type == "ApplicationSessionEnded");
  CHECK(e.schema == 1);
  CHECK(e.stream == session_stream("x1"));
  CHECK(e.data["reason"] == "logoff");
  CHECK(e.data["user_id"] == "u1");
  CHECK(e.data["ended_at_ms"] == w.ctx.now_ms);
  w.apply(*r);
  a = w.s.appcloud.session("x1");
  CHECK(a->state == "ended");
  CHECK(a->end_reason == "logoff");
  CHECK(a->ended_at_ms == w.ctx.now_ms);
  CHECK(a->version == 2);
  Json j = session_to_json(*a);
  CHECK(j["state"] == "ended");
  CHECK(j["end_reason"] == "logoff");
  // Ending it again (owner or admin) changes nothing.
  auto again = w.decide(EndApplicationSession{"x1", "u1", false, "logoff"});
  REQUIRE(again.ok());
  CHECK(again->empty());
  auto admin = w.decide(EndApplicationSession{"x1", "admin", true, "logoff"});
  REQUIRE(admin.ok());
  CHECK(admin->empty());
  CHECK(state_to_json(w.replayed()) == state_to_json(w.s));
}

TEST_CASE("9.8: an ended launch no longer counts on its server's sessions") {
  World w;
  w.given(
      cluster_world(policy(IntraClusterPolicy::least_sessions)) +
      std::vector<Cmd>{load("m1", 0.1, 0.1, 1), load("m2", 0.1, 0.1, 2), load("m3", 0.1, 0.1, 4)});
  w.given({LaunchApplication{"x1", "u1", app("word"), config()},
           LaunchApplication{"x2", "u1", app("word"), config()}});
  REQUIRE(w.s.appcloud.session("x1")->server_id == "m1");
  REQUIRE(w.s.appcloud.server("m1")->launches_since_report == 2);  // m1 at 1 + 2 = 3
  w.given({EndApplicationSession{"x1", "u1", false, "logoff"}});
  CHECK(w.s.appcloud.server("m1")->launches_since_report == 1);
  // m1 (1 + 1 = 2) ties m2 (2): the lower id wins again, which it would not at 3.
  auto r = w.decide(LaunchApplication{"x3", "u1", app("word"), config()});
  REQUIRE(r);
  CHECK(r->front().data["server_id"] == "m1");
  w.apply(*r);
  // After a fresh report the agent's count is the truth: a later end of an older launch
  // does not lower the estimate below what was reported.
  w.ctx.now_ms += 1000;
  w.given({ReportServerLoad{"m1", 0.1, 0.1, 2, 0}});
  w.given({EndApplicationSession{"x2", "u1", true, "logoff"}});
  CHECK(w.s.appcloud.server("m1")->launches_since_report == 0);
  w.given({LaunchApplication{"x4", "u1", app("word"), config()}});
  w.given({EndApplicationSession{"x3", "u1", false, "logoff"}});
  CHECK(w.s.appcloud.server("m1")->launches_since_report == 1);  // x4 still counts
  CHECK(state_to_json(w.replayed()) == state_to_json(w.s));
}

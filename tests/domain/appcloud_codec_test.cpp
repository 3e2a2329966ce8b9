// Snapshot codec of the application cloud: appcloud_from_json exactly inverts
// appcloud_to_json for the paper's walkthrough state, and refuses what is not a snapshot.
#include <doctest/doctest.h>

#include "appcloud_fixture.h"
#include "domain/evolve_table.h"

using namespace atrium;
using namespace atrium::domain;
using namespace atrium::domain::testing;

namespace {

// The walkthrough: clusters with a placement policy, servers with applications, joins,
// publications and authorizations at both scopes, load and inventory reports, launches
// (round-robin counters advance), a leave and a deletion.
World walkthrough() {
  ClusterPlacement rr;
  rr.policy = IntraClusterPolicy::round_robin;
  ClusterPlacement weighted;
  weighted.weights = {0.5, 0.25, 0.25};
  weighted.max_sessions = 40;
  World w;
  w.given({user("u1"), user("u2"), cluster("office", rr), cluster("lab", weighted),
           server("s1"), app_on("s1", "word"), app_on("s1", "excel"), server("s2"),
           app_on("s2", "word"), server("s3", false), app_on("s3", "cad"), server("s4"),
           app_on("s4", "putty"), join("s1", "office"), join("s2", "office"), join("s3", "lab"),
           publish("p1", "word", Scope::cluster, "office"),
           publish("p2", "cad", Scope::cluster, "lab"),
           publish("p3", "putty", Scope::server, "s4"),
           authorize("a1", "u1", "word", Scope::cluster, "office"),
           authorize("a2", "u2", "word", Scope::cluster, "office"),
           authorize("a3", "u1", "putty", Scope::server, "s4"),
           authorize("a4", "u1", "cad", Scope::cluster, "lab"), load("s1", 0.25, 0.5, 3),
           load("s2", 0.125, 0.75, 1), load("s4", 0.3, 0.1, 0),
           ReportServerInventory{"s1", {app("word")}, {"u1", "u2"}, 0},
           LaunchApplication{"x1", "u1", app("word"), {}},
           LaunchApplication{"x2", "u2", app("word"), {}},
           LaunchApplication{"x3", "u1", app("putty"), {}},
           EndApplicationSession{"x2", "u2", false, "logoff"},
           UpdateCluster{"lab", {}, {}, std::string("CAD\nlab"), {}}, server("s5"),
           DeleteServer{"s5", std::nullopt}});
  return w;
}

}  // namespace

TEST_CASE("appcloud_from_json inverts appcloud_to_json on the walkthrough state") {
  World w = walkthrough();
  Json j = appcloud_to_json(w.s.appcloud);
  REQUIRE(j["sessions"].size() == 3);
  REQUIRE(j["sessions"]["x2"]["state"] == "ended");
  REQUIRE(!j["round_robin"].empty());
  AppCloudState back;
  REQUIRE(appcloud_from_json(back, j).ok());
  CHECK(appcloud_to_json(back) == j);
  // Through text too, as a snapshot file would carry it.
  AppCloudState again;
  REQUIRE(appcloud_from_json(again, Json::parse(j.dump())).ok());
  CHECK(appcloud_to_json(again) == j);
  // The restored state answers queries and decides like the original.
  CHECK(back.entitlements("u1").size() == 3);
  CHECK(back.desired_state("s1")->remote_users == std::set<std::string>{"u1", "u2"});
  State restored;
  restored.users = w.s.users;
  restored.appcloud = back;
  restored.stream_versions = w.s.stream_versions;
  auto live = w.decide(LaunchApplication{"x4", "u1", app("word"), {}});
  auto from_snapshot = decide(restored, LaunchApplication{"x4", "u1", app("word"), {}}, w.ctx);
  REQUIRE(live.ok());
  REQUIRE(from_snapshot.ok());
  CHECK(live->front().data == from_snapshot->front().data);
}

TEST_CASE("appcloud_from_json refuses what is not a snapshot and leaves the state alone") {
  World w = walkthrough();
  AppCloudState s = w.s.appcloud;
  Json before = appcloud_to_json(s);
  for (Json bad : {Json::object(), Json{{"clusters", 1}}, Json::array()}) {
    auto st = appcloud_from_json(s, bad);
    CHECK(!st.ok());
    CHECK(st.error().reason == "invalid_snapshot");
  }
  Json broken = before;
  broken["publications"]["p1"]["scope"] = "galaxy";
  CHECK(!appcloud_from_json(s, broken).ok());
  broken = before;
  broken["servers"]["s1"]["cpus"] = "four";
  CHECK(!appcloud_from_json(s, broken).ok());
  CHECK(appcloud_to_json(s) == before);
}

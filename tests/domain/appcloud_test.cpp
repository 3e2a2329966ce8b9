// Application cloud deciders as tables: given the events of some commands, when a command,
// then these events or this error. Every rule and refusal of DOMAIN.md section 6 and the
// cascades documented in domain/appcloud.h; queries; replay determinism.
#include "domain/appcloud.h"

#include <doctest/doctest.h>

#include "appcloud_fixture.h"

using namespace atrium;
using namespace atrium::domain;
using namespace atrium::domain::testing;

namespace {

using V = std::vector<std::string>;

// u1..u3; c1 with s2 (word) and s3 (excel, paint); c2 empty; s1 (word, excel) and
// s4 (word) standalone.
std::vector<Cmd> base() {
  return {user("u1"), user("u2"), user("u3"),
          cluster("c1"), cluster("c2"),
          server("s1"), app_on("s1", "word"), app_on("s1", "excel"),
          server("s2"), app_on("s2", "word"), join("s2", "c1"),
          server("s3"), app_on("s3", "excel"), app_on("s3", "paint"), join("s3", "c1"),
          server("s4"), app_on("s4", "word")};
}

Json ids(std::initializer_list<std::string> v) { return Json(std::set<std::string>(v)); }

}  // namespace

TEST_CASE("application id: first 16 hex chars of SHA-256(name NUL path)") {
  std::string id = application_id("Notepad", "C:\\Windows\\notepad.exe");
  CHECK(id == "e618a07d0bea8c02");
  CHECK(application_id("Notepad", "C:\\Windows\\notepad.exe") == id);
  // The separator keeps (name, path) pairs apart that would concatenate alike.
  CHECK(application_id("ab", "c") != application_id("a", "bc"));
  CHECK(app("word") != app("excel"));
}

TEST_CASE("clusters") {
  ClusterPlacement negative;
  negative.weights.cpu = -1;
  ClusterPlacement all_zero;
  all_zero.weights = {0, 0, 0};
  ClusterPlacement rr;
  rr.policy = IntraClusterPolicy::round_robin;
  run_table({
      {"create", {}, cluster("c1"),
       events({"ClusterCreated cluster-c1"},
              {{"id", "c1"}, {"name", "cluster c1"}, {"placement", placement_to_json({})}})},
      {"create: duplicate id", {cluster("c1")}, cluster("c1"),
       error(Code::already_exists, "cluster_exists")},
      {"create: id of a deleted cluster is not reused",
       {cluster("c1"), DeleteCluster{"c1", std::nullopt}}, cluster("c1"),
       error(Code::already_exists, "cluster_exists")},
      {"create: name taken", {cluster("c1")}, CreateCluster{"c9", "cluster c1", "", {}},
       error(Code::already_exists, "cluster_name_taken")},
      {"create: bad id", {}, CreateCluster{"c 1", "x", "", {}},
       error(Code::invalid_argument, "invalid_id")},
      {"create: empty name", {}, CreateCluster{"c1", "", "", {}},
       error(Code::invalid_argument, "invalid_name")},
      {"create: negative weight", {}, CreateCluster{"c1", "x", "", negative},
       error(Code::invalid_argument, "invalid_placement")},
      {"create: weighted with all-zero weights", {}, CreateCluster{"c1", "x", "", all_zero},
       error(Code::invalid_argument, "invalid_placement")},
      {"update: name and placement", {cluster("c1")},
       UpdateCluster{"c1", 1, std::string("farm"), std::nullopt, rr},
       events({"ClusterUpdated cluster-c1"},
              {{"name", "farm"}, {"placement", placement_to_json(rr)}})},
      {"update: nothing changes", {cluster("c1")},
       UpdateCluster{"c1", std::nullopt, std::string("cluster c1"), std::string(""),
                     ClusterPlacement{}},
       events({})},
      {"update: If-Match moved", {cluster("c1")},
       UpdateCluster{"c1", 7, std::string("farm"), std::nullopt, std::nullopt},
       error(Code::version_mismatch, "version_mismatch")},
      {"update: unknown", {}, UpdateCluster{"c1", std::nullopt, std::string("x"), {}, {}},
       error(Code::not_found, "cluster_not_found")},
      {"update: name taken", {cluster("c1"), cluster("c2")},
       UpdateCluster{"c1", std::nullopt, std::string("cluster c2"), {}, {}},
       error(Code::already_exists, "cluster_name_taken")},
      {"delete: empty", {cluster("c1")}, DeleteCluster{"c1", 1},
       events({"ClusterDeleted cluster-c1"})},
      {"delete: refused while servers are members", base(), DeleteCluster{"c1", std::nullopt},
       error(Code::failed_precondition, "cluster_not_empty")},
      {"delete: cascades the publications and authorizations of an emptied cluster",
       base() + std::vector<Cmd>{publish("p1", "word", Scope::cluster, "c1"),
                                 authorize("a1", "u1", "word", Scope::cluster, "c1"),
                                 LeaveCluster{"s2", std::nullopt},
                                 LeaveCluster{"s3", std::nullopt}},
       DeleteCluster{"c1", std::nullopt},
       events({"ApplicationUnauthorized authorization-a1", "ApplicationUnpublished publication-p1",
               "ClusterDeleted cluster-c1"})},
      {"delete: If-Match moved", {cluster("c1")}, DeleteCluster{"c1", 2},
       error(Code::version_mismatch, "version_mismatch")},
      {"delete: unknown", {}, DeleteCluster{"c1", std::nullopt},
       error(Code::not_found, "cluster_not_found")},
  });
}

TEST_CASE("servers") {
  run_table({
      {"create", {}, server("s1"),
       events({"ServerCreated server-s1"},
              {{"address", "s1.example.org"}, {"os_type", "windows"}, {"cpus", 4},
               {"memory_mb", 8192}, {"remote_app_service", true}})},
      {"create: duplicate id", {server("s1")}, server("s1"),
       error(Code::already_exists, "server_exists")},
      {"create: name taken", {server("s1")},
       CreateServer{"s9", "server s1", "h", "linux", "12", 1, 1, true},
       error(Code::already_exists, "server_name_taken")},
      {"create: unknown OS type", {}, CreateServer{"s1", "x", "h", "plan9", "4", 1, 1, true},
       error(Code::invalid_argument, "invalid_os_type")},
      {"create: address with a space", {},
       CreateServer{"s1", "x", "a b", "linux", "12", 1, 1, true},
       error(Code::invalid_argument, "invalid_address")},
      {"create: empty id", {}, CreateServer{"", "x", "h", "linux", "12", 1, 1, true},
       error(Code::invalid_argument, "invalid_id")},
      {"update: disable the remote-app service", {server("s1")},
       UpdateServer{"s1", 1, {}, {}, {}, {}, {}, false},
       events({"ServerUpdated server-s1"}, {{"remote_app_service", false}})},
      {"update: address, OS version, cpus, memory", {server("s1")},
       UpdateServer{"s1", std::nullopt, {}, std::string("10.0.0.9"), std::string("2022"), 8u,
                    uint64_t{16384}, {}},
       events({"ServerUpdated server-s1"},
              {{"address", "10.0.0.9"}, {"os_version", "2022"}, {"cpus", 8},
               {"memory_mb", 16384}})},
      {"update: nothing changes", {server("s1")},
       UpdateServer{"s1", std::nullopt, std::string("server s1"), {}, {}, {}, {}, true},
       events({})},
      {"update: If-Match moved", {server("s1"), app_on("s1", "word")},
       UpdateServer{"s1", 1, {}, {}, {}, {}, {}, false},
       error(Code::version_mismatch, "version_mismatch")},
      {"update: unknown", {}, UpdateServer{"s1", {}, {}, {}, {}, {}, {}, false},
       error(Code::not_found, "server_not_found")},
      {"delete: cascades its server-scope publications and authorizations",
       base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1"),
                                 publish("p2", "excel", Scope::server, "s1"),
                                 publish("p3", "word", Scope::server, "s4"),
                                 authorize("a1", "u1", "word", Scope::server, "s1"),
                                 authorize("a3", "u1", "word", Scope::server, "s4")},
       DeleteServer{"s1", std::nullopt},
       events({"ApplicationUnauthorized authorization-a1",
               "ApplicationUnpublished publication-p1", "ApplicationUnpublished publication-p2",
               "ServerDeleted server-s1"})},
      {"delete: a cluster member leaves its cluster's publications in place",
       base() + std::vector<Cmd>{publish("p1", "word", Scope::cluster, "c1")},
       DeleteServer{"s2", std::nullopt}, events({"ServerDeleted server-s2"})},
      {"delete: If-Match moved", {server("s1")}, DeleteServer{"s1", 3},
       error(Code::version_mismatch, "version_mismatch")},
      {"delete: unknown", {}, DeleteServer{"s1", std::nullopt},
       error(Code::not_found, "server_not_found")},
  });
}

TEST_CASE("server applications") {
  run_table({
      {"add: first sight registers the application", {server("s1")}, app_on("s1", "notepad"),
       events({"ApplicationRegistered application-" + app("notepad"),
               "ServerApplicationAdded server-s1"},
              {{"server_id", "s1"}, {"application_id", app("notepad")}})},
      {"add: an application known from another server is the same application",
       {server("s1"), server("s2"), app_on("s1", "notepad")}, app_on("s2", "notepad"),
       events({"ServerApplicationAdded server-s2"}, {{"application_id", app("notepad")}})},
      {"add: already present changes nothing", {server("s1"), app_on("s1", "notepad")},
       app_on("s1", "notepad"), events({})},
      {"add: unknown server", {}, app_on("s1", "notepad"),
       error(Code::not_found, "server_not_found")},
      {"add: empty executable path", {server("s1")},
       AddServerApplication{"s1", "notepad", "", "", ""},
       error(Code::invalid_argument, "invalid_executable_path")},
      {"add: empty name", {server("s1")}, AddServerApplication{"s1", "", "x.exe", "", ""},
       error(Code::invalid_argument, "invalid_name")},
      {"remove", {server("s1"), app_on("s1", "notepad")},
       RemoveServerApplication{"s1", app("notepad")},
       events({"ServerApplicationRemoved server-s1"})},
      {"remove: cascades the standalone server's publication of it",
       base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1"),
                                 publish("p2", "excel", Scope::server, "s1"),
                                 authorize("a1", "u1", "word", Scope::server, "s1"),
                                 authorize("a2", "u1", "excel", Scope::server, "s1")},
       RemoveServerApplication{"s1", app("word")},
       events({"ApplicationUnauthorized authorization-a1",
               "ApplicationUnpublished publication-p1", "ServerApplicationRemoved server-s1"})},
      {"remove: from a cluster member keeps the cluster publication",
       base() + std::vector<Cmd>{publish("p1", "word", Scope::cluster, "c1")},
       RemoveServerApplication{"s2", app("word")},
       events({"ServerApplicationRemoved server-s2"})},
      {"remove: not present", {server("s1")}, RemoveServerApplication{"s1", app("notepad")},
       error(Code::not_found, "application_not_on_server")},
      {"remove: unknown server", {}, RemoveServerApplication{"s1", app("notepad")},
       error(Code::not_found, "server_not_found")},
  });
}

TEST_CASE("publish and unpublish") {
  run_table({
      {"server scope on a standalone server that has it", base(),
       publish("p1", "word", Scope::server, "s1"),
       events({"ApplicationPublished publication-p1"},
              {{"application_id", app("word")}, {"scope", "server"}, {"target_id", "s1"}})},
      {"cluster scope where one member has it", base(),
       publish("p1", "paint", Scope::cluster, "c1"),
       events({"ApplicationPublished publication-p1"}, {{"scope", "cluster"}, {"target_id", "c1"}})},
      {"the same application on another target", base() + std::vector<Cmd>{publish(
                                                     "p1", "word", Scope::server, "s1")},
       publish("p2", "word", Scope::server, "s4"), events({"ApplicationPublished publication-p2"})},
      {"the same application at the other scope",
       base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1")},
       publish("p2", "word", Scope::cluster, "c1"),
       events({"ApplicationPublished publication-p2"})},
      {"server scope on a cluster member", base(), publish("p1", "word", Scope::server, "s2"),
       error(Code::failed_precondition, "server_in_cluster")},
      {"server scope where the application is absent", base(),
       publish("p1", "paint", Scope::server, "s1"),
       error(Code::failed_precondition, "application_not_present")},
      {"cluster scope where no member has it", base() + std::vector<Cmd>{app_on("s1", "notepad")},
       publish("p1", "notepad", Scope::cluster, "c1"),
       error(Code::failed_precondition, "application_not_present")},
      {"cluster scope on an empty cluster", base(), publish("p1", "word", Scope::cluster, "c2"),
       error(Code::failed_precondition, "application_not_present")},
      {"duplicate at the same scope and target",
       base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1")},
       publish("p2", "word", Scope::server, "s1"),
       error(Code::already_exists, "already_published")},
      {"duplicate at cluster scope",
       base() + std::vector<Cmd>{publish("p1", "word", Scope::cluster, "c1")},
       publish("p2", "word", Scope::cluster, "c1"),
       error(Code::already_exists, "already_published")},
      {"publication id taken", base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1")},
       publish("p1", "word", Scope::server, "s4"),
       error(Code::already_exists, "publication_exists")},
      {"unknown application", base(), Publish{"p1", "0000000000000000", Scope::server, "s1"},
       error(Code::not_found, "application_not_found")},
      {"unknown server", base(), publish("p1", "word", Scope::server, "s9"),
       error(Code::not_found, "server_not_found")},
      {"unknown cluster", base(), publish("p1", "word", Scope::cluster, "c9"),
       error(Code::not_found, "cluster_not_found")},
      {"bad id", base(), publish("p/1", "word", Scope::server, "s1"),
       error(Code::invalid_argument, "invalid_id")},
      {"unpublish", base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1")},
       Unpublish{"p1", 1},
       events({"ApplicationUnpublished publication-p1"}, {{"cause", "requested"}})},
      {"unpublish removes its authorizations and no others",
       base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1"),
                                 publish("p2", "excel", Scope::server, "s1"),
                                 publish("p3", "word", Scope::server, "s4"),
                                 authorize("a1", "u1", "word", Scope::server, "s1"),
                                 authorize("a2", "u2", "word", Scope::server, "s1"),
                                 authorize("a3", "u1", "excel", Scope::server, "s1"),
                                 authorize("a4", "u1", "word", Scope::server, "s4")},
       Unpublish{"p1", std::nullopt},
       events({"ApplicationUnauthorized authorization-a1",
               "ApplicationUnauthorized authorization-a2",
               "ApplicationUnpublished publication-p1"})},
      {"unpublish: unknown", base(), Unpublish{"p1", std::nullopt},
       error(Code::not_found, "publication_not_found")},
      {"unpublish: If-Match moved",
       base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1")}, Unpublish{"p1", 2},
       error(Code::version_mismatch, "version_mismatch")},
  });
}

TEST_CASE("authorize and unauthorize") {
  auto published = base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1"),
                                             publish("p2", "word", Scope::cluster, "c1")};
  run_table({
      {"server scope where published", published,
       authorize("a1", "u1", "word", Scope::server, "s1"),
       events({"ApplicationAuthorized authorization-a1"},
              {{"user_id", "u1"}, {"application_id", app("word")}, {"scope", "server"},
               {"target_id", "s1"}})},
      {"cluster scope where published", published,
       authorize("a1", "u1", "word", Scope::cluster, "c1"),
       events({"ApplicationAuthorized authorization-a1"}, {{"scope", "cluster"}})},
      {"another user at the same place",
       published + std::vector<Cmd>{authorize("a1", "u1", "word", Scope::server, "s1")},
       authorize("a2", "u2", "word", Scope::server, "s1"),
       events({"ApplicationAuthorized authorization-a2"})},
      {"not published on that server", published,
       authorize("a1", "u1", "word", Scope::server, "s4"),
       error(Code::failed_precondition, "not_published")},
      {"not published at that scope", base() + std::vector<Cmd>{publish(
                                          "p1", "excel", Scope::cluster, "c1")},
       authorize("a1", "u1", "excel", Scope::server, "s1"),
       error(Code::failed_precondition, "not_published")},
      {"not published in that cluster", published,
       authorize("a1", "u1", "excel", Scope::cluster, "c1"),
       error(Code::failed_precondition, "not_published")},
      {"duplicate", published + std::vector<Cmd>{authorize("a1", "u1", "word", Scope::server, "s1")},
       authorize("a2", "u1", "word", Scope::server, "s1"),
       error(Code::already_exists, "already_authorized")},
      {"authorization id taken",
       published + std::vector<Cmd>{authorize("a1", "u1", "word", Scope::server, "s1")},
       authorize("a1", "u2", "word", Scope::server, "s1"),
       error(Code::already_exists, "authorization_exists")},
      {"unknown user", published, authorize("a1", "u9", "word", Scope::server, "s1"),
       error(Code::not_found, "user_not_found")},
      {"unknown application", published,
       Authorize{"a1", "u1", "0000000000000000", Scope::server, "s1"},
       error(Code::not_found, "application_not_found")},
      {"server scope on a cluster member", published,
       authorize("a1", "u1", "word", Scope::server, "s2"),
       error(Code::failed_precondition, "server_in_cluster")},
      {"unknown cluster", published, authorize("a1", "u1", "word", Scope::cluster, "c9"),
       error(Code::not_found, "cluster_not_found")},
      {"unauthorize",
       published + std::vector<Cmd>{authorize("a1", "u1", "word", Scope::server, "s1")},
       Unauthorize{"a1", 1},
       events({"ApplicationUnauthorized authorization-a1"},
              {{"cause", "requested"}, {"user_id", "u1"}})},
      {"unauthorize: unknown", published, Unauthorize{"a1", std::nullopt},
       error(Code::not_found, "authorization_not_found")},
      {"unauthorize: If-Match moved",
       published + std::vector<Cmd>{authorize("a1", "u1", "word", Scope::server, "s1")},
       Unauthorize{"a1", 5}, error(Code::version_mismatch, "version_mismatch")},
  });
}

namespace {
// Join scenarios: u1..u3; c1 with member s9 (A, B, C); c2 empty; s1 standalone (A, B, D).
std::vector<Cmd> join_base() {
  return {user("u1"), user("u2"), user("u3"), cluster("c1"), cluster("c2"),
          server("s9"), app_on("s9", "A"), app_on("s9", "B"), app_on("s9", "C"),
          join("s9", "c1"),
          server("s1"), app_on("s1", "A"), app_on("s1", "B"), app_on("s1", "D")};
}
std::vector<Cmd> with(const std::vector<Cmd>& more) { return join_base() + more; }
const Json kNone = Json::array();
}  // namespace

TEST_CASE("join cluster: the paper's four transformations") {
  Cmd cA = publish("cA", "A", Scope::cluster, "c1");
  Cmd cB = publish("cB", "B", Scope::cluster, "c1");
  Cmd cC = publish("cC", "C", Scope::cluster, "c1");
  Cmd sA = publish("sA", "A", Scope::server, "s1");
  Cmd ca1 = authorize("ca1", "u1", "A", Scope::cluster, "c1");
  Cmd ca2 = authorize("ca2", "u2", "A", Scope::cluster, "c1");
  Cmd cb2 = authorize("cb2", "u2", "B", Scope::cluster, "c1");
  Cmd sa1 = authorize("sa1", "u1", "A", Scope::server, "s1");
  run_table({
      {"nothing published anywhere", join_base(), join("s1", "c1"),
       events({"ServerJoinedCluster server-s1"},
              {{"cluster_id", "c1"}, {"publications_dropped", kNone},
               {"authorizations_dropped", kNone}, {"remote_apps_added", kNone},
               {"remote_users_added", kNone}})},
      {"1: published on the server and in the cluster: the server publication is dropped",
       with({cA, sA}), join("s1", "c1"),
       events({"ApplicationUnpublished publication-sA", "ServerJoinedCluster server-s1"},
              {{"publications_dropped", V{"sA"}}, {"remote_apps_added", kNone},
               {"remote_users_added", kNone}})},
      {"2: published only in the cluster, present on the server: added to its remote apps",
       with({cB}), join("s1", "c1"),
       events({"ServerJoinedCluster server-s1"},
              {{"publications_dropped", kNone}, {"remote_apps_added", ids({app("B")})}})},
      {"2: published only in the cluster, absent from the server: not added", with({cC}),
       join("s1", "c1"),
       events({"ServerJoinedCluster server-s1"}, {{"remote_apps_added", kNone}})},
      {"3: authorized on the server and in the cluster: the server authorization is dropped",
       with({cA, sA, ca1, sa1}), join("s1", "c1"),
       events({"ApplicationUnauthorized authorization-sa1",
               "ApplicationUnpublished publication-sA", "ServerJoinedCluster server-s1"},
              {{"authorizations_dropped", V{"sa1"}}, {"publications_dropped", V{"sA"}},
               {"remote_users_added", kNone}})},
      {"4: authorized only in the cluster: added to the server's remote users",
       with({cA, ca2}), join("s1", "c1"),
       events({"ServerJoinedCluster server-s1"},
              {{"remote_apps_added", ids({app("A")})}, {"remote_users_added", V{"u2"}}})},
      {"all four at once", with({cA, cB, sA, ca1, ca2, cb2, sa1}), join("s1", "c1"),
       events({"ApplicationUnauthorized authorization-sa1",
               "ApplicationUnpublished publication-sA", "ServerJoinedCluster server-s1"},
              {{"publications_dropped", V{"sA"}}, {"authorizations_dropped", V{"sa1"}},
               {"remote_apps_added", ids({app("B")})}, {"remote_users_added", V{"u2"}}})},
      // Refusals.
      {"already in another cluster", with({join("s1", "c2")}), join("s1", "c1"),
       error(Code::failed_precondition, "server_already_in_cluster")},
      {"already in that cluster", join_base(), join("s9", "c1"),
       error(Code::failed_precondition, "server_already_in_cluster")},
      {"a server publication the cluster lacks (absent from the cluster)",
       with({publish("sD", "D", Scope::server, "s1")}), join("s1", "c1"),
       error(Code::failed_precondition, "join_publications_not_subset")},
      {"a server publication the cluster lacks (present, not published there)", with({sA}),
       join("s1", "c1"), error(Code::failed_precondition, "join_publications_not_subset")},
      {"a user authorized on the server but not in the cluster",
       with({cA, sA, authorize("sa3", "u3", "A", Scope::server, "s1")}), join("s1", "c1"),
       error(Code::failed_precondition, "join_authorizations_not_subset")},
      {"a user authorized in the cluster for another application only",
       with({cA, cB, sA, authorize("sa3", "u3", "A", Scope::server, "s1"),
             authorize("cb3", "u3", "B", Scope::cluster, "c1")}),
       join("s1", "c1"), error(Code::failed_precondition, "join_authorizations_not_subset")},
      {"unknown server", join_base(), join("s8", "c1"), error(Code::not_found, "server_not_found")},
      {"unknown cluster", join_base(), join("s1", "c8"),
       error(Code::not_found, "cluster_not_found")},
      {"If-Match moved", join_base(), JoinCluster{"s1", "c1", 1},
       error(Code::version_mismatch, "version_mismatch")},
  });
}

TEST_CASE("join cluster: desired state before and after") {
  World w;
  w.given(with({publish("cA", "A", Scope::cluster, "c1"), publish("cB", "B", Scope::cluster, "c1"),
                publish("sA", "A", Scope::server, "s1"),
                authorize("ca1", "u1", "A", Scope::cluster, "c1"),
                authorize("ca2", "u2", "A", Scope::cluster, "c1"),
                authorize("sa1", "u1", "A", Scope::server, "s1")}));
  auto before = w.s.appcloud.desired_state("s1");
  REQUIRE(before);
  CHECK(before->remote_apps == std::set<std::string>{app("A")});
  CHECK(before->remote_users == std::set<std::string>{"u1"});
  w.given({join("s1", "c1")});
  auto after = w.s.appcloud.desired_state("s1");
  REQUIRE(after);
  CHECK(after->remote_apps == std::set<std::string>{app("A"), app("B")});
  CHECK(after->remote_users == std::set<std::string>{"u1", "u2"});
  CHECK(w.s.appcloud.publication("sA") == nullptr);
  CHECK(w.s.appcloud.authorization("sa1") == nullptr);
  CHECK(w.s.appcloud.server("s1")->cluster_id == "c1");
  // Now a member: server-scope publishing there is refused.
  auto r = w.decide(publish("sB", "B", Scope::server, "s1"));
  REQUIRE(!r.ok());
  CHECK(r.error().reason == "server_in_cluster");
}

TEST_CASE("leave cluster") {
  auto member = base() + std::vector<Cmd>{publish("p1", "word", Scope::cluster, "c1"),
                                          publish("p2", "paint", Scope::cluster, "c1"),
                                          authorize("a1", "u1", "word", Scope::cluster, "c1"),
                                          authorize("a2", "u2", "paint", Scope::cluster, "c1")};
  run_table({
      {"the cluster's apps and users leave the server's lists", member,
       LeaveCluster{"s2", std::nullopt},
       events({"ServerLeftCluster server-s2"},
              {{"cluster_id", "c1"}, {"remote_apps_removed", ids({app("word")})},
               {"remote_users_removed", V{"u1"}}})},
      {"a standalone server", member, LeaveCluster{"s1", std::nullopt},
       error(Code::failed_precondition, "server_not_in_cluster")},
      {"unknown server", member, LeaveCluster{"s9", std::nullopt},
       error(Code::not_found, "server_not_found")},
      {"If-Match moved", member, LeaveCluster{"s2", 1},
       error(Code::version_mismatch, "version_mismatch")},
  });

  SUBCASE("after leaving, the server is standalone and holds nothing") {
    World w;
    w.given(member + std::vector<Cmd>{LeaveCluster{"s2", std::nullopt}});
    auto d = w.s.appcloud.desired_state("s2");
    REQUIRE(d);
    CHECK(d->remote_apps.empty());
    CHECK(d->remote_users.empty());
    CHECK(w.s.appcloud.publication("p1") != nullptr);  // the cluster keeps its publication
    expect(w, publish("p3", "word", Scope::server, "s2"),
           events({"ApplicationPublished publication-p3"}));
  }
}

TEST_CASE("live load figures are checked before they enter the liveness table") {
  CHECK(validate_load(LoadReport{0.25, 0.5, 3, kNow, 0}).ok());
  for (auto [cpu, mem] : {std::pair{1.5, 0.1}, std::pair{0.1, -0.1}, std::pair{std::nan(""), 0.1}}) {
    auto st = validate_load(LoadReport{cpu, mem, 0, kNow, 0});
    REQUIRE(!st.ok());
    CHECK(st.error().reason == "invalid_load");
  }
}

TEST_CASE("load and inventory reports") {
  run_table({
      // Load is liveness now (pipeline/liveness.h); these rows fold an older log's reports.
      {"load (an older log)", {server("s1")}, load("s1", 0.25, 0.5, 3),
       events({"ServerLoadReported server-load-s1"},
              {{"cpu_load", 0.25}, {"memory_load", 0.5}, {"sessions", 3},
               {"reported_at_ms", kNow}})},
      {"inventory", {server("s1")}, ReportServerInventory{"s1", {"x1"}, {"u1"}, 0},
       events({"ServerInventoryReported server-inventory-s1"},
              {{"apps", V{"x1"}}, {"users", V{"u1"}}, {"reported_at_ms", kNow}})},
      {"inventory: the same again changes nothing",
       {server("s1"), ReportServerInventory{"s1", {"x1"}, {"u1"}, 0}},
       ReportServerInventory{"s1", {"x1"}, {"u1"}, 0}, events({})},
      {"inventory: bad id", {server("s1")}, ReportServerInventory{"s1", {"x 1"}, {}, 0},
       error(Code::invalid_argument, "invalid_id")},
      {"inventory: unknown server", {}, ReportServerInventory{"s1", {}, {}, 0},
       error(Code::not_found, "server_not_found")},
  });

  SUBCASE("reports do not move the server's version (If-Match stays valid)") {
    World w;
    w.given({server("s1"), load("s1", 0.1, 0.2, 1), ReportServerInventory{"s1", {}, {"u"}, 0}});
    CHECK(w.s.appcloud.server("s1")->version == 1);
    CHECK(w.s.appcloud.server("s1")->load->memory_load == 0.2);
    CHECK(w.s.appcloud.server("s1")->reported->users == std::set<std::string>{"u"});
    expect(w, UpdateServer{"s1", 1, {}, {}, {}, {}, {}, false},
           events({"ServerUpdated server-s1"}));
  }
}

TEST_CASE("queries: publish and authorize targets") {
  World w;
  w.given(base() + std::vector<Cmd>{server("s5"), app_on("s5", "paint"), join("s5", "c2")});
  const AppCloudState& ac = w.s.appcloud;
  // word: standalone s1, s4; member s2 of c1.
  CHECK(ac.publish_targets(app("word"), Scope::server) == V{"s1", "s4"});
  CHECK(ac.publish_targets(app("word"), Scope::cluster) == V{"c1"});
  CHECK(ac.publish_targets(app("paint"), Scope::cluster) == V{"c1", "c2"});
  CHECK(ac.publish_targets(app("paint"), Scope::server).empty());
  CHECK(ac.publish_targets("0000000000000000", Scope::server).empty());

  w.given({publish("p1", "word", Scope::server, "s1"), publish("p2", "word", Scope::cluster, "c1"),
           publish("p3", "word", Scope::server, "s4")});
  CHECK(ac.publish_targets(app("word"), Scope::server).empty());
  CHECK(ac.publish_targets(app("word"), Scope::cluster).empty());

  CHECK(ac.authorize_targets(app("word"), "u1", Scope::server) == V{"s1", "s4"});
  w.given({authorize("a1", "u1", "word", Scope::server, "s1")});
  CHECK(ac.authorize_targets(app("word"), "u1", Scope::server) == V{"s4"});
  CHECK(ac.authorize_targets(app("word"), "u2", Scope::server) == V{"s1", "s4"});
  CHECK(ac.authorize_targets(app("word"), "u1", Scope::cluster) == V{"c1"});
  CHECK(ac.authorize_targets(app("excel"), "u1", Scope::cluster).empty());  // not published

  // Where present.
  Json j = application_to_json(ac, *ac.application(app("word")));
  CHECK(j["servers"] == V{"s1", "s2", "s4"});
  CHECK(j["clusters"] == V{"c1"});
  CHECK(j["name"] == "word");
  CHECK(j["executable_path"] == exe("word"));
}

TEST_CASE("queries: entitlements") {
  World w;
  w.given(base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1"),
                                    publish("p2", "word", Scope::cluster, "c1"),
                                    publish("p3", "paint", Scope::cluster, "c1"),
                                    authorize("a1", "u1", "word", Scope::server, "s1"),
                                    authorize("a2", "u1", "word", Scope::cluster, "c1"),
                                    authorize("a3", "u1", "paint", Scope::cluster, "c1"),
                                    authorize("a4", "u2", "paint", Scope::cluster, "c1")});
  auto e = w.s.appcloud.entitlements("u1");
  REQUIRE(e.size() == 2);
  const Entitlement& word = e[0].application_id == app("word") ? e[0] : e[1];
  const Entitlement& paint = e[0].application_id == app("word") ? e[1] : e[0];
  CHECK(word.name == "word");
  REQUIRE(word.where.size() == 2);
  CHECK(word.where[0].scope == Scope::server);
  CHECK(word.where[0].target_id == "s1");
  CHECK(word.where[0].authorization_id == "a1");
  CHECK(word.where[1].scope == Scope::cluster);
  CHECK(word.where[1].target_id == "c1");
  REQUIRE(paint.where.size() == 1);
  CHECK(paint.where[0].authorization_id == "a3");
  CHECK(w.s.appcloud.entitlements("u3").empty());
  CHECK(entitlement_to_json(word)["where"][1]["scope"] == "cluster");
}

TEST_CASE("queries: desired state per server") {
  World w;
  w.given(base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1"),
                                    publish("p2", "word", Scope::cluster, "c1"),
                                    publish("p3", "paint", Scope::cluster, "c1"),
                                    authorize("a1", "u1", "word", Scope::server, "s1"),
                                    authorize("a2", "u2", "word", Scope::cluster, "c1"),
                                    authorize("a3", "u3", "paint", Scope::cluster, "c1")});
  struct Row {
    const char* server;
    std::set<std::string> apps;
    std::set<std::string> users;
  };
  const Row rows[] = {
      {"s1", {app("word")}, {"u1"}},     // server scope on it
      {"s2", {app("word")}, {"u2"}},     // cluster scope, has word but not paint
      {"s3", {app("paint")}, {"u3"}},    // cluster scope, has paint but not word
      {"s4", {}, {}},                    // word present, nothing published on it
  };
  for (const Row& r : rows) {
    CAPTURE(r.server);
    auto d = w.s.appcloud.desired_state(r.server);
    REQUIRE(d);
    CHECK(d->remote_apps == r.apps);
    CHECK(d->remote_users == r.users);
  }
  CHECK(!w.s.appcloud.desired_state("s9"));

  // A disabled service keeps the lists (maintenance is not unpublishing).
  w.given({UpdateServer{"s1", {}, {}, {}, {}, {}, {}, false}});
  auto d = w.s.appcloud.desired_state("s1");
  CHECK(d->remote_apps == std::set<std::string>{app("word")});
  CHECK(desired_state_to_json(*d)["remote_app_service"] == "disabled");

  // An application added later to a member is on its list at once.
  w.given({app_on("s3", "word")});
  CHECK(w.s.appcloud.desired_state("s3")->remote_apps ==
        std::set<std::string>{app("word"), app("paint")});
  CHECK(w.s.appcloud.desired_state("s3")->remote_users ==
        std::set<std::string>{"u2", "u3"});
}

TEST_CASE("queries: sync status, in sync or the diff") {
  auto given = base() + std::vector<Cmd>{publish("p1", "word", Scope::server, "s1"),
                                         publish("p2", "excel", Scope::server, "s1"),
                                         authorize("a1", "u1", "word", Scope::server, "s1"),
                                         authorize("a2", "u2", "excel", Scope::server, "s1")};
  struct Row {
    const char* name;
    std::optional<ReportServerInventory> report;
    bool in_sync;
    std::set<std::string> missing_apps, extra_apps, missing_users, extra_users;
  };
  const std::string word = app("word"), excel = app("excel");
  const Row rows[] = {
      {"never reported", std::nullopt, false, {word, excel}, {}, {"u1", "u2"}, {}},
      {"exactly as desired", ReportServerInventory{"s1", {word, excel}, {"u1", "u2"}, 0}, true,
       {}, {}, {}, {}},
      {"missing an app and a user", ReportServerInventory{"s1", {word}, {"u1"}, 0}, false,
       {excel}, {}, {"u2"}, {}},
      {"extra app and user", ReportServerInventory{"s1", {word, excel, "zz"}, {"u1", "u2", "u9"}, 0},
       false, {}, {"zz"}, {}, {"u9"}},
  };
  for (const Row& r : rows) {
    CAPTURE(r.name);
    World w;
    w.given(given);
    if (r.report) w.given({*r.report});
    auto st = w.s.appcloud.sync_status("s1");
    REQUIRE(st);
    CHECK(st->in_sync == r.in_sync);
    CHECK(st->reported == r.report.has_value());
    CHECK(st->missing_apps == r.missing_apps);
    CHECK(st->extra_apps == r.extra_apps);
    CHECK(st->missing_users == r.missing_users);
    CHECK(st->extra_users == r.extra_users);
    CHECK(sync_status_to_json(*st)["status"] == (r.in_sync ? "in_sync" : "out_of_sync"));
  }

  SUBCASE("an unpublish puts a synced server out of sync until it reports again") {
    World w;
    w.given(given + std::vector<Cmd>{
                        ReportServerInventory{"s1", {word, excel}, {"u1", "u2"}, 0},
                        Unpublish{"p2", std::nullopt}});
    auto st = w.s.appcloud.sync_status("s1");
    CHECK(!st->in_sync);
    CHECK(st->extra_apps == std::set<std::string>{excel});
    CHECK(st->extra_users == std::set<std::string>{"u2"});
    w.ctx.now_ms += 1000;
    w.given({ReportServerInventory{"s1", {word}, {"u1"}, 0}});
    CHECK(w.s.appcloud.sync_status("s1")->in_sync);
  }
  CHECK(!World{}.s.appcloud.sync_status("s1"));
}

TEST_CASE("entity JSON views") {
  World w;
  w.given(base() + std::vector<Cmd>{publish("p1", "word", Scope::cluster, "c1"),
                                    authorize("a1", "u1", "word", Scope::cluster, "c1"),
                                    load("s2", 0.5, 0.25, 2)});
  const AppCloudState& ac = w.s.appcloud;
  Json c = cluster_to_json(*ac.cluster("c1"));
  CHECK(c["name"] == "cluster c1");
  CHECK(c["placement"]["policy"] == "weighted");
  CHECK(c["placement"]["weights"]["memory"] == 0.6);
  CHECK(c["version"] == 1);
  Json s2 = server_to_json(*ac.server("s2"));
  CHECK(s2["cluster_id"] == "c1");
  CHECK(s2["remote_app_service"] == "enabled");
  CHECK(s2["load"]["cpu_load"] == 0.5);
  CHECK(s2["applications"] == V{app("word")});
  CHECK(server_to_json(*ac.server("s1"))["cluster_id"].is_null());
  CHECK(server_to_json(*ac.server("s1"))["load"].is_null());
  Json p = publication_to_json(*ac.publication("p1"));
  CHECK(p["scope"] == "cluster");
  CHECK(p["target_id"] == "c1");
  CHECK(p["version"] == 1);
  Json a = authorization_to_json(*ac.authorization("a1"));
  CHECK(a["user_id"] == "u1");
  CHECK(a["application_id"] == app("word"));

  // placement_from_json reads what placement_to_json writes, and refuses bad shapes.
  ClusterPlacement cp;
  cp.policy = IntraClusterPolicy::least_cpu;
  cp.weights = {1, 2, 3};
  cp.max_sessions = 40;
  auto back = placement_from_json(placement_to_json(cp));
  REQUIRE(back);
  CHECK(placement_to_json(*back) == placement_to_json(cp));
  CHECK(placement_from_json(Json{{"policy", "fastest"}}).error().reason == "invalid_placement");
  CHECK(placement_from_json(Json{{"weights", {{"cpu", "x"}}}}).error().reason ==
        "invalid_placement");
  CHECK(placement_from_json(Json::array()).error().reason == "invalid_placement");
  CHECK(placement_from_json(Json::object())->policy == IntraClusterPolicy::weighted);
  CHECK(parse_scope("cluster") == Scope::cluster);
  CHECK(!parse_scope("global"));
}

TEST_CASE("replay: folding the produced events into a fresh state gives the same state") {
  World w;
  w.given(base() + std::vector<Cmd>{
                       publish("p1", "word", Scope::server, "s1"),
                       publish("p2", "word", Scope::cluster, "c1"),
                       authorize("a1", "u1", "word", Scope::server, "s1"),
                       authorize("a2", "u1", "word", Scope::cluster, "c1"),
                       UpdateCluster{"c1", {}, {}, std::string("Windows farm"), {}},
                       load("s1", 0.3, 0.4, 2), load("s2", 0.7, 0.1, 5),
                       ReportServerInventory{"s1", {app("word")}, {"u1"}, 0},
                       LaunchApplication{"x1", "u1", app("word"), {}},
                       RemoveServerApplication{"s1", app("excel")},
                       LeaveCluster{"s3", std::nullopt}, DeleteServer{"s4", std::nullopt}});
  State fresh = w.replayed();
  CHECK(state_to_json(fresh) == state_to_json(w.s));
  Json j = state_to_json(w.s)["appcloud"];
  CHECK(j["clusters"]["c1"]["description"] == "Windows farm");
  CHECK(j["sessions"]["x1"]["server_id"] == "s1");
  CHECK(!j["servers"].contains("s4"));
  // The same command decided on the replayed state gives the same events.
  auto live = w.decide(LaunchApplication{"x2", "u1", app("word"), {}});
  auto again = domain::decide(fresh, LaunchApplication{"x2", "u1", app("word"), {}}, w.ctx);
  REQUIRE(live);
  REQUIRE(again);
  REQUIRE(live->size() == 1);
  CHECK(live->front().data == again->front().data);
}

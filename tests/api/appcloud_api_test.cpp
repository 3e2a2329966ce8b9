// The application cloud over real HTTP on a loopback port: the paper's whole walkthrough,
// join on each transformation and each refusal, target listings, entitlements, launches and
// their refusals, the "why this server" view, If-Match, bad input, and replay equality.
#include <doctest/doctest.h>

#include "api/daemon.h"
#include "domain/state.h"
#include "projections/views.h"
#include "support/agents.h"
#include "support/test_support.h"

using atrium::testing::TestBroker;
using nlohmann::json;

namespace {

uint64_t last_position(TestBroker& b) { return b.daemon().store().last_position(); }

std::string exe(const std::string& app) { return "C:\\Apps\\" + app + ".exe"; }

// Small helpers that fail the test when the broker refuses.
struct Cloud {
  TestBroker& b;

  std::string cluster(const std::string& name, json placement = nullptr) {
    json body{{"name", name}};
    if (!placement.is_null()) body["placement"] = placement;
    auto r = b.call("POST", "/v1/clusters", body);
    REQUIRE_MESSAGE(r.status == 201, r.body);
    return r.json()["id"];
  }
  std::string server(const std::string& name, const std::string& address,
                     const std::vector<std::string>& apps = {}) {
    auto r = b.call("POST", "/v1/servers",
                    {{"name", name},
                     {"address", address},
                     {"os_type", "windows"},
                     {"os_version", "2019"},
                     {"cpus", 8},
                     {"memory_mb", 16384}});
    REQUIRE_MESSAGE(r.status == 201, r.body);
    std::string id = r.json()["id"];
    for (const auto& a : apps) app(id, a);
    return id;
  }
  std::string app(const std::string& server_id, const std::string& name) {
    auto r = b.call("POST", "/v1/servers/" + server_id + "/applications",
                    {{"name", name},
                     {"executable_path", exe(name)},
                     {"description", name + " application"},
                     {"desktop_file", ""}});
    REQUIRE_MESSAGE(r.status == 201, r.body);
    return r.json()["id"];
  }
  std::string publish(const std::string& app_id, const std::string& scope,
                      const std::string& target) {
    auto r = b.call("POST", "/v1/publications",
                    {{"application_id", app_id}, {"scope", scope}, {"target_id", target}});
    REQUIRE_MESSAGE(r.status == 201, r.body);
    return r.json()["id"];
  }
  std::string authorize(const std::string& user, const std::string& app_id,
                        const std::string& scope, const std::string& target) {
    auto r = b.call("POST", "/v1/authorizations",
                    {{"user_id", user},
                     {"application_id", app_id},
                     {"scope", scope},
                     {"target_id", target}});
    REQUIRE_MESSAGE(r.status == 201, r.body);
    return r.json()["id"];
  }
  void join(const std::string& server_id, const std::string& cluster_id) {
    auto r = b.call("POST", "/v1/servers/" + server_id + "/join", {{"cluster_id", cluster_id}});
    REQUIRE_MESSAGE(r.status == 200, r.body);
  }
  void load(const std::string& server_id, double cpu, double mem, int sessions) {
    auto r = b.call("POST", "/v1/servers/" + server_id + "/report",
                    {{"cpu_load", cpu}, {"memory_load", mem}, {"sessions", sessions}});
    REQUIRE_MESSAGE(r.status == 200, r.body);
  }
};

// The ids in a list reply's items (field `key`).
std::set<std::string> ids(const json& reply, const char* key = "id") {
  std::set<std::string> out;
  for (const auto& i : reply["items"]) out.insert(i[key].get<std::string>());
  return out;
}

// A refusal with its status and reason, and nothing appended.
void refused(TestBroker& b, const std::string& method, const std::string& path, const json& body,
             int status, const std::string& reason,
             const std::string& token = TestBroker::kAdminToken,
             std::vector<std::pair<std::string, std::string>> headers = {}) {
  uint64_t before = last_position(b);
  auto r = b.call(method, path, body, token, std::move(headers));
  CHECK_MESSAGE(r.status == status, method << " " << path << " -> " << r.body);
  CHECK_MESSAGE(r.header("content-type") == "application/problem+json", r.body);
  CHECK_MESSAGE(r.json().value("reason", "") == reason, r.body);
  CHECK(last_position(b) == before);
}

json state_json(TestBroker& b) {
  return b.daemon().views().read(
      [](const atrium::domain::State& s) { return atrium::domain::state_to_json(s); });
}

json replayed_json(TestBroker& b) {
  atrium::domain::State rebuilt;
  auto n = atrium::projections::replay(b.daemon().store(), rebuilt);
  REQUIRE(n.ok());
  return atrium::domain::state_to_json(rebuilt);
}

}  // namespace

TEST_CASE("the paper's walkthrough: plan, clusters, servers, join, publish, authorize, launch") {
  TestBroker b;
  Cloud c{b};
  // Plan: an office cluster of two servers with Word and Excel (CAD on one only), and a
  // standalone server with a portable tool.
  std::string office = c.cluster("office", {{"policy", "least_cpu"}});
  std::string s1 = c.server("ts-01", "10.0.0.11", {"Word", "Excel"});
  std::string s2 = c.server("ts-02", "10.0.0.12", {"Word", "CAD"});
  std::string s3 = c.server("tools", "10.0.0.20");
  std::string word = c.app(s3, "Word");
  std::string putty = c.app(s3, "PuTTY");  // a portable application, added by hand
  {
    auto j = b.call("GET", "/v1/servers/" + s1 + "/applications").json();
    CHECK(ids(j).count(word) == 1);
    CHECK(j["items"].size() == 2);
  }

  // Applications are identified by (name, exe path): Word is one application on three servers.
  auto w = b.call("GET", "/v1/applications/" + word);
  REQUIRE(w.status == 200);
  CHECK(w.json()["servers"].size() == 3);
  CHECK(w.header("etag") == "\"1\"");
  auto apps = b.call("GET", "/v1/applications");
  CHECK(apps.json()["items"].size() == 4);

  c.join(s1, office);
  c.join(s2, office);
  auto cl = b.call("GET", "/v1/clusters/" + office);
  REQUIRE(cl.status == 200);
  CHECK(cl.json()["servers"] == json::array({s1, s2}).get<std::set<std::string>>());
  CHECK(cl.json()["applications"].size() == 3);
  CHECK(cl.json()["placement"]["policy"] == "least_cpu");
  {
    auto members = b.call("GET", "/v1/servers?cluster_id=" + office);
    auto j = members.json();
    CHECK(ids(j) == std::set<std::string>{s1, s2});
  }

  // Publish at cluster scope (Word in the office) and at server scope (PuTTY on tools).
  std::string pub_word = c.publish(word, "cluster", office);
  std::string pub_putty = c.publish(putty, "server", s3);
  refused(b, "POST", "/v1/publications",
          {{"application_id", word}, {"scope", "cluster"}, {"target_id", office}}, 409,
          "already_published");

  auto [alice, alice_token] = b.user("alice");
  c.authorize(alice, word, "cluster", office);
  c.authorize(alice, putty, "server", s3);

  // The server's desired state follows: Word and alice on both members.
  auto srv = b.call("GET", "/v1/servers/" + s2);
  REQUIRE(srv.status == 200);
  auto sj = srv.json();
  CHECK(sj["desired_state"]["remote_apps"] == json::array({word}));
  CHECK(sj["desired_state"]["remote_users"] == json::array({alice}));
  CHECK(sj["in_sync"] == false);
  CHECK(sj["sync"]["missing_apps"] == json::array({word}));
  // The agent reports what it holds: in sync.
  auto rep = b.call("POST", "/v1/servers/" + s2 + "/report",
                    {{"cpu_load", 0.1},
                     {"memory_load", 0.2},
                     {"sessions", 1},
                     {"inventory", {{"apps", {word}}, {"users", {alice}}}}});
  REQUIRE_MESSAGE(rep.status == 200, rep.body);
  CHECK(rep.json()["in_sync"] == true);
  c.load(s1, 0.8, 0.3, 4);

  // The portal lists alice's apps and where.
  auto ent = b.call("GET", "/v1/me/entitlements", nullptr, alice_token);
  REQUIRE(ent.status == 200);
  auto ej = ent.json();
  CHECK(ids(ej, "application_id") == std::set<std::string>{word, putty});

  // Launch Word: least_cpu in the office picks ts-02.
  auto launch = b.call("POST", "/v1/launches", {{"application_id", word}}, alice_token);
  REQUIRE_MESSAGE(launch.status == 201, launch.body);
  auto lj = launch.json();
  CHECK(lj["protocol"] == "rdp");
  CHECK(lj["server"]["id"] == s2);
  CHECK(lj["server"]["name"] == "ts-02");
  CHECK(lj["server"]["address"] == "10.0.0.12");
  CHECK(launch.header("location") == "/v1/sessions/" + lj["session_id"].get<std::string>());
  std::string rdp = lj["connection_file"];
  CHECK(rdp.find("full address:s:10.0.0.12\r\n") != std::string::npos);
  CHECK(rdp.find("remoteapplicationmode:i:1\r\n") != std::string::npos);
  CHECK(rdp.find("remoteapplicationprogram:s:C:\\Apps\\Word.exe\r\n") != std::string::npos);
  CHECK(rdp.find("remoteapplicationname:s:Word\r\n") != std::string::npos);
  CHECK(rdp.find("username:s:alice\r\n") != std::string::npos);
  CHECK(lj["decision"]["scope"] == "cluster");
  CHECK(lj["decision"]["target_id"] == office);
  CHECK(lj["decision"]["policy"]["intra_target"] == "least_cpu");
  CHECK(lj["decision"]["candidates"] == 2);

  // PuTTY runs on the standalone server.
  auto launch2 = b.call("POST", "/v1/launches", {{"application_id", putty}}, alice_token);
  // tools never reported its load: no candidate.
  CHECK(launch2.status == 409);
  CHECK(launch2.json()["reason"] == "no_candidate");
  CHECK(launch2.json()["detail"].get<std::string>().find("no load report") != std::string::npos);
  c.load(s3, 0.1, 0.1, 0);
  launch2 = b.call("POST", "/v1/launches", {{"application_id", putty}}, alice_token);
  REQUIRE(launch2.status == 201);
  CHECK(launch2.json()["server"]["id"] == s3);
  CHECK(launch2.json()["decision"]["policy"]["intra_target"] == "single_server");

  // Sessions: alice sees her two.
  auto mine = b.call("GET", "/v1/sessions", nullptr, alice_token);
  CHECK(mine.json()["items"].size() == 2);
  CHECK(pub_word != pub_putty);

  // Replay equality: a state rebuilt from the log equals the live views, also after restart.
  json live = state_json(b);
  CHECK(replayed_json(b) == live);
  b.restart();
  // The graceful stop wrote a snapshot and the restart started from it.
  CHECK(b.daemon().pipeline().snapshot_position() == b.daemon().store().last_position());
  CHECK(replayed_json(b) == state_json(b));
  CHECK(state_json(b)["appcloud"] == live["appcloud"]);
}

TEST_CASE("join over HTTP: the four transformations in one batch") {
  TestBroker b;
  Cloud c{b};
  std::string cl = c.cluster("c");
  std::string m = c.server("member", "10.0.1.1", {"A", "B"});
  std::string s = c.server("joiner", "10.0.1.2", {"A", "B"});
  std::string A = c.app(m, "A"), B = c.app(m, "B");
  c.join(m, cl);
  c.publish(A, "cluster", cl);
  c.publish(B, "cluster", cl);
  c.publish(A, "server", s);  // 1: published on both -> the server publication is dropped
  // 2: B is published only in the cluster and present on the server -> added to its apps
  auto [alice, at] = b.user("alice");
  auto [bob, bt] = b.user("bob");
  c.authorize(alice, A, "cluster", cl);
  c.authorize(alice, A, "server", s);  // 3: authorized on both -> the server one is dropped
  c.authorize(bob, A, "cluster", cl);  // 4: only in the cluster -> added to the server's users
  auto before = b.call("GET", "/v1/servers/" + s).json();
  CHECK(before["desired_state"]["remote_apps"] == json::array({A}));
  CHECK(before["desired_state"]["remote_users"] == json::array({alice}));

  c.join(s, cl);
  auto pubs = b.call("GET", "/v1/publications?scope=server&target_id=" + s).json();
  CHECK(pubs["items"].empty());
  auto auths = b.call("GET", "/v1/authorizations?scope=server&target_id=" + s).json();
  CHECK(auths["items"].empty());
  auto after = b.call("GET", "/v1/servers/" + s).json();
  CHECK(after["cluster_id"] == cl);
  CHECK(after["desired_state"]["remote_apps"] == json::array({A, B}).get<std::set<std::string>>());
  CHECK(after["desired_state"]["remote_users"] ==
        json::array({alice, bob}).get<std::set<std::string>>());
  // The join event records what changed, with the dropped records' own events before it.
  auto stream = b.call("GET", "/v1/streams/server-" + s).json();
  json joined;
  for (const auto& e : stream["items"]) {
    if (e["type"] == "ServerJoinedCluster") joined = e["data"];
  }
  REQUIRE(joined.is_object());
  CHECK(joined["publications_dropped"].size() == 1);
  CHECK(joined["authorizations_dropped"].size() == 1);
  CHECK(joined["remote_apps_added"] == json::array({B}));
  CHECK(joined["remote_users_added"] == json::array({bob}));
  auto causes = b.call("GET", "/v1/events?type=ApplicationUnpublished").json();
  REQUIRE(causes["items"].size() == 1);
  CHECK(causes["items"][0]["data"]["cause"] == "joined_cluster");

  // Leave: standalone again, nothing republished.
  auto left = b.call("POST", "/v1/servers/" + s + "/leave");
  REQUIRE_MESSAGE(left.status == 200, left.body);
  CHECK(left.json()["cluster_id"].is_null());
  CHECK(left.json()["desired_state"]["remote_apps"].empty());
  refused(b, "POST", "/v1/servers/" + s + "/leave", nullptr, 409, "server_not_in_cluster");
}

TEST_CASE("join over HTTP: each refusal, with nothing appended") {
  TestBroker b;
  Cloud c{b};
  std::string cl = c.cluster("c");
  std::string other = c.cluster("other");
  std::string m = c.server("member", "10.0.2.1", {"A"});
  std::string A = c.app(m, "A");
  c.join(m, cl);
  c.publish(A, "cluster", cl);

  // (a) publications not a subset: D is published on the server but not in the cluster.
  std::string s1 = c.server("s1", "10.0.2.2", {"D"});
  std::string D = c.app(s1, "D");
  c.publish(D, "server", s1);
  refused(b, "POST", "/v1/servers/" + s1 + "/join", {{"cluster_id", cl}}, 409,
          "join_publications_not_subset");

  // (b) authorizations not a subset: carol has A on the server but not in the cluster.
  std::string s2 = c.server("s2", "10.0.2.3", {"A"});
  c.publish(A, "server", s2);
  auto [carol, ct] = b.user("carol");
  c.authorize(carol, A, "server", s2);
  refused(b, "POST", "/v1/servers/" + s2 + "/join", {{"cluster_id", cl}}, 409,
          "join_authorizations_not_subset");

  // A server joins at most one cluster.
  refused(b, "POST", "/v1/servers/" + m + "/join", {{"cluster_id", other}}, 409,
          "server_already_in_cluster");
  refused(b, "POST", "/v1/servers/" + s2 + "/join", {{"cluster_id", "no-such"}}, 404,
          "cluster_not_found");
  refused(b, "POST", "/v1/servers/no-such/join", {{"cluster_id", cl}}, 404, "server_not_found");
  refused(b, "POST", "/v1/servers/" + s2 + "/join", {{"cluster", cl}}, 400, "invalid_body");
  // A cluster with members cannot be deleted.
  refused(b, "DELETE", "/v1/clusters/" + cl, nullptr, 409, "cluster_not_empty");
  // Publishing on a member server is refused: it belongs to the cluster.
  refused(b, "POST", "/v1/publications", {{"application_id", A}, {"scope", "server"}, {"target_id", m}},
          409, "server_in_cluster");
  refused(b, "POST", "/v1/publications", {{"application_id", D}, {"scope", "cluster"}, {"target_id", cl}},
          409, "application_not_present");
  refused(b, "POST", "/v1/authorizations",
          {{"user_id", carol}, {"application_id", D}, {"scope", "cluster"}, {"target_id", cl}}, 409,
          "not_published");
  refused(b, "POST", "/v1/authorizations",
          {{"user_id", "nobody"}, {"application_id", A}, {"scope", "cluster"}, {"target_id", cl}},
          404, "user_not_found");
}

TEST_CASE("publish and authorize targets exclude targets already done; entitlements") {
  TestBroker b;
  Cloud c{b};
  std::string c1 = c.cluster("c1"), c2 = c.cluster("c2"), c3 = c.cluster("c3");
  std::string m1 = c.server("m1", "10.0.3.1", {"A"});
  std::string m2 = c.server("m2", "10.0.3.2", {"A"});
  std::string m3 = c.server("m3", "10.0.3.3");  // c3 has no A
  std::string s1 = c.server("s1", "10.0.3.4", {"A"});
  std::string s2 = c.server("s2", "10.0.3.5", {"A"});
  std::string A = c.app(m1, "A");
  c.join(m1, c1);
  c.join(m2, c2);
  c.join(m3, c3);
  auto targets = [&](const std::string& scope) {
    auto r = b.call("GET", "/v1/applications/" + A + "/publish-targets?scope=" + scope);
    REQUIRE_MESSAGE(r.status == 200, r.body);
    auto j = r.json();
    return ids(j, "target_id");
  };
  CHECK(targets("cluster") == std::set<std::string>{c1, c2});
  CHECK(targets("server") == std::set<std::string>{s1, s2});
  std::string p1 = c.publish(A, "cluster", c1);
  c.publish(A, "server", s1);
  CHECK(targets("cluster") == std::set<std::string>{c2});
  CHECK(targets("server") == std::set<std::string>{s2});
  CHECK(b.call("GET", "/v1/applications/" + A + "/publish-targets").status == 400);
  CHECK(b.call("GET", "/v1/applications/" + A + "/publish-targets?scope=galaxy").status == 400);
  CHECK(b.call("GET", "/v1/applications/nope/publish-targets?scope=server").status == 404);

  auto [alice, at] = b.user("alice");
  auto authz = [&](const std::string& scope) {
    auto r = b.call("GET", "/v1/publications/" + p1 + "/authorize-targets?user_id=" + alice +
                               "&scope=" + scope);
    REQUIRE_MESSAGE(r.status == 200, r.body);
    auto j = r.json();
    return ids(j, "target_id");
  };
  CHECK(authz("cluster") == std::set<std::string>{c1});
  CHECK(authz("server") == std::set<std::string>{s1});
  c.authorize(alice, A, "cluster", c1);
  CHECK(authz("cluster").empty());
  CHECK(authz("server") == std::set<std::string>{s1});
  c.authorize(alice, A, "server", s1);
  CHECK(authz("server").empty());
  CHECK(b.call("GET", "/v1/publications/" + p1 + "/authorize-targets").status == 400);
  CHECK(b.call("GET", "/v1/publications/" + p1 + "/authorize-targets?user_id=nobody").status == 404);

  auto ent = b.call("GET", "/v1/me/entitlements", nullptr, at);
  REQUIRE(ent.status == 200);
  auto ej = ent.json();
  REQUIRE(ej["items"].size() == 1);
  CHECK(ej["items"][0]["application_id"] == A);
  CHECK(ej["items"][0]["name"] == "A");
  REQUIRE(ej["items"][0]["where"].size() == 2);
  CHECK(ej["items"][0]["where"][0]["scope"] == "server");
  CHECK(ej["items"][0]["where"][0]["name"] == "s1");
  CHECK(ej["items"][0]["where"][1]["scope"] == "cluster");
  CHECK(ej["items"][0]["where"][1]["name"] == "c1");
  auto [bob, bt] = b.user("bob");
  CHECK(b.call("GET", "/v1/me/entitlements", nullptr, bt).json()["items"].empty());

  // Filters and cascades: unpublishing removes its authorizations.
  {
    auto j = b.call("GET", "/v1/authorizations?user_id=" + alice).json();
    CHECK(j["items"].size() == 2);
    auto pj = b.call("GET", "/v1/publications?application_id=" + A + "&scope=cluster").json();
    CHECK(ids(pj) == std::set<std::string>{p1});
  }
  CHECK(b.call("DELETE", "/v1/publications/" + p1).status == 204);
  CHECK(b.call("GET", "/v1/authorizations?user_id=" + alice).json()["items"].size() == 1);
  CHECK(b.call("GET", "/v1/publications/" + p1).status == 404);
  // Paging over servers: 2 per page, every server once.
  std::set<std::string> seen;
  std::string cursor;
  for (int i = 0; i < 10; ++i) {
    auto r = b.call("GET", "/v1/servers?limit=2" + (cursor.empty() ? "" : "&cursor=" + cursor));
    REQUIRE(r.status == 200);
    auto j = r.json();
    for (const auto& s : j["items"]) CHECK(seen.insert(s["id"].get<std::string>()).second);
    if (j["next_cursor"].is_null()) break;
    cursor = j["next_cursor"];
  }
  CHECK(seen.size() == 5);
}

TEST_CASE("launch refusals: not authorized, disabled service, stale load; why this server") {
  TestBroker b;
  Cloud c{b};
  std::string cl = c.cluster("c", {{"policy", "least_sessions"}});
  std::string s1 = c.server("s1", "10.0.4.1", {"A"});
  std::string s2 = c.server("s2", "10.0.4.2", {"A"});
  std::string A = c.app(s1, "A");
  c.join(s1, cl);
  c.join(s2, cl);
  c.publish(A, "cluster", cl);
  auto [alice, at] = b.user("alice");
  auto [bob, bt] = b.user("bob");
  refused(b, "POST", "/v1/launches", {{"application_id", A}}, 409, "not_authorized", at);
  refused(b, "POST", "/v1/launches", {{"application_id", "nope"}}, 404, "application_not_found",
          at);
  c.authorize(alice, A, "cluster", cl);
  c.load(s1, 0.2, 0.2, 5);
  c.load(s2, 0.2, 0.2, 1);

  // Maintenance on s2: it is excluded, s1 is chosen.
  auto srv = b.call("GET", "/v1/servers/" + s2);
  auto patched = b.call("PATCH", "/v1/servers/" + s2, {{"remote_app_service", "disabled"}},
                        TestBroker::kAdminToken, {{"If-Match", srv.header("etag")}});
  REQUIRE_MESSAGE(patched.status == 200, patched.body);
  CHECK(patched.json()["remote_app_service"] == "disabled");
  auto l1 = b.call("POST", "/v1/launches", {{"application_id", A}}, at);
  REQUIRE_MESSAGE(l1.status == 201, l1.body);
  CHECK(l1.json()["server"]["id"] == s1);
  std::string session = l1.json()["session_id"];

  // Why this server: policy, candidates with scores, exclusions with reasons.
  auto why = b.call("GET", "/v1/sessions/" + session, nullptr, at);
  REQUIRE(why.status == 200);
  auto wj = why.json()["why"];
  CHECK(wj["policy"]["intra_target"] == "least_sessions");
  CHECK(wj["choice"]["server_id"] == s1);
  CHECK(wj["choice"]["server_name"] == "s1");
  CHECK(wj["choice"]["scope"] == "cluster");
  REQUIRE(wj["candidates"].size() == 1);
  CHECK(wj["candidates"][0]["score"] == 5.0);
  REQUIRE(wj["excluded"].size() == 1);
  CHECK(wj["excluded"][0]["server_id"] == s2);
  CHECK(wj["excluded"][0]["reason"] == "remote_app_service_disabled");
  // 404 for another user, 200 for the admin; bob's list is empty.
  CHECK(b.call("GET", "/v1/sessions/" + session, nullptr, bt).status == 404);
  CHECK(b.call("GET", "/v1/sessions/" + session).status == 200);
  CHECK(b.call("GET", "/v1/sessions", nullptr, bt).json()["items"].empty());
  CHECK(b.call("GET", "/v1/sessions").json()["items"].size() == 1);

  // Both disabled: no candidate, the reason of each exclusion in the detail.
  auto s1v = b.call("GET", "/v1/servers/" + s1);
  CHECK(b.call("PATCH", "/v1/servers/" + s1, {{"remote_app_service", "disabled"}},
               TestBroker::kAdminToken, {{"If-Match", s1v.header("etag")}})
            .status == 200);
  uint64_t before = last_position(b);
  auto l2 = b.call("POST", "/v1/launches", {{"application_id", A}}, at);
  CHECK(l2.status == 409);
  CHECK(l2.json()["reason"] == "no_candidate");
  CHECK(l2.json()["detail"].get<std::string>().find("remote-app service disabled") !=
        std::string::npos);
  CHECK(last_position(b) == before);

  // Enabled again but the load reports go stale.
  CHECK(b.call("PATCH", "/v1/servers/" + s1, {{"remote_app_service", "enabled"}}).status == 200);
  CHECK(b.call("PATCH", "/v1/servers/" + s2, {{"remote_app_service", "enabled"}}).status == 200);
  CHECK(b.call("POST", "/v1/launches", {{"application_id", A}}, at).status == 201);
  b.advance_clock_ms(120'000);
  before = last_position(b);
  auto l3 = b.call("POST", "/v1/launches", {{"application_id", A}}, at);
  CHECK(l3.status == 409);
  CHECK(l3.json()["reason"] == "no_candidate");
  CHECK(l3.json()["detail"].get<std::string>().find("load report stale") != std::string::npos);
  CHECK(last_position(b) == before);
  c.load(s2, 0.5, 0.5, 0);
  auto l4 = b.call("POST", "/v1/launches", {{"application_id", A}}, at);
  REQUIRE(l4.status == 201);
  CHECK(l4.json()["server"]["id"] == s2);

  // An enrolled agent reports its server's load by heartbeat; a user's token is no agent
  // credential, and an agent's credential cannot launch.
  auto agent = atrium::testing::enroll_agent(b, {{"server_id", s1}}, "m-s1");
  REQUIRE(atrium::testing::agent_call(b, agent, "register").status == 200);
  CHECK(atrium::testing::agent_call(b, agent, "heartbeat", atrium::testing::beat()).status == 200);
  CHECK(b.call("POST", "/v1/agents/" + agent.id + "/heartbeat", atrium::testing::beat(), at)
            .status == 401);
  CHECK(b.call("POST", "/v1/servers/" + s1 + "/report",
               {{"cpu_load", 0.1}, {"memory_load", 0.1}, {"sessions", 0}}, at)
            .status == 403);
  CHECK(b.call("POST", "/v1/launches", {{"application_id", A}}, agent.credential).status == 401);
  CHECK(b.call("GET", "/v1/clusters", nullptr, at).status == 403);
}

TEST_CASE("If-Match on cluster and server PATCH") {
  TestBroker b;
  Cloud c{b};
  std::string cl = c.cluster("c");
  std::string s = c.server("s", "10.0.5.1");
  for (const std::string& path : {"/v1/clusters/" + cl, "/v1/servers/" + s}) {
    CAPTURE(path);
    auto g = b.call("GET", path);
    REQUIRE(g.status == 200);
    CHECK(g.header("etag") == "\"1\"");
    bool is_cluster = path.find("clusters") != std::string::npos;
    json change = is_cluster ? json{{"placement", {{"policy", "round_robin"}}}} : json{{"cpus", 16}};
    refused(b, "PATCH", path, change, 412, "version_mismatch", TestBroker::kAdminToken,
            {{"If-Match", "\"7\""}});
    refused(b, "PATCH", path, change, 400, "invalid_header", TestBroker::kAdminToken,
            {{"If-Match", "seven"}});
    auto ok = b.call("PATCH", path, change, TestBroker::kAdminToken, {{"If-Match", "\"1\""}});
    REQUIRE_MESSAGE(ok.status == 200, ok.body);
    CHECK(ok.header("etag") == "\"2\"");
    if (is_cluster) {
      CHECK(ok.json()["placement"]["policy"] == "round_robin");
    } else {
      CHECK(ok.json()["cpus"] == 16);
    }
    // The old version is now stale.
    refused(b, "PATCH", path, change, 412, "version_mismatch", TestBroker::kAdminToken,
            {{"If-Match", "\"1\""}});
  }
  refused(b, "PATCH", "/v1/clusters/" + cl, {{"placement", {{"policy", "random"}}}}, 400,
          "invalid_placement");
  refused(b, "PATCH", "/v1/clusters/" + cl,
          {{"placement", {{"weights", {{"cpu", -1}}}}}}, 400, "invalid_placement");
  refused(b, "PATCH", "/v1/servers/" + s, {{"remote_app_service", "maybe"}}, 400, "invalid_body");
  // Delete with If-Match too.
  refused(b, "DELETE", "/v1/servers/" + s, nullptr, 412, "version_mismatch",
          TestBroker::kAdminToken, {{"If-Match", "\"1\""}});
  CHECK(b.call("DELETE", "/v1/servers/" + s, nullptr, TestBroker::kAdminToken,
               {{"If-Match", "\"2\""}}).status == 204);
  CHECK(b.call("GET", "/v1/servers/" + s).status == 404);
  CHECK(b.call("DELETE", "/v1/clusters/" + cl).status == 204);
  CHECK(b.call("GET", "/v1/clusters/" + cl).status == 404);
}

TEST_CASE("bad input on every POST: unknown field, wrong type, not JSON -> 400, nothing appended") {
  TestBroker b;
  Cloud c{b};
  std::string cl = c.cluster("c");
  std::string s = c.server("s", "10.0.6.1", {"A"});
  std::string A = c.app(s, "A");
  std::string p = c.publish(A, "server", s);
  auto [alice, at] = b.user("alice");
  struct Case {
    std::string path;
    json good;
    std::string token;
  };
  std::vector<Case> cases = {
      {"/v1/clusters", {{"name", "x"}}, TestBroker::kAdminToken},
      {"/v1/servers",
       {{"name", "y"}, {"address", "10.0.0.9"}, {"os_type", "linux"}, {"cpus", 2}},
       TestBroker::kAdminToken},
      {"/v1/servers/" + s + "/join", {{"cluster_id", cl}}, TestBroker::kAdminToken},
      {"/v1/servers/" + s + "/applications",
       {{"name", "B"}, {"executable_path", "/usr/bin/b"}},
       TestBroker::kAdminToken},
      {"/v1/servers/" + s + "/report",
       {{"cpu_load", 0.5}, {"memory_load", 0.5}, {"sessions", 1}},
       TestBroker::kAdminToken},
      {"/v1/publications",
       {{"application_id", A}, {"scope", "cluster"}, {"target_id", cl}},
       TestBroker::kAdminToken},
      {"/v1/authorizations",
       {{"user_id", alice}, {"application_id", A}, {"scope", "server"}, {"target_id", s}},
       TestBroker::kAdminToken},
      {"/v1/launches", {{"application_id", A}}, at},
  };
  for (const auto& k : cases) {
    CAPTURE(k.path);
    json unknown = k.good;
    unknown["surprise"] = 1;
    refused(b, "POST", k.path, unknown, 400, "invalid_body", k.token);
    for (auto it = k.good.begin(); it != k.good.end(); ++it) {
      json wrong = k.good;
      wrong[it.key()] = it.value().is_string() ? json(42) : json("forty-two");
      CAPTURE(it.key());
      refused(b, "POST", k.path, wrong, 400, "invalid_body", k.token);
    }
    uint64_t before = last_position(b);
    auto r = atrium::testing::http(b.port(), "POST", k.path, "{\"name\": ",
                                   {{"Authorization", "Bearer " + k.token},
                                    {"Content-Type", "application/json"}});
    CHECK(r.status == 400);
    r = atrium::testing::http(b.port(), "POST", k.path, "[1,2]",
                              {{"Authorization", "Bearer " + k.token},
                               {"Content-Type", "application/json"}});
    CHECK(r.status == 400);
    CHECK(last_position(b) == before);
  }
  // Bad values the domain refuses keep their reasons.
  refused(b, "POST", "/v1/servers/" + s + "/report",
          {{"cpu_load", 1.5}, {"memory_load", 0.5}, {"sessions", 1}}, 400, "invalid_body");
  refused(b, "POST", "/v1/servers",
          {{"name", "z"}, {"address", "has space"}, {"os_type", "linux"}}, 400, "invalid_address");
  refused(b, "POST", "/v1/clusters", {{"name", "c"}}, 409, "cluster_name_taken");
  refused(b, "POST", "/v1/servers/" + s + "/report",
          {{"cpu_load", 0.1}, {"memory_load", 0.1}, {"sessions", 0},
           {"inventory", {{"apps", {"bad id!"}}, {"users", json::array()}}}},
          400, "invalid_id");
  refused(b, "POST", "/v1/servers/" + s + "/report",
          {{"cpu_load", 0.1}, {"memory_load", 0.1}, {"sessions", 0},
           {"inventory", {{"apps", 3}, {"users", json::array()}}}},
          400, "invalid_body");
  // Query parameters.
  CHECK(b.call("GET", "/v1/servers?standalone=perhaps").status == 400);
  CHECK(b.call("GET", "/v1/publications?scope=everywhere").status == 400);
  CHECK(b.call("GET", "/v1/servers?limit=0").status == 400);
  CHECK(b.call("GET", "/v1/servers/" + s + "?as_of=abc").status == 400);
  CHECK(p.size() > 0);
}

TEST_CASE("9.8: DELETE /v1/sessions/{id} logs off an application session; GET and lists show it") {
  TestBroker b;
  Cloud c{b};
  std::string s1 = c.server("s1", "10.0.5.1", {"A"});
  std::string A = c.app(s1, "A");
  c.publish(A, "server", s1);
  auto [alice, at] = b.user("alice");
  auto [bob, bt] = b.user("bob");
  c.authorize(alice, A, "server", s1);
  c.load(s1, 0.1, 0.1, 0);
  auto l = b.call("POST", "/v1/launches", {{"application_id", A}}, at);
  REQUIRE_MESSAGE(l.status == 201, l.body);
  CHECK(l.json()["state"] == "active");
  std::string id = l.json()["session_id"];
  auto g = b.call("GET", "/v1/sessions/" + id, nullptr, at);
  CHECK(g.json()["state"] == "active");
  CHECK(g.json()["ended_at_ms"].is_null());
  CHECK(b.call("GET", "/v1/servers/" + s1).json()["launches_since_report"] == 1);

  // Another user: 404 and nothing appended; no such session: 404.
  refused(b, "DELETE", "/v1/sessions/" + id, nullptr, 404, "not_found", bt);
  refused(b, "DELETE", "/v1/sessions/nope", nullptr, 404, "not_found", at);
  // The owner logs off: 204, one ApplicationSessionEnded event.
  uint64_t before = last_position(b);
  auto d = b.call("DELETE", "/v1/sessions/" + id, nullptr, at);
  CHECK_MESSAGE(d.status == 204, d.body);
  CHECK(last_position(b) == before + 1);
  auto ev = b.call("GET", "/v1/events?type=ApplicationSessionEnded").json()["items"];
  REQUIRE(ev.size() == 1);
  CHECK(ev[0]["stream"] == "session-" + id);
  CHECK(ev[0]["schema_version"] == 1);
  CHECK(ev[0]["actor"] == alice);
  CHECK(ev[0]["data"]["reason"] == "logoff");
  g = b.call("GET", "/v1/sessions/" + id, nullptr, at);
  REQUIRE(g.status == 200);
  CHECK(g.json()["state"] == "ended");
  CHECK(g.json()["end_reason"] == "logoff");
  CHECK(g.json()["ended_at_ms"].is_number());
  CHECK(g.header("etag") == "\"2\"");
  // The ended launch no longer counts on the server.
  CHECK(b.call("GET", "/v1/servers/" + s1).json()["launches_since_report"] == 0);
  // Again (owner or admin): 204, nothing appended.
  before = last_position(b);
  CHECK(b.call("DELETE", "/v1/sessions/" + id, nullptr, at).status == 204);
  CHECK(b.call("DELETE", "/v1/sessions/" + id).status == 204);
  CHECK(last_position(b) == before);

  // An admin may end another user's session; lists filter on each kind's states.
  auto l2 = b.call("POST", "/v1/launches", {{"application_id", A}}, at);
  REQUIRE(l2.status == 201);
  std::string id2 = l2.json()["session_id"];
  CHECK(b.call("GET", "/v1/sessions?state=active", nullptr, at).json()["items"].size() == 1);
  CHECK(b.call("GET", "/v1/sessions?state=ended&kind=application", nullptr, at)
            .json()["items"]
            .size() == 1);
  CHECK(b.call("DELETE", "/v1/sessions/" + id2).status == 204);
  auto ended = b.call("GET", "/v1/sessions?state=ended", nullptr, at).json()["items"];
  CHECK(ended.size() == 2);
  for (const auto& s : ended) CHECK(s["state"] == "ended");
  CHECK(b.call("GET", "/v1/sessions?state=active", nullptr, at).json()["items"].empty());
  auto bad = b.call("GET", "/v1/sessions?state=gone", nullptr, at);
  CHECK(bad.status == 400);
  CHECK(bad.json()["reason"] == "invalid_query");
  // as_of shows the session as it was before the logoff.
  auto past =
      b.call("GET", "/v1/sessions/" + id + "?as_of=" + std::to_string(before - 1), nullptr, at);
  CHECK(past.json()["state"] == "active");
  CHECK(replayed_json(b) == state_json(b));
}

// The broker's agent endpoints over HTTP on loopback (issue 11): enrollment tokens, enroll,
// soft and hard registration (upgraded with no request from the agent), heartbeats that stay
// out of the log, the miss past interval x grace and the start-up grace, rejections with
// Retry-After counted in metrics and logged at most once per interval, placement skipping a
// server whose agent is not hard-registered (agent_unregistered), revocation and re-enrollment.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "api/daemon.h"
#include "support/agents.h"
#include "support/pool_fixture.h"
#include "support/stderr_capture.h"
#include "support/test_support.h"

using atrium::testing::agent_call;
using atrium::testing::beat;
using atrium::testing::enroll_agent;
using atrium::testing::occurrences;
using atrium::testing::StderrCapture;
using atrium::testing::TestBroker;
using nlohmann::json;

namespace {

uint64_t last_position(TestBroker& b) {
  return b.daemon().store().last_position();
}

std::string server(TestBroker& b, const std::string& name, const std::string& address) {
  auto r = b.call("POST", "/v1/servers",
                  {{"name", name},
                   {"address", address},
                   {"os_type", "linux"},
                   {"os_version", "12"},
                   {"cpus", 4},
                   {"memory_mb", 8192}});
  REQUIRE_MESSAGE(r.status == 201, r.body);
  return r.json()["id"];
}

// The value of one sample line of /metrics (0 when absent).
double metric(TestBroker& b, const std::string& sample) {
  auto m = b.call("GET", "/metrics", nullptr, "");
  std::istringstream in(m.body);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(sample + " ", 0) == 0) return std::stod(line.substr(sample.size() + 1));
  }
  return 0;
}

std::string registration(TestBroker& b, const std::string& id) {
  auto r = b.call("GET", "/v1/agents/" + id);
  REQUIRE_MESSAGE(r.status == 200, r.body);
  return r.json()["registration"];
}

// A rejection: the status, the reason, problem+json and a Retry-After of whole seconds.
void rejected(const atrium::testing::HttpReply& r, int status, const std::string& reason) {
  CHECK_MESSAGE(r.status == status, r.body);
  CHECK(r.json()["reason"] == reason);
  CHECK(r.header("content-type").find("application/problem+json") == 0);
  std::string ra = r.header("retry-after");
  REQUIRE_MESSAGE(!ra.empty(), reason);
  CHECK(std::stol(ra) >= 1);
}

}  // namespace

TEST_CASE(
    "11: enrollment tokens: shown once, kept hashed, uses and expiry; enroll answers {id, "
    "credential}") {
  TestBroker b;
  std::string s1 = server(b, "s1", "10.0.11.1");
  // A server has one agent: a token bound to it enrolls one machine; a kind token, several.
  auto t = b.call("POST", "/v1/agents/enrollment-tokens", {{"kind", "server"}, {"uses", 2}});
  REQUIRE_MESSAGE(t.status == 201, t.body);
  std::string token = t.json()["token"];
  CHECK(t.json().contains("id"));
  CHECK(t.json().contains("expires_at"));
  CHECK(t.header("cache-control") == "no-store");
  // The list never shows the token (only its hash is kept, and not shown either).
  auto list = b.call("GET", "/v1/agents/enrollment-tokens");
  REQUIRE(list.status == 200);
  CHECK(list.body.find(token) == std::string::npos);
  json enroll{{"token", token},
              {"hostname", "h1"},
              {"os", "linux"},
              {"agent_version", "t"},
              {"machine_id", "m1"}};
  auto e1 = b.call("POST", "/v1/agents/enroll", enroll, "");
  REQUIRE_MESSAGE(e1.status == 201, e1.body);
  CHECK(e1.json()["registration"] == "enrolled");
  CHECK(e1.json()["server_id"].is_null());
  CHECK(e1.json()["kind"] == "server");
  std::string cred = e1.json()["credential"];
  CHECK(b.call("GET", "/v1/agents/" + e1.json()["id"].get<std::string>()).body.find(cred) ==
        std::string::npos);
  enroll["machine_id"] = "m2";
  CHECK(b.call("POST", "/v1/agents/enroll", enroll, "").status == 201);
  // Two uses spent: the third is refused, with Retry-After.
  enroll["machine_id"] = "m3";
  rejected(b.call("POST", "/v1/agents/enroll", enroll, ""), 401, "enrollment_token_invalid");
  // An expired token is refused; so is a revoked one.
  auto t2 =
      b.call("POST", "/v1/agents/enrollment-tokens", {{"kind", "server"}, {"expires_in_s", 60}});
  auto t3 = b.call("POST", "/v1/agents/enrollment-tokens", {{"kind", "vm"}});
  REQUIRE(t2.status == 201);
  REQUIRE(t3.status == 201);
  CHECK(b.call("DELETE", "/v1/agents/enrollment-tokens/" + t3.json()["id"].get<std::string>())
            .status == 204);
  b.advance_clock_ms(61'000);
  enroll["token"] = t2.json()["token"];
  rejected(b.call("POST", "/v1/agents/enroll", enroll, ""), 401, "enrollment_token_invalid");
  enroll["token"] = t3.json()["token"];
  rejected(b.call("POST", "/v1/agents/enroll", enroll, ""), 401, "enrollment_token_invalid");
  // Bad input is a 400 naming the field, never a 500.
  auto bad = b.call("POST", "/v1/agents/enrollment-tokens", {{"kind", "printer"}});
  CHECK(bad.status == 400);
  CHECK(b.call("POST", "/v1/agents/enrollment-tokens", {{"uses", 0}}).status == 400);
  CHECK(b.call("POST", "/v1/agents/enroll", {{"token", token}}, "").status == 400);
}

TEST_CASE(
    "11: soft until bound, hard at the next heartbeat with no new request; the answer's fields") {
  TestBroker b;
  auto a = enroll_agent(b, {{"kind", "server"}}, "m-soft");
  // Heartbeats before registering are refused (not_registered).
  rejected(agent_call(b, a, "heartbeat", beat()), 409, "not_registered");
  auto r = agent_call(b, a, "register");
  REQUIRE_MESSAGE(r.status == 200, r.body);
  json j = r.json();
  CHECK(j["registration"] == "soft");
  CHECK(j["heartbeat_interval_s"] == 30.0);
  CHECK(j["grace_factor"] == 3);
  REQUIRE(j["brokers"].is_array());
  // The broker it reached (as its Host header named it).
  CHECK(j["brokers"][0][0].get<std::string>().rfind("http://127.0.0.1", 0) == 0);
  CHECK(j["config"]["kind"] == "server");
  CHECK_FALSE(j["config"].contains("remote_apps"));  // nothing brokered to a soft agent
  std::string cv = j["config_version"];
  CHECK(registration(b, a.id) == "soft");
  auto hb = agent_call(b, a, "heartbeat",
                       {{"cpu_load", 0.1}, {"memory_load", 0.2}, {"config_version", cv}});
  REQUIRE_MESSAGE(hb.status == 200, hb.body);
  CHECK(hb.json()["registration"] == "soft");
  CHECK_FALSE(hb.json().contains("config"));  // unchanged: not sent again
  // The admin adds the server and binds the agent: hard, said by the next heartbeat's answer.
  std::string s1 = server(b, "s1", "10.0.11.2");
  auto bound = b.call("POST", "/v1/agents/" + a.id + "/bind", {{"server_id", s1}});
  REQUIRE_MESSAGE(bound.status == 200, bound.body);
  CHECK(bound.json()["registration"] == "hard");
  b.advance_clock_ms(30'000);
  hb = agent_call(b, a, "heartbeat",
                  {{"cpu_load", 0.3}, {"memory_load", 0.4}, {"config_version", cv}});
  REQUIRE_MESSAGE(hb.status == 200, hb.body);
  CHECK(hb.json()["registration"] == "hard");
  // The configuration changed with the binding: sent once, with the remote lists.
  REQUIRE(hb.json().contains("config"));
  CHECK(hb.json()["config"].contains("remote_apps"));
  CHECK(hb.json()["config"].contains("remote_users"));
  CHECK(hb.json()["config_version"] != cv);
  // The admin's views: registration, binding, last heartbeat and its load.
  auto g = b.call("GET", "/v1/agents/" + a.id).json();
  CHECK(g["server_id"] == s1);
  CHECK(g["last_heartbeat_at"].is_string());
  CHECK(g["load"]["cpu_load"] == 0.3);
  auto list = b.call("GET", "/v1/agents?registration=hard").json();
  REQUIRE(list["items"].size() == 1);
  CHECK(list["items"][0]["id"] == a.id);
  CHECK(b.call("GET", "/v1/agents?registration=soft").json()["items"].empty());
}

TEST_CASE(
    "11: heartbeats append nothing; a miss past interval x grace unregisters once, the next "
    "heartbeat re-registers") {
  TestBroker b;
  std::string s1 = server(b, "s1", "10.0.11.3");
  auto a = enroll_agent(b, {{"server_id", s1}}, "m-miss");
  REQUIRE(agent_call(b, a, "register").json()["registration"] == "hard");
  // Steady state: 50 heartbeats (30 s apart on the broker's clock) append no event.
  uint64_t before = last_position(b);
  for (int i = 0; i < 50; ++i) {
    b.advance_clock_ms(30'000);
    REQUIRE(agent_call(b, a, "heartbeat", beat(0.01 * i, 0.5)).status == 200);
  }
  CHECK(last_position(b) == before);
  CHECK(metric(b, "atrium_agent_heartbeats_total") >= 50);
  // Silent for more than 30 s x 3: one AgentUnregistered, and only one.
  b.advance_clock_ms(91'000);
  b.daemon().agent_monitor()->run_once();
  CHECK(registration(b, a.id) == "unregistered");
  CHECK(b.call("GET", "/v1/agents/" + a.id).json()["reason"] == "missed_heartbeats");
  CHECK(last_position(b) == before + 1);
  b.daemon().agent_monitor()->run_once();
  CHECK(last_position(b) == before + 1);
  CHECK(metric(b, "atrium_agents{kind=\"server\",registration=\"unregistered\"}") == 1);
  // Back without an admin.
  auto hb = agent_call(b, a, "heartbeat", beat());
  REQUIRE_MESSAGE(hb.status == 200, hb.body);
  CHECK(hb.json()["registration"] == "hard");
  CHECK(registration(b, a.id) == "hard");
}

TEST_CASE("11: a broker that restarts waits a full grace period before declaring anyone missing") {
  TestBroker b;
  std::string s1 = server(b, "s1", "10.0.11.4");
  auto a = enroll_agent(b, {{"server_id", s1}}, "m-restart");
  REQUIRE(agent_call(b, a, "register").status == 200);
  REQUIRE(agent_call(b, a, "heartbeat", beat()).status == 200);
  b.advance_clock_ms(60'000);  // the agent was last heard 60 s ago...
  b.restart();                 // ... and the broker forgot it (liveness is not history)
  b.advance_clock_ms(80'000);  // 140 s since its heartbeat, 80 s since the start
  b.daemon().agent_monitor()->run_once();
  CHECK(registration(b, a.id) == "hard");
  REQUIRE(agent_call(b, a, "heartbeat", beat()).status == 200);  // it was alive
  b.advance_clock_ms(80'000);
  b.daemon().agent_monitor()->run_once();
  CHECK(registration(b, a.id) == "hard");
  // A truly silent agent is missed once the grace after the start has passed.
  b.advance_clock_ms(20'000);
  b.daemon().agent_monitor()->run_once();
  CHECK(registration(b, a.id) == "unregistered");
}

TEST_CASE(
    "11: rejections answer 4xx with Retry-After, are counted by reason, and logged once per "
    "interval") {
  TestBroker b;
  std::string s1 = server(b, "s1", "10.0.11.5");
  auto a = enroll_agent(b, {{"server_id", s1}}, "m-rej-a");
  auto other = enroll_agent(b, {{"kind", "server"}}, "m-rej-b");
  REQUIRE(agent_call(b, a, "register").status == 200);
  REQUIRE(agent_call(b, a, "heartbeat", beat()).status == 200);
  std::string hb = "/v1/agents/" + a.id + "/heartbeat";
  double unknown0 = metric(b, "atrium_agent_rejections_total{reason=\"agent_unknown\"}");
  std::string log;
  {
    StderrCapture cap;
    for (int i = 0; i < 20; ++i) {
      rejected(b.call("POST", hb, beat(), "atr_not_a_credential_0123456789abcdef"), 401,
               "agent_unknown");
    }
    log = cap.text();
  }
  CHECK(metric(b, "atrium_agent_rejections_total{reason=\"agent_unknown\"}") == unknown0 + 20);
  CHECK_MESSAGE(occurrences(log, "refused (agent_unknown)") == 1, log);
  rejected(b.call("POST", hb, beat(), ""), 401, "credential_missing");
  rejected(b.call("POST", hb, beat(), other.credential), 403, "agent_mismatch");
  // Too early: 429 with the time left.
  auto early = agent_call(b, a, "heartbeat", beat());
  rejected(early, 429, "heartbeat_too_early");
  CHECK(std::stol(early.header("retry-after")) <= 8);
  CHECK(metric(b, "atrium_agent_rejections_total{reason=\"heartbeat_too_early\"}") == 1);
  // The rejections appended nothing; heartbeat handling is timed.
  CHECK(metric(b, "atrium_agent_heartbeat_duration_seconds_count") >= 1);
  // Revoked: the credential stops at once, with Retry-After.
  CHECK(b.call("DELETE", "/v1/agents/" + a.id).status == 204);
  rejected(agent_call(b, a, "register"), 403, "agent_revoked");
  CHECK(registration(b, a.id) == "revoked");
  CHECK(metric(b, "atrium_agent_rejections_total{reason=\"agent_revoked\"}") == 1);
}

TEST_CASE("11: re-enrolling the same machine replaces the credential at once") {
  TestBroker b;
  std::string s1 = server(b, "s1", "10.0.11.6");
  auto first = enroll_agent(b, {{"server_id", s1}}, "m-same");
  auto second = enroll_agent(b, {{"server_id", s1}}, "m-same");
  CHECK(first.id == second.id);
  CHECK(first.credential != second.credential);
  rejected(agent_call(b, first, "register"), 401, "agent_unknown");
  CHECK(agent_call(b, second, "register").status == 200);
}

TEST_CASE("11: placement skips a server whose agent is not hard-registered (agent_unregistered)") {
  TestBroker b;
  auto post = [&](const std::string& path, const json& body, int want = 201) {
    auto r = b.call("POST", path, body);
    REQUIRE_MESSAGE(r.status == want, path << ": " << r.body);
    return r.json();
  };
  std::string cl =
      post("/v1/clusters", {{"name", "c"}, {"placement", {{"policy", "least_sessions"}}}})["id"];
  std::string s1 = server(b, "s1", "10.0.11.7");
  std::string s2 = server(b, "s2", "10.0.11.8");  // no agent: today's behaviour
  std::string app;
  for (const auto& s : {s1, s2}) {
    json a = post("/v1/servers/" + s + "/applications", {{"name", "Calc"},
                                                         {"executable_path", "/usr/bin/calc"},
                                                         {"description", "c"},
                                                         {"desktop_file", ""}});
    if (app.empty()) app = a["id"];
    post("/v1/servers/" + s + "/join", {{"cluster_id", cl}}, 200);
  }
  post("/v1/publications", {{"application_id", app}, {"scope", "cluster"}, {"target_id", cl}});
  auto [alice, at] = b.user("alice");
  post("/v1/authorizations",
       {{"user_id", alice}, {"application_id", app}, {"scope", "cluster"}, {"target_id", cl}});
  auto agent = enroll_agent(b, {{"server_id", s1}}, "m-place");
  REQUIRE(agent_call(b, agent, "register").status == 200);
  REQUIRE(agent_call(b, agent, "heartbeat", beat(0.1, 0.1)).status == 200);
  post("/v1/servers/" + s2 + "/report", {{"cpu_load", 0.9}, {"memory_load", 0.9}, {"sessions", 9}},
       200);
  // Hard: s1 (its heartbeat's load) wins over the busier s2.
  auto l1 = b.call("POST", "/v1/launches", {{"application_id", app}}, at);
  REQUIRE_MESSAGE(l1.status == 201, l1.body);
  CHECK(l1.json()["server"]["id"] == s1);
  // Silent past the grace: unregistered, and the launch goes to s2 with the reason recorded.
  b.advance_clock_ms(91'000);
  post("/v1/servers/" + s2 + "/report", {{"cpu_load", 0.9}, {"memory_load", 0.9}, {"sessions", 9}},
       200);
  b.daemon().agent_monitor()->run_once();
  REQUIRE(registration(b, agent.id) == "unregistered");
  auto l2 = b.call("POST", "/v1/launches", {{"application_id", app}}, at);
  REQUIRE_MESSAGE(l2.status == 201, l2.body);
  CHECK(l2.json()["server"]["id"] == s2);
  auto why =
      b.call("GET", "/v1/sessions/" + l2.json()["session_id"].get<std::string>(), nullptr, at)
          .json()["why"];
  bool excluded = false;
  for (const auto& e : why["excluded"]) {
    if (e["server_id"] == s1 && e["reason"] == "agent_unregistered") excluded = true;
  }
  CHECK_MESSAGE(excluded, why.dump());
}

TEST_CASE("11: a 10-minute simulated fleet leaves no heartbeat or load event in the log") {
  TestBroker b;
  std::vector<atrium::testing::EnrolledAgent> fleet;
  for (int i = 0; i < 10; ++i) {
    std::string s = server(b, "fleet-" + std::to_string(i), "10.0.12." + std::to_string(i + 1));
    fleet.push_back(enroll_agent(b, {{"server_id", s}}, "fleet-m" + std::to_string(i)));
  }
  for (int i = 0; i < 10; ++i) {  // soft ones too: VM agents on no VM yet
    fleet.push_back(enroll_agent(b, {{"kind", "vm"}}, "fleet-vm" + std::to_string(i)));
  }
  for (auto& a : fleet) REQUIRE(agent_call(b, a, "register").status == 200);
  uint64_t steady = last_position(b);
  for (int t = 0; t < 20; ++t) {  // 20 x 30 s
    b.advance_clock_ms(30'000);
    for (auto& a : fleet) {
      auto r = agent_call(b, a, "heartbeat", beat(0.01 * t, 0.3));
      REQUIRE_MESSAGE(r.status == 200, r.body);
    }
    b.daemon().agent_monitor()->run_once();
  }
  CHECK(last_position(b) == steady);
  // Replay the whole log: nothing of liveness in it.
  std::map<std::string, int> types;
  auto n = b.daemon().store().scan(0, 0, [&](const atrium::eventstore::RecordedEvent& e) {
    types[e.type]++;
    return true;
  });
  REQUIRE(n.ok());
  for (const auto& [type, count] : types) {
    CHECK_MESSAGE(type.find("Heartbeat") == std::string::npos, type);
    CHECK_MESSAGE(type.find("LoadReported") == std::string::npos, type);
  }
  CHECK(types["AgentRegistered"] == 20);
  b.restart();
  CHECK(registration(b, fleet[0].id) == "hard");
  CHECK(registration(b, fleet[10].id) == "soft");
}

namespace {

atrium::adapters::DisplayClientEvent display(const json& vm, const std::string& phase, int port) {
  atrium::adapters::DisplayClientEvent ev;
  ev.name = vm["name"];
  ev.uuid = vm["uuid"];
  ev.phase = phase;
  ev.family = "ipv4";
  ev.remote_address = "192.0.2.45";
  ev.remote_service = std::to_string(port);
  ev.auth_scheme = "spice";
  return ev;
}

}  // namespace

TEST_CASE(
    "11: a golden-image agent binds to its VM by UUID, gets the pool's policy, and its "
    "user's login drives the desktop session over the display") {
  using namespace std::chrono_literals;
  TestBroker b(atrium::testing::fast_workers);
  std::string h = atrium::testing::add_fixture_host(b);
  std::string p = atrium::testing::make_test_pool(
      b, h,
      {{"min_ready", 1},
       {"max_size", 2},
       {"policy", {{"clipboard", false}, {"idle_timeout_s", 600}}}});
  auto [uid, tok] = b.user("vera");
  REQUIRE(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", uid}}).status == 201);
  atrium::testing::poll(b, "/v1/pools/" + p, [](const json& j) { return j["size"]["ready"] == 1; });
  auto l = b.call("POST", "/v1/launches", {{"pool_id", p}}, tok);
  REQUIRE_MESSAGE(l.status == 201, l.body);
  std::string sid = l.json()["session_id"];
  json vm = b.call("GET", "/v1/vms/" + l.json()["vm_id"].get<std::string>()).json();
  // The clone enrolls with a pool token and its SMBIOS UUID: bound to its VM, hard, policy.
  auto a = enroll_agent(b, {{"pool_id", p}, {"uses", 10}}, vm["uuid"]);
  CHECK(a.enrolled["vm_id"] == vm["id"]);
  auto r = agent_call(b, a, "register");
  REQUIRE_MESSAGE(r.status == 200, r.body);
  CHECK(r.json()["registration"] == "hard");
  CHECK(r.json()["config"]["pool_id"] == p);
  CHECK(r.json()["config"]["policy"]["clipboard"] == false);
  CHECK(r.json()["config"]["policy"]["idle_timeout_s"] == 600);
  // The viewer connects: the display says connected (the agent has not spoken yet).
  auto* hosts = b.daemon().host_manager();
  hosts->inject_display_event(h, display(vm, "connect", 41000));
  hosts->inject_display_event(h, display(vm, "initialize", 41000));
  atrium::testing::poll(b, "/v1/sessions/" + sid,
                        [](const json& j) { return j["state"] == "connected"; });
  // Vera logs in inside the desktop: the agent speaks.
  auto hb = agent_call(b, a, "heartbeat",
                       {{"cpu_load", 0.1},
                        {"memory_load", 0.2},
                        {"sessions", {{{"user", "vera"}, {"state", "active"}}}}});
  REQUIRE_MESSAGE(hb.status == 200, hb.body);
  CHECK(b.call("GET", "/v1/sessions/" + sid).json()["agent_signal"] == true);
  // The viewer closes, vera stays logged in: still connected.
  hosts->inject_display_event(h, display(vm, "disconnect", 41000));
  std::this_thread::sleep_for(300ms);
  CHECK(b.call("GET", "/v1/sessions/" + sid).json()["state"] == "connected");
  // She logs out: disconnected by the agent.
  b.advance_clock_ms(8'000);
  hb = agent_call(b, a, "heartbeat",
                  {{"cpu_load", 0.1}, {"memory_load", 0.2}, {"sessions", json::array()}});
  REQUIRE_MESSAGE(hb.status == 200, hb.body);
  auto hist = b.call("GET", "/v1/streams/desktop-session-" + sid).json()["items"];
  CHECK(hist.back()["type"] == "DesktopSessionDisconnected");
  CHECK(hist.back()["data"]["reason"] == "agent_logged_out");
}

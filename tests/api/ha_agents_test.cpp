// Several atriumd on one PostgreSQL log (issue 12) with agents and the routes that do not
// write through Api::run: on a follower every write is forwarded whole to the leader and
// answered once the follower applied it (agent enrollment, registration, inventory, TOTP
// enrollment, confirmation and recovery codes); heartbeats are answered by any broker and
// relayed to the leader in batches (forwarded one by one without a cluster secret); the
// registration answer lists the cluster's brokers; an agent whose broker is SIGKILLed moves
// to another with its credential, and nobody is unregistered or registered again. Real
// processes (atriumd, atrium-agent) on a real PostgreSQL the test starts (tools/pg_test.sh).
#include <doctest/doctest.h>
#include <liboath/oath.h>

#include <ctime>

#include "api/forwarder.h"
#include "api/totp.h"
#include "support/pg_cluster.h"

using namespace std::chrono_literals;
using atrium::testing::ClusterBroker;
using atrium::testing::http;
using atrium::testing::HttpReply;
using atrium::testing::kClusterSecret;
using atrium::testing::PgCluster;
using atrium::testing::TempDir;
using atrium::testing::child::auth;
using atrium::testing::child::events_after;
using atrium::testing::child::eventually;
using atrium::testing::child::slurp;
using nlohmann::json;

namespace {

std::vector<std::pair<std::string, std::string>> bearer(const std::string& token) {
  return {{"Authorization", "Bearer " + token}};
}

HttpReply post(ClusterBroker& b, const std::string& path, const json& body,
               const std::vector<std::pair<std::string, std::string>>& h = auth()) {
  return http(b.c.port, "POST", path, body.is_null() ? "" : body.dump(), h, 10000);
}

std::string make_server(ClusterBroker& b, const std::string& name) {
  auto r = post(b, "/v1/servers",
                {{"name", name},
                 {"address", "10.9.1.7"},
                 {"os_type", "linux"},
                 {"os_version", "12"},
                 {"cpus", 4},
                 {"memory_mb", 8192}});
  REQUIRE_MESSAGE(r.status == 201, r.body);
  return r.json()["id"];
}

std::string enrollment_token(ClusterBroker& b, const std::string& server_id) {
  auto t = post(b, "/v1/agents/enrollment-tokens", {{"server_id", server_id}});
  REQUIRE_MESSAGE(t.status == 201, t.body);
  return t.json()["token"];
}

json beat(double cpu, json sessions = json::array()) {
  return {
      {"cpu_load", cpu}, {"memory_load", 0.5}, {"disk_free_bytes", 1000}, {"sessions", sessions}};
}

std::string raw_secret(const std::string& base32) {
  char* out = nullptr;
  size_t len = 0;
  REQUIRE(oath_base32_decode(base32.data(), base32.size(), &out, &len) == OATH_OK);
  std::string s(out, len);
  std::free(out);
  return s;
}

// Agent events (by type) of the log after position `after`, read on broker `b`.
std::vector<std::string> agent_events(ClusterBroker& b, uint64_t after) {
  std::vector<std::string> out;
  for (auto& e : events_after(b.c.port, after)) {
    const std::string t = e["type"];
    if (t.rfind("Agent", 0) == 0) out.push_back(t + " " + e["stream"].get<std::string>());
  }
  return out;
}

uint64_t head_position(ClusterBroker& b) {
  auto r = http(b.c.port, "GET", "/v1/cluster", "", auth());
  REQUIRE(r.status == 200);
  return r.json()["position"];
}

}  // namespace

TEST_CASE("12: agent writes through a follower reach the leader and read back there") {
  PgCluster cl(3, {"--agent-heartbeat-s=1"});
  if (cl.pg == nullptr) return;
  const int leader = cl.leader();
  REQUIRE(leader >= 0);
  ClusterBroker& l = cl[leader];
  ClusterBroker& f = cl[(leader + 1) % 3];
  ClusterBroker& g = cl[(leader + 2) % 3];

  // An app server's agent, all of it through the follower: enrolled, registered (hard: its
  // server is in the catalog), with every broker of the cluster in the answer.
  const std::string server = make_server(f, "ha-app-1");
  auto e = post(
      f, "/v1/agents/enroll",
      {{"token", enrollment_token(f, server)}, {"hostname", "app-1"}, {"machine_id", "m-ha-1"}},
      {});
  REQUIRE_MESSAGE(e.status == 201, e.body);
  const std::string id = e.json()["id"], cred = e.json()["credential"];
  CHECK(http(f.c.port, "GET", "/v1/agents/" + id, "", auth()).status == 200);  // read your write
  auto reg = post(f, "/v1/agents/" + id + "/register", json::object(), bearer(cred));
  REQUIRE_MESSAGE(reg.status == 200, reg.body);
  CHECK(reg.json()["registration"] == "hard");
  std::set<std::string> listed;
  const json groups = reg.json()["brokers"];
  REQUIRE(groups.size() == 1);  // one group: any broker will do
  for (const auto& u : groups[0]) listed.insert(u.get<std::string>());
  CHECK(listed == std::set<std::string>{l.url(), f.url(), g.url()});

  // A heartbeat through the follower: answered there, and the leader (whose monitor decides
  // who is missing) has it within a relay period.
  auto hb = post(f, "/v1/agents/" + id + "/heartbeat", beat(0.25), bearer(cred));
  REQUIRE_MESSAGE(hb.status == 200, hb.body);
  CHECK(hb.json()["registration"] == "hard");
  CHECK(eventually(
      [&] {
        auto a = http(l.c.port, "GET", "/v1/agents/" + id, "", auth()).json();
        return a["load"].is_object() && a["load"]["cpu_load"] == 0.25;
      },
      5s));
  auto inv = post(
      f, "/v1/agents/" + id + "/inventory",
      {{"applications", json::array({{{"name", "Calc"}, {"executable_path", "/usr/bin/calc"}}})},
       {"remote_apps", json::array()},
       {"remote_users", json::array()}},
      bearer(cred));
  CHECK_MESSAGE(inv.status == 200, inv.body);
  // Silent past the grace: the leader unregisters it. Its next heartbeat, through the
  // follower, needs the writer (registered again): forwarded, and read back on the follower.
  REQUIRE(eventually(
      [&] {
        return http(f.c.port, "GET", "/v1/agents/" + id, "", auth()).json()["registration"] ==
               "unregistered";
      },
      15s));
  auto back = post(f, "/v1/agents/" + id + "/heartbeat", beat(0.5), bearer(cred));
  REQUIRE_MESSAGE(back.status == 200, back.body);
  CHECK(back.json()["registration"] == "hard");
  CHECK(http(f.c.port, "GET", "/v1/agents/" + id, "", auth()).json()["registration"] == "hard");
}

TEST_CASE("12: TOTP enrollment, confirmation, codes and recovery codes through followers") {
  PgCluster cl(3, {});
  if (cl.pg == nullptr) return;
  const int leader = cl.leader();
  REQUIRE(leader >= 0);
  ClusterBroker& f = cl[(leader + 1) % 3];
  ClusterBroker& g = cl[(leader + 2) % 3];
  // Enrollment and confirmation on one follower, a code and a recovery code at login on
  // another (one step and one recovery code are good once across the cluster).
  auto u = post(f, "/v1/users", {{"name", "tina"}, {"password", "password-tina"}});
  REQUIRE_MESSAGE(u.status == 201, u.body);
  auto login = [&](ClusterBroker& b, json extra) {
    json body{{"name", "tina"}, {"password", "password-tina"}};
    for (auto& [k, v] : extra.items()) body[k] = v;
    return post(b, "/v1/auth/login", body, {});
  };
  auto tok = login(f, json::object());
  REQUIRE_MESSAGE(tok.status == 200, tok.body);
  const std::string token = tok.json()["token"];
  auto en = post(f, "/v1/me/totp", nullptr, bearer(token));
  REQUIRE_MESSAGE(en.status == 201, en.body);
  CHECK(en.header("cache-control") == "no-store");
  const std::string raw = raw_secret(en.json()["secret"]);
  const auto code_now = [&] { return *atrium::api::totp_code(raw, std::time(nullptr)); };
  auto ok = post(f, "/v1/me/totp/confirm", {{"code", code_now()}}, bearer(token));
  REQUIRE_MESSAGE(ok.status == 200, ok.body);
  const json recovery = ok.json()["recovery_codes"];
  REQUIRE(recovery.size() == 10);
  CHECK(login(g, json::object()).json()["reason"] == "totp_required");
  auto with_code = login(g, {{"totp_code", code_now()}});
  CHECK_MESSAGE(with_code.status == 200, with_code.body);
  auto replay = login(f, {{"totp_code", with_code.status == 200 ? code_now() : "x"}});
  CHECK(replay.status == 401);  // the same step again, through another broker
  auto rc = login(f, {{"recovery_code", recovery[2]}});
  CHECK_MESSAGE(rc.status == 200, rc.body);
  CHECK(login(g, {{"recovery_code", recovery[2]}}).json()["reason"] == "totp_invalid");
}

TEST_CASE("12: agents keep their registration when the broker they use is SIGKILLed") {
  const int heartbeat_s = 1, grace = 3;
  PgCluster cl(3, {"--agent-heartbeat-s=" + std::to_string(heartbeat_s),
                   "--agent-grace-factor=" + std::to_string(grace)});
  if (cl.pg == nullptr) return;
  const int leader = cl.leader();
  REQUIRE(leader >= 0);
  ClusterBroker& l = cl[leader];
  ClusterBroker& f = cl[(leader + 1) % 3];

  // Agent 1: the real atrium-agent, configured with the leader alone.
  TempDir adir;
  const std::string alog = adir.str() + "/agent.log";
  const std::string token1 = enrollment_token(l, make_server(l, "ha-app-a"));
  pid_t agent = ::fork();
  if (agent == 0) {
    ::setenv("XDG_DATA_DIRS", (adir.str() + "/none").c_str(), 1);
    ::setenv("XDG_DATA_HOME", (adir.str() + "/none").c_str(), 1);
    int fd = ::open(alog.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) ::dup2(fd, 2);
    std::vector<std::string> args = {"atrium-agent",
                                     "--brokers=(" + l.url() + ")",
                                     "--enrollment-token=" + token1,
                                     "--state-dir=" + adir.str() + "/state",
                                     "--discover-apps=false",
                                     "--hostname=app-a",
                                     "--machine-id=m-ha-a",
                                     "--request-timeout-s=2"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(ATRIUM_AGENT_PATH, argv.data());
    ::_exit(127);
  }
  struct StopAgent {
    pid_t pid;
    ~StopAgent() {
      ::kill(pid, SIGKILL);
      atrium::testing::child::wait_exit(pid);
    }
  } stop_agent{agent};
  REQUIRE_MESSAGE(eventually([&] { return slurp(alog).find(": hard") != std::string::npos; }, 15s),
                  slurp(alog));
  // The registration answer gave it the whole cluster.
  CHECK(eventually(
      [&] { return slurp(alog).find("brokers from the registration answer") != std::string::npos; },
      5s));
  const std::string agent1 =
      json::parse(slurp(adir.str() + "/state/credential.json"), nullptr, false)
          .value("agent_id", "");
  REQUIRE_FALSE(agent1.empty());

  // Agent 2: this test acting as one, enrolled and heartbeating through the follower.
  auto e = post(f, "/v1/agents/enroll",
                {{"token", enrollment_token(f, make_server(f, "ha-app-b"))},
                 {"hostname", "app-b"},
                 {"machine_id", "m-ha-b"}},
                {});
  REQUIRE_MESSAGE(e.status == 201, e.body);
  const std::string agent2 = e.json()["id"], cred2 = e.json()["credential"];
  REQUIRE(post(f, "/v1/agents/" + agent2 + "/register", json::object(), bearer(cred2)).status ==
          200);
  std::atomic<bool> stop{false};
  std::atomic<int> beats_ok{0}, beats_failed{0};
  std::thread beater([&] {
    while (!stop) {
      auto r = post(f, "/v1/agents/" + agent2 + "/heartbeat", beat(0.1), bearer(cred2));
      (r.status == 200 ? beats_ok : beats_failed)++;
      std::this_thread::sleep_for(std::chrono::milliseconds(heartbeat_s * 1000));
    }
  });
  struct Join {
    std::atomic<bool>& stop;
    std::thread& t;
    ~Join() {
      stop = true;
      if (t.joinable()) t.join();
    }
  } join{stop, beater};

  // Longer than the grace: both are registered on the leader's watch (agent 2 by relay only).
  std::this_thread::sleep_for(std::chrono::seconds(heartbeat_s * grace + 1));
  for (const auto& id : {agent1, agent2}) {
    auto a = http(l.c.port, "GET", "/v1/agents/" + id, "", auth()).json();
    CHECK_MESSAGE(a["registration"] == "hard", id << ": " << a.dump());
  }
  const uint64_t before = head_position(f);
  CHECK(agent_events(f, before).empty());

  // SIGKILL the broker agent 1 uses (the leader): it goes on with another broker, with its
  // credential, after one failed heartbeat.
  const size_t log_before = slurp(alog).size();
  const auto killed_at = std::chrono::steady_clock::now();
  PgCluster::kill(l);
  REQUIRE(eventually([&] { return cl.leader(2s) >= 0; }, 10s));
  CHECK_MESSAGE(eventually(
                    [&] {
                      const std::string after = slurp(alog).substr(log_before);
                      return after.find("stopped answering") != std::string::npos &&
                             after.find("registered with") != std::string::npos;
                    },
                    10s),
                slurp(alog).substr(log_before));
  MESSAGE("atrium-agent registered with another broker "
          << std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now() - killed_at)
                 .count()
          << " ms after the SIGKILL");
  // Two grace periods later nobody was unregistered, enrolled or registered again.
  std::this_thread::sleep_for(std::chrono::seconds(2 * heartbeat_s * grace));
  const int now_leader = cl.leader();
  REQUIRE(now_leader >= 0);
  ClusterBroker& nl = cl[now_leader];
  for (const auto& id : {agent1, agent2}) {
    auto a = http(nl.c.port, "GET", "/v1/agents/" + id, "", auth()).json();
    CHECK_MESSAGE(a["registration"] == "hard", id << ": " << a.dump());
    CHECK_FALSE(a["last_heartbeat_at"].is_null());
  }
  auto storm = agent_events(nl, before);
  CHECK_MESSAGE(storm.empty(), storm.size() << " agent events after the kill, e.g. "
                                            << (storm.empty() ? "" : storm.front()));
  const std::string alog_after = slurp(alog).substr(log_before);
  CHECK(alog_after.find("enrolled") == std::string::npos);
  CHECK(beats_ok.load() >= 2 * grace);
  MESSAGE("agent 2 heartbeats through the follower: " << beats_ok.load() << " accepted, "
                                                      << beats_failed.load() << " refused");
}

TEST_CASE("12: without a cluster secret a follower forwards each heartbeat to the leader") {
  PgCluster cl(2, {"--agent-heartbeat-s=1"}, false);
  if (cl.pg == nullptr) return;
  const int leader = cl.leader();
  REQUIRE(leader >= 0);
  ClusterBroker& l = cl[leader];
  ClusterBroker& f = cl[1 - leader];
  CHECK(slurp(f.log).find("no --cluster-secret") != std::string::npos);
  auto e = post(f, "/v1/agents/enroll",
                {{"token", enrollment_token(f, make_server(f, "ha-app-n"))},
                 {"hostname", "app-n"},
                 {"machine_id", "m-ha-n"}},
                {});
  REQUIRE_MESSAGE(e.status == 201, e.body);
  const std::string id = e.json()["id"], cred = e.json()["credential"];
  REQUIRE(post(f, "/v1/agents/" + id + "/register", json::object(), bearer(cred)).status == 200);
  auto hb = post(f, "/v1/agents/" + id + "/heartbeat", beat(0.75), bearer(cred));
  REQUIRE_MESSAGE(hb.status == 200, hb.body);
  // Forwarded, not relayed: the leader had it before the follower answered.
  auto a = http(l.c.port, "GET", "/v1/agents/" + id, "", auth()).json();
  CHECK(a["load"].is_object());
  CHECK(a["load"]["cpu_load"] == 0.75);
  // A relay signed with any secret is refused: this cluster has none.
  const std::string batch = R"({"beats":[]})";
  auto r = post(
      l, "/v1/cluster/liveness", json::parse(batch),
      {{"X-Atrium-Peer-Auth", atrium::api::peer_sign("", "liveness", batch, std::time(nullptr))}});
  CHECK(r.status == 401);
}

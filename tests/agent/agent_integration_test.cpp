// The real atrium-agent binary against a real atriumd on loopback (issue 11): enrollment,
// soft registration upgraded to hard with no request from the agent, heartbeats, SIGKILL ->
// unregistered after the grace (brokering skips its server) and back after a restart, a dead
// first broker and a dead first group, a broker restart that unregisters nobody, what the
// credential may call, desktop-entry discovery and the remote-app lists applied until the
// server is in sync, --once and SIGTERM. Short heartbeat intervals come from atriumd's flags.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "support/child_daemon.h"
#include "support/test_support.h"

using atrium::testing::http;
using atrium::testing::HttpReply;
using atrium::testing::TempDir;
using nlohmann::json;
using namespace std::chrono_literals;

using atrium::testing::child::free_port;

namespace {

constexpr const char* kToken = "atr_agent_integration_token_0123456789abcdef";

pid_t spawn(const char* path, std::vector<std::string> args, const std::string& log,
            const std::vector<std::pair<std::string, std::string>>& env) {
  pid_t pid = ::fork();
  if (pid == 0) {
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 2);
      ::dup2(fd, 1);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(path, argv.data());
    ::_exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream b;
  b << in.rdbuf();
  return b.str();
}

// One atriumd child on a fixed port (kept across restarts).
struct Broker {
  TempDir dir;
  uint16_t port = free_port();
  pid_t pid = -1;
  std::vector<std::string> flags;
  explicit Broker(std::vector<std::string> f) : flags(std::move(f)) { start(); }
  ~Broker() { stop(); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
  void start() {
    std::vector<std::string> args = {"atriumd",
                                     "serve",
                                     "--listen=127.0.0.1:" + std::to_string(port),
                                     "--data-dir=" + dir.str() + "/data",
                                     "--access-log=off",
                                     "--default-host=none",
                                     "--host-reconciler=off"};
    args.insert(args.end(), flags.begin(), flags.end());
    pid =
        spawn(ATRIUMD_PATH, args, dir.str() + "/atriumd.log", {{"ATRIUM_BOOTSTRAP_TOKEN", kToken}});
    for (int i = 0; i < 500; ++i) {
      if (http(port, "GET", "/readyz").status == 200) return;
      std::this_thread::sleep_for(20ms);
    }
    FAIL("atriumd did not become ready: " << slurp(dir.str() + "/atriumd.log"));
  }
  void stop() {
    if (pid <= 0) return;
    ::kill(pid, SIGTERM);
    wait_exit(pid);
    pid = -1;
  }
  HttpReply call(const std::string& method, const std::string& path, const json& body = nullptr,
                 const std::string& token = kToken) {
    std::vector<std::pair<std::string, std::string>> h;
    if (!token.empty()) h.emplace_back("Authorization", "Bearer " + token);
    return http(port, method, path, body.is_null() ? "" : body.dump(), h);
  }
  // Polls GET path until pred holds; FAILs after limit.
  template <typename F>
  json until(const std::string& path, F pred, std::chrono::milliseconds limit = 20s) {
    json last;
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      auto r = call("GET", path);
      last = r.json();
      if (r.status == 200 && pred(last)) return last;
      std::this_thread::sleep_for(50ms);
    }
    FAIL("not reached on " << path << ": " << last.dump());
    return last;
  }
  std::vector<json> events(const std::string& type) {
    std::vector<json> out;
    auto r = call("GET", "/v1/events?limit=1000&type=" + type);
    json page = r.json();
    for (const auto& e : page["items"]) out.push_back(e);
    return out;
  }
};

std::string token_for(Broker& b, const json& body) {
  auto t = b.call("POST", "/v1/agents/enrollment-tokens", body);
  REQUIRE_MESSAGE(t.status == 201, t.body);
  return t.json()["token"];
}

// One atrium-agent child with its own state dir and an XDG environment of fixture dirs only.
struct AgentProc {
  TempDir dir;
  pid_t pid = -1;
  std::vector<std::string> args;
  std::string log() const { return dir.str() + "/agent.log"; }
  std::string state() const { return dir.str() + "/state"; }
  std::string apps() const { return dir.str() + "/apps"; }
  AgentProc(const std::string& brokers, const std::string& token, const std::string& machine,
            std::vector<std::string> extra = {}) {
    std::filesystem::create_directories(apps());
    args = {"atrium-agent", "--brokers",    brokers, "--state-dir", state(),          "--apps-dir",
            apps(),         "--machine-id", machine, "--hostname",  "host-" + machine};
    if (!token.empty()) args.insert(args.end(), {"--enrollment-token", token});
    args.insert(args.end(), extra.begin(), extra.end());
  }
  ~AgentProc() { kill(SIGTERM); }
  std::vector<std::pair<std::string, std::string>> env() const {
    return {{"HOME", dir.str() + "/home"},
            {"XDG_DATA_DIRS", dir.str() + "/none"},
            {"XDG_DATA_HOME", dir.str() + "/home/share"}};
  }
  void start() { pid = spawn(ATRIUM_AGENT_PATH, args, log(), env()); }
  int run_once() {
    auto a = args;
    a.push_back("--once");
    return wait_exit(spawn(ATRIUM_AGENT_PATH, a, log(), env()));
  }
  int kill(int sig) {
    if (pid <= 0) return 0;
    ::kill(pid, sig);
    int rc = wait_exit(pid);
    pid = -1;
    return rc;
  }
  std::string id() const {
    json j = json::parse(slurp(state() + "/credential.json"), nullptr, false);
    return j.is_object() ? j.value("agent_id", "") : "";
  }
  std::string credential() const {
    json j = json::parse(slurp(state() + "/credential.json"), nullptr, false);
    return j.is_object() ? j.value("credential", "") : "";
  }
};

void desktop_entry(const std::string& dir, const std::string& file, const std::string& body) {
  std::ofstream(dir + "/" + file) << "[Desktop Entry]\nType=Application\n" << body;
}

}  // namespace

TEST_CASE(
    "11: enroll, soft, hard with no new request, heartbeats; SIGKILL unregisters; back after a "
    "restart") {
  Broker b({"--agent-heartbeat-s=1", "--agent-grace-factor=2"});
  auto tok = token_for(b, {{"kind", "server"}});
  AgentProc a(b.url(), tok, "machine-a");
  a.start();
  json ag = b.until("/v1/agents", [](const json& j) {
    return j["items"].size() == 1 && j["items"][0]["registration"] == "soft";
  })["items"][0];
  std::string id = ag["id"];
  // The credential file is 0600.
  CHECK((std::filesystem::status(a.state() + "/credential.json").permissions() &
         std::filesystem::perms::all) ==
        (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write));
  // The admin adds the server to the catalog and binds the agent: hard, with no request from it.
  auto s = b.call("POST", "/v1/servers",
                  {{"name", "app-1"}, {"address", "10.0.0.1"}, {"os_type", "linux"}});
  REQUIRE(s.status == 201);
  std::string sid = s.json()["id"];
  REQUIRE(b.call("POST", "/v1/agents/" + id + "/bind", {{"server_id", sid}}).status == 200);
  CHECK(b.call("GET", "/v1/agents/" + id).json()["registration"] == "hard");
  b.until("/v1/agents/" + id, [](const json& j) { return j["load"].is_object(); });
  // Heartbeats: the last one keeps moving, the server shows its live load, the log stays still.
  json first = b.call("GET", "/v1/agents/" + id).json();
  std::this_thread::sleep_for(2200ms);
  json later = b.call("GET", "/v1/agents/" + id).json();
  CHECK(later["last_heartbeat_at_ms"].get<int64_t>() >
        first["last_heartbeat_at_ms"].get<int64_t>());
  CHECK(later["version"] == first["version"]);
  CHECK(b.call("GET", "/v1/servers/" + sid).json()["load_source"] == "live");
  auto log = slurp(a.log());
  CHECK(log.find("registered with " + b.url() + ": soft") != std::string::npos);
  CHECK(log.find("registration is now hard") != std::string::npos);

  // Published and authorized for a user: a launch goes there while the agent lives...
  std::string app = b.call("POST", "/v1/servers/" + sid + "/applications",
                           {{"name", "Editor"}, {"executable_path", "/usr/bin/editor"}})
                        .json()["id"];
  REQUIRE(b.call("POST", "/v1/publications",
                 {{"application_id", app}, {"scope", "server"}, {"target_id", sid}})
              .status == 201);
  auto u = b.call("POST", "/v1/users", {{"name", "alice"}, {"password", "password-alice"}});
  std::string uid = u.json()["id"];
  REQUIRE(
      b.call("POST", "/v1/authorizations",
             {{"user_id", uid}, {"application_id", app}, {"scope", "server"}, {"target_id", sid}})
          .status == 201);
  std::string ut = http(b.port, "POST", "/v1/auth/login",
                        json{{"name", "alice"}, {"password", "password-alice"}}.dump())
                       .json()["token"];
  auto launch = [&] {
    return http(b.port, "POST", "/v1/launches", json{{"application_id", app}}.dump(),
                {{"Authorization", "Bearer " + ut}});
  };
  CHECK(launch().status == 201);
  // ... SIGKILL: unregistered after interval x grace, and brokering skips its server.
  a.kill(SIGKILL);
  auto t0 = std::chrono::steady_clock::now();
  b.until(
      "/v1/agents/" + id, [](const json& j) { return j["registration"] == "unregistered"; }, 10s);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("unregistered " << secs << " s after SIGKILL (interval 1 s x grace 2)");
  CHECK(secs < 6);
  auto unreg = b.events("AgentUnregistered");
  REQUIRE(unreg.size() == 1);
  CHECK(unreg[0]["data"]["reason"] == "missed_heartbeats");
  auto refused = launch();
  CHECK(refused.status == 409);
  CHECK(refused.json()["detail"].get<std::string>().find("not hard-registered") !=
        std::string::npos);
  // Restarted: registered again, without an admin.
  a.start();
  b.until(
      "/v1/agents/" + id, [](const json& j) { return j["registration"] == "hard"; }, 10s);
  CHECK(launch().status == 201);
  // SIGTERM: a clean stop.
  CHECK(a.kill(SIGTERM) == 0);
}

TEST_CASE(
    "11: a dead first broker and a dead first group: the agent registers with a live one at once") {
  Broker b({"--agent-heartbeat-s=1"});
  std::string dead1 = "http://127.0.0.1:" + std::to_string(free_port());
  std::string dead2 = "http://127.0.0.1:" + std::to_string(free_port());
  {
    AgentProc a("(" + dead1 + " " + b.url() + ")", token_for(b, {{"kind", "server"}}),
                "m-dead-first");
    auto t0 = std::chrono::steady_clock::now();
    CHECK(a.run_once() == 0);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(secs < 10);
    MESSAGE("registered past a dead broker in " << secs << " s");
  }
  {
    AgentProc a("(" + dead1 + " " + dead2 + ")(" + b.url() + ")",
                token_for(b, {{"kind", "server"}}), "m-dead-group");
    CHECK(a.run_once() == 0);
    auto log = slurp(a.log());
    CHECK(log.find("broker " + dead1 + " is down") != std::string::npos);
    CHECK(log.find("broker " + dead2 + " is down") != std::string::npos);
    CHECK(log.find("enrolled as agent") != std::string::npos);
  }
  // Every broker down: --once gives up after one round (exit 1).
  AgentProc none("(" + dead1 + ")(" + dead2 + ")", "atr_whatever", "m-none");
  CHECK(none.run_once() == 1);
}

TEST_CASE("11: a broker restart does not unregister live agents") {
  // Grace 4 s x 3 = 12 s: longer than an agent's worst retry delay (10 s).
  Broker b({"--agent-heartbeat-s=4", "--agent-grace-factor=3"});
  auto s = b.call("POST", "/v1/servers",
                  {{"name", "app-r"}, {"address", "10.0.0.2"}, {"os_type", "linux"}});
  std::string sid = s.json()["id"];
  AgentProc a(b.url(), token_for(b, {{"server_id", sid}}), "m-restart");
  a.start();
  std::string id = b.until("/v1/agents", [](const json& j) {
    return j["items"].size() == 1 && j["items"][0]["registration"] == "hard";
  })["items"][0]["id"];
  b.stop();
  b.start();
  // Past the grace since the restart: still hard, nothing unregistered; heartbeats arrive.
  std::this_thread::sleep_for(13s);
  json ag = b.call("GET", "/v1/agents/" + id).json();
  CHECK(ag["registration"] == "hard");
  CHECK(ag["last_heartbeat_at_ms"].is_number());
  CHECK(b.events("AgentUnregistered").empty());
}

TEST_CASE("11: an agent credential acts only on its own agent endpoints") {
  Broker b({"--agent-heartbeat-s=1"});
  AgentProc a1(b.url(), token_for(b, {{"kind", "server"}}), "m-one");
  AgentProc a2(b.url(), token_for(b, {{"kind", "server"}}), "m-two");
  REQUIRE(a1.run_once() == 0);
  REQUIRE(a2.run_once() == 0);
  std::string cred = a1.credential();
  REQUIRE(!cred.empty());
  auto other = b.call("POST", "/v1/agents/" + a2.id() + "/heartbeat",
                      {{"cpu_load", 0.1}, {"memory_load", 0.1}}, cred);
  CHECK(other.status == 403);
  CHECK(other.json()["reason"] == "agent_mismatch");
  CHECK(!other.header("retry-after").empty());
  for (const auto& [method, path] :
       std::vector<std::pair<std::string, std::string>>{{"GET", "/v1/agents"},
                                                        {"GET", "/v1/agents/" + a1.id()},
                                                        {"GET", "/v1/users"},
                                                        {"POST", "/v1/agents/enrollment-tokens"},
                                                        {"DELETE", "/v1/agents/" + a2.id()},
                                                        {"GET", "/v1/events"}}) {
    CAPTURE(path);
    CHECK(b.call(method, path, nullptr, cred).status == 401);
  }
  CHECK(b.call("GET", "/v1/agents/" + a2.id()).json()["registration"] != "revoked");
  // Revoked: its own endpoints refuse it at once.
  REQUIRE(b.call("DELETE", "/v1/agents/" + a1.id()).status == 204);
  auto r = b.call("POST", "/v1/agents/" + a1.id() + "/register", json::object(), cred);
  CHECK(r.status == 403);
  CHECK(r.json()["reason"] == "agent_revoked");
  // Rejections are counted.
  std::string metrics = http(b.port, "GET", "/metrics").body;
  CHECK(metrics.find("atrium_agent_rejections_total{reason=\"agent_mismatch\"} 1") !=
        std::string::npos);
  CHECK(metrics.find("atrium_agent_rejections_total{reason=\"agent_revoked\"} 1") !=
        std::string::npos);
  CHECK(metrics.find("atrium_agents{kind=\"server\",registration=\"revoked\"} 1") !=
        std::string::npos);
}

TEST_CASE(
    "11: desktop entries are discovered and watched; the remote-app lists are applied until in "
    "sync") {
  Broker b({"--agent-heartbeat-s=1"});
  auto s = b.call("POST", "/v1/servers",
                  {{"name", "app-x"}, {"address", "10.0.0.3"}, {"os_type", "linux"}});
  std::string sid = s.json()["id"];
  AgentProc a(b.url(), token_for(b, {{"server_id", sid}}), "m-apps");
  desktop_entry(a.apps(), "editor.desktop",
                "Name=Editor\nExec=/usr/bin/editor %F\nComment=Edits text\n");
  desktop_entry(a.apps(), "hidden.desktop", "Name=Hidden\nExec=/bin/true\nNoDisplay=true\n");
  desktop_entry(a.apps(), "tryexec.desktop", "Name=Missing\nExec=x\nTryExec=/no/such/program\n");
  desktop_entry(a.apps(), "kde.desktop", "Name=KDE only\nExec=/bin/true\nOnlyShowIn=KDE;\n");
  a.start();
  json srv =
      b.until("/v1/servers/" + sid, [](const json& j) { return j["applications"].size() == 1; });
  std::string editor = srv["applications"][0];
  json appj = b.call("GET", "/v1/applications/" + editor).json();
  CHECK(appj["name"] == "Editor");
  CHECK(appj["executable_path"] == "/usr/bin/editor");
  // A new desktop entry is seen through inotify, before the next heartbeat is due.
  desktop_entry(a.apps(), "calc.desktop", "Name=Calc\nExec=/usr/bin/calc\n");
  srv = b.until(
      "/v1/servers/" + sid, [](const json& j) { return j["applications"].size() == 2; }, 5s);
  CHECK(srv["in_sync"] == true);
  // Publish and authorize: the desired lists change, the agent applies them, the server heals.
  REQUIRE(b.call("POST", "/v1/publications",
                 {{"application_id", editor}, {"scope", "server"}, {"target_id", sid}})
              .status == 201);
  std::string uid = b.call("POST", "/v1/users", {{"name", "bob"}}).json()["id"];
  REQUIRE(
      b.call(
           "POST", "/v1/authorizations",
           {{"user_id", uid}, {"application_id", editor}, {"scope", "server"}, {"target_id", sid}})
          .status == 201);
  srv = b.until(
      "/v1/servers/" + sid,
      [](const json& j) { return j["in_sync"] == true && !j["reported"]["apps"].empty(); }, 10s);
  CHECK(srv["reported"]["apps"] == json::array({editor}));
  CHECK(srv["reported"]["users"] == json::array({uid}));
  json lists = json::parse(slurp(a.state() + "/remote-lists.json"));
  CHECK(lists["remote_apps"][0]["id"] == editor);
  CHECK(lists["remote_users"][0]["name"] == "bob");
  // A desktop entry that goes away is removed from the server (the publication with it).
  std::filesystem::remove(a.apps() + "/calc.desktop");
  b.until(
      "/v1/servers/" + sid, [](const json& j) { return j["applications"].size() == 1; }, 5s);
}

TEST_CASE("11: a desktop-entry change is reported at once, without an early heartbeat") {
  Broker b({"--agent-heartbeat-s=30"});
  auto s = b.call("POST", "/v1/servers",
                  {{"name", "app-y"}, {"address", "10.0.0.4"}, {"os_type", "linux"}});
  std::string sid = s.json()["id"];
  AgentProc a(b.url(), token_for(b, {{"server_id", sid}}), "m-watch");
  desktop_entry(a.apps(), "editor.desktop", "Name=Editor\nExec=/usr/bin/editor\n");
  a.start();
  b.until("/v1/servers/" + sid, [](const json& j) { return j["applications"].size() == 1; });
  desktop_entry(a.apps(), "calc.desktop", "Name=Calc\nExec=/usr/bin/calc\n");
  auto t0 = std::chrono::steady_clock::now();
  b.until(
      "/v1/servers/" + sid, [](const json& j) { return j["applications"].size() == 2; }, 5s);
  MESSAGE(
      "reported " << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()
                  << " s after the change (heartbeat interval 30 s)");
  // In a subdirectory (discovery is recursive, so is the watch), also one made after the start.
  std::filesystem::create_directories(a.apps() + "/office");
  b.until(
      "/v1/servers/" + sid, [](const json& j) { return j["applications"].size() == 2; }, 5s);
  std::this_thread::sleep_for(500ms);  // the new dir's creation was reported: it is watched
  desktop_entry(a.apps() + "/office", "writer.desktop", "Name=Writer\nExec=/usr/bin/writer\n");
  b.until(
      "/v1/servers/" + sid, [](const json& j) { return j["applications"].size() == 3; }, 5s);
  auto m = b.call("GET", "/metrics", nullptr, "");
  CHECK(m.body.find("atrium_agent_rejections_total{reason=\"heartbeat_too_early\"} 0") !=
        std::string::npos);
}

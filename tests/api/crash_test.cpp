// Durability of the real daemon: SIGKILL under concurrent writes loses no acknowledged write
// and leaves no gap; SIGTERM drains and exits 0.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <iterator>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "support/test_support.h"

using atrium::testing::http;
using atrium::testing::TempDir;

namespace {

constexpr const char* kToken = "atr_crash_test_token_0123456789abcdef";

uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

struct Child {
  pid_t pid = -1;
  uint16_t port = 0;
};

Child spawn(const std::string& dir, const std::vector<std::string>& extra = {}) {
  Child c;
  c.port = free_port();
  std::vector<std::string> args = {"atriumd", "serve", "--listen=127.0.0.1:" + std::to_string(c.port),
                                   "--data-dir=" + dir, "--access-log=off"};
  args.insert(args.end(), extra.begin(), extra.end());
  c.pid = ::fork();
  if (c.pid == 0) {
    ::setenv("ATRIUM_BOOTSTRAP_TOKEN", kToken, 1);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(ATRIUMD_PATH, argv.data());
    ::_exit(127);
  }
  for (int i = 0; i < 300; ++i) {
    if (http(c.port, "GET", "/readyz").status == 200) return c;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  FAIL("atriumd did not become ready");
  return c;
}

int wait_exit(pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

std::vector<std::pair<std::string, std::string>> auth() {
  return {{"Authorization", std::string("Bearer ") + kToken}};
}

// Every event of the log, in order, through the API.
std::vector<nlohmann::json> all_events(uint16_t port) {
  std::vector<nlohmann::json> out;
  std::string cursor;
  for (;;) {
    auto r = http(port, "GET", "/v1/events?limit=1000" + (cursor.empty() ? "" : "&cursor=" + cursor), "", auth());
    REQUIRE(r.status == 200);
    auto page = r.json();
    for (auto& e : page["items"]) out.push_back(e);
    if (r.json()["next_cursor"].is_null()) break;
    cursor = r.json()["next_cursor"];
  }
  return out;
}

}  // namespace

TEST_CASE("kill -9 under concurrent writes loses no acknowledged write and leaves no gap") {
  TempDir dir;
  std::set<std::string> acked;
  std::mutex mu;
  for (int round = 0; round < 3; ++round) {
    Child c = spawn(dir.str());
    std::atomic<bool> stop{false};
    std::vector<std::thread> writers;
    for (int t = 0; t < 8; ++t) {
      writers.emplace_back([&, t] {
        for (int i = 0; !stop; ++i) {
          std::string name = "r" + std::to_string(round) + "-t" + std::to_string(t) + "-" + std::to_string(i);
          auto r = http(c.port, "POST", "/v1/users", "{\"name\":\"" + name + "\"}", auth(), 2000);
          if (r.status == 201) {
            std::lock_guard l(mu);
            acked.insert(name);
          } else if (r.status == 0) {
            break;  // the daemon is gone
          }
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    ::kill(c.pid, SIGKILL);
    stop = true;
    for (auto& w : writers) w.join();
    CHECK(wait_exit(c.pid) == -SIGKILL);
  }
  REQUIRE(acked.size() > 50);

  Child c = spawn(dir.str());
  auto events = all_events(c.port);
  std::set<std::string> present;
  for (size_t i = 0; i < events.size(); ++i) {
    CHECK(events[i]["position"].get<uint64_t>() == i + 1);  // gap-free from 1
    if (events[i]["type"] == "UserCreated") present.insert(events[i]["data"]["name"].get<std::string>());
  }
  size_t missing = 0;
  for (const auto& n : acked) missing += present.count(n) == 0;
  CHECK(missing == 0);
  MESSAGE("acknowledged writes: " << acked.size() << ", events after restart: " << events.size());

  // SIGTERM: drains and exits 0; the log then verifies.
  ::kill(c.pid, SIGTERM);
  CHECK(wait_exit(c.pid) == 0);
  std::string cmd = std::string(ATRIUMD_PATH) + " verify --data-dir=" + dir.str() + " > /dev/null";
  CHECK(atrium::testing::run_command(cmd) == 0);
}

TEST_CASE("SIGTERM under load: in-flight requests finish, the daemon exits 0") {
  TempDir dir;
  Child c = spawn(dir.str());
  std::atomic<int> ok{0}, failed_mid{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        auto r = http(c.port, "POST", "/v1/users",
                      "{\"name\":\"g" + std::to_string(t) + "-" + std::to_string(i) + "\"}", auth(), 5000);
        if (r.status == 201) ok++;
        else if (r.status == 0 || r.status == 503) break;
        else failed_mid++;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::kill(c.pid, SIGTERM);
  for (auto& t : ts) t.join();
  CHECK(wait_exit(c.pid) == 0);
  CHECK(failed_mid.load() == 0);
  Child again = spawn(dir.str());
  auto events = all_events(again.port);
  int users = 0;
  for (auto& e : events) users += e["type"] == "UserCreated" ? 1 : 0;
  CHECK(users >= ok.load() + 1);  // +1: the bootstrap admin
  ::kill(again.pid, SIGTERM);
  CHECK(wait_exit(again.pid) == 0);
}

TEST_CASE("configuration flags: pool and placement settings are accepted, bad values refused") {
  TempDir dir;
  // Accepted: the daemon starts and answers.
  Child c = spawn(dir.str() + "/ok", {"--client-timeout-s=30", "--launch-wait-s=20", "--ticket-ttl-s=60",
                                      "--spice-listen=127.0.0.1", "--placement-scope=prefer_cluster",
                                      "--placement-policy=round_robin", "--load-stale-s=45",
                                      "--load-weights=0.5,0.5,0", "--default-host=none"});
  CHECK(http(c.port, "GET", "/readyz").status == 200);
  ::kill(c.pid, SIGTERM);
  CHECK(wait_exit(c.pid) == 0);
  // Refused before anything starts: exit 2 with a message naming the flag.
  struct Row {
    std::string flag;
    std::string says;
  };
  for (const Row& row : std::vector<Row>{{"--client-timeout-s=1", "--client-timeout-s"},
                                         {"--launch-wait-s=soon", "--launch-wait-s"},
                                         {"--placement-scope=nearest", "--placement-scope"},
                                         {"--placement-policy=random", "--placement-policy"},
                                         {"--load-weights=1,2", "--load-weights"},
                                         {"--load-weights=0,0,0", "weights"}}) {
    CAPTURE(row.flag);
    std::string err = dir.str() + "/err.txt";
    std::string cmd = std::string(ATRIUMD_PATH) + " serve --data-dir=" + dir.str() + "/bad " + row.flag +
                      " 2> " + err;
    CHECK(atrium::testing::run_command(cmd) == 2);
    std::ifstream in(err);
    std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(said.find(row.says) != std::string::npos, said);
  }
}

TEST_CASE("10.4: host URI flags: --allow-test-hosts, --allow-tcp-hosts, --host-uri-params") {
  TempDir dir;
  auto add = [&](const Child& c, const std::string& uri) {
    nlohmann::json body{{"name", "h" + std::to_string(std::hash<std::string>()(uri))}, {"uri", uri}};
    return http(c.port, "POST", "/v1/hosts", body.dump(), auth()).status;
  };
  const std::string fixture = std::string("test://") + ATRIUM_SOURCE_DIR + "/tests/adapters/fixtures/host.xml";
  {
    Child c = spawn(dir.str() + "/default", {"--host-reconciler=off"});
    CHECK(add(c, fixture) == 400);
    CHECK(add(c, "qemu+tcp://kvm1/system") == 400);
    CHECK(add(c, "qemu+ssh://kvm1/system?keyfile=/k") == 400);
    CHECK(add(c, "qemu+ssh://kvm1/system") == 202);
    ::kill(c.pid, SIGTERM);
    CHECK(wait_exit(c.pid) == 0);
  }
  {
    Child c = spawn(dir.str() + "/on", {"--host-reconciler=off", "--allow-test-hosts=on",
                                        "--allow-tcp-hosts=on", "--host-uri-params=keyfile,pkipath"});
    CHECK(add(c, fixture) == 202);
    CHECK(add(c, "qemu+tcp://kvm1/system") == 202);
    CHECK(add(c, "qemu+ssh://kvm1/system?keyfile=/k") == 202);
    CHECK(add(c, "qemu+ssh://kvm1/system?command=/k") == 400);
    ::kill(c.pid, SIGTERM);
    CHECK(wait_exit(c.pid) == 0);
  }
  for (const char* flag : {"--allow-test-hosts=yes", "--allow-tcp-hosts=1", "--host-uri-params=Key-File",
                           "--host-uri-params=keyfile,,pkipath"}) {
    CAPTURE(flag);
    std::string name = std::string(flag).substr(0, std::string(flag).find('='));
    std::string err = dir.str() + "/err.txt";
    std::string cmd = std::string(ATRIUMD_PATH) + " serve --data-dir=" + dir.str() + "/bad " + flag +
                      " 2> " + err;
    CHECK(atrium::testing::run_command(cmd) == 2);
    std::ifstream in(err);
    std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(said.find(name) != std::string::npos, said);
  }
}

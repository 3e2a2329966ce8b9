// The real atriumd as a child process, for the crash, fault and kill-loop tests: spawn it on
// a free loopback port (optionally with its stderr in a file, another umask, not waiting for
// readiness), HTTP writers that record every acknowledged write, and small helpers.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/test_support.h"

namespace atrium::testing::child {

using atrium::testing::http;

inline constexpr const char* kToken = "atr_crash_test_token_0123456789abcdef";

inline uint16_t free_port() {
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

// The daemon under test; ATRIUM_TEST_ATRIUMD runs these tests against another build (e.g.
// an older one, to see a test fail there).
inline const char* atriumd() {
  const char* p = std::getenv("ATRIUM_TEST_ATRIUMD");
  return p != nullptr && *p != '\0' ? p : ATRIUMD_PATH;
}

struct SpawnOptions {
  std::vector<std::string> extra;
  std::string stderr_path;  // empty: inherit
  bool wait_ready = true;
  int umask = -1;  // >= 0: the child's umask
};

inline Child spawn_with(const std::string& dir, const SpawnOptions& o) {
  Child c;
  c.port = free_port();
  std::vector<std::string> args = {"atriumd", "serve",
                                   "--listen=127.0.0.1:" + std::to_string(c.port),
                                   "--data-dir=" + dir, "--access-log=off"};
  args.insert(args.end(), o.extra.begin(), o.extra.end());
  c.pid = ::fork();
  if (c.pid == 0) {
    ::setenv("ATRIUM_BOOTSTRAP_TOKEN", kToken, 1);
    if (o.umask >= 0) ::umask(static_cast<mode_t>(o.umask));
    if (!o.stderr_path.empty()) {
      int fd = ::open(o.stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (fd >= 0) ::dup2(fd, 2);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(atriumd(), argv.data());
    ::_exit(127);
  }
  if (!o.wait_ready) return c;
  for (int i = 0; i < 1500; ++i) {
    if (http(c.port, "GET", "/readyz").status == 200) return c;
    int st = 0;
    if (::waitpid(c.pid, &st, WNOHANG) == c.pid) {
      c.pid = -1;
      FAIL("atriumd exited before it was ready");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  FAIL("atriumd did not become ready");
  return c;
}

inline Child spawn(const std::string& dir, const std::vector<std::string>& extra = {}) {
  return spawn_with(dir, {extra, "", true, -1});
}

inline int wait_exit(pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

inline std::vector<std::pair<std::string, std::string>> auth() {
  return {{"Authorization", std::string("Bearer ") + kToken}};
}

// Every event of the log, in order, through the API.
inline std::vector<nlohmann::json> all_events(uint16_t port) {
  std::vector<nlohmann::json> out;
  std::string cursor;
  for (;;) {
    auto r =
        http(port, "GET", "/v1/events?limit=1000" + (cursor.empty() ? "" : "&cursor=" + cursor), "",
             auth());
    REQUIRE(r.status == 200);
    auto page = r.json();
    for (auto& e : page["items"]) out.push_back(e);
    if (r.json()["next_cursor"].is_null()) break;
    cursor = r.json()["next_cursor"];
  }
  return out;
}

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct Ran {
  int rc = -1;
  std::string out;  // stdout and stderr
};

inline Ran run(const std::string& args, const std::string& out_file) {
  Ran r;
  r.rc = atrium::testing::run_command("timeout -s KILL 300 " + std::string(atriumd()) + " " + args +
                                      " > " + out_file + " 2>&1");
  r.out = slurp(out_file);
  return r;
}

inline bool alive(pid_t pid) {
  int st = 0;
  return ::waitpid(pid, &st, WNOHANG) == 0;
}

// Events with position > after, in order (all pages).
inline std::vector<nlohmann::json> events_after(uint16_t port, uint64_t after) {
  std::vector<nlohmann::json> out;
  for (;;) {
    auto r = http(port, "GET", "/v1/events?limit=1000&after=" + std::to_string(after), "", auth());
    REQUIRE_MESSAGE(r.status == 200, r.body);
    auto page = r.json();
    for (auto& e : page["items"]) out.push_back(e);
    if (page["items"].empty() || page["next_cursor"].is_null()) break;
    after = out.back()["position"].get<uint64_t>();
  }
  return out;
}

inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

inline const std::vector<std::string> kQuiet = {"--default-host=none", "--host-reconciler=off"};

// Creates users over HTTP from `threads` writers until `stop`; names of the 201s go to acked.
struct Writers {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> created{0}, unavailable{0}, other{0};
  std::atomic<uint64_t> no_answer{0};  // connection failed or timed out (status 0)
  std::mutex mu;
  std::set<std::string> acked;
  std::vector<std::thread> threads;
  std::string last_other;

  void start(uint16_t port, const std::string& prefix, int n, bool stop_when_gone) {
    for (int t = 0; t < n; ++t) {
      threads.emplace_back([this, port, prefix, t, stop_when_gone] {
        for (int i = 0; !stop; ++i) {
          const std::string name = prefix + "-" + std::to_string(t) + "-" + std::to_string(i);
          auto r = http(port, "POST", "/v1/users", "{\"name\":\"" + name + "\"}", auth(), 5000);
          if (r.status == 201) {
            std::lock_guard l(mu);
            acked.insert(name);
            ++created;
          } else if (r.status == 503) {
            ++unavailable;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
          } else if (r.status == 0) {
            ++no_answer;
            if (stop_when_gone) break;  // the daemon is gone
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
          } else {
            ++other;
            {
              std::lock_guard l(mu);
              last_other = std::to_string(r.status) + " " + r.body;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
          }
        }
      });
    }
  }
  void join() {
    stop = true;
    for (auto& t : threads) t.join();
    threads.clear();
  }
  ~Writers() { join(); }
};

template <typename F>
inline bool eventually(F f, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return f();
}

}  // namespace atrium::testing::child

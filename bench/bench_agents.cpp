// Agents at scale (issue 11): N simulated agents (threads of this process, on loopback) enroll
// and register at once with a real atriumd child process, then heartbeat at the interval for a
// while, each at its own offset within the interval, like a fleet.
//
//   bench_agents [agents=10000] [interval_s=30] [seconds=60] [threads=32]
//
// Prints registrations per second, the broker's CPU (user + system, from /proc/<pid>/stat)
// while it handles the heartbeats, in cores and per 10,000 agents at a 30 s interval, the
// broker's resident memory per agent, heartbeat latency, and the events appended per minute
// in the steady state (target: 0). Each request is a fresh connection, as an agent whose
// keep-alive connection has timed out between two heartbeats.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"

using atrium::bench::http;
using atrium::bench::since;
using atrium::bench::SteadyClock;
using nlohmann::json;

using atrium::bench::pct;

namespace {

constexpr const char* kToken = "atr_bench_agents_admin_token_0123456789abcdef";

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream b;
  b << in.rdbuf();
  return b.str();
}

// utime + stime of a process, in seconds.
double cpu_seconds(pid_t pid) {
  std::string s = slurp("/proc/" + std::to_string(pid) + "/stat");
  auto close = s.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream in(s.substr(close + 2));
  std::string f;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> f; ++i) {
    if (i == 14) utime = std::stoull(f);
    if (i == 15) stime = std::stoull(f);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

long rss_kib(pid_t pid) {
  std::istringstream in(slurp("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return 0;
}

double metric(uint16_t port, const std::string& sample) {
  auto [st, body] = http(port, "GET", "/metrics", "");
  std::istringstream in(body);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(sample + " ", 0) == 0) return std::stod(line.substr(sample.size() + 1));
  }
  return 0;
}

struct Agent {
  std::string id;
  std::string credential;
};

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 10000;
  int interval_s = argc > 2 ? std::atoi(argv[2]) : 30;
  int seconds = argc > 3 ? std::atoi(argv[3]) : 60;
  int threads = argc > 4 ? std::atoi(argv[4]) : 32;
  if (n < 1 || n > 100000 || interval_s < 1 || seconds < 1 || threads < 1) {
    std::fprintf(stderr,
                 "usage: bench_agents [agents=10000] [interval_s=30] [seconds=60] [threads=32]\n");
    return 2;
  }
  auto dir = std::filesystem::temp_directory_path() /
             ("atrium-bench-agents-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  uint16_t port = static_cast<uint16_t>(20000 + ::getpid() % 20000);
  std::string listen = "--listen=127.0.0.1:" + std::to_string(port);
  std::string data = "--data-dir=" + (dir / "data").string();
  std::string hb = "--agent-heartbeat-s=" + std::to_string(interval_s);
  pid_t broker = ::fork();
  if (broker == 0) {
    ::setenv("ATRIUM_BOOTSTRAP_TOKEN", kToken, 1);
    FILE* log = std::fopen((dir / "atriumd.log").c_str(), "w");
    if (log) ::dup2(::fileno(log), 2);
    ::execl(ATRIUMD_PATH, "atriumd", "serve", listen.c_str(), data.c_str(), hb.c_str(),
            "--access-log=off", "--default-host=none", "--host-reconciler=off",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  auto stop = [&](int rc) {
    ::kill(broker, SIGTERM);
    ::waitpid(broker, nullptr, 0);
    std::filesystem::remove_all(dir);
    return rc;
  };
  bool ready = false;
  for (int i = 0; i < 500 && !ready; ++i) {
    ready = http(port, "GET", "/readyz", "").first == 200;
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (!ready) {
    std::fprintf(stderr, "atriumd did not start: %s\n", slurp(dir / "atriumd.log").c_str());
    return stop(1);
  }
  long rss0 = rss_kib(broker);
  auto tok = http(port, "POST", "/v1/agents/enrollment-tokens", kToken,
                  json{{"kind", "server"}, {"uses", n}}.dump());
  if (tok.first != 201) {
    std::fprintf(stderr, "token: %d %s\n", tok.first, tok.second.c_str());
    return stop(1);
  }
  std::string token = json::parse(tok.second)["token"];

  // Phase 1: every agent enrolls and registers at once.
  std::vector<Agent> agents(static_cast<size_t>(n));
  std::atomic<int> next{0}, failures{0};
  auto t0 = SteadyClock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i; (i = next++) < n;) {
        json body{{"token", token},
                  {"hostname", "bench-" + std::to_string(i)},
                  {"os", "linux"},
                  {"agent_version", "bench"},
                  {"machine_id", "bench-machine-" + std::to_string(i)}};
        auto e = http(port, "POST", "/v1/agents/enroll", "", body.dump());
        if (e.first != 201) {
          failures++;
          continue;
        }
        json j = json::parse(e.second);
        Agent& a = agents[static_cast<size_t>(i)];
        a.id = j["id"];
        a.credential = j["credential"];
        if (http(port, "POST", "/v1/agents/" + a.id + "/register", a.credential, "{}").first !=
            200) {
          failures++;
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  pool.clear();
  double reg_s = since(t0);
  if (failures > 0) {
    std::fprintf(stderr, "%d enrollments or registrations failed\n", failures.load());
    return stop(1);
  }
  long rss1 = rss_kib(broker);
  std::printf("agents: %d, threads: %d, heartbeat interval: %d s\n", n, threads, interval_s);
  std::printf("enroll + register: %.2f s, %.0f registrations/s\n", reg_s, n / reg_s);
  std::printf("broker memory: %ld KiB before, %ld KiB after; %.2f KiB per agent\n", rss0, rss1,
              static_cast<double>(rss1 - rss0) / n);

  // Phase 2: heartbeats, agent i at offset i/n of the interval, for `seconds`.
  double pos0 = metric(port, "atrium_log_last_position");
  double cpu0 = cpu_seconds(broker);
  std::atomic<long> ok{0}, refused{0}, late{0};
  std::mutex mu;
  std::vector<double> lat;
  auto start = SteadyClock::now();
  auto end = start + std::chrono::seconds(seconds);
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::vector<double> mine;
      json beat{{"cpu_load", 0.2},
                {"memory_load", 0.4},
                {"disk_free_bytes", 1'000'000'000},
                {"sessions", json::array()},
                {"config_version", ""}};
      std::string cv;
      for (long round = 0;; ++round) {
        for (int i = t; i < n; i += threads) {
          auto due =
              start + std::chrono::milliseconds(round * interval_s * 1000 +
                                                static_cast<long>(i) * interval_s * 1000 / n);
          if (due >= end) {
            std::lock_guard l(mu);
            lat.insert(lat.end(), mine.begin(), mine.end());
            return;
          }
          if (SteadyClock::now() > due + std::chrono::seconds(1)) late++;
          std::this_thread::sleep_until(due);
          const Agent& a = agents[static_cast<size_t>(i)];
          beat["config_version"] = cv;
          auto q0 = SteadyClock::now();
          auto r =
              http(port, "POST", "/v1/agents/" + a.id + "/heartbeat", a.credential, beat.dump());
          mine.push_back(since(q0) * 1000);
          if (r.first == 200) {
            ok++;
            if (cv.empty()) cv = json::parse(r.second, nullptr, false).value("config_version", "");
          } else {
            refused++;
          }
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  double wall = since(start);
  double cpu = cpu_seconds(broker) - cpu0;
  double pos1 = metric(port, "atrium_log_last_position");
  double rate = static_cast<double>(ok) / wall;
  double cores = cpu / wall;
  std::printf("heartbeats: %ld accepted, %ld refused, %ld sent over 1 s late, %.0f/s over %.1f s\n",
              ok.load(), refused.load(), late.load(), rate, wall);
  std::printf("heartbeat latency: p50 %.2f ms, p99 %.2f ms\n", pct(lat, 0.5), pct(lat, 0.99));
  std::printf(
      "broker CPU while heartbeating: %.3f cores (%.1f%% of one core); %.1f us per heartbeat\n",
      cores, cores * 100, rate > 0 ? cpu / static_cast<double>(ok) * 1e6 : 0);
  // Per 10,000 agents at 30 s (333/s), scaled linearly from the measured cost per heartbeat.
  double per_hb = ok > 0 ? cpu / static_cast<double>(ok) : 0;
  std::printf(
      "=> %.3f cores per 10,000 agents at 30 s; 100,000 agents at 30 s (3,333/s): %.2f cores\n",
      per_hb * 10000.0 / 30.0, per_hb * 100000.0 / 30.0);
  std::printf("events appended in the steady state: %.0f (%.1f per minute)\n", pos1 - pos0,
              (pos1 - pos0) * 60.0 / wall);
  std::printf("broker memory at the end: %ld KiB\n", rss_kib(broker));
  return stop(refused > 0 ? 1 : 0);
}

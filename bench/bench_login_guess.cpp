// Password guessing against a real atriumd (a child process, so any build can be measured):
// healthz latency idle and while `clients` threads post wrong passwords, the answers the
// guessers get, and the time of each failing login path (unknown user, user without a
// password, wrong password).
//
//   bench_login_guess ATRIUMD [clients=32] [seconds=10] [extra atriumd flags...]
//
// e.g. `--login-failures-per-user=1000000 --login-failures-per-address=1000000` to measure
// the KDF bound alone, without the throttle.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"

using atrium::bench::http;
using atrium::bench::since;
using atrium::bench::SteadyClock;

using atrium::bench::free_port;
using atrium::bench::pct;

namespace {

const std::string kToken = "atr_bench_login_guess_bootstrap_token_0123456789";

double time_ms(uint16_t port, const std::string& method, const std::string& path,
               const std::string& body, int* status = nullptr) {
  auto t0 = SteadyClock::now();
  auto r = http(port, method, path, kToken, body);
  if (status) *status = r.first;
  return since(t0) * 1000;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_login_guess ATRIUMD [clients] [seconds] [flags...]\n");
    return 2;
  }
  std::string atriumd = argv[1];
  int clients = argc > 2 ? std::atoi(argv[2]) : 32;
  int seconds = argc > 3 ? std::atoi(argv[3]) : 10;
  std::string dir = (std::filesystem::temp_directory_path() / "atrium-bench-login-XXXXXX").string();
  if (::mkdtemp(dir.data()) == nullptr) return 1;
  uint16_t port = free_port();

  pid_t child = ::fork();
  if (child == 0) {
    ::setenv("ATRIUM_BOOTSTRAP_TOKEN", kToken.c_str(), 1);
    std::vector<std::string> args = {atriumd,
                                     "--listen=127.0.0.1:" + std::to_string(port),
                                     "--data-dir=" + dir,
                                     "--default-host=none",
                                     "--host-reconciler=off",
                                     "--access-log=off"};
    for (int i = 4; i < argc; ++i) args.push_back(argv[i]);
    std::vector<char*> av;
    for (auto& a : args) av.push_back(a.data());
    av.push_back(nullptr);
    ::execv(av[0], av.data());
    _exit(127);
  }
  auto t0 = SteadyClock::now();
  while (http(port, "GET", "/readyz", "").first != 200) {
    if (since(t0) > 30) {
      std::fprintf(stderr, "atriumd did not become ready\n");
      ::kill(child, SIGTERM);
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  http(port, "POST", "/v1/users", kToken, R"({"name":"victim","password":"the-right-password"})");
  http(port, "POST", "/v1/users", kToken, R"({"name":"nopass"})");

  std::vector<double> idle;
  for (int i = 0; i < 300; ++i) idle.push_back(time_ms(port, "GET", "/healthz", ""));
  std::printf("healthz idle: p50 %.2f ms, p99 %.2f ms\n", pct(idle, 0.5), pct(idle, 0.99));

  // The failing paths, interleaved (before any throttle engages: 5 rounds of 3).
  std::map<std::string, std::vector<double>> paths;
  for (int i = 0; i < 5; ++i) {
    paths["unknown user"].push_back(
        time_ms(port, "POST", "/v1/auth/login",
                R"({"name":"nobody)" + std::to_string(i) + R"(","password":"wrong-one"})"));
    paths["user without password"].push_back(
        time_ms(port, "POST", "/v1/auth/login", R"({"name":"nopass","password":"wrong-one"})"));
    paths["wrong password"].push_back(
        time_ms(port, "POST", "/v1/auth/login", R"({"name":"victim","password":"wrong-one"})"));
  }
  for (auto& [k, v] : paths) std::printf("login, %s: p50 %.2f ms\n", k.c_str(), pct(v, 0.5));

  std::atomic<bool> stop{false};
  std::mutex mu;
  std::map<int, long> answers;
  std::vector<std::thread> guessers;
  for (int c = 0; c < clients; ++c) {
    guessers.emplace_back([&, c] {
      std::map<int, long> mine;
      long n = 0;
      while (!stop) {
        // Odd clients guess the victim's password, even ones try names of their own.
        std::string name = c % 2 ? "victim" : "guess" + std::to_string(c) + "-" + std::to_string(n);
        std::string body =
            R"({"name":")" + name + R"(","password":"guess-)" + std::to_string(n++) + R"("})";
        mine[http(port, "POST", "/v1/auth/login", "", body).first]++;
      }
      std::lock_guard l(mu);
      for (auto& [s, k] : mine) answers[s] += k;
    });
  }
  std::vector<double> busy;
  auto end = SteadyClock::now() + std::chrono::seconds(seconds);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  while (SteadyClock::now() < end) {
    busy.push_back(time_ms(port, "GET", "/healthz", ""));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop = true;
  for (auto& t : guessers) t.join();
  std::printf(
      "healthz under %d guessing clients (%d s): p50 %.2f ms, p99 %.2f ms, max %.2f ms "
      "(%zu samples)\n",
      clients, seconds, pct(busy, 0.5), pct(busy, 0.99), pct(busy, 1.0), busy.size());
  long total = 0;
  for (auto& [s, k] : answers) total += k;
  std::printf("guesses: %ld in %d s (%.0f/s):", total, seconds,
              static_cast<double>(total) / seconds);
  for (auto& [s, k] : answers) std::printf(" %d x%ld", s, k);
  std::printf("\n");
  auto right = http(port, "POST", "/v1/auth/login", "",
                    R"({"name":"victim","password":"the-right-password"})");
  std::printf("the right password right after: %d\n", right.first);
  auto ev = http(port, "GET", "/v1/events?type=LoginThrottled&limit=1000", kToken);
  size_t n = 0;
  for (size_t p = ev.second.find("\"LoginThrottled\""); p != std::string::npos;
       p = ev.second.find("\"LoginThrottled\"", p + 1)) {
    ++n;
  }
  std::printf("LoginThrottled events: %zu\n", n);
  ::kill(child, SIGTERM);
  int st = 0;
  ::waitpid(child, &st, 0);
  std::filesystem::remove_all(dir);
  return 0;
}

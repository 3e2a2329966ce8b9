// Directory sign-in against a local slapd (tools/ldap_test_server.sh, 50 nested groups):
//   1. the adapter alone: sign-ins per second with `clients` threads, p50/p99;
//   2. over HTTP through the broker (POST /v1/auth/login bob@corp): the same;
//   3. entitlement resolution for a user in 50 nested groups: the directory's group walk
//      (one search per level) and the broker's check of a group entitlement.
//
//   bench_directory [clients=16] [seconds=5]
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "adapters/ldap_directory.h"
#include "api/crypto.h"
#include "api/daemon.h"
#include "bench/bench_util.h"
#include "domain/state.h"

using namespace atrium;
using bench::since;
using bench::SteadyClock;
using nlohmann::json;

using atrium::bench::free_port;
using atrium::bench::pct;

namespace {

const std::string kBase = "dc=atrium,dc=test";

// Runs f in `clients` threads for `seconds`; prints the rate and latency percentiles.
template <typename F>
void storm(const char* what, int clients, double seconds, F f) {
  std::vector<std::vector<double>> lat(static_cast<size_t>(clients));
  std::atomic<long> fails{0};
  auto t0 = SteadyClock::now();
  std::vector<std::thread> ts;
  for (int c = 0; c < clients; ++c) {
    ts.emplace_back([&, c] {
      while (since(t0) < seconds) {
        auto s = SteadyClock::now();
        if (!f()) fails++;
        lat[static_cast<size_t>(c)].push_back(since(s) * 1000);
      }
    });
  }
  for (auto& t : ts) t.join();
  double el = since(t0);
  std::vector<double> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  std::printf("%-34s %6.0f sign-ins/s  p50 %6.2f ms  p99 %6.2f ms  (%zu, %ld failed, %d clients)\n",
              what, static_cast<double>(all.size()) / el, pct(all, 0.5), pct(all, 0.99), all.size(),
              fails.load(), clients);
}

}  // namespace

int main(int argc, char** argv) {
  int clients = argc > 1 ? std::atoi(argv[1]) : 16;
  double seconds = argc > 2 ? std::atof(argv[2]) : 5;
  if (!api::crypto_init()) return 1;
  std::string dir = "/tmp/atrium-bench-ldap-" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  uint16_t lport = free_port(), sport = free_port();
  std::string cmd = std::string(ATRIUM_BENCH_SOURCE_DIR) + "/tools/ldap_test_server.sh " + dir +
                    "/ldap " + std::to_string(lport) + " " + std::to_string(sport) + " 50";
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "slapd did not start (apt-get install slapd ldap-utils)\n");
    return 1;
  }
  auto stop_slapd = [&] {
    std::ifstream in(dir + "/ldap/slapd.pid");
    pid_t pid = 0;
    if (in >> pid && pid > 0) ::kill(pid, SIGTERM);
  };

  domain::Directory d;
  d.id = "d1";
  d.name = "corp";
  d.kind = "ldap";
  d.urls = {"ldaps://127.0.0.1:" + std::to_string(sport)};
  d.bind_dn = "cn=svc,ou=service," + kBase;
  d.user_base = "ou=people," + kBase;
  d.user_filter = "(&(objectClass=inetOrgPerson)(!(employeeType=disabled)))";
  d.name_attribute = "uid";
  d.id_attribute = "entryUUID";
  d.group_base = "ou=groups," + kBase;
  d.group_filter = "(objectClass=groupOfNames)";
  d.ca_file = dir + "/ldap/ca.pem";
  auto client = adapters::make_ldap_directory_client();

  // 1. The adapter alone (LDAPS, a fresh connection per sign-in).
  storm("adapter, LDAPS, bob (1 group)", clients, seconds,
        [&] { return client->sign_in(d, "svc-pw-123", "bob", "bob-pw-123").ok(); });

  // 3a. The group walk for a user in 50 nested groups (one search per level).
  {
    std::vector<double> ms;
    size_t groups = 0;
    for (int i = 0; i < 50; ++i) {
      auto s = SteadyClock::now();
      auto e = client->sign_in(d, "svc-pw-123", "bench", "bench-pw-123");
      ms.push_back(since(s) * 1000);
      if (e.ok()) groups = e->groups.size();
    }
    std::printf("%-34s %zu groups found; sign-in p50 %.2f ms, p99 %.2f ms (50 runs, 1 client)\n",
                "adapter, 50 nested groups", groups, pct(ms, 0.5), pct(ms, 0.99));
  }

  // 2. Over HTTP through the broker.
  api::DaemonConfig cfg;
  cfg.data_dir = dir + "/broker";
  const std::string admin = "atr_bench_admin_token_0123456789abcdef";
  cfg.bootstrap_token = admin;
  cfg.write_admin_credentials = false;
  cfg.default_host_uri = "";
  cfg.host_manager = false;
  cfg.pool_worker = false;
  cfg.api.port = 0;
  cfg.api.threads = 32;
  cfg.api.access_log = false;
  auto started = api::Daemon::start(cfg);
  if (!started.ok()) {
    std::fprintf(stderr, "start: %s\n", started.error().message.c_str());
    stop_slapd();
    return 1;
  }
  auto& daemon = **started;
  uint16_t port = daemon.port();
  json body{{"name", "corp"},
            {"urls", d.urls},
            {"bind_dn", d.bind_dn},
            {"bind_password", "svc-pw-123"},
            {"user_base", d.user_base},
            {"user_filter", d.user_filter},
            {"group_base", d.group_base},
            {"ca_file", d.ca_file},
            {"role_map", {{"admins", {"user"}}, {"g50", {"user"}}}}};
  auto r = bench::http(port, "POST", "/v1/directories", admin, body.dump());
  if (r.first != 201) {
    std::fprintf(stderr, "directory: %d %s\n", r.first, r.second.c_str());
    stop_slapd();
    return 1;
  }
  const std::string login = json{{"name", "bob@corp"}, {"password", "bob-pw-123"}}.dump();
  storm("HTTP login bob@corp (LDAPS)", clients, seconds,
        [&] { return bench::http(port, "POST", "/v1/auth/login", "", login).first == 200; });
  const std::string login50 = json{{"name", "bench@corp"}, {"password", "bench-pw-123"}}.dump();
  storm("HTTP login bench@corp (50 nested)", clients, seconds,
        [&] { return bench::http(port, "POST", "/v1/auth/login", "", login50).first == 200; });

  // 3b. The broker's entitlement check for that user: a pool entitled to g50 only.
  {
    domain::State s = daemon.views().read([](const domain::State& st) { return st; });
    const domain::User* u = s.users.find_by_name("bench@corp");
    domain::Pool p;
    p.id = "p";
    p.entitled_groups = {"g50@corp"};
    long n = 0;
    bool ok = true;
    auto t0 = SteadyClock::now();
    for (; n < 1'000'000; ++n) ok = ok && domain::entitled(s, p, u ? u->id : "");
    double ns = since(t0) * 1e9 / static_cast<double>(n);
    std::printf("%-34s %s, %.0f ns per check (%zu groups)\n", "entitled() via the 50th group",
                ok ? "entitled" : "NOT entitled", ns, u ? u->groups.size() : 0);
  }
  daemon.stop();
  stop_slapd();
  std::filesystem::remove_all(dir);
  return 0;
}

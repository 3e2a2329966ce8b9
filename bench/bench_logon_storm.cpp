// Logon storm: N users launch desktops from one floating pool at once over HTTP, against
// test:/// hosts whose spares are already running (so the figures exclude VM boot).
//
//   bench_logon_storm [users=2000] [hosts=10] [concurrency=64]
//
// Reports launches per second, p50/p99 launch latency, and checks for double assignments
// (two successful launches on one VM, or a VM whose member record names another user).

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "adapters/pool_worker.h"
#include "api/crypto.h"
#include "api/daemon.h"
#include "bench/bench_util.h"
#include "domain/state.h"

using namespace atrium;
using nlohmann::json;
using bench::http;
using Clock = std::chrono::steady_clock;

using atrium::bench::pct;

namespace {

// One HTTP/1.1 request on a fresh loopback connection; returns {status, body}.
template <typename F>
void run(api::Daemon& d, const char* name, F f) {
  pipeline::Command c;
  c.name = name;
  c.decide = f;
  c.meta.actor = "bench";
  auto r = d.pipeline().execute(std::move(c));
  if (!r.ok()) {
    std::fprintf(stderr, "%s failed: %s\n", name, r.error().message.c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int users = argc > 1 ? std::atoi(argv[1]) : 2000;
  int hosts = argc > 2 ? std::atoi(argv[2]) : 10;
  int conc = argc > 3 ? std::atoi(argv[3]) : 64;
  if (!api::crypto_init()) return 1;
  std::string dir = "/tmp/atrium-bench-storm-" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  const std::string admin = "atr_bench_admin_token_0123456789abcdef";
  api::DaemonConfig cfg;
  cfg.data_dir = dir;
  cfg.bootstrap_token = admin;
  cfg.write_admin_credentials = false;
  cfg.api.port = 0;
  cfg.api.threads = 64;
  cfg.api.access_log = false;
  cfg.host_uris.allow_test = true;  // test:/// hosts
  cfg.hosts.resync_interval = std::chrono::milliseconds(2000);
  cfg.pools.interval = std::chrono::milliseconds(100);
  cfg.pools.client_timeout = std::chrono::hours(1);
  auto started = api::Daemon::start(cfg);
  if (!started.ok()) {
    std::fprintf(stderr, "start: %s\n", started.error().message.c_str());
    return 1;
  }
  auto& d = **started;
  uint16_t port = d.port();
  const std::string uri = std::string("test://") + ATRIUM_BENCH_SOURCE_DIR + "/tests/adapters/fixtures/host.xml";

  // Hosts (each test:/// connection is its own in-process host), each with enough ports.
  int per_host = (users + hosts - 1) / hosts;
  std::vector<std::string> host_ids;
  for (int i = 0; i < hosts; ++i) {
    json body{{"name", "h" + std::to_string(i)}, {"uri", uri},
              {"display_ports", {{"first", 10000}, {"last", 10000 + per_host + 50}}}};
    auto [st, b] = http(port, "POST", "/v1/hosts", admin, body.dump());
    if (st != 202) {
      std::fprintf(stderr, "add host: %d %s\n", st, b.c_str());
      return 1;
    }
    host_ids.push_back(json::parse(b)["host_id"]);
  }
  for (int i = 0; i < 600; ++i) {
    bool up = d.views().read([&](const domain::State& s) {
      for (const auto& h : host_ids) {
        const auto* host = s.hosts.host(h);
        if (host == nullptr || host->state != "up") return false;
      }
      return true;
    });
    if (up) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const char* xml =
      "<domain type='test'><name>tmpl</name><uuid>11111111-1111-4111-8111-111111111111</uuid>"
      "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
      "<devices></devices></domain>";
  json pool{{"name", "storm"}, {"kind", "floating"}, {"template", {{"domain_xml", xml}}},
            {"host_ids", host_ids}, {"min_ready", users}, {"max_size", users}};
  auto [pst, pbody] = http(port, "POST", "/v1/pools", admin, pool.dump());
  if (pst != 201) {
    std::fprintf(stderr, "pool: %d %s\n", pst, pbody.c_str());
    return 1;
  }
  std::string pool_id = json::parse(pbody)["id"];

  // Users with tokens, entitled, written straight through the pipeline (no password hashing).
  std::vector<std::pair<std::string, std::string>> accounts;
  for (int i = 0; i < users; ++i) {
    std::string id = api::new_id(), token = "atr_storm_" + api::new_id();
    domain::CreateUser cu{id, "storm" + std::to_string(i), {"user"}, ""};
    run(d, "CreateUser", [cu](const domain::State& s, const domain::Context& c) { return domain::decide(s, cu, c); });
    domain::IssueToken it{id, api::sha256_hex(token), pipeline::system_now_ms() + 3600 * 1000};
    run(d, "IssueToken", [it](const domain::State& s, const domain::Context& c) { return domain::decide(s, it, c); });
    domain::AddEntitlement ae{pool_id, id};
    run(d, "AddEntitlement", [ae](const domain::State& s, const domain::Context& c) { return domain::decide(s, ae, c); });
    accounts.emplace_back(id, token);
  }
  auto t_prov = Clock::now();
  std::printf("waiting for %d running spares on %d test:/// hosts...\n", users, hosts);
  std::fflush(stdout);
  for (;;) {
    int ready = d.views().read([&](const domain::State& s) {
      int n = 0;
      for (const auto* m : s.pools.members_of(pool_id)) {
        const auto* v = s.hosts.vm(m->vm_id);
        n += m->state == "ready" && v != nullptr && v->observed == "running";
      }
      return n;
    });
    if (ready >= users) break;
    if (Clock::now() - t_prov > std::chrono::minutes(30)) {
      std::fprintf(stderr, "only %d spares after 30 min\n", ready);
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  double prov_s = std::chrono::duration<double>(Clock::now() - t_prov).count();
  std::printf("provisioned and started %d spares in %.1f s\n", users, prov_s);

  // The storm.
  std::atomic<int> next{0};
  std::mutex mu;
  std::vector<double> lat;
  std::map<int, int> statuses;
  std::map<std::string, std::string> vm_of_user;
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < conc; ++t) {
    threads.emplace_back([&] {
      for (int i; (i = next.fetch_add(1)) < users;) {
        auto s0 = Clock::now();
        auto [st, body] = http(port, "POST", "/v1/launches", accounts[i].second,
                               json{{"pool_id", pool_id}}.dump());
        double ms = std::chrono::duration<double, std::milli>(Clock::now() - s0).count();
        std::lock_guard lock(mu);
        statuses[st]++;
        if (st == 201) {
          lat.push_back(ms);
          vm_of_user[accounts[i].first] = json::parse(body)["vm_id"];
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::map<std::string, int> per_vm;
  for (const auto& [u, vm] : vm_of_user) per_vm[vm]++;
  int doubles = 0;
  for (const auto& [vm, n] : per_vm) doubles += n > 1;
  // The broker's own records agree with what the clients got.
  int mismatched = d.views().read([&](const domain::State& s) {
    int bad = 0;
    for (const auto& [u, vm] : vm_of_user) {
      const auto* m = s.pools.member(vm);
      bad += m == nullptr || m->assigned_user != u;
    }
    return bad;
  });
  std::printf("launches: %zu ok of %d in %.2f s = %.0f launches/s (concurrency %d)\n", lat.size(), users,
              secs, static_cast<double>(lat.size()) / secs, conc);
  for (const auto& [st, n] : statuses) std::printf("  status %d: %d\n", st, n);
  std::printf("latency ms: p50 %.1f  p99 %.1f  max %.1f\n", pct(lat, 0.5), pct(lat, 0.99), pct(lat, 1.0));
  std::printf("double assignments: %d; records disagreeing with clients: %d\n", doubles, mismatched);
  d.stop();
  std::filesystem::remove_all(dir);
  return doubles == 0 && mismatched == 0 ? 0 : 2;
}

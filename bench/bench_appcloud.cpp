// Application-cloud benchmark (issue 3), printed as figures, not asserted:
//  1. build a catalog through the pipeline of a real broker (synced RocksDB, group commit)
//     with many submitter threads: 200 clusters, 5,000 servers (4,000 in clusters, 1,000
//     standalone), 20,000 applications, 100,000 users, 20,000 publications and 1,000,000
//     authorizations (scale with argv[1], e.g. 0.1); a small part through HTTP too, to show
//     the HTTP cost;
//  2. GET /v1/me/entitlements latency p50/p99 over HTTP for random users (target p99 < 5 ms);
//  3. the launch decision p99 on the pure placement function (target < 2 ms);
//  4. projection memory (RSS delta; the writer and the views each hold a copy);
//  5. replay time of the whole log into a fresh state.
// Usage: bench_appcloud [scale]

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

#include "api/crypto.h"
#include "bench/bench_util.h"
#include "api/daemon.h"
#include "domain/placement.h"
#include "projections/views.h"

using namespace atrium;
using bench::http;
using bench::rss_kib;
using bench::since;
using bench::SteadyClock;
using domain::Json;
using domain::State;

using atrium::bench::pct;

namespace {

// A minimal HTTP/1.1 client: one connection per request, reads to Content-Length.
template <typename Cmd>
pipeline::Command cmd(const char* name, Cmd c) {
  pipeline::Command out = pipeline::decide_command(name, std::move(c));
  out.meta.actor = "bench";
  out.meta.correlation_id = "bench";
  return out;
}

// Runs make(i) for i in [0, n) through the pipeline from `threads` submitters; returns the
// commands per second. Exits on the first refusal.
template <typename Make>
double run_phase(const char* what, pipeline::Pipeline& p, size_t n, Make make, int threads = 64) {
  std::atomic<size_t> next{0};
  std::atomic<size_t> failed{0};
  auto t0 = SteadyClock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      // Each submitter keeps a window of commands in flight.
      std::vector<std::future<Result<pipeline::Outcome>>> window;
      while (true) {
        size_t i = next.fetch_add(1);
        if (i >= n) break;
        window.push_back(p.submit(make(i)));
        if (window.size() >= 16) {
          for (auto& f : window) {
            auto r = f.get();
            if (!r.ok() && failed.fetch_add(1) == 0) {
              std::fprintf(stderr, "%s refused: %s %s\n", what, r.error().reason.c_str(),
                           r.error().message.c_str());
            }
          }
          window.clear();
        }
      }
      for (auto& f : window) {
        auto r = f.get();
        if (!r.ok() && failed.fetch_add(1) == 0) {
          std::fprintf(stderr, "%s refused: %s %s\n", what, r.error().reason.c_str(),
                       r.error().message.c_str());
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  double secs = since(t0);
  std::printf("  %-34s %9zu commands in %7.1f s = %8.0f /s%s\n", what, n, secs,
              static_cast<double>(n) / secs, failed ? " (REFUSALS!)" : "");
  std::fflush(stdout);
  if (failed) std::exit(1);
  return static_cast<double>(n) / secs;
}

std::string id(const char* prefix, size_t i) { return std::string(prefix) + std::to_string(i); }

}  // namespace

int main(int argc, char** argv) {
  double scale = argc > 1 ? std::atof(argv[1]) : 1.0;
  if (scale <= 0) scale = 1.0;
  auto n_of = [&](double v) { return std::max<size_t>(1, static_cast<size_t>(v * scale)); };
  const size_t kClusters = n_of(200), kClustered = n_of(4000), kStandalone = n_of(1000);
  const size_t kAppsPerCluster = 80, kAppsPerStandalone = 4;
  const size_t kUsers = n_of(100000), kAuthPerUser = 10;
  const size_t kServers = kClustered + kStandalone;
  const size_t kApps = kClusters * kAppsPerCluster + kStandalone * kAppsPerStandalone;

  if (!api::crypto_init()) return 1;
  auto dir = std::filesystem::temp_directory_path() /
             ("atrium-bench-appcloud-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const std::string admin_token = "atr_bench_admin_token_0123456789abcdef";
  api::DaemonConfig cfg;
  cfg.data_dir = dir.string();
  cfg.api.port = 0;
  cfg.api.access_log = false;
  cfg.api.threads = 4;
  cfg.bootstrap_token = admin_token;
  cfg.write_admin_credentials = false;
  cfg.host_manager = false;
  auto started = api::Daemon::start(cfg);
  if (!started.ok()) {
    std::fprintf(stderr, "start failed: %s\n", started.error().message.c_str());
    return 1;
  }
  auto& d = **started;
  auto& p = d.pipeline();
  long rss0 = rss_kib();
  std::printf("catalog: %zu clusters, %zu servers (%zu standalone), %zu applications, %zu users, "
              "%zu authorizations\n",
              kClusters, kServers, kStandalone, kApps, kUsers, kUsers * kAuthPerUser);

  // Application names and paths, by number: cluster k holds apps [k*80, k*80+80) on every
  // member; standalone server j holds 4 apps of its own.
  auto app_name = [](size_t a) { return "App " + std::to_string(a); };
  auto app_exe = [](size_t a) { return "C:\\Program Files\\App" + std::to_string(a) + "\\app.exe"; };
  std::vector<std::string> app_ids(kApps);
  for (size_t a = 0; a < kApps; ++a) app_ids[a] = domain::application_id(app_name(a), app_exe(a));
  auto server_of_standalone = [&](size_t j) { return id("s", kClustered + j); };

  auto t_all = SteadyClock::now();
  run_phase("create users", p, kUsers, [&](size_t i) {
    return cmd("CreateUser", domain::CreateUser{id("u", i), id("user", i), {"user"}, ""});
  });
  run_phase("create clusters", p, kClusters, [&](size_t i) {
    return cmd("CreateCluster", domain::CreateCluster{id("c", i), id("cluster ", i), "", {}});
  });
  run_phase("create servers", p, kServers, [&](size_t i) {
    return cmd("CreateServer", domain::CreateServer{id("s", i), id("server ", i),
                                                    "10." + std::to_string(i / 65536) + "." +
                                                        std::to_string(i / 256 % 256) + "." +
                                                        std::to_string(i % 256),
                                                    "windows", "2022", 16, 65536, true});
  });
  run_phase("join clusters", p, kClustered, [&](size_t i) {
    return cmd("JoinCluster", domain::JoinCluster{id("s", i), id("c", i % kClusters), std::nullopt});
  });
  size_t per_server_adds = kClustered * kAppsPerCluster + kStandalone * kAppsPerStandalone;
  run_phase("add server applications", p, per_server_adds, [&](size_t i) {
    size_t server, app;
    if (i < kClustered * kAppsPerCluster) {
      server = i / kAppsPerCluster;
      app = (server % kClusters) * kAppsPerCluster + i % kAppsPerCluster;
    } else {
      size_t j = (i - kClustered * kAppsPerCluster) / kAppsPerStandalone;
      server = kClustered + j;
      app = kClusters * kAppsPerCluster + j * kAppsPerStandalone + i % kAppsPerStandalone;
    }
    return cmd("AddServerApplication",
               domain::AddServerApplication{id("s", server), app_name(app), app_exe(app),
                                            "benchmark application", ""});
  });
  // One publication per application: at cluster scope for cluster apps, server scope for
  // standalone ones.
  auto pub_target = [&](size_t a) -> std::pair<domain::Scope, std::string> {
    if (a < kClusters * kAppsPerCluster) return {domain::Scope::cluster, id("c", a / kAppsPerCluster)};
    return {domain::Scope::server,
            server_of_standalone((a - kClusters * kAppsPerCluster) / kAppsPerStandalone)};
  };
  run_phase("publish", p, kApps, [&](size_t a) {
    auto [scope, target] = pub_target(a);
    return cmd("Publish", domain::Publish{id("p", a), app_ids[a], scope, target});
  });
  // Each user gets kAuthPerUser distinct applications: a = (u * 7919 + k * 1997) mod kApps.
  auto user_app = [&](size_t u, size_t k) { return (u * 7919 + k * 1997) % kApps; };
  const size_t http_auths = std::min<size_t>(2000, kUsers);  // the first users' first auth
  size_t n_auth = kUsers * kAuthPerUser;
  run_phase("authorize", p, n_auth - http_auths, [&](size_t i) {
    i += http_auths;  // the first http_auths (user i, slot 0) go through HTTP below
    size_t u = i % kUsers, k = i / kUsers;
    size_t a = user_app(u, k);
    auto [scope, target] = pub_target(a);
    return cmd("Authorize", domain::Authorize{id("a", i), id("u", u), app_ids[a], scope, target});
  });
  // The HTTP cost: the same Authorize commands through POST /v1/authorizations.
  {
    std::atomic<size_t> next{0}, bad{0};
    auto t0 = SteadyClock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < 16; ++t) {
      ts.emplace_back([&] {
        for (size_t i; (i = next.fetch_add(1)) < http_auths;) {
          size_t a = user_app(i, 0);
          auto [scope, target] = pub_target(a);
          Json body{{"user_id", id("u", i)},
                    {"application_id", app_ids[a]},
                    {"scope", domain::scope_name(scope)},
                    {"target_id", target}};
          if (http(d.port(), "POST", "/v1/authorizations", admin_token, body.dump()).first != 201) bad++;
        }
      });
    }
    for (auto& t : ts) t.join();
    double secs = since(t0);
    std::printf("  %-34s %9zu requests in %7.1f s = %8.0f /s (16 clients)%s\n",
                "authorize over HTTP", http_auths, secs, static_cast<double>(http_auths) / secs,
                bad ? " (FAILURES!)" : "");
  }
  int64_t now = pipeline::system_now_ms();
  // Load figures are liveness (in memory, not events): the servers' agents report them.
  for (size_t i = 0; i < kServers; ++i) {
    d.api().liveness().server_load(
        id("s", i), domain::LoadReport{(i % 97) / 100.0, (i % 89) / 100.0,
                                       static_cast<uint32_t>(i % 30), now, d.views().position()});
  }
  double build_secs = since(t_all);
  uint64_t events = d.store().last_position();
  long rss1 = rss_kib();
  std::printf("build: %lu events in %.1f s (%.0f events/s)\n", static_cast<unsigned long>(events),
              build_secs, static_cast<double>(events) / build_secs);
  std::printf("projection memory: RSS +%.0f MiB (writer state + views, plus RocksDB caches)\n",
              static_cast<double>(rss1 - rss0) / 1024.0);
  std::fflush(stdout);

  // Tokens for 1,000 random users.
  std::mt19937_64 rng(42);
  const size_t kSampled = std::min<size_t>(1000, kUsers);
  std::vector<std::pair<size_t, std::string>> tokens;
  for (size_t k = 0; k < kSampled; ++k) {
    size_t u = rng() % kUsers;
    std::string token = api::new_token();
    auto r = p.execute(cmd("IssueToken", domain::IssueToken{id("u", u), api::sha256_hex(token),
                                                            now + 3600 * 1000}));
    if (!r.ok()) return 1;
    tokens.emplace_back(u, token);
  }
  // Entitlements over HTTP, one client, sequential.
  {
    std::vector<double> ms;
    size_t items = 0;
    for (int i = 0; i < 5000; ++i) {
      const auto& [u, token] = tokens[rng() % tokens.size()];
      auto t0 = SteadyClock::now();
      auto [st, body] = http(d.port(), "GET", "/v1/me/entitlements", token);
      ms.push_back(since(t0) * 1000);
      if (st != 200) {
        std::fprintf(stderr, "entitlements: HTTP %d\n", st);
        return 1;
      }
      if (i == 0) items = Json::parse(body)["items"].size();
    }
    std::printf("GET /v1/me/entitlements over HTTP (5,000 random users' calls, %zu apps each): "
                "p50 %.2f ms, p99 %.2f ms (target p99 < 5 ms)\n",
                items, pct(ms, 0.5), pct(ms, 0.99));
  }
  // The pure placement decision on the live view, for random authorized (user, app) pairs.
  {
    std::vector<double> us;
    domain::PlacementConfig pc;
    size_t ok = 0;
    d.views().read([&](const State& s) {
      for (int i = 0; i < 20000; ++i) {
        size_t u = rng() % kUsers;
        size_t a = user_app(u, rng() % kAuthPerUser);
        std::string uid = id("u", u);
        auto t0 = SteadyClock::now();
        domain::PlacementLive live;
        live.load = [&d](const std::string& sid) { return d.api().liveness().load(sid); };
        auto dec = domain::place(s.appcloud, uid, app_ids[a], pc, now + 1000, live);
        us.push_back(since(t0) * 1e6);
        ok += dec.ok() ? 1 : 0;
      }
      return 0;
    });
    std::printf("launch decision (domain::place, 20,000 random launches, %zu placed): "
                "p50 %.1f us, p99 %.1f us (target p99 < 2 ms)\n",
                ok, pct(us, 0.5), pct(us, 0.99));
  }
  // Launches through the pipeline and HTTP, for the record.
  {
    std::vector<double> ms;
    for (int i = 0; i < 500; ++i) {
      const auto& [u, token] = tokens[rng() % tokens.size()];
      size_t a = user_app(u, rng() % kAuthPerUser);
      Json body{{"application_id", app_ids[a]}};
      auto t0 = SteadyClock::now();
      int st = http(d.port(), "POST", "/v1/launches", token, body.dump()).first;
      ms.push_back(since(t0) * 1000);
      if (st != 201) {
        std::fprintf(stderr, "launch: HTTP %d\n", st);
        return 1;
      }
    }
    std::printf("POST /v1/launches over HTTP (durable, one client): p50 %.2f ms, p99 %.2f ms\n",
                pct(ms, 0.5), pct(ms, 0.99));
  }
  // Replay of the whole log.
  {
    State fresh;
    auto t0 = SteadyClock::now();
    auto n = projections::replay(d.store(), fresh);
    double secs = since(t0);
    if (!n.ok()) return 1;
    std::printf("replay: %lu events in %.1f s = %.0f events/s\n",
                static_cast<unsigned long>(*n), secs, static_cast<double>(*n) / secs);
  }
  d.stop();
  started->reset();
  std::filesystem::remove_all(dir);
  return 0;
}

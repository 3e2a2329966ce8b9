// Core benchmarks (issue 2), printed as figures, not asserted:
//  1. the machine's single synced RocksDB put rate (one event per synced append);
//  2. durable command throughput through the pipeline with 1, 16 and 64 submitters, as a
//     ratio to (1), with p50/p99 latency;
//  3. replay: projections rebuilt from N events (default 1,000,000), events/s and resident
//     memory per million events.
// Usage: bench_core [replay_events]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "domain/users.h"
#include "bench/bench_commands.h"
#include "bench/bench_util.h"
#include "pipeline/pipeline.h"

using namespace atrium;
using bench::rss_kib;
using bench::since;
using bench::SteadyClock;

using atrium::bench::create_user;

namespace {

std::string fresh_dir(const char* name) {
  auto d = std::filesystem::temp_directory_path() / ("atrium-bench-" + std::string(name) + "-" +
                                                     std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  return d.string();
}

std::unique_ptr<eventstore::EventStore> open(const std::string& dir, bool sync = true) {
  eventstore::RocksOptions o;
  o.sync = sync;
  auto s = eventstore::open_rocksdb(dir, o);
  if (!s.ok()) {
    std::fprintf(stderr, "open failed: %s\n", s.error().message.c_str());
    std::exit(1);
  }
  return std::move(*s);
}

double single_put_rate() {
  auto dir = fresh_dir("puts");
  auto store = open(dir);
  const int n = 2000;
  auto t0 = SteadyClock::now();
  for (int i = 0; i < n; ++i) {
    eventstore::AppendRequest r;
    r.writes.push_back({"s-" + std::to_string(i), eventstore::ExpectedVersion::Any(),
                        {{"Put", 1, R"({"n":1})", "bench", "", "", "", 0}}});
    if (!store->append(r).ok()) std::exit(1);
  }
  double rate = n / since(t0);
  store.reset();
  std::filesystem::remove_all(dir);
  return rate;
}

void pipeline_run(int submitters, double put_rate) {
  auto dir = fresh_dir("pipe");
  {
    auto store = open(dir);
    projections::Views views;
    pipeline::Metrics metrics;
    pipeline::Pipeline pipe(*store, views, metrics);
    if (!pipe.start().ok()) std::exit(1);
    const double duration = 3.0;
    std::vector<std::vector<double>> lat(static_cast<size_t>(submitters));
    std::vector<std::thread> ts;
    auto t0 = SteadyClock::now();
    for (int t = 0; t < submitters; ++t) {
      ts.emplace_back([&, t] {
        for (int i = 0; since(t0) < duration; ++i) {
          auto s = SteadyClock::now();
          auto r = pipe.execute(create_user(std::to_string(t) + "-" + std::to_string(i)));
          if (!r.ok()) std::abort();
          lat[static_cast<size_t>(t)].push_back(since(s));
        }
      });
    }
    for (auto& t : ts) t.join();
    double secs = since(t0);
    std::vector<double> all;
    for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
    std::sort(all.begin(), all.end());
    double rate = static_cast<double>(all.size()) / secs;
    std::printf("pipeline  %2d submitters: %8.0f durable commands/s = %5.1fx single put; "
                "latency p50 %.2f ms, p99 %.2f ms\n",
                submitters, rate, rate / put_rate, all[all.size() / 2] * 1000,
                all[all.size() * 99 / 100] * 1000);
    pipe.stop();
  }
  std::filesystem::remove_all(dir);
}

void replay_run(uint64_t n) {
  auto dir = fresh_dir("replay");
  {
    auto store = open(dir, /*sync=*/false);  // generation only; replay reads what is there
    uint64_t written = 0;
    while (written < n) {
      eventstore::AppendRequest r;
      for (int i = 0; i < 1000 && written < n; ++i, ++written) {
        std::string id = std::to_string(written);
        // One user per event with realistic fields (~200 bytes of data).
        r.writes.push_back({"user-" + id, eventstore::ExpectedVersion::Any(),
                            {{"UserCreated", 1,
                              R"({"id":")" + id + R"(","name":"user-)" + id +
                                  R"(","roles":["user"],"password_hash":"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"})",
                              "bench", "req", "", "", 1700000000000}}});
      }
      if (!store->append(r).ok()) std::exit(1);
    }
  }
  auto store = open(dir);
  {
    auto t = SteadyClock::now();
    uint64_t bytes = 0;
    auto c = store->scan(0, 0, [&](const eventstore::RecordedEvent& e) {
      bytes += e.data.size();
      return true;
    });
    double sc = since(t);
    t = SteadyClock::now();
    auto d = store->scan(0, 0, [&](const eventstore::RecordedEvent& e) {
      return projections::decode(e).ok();
    });
    double dc = since(t);
    std::vector<std::pair<domain::Event, domain::Applied>> decoded;
    decoded.reserve(*c);
    (void)store->scan(0, 0, [&](const eventstore::RecordedEvent& e) {
      decoded.emplace_back(*projections::decode(e),
                           domain::Applied{e.position, e.stream_version, e.recorded_at_ms});
      return true;
    });
    t = SteadyClock::now();
    {
      domain::State st;
      for (const auto& [ev, at] : decoded) domain::evolve(st, ev, at);
      double ec = since(t);
      std::printf("replay parts: scan only %.0f events/s; scan + JSON decode %.0f events/s; "
                  "evolve only %.0f events/s\n",
                  static_cast<double>(*c) / sc, static_cast<double>(*d) / dc,
                  static_cast<double>(decoded.size()) / ec);
      t = SteadyClock::now();
    }
    std::printf("state destruction %.2f s\n", since(t));
  }
  long before = rss_kib();
  domain::State s;
  auto t0 = SteadyClock::now();
  auto r = projections::replay(*store, s);
  double secs = since(t0);
  if (!r.ok()) {
    std::fprintf(stderr, "replay failed: %s\n", r.error().message.c_str());
    std::exit(1);
  }
  long after = rss_kib();
  std::printf("replay    %llu events in %.2f s = %.0f events/s; state memory %.0f MiB per "
              "million events\n",
              static_cast<unsigned long long>(*r), secs, static_cast<double>(*r) / secs,
              static_cast<double>(after - before) / 1024.0 / (static_cast<double>(*r) / 1e6));
  store.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t replay_events = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1000000;
  if (argc > 2 && std::string(argv[2]) == "pipeline-only") {
    pipeline_run(64, 1);
    return 0;
  }
  if (argc > 2 && std::string(argv[2]) == "replay-only") {
    replay_run(replay_events);
    return 0;
  }
  double put_rate = single_put_rate();
  std::printf("single synced put: %.0f puts/s (%.2f ms each)\n", put_rate, 1000.0 / put_rate);
  for (int n : {1, 16, 64}) pipeline_run(n, put_rate);
  replay_run(replay_events);
  return 0;
}

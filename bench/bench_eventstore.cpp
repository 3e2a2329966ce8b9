// Event store throughput on the RocksDB backend, in a fresh directory under /tmp:
//   1. single synced appends (one event per append, fsync each)
//   2. batched synced appends (1000 events per append) up to 1,000,000 events
//   3. scan (replay) of the whole log, warm and after reopening
//   4. verify (hash chain + index) of the whole log
// plus resident memory. Events are ~200 bytes encoded. Usage: bench_eventstore [events]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "eventstore/event_store.h"

using namespace atrium::eventstore;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string proc_status(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field, 0) == 0) {
      auto pos = line.find_first_not_of(" \t", std::string(field).size());
      return pos == std::string::npos ? line : line.substr(pos);
    }
  }
  return "?";
}

NewEvent make_event(uint64_t n) {
  NewEvent e;
  e.type = "ServerLoadReported";
  e.actor = "agent-42";
  e.correlation_id = "c-" + std::to_string(n);
  e.recorded_at_ms = 1'700'000'000'000 + static_cast<int64_t>(n);
  e.data = R"({"server":"srv-)" + std::to_string(n % 1000) + R"(","cpu":0.42,"mem_mb":16384,"apps":)" +
           std::to_string(n % 17) + R"(,"note":"steady state reading"})";
  return e;
}

AppendRequest batch_of(uint64_t first, size_t n, size_t streams) {
  AppendRequest req;
  const size_t per_write = 10;
  for (size_t i = 0; i < n; i += per_write) {
    StreamWrite w;
    w.stream = "server-" + std::to_string((first + i) / per_write % streams);
    for (size_t j = i; j < n && j < i + per_write; ++j) w.events.push_back(make_event(first + j));
    req.writes.push_back(std::move(w));
  }
  return req;
}

std::unique_ptr<EventStore> open_or_die(const std::string& dir) {
  auto r = open_rocksdb(dir);
  if (!r) {
    std::fprintf(stderr, "open failed: %s\n", r.error().message.c_str());
    std::exit(1);
  }
  return std::move(r).value();
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t total = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1'000'000;
  std::string tmpl = "/tmp/atrium-bench-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string dir = tmpl;
  std::printf("event store bench in %s (%llu events)\n", dir.c_str(),
              static_cast<unsigned long long>(total));
  {
    RecordedEvent sample;
    NewEvent ne = make_event(123456);
    sample.position = 123456;
    sample.stream = "server-123";
    sample.stream_version = 1000;
    sample.type = ne.type;
    sample.actor = ne.actor;
    sample.correlation_id = ne.correlation_id;
    sample.data = ne.data;
    std::printf("encoded event size: %zu bytes (+32 hash)\n", canonical_bytes(sample).size());
  }

  auto store = open_or_die(dir);
  int rc = 0;

  // 1. Single synced appends, time-boxed.
  {
    uint64_t n = 0;
    const auto t0 = Clock::now();
    while (n < 20'000 && seconds_since(t0) < 5.0) {
      auto r = store->append(batch_of(n, 1, 1000));
      if (!r) {
        std::fprintf(stderr, "append failed: %s\n", r.error().message.c_str());
        return 1;
      }
      ++n;
    }
    const double s = seconds_since(t0);
    std::printf("single synced appends: %llu in %.2f s = %.0f appends/s (%.3f ms each)\n",
                static_cast<unsigned long long>(n), s, n / s, 1000.0 * s / n);
  }

  // 2. Batched synced appends of 1000 events up to `total`.
  {
    const uint64_t start = store->last_position();
    const auto t0 = Clock::now();
    for (uint64_t pos = start; pos < total;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(1000, total - pos));
      auto r = store->append(batch_of(pos, n, 1000));
      if (!r) {
        std::fprintf(stderr, "append failed: %s\n", r.error().message.c_str());
        return 1;
      }
      pos += n;
    }
    const double s = seconds_since(t0);
    const uint64_t n = store->last_position() - start;
    std::printf("batched synced appends (1000/append): %llu events in %.2f s = %.0f events/s\n",
                static_cast<unsigned long long>(n), s, n / s);
  }
  std::printf("resident memory after appends: %s (peak %s)\n", proc_status("VmRSS:").c_str(),
              proc_status("VmHWM:").c_str());

  // 3. Scans.
  auto replay = [&](const char* label) {
    uint64_t bytes = 0;
    const auto t0 = Clock::now();
    auto r = store->scan(0, 0, [&](const RecordedEvent& e) {
      bytes += e.data.size();
      return true;
    });
    const double s = seconds_since(t0);
    if (!r) {
      std::fprintf(stderr, "scan failed: %s\n", r.error().message.c_str());
      rc = 1;
      return;
    }
    std::printf("scan (%s): %llu events in %.2f s = %.0f events/s (%llu data bytes)\n", label,
                static_cast<unsigned long long>(*r), s, *r / s,
                static_cast<unsigned long long>(bytes));
  };
  replay("warm");
  store.reset();
  store = open_or_die(dir);
  replay("after reopen");
  std::printf("resident memory after scans: %s (peak %s)\n", proc_status("VmRSS:").c_str(),
              proc_status("VmHWM:").c_str());

  // 4. Verify.
  {
    const auto t0 = Clock::now();
    auto v = store->verify();
    const double s = seconds_since(t0);
    if (!v || !v->ok) {
      std::fprintf(stderr, "verify failed: %s\n",
                   v ? v->problem.c_str() : v.error().message.c_str());
      rc = 1;
    } else {
      std::printf("verify: %llu events in %.2f s = %.0f events/s\n",
                  static_cast<unsigned long long>(v->events_checked), s,
                  v->events_checked / s);
    }
  }

  store.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return rc;
}

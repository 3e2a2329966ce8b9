// Shared-log benchmark (issue 12), printed as figures, not asserted: durable commands/s
// through the pipeline on PostgreSQL against RocksDB in the same run, with 1, 16 and 64
// submitters (3 s each, p50/p99 latency). PostgreSQL is a throwaway server started with
// tools/pg_test.sh on a free port (fsync and synchronous_commit on), or the libpq
// connection string given as the first argument (a fresh schema is made in it).
// Usage: bench_ha [conninfo]
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "bench/bench_commands.h"
#include "bench/bench_util.h"
#include "domain/users.h"
#include "eventstore/pg_conn.h"
#include "eventstore/shared_log.h"
#include "pipeline/pipeline.h"

using namespace atrium;
using bench::since;
using bench::SteadyClock;

using atrium::bench::free_port;

using atrium::bench::create_user;

namespace {

double run(eventstore::EventStore& store, const char* name, int submitters) {
  projections::Views views;
  pipeline::Metrics metrics;
  pipeline::Pipeline pipe(store, views, metrics);
  if (!pipe.start().ok()) std::exit(1);
  const double duration = 3.0;
  std::vector<std::vector<double>> lat(static_cast<size_t>(submitters));
  std::vector<std::thread> ts;
  auto t0 = SteadyClock::now();
  for (int t = 0; t < submitters; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; since(t0) < duration; ++i) {
        auto s = SteadyClock::now();
        auto r = pipe.execute(create_user(std::string(name) + std::to_string(submitters) + "-" +
                                          std::to_string(t) + "-" + std::to_string(i)));
        if (!r.ok()) {
          std::fprintf(stderr, "%s: %s\n", name, r.error().message.c_str());
          std::abort();
        }
        lat[static_cast<size_t>(t)].push_back(since(s));
      }
    });
  }
  for (auto& t : ts) t.join();
  const double secs = since(t0);
  std::vector<double> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  const double rate = static_cast<double>(all.size()) / secs;
  std::printf("%-10s %2d submitters: %8.0f durable commands/s; latency p50 %.2f ms, p99 %.2f ms\n",
              name, submitters, rate, all[all.size() / 2] * 1000,
              all[all.size() * 99 / 100] * 1000);
  std::fflush(stdout);
  pipe.stop();
  return rate;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string script = std::string(ATRIUM_BENCH_SOURCE_DIR) + "/tools/pg_test.sh";
  std::string base;
  std::string pgdir;
  if (argc > 1) {
    base = argv[1];
  } else {
    pgdir =
        (std::filesystem::temp_directory_path() / ("atrium-bench-pg-" + std::to_string(::getpid())))
            .string();
    const uint16_t port = free_port();
    if (std::system(
            (script + " start " + pgdir + " " + std::to_string(port) + " >/dev/null").c_str()) !=
        0) {
      std::fprintf(stderr, "bench_ha: could not start PostgreSQL (tools/pg_test.sh)\n");
      return 1;
    }
    base = "host=127.0.0.1 port=" + std::to_string(port) + " user=postgres dbname=postgres";
  }
  const std::string rocks_dir =
      (std::filesystem::temp_directory_path() / ("atrium-bench-ha-" + std::to_string(::getpid())))
          .string();
  int rc = 0;
  for (int n : {1, 16, 64}) {
    std::filesystem::remove_all(rocks_dir);
    double rocks = 0, pg = 0;
    {
      auto s = eventstore::open_rocksdb(rocks_dir);
      if (!s.ok()) return 1;
      rocks = run(**s, "rocksdb", n);
    }
    {
      const std::string schema = "bench_" + std::to_string(::getpid()) + "_" + std::to_string(n);
      eventstore::pg::Conn admin(base);
      if (!admin.run("CREATE SCHEMA " + schema).ok()) {
        std::fprintf(stderr, "bench_ha: CREATE SCHEMA failed\n");
        rc = 1;
        break;
      }
      auto log = eventstore::open_postgres(base + " options='-c search_path=" + schema + "'");
      if (!log.ok()) {
        std::fprintf(stderr, "bench_ha: %s\n", log.error().message.c_str());
        rc = 1;
        break;
      }
      auto lease = (*log)->try_acquire({"bench", "http://127.0.0.1:1", std::chrono::minutes(5)});
      if (!lease.ok() || !lease->has_value() || !(*log)->set_writer_term((*lease)->term).ok()) {
        rc = 1;
        break;
      }
      pg = run(**log, "postgresql", n);
    }
    std::printf("           %2d submitters: PostgreSQL at %.2fx RocksDB\n", n, pg / rocks);
  }
  std::filesystem::remove_all(rocks_dir);
  if (!pgdir.empty()) {
    (void)std::system((script + " stop " + pgdir + " fast >/dev/null").c_str());
    std::filesystem::remove_all(pgdir);
  }
  return rc;
}

// Shared-log benchmark (issue 12), printed as figures, all in one run so they compare:
// - durable commands/s through the pipeline on PostgreSQL against RocksDB, with 1, 16 and 64
//   submitters (3 s each, p50/p99 latency);
// - three atriumd on the log: durable POST /v1/users over HTTP (keep-alive, 16 and 64 clients)
//   through the leader and through a follower (forwarded), and the follower read lag (from the
//   leader's 201 to the follower's GET /v1/users/{id} answering 200), idle and under load;
// - failover: the leader SIGKILLed 20 times (ATRIUM_BENCH_KILLS) under 6 HTTP writers with
//   the default lease TTL (10 s), and 5 times with TTL 2 s; then SIGSTOPped (a frozen leader
//   whose database session stays: only the lease expiry hands over), 3 times at 10 s and 5 at
//   2 s. The time is from the kill to the first acknowledged write among those sent after it;
//   the killed broker is started again each round; after each row every acknowledged write is
//   checked on every broker, positions gap-free, and `atriumd verify` run.
// PostgreSQL is a throwaway server started with tools/pg_test.sh on a free port (fsync and
// synchronous_commit on), or the libpq URL given as the first argument (postgresql://...; a
// fresh schema is made in it per part). About 3 minutes.
// Usage: bench_ha [postgresql://...]
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
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

// ---- several atriumd on one PostgreSQL log ------------------------------------------------

constexpr const char* kToken = "atr_bench_ha_token_0123456789abcdef0123";

int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             SteadyClock::now().time_since_epoch())
      .count();
}

// One broker slot: a process that is killed and started again on a new port.
struct Broker {
  std::string dir;
  pid_t pid = -1;
  std::atomic<uint16_t> port{0};
};

struct Cluster {
  std::string store;  // postgresql://... for atriumd
  int ttl_s = 10;     // 10: the default (no flag given)
  std::string root;
  Broker b[3];

  // Starts slot i on a free port and waits until it is ready; false when it did not.
  bool start(int i) {
    Broker& s = b[i];
    const uint16_t port = free_port();
    std::vector<std::string> args = {"atriumd",
                                     "serve",
                                     "--listen=127.0.0.1:" + std::to_string(port),
                                     "--data-dir=" + s.dir,
                                     "--access-log=off",
                                     "--default-host=none",
                                     "--host-reconciler=off",
                                     "--store=" + store};
    if (ttl_s != 10) args.push_back("--lease-ttl-s=" + std::to_string(ttl_s));
    std::filesystem::create_directories(s.dir);
    // One secret.key for the cluster (atriumd refuses a broker with another).
    if (!std::filesystem::exists(s.dir + "/secret.key")) {
      std::ofstream(s.dir + "/secret.key", std::ios::binary) << std::string(32, 'b');
      std::filesystem::permissions(s.dir + "/secret.key", std::filesystem::perms::owner_read |
                                                              std::filesystem::perms::owner_write);
    }
    const std::string log = s.dir + "/stderr";
    s.pid = ::fork();
    if (s.pid == 0) {
      ::setenv("ATRIUM_BOOTSTRAP_TOKEN", kToken, 1);
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (fd >= 0) ::dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(ATRIUMD_PATH, argv.data());
      ::_exit(127);
    }
    for (int n = 0; n < 3000; ++n) {
      if (bench::http(port, "GET", "/readyz", "").first == 200) {
        s.port = port;
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::fprintf(stderr, "bench_ha: atriumd did not become ready (see %s)\n", log.c_str());
    return false;
  }
  void kill(int i, int sig) {
    if (b[i].pid <= 0) return;
    ::kill(b[i].pid, sig);
    if (sig == SIGKILL) {
      ::kill(b[i].pid, SIGCONT);
      int st = 0;
      ::waitpid(b[i].pid, &st, 0);
      b[i].pid = -1;
    }
  }
  void stop_all() {
    for (int i = 0; i < 3; ++i) kill(i, SIGKILL);
  }
  // The slot that leads now (GET /v1/cluster on the live brokers), or -1.
  int leader() {
    for (int round = 0; round < 400; ++round) {
      for (auto& asked : b) {
        if (asked.pid <= 0) continue;
        auto r = bench::http(asked.port, "GET", "/v1/cluster", kToken);
        if (r.first != 200) continue;
        auto j = nlohmann::json::parse(r.second, nullptr, false);
        if (j.is_discarded() || j["leader"].is_null()) continue;
        const std::string url = j["leader"]["url"];
        for (int i = 0; i < 3; ++i) {
          if (b[i].pid > 0 && url == "http://127.0.0.1:" + std::to_string(b[i].port.load())) {
            return i;
          }
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return -1;
  }
  ~Cluster() { stop_all(); }
};

// A fresh schema in the server and the atriumd --store URL that uses it.
std::string fresh_store(const std::string& url, const std::string& base, const std::string& tag) {
  const std::string schema = "bench_" + std::to_string(::getpid()) + "_" + tag;
  eventstore::pg::Conn admin(base);
  if (!admin.run("CREATE SCHEMA " + schema).ok()) return "";
  return url + (url.find('?') == std::string::npos ? "?" : "&") + "options=-csearch_path%3D" +
         schema;
}

std::string user_body(const std::string& name) {
  return "{\"name\":\"" + name + "\"}";
}

// N keep-alive clients POSTing new users to one port for `secs`: req/s of 201s, p50, p99.
void http_posts(const char* what, uint16_t port, int clients, double secs) {
  std::vector<std::vector<double>> lat(static_cast<size_t>(clients));
  std::atomic<uint64_t> failed{0};
  std::vector<std::thread> ts;
  static int run = 0;
  const int r = ++run;
  auto t0 = SteadyClock::now();
  for (int t = 0; t < clients; ++t) {
    ts.emplace_back([&, t] {
      bench::KeepAlive c(port);
      for (int i = 0; since(t0) < secs; ++i) {
        auto s = SteadyClock::now();
        auto res = c.request(
            "POST", "/v1/users", kToken,
            user_body("h" + std::to_string(r) + "-" + std::to_string(t) + "-" + std::to_string(i)));
        if (res.first == 201) {
          lat[static_cast<size_t>(t)].push_back(since(s));
        } else {
          ++failed;
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  const double elapsed = since(t0);
  std::vector<double> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  std::printf(
      "HTTP POST /v1/users via %-8s %2d keep-alive clients: %6.0f req/s (201); p50 %.2f ms, "
      "p99 %.2f ms; %llu not 201\n",
      what, clients, static_cast<double>(all.size()) / elapsed, bench::pct(all, 0.5) * 1000,
      bench::pct(all, 0.99) * 1000, static_cast<unsigned long long>(failed.load()));
  std::fflush(stdout);
}

// Writes at the leader, one at a time; after each 201, polls the follower's GET
// /v1/users/{id} until it answers 200: the time from the leader's 2xx to the follower serving
// it. `load` more clients keep writing to the leader meanwhile.
void follower_lag(uint16_t leader, uint16_t follower, int load, int samples) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> bg;
  for (int t = 0; t < load; ++t) {
    bg.emplace_back([&, t] {
      bench::KeepAlive c(leader);
      for (int i = 0; !stop; ++i) {
        (void)c.request("POST", "/v1/users", kToken,
                        user_body("lagbg" + std::to_string(load) + "-" + std::to_string(t) + "-" +
                                  std::to_string(i)));
      }
    });
  }
  bench::KeepAlive w(leader), r(follower);
  std::vector<double> lag;
  int missing = 0;
  for (int i = 0; i < samples; ++i) {
    auto res = w.request("POST", "/v1/users", kToken,
                         user_body("lag" + std::to_string(load) + "-" + std::to_string(i)));
    const auto acked = SteadyClock::now();
    if (res.first != 201) continue;
    const std::string id = nlohmann::json::parse(res.second, nullptr, false).value("id", "");
    bool seen = false;
    while (since(acked) < 5.0) {
      if (r.request("GET", "/v1/users/" + id, kToken).first == 200) {
        seen = true;
        break;
      }
    }
    if (seen) {
      lag.push_back(since(acked));
    } else {
      ++missing;
    }
  }
  stop = true;
  for (auto& t : bg) t.join();
  std::printf(
      "follower read lag (leader 2xx -> follower GET 200), %d other writers: p50 %.2f ms, "
      "p99 %.2f ms, max %.2f ms over %zu writes%s\n",
      load, bench::pct(lag, 0.5) * 1000, bench::pct(lag, 0.99) * 1000, bench::pct(lag, 1.0) * 1000,
      lag.size(), missing ? " (SOME NEVER SEEN)" : "");
  std::fflush(stdout);
}

// Every user name through one broker (all pages).
std::set<std::string> user_names(uint16_t port) {
  std::set<std::string> out;
  bench::KeepAlive c(port, 30000);
  std::string cursor;
  for (;;) {
    auto r = c.request("GET", "/v1/users?limit=1000" + (cursor.empty() ? "" : "&cursor=" + cursor),
                       kToken);
    if (r.first != 200) return {};
    auto j = nlohmann::json::parse(r.second, nullptr, false);
    for (auto& u : j["items"]) out.insert(u["name"].get<std::string>());
    if (j["next_cursor"].is_null()) break;
    cursor = j["next_cursor"];
  }
  return out;
}

// Positions 1..n without a gap, through one broker; the number of events, or -1 on a gap.
long gap_free_events(uint16_t port) {
  bench::KeepAlive c(port, 30000);
  uint64_t after = 0;
  for (;;) {
    auto r = c.request("GET", "/v1/events?limit=1000&after=" + std::to_string(after), kToken);
    if (r.first != 200) return -1;
    auto j = nlohmann::json::parse(r.second, nullptr, false);
    if (j["items"].empty()) break;
    for (auto& e : j["items"]) {
      if (e["position"].get<uint64_t>() != after + 1) return -1;
      after = e["position"].get<uint64_t>();
    }
    if (j["next_cursor"].is_null()) break;
  }
  return static_cast<long>(after);
}

// `rounds` times: the leader is killed with `sig` under 6 HTTP writers spread over the three
// brokers (each moves to the next broker on a failure); the failover time is from the kill to
// the first acknowledged write among those sent after it. The killed broker is started again
// (SIGSTOP: killed first) so there are three each round. Then: every acknowledged write on
// every broker, positions gap-free, atriumd verify.
bool failover(const std::string& store, int ttl_s, int rounds, int sig) {
  Cluster cl;
  cl.store = store;
  cl.ttl_s = ttl_s;
  cl.root = (std::filesystem::temp_directory_path() /
             ("atrium-bench-cluster-" + std::to_string(::getpid()) + "-" + std::to_string(ttl_s) +
              "-" + std::to_string(sig)))
                .string();
  for (int i = 0; i < 3; ++i) {
    cl.b[i].dir = cl.root + "/b" + std::to_string(i);
    if (!cl.start(i)) return false;
  }
  std::atomic<bool> stop{false};
  std::atomic<int64_t> mark{INT64_MAX};   // when the leader was killed (us)
  std::atomic<int64_t> first{INT64_MAX};  // earliest ack of a write sent after mark
  std::mutex mu;
  std::vector<std::string> acked;
  std::atomic<uint64_t> refused{0};
  std::vector<std::thread> ws;
  for (int t = 0; t < 6; ++t) {
    ws.emplace_back([&, t] {
      int at = t % 3;
      // A short timeout: a frozen leader (or a follower forwarding to it) holds a request
      // until it gives up; fresh writes must keep coming to see when writing works again.
      bench::KeepAlive c(cl.b[at].port, 500);
      for (int i = 0; !stop; ++i) {
        c.retarget(cl.b[at].port);
        const std::string name = "f" + std::to_string(t) + "-" + std::to_string(i);
        const int64_t sent = now_us();
        auto r = c.request("POST", "/v1/users", kToken, user_body(name));
        if (r.first == 201) {
          const int64_t done = now_us();
          if (sent > mark.load()) {
            int64_t cur = first.load();
            while (done < cur && !first.compare_exchange_weak(cur, done)) {
            }
          }
          std::lock_guard l(mu);
          acked.push_back(name);
        } else {
          // 503 (no leader yet): the same broker again, it forwards once one leads; no
          // answer (killed, frozen, restarting): the next broker.
          ++refused;
          if (r.first == 0) at = (at + 1) % 3;
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }
    });
  }
  std::vector<double> times;
  bool ok = true;
  for (int round = 0; round < rounds && ok; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    const int l = cl.leader();
    if (l < 0) {
      std::fprintf(stderr, "bench_ha: no leader\n");
      ok = false;
      break;
    }
    first = INT64_MAX;
    const int64_t t0 = now_us();
    mark = t0;
    cl.kill(l, sig);
    if (sig == SIGKILL) cl.b[l].port = 0;
    while (first.load() == INT64_MAX && (now_us() - t0) < 60'000'000) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (first.load() == INT64_MAX) {
      std::fprintf(stderr, "bench_ha: no write acknowledged within 60 s of the kill\n");
      ok = false;
      break;
    }
    times.push_back(static_cast<double>(first.load() - t0) / 1e6);
    mark = INT64_MAX;
    cl.kill(l, SIGKILL);  // a stopped one too
    if (!cl.start(l)) ok = false;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  for (auto& t : ws) t.join();
  // Checks: every acknowledged write on every broker, gap-free positions, verify.
  size_t lost = 0;
  for (auto& s : cl.b) {
    const uint16_t port = s.port;
    for (int n = 0; n < 200 && bench::http(port, "GET", "/readyz", "").first != 200; ++n) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::set<std::string> names;
    for (int n = 0; n < 50; ++n) {  // a follower may still be folding the tail
      names = user_names(port);
      size_t miss = 0;
      for (const auto& a : acked) miss += names.count(a) == 0 ? 1 : 0;
      if (miss == 0 || n == 49) {
        lost = std::max(lost, miss);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  const long events = gap_free_events(cl.b[0].port);
  const std::string vout = cl.root + "/verify.out";
  const int vrc = std::system(
      (std::string(ATRIUMD_PATH) + " verify --store='" + store + "' > " + vout + " 2>&1").c_str());
  const char* how = sig == SIGKILL ? "SIGKILL" : "SIGSTOP";
  std::printf(
      "failover after %s of the leader, lease TTL %d s%s, %zu kills: first acknowledged "
      "write after the kill p50 %.0f ms, max %.0f ms (min %.0f ms)\n",
      how, ttl_s, ttl_s == 10 ? " (default)" : "", times.size(), bench::pct(times, 0.5) * 1000,
      bench::pct(times, 1.0) * 1000, bench::pct(times, 0.0) * 1000);
  std::printf(
      "    %zu writes acknowledged, %zu lost (worst broker), %llu refused/unanswered "
      "(retried); positions 1..%ld %s; atriumd verify %s\n",
      acked.size(), lost, static_cast<unsigned long long>(refused.load()), events,
      events > 0 ? "gap-free" : "HAVE A GAP", vrc == 0 ? "ok" : "FAILED");
  std::fflush(stdout);
  cl.stop_all();
  std::filesystem::remove_all(cl.root);
  return ok && lost == 0 && events > 0 && vrc == 0 && times.size() == static_cast<size_t>(rounds);
}

// Three brokers for the HTTP throughput and the follower read lag.
bool http_and_lag(const std::string& store) {
  Cluster cl;
  cl.store = store;
  cl.root =
      (std::filesystem::temp_directory_path() / ("atrium-bench-http-" + std::to_string(::getpid())))
          .string();
  for (int i = 0; i < 3; ++i) {
    cl.b[i].dir = cl.root + "/b" + std::to_string(i);
    if (!cl.start(i)) return false;
  }
  const int l = cl.leader();
  if (l < 0) return false;
  const uint16_t leader = cl.b[l].port, follower = cl.b[(l + 1) % 3].port;
  for (int n : {16, 64}) {
    http_posts("leader", leader, n, 4.0);
    http_posts("follower", follower, n, 4.0);
  }
  follower_lag(leader, follower, 0, 300);
  follower_lag(leader, follower, 8, 300);
  cl.stop_all();
  std::filesystem::remove_all(cl.root);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string script = std::string(ATRIUM_BENCH_SOURCE_DIR) + "/tools/pg_test.sh";
  std::string url;  // a libpq URL: the store, and atriumd's --store
  std::string pgdir;
  if (argc > 1) {
    url = argv[1];
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
    url = "postgresql://postgres@127.0.0.1:" + std::to_string(port) + "/postgres";
  }
  const char* kills_env = std::getenv("ATRIUM_BENCH_KILLS");
  const int kills = kills_env != nullptr && *kills_env != '\0' ? std::atoi(kills_env) : 20;
  const std::string rocks_dir =
      (std::filesystem::temp_directory_path() / ("atrium-bench-ha-" + std::to_string(::getpid())))
          .string();
  const auto started = SteadyClock::now();
  int rc = 0;
  std::printf("== durable commands through the pipeline, same run\n");
  for (int n : {1, 16, 64}) {
    std::filesystem::remove_all(rocks_dir);
    double rocks = 0, pg = 0;
    {
      auto s = eventstore::open_rocksdb(rocks_dir);
      if (!s.ok()) return 1;
      rocks = run(**s, "rocksdb", n);
    }
    {
      const std::string conninfo = fresh_store(url, url, "p" + std::to_string(n));
      if (conninfo.empty()) {
        std::fprintf(stderr, "bench_ha: CREATE SCHEMA failed\n");
        rc = 1;
        break;
      }
      auto log = eventstore::open_postgres(conninfo);
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
  if (rc == 0) {
    std::printf("== three atriumd on one PostgreSQL log, over HTTP\n");
    if (!http_and_lag(fresh_store(url, url, "http"))) rc = 1;
  }
  if (rc == 0) {
    std::printf("== failover (6 HTTP writers over the 3 brokers; the killed one restarted)\n");
    struct Row {
      int sig, ttl, rounds;
    };
    for (Row r :
         {Row{SIGKILL, 10, kills}, Row{SIGKILL, 2, 5}, Row{SIGSTOP, 10, 3}, Row{SIGSTOP, 2, 5}}) {
      const std::string store =
          fresh_store(url, url, "f" + std::to_string(r.sig) + "_" + std::to_string(r.ttl));
      if (!failover(store, r.ttl, r.rounds, r.sig)) rc = 1;
    }
  }
  std::printf("bench_ha: %.0f s in all\n", since(started));
  if (!pgdir.empty()) {
    (void)std::system((script + " stop " + pgdir + " fast >/dev/null").c_str());
    std::filesystem::remove_all(pgdir);
  }
  return rc;
}

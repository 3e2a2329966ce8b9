// atriumd: the only composition root. Parses configuration (flags, then ATRIUM_* environment
// fallbacks, then defaults), builds the daemon, and waits for SIGTERM/SIGINT.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "api/crypto.h"
#include "api/daemon.h"
#include "common/broker_groups.h"
#include "eventstore/event_store.h"
#include "eventstore/shared_log.h"

namespace {

struct Flag {
  const char* name;
  const char* env;
  const char* help;
};

const std::vector<Flag> kFlags = {
    {"listen", "ATRIUM_LISTEN", "host:port to listen on (default 127.0.0.1:8080)"},
    {"data-dir", "ATRIUM_DATA_DIR", "data directory (default ./data)"},
    {"store", "ATRIUM_STORE",
     "rocksdb (default, in --data-dir) or a PostgreSQL URL postgresql://... shared by brokers"},
    {"from", "ATRIUM_MIGRATE_FROM", "atriumd migrate: the source, rocksdb:DATA_DIR"},
    {"to", "ATRIUM_MIGRATE_TO", "atriumd migrate: the target, an empty postgresql://... log"},
    {"lease-ttl-s", "ATRIUM_LEASE_TTL_S",
     "leader lease on a PostgreSQL store, renewed every third; also the wait for the leader's "
     "answer to a forwarded write (default 10)"},
    {"advertise-url", "ATRIUM_ADVERTISE_URL",
     "this broker's URL for the other brokers (default http://<listen>)"},
    {"cluster-secret", "ATRIUM_CLUSTER_SECRET",
     "shared by the brokers of one PostgreSQL log (32+ characters; prefer the environment): "
     "signs forwarded client addresses and relayed agent heartbeats"},
    {"threads", "ATRIUM_THREADS", "HTTP worker threads (default 16)"},
    {"max-body-bytes", "ATRIUM_MAX_BODY_BYTES", "request body limit (default 1048576)"},
    {"token-ttl-s", "ATRIUM_TOKEN_TTL_S",
     "login token lifetime in seconds, 60 to 31536000 (default 43200)"},
    {"bootstrap-token-ttl-s", "ATRIUM_BOOTSTRAP_TOKEN_TTL_S",
     "bootstrap token lifetime from the start that registers it, 60 to 31536000 seconds (default "
     "86400)"},
    {"login-failures-per-user", "ATRIUM_LOGIN_FAILURES_PER_USER",
     "failed logins per name and window before 429 (default 10)"},
    {"login-failures-per-address", "ATRIUM_LOGIN_FAILURES_PER_ADDRESS",
     "failed logins per source address and window before 429 (default 50)"},
    {"login-throttle-window-s", "ATRIUM_LOGIN_THROTTLE_WINDOW_S",
     "login throttle window (default 60)"},
    {"directory-recheck-s", "ATRIUM_DIRECTORY_RECHECK_S",
     "a directory user's token is checked against its directory again after, 1 to 86400 (default "
     "300)"},
    {"streams-per-user", "ATRIUM_STREAMS_PER_USER",
     "event-stream long-polls one user may hold at once (default 2)"},
    {"stream-budgets", "ATRIUM_STREAM_BUDGETS",
     "long-polls held at once per role (default admin:2,user:4,agent:2)"},
    {"keepalive-timeout-s", "ATRIUM_KEEPALIVE_TIMEOUT_S",
     "an idle persistent HTTP connection closes after N seconds (default 10)"},
    {"max-connections", "ATRIUM_MAX_CONNECTIONS",
     "open HTTP connections at most (default: what the descriptor limit leaves after a reserve)"},
    {"max-connections-per-ip", "ATRIUM_MAX_CONNECTIONS_PER_IP",
     "open HTTP connections per client address at most (default 512)"},
    {"tls-cert", "ATRIUM_TLS_CERT", "PEM certificate; enables TLS with --tls-key"},
    {"tls-key", "ATRIUM_TLS_KEY", "PEM private key"},
    {"bootstrap-token-file", "ATRIUM_BOOTSTRAP_TOKEN_FILE",
     "file holding the first admin token (ATRIUM_BOOTSTRAP_TOKEN also works)"},
    {"access-log", "ATRIUM_ACCESS_LOG", "on|off (default on, to stderr)"},
    {"queue-capacity", "ATRIUM_QUEUE_CAPACITY", "command queue bound (default 10000)"},
    {"web-dir", "ATRIUM_WEB_DIR",
     "serve the web portal from this directory (web/public) instead of the built-in copy"},
    {"default-host", "ATRIUM_DEFAULT_HOST",
     "libvirt URI of the host added on first start (default test:///default; none = no host)"},
    {"allow-test-hosts", "ATRIUM_ALLOW_TEST_HOSTS",
     "on|off: POST /v1/hosts accepts libvirt test:/// URIs, which read a local file (default off)"},
    {"allow-tcp-hosts", "ATRIUM_ALLOW_TCP_HOSTS",
     "on|off: accept qemu+tcp:// host URIs, unencrypted (default off)"},
    {"host-uri-params", "ATRIUM_HOST_URI_PARAMS",
     "comma-separated libvirt URI query parameters to allow beyond the safe ones, e.g. keyfile"},
    {"host-reconciler", "ATRIUM_HOST_RECONCILER",
     "on|off: connect to hosts and reconcile VMs (default on)"},
    {"host-resync-s", "ATRIUM_HOST_RESYNC_S",
     "full relist of each host every N seconds (default 30)"},
    {"host-connect-timeout-s", "ATRIUM_HOST_CONNECT_TIMEOUT_S",
     "a host not up after N seconds goes to alert (default 300)"},
    {"client-timeout-s", "ATRIUM_CLIENT_TIMEOUT_S",
     "a desktop session whose client has not reported for N seconds is deactivated (default 90)"},
    {"launch-wait-s", "ATRIUM_LAUNCH_WAIT_S",
     "a launch waits at most N seconds for its desktop to run (default 60)"},
    {"ticket-ttl-s", "ATRIUM_TICKET_TTL_S",
     "one-time display passwords expire after N seconds (default 120)"},
    {"spice-listen", "ATRIUM_SPICE_LISTEN",
     "address desktops' SPICE displays listen on (default: the template's)"},
    {"placement-scope", "ATRIUM_PLACEMENT_SCOPE",
     "application launches: prefer_server|prefer_cluster (default prefer_server)"},
    {"placement-policy", "ATRIUM_PLACEMENT_POLICY",
     "choice between targets: first|least_loaded|round_robin (default least_loaded)"},
    {"load-stale-s", "ATRIUM_LOAD_STALE_S",
     "server load reports older than N seconds are stale (default 90)"},
    {"load-weights", "ATRIUM_LOAD_WEIGHTS",
     "cpu,memory,sessions weights of a target's load (default 0.3,0.6,0.1)"},
    {"agent-heartbeat-s", "ATRIUM_AGENT_HEARTBEAT_S",
     "agents heartbeat every N seconds, 1 to 3600 (default 30)"},
    {"agent-grace-factor", "ATRIUM_AGENT_GRACE_FACTOR",
     "an agent silent for heartbeat x N is unregistered, 2 to 100 (default 3)"},
    {"agent-brokers", "ATRIUM_AGENT_BROKERS",
     "broker groups given to agents, e.g. \"(http://b1:8080 http://b2:8080)(http://b3:8080)\" "
     "(default: the address the agent reached)"},
    {"accept-data-loss", "ATRIUM_ACCEPT_DATA_LOSS",
     "yes: start although the WAL is damaged mid-log, dropping what follows (default no)"},
};

// Flags that may stand alone (--flag means --flag=yes).
bool is_switch(const std::string& name) {
  return name == "accept-data-loss";
}

void usage() {
  std::fprintf(
      stderr,
      "usage: atriumd [serve] [--flag=value ...]\n"
      "       atriumd verify [--data-dir=DIR | --store=postgresql://...]\n"
      "                                        walk the log and its hash chain, read-only\n"
      "         (exit 0: ok; 1: damaged: broken chain, corruption, WAL damage that\n"
      "          recovery would drop acknowledged events for; 3: could not check)\n"
      "       atriumd migrate --from=rocksdb:DATA_DIR --to=postgresql://...\n"
      "                                        copy a stopped broker's log, with its hash\n"
      "                                        chain, records and snapshots, to an empty\n"
      "                                        PostgreSQL log (exit 0: copied and verified)\n\n");
  for (const auto& f : kFlags) std::fprintf(stderr, "  --%-22s %s [%s]\n", f.name, f.help, f.env);
}

std::optional<std::string> setting(const std::map<std::string, std::string>& flags,
                                   const Flag& f) {
  if (auto it = flags.find(f.name); it != flags.end()) return it->second;
  if (const char* v = std::getenv(f.env)) return std::string(v);
  return std::nullopt;
}

bool to_int(const std::string& s, long long& out) {
  char* end = nullptr;
  errno = 0;
  out = std::strtoll(s.c_str(), &end, 10);
  return errno == 0 && end != s.c_str() && *end == '\0';
}

std::optional<bool> yes_no(const std::string& v) {
  if (v == "yes" || v == "true" || v == "on" || v == "1") return true;
  if (v == "no" || v == "false" || v == "off" || v == "0") return false;
  return std::nullopt;
}

// atriumd verify: never changes a byte of the store. Opens it read-only, or as a RocksDB
// secondary instance while a daemon holds it, walks the WAL and the hash chain.
// Exit 0: ok (a torn WAL tail is only a warning); 1: damaged; 3: could not check.
int verify(const std::string& data_dir) {
  namespace es = atrium::eventstore;
  const std::string dir = data_dir + "/events";
  const bool running = es::rocksdb_locked(dir);
  es::RocksOptions o;
  o.create_if_missing = false;
  o.block_cache_bytes = 8u << 20;
  o.mode = running ? es::OpenMode::secondary : es::OpenMode::read_only;
  o.warn = [](const std::string& line) {
    std::fprintf(stderr, "atriumd verify: %s\n", line.c_str());
  };
  es::WalReport wal;
  o.wal_report = &wal;
  auto store = es::open_rocksdb(dir, o);
  if (!store.ok()) {
    const bool damaged = store.error().reason == "storage_corrupt";
    std::fprintf(stderr, "atriumd verify: %s %s: %s\n",
                 damaged ? "damaged store at" : "cannot check", data_dir.c_str(),
                 store.error().message.c_str());
    return damaged ? 1 : 3;
  }
  if (running) {
    std::printf("note: a daemon runs on this store; checked alongside it, as of now\n");
  }
  int rc = 0;
  auto rep = (*store)->verify();
  if (!rep.ok()) {
    std::fprintf(stderr, "atriumd verify: %s\n", rep.error().message.c_str());
    return rep.error().reason == "storage_corrupt" ? 1 : 3;
  }
  if (rep->ok) {
    std::printf("ok: %llu events, hash chain intact\n",
                static_cast<unsigned long long>(rep->events_checked));
  } else {
    std::printf("BROKEN at position %llu: %s (%llu events checked)\n",
                static_cast<unsigned long long>(rep->first_bad_position), rep->problem.c_str(),
                static_cast<unsigned long long>(rep->events_checked));
    rc = 1;
  }
  const unsigned long long dropped = wal.damaged ? wal.dropped_bytes + wal.later_bytes : 0;
  if (!wal.damaged) {
    std::printf("wal: %llu files, %llu bytes, 0 bytes dropped: %s\n",
                static_cast<unsigned long long>(wal.files),
                static_cast<unsigned long long>(wal.bytes), wal.describe().c_str());
  } else if (wal.torn_tail()) {
    std::printf("wal: WARNING: %llu bytes dropped at recovery: %s\n", dropped,
                wal.describe().c_str());
  } else {
    std::printf("wal: DAMAGED: %llu bytes dropped at recovery: %s\n", dropped,
                wal.describe().c_str());
    rc = 1;
  }
  auto losses = (*store)->get_checkpoint(es::kDataLossCheckpoint);
  if (losses.ok() && losses->has_value()) {
    std::printf("note: data loss accepted earlier on this store:\n%s", (*losses)->c_str());
  }
  return rc;
}

}  // namespace

// atriumd verify on a PostgreSQL store: reads only (it never takes the lease).
int verify_postgres(const std::string& conninfo) {
  namespace es = atrium::eventstore;
  auto log = es::open_postgres(conninfo);
  if (!log.ok()) {
    std::fprintf(stderr, "atriumd verify: cannot check: %s\n", log.error().message.c_str());
    return 3;
  }
  auto rep = (*log)->verify();
  if (!rep.ok()) {
    std::fprintf(stderr, "atriumd verify: %s\n", rep.error().message.c_str());
    return 3;
  }
  if (!rep->ok) {
    std::printf("DAMAGED at position %llu: %s (%llu events verified before it)\n",
                static_cast<unsigned long long>(rep->first_bad_position), rep->problem.c_str(),
                static_cast<unsigned long long>(rep->events_checked));
    return 1;
  }
  std::printf("ok: %llu events, hash chain intact (%s)\n",
              static_cast<unsigned long long>(rep->events_checked),
              es::redact_conninfo(conninfo).c_str());
  return 0;
}

// atriumd migrate: copies a RocksDB log verbatim (positions, versions, hashes), its
// idempotency records and checkpoints into an empty PostgreSQL log, then verifies the copy.
int migrate(const std::string& from, const std::string& to) {
  namespace es = atrium::eventstore;
  if (from.rfind("rocksdb:", 0) != 0 || !atrium::api::is_postgres_store(to)) {
    std::fprintf(stderr,
                 "atriumd migrate: --from=rocksdb:DATA_DIR --to=postgresql://... are needed\n");
    return 2;
  }
  const std::string data_dir = from.substr(std::string_view("rocksdb:").size());
  const std::string dir = data_dir + "/events";
  if (es::rocksdb_locked(dir)) {
    std::fprintf(stderr, "atriumd migrate: a broker runs on %s; stop it first\n", dir.c_str());
    return 1;
  }
  es::RocksOptions ro;
  ro.mode = es::OpenMode::read_only;
  ro.create_if_missing = false;
  auto src = es::open_rocksdb(dir, ro);
  if (!src.ok()) {
    std::fprintf(stderr, "atriumd migrate: %s: %s\n", dir.c_str(), src.error().message.c_str());
    return 1;
  }
  auto dst = es::open_postgres(to);
  if (!dst.ok()) {
    std::fprintf(stderr, "atriumd migrate: %s\n", dst.error().message.c_str());
    return 1;
  }
  es::SharedLog& log = **dst;
  auto lease = log.try_acquire({"migrate", "", std::chrono::minutes(10)});
  if (!lease.ok() || !lease->has_value()) {
    std::fprintf(stderr, "atriumd migrate: a broker leads the target log; stop it first\n");
    return 1;
  }
  const uint64_t term = (*lease)->term;
  auto fail = [&](const std::string& why) {
    (void)log.release(term, "migrate");
    std::fprintf(stderr, "atriumd migrate: %s\n", why.c_str());
    return 1;
  };
  if ((*lease)->position != 0) return fail("the target log is not empty");
  // The brokers on the copy must open what this one sealed: its secret.key becomes the
  // cluster's (they refuse to start with another).
  const std::string key_file = data_dir + "/secret.key";
  if (::access(key_file.c_str(), F_OK) == 0) {
    auto key = atrium::api::load_or_create_secret_key(key_file);
    if (!key.ok()) return fail(key_file + ": " + key.error().message);
    if (auto st = atrium::api::claim_cluster_secret_key(log, *key, key_file); !st) {
      return fail(st.error().message);
    }
  }
  if (auto st = log.set_writer_term(term); !st) return fail(st.error().message);
  std::vector<es::RecordedEvent> batch;
  atrium::Status copied = atrium::Status::Ok();
  auto flush = [&] {
    if (batch.empty() || !copied.ok()) return;
    auto r = log.import(batch);
    if (!r.ok()) copied = r.error();
    batch.clear();
  };
  auto scanned = (*src)->scan(0, 0, [&](const es::RecordedEvent& e) {
    batch.push_back(e);
    if (batch.size() == 1000) flush();
    return copied.ok();
  });
  flush();
  if (!scanned.ok()) return fail(scanned.error().message);
  if (!copied.ok()) return fail(copied.error().message);
  uint64_t records[2] = {0, 0};
  for (bool checkpoints : {false, true}) {
    std::vector<std::pair<std::string, std::string>> recs;
    auto put = [&] {
      if (recs.empty() || !copied.ok()) return;
      if (auto st = log.import_records(recs, checkpoints); !st) copied = st.error();
      records[checkpoints ? 1 : 0] += recs.size();
      recs.clear();
    };
    auto st = (*src)->scan_records(checkpoints, [&](std::string_view k, std::string_view v) {
      recs.emplace_back(std::string(k), std::string(v));
      if (recs.size() == 500) put();
      return copied.ok();
    });
    put();
    if (!st.ok()) return fail(st.error().message);
    if (!copied.ok()) return fail(copied.error().message);
  }
  auto rep = log.verify();
  if (!rep.ok()) return fail(rep.error().message);
  if (!rep->ok) return fail("the copy does not verify: " + rep->problem);
  if (rep->events_checked != *scanned) return fail("the copy holds a different number of events");
  (void)log.release(term, "migrate");
  std::printf(
      "migrated %llu events (hash chain verified), %llu idempotency records and %llu "
      "checkpoints to %s\n",
      static_cast<unsigned long long>(*scanned), static_cast<unsigned long long>(records[0]),
      static_cast<unsigned long long>(records[1]), es::redact_conninfo(to).c_str());
  return 0;
}

int main(int argc, char** argv) {
  std::string command = "serve";
  std::map<std::string, std::string> flags;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      usage();
      return 0;
    }
    if (a.rfind("--", 0) == 0) {
      std::string kv = a.substr(2);
      auto eq = kv.find('=');
      std::string k = kv.substr(0, eq), v;
      if (eq != std::string::npos) {
        v = kv.substr(eq + 1);
      } else if (is_switch(k)) {
        v = "yes";
      } else if (i + 1 < argc) {
        v = argv[++i];
      }
      bool known = false;
      for (const auto& f : kFlags) known = known || k == f.name;
      if (!known) {
        std::fprintf(stderr, "atriumd: unknown flag --%s\n", k.c_str());
        usage();
        return 2;
      }
      flags[k] = v;
    } else if (i == 1) {
      command = a;
    } else {
      usage();
      return 2;
    }
  }
  auto get = [&](const char* name) {
    for (const auto& f : kFlags) {
      if (std::string(f.name) == name) return setting(flags, f);
    }
    return std::optional<std::string>();
  };

  atrium::api::DaemonConfig cfg;
  if (auto v = get("data-dir")) cfg.data_dir = *v;
  if (auto v = get("store")) {
    if (*v != "rocksdb" && !atrium::api::is_postgres_store(*v)) {
      std::fprintf(stderr,
                   "atriumd: bad --store: rocksdb or a PostgreSQL URL (postgresql://...)\n");
      return 2;
    }
    cfg.store = *v;
  }

  if (command == "migrate") {
    return migrate(get("from").value_or(""), get("to").value_or(""));
  }
  if (command == "verify") {
    return cfg.store == "rocksdb" ? verify(cfg.data_dir) : verify_postgres(cfg.store);
  }
  if (command != "serve") {
    usage();
    return 2;
  }

  if (auto v = get("listen")) {
    auto colon = v->rfind(':');
    long long port = 0;
    if (colon == std::string::npos || !to_int(v->substr(colon + 1), port) || port < 0 ||
        port > 65535) {
      std::fprintf(stderr, "atriumd: --listen must be host:port, got '%s'\n", v->c_str());
      return 2;
    }
    cfg.api.host = v->substr(0, colon);
    cfg.api.port = static_cast<uint16_t>(port);
  }
  long long n = 0;
  if (auto v = get("lease-ttl-s")) {
    if (!to_int(*v, n) || n < 1 || n > 3600) {
      return std::fprintf(stderr, "atriumd: bad --lease-ttl-s (1 to 3600 seconds)\n"), 2;
    }
    cfg.lease_ttl = std::chrono::seconds(n);
  }
  if (auto v = get("advertise-url")) {
    if (v->rfind("http://", 0) != 0 && v->rfind("https://", 0) != 0) {
      return std::fprintf(stderr, "atriumd: bad --advertise-url (http://... or https://...)\n"), 2;
    }
    cfg.advertise_url = *v;
  }
  if (auto v = get("cluster-secret")) {
    if (v->size() < 32 || v->size() > 1024) {
      return std::fprintf(stderr, "atriumd: bad --cluster-secret (32 to 1024 characters)\n"), 2;
    }
    cfg.api.cluster_secret = *v;
  }
  if (auto v = get("threads")) {
    if (!to_int(*v, n) || n < 1 || n > 512) return std::fprintf(stderr, "atriumd: bad --threads\n"), 2;
    cfg.api.threads = static_cast<int>(n);
  }
  if (auto v = get("max-body-bytes")) {
    if (!to_int(*v, n) || n < 1024) return std::fprintf(stderr, "atriumd: bad --max-body-bytes\n"), 2;
    cfg.api.max_body_bytes = static_cast<size_t>(n);
  }
  if (auto v = get("max-connections")) {
    if (!to_int(*v, n) || n < 16) {
      return std::fprintf(stderr, "atriumd: bad --max-connections (at least 16)\n"), 2;
    }
    cfg.api.max_connections = static_cast<size_t>(n);
  }
  if (auto v = get("max-connections-per-ip")) {
    if (!to_int(*v, n) || n < 1) {
      return std::fprintf(stderr, "atriumd: bad --max-connections-per-ip\n"), 2;
    }
    cfg.api.max_connections_per_ip = static_cast<size_t>(n);
  }
  constexpr long long kMaxTokenTtlS = 365LL * 24 * 3600;  // bounded: ms must never overflow
  if (auto v = get("token-ttl-s")) {
    if (!to_int(*v, n) || n < 60 || n > kMaxTokenTtlS) {
      return std::fprintf(stderr, "atriumd: bad --token-ttl-s (60 to %lld seconds)\n",
                          kMaxTokenTtlS),
             2;
    }
    cfg.api.token_ttl_ms = n * 1000;
  }
  if (auto v = get("bootstrap-token-ttl-s")) {
    if (!to_int(*v, n) || n < 60 || n > kMaxTokenTtlS) {
      return std::fprintf(stderr, "atriumd: bad --bootstrap-token-ttl-s (60 to %lld seconds)\n",
                          kMaxTokenTtlS),
             2;
    }
    cfg.bootstrap_token_ttl_ms = n * 1000;
  }
  auto count = [&](const char* name, long long min, long long max, auto& out) {
    auto v = get(name);
    if (!v) return true;
    if (!to_int(*v, n) || n < min || n > max) {
      std::fprintf(stderr, "atriumd: bad --%s (%lld to %lld)\n", name, min, max);
      return false;
    }
    out = static_cast<std::remove_reference_t<decltype(out)>>(n);
    return true;
  };
  long long window_s = cfg.api.login.window_ms / 1000;
  if (!count("login-failures-per-user", 1, 1000000, cfg.api.login.failures_per_user) ||
      !count("login-failures-per-address", 1, 1000000, cfg.api.login.failures_per_address) ||
      !count("login-throttle-window-s", 1, 86400, window_s) ||
      !count("streams-per-user", 1, 1000, cfg.api.streams_per_user)) {
    return 2;
  }
  cfg.api.login.window_ms = window_s * 1000;
  long long recheck_s = cfg.api.directory_recheck_ms / 1000;
  if (!count("directory-recheck-s", 1, 86400, recheck_s)) return 2;
  cfg.api.directory_recheck_ms = recheck_s * 1000;
  if (auto v = get("stream-budgets")) {
    // role:count,... for the roles admin, user, agent (a role left out keeps its default)
    std::string rest = *v;
    while (!rest.empty()) {
      auto comma = rest.find(',');
      std::string item = rest.substr(0, comma);
      rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
      auto colon = item.find(':');
      std::string role = item.substr(0, colon);
      if (colon == std::string::npos || !cfg.api.stream_budgets.count(role) ||
          !to_int(item.substr(colon + 1), n) || n < 0 || n > 1000) {
        std::fprintf(stderr,
                     "atriumd: bad --stream-budgets: '%s' (role:count for admin, user, agent)\n",
                     item.c_str());
        return 2;
      }
      cfg.api.stream_budgets[role] = static_cast<size_t>(n);
    }
  }
  if (auto v = get("queue-capacity")) {
    if (!to_int(*v, n) || n < 1) return std::fprintf(stderr, "atriumd: bad --queue-capacity\n"), 2;
    cfg.pipeline.queue_capacity = static_cast<size_t>(n);
  }
  if (auto v = get("host-reconciler")) cfg.host_manager = *v != "off";
  if (auto v = get("host-resync-s")) {
    if (!to_int(*v, n) || n < 1) return std::fprintf(stderr, "atriumd: bad --host-resync-s\n"), 2;
    cfg.hosts.resync_interval = std::chrono::seconds(n);
  }
  if (auto v = get("host-connect-timeout-s")) {
    if (!to_int(*v, n) || n < 1) {
      return std::fprintf(stderr, "atriumd: bad --host-connect-timeout-s\n"), 2;
    }
    cfg.hosts.connect_timeout = std::chrono::seconds(n);
  }
  auto seconds = [&](const char* name, long long min, long long max, std::chrono::milliseconds& out) {
    auto v = get(name);
    if (!v) return true;
    if (!to_int(*v, n) || n < min || n > max) {
      std::fprintf(stderr, "atriumd: bad --%s (%lld to %lld seconds)\n", name, min, max);
      return false;
    }
    out = std::chrono::seconds(n);
    return true;
  };
  if (!seconds("keepalive-timeout-s", 1, 3600, cfg.api.keepalive_timeout) ||
      !seconds("client-timeout-s", 5, 86400, cfg.pools.client_timeout) ||
      !seconds("launch-wait-s", 1, 3600, cfg.pools.launch_wait) ||
      !seconds("ticket-ttl-s", 10, 86400, cfg.pools.ticket_ttl)) {
    return 2;
  }
  if (auto v = get("spice-listen")) cfg.pools.spice_listen = *v;
  if (auto v = get("placement-scope")) {
    auto p = atrium::domain::parse_scope_preference(*v);
    if (!p) return std::fprintf(stderr, "atriumd: bad --placement-scope '%s'\n", v->c_str()), 2;
    cfg.api.placement.scope_preference = *p;
  }
  if (auto v = get("placement-policy")) {
    auto p = atrium::domain::parse_inter_policy(*v);
    if (!p) return std::fprintf(stderr, "atriumd: bad --placement-policy '%s'\n", v->c_str()), 2;
    cfg.api.placement.inter_target = *p;
  }
  if (auto v = get("load-stale-s")) {
    if (!to_int(*v, n) || n < 1) return std::fprintf(stderr, "atriumd: bad --load-stale-s\n"), 2;
    cfg.api.placement.stale_after_ms = n * 1000;
  }
  if (auto v = get("load-weights")) {
    double w[3];
    char tail = 0;
    if (std::sscanf(v->c_str(), "%lf,%lf,%lf%c", &w[0], &w[1], &w[2], &tail) != 3) {
      return std::fprintf(stderr, "atriumd: --load-weights must be cpu,memory,sessions\n"), 2;
    }
    cfg.api.placement.load_weights = {w[0], w[1], w[2]};
  }
  if (!count("agent-heartbeat-s", 1, 3600, cfg.api.agent_heartbeat_ms) ||
      !count("agent-grace-factor", 2, 100, cfg.api.agent_grace_factor)) {
    return 2;
  }
  if (get("agent-heartbeat-s")) cfg.api.agent_heartbeat_ms *= 1000;
  if (auto v = get("agent-brokers")) {
    if (!atrium::parse_broker_groups(*v)) {
      std::fprintf(stderr,
                   "atriumd: bad --agent-brokers '%s' (groups such as \"(http://b1:8080 "
                   "http://b2:8080)(http://b3:8080)\")\n",
                   v->c_str());
      return 2;
    }
    cfg.api.agent_brokers = *v;
  }
  if (auto st = atrium::domain::validate_placement_config(cfg.api.placement); !st.ok()) {
    std::fprintf(stderr, "atriumd: %s\n", st.error().message.c_str());
    return 2;
  }
  if (auto v = get("tls-cert")) cfg.api.tls_cert = *v;
  if (auto v = get("tls-key")) cfg.api.tls_key = *v;
  if (cfg.api.tls_cert.empty() != cfg.api.tls_key.empty()) {
    std::fprintf(stderr, "atriumd: --tls-cert and --tls-key go together\n");
    return 2;
  }
  if (auto v = get("access-log")) cfg.api.access_log = *v != "off";
  if (auto v = get("web-dir")) {
    std::ifstream index(*v + "/index.html");
    if (v->empty() || !index) {
      std::fprintf(stderr, "atriumd: bad --web-dir: %s has no index.html\n", v->c_str());
      return 2;
    }
    cfg.api.web_dir = *v;
  }
  if (auto v = get("accept-data-loss")) {
    auto b = yes_no(*v);
    if (!b)
      return std::fprintf(stderr, "atriumd: bad --accept-data-loss '%s' (yes|no)\n", v->c_str()), 2;
    cfg.accept_data_loss = *b;
  }
  if (auto v = get("default-host")) cfg.default_host_uri = *v == "none" ? "" : *v;
  auto on_off = [&](const char* name, bool& out) {
    auto v = get(name);
    if (!v) return true;
    if (*v != "on" && *v != "off") {
      std::fprintf(stderr, "atriumd: --%s must be on or off, got '%s'\n", name, v->c_str());
      return false;
    }
    out = *v == "on";
    return true;
  };
  if (!on_off("allow-test-hosts", cfg.host_uris.allow_test) ||
      !on_off("allow-tcp-hosts", cfg.host_uris.allow_tcp)) {
    return 2;
  }
  if (auto v = get("host-uri-params")) {
    std::string list = *v + ",";
    for (size_t p = 0, c; (c = list.find(',', p)) != std::string::npos; p = c + 1) {
      std::string name = list.substr(p, c - p);
      bool ok = !name.empty();
      for (char ch : name) ok = ok && ((ch >= 'a' && ch <= 'z') || ch == '_');
      if (!ok) {
        std::fprintf(stderr, "atriumd: --host-uri-params takes names like keyfile,pkipath; got '%s'\n",
                     v->c_str());
        return 2;
      }
      cfg.host_uris.extra_params.insert(name);
    }
  }
  if (const char* t = std::getenv("ATRIUM_BOOTSTRAP_TOKEN"); t && *t) cfg.bootstrap_token = t;
  if (auto v = get("bootstrap-token-file")) {
    std::ifstream in(*v);
    std::string tok;
    if (!in || !std::getline(in, tok) || tok.empty()) {
      std::fprintf(stderr, "atriumd: cannot read a token from %s\n", v->c_str());
      return 2;
    }
    cfg.bootstrap_token = tok;
  }
  if (cfg.bootstrap_token && cfg.bootstrap_token->size() < atrium::api::kMinBootstrapTokenChars) {
    std::fprintf(stderr,
                 "atriumd: the bootstrap token (ATRIUM_BOOTSTRAP_TOKEN or "
                 "--bootstrap-token-file) must be at least %zu characters\n",
                 atrium::api::kMinBootstrapTokenChars);
    return 2;
  }

  // Nothing the daemon writes (store, credentials, snapshots) is for other users, whatever
  // umask it was started with.
  ::umask(077);

  // Signals are taken synchronously by this thread; every thread started later inherits
  // the blocked mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Descriptors: the soft limit up to the hard one; the HTTP server derives its connection
  // cap from it (README, Configuration).
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }

  auto daemon = atrium::api::Daemon::start(cfg);
  if (!daemon.ok()) {
    std::fprintf(stderr, "atriumd: cannot start: %s\n", daemon.error().message.c_str());
    return 1;
  }
  const std::string where = cfg.store == "rocksdb"
                                ? cfg.data_dir
                                : atrium::eventstore::redact_conninfo(cfg.store) + " (shared log)";
  std::fprintf(stderr, "atriumd: listening on %s:%u%s, data in %s\n", cfg.api.host.c_str(),
               (*daemon)->port(), cfg.api.tls_cert.empty() ? "" : " (TLS)", where.c_str());
  std::fprintf(stderr,
               "atriumd: at most %zu HTTP connections (%zu per address; %llu descriptors)\n",
               (*daemon)->http_server().max_connections(),
               (*daemon)->http_server().max_connections_per_ip(),
               static_cast<unsigned long long>(nofile.rlim_cur));
  int sig = 0;
  sigwait(&set, &sig);
  std::fprintf(stderr, "atriumd: %s received, draining\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  (*daemon)->stop();
  daemon->reset();
  std::fprintf(stderr, "atriumd: stopped cleanly\n");
  return 0;
}

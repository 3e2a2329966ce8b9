#include "api/daemon.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>
#include <thread>

#include "adapters/fenced_hypervisor.h"
#include "adapters/ldap_directory.h"
#include "api/crypto.h"
#include "api/forwarder.h"
#include "api/liveness_relay.h"

namespace atrium::api {

using domain::State;

namespace {

// 0700 directories and 0600 files under `dir` (and `dir` itself), whatever made them.
void private_tree(const std::string& dir) {
  namespace fs = std::filesystem;
  auto fix = [](const fs::path& p) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0 || S_ISLNK(st.st_mode)) return;
    const mode_t want = S_ISDIR(st.st_mode) ? 0700 : 0600;
    if ((st.st_mode & 07777) != want) (void)::chmod(p.c_str(), want);
  };
  fix(dir);
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    fix(it->path());
  }
}

std::string default_member_id() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "broker");
  return std::string(host) + "-" + std::to_string(::getpid()) + "-" + random_hex(4);
}

}  // namespace

bool is_postgres_store(const std::string& store) {
  return store.rfind("postgresql://", 0) == 0 || store.rfind("postgres://", 0) == 0;
}

Status claim_cluster_secret_key(eventstore::SharedLog& log, const std::string& key,
                                const std::string& key_file) {
  const std::string mine = secret_key_check(key);
  auto first = log.claim_setting("secret_key_check", mine);
  if (!first.ok()) return first.error();
  if (*first != mine) {
    return Error::make(Code::failed_precondition,
                       key_file +
                           " is not the key of the brokers already on this log: copy "
                           "secret.key (0600) from one of them into this data dir",
                       "secret_key_mismatch");
  }
  return Status::Ok();
}

Result<std::unique_ptr<Daemon>> Daemon::start(DaemonConfig cfg, pipeline::Clock clock) {
  if (!crypto_init()) return Error::make(Code::internal, "libsodium failed to initialise");
  if (cfg.bootstrap_token && cfg.bootstrap_token->size() < kMinBootstrapTokenChars) {
    return Error::make(Code::invalid_argument,
                       "the bootstrap token must be at least " +
                           std::to_string(kMinBootstrapTokenChars) + " characters",
                       "bootstrap_token_too_short");
  }
  std::unique_ptr<Daemon> d(new Daemon());
  std::error_code ec;
  std::filesystem::create_directories(cfg.data_dir, ec);
  if (ec) {
    return Error::make(Code::unavailable,
                       "cannot create data dir " + cfg.data_dir + ": " + ec.message());
  }
  cfg.host_uris.exempt_uri = cfg.default_host_uri;
  cfg.api.host_uris = cfg.host_uris;
  cfg.hosts.uri_policy = cfg.host_uris;
  // The data dir holds password and token hashes: 0700, and nothing in it readable by others
  // (the store creates its own files 0600 whatever the umask).
  private_tree(cfg.data_dir);
  d->metrics_ = std::make_unique<pipeline::Metrics>();
  if (is_postgres_store(cfg.store)) {
    eventstore::PostgresOptions po;
    po.warn = [](const std::string& line) {
      std::fprintf(stderr, "atriumd: event store: %s\n", line.c_str());
    };
    auto log = eventstore::open_postgres(cfg.store, po);
    if (!log.ok()) return log.error();
    d->shared_log_ = log->get();
    d->store_ = std::move(*log);
  } else {
    eventstore::RocksOptions ro;
    ro.sync = cfg.sync;
    ro.accept_data_loss = cfg.accept_data_loss;
    ro.warn = [](const std::string& line) {
      std::fprintf(stderr, "atriumd: event store: %s\n", line.c_str());
    };
    auto store = eventstore::open_rocksdb(cfg.data_dir + "/events", ro);
    if (!store.ok()) {
      Error e = store.error();
      if (e.reason == "wal_corrupt") e.message += " (start with --accept-data-loss to do so)";
      return e;
    }
    d->store_ = std::move(*store);
  }
  d->pipeline_ = std::make_unique<pipeline::Pipeline>(*d->store_, d->views_, *d->metrics_, clock,
                                                      cfg.pipeline);
  // On a shared log the broker starts as a follower; Leadership makes it lead.
  if (d->shared_log_ != nullptr) d->pipeline_->set_leading(false);
  // Everything is built, and the port opened, before the log is replayed: during a long
  // replay /healthz answers and /readyz (and every other route) says 503 "starting".
  // The key that seals directory bind passwords lives beside the log, never in it.
  auto key = load_or_create_secret_key(cfg.data_dir + "/secret.key");
  if (!key.ok()) return key.error();
  cfg.api.secret_key = *key;
  if (d->shared_log_ != nullptr) {
    if (auto st = claim_cluster_secret_key(*d->shared_log_, *key, cfg.data_dir + "/secret.key");
        !st) {
      return st.error();
    }
    cfg.api.forward_timeout = cfg.lease_ttl;
  }
  d->api_ = std::make_unique<Api>(cfg.api, *d->store_, d->views_, *d->pipeline_, *d->metrics_,
                                  clock);
  register_core_routes(*d->api_, openapi_text());
  register_directory_routes(*d->api_);
  register_totp_routes(*d->api_);
  d->api_->set_directory_client(adapters::make_ldap_directory_client());
  register_appcloud_routes(*d->api_);
  register_host_routes(*d->api_);
  register_web_routes(*d->api_);
  register_agent_routes(*d->api_);
  d->host_metrics_ = std::make_unique<adapters::HostMetrics>(*d->metrics_->registry);
  d->metrics_->add_collector([hm = d->host_metrics_.get(), v = &d->views_] { hm->refresh(*v); });
  d->broker_metrics_ = std::make_unique<BrokerMetrics>(*d->metrics_->registry);
  d->metrics_->add_collector([bm = d->broker_metrics_.get(), v = &d->views_] { bm->refresh(*v); });
  if (cfg.host_manager) {
    auto hv = cfg.hypervisor;
    if (!hv) {
      adapters::LibvirtOptions lo;
      lo.observer = d->host_metrics_->observer();
      hv = std::make_shared<adapters::LibvirtHypervisor>(lo);
    }
    if (d->shared_log_ != nullptr) {
      // Only the leader of the current term changes hosts (adapters/fenced_hypervisor.h).
      hv = adapters::fence_side_effects(std::move(hv), [self = d.get()]() -> Status {
        const Leadership* l = self->leadership_.get();
        if (l == nullptr || !l->leading()) {
          return Error::make(Code::unavailable, "this broker is not the leader: it changes no host",
                             "not_leader");
        }
        const uint64_t term = l->term();
        auto r = self->shared_log_->confirm(term, l->options().member_id);
        if (!r.ok()) return r.error();
        if (!*r) {
          return Error::make(Code::failed_precondition,
                             "term " + std::to_string(term) + " has passed: another broker leads",
                             "fenced");
        }
        return Status::Ok();
      });
    }
    d->hosts_ = std::make_unique<adapters::HostManager>(*d->pipeline_, d->views_, hv, cfg.hosts,
                                                        clock, d->host_metrics_.get());
  }
  if (cfg.pool_worker) {
    d->pools_ = std::make_unique<adapters::PoolWorker>(*d->pipeline_, d->views_, d->hosts_.get(),
                                                       cfg.pools, clock);
    d->pools_->set_liveness(&d->api_->liveness());
  }
  if (cfg.agent_monitor) {
    adapters::AgentMonitorOptions mo;
    mo.heartbeat_ms = cfg.api.agent_heartbeat_ms;
    mo.grace_factor = cfg.api.agent_grace_factor;
    mo.interval = std::chrono::milliseconds(std::clamp<int64_t>(mo.heartbeat_ms / 4, 100, 1000));
    d->agents_ = std::make_unique<adapters::AgentMonitor>(*d->pipeline_, d->views_,
                                                          d->api_->liveness(), mo, clock);
  }
  register_pool_routes(*d->api_, d->pools_.get());
  register_cluster_routes(*d->api_, d->shared_log_,
                          [self = d.get()]() -> const Leadership* { return self->leadership(); });
  d->server_ = std::make_unique<HttpServer>(*d->api_);
  if (auto st = d->server_->start(); !st) return st.error();

  if (auto st = d->pipeline_->start(); !st) return st.error();
  // Liveness starts now: nobody is missing before one full grace period from here.
  d->api_->liveness().restart(clock());
  if (d->shared_log_ == nullptr) {
    if (auto st = d->bootstrap(cfg); !st) return st.error();
    if (d->agents_) d->agents_->start();
    if (d->hosts_) d->hosts_->start();
    if (d->pools_) d->pools_->start();
  } else {
    LeadershipOptions lo;
    lo.member_id = cfg.member_id.empty() ? default_member_id() : cfg.member_id;
    lo.url = cfg.advertise_url.empty()
                 ? "http://" + cfg.api.host + ":" + std::to_string(d->server_->port())
                 : cfg.advertise_url;
    lo.ttl = cfg.lease_ttl;
    lo.applied = [self = d.get()] { return self->views().position(); };
    Daemon* self = d.get();
    // Leading: fold the whole log first (bootstrap decides on the views), then bootstrap,
    // then the side-effect workers. Following: the workers stop before anything else.
    auto on_lead = [self, cfg, clock] {
      const uint64_t tail = self->store_->last_position();
      const auto until = std::chrono::steady_clock::now() + cfg.lease_ttl;
      while (self->views_.position() < tail && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      if (auto st = self->bootstrap(cfg); !st) {
        std::fprintf(stderr, "atriumd: bootstrap as the new leader failed: %s\n",
                     st.error().message.c_str());
      }
      // A new leader, like a restarted broker, waits one grace period before it declares
      // any agent missing.
      self->api_->liveness().restart(clock());
      if (self->agents_) self->agents_->start();
      if (self->hosts_) self->hosts_->start();
      if (self->pools_) self->pools_->start();
    };
    auto on_step_down = [self] {
      if (self->pools_) self->pools_->stop();
      if (self->hosts_) self->hosts_->stop();
      if (self->agents_) self->agents_->stop();
    };
    d->leadership_ = std::make_unique<Leadership>(*d->shared_log_, *d->pipeline_, lo, on_lead,
                                                  on_step_down);
    forwarder_init();
    d->leader_url_ = [log = d->shared_log_, me = lo.member_id]() -> std::optional<std::string> {
      auto h = log->head();
      if (!h.ok() || h->leader_id.empty() || h->leader_id == me || h->lease_remaining_ms <= 0) {
        return std::nullopt;
      }
      return h->leader_url;
    };
    d->api_->set_leader_lookup(d->leader_url_);
    // The agents' registration answer lists the brokers seen in the last 30 s (each reports
    // about once a second), read from the database at most every 2 s.
    struct Members {
      std::mutex mu;
      std::chrono::steady_clock::time_point at{};
      std::vector<std::string> urls;
    };
    auto members = std::make_shared<Members>();
    d->api_->set_cluster_brokers([log = d->shared_log_, members, me = lo.url] {
      std::lock_guard l(members->mu);
      const auto now = std::chrono::steady_clock::now();
      if (members->urls.empty() || now - members->at >= std::chrono::seconds(2)) {
        std::set<std::string> urls{me};
        if (auto m = log->members(); m.ok()) {
          for (const auto& row : *m) {
            if (row.seen_ms_ago <= 30'000 && !row.report.url.empty()) urls.insert(row.report.url);
          }
        }
        members->urls.assign(urls.begin(), urls.end());
        members->at = now;
      }
      return members->urls;
    });
    if (cfg.api.cluster_secret.empty()) {
      std::fprintf(stderr,
                   "atriumd: no --cluster-secret: the leader throttles logins forwarded by a "
                   "follower under the follower's address, and followers forward every agent "
                   "heartbeat instead of relaying them in batches\n");
    } else {
      LivenessRelayOptions ro;
      ro.cluster_secret = cfg.api.cluster_secret;
      ro.every =
          std::chrono::milliseconds(std::clamp<int64_t>(cfg.api.agent_heartbeat_ms / 4, 100, 1000));
      d->relay_ = std::make_unique<LivenessRelay>(
          ro, [self] { return self->pipeline_->leading() ? std::nullopt : self->leader_url(); },
          clock);
      d->api_->set_liveness_relay(d->relay_.get());
      d->relay_->start();
    }
    d->leadership_->start();
  }
  d->api_->set_started();
  return d;
}

Daemon::~Daemon() { stop(); }

void Daemon::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (api_) {
    api_->begin_drain();
    api_->wait_idle(std::chrono::seconds(10));
  }
  if (server_) server_->shutdown();
  if (relay_) relay_->stop();
  // Steps down (workers stopped, commands refused) and releases the lease: a follower takes
  // over at once.
  if (leadership_) leadership_->stop();
  if (agents_) agents_->stop();
  if (pools_) pools_->stop();  // uses the host manager's connections: before it
  if (hosts_) hosts_->stop();  // its workers submit commands: before the pipeline
  if (pipeline_) pipeline_->stop();
}

namespace {

pipeline::Command make(std::string name, std::function<Result<domain::Events>(const State&,
                                                                              const domain::Context&)> f) {
  pipeline::Command c;
  c.name = std::move(name);
  c.decide = std::move(f);
  c.meta.actor = "system";
  c.meta.correlation_id = "bootstrap";
  return c;
}

Status write_secret_file(const std::string& path, const std::string& content) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Error::make(Code::unavailable, "cannot write " + path);
  ::fchmod(fd, 0600);
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ok = ::fsync(fd) == 0 && ok;
  ::close(fd);
  if (!ok) return Error::make(Code::unavailable, "cannot write " + path);
  return Status::Ok();
}

}  // namespace

// First start (no user yet): create the "admin" user. With a bootstrap token, that token
// is the admin's credential; otherwise a random password and token are written to a 0600
// file in the data dir. A bootstrap token given on a later start is registered for the first
// admin if the log does not know it yet. Bootstrap tokens live bootstrap_token_ttl_ms from
// the start that issued them (a longer-lived one from an older broker is cut to that); an
// expired or revoked one is not brought back, and a start naming a new one revokes the
// others, so a replaced token never stays valid.
Status Daemon::bootstrap(const DaemonConfig& cfg) {
  const int64_t kBootstrapTtlMs = cfg.bootstrap_token_ttl_ms;
  bool empty = views_.read([](const State& s) { return s.users.by_id.empty(); });
  std::string admin_id = views_.read([](const State& s) {
    for (const auto& [id, u] : s.users.by_id) {
      if (u.has_role(domain::kRoleAdmin) && !u.disabled) return id;
    }
    return std::string();
  });
  std::string password, token;
  if (empty) {
    domain::CreateUser cu{new_id(), "admin", {domain::kRoleAdmin}, ""};
    if (!cfg.bootstrap_token) {
      password = random_hex(16);
      auto h = hash_password(password);
      if (!h.ok()) return h.error();
      cu.password_hash = *h;
    }
    auto r = pipeline_->execute(make("CreateUser", [cu](const State& s, const domain::Context& c) {
      return domain::decide(s, cu, c);
    }));
    if (!r.ok()) return r.error();
    admin_id = cu.id;
    // The embedded default: a fresh broker manages libvirt's in-process test host, so a
    // newcomer sees a host and its VMs at once. --default-host=none turns it off.
    if (!cfg.default_host_uri.empty()) {
      domain::AddHost ah{new_id(), new_id(), "local", cfg.default_host_uri, "", {}};
      auto h = pipeline_->execute(make("AddHost", [ah](const State& s, const domain::Context& c) {
        return domain::decide(s, ah, c);
      }));
      if (!h.ok()) return h.error();
    }
  }
  if (cfg.bootstrap_token) {
    token = *cfg.bootstrap_token;
  } else if (empty) {
    token = new_token();
  }
  if (token.empty() || admin_id.empty()) return Status::Ok();
  std::string hash = sha256_hex(token);
  int64_t now = api_->now_ms();
  struct Known {
    std::optional<domain::Token> current;
    std::vector<std::string> replaced;  // other live bootstrap tokens
  };
  Known k = views_.read([&](const State& s) {
    Known out;
    for (const auto& [h, t] : s.users.tokens) {
      if (h == hash) {
        out.current = t;
      } else if (t.bootstrap && !t.revoked && t.expires_at_ms > now) {
        out.replaced.push_back(h);
      }
    }
    return out;
  });
  for (const auto& old : k.replaced) {
    domain::RevokeToken rt{old};
    auto r = pipeline_->execute(make("RevokeToken", [rt](const State& s, const domain::Context& c) {
      return domain::decide(s, rt, c);
    }));
    if (!r.ok()) return r.error();
  }
  bool issue = !k.current;
  if (k.current && (k.current->revoked || k.current->expires_at_ms <= now)) {
    std::fprintf(stderr,
                 "atriumd: the bootstrap token given has %s; it stays so (set a new one "
                 "to get in with a bootstrap token)\n",
                 k.current->revoked ? "been revoked" : "expired");
  } else if (k.current && k.current->bootstrap &&
             k.current->expires_at_ms > now + kBootstrapTtlMs) {
    issue = true;  // from an older broker (365 days) or a longer TTL: shortened to this one
  }
  if (issue) {
    domain::IssueToken it{k.current ? k.current->user_id : admin_id, hash, now + kBootstrapTtlMs,
                          true};
    auto r = pipeline_->execute(make("IssueToken", [it](const State& s, const domain::Context& c) {
      return domain::decide(s, it, c);
    }));
    if (!r.ok()) return r.error();
  }
  if (empty && !cfg.bootstrap_token && cfg.write_admin_credentials) {
    credentials_path_ = cfg.data_dir + "/admin-credentials";
    std::string content = "# Atrium first admin credential; delete this file once stored safely\n"
                          "name=admin\npassword=" + password + "\ntoken=" + token + "\n";
    if (auto st = write_secret_file(credentials_path_, content); !st) return st;
    std::fprintf(stderr, "atriumd: created the first admin; its credentials are in %s (mode 0600)\n",
                 credentials_path_.c_str());
  }
  return Status::Ok();
}

}  // namespace atrium::api

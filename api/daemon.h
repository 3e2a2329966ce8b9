// Composition of one broker: the store, the pipeline, the views, the API and its HTTP
// server. main() and the integration tests build the broker through this one path.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "adapters/agent_monitor.h"
#include "adapters/host_reconciler.h"
#include "adapters/pool_worker.h"
#include "api/api.h"
#include "api/broker_metrics.h"
#include "api/leadership.h"
#include "api/liveness_relay.h"
#include "api/server.h"

namespace atrium::api {

inline constexpr size_t kMinBootstrapTokenChars = 32;

struct DaemonConfig {
  std::string data_dir = "./data";
  // "rocksdb": the embedded store in data_dir/events. A PostgreSQL URL (postgresql://...,
  // postgres://...): a log several brokers share; one leads (a lease of lease_ttl in the
  // database), the others follow (api/leadership.h).
  std::string store = "rocksdb";
  std::chrono::milliseconds lease_ttl{10000};
  std::string advertise_url;  // this broker's URL for the others; empty: http://host:port
  std::string member_id;      // empty: hostname-pid-random
  // Host added on the very first start (empty log); empty = none.
  std::string default_host_uri = "test:///default";
  // Which libvirt URIs may be added and opened (domain/host_uri.h); the one source for the
  // API and the host reconciler. The default host's URI is always allowed.
  domain::HostUriPolicy host_uris;
  ApiConfig api;
  // ATRIUM_BOOTSTRAP_TOKEN: at least kMinBootstrapTokenChars characters. It lives
  // bootstrap_token_ttl_ms from the start that first registered it; a start that names
  // another one revokes the previous bootstrap tokens.
  std::optional<std::string> bootstrap_token;
  int64_t bootstrap_token_ttl_ms = int64_t{24} * 3600 * 1000;
  bool write_admin_credentials = true;         // first start: data_dir/admin-credentials
  pipeline::PipelineOptions pipeline;
  bool sync = true;
  // Open the store past damage in the middle of its WAL, dropping what follows it
  // (--accept-data-loss); recorded in the store and warned about.
  bool accept_data_loss = false;
  // The host reconciler (adapters/host_reconciler.h): on by default.
  bool host_manager = true;
  adapters::HostManagerOptions hosts;
  // The desktop pool worker (adapters/pool_worker.h): on by default.
  bool pool_worker = true;
  adapters::PoolWorkerOptions pools;
  // The agent monitor (adapters/agent_monitor.h): on by default; its heartbeat interval and
  // grace come from api.agent_heartbeat_ms and api.agent_grace_factor.
  bool agent_monitor = true;
  std::shared_ptr<adapters::Hypervisor> hypervisor;  // null: libvirt
};

// True for a PostgreSQL URL (postgresql://... or postgres://...), the --store values that
// select the shared log.
bool is_postgres_store(const std::string& store);

// Claims `key` (the secret.key read from key_file) as the key of the brokers on `log`: the
// first broker's key is the cluster's, and every other must have the same one, since whoever
// leads must open what any leader sealed. failed_precondition (secret_key_mismatch) naming
// key_file when it differs.
Status claim_cluster_secret_key(eventstore::SharedLog& log, const std::string& key,
                                const std::string& key_file);

class Daemon {
 public:
  // Opens the store, replays the log into the views, bootstraps the first admin, starts
  // the writer and the HTTP server. Errors carry the failing part's message.
  static Result<std::unique_ptr<Daemon>> start(DaemonConfig cfg,
                                               pipeline::Clock clock = pipeline::system_now_ms);
  ~Daemon();

  uint16_t port() const { return server_->port(); }
  const HttpServer& http_server() const { return *server_; }
  Api& api() { return *api_; }
  eventstore::EventStore& store() { return *store_; }
  projections::Views& views() { return views_; }
  pipeline::Pipeline& pipeline() { return *pipeline_; }
  adapters::HostManager* host_manager() { return hosts_.get(); }
  adapters::PoolWorker* pool_worker() { return pools_.get(); }
  adapters::AgentMonitor* agent_monitor() { return agents_.get(); }
  // Null on the embedded store (the broker always leads there).
  Leadership* leadership() { return leadership_.get(); }
  eventstore::SharedLog* shared_log() { return shared_log_; }
  const std::string& admin_credentials_path() const { return credentials_path_; }

  // Graceful stop: refuse new requests, finish in-flight ones (bounded), flush the queue,
  // stop the HTTP server and close the store.
  void stop();

 private:
  Daemon() = default;
  Status bootstrap(const DaemonConfig& cfg);

  std::unique_ptr<pipeline::Metrics> metrics_;
  std::unique_ptr<eventstore::EventStore> store_;
  projections::Views views_;
  std::unique_ptr<pipeline::Pipeline> pipeline_;
  std::unique_ptr<Api> api_;
  std::unique_ptr<adapters::HostMetrics> host_metrics_;
  std::unique_ptr<BrokerMetrics> broker_metrics_;
  std::unique_ptr<adapters::HostManager> hosts_;
  std::unique_ptr<adapters::PoolWorker> pools_;
  std::unique_ptr<adapters::AgentMonitor> agents_;
  std::unique_ptr<HttpServer> server_;
  eventstore::SharedLog* shared_log_ = nullptr;  // store_ when it is PostgreSQL
  std::unique_ptr<Leadership> leadership_;
  std::function<std::optional<std::string>()> leader_url_;  // null on the embedded store
  std::unique_ptr<LivenessRelay> relay_;                    // shared log + cluster secret
  std::optional<std::string> leader_url() const { return leader_url_(); }
  std::string credentials_path_;
  bool stopped_ = false;
};

// The OpenAPI document compiled into the binary.
const std::string& openapi_text();

}  // namespace atrium::api

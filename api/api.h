// The HTTP application: routes requests to handlers that translate HTTP into commands and
// views, and nothing more. Transport (Pistache) lives in server.h.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "api/access_log.h"
#include "api/http_types.h"
#include "api/login_throttle.h"
#include "api/router.h"
#include "domain/host_uri.h"
#include "domain/placement.h"
#include "eventstore/event_store.h"
#include "pipeline/liveness.h"
#include "pipeline/metrics.h"
#include "pipeline/pipeline.h"
#include "projections/views.h"

namespace atrium::adapters {
class PoolWorker;
class DirectoryClient;
}
namespace atrium::domain {
struct Directory;
}

namespace atrium::eventstore {
class SharedLog;
}

namespace atrium::api {

class LivenessRelay;

struct ApiConfig {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;  // 0 = any free port (tests)
  int threads = 16;      // Pistache workers; handlers block while the writer commits
  size_t max_body_bytes = size_t{1} << 20;
  size_t max_header_bytes = 16 << 10;  // request line and headers
  // Connections: 0 = derived from RLIMIT_NOFILE at start (HttpServer::start).
  size_t max_connections = 0;
  size_t max_connections_per_ip = 512;
  std::chrono::milliseconds keepalive_timeout{10000};  // idle persistent connections
  std::chrono::milliseconds header_timeout{10000};     // a request's line and headers
  std::chrono::milliseconds body_timeout{30000};       // a whole request
  std::string tls_cert;
  std::string tls_key;
  int64_t token_ttl_ms = int64_t{12} * 3600 * 1000;
  bool access_log = true;
  std::chrono::milliseconds sse_wait{15000};
  std::chrono::milliseconds command_timeout{30000};
  // A write forwarded to the leader (shared log) gives up after this (0: command_timeout).
  // The daemon sets the lease TTL: a leader silent that long is frozen or cut off and is
  // being replaced; waiting longer only holds this broker's HTTP worker.
  std::chrono::milliseconds forward_timeout{0};
  // Long-polls (/v1/events/stream, /v1/me/notifications) each hold an HTTP worker for up to
  // sse_wait: at most streams_per_user per user (then 429), and per role a budget of its own
  // (then 503), so one user cannot starve the others and admins always have theirs. A
  // principal counts under admin if it is one, else user, else agent.
  size_t streams_per_user = 2;
  std::map<std::string, size_t> stream_budgets{{"admin", 2}, {"user", 4}, {"agent", 2}};
  LoginThrottleConfig login;
  domain::PlacementConfig placement;  // broker-wide launch placement settings
  // Directory users (api/directory_auth.cpp): a token of one is checked against its directory
  // again once this old (--directory-recheck-s); the key that seals bind passwords.
  int64_t directory_recheck_ms = 300'000;
  std::string secret_key;  // kSecretKeyBytes (api/crypto.h); empty: bind_password refused
  domain::HostUriPolicy host_uris;    // POST /v1/hosts: which libvirt URIs may be added
  // The web portal's files: empty = those embedded at build time, else this directory
  // (--web-dir, for developing the pages without rebuilding).
  std::string web_dir;
  // Agents (api/routes_agents.cpp): heartbeat interval, grace factor (a miss past interval x
  // grace unregisters), and the broker groups given to agents ("(a b)(c)"; empty: the address
  // the agent reached).
  int64_t agent_heartbeat_ms = 30'000;
  int64_t agent_grace_factor = 3;
  std::string agent_brokers;
  // Brokers of one shared log authenticate each other with this (--cluster-secret): a
  // follower signs the client address of the writes it forwards and the heartbeats it relays
  // (api/forwarder.h). Empty: neither is trusted (the leader sees the follower's address, and
  // followers forward heartbeats one by one instead of relaying them).
  std::string cluster_secret;
};

struct Page {
  size_t limit = 100;
  std::string after;  // decoded cursor: the last key of the previous page
};

// A command whose decision is domain::decide(state, cmd, ctx) for a command struct.
template <typename C>
pipeline::Command command(std::string name, C cmd, int success_status = 200,
                          std::function<domain::Json(const domain::State&)> render = {}) {
  pipeline::Command c = pipeline::decide_command(std::move(name), std::move(cmd), success_status);
  c.render = std::move(render);
  return c;
}

// The response of a GET of one entity: 404 "<kind> <id> not found" when absent, else its
// JSON with an ETag of its version.
template <typename T, typename ToJson>
HttpResponse entity_response(const T* entity, const std::string& kind, const std::string& id,
                             ToJson&& to_json) {
  if (entity == nullptr) return problem(not_found(kind + " " + id + " not found"));
  HttpResponse r = HttpResponse::json(200, to_json(*entity));
  r.with_header("ETag", "\"" + std::to_string(entity->version) + "\"");
  return r;
}

class Api {
 public:
  Api(ApiConfig cfg, eventstore::EventStore& store, projections::Views& views,
      pipeline::Pipeline& pipeline, pipeline::Metrics& metrics,
      pipeline::Clock clock = pipeline::system_now_ms);

  // The whole request path: draining check, size check, routing, authentication, role
  // check, handler, metrics and access log. Never throws.
  HttpResponse handle(HttpRequest& req);

  // A request the transport refused before it was read to the end (bad framing, a body over
  // the limit, the connection cap): gives it a request id, counts it in the metrics and
  // writes its access log line, as handle() does for every other answer.
  HttpResponse refused(HttpRequest& req, HttpResponse resp);

  // ---- for route files ------------------------------------------------------------------
  Router& router() { return router_; }
  const ApiConfig& config() const { return cfg_; }
  eventstore::EventStore& store() { return store_; }
  projections::Views& views() { return views_; }
  pipeline::Pipeline& pipeline() { return pipeline_; }
  pipeline::Metrics& metrics() { return metrics_; }
  int64_t now_ms() const { return clock_(); }
  // Heartbeats, load figures and client reports: in memory, never in the log.
  pipeline::Liveness& liveness() { return liveness_; }

  // Runs a command through the pipeline with the request's actor, request id and
  // Idempotency-Key, and maps the outcome to a response (JSON body, ETag from `etag_of`).
  HttpResponse run(const HttpRequest& req, pipeline::Command cmd);

  // Counts a launch answer in /metrics (atrium_launches_total, atrium_launch_duration_seconds)
  // and returns it: kind "desktop" or "application", `started` when the launch began.
  HttpResponse count_launch(const char* kind, std::chrono::steady_clock::time_point started,
                            HttpResponse r);

  // Runs f on the current view, or on the view as of ?as_of=<position>.
  HttpResponse with_state(const HttpRequest& req,
                          const std::function<HttpResponse(const domain::State&)>& f);

  // If-Match: nullopt when absent; invalid_argument when malformed.
  Result<std::optional<uint64_t>> if_match(const HttpRequest& req) const;
  Result<Page> page(const HttpRequest& req) const;
  static std::string encode_cursor(const std::string& key);

  // ---- lifecycle ------------------------------------------------------------------------
  // Set by the daemon once the log is replayed and the first admin exists; until then
  // every route but /healthz, /readyz and /metrics answers 503 "starting".
  void set_started() { started_ = true; }
  bool started() const { return started_.load() && pipeline_.ready(); }

  // On a follower of a shared log: where writes go instead of the pipeline (Api::run
  // forwards them to the leader and answers once this broker applied their position).
  void set_leader_lookup(std::function<std::optional<std::string>()> lookup) {
    leader_url_ = std::move(lookup);
  }
  // True on a follower of a shared log (writes go to the leader).
  bool follower() const { return leader_url_ && !pipeline_.leading(); }
  // The request, whole, to the leader with the caller's credential, request id, Idempotency-Key
  // and (signed, with a cluster secret) address; its answer once this broker applied the
  // leader's position. 503 not_leader when there is none or it does not answer.
  HttpResponse forward(const HttpRequest& req);
  // The cluster's brokers (advertised URLs of the members seen lately), for the agents'
  // registration answer; unset or empty: the address the agent reached.
  void set_cluster_brokers(std::function<std::vector<std::string>()> f) {
    cluster_brokers_ = std::move(f);
  }
  std::vector<std::string> cluster_brokers() const {
    return cluster_brokers_ ? cluster_brokers_() : std::vector<std::string>{};
  }
  // On a follower with a cluster secret: heartbeats are relayed to the leader in batches
  // (api/liveness_relay.h). Null otherwise.
  void set_liveness_relay(LivenessRelay* r) { relay_ = r; }
  LivenessRelay* liveness_relay() const { return relay_; }

  void begin_drain() { draining_ = true; }
  bool draining() const { return draining_.load(); }
  bool wait_idle(std::chrono::milliseconds timeout);
  size_t in_flight() const { return in_flight_.load(); }

  // Takes a long-poll slot for the principal: nullopt when taken (call leave_stream after),
  // else the refusal to answer (429 too_many_user_streams, 503 too_many_streams).
  std::optional<HttpResponse> enter_stream(const Principal& p);
  void leave_stream(const Principal& p);

  // ---- passwords ------------------------------------------------------------------------
  // Checks a password for a login or a password change: throttled per (normalised) name and
  // source address, the KDF always run once (a dummy hash for an unknown user or one without
  // a password), failures counted in atrium_login_failures_total{reason} and an engaged
  // throttle recorded as a LoginThrottled event. nullopt when the password matches `hash`,
  // else the answer to give (401 bad_credentials, 429 login_throttled, 503 login_busy).
  std::optional<HttpResponse> check_password(const HttpRequest& req, const std::string& name,
                                             const std::string& user_id,
                                             const std::optional<std::string>& hash,
                                             const std::string& password, const Error& on_mismatch);
  // The parts of check_password for checks that are not a local password (a directory bind,
  // a second factor): the throttle's refusal if engaged; a failure counted (and recorded when
  // it engages the throttle) with its answer; a success clearing the name's failures.
  std::optional<HttpResponse> login_gate(const HttpRequest& req, const std::string& name);
  HttpResponse login_failed(const HttpRequest& req, const std::string& name,
                            const std::string& user_id, const Error& answer);
  void login_succeeded(const std::string& name);
  // A signed-in user's new token: 200 {token, token_type, expires_at_ms, user_id, roles},
  // `Cache-Control: no-store`. Each call issues a fresh token (no Idempotency-Key replay).
  HttpResponse issue_login_token(HttpRequest& req, const std::string& user_id,
                                 const std::string& name);

  // ---- directories (api/directory_auth.cpp) ---------------------------------------------
  void set_directory_client(std::shared_ptr<adapters::DirectoryClient> c) { directory_ = std::move(c); }
  adapters::DirectoryClient* directory_client() { return directory_.get(); }
  // Sign-in of `login` against directory `d`: 200 with a token, 401 bad_credentials, 429,
  // 503 directory_unavailable (never 401 when the directory cannot answer).
  HttpResponse directory_sign_in(HttpRequest& req, const domain::Directory& d,
                                 const std::string& login, const std::string& password,
                                 const std::optional<std::string>& totp_code = std::nullopt,
                                 const std::optional<std::string>& recovery_code = std::nullopt);
  // For an authenticated directory user whose last check is older than the recheck
  // interval: asks the directory again; the answer to give instead of the route's (401 when
  // the directory no longer has the user, 503 when it is unreachable), else nullopt.
  std::optional<HttpResponse> recheck_directory_user(const HttpRequest& req);
  Result<std::string> bind_password(const domain::Directory& d) const;

  // ---- second factor (api/totp.cpp) -----------------------------------------------------
  // After the password: nullopt when the user has no TOTP or gave a good code (each TOTP step
  // accepted once) or an unused recovery code; else 401 totp_required, or totp_invalid
  // counted by the login throttle under `throttle_name`.
  std::optional<HttpResponse> check_second_factor(const HttpRequest& req,
                                                  const std::string& throttle_name,
                                                  const std::string& user_id,
                                                  const std::optional<std::string>& code,
                                                  const std::optional<std::string>& recovery);
  // 403 totp_enrollment_required for a user who must have TOTP and has not enrolled, on every
  // route but enrollment and logout.
  std::optional<HttpResponse> enforce_totp_enrollment(const HttpRequest& req, const std::string& tmpl);

 private:
  Result<Principal> authenticate(const HttpRequest& req) const;
  // A client address forwarded by a cluster peer: taken as the request's when its signature
  // holds, else dropped (and logged, at most every 10 s).
  void accept_peer_address(HttpRequest& req);
  static std::string stream_class(const Principal& p);
  void finish(HttpRequest& req, const std::string& tmpl, HttpResponse& resp,
              std::chrono::steady_clock::time_point t0, bool quiet = false);
  void record_metrics(const std::string& route, const std::string& method, int status,
                      double secs);

  ApiConfig cfg_;
  eventstore::EventStore& store_;
  projections::Views& views_;
  pipeline::Pipeline& pipeline_;
  pipeline::Metrics& metrics_;
  pipeline::Clock clock_;
  pipeline::Liveness liveness_;
  Router router_;
  AccessLog log_;

  std::function<std::optional<std::string>()> leader_url_;
  std::function<std::vector<std::string>()> cluster_brokers_;
  LivenessRelay* relay_ = nullptr;
  std::atomic<int64_t> spoof_logged_ms_{0};
  std::atomic<bool> draining_{false};
  std::atomic<bool> started_{false};
  std::atomic<size_t> in_flight_{0};
  std::mutex streams_mu_;
  std::unordered_map<std::string, size_t> streams_by_user_;
  std::map<std::string, size_t> streams_by_class_;
  LoginThrottle throttle_;
  prometheus::Family<prometheus::Counter>* login_failures_ = nullptr;
  prometheus::Counter* login_kdf_ = nullptr;
  std::mutex idle_mu_;
  std::condition_variable idle_cv_;
  std::shared_ptr<adapters::DirectoryClient> directory_;
  std::mutex checked_mu_;
  std::unordered_map<std::string, int64_t> checked_at_ms_;  // directory user -> last check
  std::mutex totp_mu_;
  std::unordered_map<std::string, int64_t> totp_last_step_;  // user -> last accepted TOTP step
};

// Agents: enrollment tokens, enrollment, registration, heartbeats, inventory, admin views
// (routes_agents.cpp).
void register_agent_routes(Api& api);
// Clusters, servers, applications, publications, authorizations, launches (routes_appcloud.cpp).
void register_appcloud_routes(Api& api);
void register_core_routes(Api& api, const std::string& openapi_text);
// Directories (api/directory_auth.cpp).
void register_directory_routes(Api& api);
// TOTP enrollment and policy (api/totp.cpp).
void register_totp_routes(Api& api);
// Hosts, VMs and operations (api/routes_hosts.cpp).
void register_host_routes(Api& api);
// The web portal and admin console: GET /, /admin and /web/{file} (api/routes_web.cpp).
void register_web_routes(Api& api);
// Desktop pools, desktop launches and sessions, admin channels (api/routes_pools.cpp); call
// after register_appcloud_routes: it shares POST /v1/launches and /v1/sessions with it.
void register_pool_routes(Api& api, adapters::PoolWorker* worker);
// GET /v1/cluster (api/routes_cluster.cpp); log is null on the embedded store.
class Leadership;
void register_cluster_routes(Api& api, eventstore::SharedLog* log,
                             std::function<const Leadership*()> leadership);

}  // namespace atrium::api

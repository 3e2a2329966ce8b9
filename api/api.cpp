#include "api/api.h"

#include <strings.h>

#include <charconv>
#include <ctime>
#include <thread>

#include "api/crypto.h"
#include "api/forwarder.h"
#include "api/query_params.h"
#include "common/time_text.h"
#include "domain/user_names.h"

namespace atrium::api {

namespace {

bool parse_u64(std::string_view s, uint64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

bool valid_request_id(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (unsigned char c : s) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  // The correlation ids the broker gives its own commands: a client's request must never
  // look like one of them in the log.
  static const char* const kReserved[] = {"bootstrap", "reconciler", "pool-worker", "system",
                                          "anonymous", "bench",      "atrium"};
  for (const char* r : kReserved) {
    if (strcasecmp(s.c_str(), r) == 0) return false;
  }
  return true;
}

// 400 unknown_query_parameter naming every query parameter the route does not take (one
// `errors` entry each, names cut to 64 bytes), or nullopt when all are known.
std::optional<HttpResponse> unknown_query(const HttpRequest& req, const std::string& tmpl) {
  const std::set<std::string>* allowed = allowed_query(req.method, tmpl);
  Error e = invalid("", "unknown_query_parameter");
  for (const auto& [name, value] : req.query) {
    if (allowed != nullptr && allowed->count(name) > 0) continue;
    std::string shown = name.substr(0, 64);
    e.message += (e.message.empty() ? "" : ", ") + shown;
    e.fields.push_back({shown, "is not a query parameter of " + req.method + " " + tmpl});
  }
  if (e.fields.empty()) return std::nullopt;
  std::string known;
  if (allowed != nullptr) {
    for (const auto& n : *allowed) known += (known.empty() ? "" : ", ") + n;
  }
  e.message = "unknown query parameter" + std::string(e.fields.size() > 1 ? "s " : " ") +
              e.message + " on " + req.method + " " + tmpl + " (it takes " +
              (known.empty() ? "none" : known) + ")";
  return problem(e);
}

// "Bearer" in any case (RFC 9110 11.1: the scheme is case-insensitive), one or more spaces,
// then the token; empty when the header is not of that form.
std::string_view bearer_token(std::string_view h) {
  constexpr std::string_view kScheme = "bearer";
  if (h.size() <= kScheme.size() || strncasecmp(h.data(), kScheme.data(), kScheme.size()) != 0) {
    return {};
  }
  size_t i = kScheme.size();
  if (h[i] != ' ') return {};
  while (i < h.size() && h[i] == ' ') ++i;
  std::string_view t = h.substr(i);
  while (!t.empty() && t.back() == ' ') t.remove_suffix(1);
  return t;
}

std::string iso_now() { return utc_iso8601(static_cast<int64_t>(std::time(nullptr)) * 1000); }

}  // namespace

Api::Api(ApiConfig cfg, eventstore::EventStore& store, projections::Views& views,
         pipeline::Pipeline& pipeline, pipeline::Metrics& metrics, pipeline::Clock clock)
    : cfg_(std::move(cfg)),
      store_(store),
      views_(views),
      pipeline_(pipeline),
      metrics_(metrics),
      clock_(std::move(clock)),
      liveness_(clock_()),
      log_(cfg_.access_log),
      throttle_(cfg_.login) {
  login_failures_ = &prometheus::BuildCounter()
                         .Name("atrium_login_failures_total")
                         .Help(
                             "Refused password checks (login, password change) by reason: "
                             "bad_credentials, throttled, busy")
                         .Register(*metrics_.registry);
  for (const char* r : {"bad_credentials", "throttled", "busy"})
    login_failures_->Add({{"reason", r}});
  login_kdf_ = &prometheus::BuildCounter()
                    .Name("atrium_login_kdf_total")
                    .Help("Password checks that ran the KDF (argon2id)")
                    .Register(*metrics_.registry)
                    .Add({});
}

Result<Principal> Api::authenticate(const HttpRequest& req) const {
  auto h = req.header("authorization");
  if (!h) {
    return Error::make(Code::unauthenticated, "missing bearer token", "token_missing");
  }
  std::string_view token = bearer_token(*h);
  if (token.empty() || h->size() > 512) {
    return Error::make(Code::unauthenticated, "the Authorization header must be 'Bearer <token>'",
                       "token_malformed");
  }
  std::string token_hash = sha256_hex(token);
  int64_t now = clock_();
  return views_.read([&](const domain::State& s) -> Result<Principal> {
    const domain::User* u = s.users.authenticate(token_hash, now);
    if (u == nullptr) {
      return Error::make(Code::unauthenticated, "the token is unknown, expired or revoked",
                         "token_invalid");
    }
    return Principal{u->id, u->name, u->roles, token_hash, u->agent_server_id, ""};
  });
}

HttpResponse Api::handle(HttpRequest& req) {
  auto t0 = std::chrono::steady_clock::now();
  in_flight_++;
  auto rid = req.header("x-request-id");
  req.request_id = rid && valid_request_id(*rid) ? *rid : new_id();

  accept_peer_address(req);

  Router::Match m = router_.match(req.method, req.path);
  HttpResponse resp;
  if (draining_ && m.tmpl != "/healthz") {
    resp = problem(Code::unavailable, "the broker is shutting down", "shutting_down");
    resp.with_header("Connection", "close");
  } else if (!started() && m.tmpl != "/healthz" && m.tmpl != "/readyz" &&
             m.tmpl != "/metrics") {
    resp = problem(Code::unavailable, "the broker is starting: replaying its log", "starting");
  } else if (req.body.size() > cfg_.max_body_bytes) {
    resp = problem(Error::make(Code::too_large,
                               "the request body is " + std::to_string(req.body.size()) +
                                   " bytes; the limit is " + std::to_string(cfg_.max_body_bytes),
                               "body_too_large"));
  } else if (m.route == nullptr && !m.allowed.empty()) {
    std::string allow;
    for (const auto& a : m.allowed) allow += (allow.empty() ? "" : ", ") + a;
    resp = problem(Error::make(Code::invalid_argument,
                               req.method + " is not allowed on " + m.tmpl, "method_not_allowed"));
    Json j = Json::parse(resp.body, nullptr, false);
    j["status"] = 405;
    j["title"] = "Method Not Allowed";
    resp.body = j.dump();
    resp.status = 405;
    resp.with_header("Allow", allow);
  } else if (m.route == nullptr) {
    resp = problem(Error::make(Code::not_found, "no route for " + req.method + " " + req.path,
                               "route_not_found"));
  } else if (follower() && !m.route->access.local && req.method != "GET" && req.method != "HEAD") {
    // A write on a follower: the leader does all of it (authentication, throttling, the
    // second factor, side effects in memory such as liveness), so nothing is half done here.
    resp = forward(req);
  } else {
    req.params = std::move(m.params);
    bool allowed = true;
    if (m.route->access.authenticated) {
      auto p = authenticate(req);
      if (!p.ok()) {
        resp = problem(p.error());
        allowed = false;
      } else {
        req.principal = std::move(*p);
        if (auto stale = recheck_directory_user(req)) {
          resp = std::move(*stale);
          allowed = false;
        } else if (auto enroll = enforce_totp_enrollment(req, m.tmpl)) {
          resp = std::move(*enroll);
          allowed = false;
        }
        const auto& roles = m.route->access.roles;
        bool role_ok = roles.empty() || req.principal->is_admin();
        for (const auto& r : roles) role_ok = role_ok || req.principal->has_role(r);
        if (allowed && !role_ok) {
          resp = problem(Error::make(Code::permission_denied,
                                     "this operation needs one of the roles: " +
                                         [&] {
                                           std::string s;
                                           for (const auto& r : roles) s += (s.empty() ? "" : ", ") + r;
                                           return s;
                                         }(),
                                     "role_required"));
          allowed = false;
        }
      }
    }
    if (allowed) {
      if (auto bad = unknown_query(req, m.tmpl)) {
        resp = std::move(*bad);
        allowed = false;
      }
    }
    if (allowed) {
      try {
        resp = m.route->handler(req);
      } catch (const std::exception& ex) {
        resp = problem(Error::make(Code::internal, std::string("unexpected error: ") + ex.what()));
      }
    }
  }
  // A request a follower forwarded: the answer names the log position it saw, so the follower
  // answers its caller only once it applied that much (also for writes made outside
  // Api::run: a throttle record, a directory recheck, an agent coming back).
  if (req.header(kForwardedHeader) && pipeline_.leading()) {
    bool named = false;
    for (const auto& [name, value] : resp.headers) named = named || name == "X-Atrium-Position";
    if (!named) resp.with_header("X-Atrium-Position", std::to_string(store_.last_position()));
  }
  finish(req, m.tmpl, resp, t0, m.route != nullptr && m.route->access.agent);
  {
    std::lock_guard l(idle_mu_);
    in_flight_--;
  }
  idle_cv_.notify_all();
  return resp;
}

HttpResponse Api::refused(HttpRequest& req, HttpResponse resp) {
  auto t0 = std::chrono::steady_clock::now();
  auto rid = req.header("x-request-id");
  req.request_id = rid && valid_request_id(*rid) ? *rid : new_id();
  finish(req, router_.match(req.method, req.path).tmpl, resp, t0);
  return resp;
}

void Api::finish(HttpRequest& req, const std::string& tmpl, HttpResponse& resp,
                 std::chrono::steady_clock::time_point t0, bool quiet) {
  resp.with_header("X-Request-Id", req.request_id);
  // A 5xx tells the client what failed (status, reason) and where to look, never how: the
  // detail may hold file paths or a library's text, and goes to the log instead.
  std::string internal_detail;
  if (resp.status >= 500 && resp.content_type == "application/problem+json") {
    Json j = Json::parse(resp.body, nullptr, false);
    if (j.is_object()) {
      internal_detail = j.value("detail", "");
      j["detail"] = "the broker could not complete this request (" + j.value("reason", "error") +
                    "); its log has the details under request id " + req.request_id;
      resp.body = j.dump(-1, ' ', false, Json::error_handler_t::replace);
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  record_metrics(tmpl, req.method, resp.status, secs);
  // Agent endpoints (heartbeats: thousands a second) are counted in metrics, not logged.
  if (cfg_.access_log && !quiet) {
    char dur[32];
    std::snprintf(dur, sizeof dur, "%.3f", secs * 1000);
    std::string line = iso_now() + " " + log_escape(req.method) + " " + log_escape(req.path) + " " +
                       std::to_string(resp.status) + " " + dur + "ms rid=" + req.request_id +
                       " user=" + (req.principal ? req.principal->user_id : "-") +
                       " ip=" + (req.remote_address.empty() ? "-" : log_escape(req.remote_address));
    if (!internal_detail.empty()) line += " detail=\"" + log_escape(internal_detail) + "\"";
    log_.write(std::move(line));
  } else if (!internal_detail.empty()) {
    std::fprintf(stderr, "atriumd: %d rid=%s %s\n", resp.status, req.request_id.c_str(),
                 log_escape(internal_detail).c_str());
  }
}

// Prometheus families look labels up under a lock; a per-thread cache of the series keeps
// that off the hot path (the route label is a template, so the cache stays small).
void Api::record_metrics(const std::string& route, const std::string& method, int status,
                         double secs) {
  struct Series {
    prometheus::Counter* requests;
    prometheus::Histogram* duration;
  };
  thread_local std::unordered_map<std::string, Series> cache;
  thread_local uint64_t owner = 0;
  if (owner != metrics_.serial) {  // another broker in this process (tests): forget series
    cache.clear();
    owner = metrics_.serial;
  }
  std::string key = route + ' ' + method + ' ' + std::to_string(status);
  auto it = cache.find(key);
  if (it == cache.end()) {
    Series s{&metrics_.http_requests->Add(
                 {{"route", route}, {"method", method}, {"status", std::to_string(status)}}),
             &metrics_.http_duration->Add(
                 {{"route", route}, {"method", method}},
                 prometheus::Histogram::BucketBoundaries{0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                         0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                         5, 10})};
    it = cache.emplace(std::move(key), s).first;
  }
  it->second.requests->Increment();
  it->second.duration->Observe(secs);
}

// A write on a follower: to the leader, with the caller's identity, request id and
// Idempotency-Key; its answer is relayed once this broker applied the position it names, so
// the caller reads its own write here. One hop only: a forwarded request that reaches a
// broker that no longer leads gets 503.
HttpResponse Api::forward(const HttpRequest& req) {
  auto refuse = [](const std::string& why) {
    return problem(Error::make(Code::unavailable, why, "not_leader"));
  };
  if (req.header(kForwardedHeader)) {
    return refuse("this broker no longer leads the shared log; retry");
  }
  auto url = leader_url_();
  if (!url) return refuse("no broker leads the shared log right now; retry shortly");
  const auto timeout = cfg_.forward_timeout.count() > 0
                           ? std::min(cfg_.forward_timeout, cfg_.command_timeout)
                           : cfg_.command_timeout;
  auto r = forward_request(*url, req, timeout, cfg_.cluster_secret);
  if (!r) return refuse("the leading broker did not answer; retry shortly");
  {
    for (const auto& [name, value] : r->headers) {
      if (name != "X-Atrium-Position" && name != "x-atrium-position") continue;
      const uint64_t pos = std::strtoull(value.c_str(), nullptr, 10);
      const auto until = std::chrono::steady_clock::now() + cfg_.command_timeout;
      while (views_.position() < pos && std::chrono::steady_clock::now() < until) {
        store_.wait_for(views_.position(), std::chrono::milliseconds(5));
        if (views_.position() < pos) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
  }
  return *r;
}

void Api::accept_peer_address(HttpRequest& req) {
  auto addr = req.header(kClientAddressHeader);
  if (!addr) return;
  auto sig = req.header(kPeerAuthHeader);
  const bool ok = sig && addr->size() <= 64 && !addr->empty() &&
                  peer_verify(cfg_.cluster_secret, *sig, "forward",
                              forward_payload(*addr, req.request_id, req.method, req.path),
                              static_cast<int64_t>(std::time(nullptr)));
  if (ok) {
    req.remote_address = *addr;
  } else {
    const int64_t now = now_ms();
    int64_t last = spoof_logged_ms_.load();
    if (now - last >= 10'000 && spoof_logged_ms_.compare_exchange_strong(last, now)) {
      std::fprintf(stderr,
                   "atriumd: ignored %s from %s: not signed by a cluster peer (--cluster-secret)\n",
                   kClientAddressHeader, log_escape(req.remote_address).c_str());
    }
  }
  req.headers.erase(kClientAddressHeader);
  req.headers.erase(kPeerAuthHeader);
}

HttpResponse Api::run(const HttpRequest& req, pipeline::Command cmd) {
  if (leader_url_ && !pipeline_.leading()) return forward(req);
  cmd.meta.actor = req.principal ? req.principal->user_id : "anonymous";
  cmd.meta.correlation_id = req.request_id;
  if (auto key = req.header("idempotency-key")) {
    if (key->empty() || key->size() > 255) {
      return problem(invalid("Idempotency-Key must be 1 to 255 characters", "invalid_header"));
    }
    cmd.meta.idempotency_key = *key;
    cmd.meta.fingerprint = sha256_hex(req.method + " " + req.path + "\n" + req.body);
  }
  auto out = pipeline_.execute(std::move(cmd), cfg_.command_timeout);
  if (!out.ok()) return problem(out.error());
  HttpResponse r;
  r.status = out->status;
  if (r.status == 204) {
    r.content_type.clear();
  } else {
    r.body = out->body.dump(-1, ' ', false, Json::error_handler_t::replace);
  }
  if (out->body.is_object() && out->body.contains("version")) {
    r.with_header("ETag", "\"" + std::to_string(out->body["version"].get<uint64_t>()) + "\"");
  }
  if (out->last_position > 0) r.with_header("X-Atrium-Position", std::to_string(out->last_position));
  if (out->replayed) r.with_header("Idempotent-Replayed", "true");
  return r;
}

HttpResponse Api::count_launch(const char* kind, std::chrono::steady_clock::time_point started,
                               HttpResponse r) {
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const char* outcome = r.status == 201   ? "created"
                        : r.status == 200 ? "reconnected"
                        : r.status < 500  ? "refused"
                                          : "failed";
  std::string reason = "none";
  if (r.status >= 400) {
    Json j = Json::parse(r.body, nullptr, false);
    reason = j.is_object() ? j.value("reason", "unknown") : "unknown";
  }
  metrics_.record_launch(kind, outcome, reason, secs);
  return r;
}

HttpResponse Api::with_state(const HttpRequest& req,
                             const std::function<HttpResponse(const domain::State&)>& f) {
  auto it = req.query.find("as_of");
  if (it == req.query.end()) return views_.read(f);
  uint64_t pos = 0;
  if (!parse_u64(it->second, pos)) {
    return problem(invalid("as_of must be an event position (a non-negative integer)",
                           "invalid_query"));
  }
  uint64_t last = store_.last_position();
  if (pos > last) {
    return problem(invalid("as_of " + it->second + " is after the last event (" +
                               std::to_string(last) + ")",
                           "invalid_query"));
  }
  auto st = views_.as_of(store_, pos);
  if (!st.ok()) return problem(st.error());
  HttpResponse r = f(*st);
  r.with_header("X-Atrium-As-Of", std::to_string(pos));
  return r;
}

Result<std::optional<uint64_t>> Api::if_match(const HttpRequest& req) const {
  auto h = req.header("if-match");
  if (!h) return std::optional<uint64_t>{};
  std::string v = *h;
  if (v.rfind("W/", 0) == 0) v = v.substr(2);
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
  uint64_t out = 0;
  if (!parse_u64(v, out)) {
    return invalid("If-Match must be an ETag such as \"3\"", "invalid_header");
  }
  return std::optional<uint64_t>{out};
}

std::string Api::encode_cursor(const std::string& key) {
  static const char* hex = "0123456789abcdef";
  std::string out = "c1.";
  for (unsigned char c : key) {
    out.push_back(hex[c >> 4]);
    out.push_back(hex[c & 15]);
  }
  return out;
}

Result<Page> Api::page(const HttpRequest& req) const {
  Page p;
  if (auto it = req.query.find("limit"); it != req.query.end()) {
    uint64_t n = 0;
    if (!parse_u64(it->second, n) || n < 1 || n > 1000) {
      return Error{Code::invalid_argument, "limit must be an integer from 1 to 1000",
                   "invalid_query", {{"limit", "must be an integer from 1 to 1000"}}};
    }
    p.limit = n;
  }
  if (auto it = req.query.find("cursor"); it != req.query.end()) {
    const std::string& c = it->second;
    bool ok = c.size() > 3 && c.size() % 2 == 1 && c.rfind("c1.", 0) == 0;
    std::string key;
    for (size_t i = 3; ok && i + 1 < c.size(); i += 2) {
      auto hv = [](char h) -> int {
        if (h >= '0' && h <= '9') return h - '0';
        if (h >= 'a' && h <= 'f') return h - 'a' + 10;
        return -1;
      };
      int hi = hv(c[i]), lo = hv(c[i + 1]);
      if (hi < 0 || lo < 0) ok = false;
      else key.push_back(static_cast<char>(hi * 16 + lo));
    }
    if (!ok) return Error{Code::invalid_argument, "cursor is not one this server issued",
                          "invalid_query", {{"cursor", "malformed"}}};
    p.after = key;
  }
  return p;
}

bool Api::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock l(idle_mu_);
  return idle_cv_.wait_for(l, timeout, [&] { return in_flight_.load() == 0; });
}

std::string Api::stream_class(const Principal& p) {
  if (p.is_admin()) return domain::kRoleAdmin;
  if (p.has_role(domain::kRoleUser)) return domain::kRoleUser;
  return domain::kRoleAgent;
}

std::optional<HttpResponse> Api::enter_stream(const Principal& p) {
  std::string cls = stream_class(p);
  auto budget = cfg_.stream_budgets.find(cls);
  size_t limit = budget == cfg_.stream_budgets.end() ? 0 : budget->second;
  std::lock_guard l(streams_mu_);
  size_t& mine = streams_by_user_[p.user_id];
  if (mine >= cfg_.streams_per_user) {
    if (mine == 0) streams_by_user_.erase(p.user_id);
    return too_many_requests("this user already holds " + std::to_string(cfg_.streams_per_user) +
                                 " open event streams; close one or retry",
                             "too_many_user_streams", static_cast<int64_t>(cfg_.sse_wait.count()));
  }
  size_t& ours = streams_by_class_[cls];
  if (ours >= limit) {
    if (mine == 0) streams_by_user_.erase(p.user_id);
    return problem(Error::make(Code::unavailable, "too many open event streams for the role " + cls,
                               "too_many_streams"));
  }
  ++mine;
  ++ours;
  return std::nullopt;
}

void Api::leave_stream(const Principal& p) {
  std::lock_guard l(streams_mu_);
  auto it = streams_by_user_.find(p.user_id);
  if (it != streams_by_user_.end() && --it->second == 0) streams_by_user_.erase(it);
  auto c = streams_by_class_.find(stream_class(p));
  if (c != streams_by_class_.end() && c->second > 0) --c->second;
}

std::optional<HttpResponse> Api::login_gate(const HttpRequest& req, const std::string& name) {
  if (int64_t wait = throttle_.blocked_for(name, req.remote_address, now_ms()); wait > 0) {
    login_failures_->Add({{"reason", "throttled"}}).Increment();
    return too_many_requests(
        "too many failed logins for this name or from this address; "
        "retry later",
        "login_throttled", wait);
  }
  return std::nullopt;
}

HttpResponse Api::login_failed(const HttpRequest& req, const std::string& name,
                               const std::string& user_id, const Error& answer) {
  login_failures_->Add({{"reason", "bad_credentials"}}).Increment();
  for (const auto& e : throttle_.failed(name, req.remote_address, now_ms())) {
    domain::RecordLoginThrottled rec{e.scope, e.key, e.scope == "user" ? user_id : "", e.failures,
                                     e.until_ms};
    pipeline::Command cmd = command("RecordLoginThrottled", rec, 204);
    cmd.meta.actor = "system";
    cmd.meta.correlation_id = req.request_id;
    (void)pipeline_.execute(std::move(cmd), cfg_.command_timeout);  // an audit record only
  }
  return problem(answer);
}

void Api::login_succeeded(const std::string& name) { throttle_.succeeded(name); }

HttpResponse Api::issue_login_token(HttpRequest& req, const std::string& user_id,
                                    const std::string& name) {
  std::string token = new_token();
  domain::IssueToken cmd{user_id, sha256_hex(token), now_ms() + cfg_.token_ttl_ms};
  pipeline::Command c = command("IssueToken", cmd, 200, [cmd, token](const domain::State& s) {
    const domain::User* u = s.users.find(cmd.user_id);
    return Json{{"token", token},
                {"token_type", "Bearer"},
                {"expires_at_ms", cmd.expires_at_ms},
                {"user_id", cmd.user_id},
                {"roles", u ? u->roles : std::set<std::string>{}}};
  });
  req.principal = Principal{user_id, name, {}, "", "", ""};
  // Login is not idempotent by key: each call issues a fresh token.
  req.headers.erase("idempotency-key");
  HttpResponse resp = run(req, std::move(c));
  resp.with_header("Cache-Control", "no-store");  // the answer holds a credential
  return resp;
}

std::optional<HttpResponse> Api::check_password(const HttpRequest& req, const std::string& name,
                                                const std::string& user_id,
                                                const std::optional<std::string>& hash,
                                                const std::string& password,
                                                const Error& on_mismatch) {
  if (auto refusal = login_gate(req, name)) return refusal;
  // The KDF runs once on every path: a real hash, or the dummy for an unknown user or one
  // without a password, so the answer's timing tells none of them apart.
  const std::string& h = hash && !hash->empty() ? *hash : dummy_password_hash();
  PasswordCheck c = api::check_password(h, password);
  if (c == PasswordCheck::busy) {
    login_failures_->Add({{"reason", "busy"}}).Increment();
    return problem(
        Error::make(Code::unavailable, "password checks are busy; retry shortly", "login_busy"));
  }
  login_kdf_->Increment();
  if (c == PasswordCheck::match && hash && !hash->empty()) {
    // With a second factor still to check, the name's failures stand until it passes (else
    // a known password would reset the count before every guessed code).
    bool second = views_.read([&](const domain::State& s) { return s.totp.enabled(user_id); });
    if (!second) login_succeeded(name);
    return std::nullopt;
  }
  return login_failed(req, name, user_id, on_mismatch);
}

}  // namespace atrium::api

#include "api/api.h"

#include <charconv>
#include <ctime>

#include "api/crypto.h"
#include "common/time_text.h"

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
  return true;
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
      log_(cfg_.access_log) {}

Result<Principal> Api::authenticate(const HttpRequest& req) const {
  auto h = req.header("authorization");
  if (!h) {
    return Error::make(Code::unauthenticated, "missing bearer token", "token_missing");
  }
  constexpr std::string_view kBearer = "Bearer ";
  if (h->size() <= kBearer.size() || h->compare(0, kBearer.size(), kBearer) != 0 ||
      h->size() > 512) {
    return Error::make(Code::unauthenticated, "the Authorization header must be 'Bearer <token>'",
                       "token_malformed");
  }
  std::string token_hash = sha256_hex(std::string_view(*h).substr(kBearer.size()));
  int64_t now = clock_();
  return views_.read([&](const domain::State& s) -> Result<Principal> {
    const domain::User* u = s.users.authenticate(token_hash, now);
    if (u == nullptr) {
      return Error::make(Code::unauthenticated, "the token is unknown, expired or revoked",
                         "token_invalid");
    }
    return Principal{u->id, u->name, u->roles, token_hash};
  });
}

HttpResponse Api::handle(HttpRequest& req) {
  auto t0 = std::chrono::steady_clock::now();
  in_flight_++;
  auto rid = req.header("x-request-id");
  req.request_id = rid && valid_request_id(*rid) ? *rid : new_id();

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
        const auto& roles = m.route->access.roles;
        bool role_ok = roles.empty() || req.principal->is_admin();
        for (const auto& r : roles) role_ok = role_ok || req.principal->has_role(r);
        if (!role_ok) {
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
      try {
        resp = m.route->handler(req);
      } catch (const std::exception& ex) {
        resp = problem(Error::make(Code::internal, std::string("unexpected error: ") + ex.what()));
      }
    }
  }
  finish(req, m.tmpl, resp, t0);
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
                 std::chrono::steady_clock::time_point t0) {
  resp.with_header("X-Request-Id", req.request_id);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  record_metrics(tmpl, req.method, resp.status, secs);
  if (cfg_.access_log) {
    char dur[32];
    std::snprintf(dur, sizeof dur, "%.3f", secs * 1000);
    log_.write(iso_now() + " " + req.method + " " + req.path + " " + std::to_string(resp.status) +
               " " + dur + "ms rid=" + req.request_id +
               " user=" + (req.principal ? req.principal->user_id : "-"));
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

HttpResponse Api::run(const HttpRequest& req, pipeline::Command cmd) {
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

bool Api::enter_stream() {
  size_t cur = streams_.load();
  while (cur < cfg_.max_sse_streams) {
    if (streams_.compare_exchange_weak(cur, cur + 1)) return true;
  }
  return false;
}

void Api::leave_stream() { streams_--; }

}  // namespace atrium::api

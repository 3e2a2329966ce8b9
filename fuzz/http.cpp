// HTTP requests through the whole application path: Api::handle with every route, the real
// pipeline and views over an in-memory store, as api/server.cpp hands requests over (query
// parameters percent-decoded, header names lower-cased). A fresh broker per input, holding
// an admin "a0" and a user "u0", so that runs are reproducible.
//
// Input: requests separated by a line "~~~". Each is "METHOD TARGET", header lines
// "Name: value", an empty line, then the body. The pseudo-header "As: admin|user|none" picks
// the bearer token (default admin) unless an Authorization header is given. In a target, a
// header or a body, "$id", "$host_id", "$vm_id", "$user_id", "$session_id", ... are replaced
// by that field of the latest successful answer that had it ("$pool_id" etc. also by the "id"
// of a POST to /v1/pools etc.), and "$etag" by the latest ETag's version, so that sequences
// reach the entities they created.
//
// Invariants: never a 500; a status in 200..599; a JSON or problem+json body that parses, a
// problem's "status" equal to the answer's; 503 only with a reason. At the end the log's hash
// chain verifies and replaying it gives the views.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "api/api.h"
#include "api/crypto.h"
#include "api/daemon.h"
#include "domain/users.h"
#include "fuzz/harness.h"

namespace atrium::fuzz {

namespace {

constexpr const char* kAdminToken = "atr_fuzz_admin_token_0123456789abcdef";
constexpr const char* kUserToken = "atr_fuzz_user_token_0123456789abcdef0";

struct Broker {
  std::unique_ptr<eventstore::EventStore> store = eventstore::make_in_memory();
  projections::Views views;
  pipeline::Metrics metrics;
  std::unique_ptr<pipeline::Pipeline> pipeline;
  std::unique_ptr<api::Api> api;

  Broker() {
    pipeline::PipelineOptions po;
    po.snapshot_every = 0;
    auto clock = [] { return int64_t{1'700'000'000'000}; };
    pipeline = std::make_unique<pipeline::Pipeline>(*store, views, metrics, clock, po);
    api::ApiConfig cfg;
    cfg.access_log = false;
    cfg.sse_wait = std::chrono::milliseconds(0);
    cfg.command_timeout = std::chrono::milliseconds(10000);
    cfg.max_body_bytes = 64 * 1024;
    api = std::make_unique<api::Api>(cfg, *store, views, *pipeline, metrics, clock);
    api::register_core_routes(*api, api::openapi_text());
    api::register_appcloud_routes(*api);
    api::register_host_routes(*api);
    api::register_pool_routes(*api, nullptr);
    if (!pipeline->start().ok()) fail("the pipeline did not start");
    seed("a0", "admin", domain::kRoleAdmin, kAdminToken);
    seed("u0", "alice", domain::kRoleUser, kUserToken);
    api->set_started();
  }
  ~Broker() { pipeline->stop(); }

  template <typename C>
  void exec(const char* name, C c) {
    auto r = pipeline->execute(pipeline::decide_command(name, std::move(c)));
    if (!r.ok()) fail(std::string("seeding ") + name + " failed: " + r.error().message);
  }
  void seed(const std::string& id, const std::string& name, const char* role, const char* token) {
    exec("CreateUser", domain::CreateUser{id, name, {role}, ""});
    exec("IssueToken", domain::IssueToken{id, api::sha256_hex(token), int64_t{4'000'000'000'000}});
  }
};

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (to.empty() && from.empty()) return s;
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) {
    s.replace(p, from.size(), to);
  }
  return s;
}

void check_answer(const api::HttpRequest& req, const api::HttpResponse& r) {
  std::string what = req.method + " " + req.path + " -> " + std::to_string(r.status) + " " + r.body;
  if (r.status < 200 || r.status > 599) fail("status out of range: " + what);
  if (r.status == 500) fail("500: " + what);
  bool json = r.content_type.find("json") != std::string::npos;
  if (!json || r.body.empty()) return;
  auto j = api::Json::parse(r.body, nullptr, false);
  if (j.is_discarded()) fail("a JSON answer that does not parse: " + what);
  if (r.content_type == "application/problem+json") {
    if (!j.is_object() || j.value("status", 0) != r.status) fail("problem status differs: " + what);
    if (r.status == 503 && j.value("reason", "").empty()) fail("503 without a reason: " + what);
  }
}

// ATRIUM_FUZZ_STATS=1: count answers by method, first path segments and status, printed at
// exit (to see which routes a corpus reaches).
void count(const api::HttpRequest& req, int status) {
  static std::map<std::string, uint64_t>* stats = [] {
    if (std::getenv("ATRIUM_FUZZ_STATS") == nullptr)
      return static_cast<std::map<std::string, uint64_t>*>(nullptr);
    static std::map<std::string, uint64_t> m;
    std::atexit([] {
      for (const auto& [k, n] : m)
        std::fprintf(stderr, "%10llu %s\n", static_cast<unsigned long long>(n), k.c_str());
    });
    return &m;
  }();
  if (stats == nullptr) return;
  std::string p = req.path.substr(0, req.path.find('/', 4));
  if (p.size() > 30) p.resize(30);
  ++(*stats)[req.method.substr(0, 8) + " " + p + " " + std::to_string(status)];
}

}  // namespace

int http(const uint8_t* data, size_t size) {
  std::string input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> requests;
  for (size_t p = 0;;) {
    size_t sep = input.find("\n~~~\n", p);
    requests.push_back(input.substr(p, sep == std::string::npos ? std::string::npos : sep - p));
    if (sep == std::string::npos || requests.size() >= 16) break;
    p = sep + 5;
  }
  Broker b;
  static const char* const kVars[] = {"host_id",   "vm_id",      "pool_id",
                                      "server_id", "cluster_id", "application_id",
                                      "user_id",   "session_id", "id"};
  std::map<std::string, std::string> vars;
  for (std::string text : requests) {
    for (const auto& [k, v] : vars) text = replace_all(text, "$" + k, v);
    api::HttpRequest req;
    size_t eol = text.find('\n');
    std::string line = text.substr(0, eol);
    size_t sp = line.find(' ');
    if (sp == std::string::npos || sp == 0) continue;
    req.method = line.substr(0, sp);
    std::string target = line.substr(sp + 1);
    size_t q = target.find('?');
    req.path = target.substr(0, q);
    bool query_ok = true;
    if (q != std::string::npos) {
      // As Pistache splits the query and api/server.cpp decodes each part.
      std::string qs = target.substr(q + 1) + "&";
      for (size_t p = 0, amp; (amp = qs.find('&', p)) != std::string::npos; p = amp + 1) {
        std::string part = qs.substr(p, amp - p);
        if (part.empty()) continue;
        size_t eq = part.find('=');
        bool ok1 = true, ok2 = true;
        std::string k = api::url_decode(part.substr(0, eq), true, &ok1);
        std::string v =
            eq == std::string::npos ? "" : api::url_decode(part.substr(eq + 1), true, &ok2);
        query_ok = query_ok && ok1 && ok2;
        req.query[k] = v;
      }
    }
    std::string as = "admin";
    size_t p = eol == std::string::npos ? text.size() : eol + 1;
    while (p < text.size()) {
      size_t e = text.find('\n', p);
      std::string h = text.substr(p, e == std::string::npos ? std::string::npos : e - p);
      p = e == std::string::npos ? text.size() : e + 1;
      if (h.empty()) break;
      size_t colon = h.find(':');
      if (colon == std::string::npos) continue;
      std::string name = h.substr(0, colon), value = h.substr(colon + 1);
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      while (!value.empty() && value[0] == ' ') value.erase(0, 1);
      if (name == "as") {
        as = value;
      } else {
        req.headers[name] = value;
      }
    }
    req.body = p < text.size() ? text.substr(p) : "";
    if (req.headers.count("authorization") == 0) {
      if (as == "admin") req.headers["authorization"] = std::string("Bearer ") + kAdminToken;
      if (as == "user") req.headers["authorization"] = std::string("Bearer ") + kUserToken;
    }
    if (!query_ok) continue;  // api/server.cpp answers 400 invalid_query itself
    api::HttpResponse r;
    try {
      r = b.api->handle(req);
    } catch (const std::exception& ex) {
      fail(std::string("Api::handle threw: ") + ex.what());
    }
    check_answer(req, r);
    count(req, r.status);
    auto j = api::Json::parse(r.body, nullptr, false);
    if (r.status < 300 && j.is_object()) {
      for (const char* k : kVars) {
        if (j.contains(k) && j[k].is_string()) vars[k] = j[k].get<std::string>();
      }
      // A POST to a collection (/v1/pools, /v1/servers/{id}/applications): its "id" is also
      // "$pool_id", "$application_id", ...
      std::string last = req.path.substr(req.path.rfind('/') + 1);
      std::string key = last.empty() ? "" : last.substr(0, last.size() - 1) + "_id";
      if (req.method == "POST" && last.size() > 1 && last.back() == 's' && !j.contains(key) &&
          j.contains("id") && j["id"].is_string()) {
        vars[key] = j["id"].get<std::string>();
      }
    }
    for (const auto& [name, value] : r.headers) {
      if (name == "ETag" && value.size() >= 2) vars["etag"] = value.substr(1, value.size() - 2);
    }
  }
  auto report = b.store->verify();
  if (!report.ok() || !report->ok) fail("the hash chain does not verify after the requests");
  domain::State replayed;
  if (!projections::replay(*b.store, replayed).ok()) fail("the log does not replay");
  auto live = b.views.read([](const domain::State& s) { return domain::state_to_json(s); });
  if (domain::state_to_json(replayed) != live) fail("replaying the log does not give the views");
  return 0;
}

}  // namespace atrium::fuzz

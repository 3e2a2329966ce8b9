// The core HTTP API over real HTTP on a loopback port: conventions and bad input.
#include <doctest/doctest.h>

#include <future>
#include <thread>

#include "api/daemon.h"
#include "eventstore/event_store.h"
#include "support/test_support.h"

using atrium::testing::http;
using atrium::testing::http_raw;
using atrium::testing::TestBroker;
using nlohmann::json;

namespace {
uint64_t last_position(TestBroker& b) { return b.daemon().store().last_position(); }
}  // namespace

TEST_CASE("health, readiness, metrics and the OpenAPI document are served on the API port") {
  TestBroker b;
  auto h = b.call("GET", "/healthz", nullptr, "");
  CHECK(h.status == 200);
  CHECK(h.json()["status"] == "ok");
  auto r = b.call("GET", "/readyz", nullptr, "");
  CHECK(r.status == 200);
  CHECK(r.json()["position"].get<uint64_t>() == last_position(b));
  auto m = b.call("GET", "/metrics", nullptr, "");
  CHECK(m.status == 200);
  CHECK(m.header("content-type").find("text/plain") == 0);
  for (const char* name : {"atrium_events_appended_total", "atrium_synced_write_duration_seconds",
                           "atrium_command_queue_depth", "atrium_log_last_position",
                           "atrium_process_resident_memory_bytes", "atrium_process_open_fds",
                           "atrium_http_requests_total", "atrium_projection_lag_events",
                           "atrium_append_batch_events"}) {
    CHECK_MESSAGE(m.body.find(name) != std::string::npos, name);
  }
  auto o = b.call("GET", "/openapi.yaml", nullptr, "");
  CHECK(o.status == 200);
  CHECK(o.body.find("openapi: 3") == 0);
}

TEST_CASE("authentication: 401 without or with a bad token, 403 for a role that may not act") {
  TestBroker b;
  auto none = b.call("GET", "/v1/users", nullptr, "");
  CHECK(none.status == 401);
  CHECK(none.header("content-type") == "application/problem+json");
  CHECK(none.json()["status"] == 401);
  CHECK(b.call("GET", "/v1/users", nullptr, "atr_not_a_token").status == 401);
  CHECK(http(b.port(), "GET", "/v1/users", "", {{"Authorization", "Basic abc"}}).status == 401);

  auto [uid, utok] = b.user("alice");
  auto forbidden = b.call("GET", "/v1/users", nullptr, utok);
  CHECK(forbidden.status == 403);
  CHECK(forbidden.json()["reason"] == "role_required");
  // A user sees itself, and gets 404 (not 403) for another user.
  CHECK(b.call("GET", "/v1/users/" + uid, nullptr, utok).status == 200);
  auto [bid, btok] = b.user("bob");
  CHECK(b.call("GET", "/v1/users/" + bid, nullptr, utok).status == 404);
}

TEST_CASE("login issues an expiring, revocable token; wrong passwords get one answer") {
  TestBroker b;
  CHECK(b.call("POST", "/v1/users", {{"name", "carol"}, {"password", "s3cret-pass"}}).status == 201);
  auto bad = b.call("POST", "/v1/auth/login", {{"name", "carol"}, {"password", "nope-nope"}}, "");
  CHECK(bad.status == 401);
  auto unknown = b.call("POST", "/v1/auth/login", {{"name", "nobody"}, {"password", "x"}}, "");
  CHECK(unknown.status == 401);
  CHECK(unknown.json()["detail"] == bad.json()["detail"]);

  auto ok = b.call("POST", "/v1/auth/login", {{"name", "carol"}, {"password", "s3cret-pass"}}, "");
  REQUIRE(ok.status == 200);
  std::string token = ok.json()["token"];
  CHECK(token.size() == 68);
  CHECK(ok.json()["roles"] == json::array({"user"}));
  std::string id = ok.json()["user_id"];
  CHECK(b.call("GET", "/v1/users/" + id, nullptr, token).status == 200);

  // The token is stored only as its SHA-256: it appears nowhere in the log.
  auto events = b.call("GET", "/v1/events?limit=1000");
  CHECK(events.body.find(token) == std::string::npos);
  CHECK(events.body.find("argon2") == std::string::npos);

  // Expiry: 12 hours by default.
  b.advance_clock_ms(int64_t{13} * 3600 * 1000);
  CHECK(b.call("GET", "/v1/users/" + id, nullptr, token).status == 401);
  b.advance_clock_ms(-int64_t{13} * 3600 * 1000);

  // Revocation by logout.
  CHECK(b.call("GET", "/v1/users/" + id, nullptr, token).status == 200);
  CHECK(b.call("POST", "/v1/auth/logout", nullptr, token).status == 204);
  CHECK(b.call("GET", "/v1/users/" + id, nullptr, token).status == 401);

  // Disabling a user invalidates its tokens.
  auto [did, dtok] = b.user("dave");
  CHECK(b.call("PATCH", "/v1/users/" + did, {{"disabled", true}}).status == 200);
  CHECK(b.call("GET", "/v1/users/" + did, nullptr, dtok).status == 401);
}

TEST_CASE("users: create, read with ETag, If-Match, list with cursors, delete") {
  TestBroker b;
  auto c = b.call("POST", "/v1/users", {{"name", "erin"}, {"roles", {"user", "admin"}}});
  REQUIRE(c.status == 201);
  std::string id = c.json()["id"];
  CHECK(c.header("location") == "/v1/users/" + id);
  CHECK(c.json()["version"] == 1);
  CHECK(c.json().contains("password_hash") == false);
  CHECK(b.call("POST", "/v1/users", {{"name", "erin"}}).status == 409);

  auto g = b.call("GET", "/v1/users/" + id);
  CHECK(g.status == 200);
  CHECK(g.header("etag") == "\"1\"");

  auto stale = b.call("PATCH", "/v1/users/" + id, {{"roles", {"user"}}}, TestBroker::kAdminToken,
                      {{"If-Match", "\"7\""}});
  CHECK(stale.status == 412);
  auto p = b.call("PATCH", "/v1/users/" + id, {{"roles", {"user"}}}, TestBroker::kAdminToken,
                  {{"If-Match", "\"1\""}});
  CHECK(p.status == 200);
  CHECK(p.header("etag") == "\"2\"");
  CHECK(p.json()["roles"] == json::array({"user"}));
  CHECK(b.call("PATCH", "/v1/users/" + id, {{"roles", {"user"}}}, TestBroker::kAdminToken,
               {{"If-Match", "nonsense"}})
            .status == 400);

  for (int i = 0; i < 5; ++i) {
    CHECK(b.call("POST", "/v1/users", {{"name", "page-" + std::to_string(i)}}).status == 201);
  }
  std::set<std::string> seen;
  std::string cursor;
  int pages = 0;
  for (;;) {
    auto l = b.call("GET", "/v1/users?limit=2" + (cursor.empty() ? "" : "&cursor=" + cursor));
    REQUIRE(l.status == 200);
    auto page = l.json();
    for (const auto& u : page["items"]) CHECK(seen.insert(u["id"].get<std::string>()).second);
    ++pages;
    if (l.json()["next_cursor"].is_null()) break;
    cursor = l.json()["next_cursor"];
  }
  CHECK(seen.size() == 7);  // admin, erin and five more
  CHECK(pages == 4);

  CHECK(b.call("DELETE", "/v1/users/" + id).status == 204);
  CHECK(b.call("GET", "/v1/users/" + id).status == 404);
  CHECK(b.call("DELETE", "/v1/users/" + id).status == 404);
}

TEST_CASE("the last enabled admin cannot be removed") {
  TestBroker b;
  auto users = b.call("GET", "/v1/users").json()["items"];
  REQUIRE(users.size() == 1);
  std::string admin = users[0]["id"];
  auto r = b.call("DELETE", "/v1/users/" + admin);
  CHECK(r.status == 409);
  CHECK(r.json()["reason"] == "last_admin");
  CHECK(b.call("PATCH", "/v1/users/" + admin, {{"disabled", true}}).status == 409);
}

TEST_CASE("Idempotency-Key: same key and body returns the first result, another body 422") {
  TestBroker b;
  std::vector<std::pair<std::string, std::string>> key{{"Idempotency-Key", "k-1"}};
  auto first = b.call("POST", "/v1/users", {{"name", "frank"}}, TestBroker::kAdminToken, key);
  REQUIRE(first.status == 201);
  uint64_t pos = last_position(b);
  auto again = b.call("POST", "/v1/users", {{"name", "frank"}}, TestBroker::kAdminToken, key);
  CHECK(again.status == 201);
  CHECK(again.json() == first.json());
  CHECK(again.header("idempotent-replayed") == "true");
  CHECK(last_position(b) == pos);
  auto other = b.call("POST", "/v1/users", {{"name", "grace"}}, TestBroker::kAdminToken, key);
  CHECK(other.status == 422);
  CHECK(other.json()["reason"] == "idempotency_key_reused");
  CHECK(last_position(b) == pos);
  // The key survives a restart: it is stored with the events.
  b.restart();
  auto after = b.call("POST", "/v1/users", {{"name", "frank"}}, TestBroker::kAdminToken, key);
  CHECK(after.status == 201);
  CHECK(after.json()["id"] == first.json()["id"]);
}

TEST_CASE("bad input gets a 4xx problem+json, the server stays up and nothing is appended") {
  TestBroker b;
  uint64_t before = last_position(b);
  auto expect = [&](const atrium::testing::HttpReply& r, int status, const char* what) {
    CHECK_MESSAGE(r.status == status, what, ": ", r.body);
    CHECK_MESSAGE(r.header("content-type") == "application/problem+json", what);
    CHECK_MESSAGE(r.json()["status"] == status, what);
  };
  auto post = [&](const std::string& body) {
    return http(b.port(), "POST", "/v1/users", body,
                {{"Authorization", std::string("Bearer ") + TestBroker::kAdminToken}});
  };
  expect(post("{\"name\": "), 400, "malformed JSON");
  expect(post("[1,2]"), 400, "not an object");
  expect(post(""), 400, "empty body");
  expect(post("{\"name\": 42}"), 400, "wrong type");
  expect(post("{\"roles\": [\"user\"]}"), 400, "missing field");
  auto unknown = post("{\"name\": \"x\", \"colour\": \"red\"}");
  expect(unknown, 400, "unknown field");
  CHECK(unknown.json()["errors"][0]["field"] == "colour");
  expect(post("{\"name\": \"x\", \"roles\": [\"wizard\"]}"), 400, "unknown role");
  expect(post(std::string(100000, '[') + std::string(100000, ']')), 400, "deep nesting");
  expect(post("{\"name\": " + std::string(40, '[') + "1" + std::string(40, ']') + "}"), 400,
         "nesting over the limit");
  expect(post("{\"name\": \"\xff\xfe\"}"), 400, "invalid UTF-8");
  expect(post("{\"name\": \"\xed\xa0\x80\"}"), 400, "UTF-8 surrogate");
  auto big = post("{\"name\": \"" + std::string(5u << 20, 'a') + "\"}");
  expect(big, 413, "5 MiB body");
  expect(b.call("GET", "/v1/users?limit=100000"), 400, "huge limit");
  expect(b.call("GET", "/v1/users?limit=0"), 400, "zero limit");
  expect(b.call("GET", "/v1/users?limit=abc"), 400, "non-numeric limit");
  expect(b.call("GET", "/v1/users?cursor=zzz"), 400, "forged cursor");
  expect(b.call("GET", "/v1/nothing-here"), 404, "unknown route");
  auto m = b.call("PUT", "/v1/users");
  expect(m, 405, "unknown method");
  CHECK(m.header("allow").find("GET") != std::string::npos);
  expect(b.call("GET", "/v1/users?as_of=99999999"), 400, "as_of in the future");
  expect(b.call("GET", "/v1/events?after=-3"), 400, "negative position");
  // A request line Pistache can't parse still gets an answer, and the server lives on.
  std::string raw = http_raw(b.port(), "GARBAGE\r\n\r\n");
  CHECK((raw.empty() || raw.rfind("HTTP/1.1 4", 0) == 0));
  CHECK(b.call("GET", "/healthz", nullptr, "").status == 200);
  CHECK(last_position(b) == before);
}

TEST_CASE("request ids: echoed when given, generated when absent, and kept on the events") {
  TestBroker b;
  auto r = b.call("POST", "/v1/users", {{"name", "heidi"}}, TestBroker::kAdminToken,
                  {{"X-Request-Id", "req-abc-123"}});
  REQUIRE(r.status == 201);
  CHECK(r.header("x-request-id") == "req-abc-123");
  auto gen = b.call("GET", "/healthz", nullptr, "");
  CHECK(gen.header("x-request-id").size() == 36);
  auto ev = b.call("GET", "/v1/events?type=UserCreated&limit=10");
  bool found = false;
  auto evj = ev.json();
  for (const auto& e : evj["items"]) {
    if (e["data"]["name"] == "heidi") {
      found = true;
      CHECK(e["correlation_id"] == "req-abc-123");
      CHECK(e["data"]["password_hash"] == "[redacted]");
      CHECK(e["hash"].get<std::string>().size() == 64);
    }
  }
  CHECK(found);
}

TEST_CASE("audit: events in order with filters and cursors, one stream's history, as_of views") {
  TestBroker b;
  auto c = b.call("POST", "/v1/users", {{"name", "ivan"}, {"roles", {"user"}}});
  std::string id = c.json()["id"];
  uint64_t created_at = last_position(b);
  REQUIRE(b.call("PATCH", "/v1/users/" + id, {{"roles", {"user", "agent"}}}).status == 200);

  auto all = b.call("GET", "/v1/events?limit=2");
  REQUIRE(all.status == 200);
  CHECK(all.json()["items"].size() == 2);
  CHECK(all.json()["items"][0]["position"] == 1);
  CHECK(all.json()["items"][1]["position"] == 2);
  std::string cursor = all.json()["next_cursor"];
  auto next = b.call("GET", "/v1/events?limit=2&cursor=" + cursor);
  CHECK(next.json()["items"][0]["position"] == 3);

  auto typed = b.call("GET", "/v1/events?type=UserUpdated");
  REQUIRE(typed.json()["items"].size() == 1);
  CHECK(typed.json()["items"][0]["stream"] == "user-" + id);

  auto stream = b.call("GET", "/v1/streams/user-" + id);
  REQUIRE(stream.status == 200);
  CHECK(stream.json()["items"].size() == 2);
  CHECK(stream.json()["items"][1]["stream_version"] == 2);
  CHECK(b.call("GET", "/v1/streams/user-nope").status == 404);

  auto past = b.call("GET", "/v1/users/" + id + "?as_of=" + std::to_string(created_at));
  REQUIRE(past.status == 200);
  CHECK(past.json()["roles"] == json::array({"user"}));
  CHECK(past.header("x-atrium-as-of") == std::to_string(created_at));
  auto now = b.call("GET", "/v1/users/" + id);
  CHECK(now.json()["roles"] == json::array({"agent", "user"}));
  auto before_user = b.call("GET", "/v1/users/" + id + "?as_of=" + std::to_string(created_at - 1));
  CHECK(before_user.status == 404);

  // Non-admins may not read the audit log.
  auto [uid, utok] = b.user("judy");
  CHECK(b.call("GET", "/v1/events", nullptr, utok).status == 403);
}

TEST_CASE("server-sent events resume from Last-Event-ID and wake on new events") {
  TestBroker b;
  uint64_t last = last_position(b);
  auto backlog = b.call("GET", "/v1/events/stream", nullptr, TestBroker::kAdminToken,
                        {{"Last-Event-ID", "0"}});
  REQUIRE(backlog.status == 200);
  CHECK(backlog.header("content-type").find("text/event-stream") == 0);
  CHECK(backlog.body.find("id: " + std::to_string(last) + "\n") != std::string::npos);

  auto waiting = std::async(std::launch::async, [&] {
    return b.call("GET", "/v1/events/stream", nullptr, TestBroker::kAdminToken,
                  {{"Last-Event-ID", std::to_string(last)}});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  REQUIRE(b.call("POST", "/v1/users", {{"name", "kim"}}).status == 201);
  auto got = waiting.get();
  CHECK(got.status == 200);
  CHECK(got.body.find("id: " + std::to_string(last + 1) + "\nevent: UserCreated\n") !=
        std::string::npos);
  CHECK(got.body.find("id: " + std::to_string(last) + "\n") == std::string::npos);
}

TEST_CASE("state survives a restart: users, tokens and positions") {
  TestBroker b;
  auto [id, tok] = b.user("leo");
  uint64_t pos = last_position(b);
  b.restart();
  CHECK(last_position(b) == pos);
  CHECK(b.call("GET", "/v1/users/" + id, nullptr, tok).status == 200);
  CHECK(b.call("GET", "/readyz", nullptr, "").status == 200);
}

TEST_CASE("concurrent writes over HTTP all succeed with gap-free positions") {
  TestBroker b;
  constexpr int kThreads = 16, kEach = 10;
  std::vector<std::future<int>> fs;
  for (int t = 0; t < kThreads; ++t) {
    fs.push_back(std::async(std::launch::async, [&, t] {
      int ok = 0;
      for (int i = 0; i < kEach; ++i) {
        auto r = b.call("POST", "/v1/users",
                        {{"name", "c-" + std::to_string(t) + "-" + std::to_string(i)}});
        ok += r.status == 201;
      }
      return ok;
    }));
  }
  int total = 0;
  for (auto& f : fs) total += f.get();
  CHECK(total == kThreads * kEach);
  auto v = b.daemon().store().verify();
  REQUIRE(v.ok());
  CHECK(v->ok);
  CHECK(v->events_checked == last_position(b));
}

TEST_CASE("while the log is being replayed: healthz 200, readyz and other routes 503") {
  auto store = atrium::eventstore::make_in_memory();
  atrium::projections::Views views;
  atrium::pipeline::Metrics metrics;
  atrium::pipeline::Pipeline pipe(*store, views, metrics);  // not started: replay pending
  atrium::api::Api api({}, *store, views, pipe, metrics);
  atrium::api::register_core_routes(api, "openapi: 3.1.0\n");
  auto get = [&](const std::string& path) {
    atrium::api::HttpRequest r;
    r.method = "GET";
    r.path = path;
    return api.handle(r);
  };
  CHECK(get("/healthz").status == 200);
  CHECK(get("/readyz").status == 503);
  auto users = get("/v1/users");
  CHECK(users.status == 503);
  CHECK(json::parse(users.body)["reason"] == "starting");
  REQUIRE(pipe.start().ok());
  CHECK(get("/readyz").status == 503);  // replayed, but the daemon has not finished starting
  api.set_started();
  CHECK(get("/readyz").status == 200);
  CHECK(get("/v1/users").status == 401);  // past the gate: now it wants a token
}

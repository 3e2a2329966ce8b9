// Attack cases on requests, streams, sign-in, tokens and users (findings 9.8 and 10.8-10.14),
// over real HTTP on a loopback port, one section per finding. Each case failed on the code
// before its fix; keep them all. The other concerns are in the sibling attack_*_test.cpp files.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>
#include <vector>

#include "api/crypto.h"
#include "api/daemon.h"
#include "support/agents.h"
#include "support/attack_support.h"
#include "support/test_support.h"

using atrium::testing::http;
using atrium::testing::http_raw;
using atrium::testing::poll;
using atrium::testing::TestBroker;
using atrium::testing::attack::count_events;
using atrium::testing::attack::login;
using atrium::testing::attack::make_server;
using atrium::testing::attack::metric;
using atrium::testing::attack::reason;
using nlohmann::json;
using namespace std::chrono_literals;

// ==== 9.8: unknown query parameters =========================================================
// They were ignored silently: /v1/events?as_of=20 answered from position 1 as if the
// parameter meant something. Every route now names its query parameters (api/query_params.cpp,
// checked against openapi.yaml by contract_test.cpp) and refuses the others.

TEST_CASE("9.8: an unknown query parameter is 400 unknown_query_parameter, naming it") {
  TestBroker b;
  auto r = b.call("GET", "/v1/events?as_of=20");
  CHECK(r.status == 400);
  CHECK(r.header("content-type") == "application/problem+json");
  json j = r.json();
  CHECK(j["reason"] == "unknown_query_parameter");
  CHECK(j["detail"].get<std::string>().find("as_of") != std::string::npos);
  REQUIRE(j["errors"].is_array());
  REQUIRE(j["errors"].size() == 1);
  CHECK(j["errors"][0]["field"] == "as_of");
  // Known ones still work, on the same route.
  CHECK(b.call("GET", "/v1/events?after=1&limit=2").status == 200);
  // Every unknown one is named, in order.
  j = b.call("GET", "/v1/users?limt=5&zeta=1&limit=2").json();
  CHECK(j["reason"] == "unknown_query_parameter");
  REQUIRE(j["errors"].size() == 2);
  CHECK(j["errors"][0]["field"] == "limt");
  CHECK(j["errors"][1]["field"] == "zeta");
  // On routes that take none, and on writes, too; the log is unchanged by a refused write.
  CHECK(b.call("GET", "/healthz?verbose=1", nullptr, "").status == 400);
  auto before = b.call("GET", "/v1/events?limit=1000").json()["items"].size();
  auto w = b.call("POST", "/v1/users?dry_run=true", {{"name", "qp"}});
  CHECK(w.status == 400);
  CHECK(w.json()["reason"] == "unknown_query_parameter");
  CHECK(b.call("GET", "/v1/events?limit=1000").json()["items"].size() == before);
  // A parameter name is matched exactly (no case folding, no prefix).
  CHECK(b.call("GET", "/v1/users?LIMIT=1").status == 400);
  CHECK(b.call("GET", "/v1/users?limit_=1").status == 400);
}

TEST_CASE("9.8: authentication comes first; unknown routes stay 404, wrong methods 405") {
  TestBroker b;
  CHECK(b.call("GET", "/v1/users?bogus=1", nullptr, "").status == 401);
  CHECK(b.call("GET", "/v1/nope?bogus=1").status == 404);
  CHECK(b.call("PUT", "/v1/users?bogus=1").status == 405);
}

// ==== 10.8: stream starvation =================================================================
// One user holding many long-polls made every other user's and the admin's streams 503.

TEST_CASE("10.8: one user's long-polls cannot starve other users' or the admin's streams") {
  TestBroker b([](atrium::api::DaemonConfig& cfg) {
    cfg.api.threads = 24;
    cfg.api.sse_wait = 4s;
  });
  auto [aid, atok] = b.user("alice");
  auto [bid, btok] = b.user("bob");
  std::atomic<int> done{0}, held{0}, refused_429{0};
  std::vector<std::thread> hogs;
  for (int i = 0; i < 10; ++i) {
    hogs.emplace_back([&, tok = atok] {
      auto r = b.call("GET", "/v1/me/notifications", nullptr, tok);
      if (r.status == 200) held++;
      if (r.status == 429) refused_429++;
      done++;
    });
  }
  // The refused ones answer at once; the held ones wait for sse_wait.
  auto until = std::chrono::steady_clock::now() + 3s;
  while (done.load() < 2 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(20ms);
  std::this_thread::sleep_for(300ms);
  auto bob = b.call("GET", "/v1/me/notifications?after=999999", nullptr, btok);
  auto admin = b.call("GET", "/v1/events/stream?after=999999");
  for (auto& t : hogs) t.join();
  CHECK_MESSAGE(bob.status == 200, bob.body);
  CHECK_MESSAGE(admin.status == 200, admin.body);
  CHECK(held.load() <= 2);  // the per-user cap
  CHECK(refused_429.load() >= 8);
}

TEST_CASE("10.8: an over-limit stream is a 429 problem with Retry-After naming the reason") {
  TestBroker b([](atrium::api::DaemonConfig& cfg) {
    cfg.api.threads = 16;
    cfg.api.sse_wait = 3s;
    cfg.api.streams_per_user = 1;
  });
  auto [aid, atok] = b.user("alice");
  std::thread hog([&, tok = atok] { b.call("GET", "/v1/me/notifications", nullptr, tok); });
  std::this_thread::sleep_for(500ms);
  auto r = b.call("GET", "/v1/me/notifications", nullptr, atok);
  hog.join();
  CHECK(r.status == 429);
  CHECK(r.header("content-type") == "application/problem+json");
  CHECK(reason(r) == "too_many_user_streams");
  CHECK(!r.header("retry-after").empty());
}

// ==== 10.9: login throttling and the KDF ======================================================
// 859 wrong passwords in 10 s from 32 clients, no lockout; the KDF starved healthz.

TEST_CASE("10.9: wrong passwords for one name are throttled with 429 and Retry-After") {
  TestBroker b([](atrium::api::DaemonConfig& cfg) {
    cfg.api.login.failures_per_user = 3;
    cfg.api.login.failures_per_address = 100;
    cfg.api.login.window_ms = 60'000;
  });
  auto [cid, ctok] = b.user("carol");
  for (int i = 0; i < 3; ++i) CHECK(login(b, "carol", "wrong-password").status == 401);
  auto t = login(b, "carol", "wrong-password");
  CHECK(t.status == 429);
  CHECK(reason(t) == "login_throttled");
  CHECK(t.header("content-type") == "application/problem+json");
  int retry = std::atoi(t.header("retry-after").c_str());
  CHECK(retry >= 1);
  CHECK(retry <= 60);
  // Even the right password waits for the window: the attacker cannot tell it was right.
  CHECK(login(b, "carol", "password-carol").status == 429);
  for (int i = 0; i < 20; ++i) login(b, "carol", "wrong-password");
  // Failures are counted; the throttle is recorded once per window and name, not per failure.
  CHECK(metric(b, "atrium_login_failures_total{reason=\"bad_credentials\"}") >= 3);
  CHECK(metric(b, "atrium_login_failures_total{reason=\"throttled\"}") >= 20);
  CHECK(count_events(b, "LoginThrottled") == 1);
  // Another name from the same address is not affected.
  auto [did, dtok] = b.user("dave");
  // After the window the right password works again.
  b.advance_clock_ms(61'000);
  CHECK(login(b, "carol", "password-carol").status == 200);
  b.advance_clock_ms(-61'000);
}

TEST_CASE("10.9: wrong passwords from one address are throttled across names") {
  TestBroker b([](atrium::api::DaemonConfig& cfg) {
    cfg.api.login.failures_per_user = 100;
    cfg.api.login.failures_per_address = 5;
  });
  auto [eid, etok] = b.user("erin");
  for (int i = 0; i < 5; ++i) {
    CHECK(login(b, "nobody" + std::to_string(i), "wrong-password").status == 401);
  }
  auto t = login(b, "erin", "password-erin");
  CHECK(t.status == 429);
  CHECK(reason(t) == "login_throttled");
  json ev = b.call("GET", "/v1/events?limit=1000&type=LoginThrottled").json();
  REQUIRE(ev["items"].size() == 1);
  CHECK(ev["items"][0]["data"]["scope"] == "address");
  CHECK(ev["items"][0]["data"]["address"] == "127.0.0.1");
}

TEST_CASE("10.9: a login storm cannot queue every HTTP worker behind the KDF") {
  // Throttling off (high limits), so every guess reaches the KDF: the gate answers 503
  // login_busy instead of parking the HTTP workers, and healthz stays answered.
  // More guessers, and HTTP workers, than the KDF has slots and queue places (cores less one,
  // two waiters each), whatever the machine.
  const int guessing = std::max(24, 3 * atrium::api::kdf_slots() + 8);
  TestBroker b([&](atrium::api::DaemonConfig& cfg) {
    cfg.api.threads = std::min(512, guessing + 8);
    cfg.api.login.failures_per_user = 1'000'000;
    cfg.api.login.failures_per_address = 1'000'000;
  });
  std::atomic<bool> stop{false};
  std::atomic<int> busy{0}, answered{0};
  std::vector<std::thread> guessers;
  for (int i = 0; i < guessing; ++i) {
    guessers.emplace_back([&, i] {
      while (!stop) {
        auto r = login(b, "nobody" + std::to_string(i), "wrong-password");
        if (r.status == 503 && reason(r) == "login_busy") busy++;
        if (r.status != 0) answered++;
      }
    });
  }
  std::this_thread::sleep_for(1500ms);
  int healthz_ok = 0;
  for (int i = 0; i < 20; ++i) healthz_ok += b.call("GET", "/healthz", nullptr, "").status == 200;
  stop = true;
  for (auto& t : guessers) t.join();
  CHECK(healthz_ok == 20);
  CHECK(busy.load() > 0);
  CHECK(metric(b, "atrium_login_failures_total{reason=\"busy\"}") > 0);
}

// ==== 10.10: disabling a user revokes its tokens ==============================================

TEST_CASE("10.10: a token of a disabled user stays invalid once the user is enabled again") {
  TestBroker b;
  auto [did, dtok] = b.user("dave");
  CHECK(b.call("GET", "/v1/users/" + did, nullptr, dtok).status == 200);
  CHECK(b.call("PATCH", "/v1/users/" + did, {{"disabled", true}}).status == 200);
  CHECK(b.call("GET", "/v1/users/" + did, nullptr, dtok).status == 401);
  CHECK(b.call("PATCH", "/v1/users/" + did, {{"disabled", false}}).status == 200);
  CHECK(b.call("GET", "/v1/users/" + did, nullptr, dtok).status == 401);
  b.restart();  // and on replay
  CHECK(b.call("GET", "/v1/users/" + did, nullptr, dtok).status == 401);
  CHECK(login(b, "dave", "password-dave").status == 200);
}

// ==== 10.12: agents act only for their own server; no reports from the future =================

TEST_CASE(
    "10.12: an agent reports only for its own server (enrolled agents replace agent_server_id)") {
  TestBroker b;
  std::string s1 = make_server(b, "srv-one");
  std::string s2 = make_server(b, "srv-two");
  auto a1 = atrium::testing::enroll_agent(b, {{"server_id", s1}}, "machine-one");
  auto a2 = atrium::testing::enroll_agent(b, {{"server_id", s2}}, "machine-two");
  REQUIRE(atrium::testing::agent_call(b, a1, "register").status == 200);
  auto hb = atrium::testing::agent_call(b, a1, "heartbeat", atrium::testing::beat(0.3, 0.4));
  REQUIRE_MESSAGE(hb.status == 200, hb.body);
  CHECK(b.call("GET", "/v1/servers/" + s1).json()["load"]["cpu_load"] == 0.3);
  // Another agent's endpoints: refused, with Retry-After.
  auto other =
      b.call("POST", "/v1/agents/" + a2.id + "/heartbeat", atrium::testing::beat(), a1.credential);
  CHECK(other.status == 403);
  CHECK(reason(other) == "agent_mismatch");
  CHECK(!other.header("retry-after").empty());
  // The credential is not a user token: the report-by-hand route and admin routes do not know it.
  json load{{"cpu_load", 0.1}, {"memory_load", 0.2}, {"sessions", 0}};
  CHECK(b.call("POST", "/v1/servers/" + s2 + "/report", load, a1.credential).status == 401);
  CHECK(b.call("GET", "/v1/agents", nullptr, a1.credential).status == 401);
  // Users with role agent are no longer bound by hand; a legacy binding may be removed.
  auto [unbound, utok] = b.user("agent-free", {"agent"});
  auto c = b.call("POST", "/v1/users",
                  {{"name", "agent-s1"}, {"roles", {"agent"}}, {"agent_server_id", s1}});
  CHECK(c.status == 400);
  CHECK(reason(c) == "agent_binding_replaced");
  CHECK(reason(b.call("PATCH", "/v1/users/" + unbound, {{"agent_server_id", s2}})) ==
        "agent_binding_replaced");
  CHECK(b.call("PATCH", "/v1/users/" + unbound, {{"agent_server_id", s2}}, utok).status == 403);
  CHECK(b.call("PATCH", "/v1/users/" + unbound, {{"agent_server_id", ""}}).status == 200);
  // An unbound agent user still cannot report; admins still report for any server.
  CHECK(reason(b.call("POST", "/v1/servers/" + s1 + "/report", load, utok)) == "agent_not_bound");
  CHECK(b.call("POST", "/v1/servers/" + s1 + "/report", load).status == 200);
}

TEST_CASE("10.12: load reports dated beyond the skew into the future are refused") {
  TestBroker b;
  std::string s1 = make_server(b, "srv-one");
  int64_t now = atrium::pipeline::system_now_ms();
  json load{{"cpu_load", 0.1}, {"memory_load", 0.2}, {"sessions", 0}};
  load["reported_at_ms"] = int64_t{4102444800000};  // 2100-01-01
  auto r = b.call("POST", "/v1/servers/" + s1 + "/report", load);
  CHECK(r.status == 400);
  CHECK(reason(r) == "reported_at_in_future");
  load["reported_at_ms"] = now + 120'000;
  CHECK(b.call("POST", "/v1/servers/" + s1 + "/report", load).status == 400);
  load["reported_at_ms"] = now + 10'000;  // within the skew
  CHECK(b.call("POST", "/v1/servers/" + s1 + "/report", load).status == 200);
}

// ==== 10.13: own password change, constant-time login, user names, duplicate keys ==============

TEST_CASE("10.13: changing one's own password needs the current one; admins do not") {
  TestBroker b;
  auto [aid, atok] = b.user("alice");
  auto none = b.call("PATCH", "/v1/users/" + aid, {{"password", "new-password-1"}}, atok);
  CHECK(none.status == 400);
  CHECK(reason(none) == "current_password_required");
  auto wrong =
      b.call("PATCH", "/v1/users/" + aid,
             {{"password", "new-password-1"}, {"current_password", "not-it-at-all"}}, atok);
  CHECK(wrong.status == 403);
  CHECK(reason(wrong) == "current_password_wrong");
  CHECK(b.call("GET", "/v1/users/" + aid, nullptr, atok).status == 200);  // token still valid
  auto ok = b.call("PATCH", "/v1/users/" + aid,
                   {{"password", "new-password-1"}, {"current_password", "password-alice"}}, atok);
  CHECK_MESSAGE(ok.status == 200, ok.body);
  CHECK(login(b, "alice", "new-password-1").status == 200);
  // An admin resets another user's password without knowing it.
  CHECK(b.call("PATCH", "/v1/users/" + aid, {{"password", "reset-by-admin"}}).status == 200);
  CHECK(login(b, "alice", "reset-by-admin").status == 200);
}

TEST_CASE("10.13: every failing login path runs the KDF once (unknown, no password, wrong)") {
  TestBroker b;
  CHECK(b.call("POST", "/v1/users", {{"name", "nopass"}}).status == 201);
  auto [cid, ctok] = b.user("carol");
  double before = metric(b, "atrium_login_kdf_total");
  CHECK(login(b, "nobody", "whatever-pass").status == 401);
  CHECK(login(b, "nopass", "whatever-pass").status == 401);
  CHECK(login(b, "carol", "whatever-pass").status == 401);
  CHECK(metric(b, "atrium_login_kdf_total") - before == 3);
}

TEST_CASE("10.13: user names are NFKC-normalised; mixed scripts and invisibles are refused") {
  TestBroker b;
  for (const char* bad : {"\xd0\xb0"
                          "dmin",  // Cyrillic a + Latin "dmin"
                          "ali\xe2\x80\x8b"
                          "ce",  // U+200B zero width space
                          "\xe2\x80\xae"
                          "nimda",            // U+202E right-to-left override
                          "bob\xe2\x80\x8d",  // U+200D zero width joiner
                          "a b", " alice", "-lead", "tab\tname"}) {
    CAPTURE(bad);
    auto r = b.call("POST", "/v1/users", {{"name", bad}, {"password", "some-password"}});
    CHECK(r.status == 400);
    CHECK(reason(r) == "invalid_name");
  }
  // Single-script names in other languages work.
  for (const char* good : {"\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd",  // иван
                           "\xe5\xbc\xa0\xe4\xbc\x9f",          // 张伟
                           "jean.dupont", "o_neil-2", "ann@example.org"}) {
    CAPTURE(good);
    auto r = b.call("POST", "/v1/users", {{"name", good}, {"password", "some-password"}});
    CHECK_MESSAGE(r.status == 201, r.body);
    CHECK(login(b, good, "some-password").status == 200);
  }
  // NFKC: fullwidth letters become ASCII, at creation and at login.
  auto fw =
      b.call("POST", "/v1/users",
             {{"name", "\xef\xbd\x86\xef\xbd\x92\xef\xbd\x8f"}, {"password", "some-password"}});
  REQUIRE(fw.status == 201);
  CHECK(fw.json()["name"] == "fro");
  CHECK(login(b, "fro", "some-password").status == 200);
  CHECK(login(b, "\xef\xbd\x86\xef\xbd\x92\xef\xbd\x8f", "some-password").status == 200);
  // A name confusable with an existing one is refused 409.
  CHECK(b.call("POST", "/v1/users", {{"name", "roman"}}).status == 201);
  auto conf = b.call("POST", "/v1/users", {{"name", "rornan"}});  // "rn" looks like "m"
  CHECK(conf.status == 409);
  CHECK(reason(conf) == "user_name_confusable");
  CHECK(b.call("POST", "/v1/users", {{"name", "coco"}}).status == 201);
  auto cyr = b.call("POST", "/v1/users", {{"name", "\xd1\x81\xd0\xbe\xd1\x81\xd0\xbe"}});  // сосо
  CHECK(cyr.status == 409);
  CHECK(reason(cyr) == "user_name_confusable");
  // The look-alike of the first admin cannot be created either.
  CHECK(b.call("POST", "/v1/users", {{"name", "adrnin"}}).status == 409);
}

TEST_CASE("10.13: duplicate JSON keys are refused at every depth") {
  TestBroker b;
  std::string s1 = make_server(b, "srv-one");
  uint64_t before = b.daemon().store().last_position();
  auto dup = http(b.port(), "POST", "/v1/users",
                  R"({"name":"mallory","roles":["user"],"roles":["admin"]})",
                  {{"Authorization", std::string("Bearer ") + TestBroker::kAdminToken}});
  CHECK(dup.status == 400);
  CHECK(reason(dup) == "duplicate_key");
  auto nested = http(b.port(), "POST", "/v1/servers/" + s1 + "/report",
                     R"({"cpu_load":0.1,"memory_load":0.1,"sessions":0,)"
                     R"("inventory":{"apps":[],"users":[],"apps":["x"]}})",
                     {{"Authorization", std::string("Bearer ") + TestBroker::kAdminToken}});
  CHECK(nested.status == 400);
  CHECK(reason(nested) == "duplicate_key");
  auto in_array = http(b.port(), "POST", "/v1/users", R"({"name":"m2","x":[{"a":1,"a":2}]})",
                       {{"Authorization", std::string("Bearer ") + TestBroker::kAdminToken}});
  CHECK(in_array.status == 400);
  CHECK(reason(in_array) == "duplicate_key");
  CHECK(b.daemon().store().last_position() == before);
  // The same key in sibling objects is fine.
  auto fine = http(b.port(), "POST", "/v1/servers/" + s1 + "/report",
                   R"({"cpu_load":0.1,"memory_load":0.1,"sessions":0,)"
                   R"("inventory":{"apps":[],"users":[]}})",
                   {{"Authorization", std::string("Bearer ") + TestBroker::kAdminToken}});
  CHECK_MESSAGE(fine.status == 200, fine.body);
}

// ==== 10.14: low findings =====================================================================

TEST_CASE("10.14: access log lines escape control bytes from the request line") {
  // The access log goes to stderr: point fd 2 at a file for the length of this case.
  atrium::testing::TempDir dir;
  std::string path = dir.str() + "/stderr";
  fflush(stderr);
  int saved = ::dup(2);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  REQUIRE(fd >= 0);
  ::dup2(fd, 2);
  ::close(fd);
  std::string log;
  {
    TestBroker b([](atrium::api::DaemonConfig& cfg) { cfg.api.access_log = true; });
    http_raw(b.port(),
             "GET /healthz?x=\x1b[31mred\r HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    http_raw(b.port(), "GET /no\x1b[2Jwhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    std::this_thread::sleep_for(400ms);
  }
  fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::ifstream in(path);
  log.assign(std::istreambuf_iterator<char>(in), {});
  CHECK(log.find('\x1b') == std::string::npos);
  for (char c : log) {
    if (c != '\n') CHECK(static_cast<unsigned char>(c) >= 0x20);
  }
}

TEST_CASE("10.14: clients cannot use the request ids the broker uses itself") {
  TestBroker b;
  for (const char* rid : {"bootstrap", "pool-worker", "reconciler", "system", "BOOTSTRAP"}) {
    CAPTURE(rid);
    auto r =
        b.call("POST", "/v1/users", {{"name", std::string("rid-") + (rid[0] == 'B' ? "up" : rid)}},
               TestBroker::kAdminToken, {{"X-Request-Id", rid}});
    CHECK(r.status == 201);
    CHECK(r.header("x-request-id") != rid);
    CHECK(!r.header("x-request-id").empty());
  }
  auto ok = b.call("GET", "/healthz", nullptr, "", {{"X-Request-Id", "my-trace-42"}});
  CHECK(ok.header("x-request-id") == "my-trace-42");
}

TEST_CASE("10.14: 5xx answers carry a generic detail; the full one goes to the log") {
  TestBroker b;
  b.daemon().api().router().add(
      "GET", "/v1/test-boom", atrium::api::Access::Public(), [](atrium::api::HttpRequest&) {
        return atrium::api::problem(atrium::Code::unavailable,
                                    "cannot open /var/lib/atrium/secret.db: libvirt said xyz",
                                    "storage_failed");
      });
  auto r = b.call("GET", "/v1/test-boom", nullptr, "");
  CHECK(r.status == 503);
  CHECK(reason(r) == "storage_failed");
  CHECK(r.body.find("/var/lib") == std::string::npos);
  CHECK(r.body.find("libvirt") == std::string::npos);
  CHECK(r.json()["detail"].get<std::string>().find(r.header("x-request-id")) != std::string::npos);
}

TEST_CASE(
    "10.14: the bootstrap token is at least 32 characters, expires, and a replaced one dies") {
  CHECK_THROWS(TestBroker(
      [](atrium::api::DaemonConfig& cfg) { cfg.bootstrap_token = "atr_only_twenty_char"; }));
  atrium::testing::TempDir dir;
  std::string first = TestBroker::kAdminToken;
  std::string second = "atr_second_bootstrap_token_abcdefghijklmnop";
  {
    TestBroker b(dir.str());
    CHECK(b.call("GET", "/v1/users").status == 200);
    // token hashes never leave the broker, like password hashes
    auto ev = b.call("GET", "/v1/events?limit=1000");
    CHECK(ev.body.find(atrium::api::sha256_hex(first)) == std::string::npos);
    auto hist = b.call("GET", "/v1/events?type=TokenIssued");
    REQUIRE(!hist.json()["items"].empty());
    CHECK(hist.json()["items"][0]["data"]["token_hash"] == "[redacted]");
    auto sse = b.call("GET", "/v1/events/stream?after=0");
    CHECK(sse.body.find(atrium::api::sha256_hex(first)) == std::string::npos);
    // bounded lifetime: 24 h by default
    b.advance_clock_ms(int64_t{25} * 3600 * 1000);
    CHECK(b.call("GET", "/v1/users").status == 401);
  }
  // A restart with another bootstrap token revokes the first one.
  TestBroker b2([&](atrium::api::DaemonConfig& cfg) {
    cfg.data_dir = dir.str();
    cfg.bootstrap_token = second;
  });
  CHECK(b2.call("GET", "/v1/users", nullptr, second).status == 200);
  CHECK(b2.call("GET", "/v1/users", nullptr, first).status == 401);
}

TEST_CASE("10.14: --token-ttl-s and --bootstrap-token-ttl-s are bounded at start") {
  atrium::testing::TempDir dir;
  // `timeout`: a daemon that accepts the value would serve on and never exit.
  std::string base = "timeout 20 " + std::string(ATRIUMD_PATH) + " --data-dir=" + dir.str() +
                     " --listen=127.0.0.1:0 ";
  CHECK(atrium::testing::run_command(base + "--token-ttl-s=9223372036854776 2>/dev/null") == 2);
  CHECK(atrium::testing::run_command(base + "--token-ttl-s=31536001 2>/dev/null") == 2);
  CHECK(atrium::testing::run_command(base + "--bootstrap-token-ttl-s=0 2>/dev/null") == 2);
  CHECK(atrium::testing::run_command("ATRIUM_BOOTSTRAP_TOKEN=short-token-1234567-abcdefghi " +
                                     base + "2>/dev/null") == 2);
}

TEST_CASE("10.14: the login answer is not cached; the bearer scheme is case-insensitive") {
  TestBroker b;
  auto [cid, ctok] = b.user("carol");
  auto ok = login(b, "carol", "password-carol");
  REQUIRE(ok.status == 200);
  CHECK(ok.header("cache-control") == "no-store");
  for (const char* scheme : {"bearer ", "BEARER ", "Bearer  "}) {
    CAPTURE(scheme);
    auto r = http(b.port(), "GET", "/v1/users/" + cid, "",
                  {{"Authorization", std::string(scheme) + ctok}});
    CHECK(r.status == 200);
  }
  CHECK(http(b.port(), "GET", "/v1/users/" + cid, "", {{"Authorization", "Bearerx " + ctok}})
            .status == 401);
}

TEST_CASE("10.14: the hypervisor's text about a display ticket stays with admins") {
  TestBroker b([](atrium::api::DaemonConfig& cfg) {
    cfg.hosts.resync_interval = 300ms;
    cfg.hosts.poll_interval = 20ms;
    cfg.hosts.backoff_initial = 100ms;
    cfg.pools.interval = 50ms;
    cfg.pools.launch_wait = 10s;
  });
  auto h = b.call(
      "POST", "/v1/hosts",
      {{"name", "fixture"},
       {"uri", std::string("test://") + ATRIUM_SOURCE_DIR + "/tests/adapters/fixtures/host.xml"}});
  REQUIRE(h.status == 202);
  std::string host = h.json()["host_id"];
  poll(b, "/v1/hosts/" + host, [](const json& j) { return j["state"] == "up"; });
  const char* tmpl =
      "<domain type='test'><name>tmpl</name><uuid>11111111-1111-4111-8111-111111111111</uuid>"
      "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
      "</domain>";
  auto p = b.call("POST", "/v1/pools",
                  {{"name", "desks"},
                   {"kind", "floating"},
                   {"template", {{"domain_xml", tmpl}}},
                   {"host_ids", {host}},
                   {"max_size", 1},
                   {"min_ready", 1}});
  REQUIRE_MESSAGE(p.status == 201, p.body);
  std::string pool = p.json()["id"];
  poll(b, "/v1/pools/" + pool, [](const json& j) { return j["size"]["ready"] == 1; });
  auto [uid, tok] = b.user("amy");
  REQUIRE(b.call("POST", "/v1/pools/" + pool + "/entitlements", {{"user_id", uid}}).status == 201);
  // The spare already runs: the ticket goes through libvirt's set-password path, which the
  // test driver refuses with its own message.
  auto l = b.call("POST", "/v1/launches", {{"pool_id", pool}}, tok);
  REQUIRE_MESSAGE(l.status == 201, l.body);
  REQUIRE(l.json()["ticket_applied"] == false);
  CHECK(l.json()["ticket_note"] == "the display password could not be set on this host");
  auto ev = b.call("GET", "/v1/events?type=DesktopSessionTicketIssued").json();
  REQUIRE(!ev["items"].empty());
  CHECK(ev["items"][0]["data"].dump().find("the hypervisor did not accept the ticket") !=
        std::string::npos);
}

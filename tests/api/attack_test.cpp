// Every bad-input and attack case found against the broker, over real HTTP on a loopback port,
// one section per finding (issue 10 and later). Each case failed on the code before its fix;
// keep them all, and add a section for every new finding (TEST_CASE names start with it).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "api/crypto.h"
#include "api/daemon.h"
#include "support/agents.h"
#include "support/child_daemon.h"
#include "support/slapd.h"
#include "support/stderr_capture.h"
#include "support/test_support.h"

using atrium::testing::http;
using atrium::testing::http_raw;
using atrium::testing::HttpReply;
using atrium::testing::poll;
using atrium::testing::TestBroker;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

std::string reason(const HttpReply& r) {
  json j = r.json();
  return j.is_object() ? j.value("reason", "") : "";
}

// The value of one Prometheus series (0 when absent), e.g. `name{label="x"}`.
double metric(TestBroker& b, const std::string& series) {
  std::string body = b.call("GET", "/metrics", nullptr, "").body;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return 0;
}

size_t count_events(TestBroker& b, const std::string& type) {
  return b.call("GET", "/v1/events?limit=1000&type=" + type).json()["items"].size();
}

HttpReply login(TestBroker& b, const std::string& name, const std::string& password) {
  return b.call("POST", "/v1/auth/login", {{"name", name}, {"password", password}}, "");
}

std::string make_server(TestBroker& b, const std::string& name) {
  auto r = b.call("POST", "/v1/servers",
                  {{"name", name},
                   {"address", "10.9.0." + std::to_string(name.size())},
                   {"os_type", "windows"},
                   {"os_version", "2019"},
                   {"cpus", 8},
                   {"memory_mb", 16384}});
  REQUIRE_MESSAGE(r.status == 201, r.body);
  return r.json()["id"];
}

}  // namespace

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

// ==== 10.1-10.3: connections, bodies and framing (the HTTP transport) ========================
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "api/daemon.h"
#include "support/test_support.h"

using atrium::testing::http;
using atrium::testing::RawConnection;
using atrium::testing::TempDir;
using atrium::testing::TestBroker;

// ============================================================================================
// issue 10.1-10.3: connections that stay open after `Connection: Close`, descriptor
// exhaustion, bodies that cost CPU quadratic in their size, bad Content-Length.
// ============================================================================================

namespace {

constexpr const char* kToken = "atr_attack_test_token_0123456789abcdef";

using atrium::testing::child::free_port;

// The real atriumd as a child, with RLIMIT_NOFILE set to `nofile` (soft and hard, as `ulimit
// -n` does), killed when the object goes.
class Daemon {
 public:
  Daemon(const std::string& dir, rlim_t nofile, const std::vector<std::string>& extra = {}) {
    port_ = free_port();
    std::vector<std::string> args = {"atriumd",
                                     "serve",
                                     "--listen=127.0.0.1:" + std::to_string(port_),
                                     "--data-dir=" + dir,
                                     "--access-log=off",
                                     "--default-host=none"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = ::fork();
    if (pid_ == 0) {
      rlimit rl{nofile, nofile};
      ::setrlimit(RLIMIT_NOFILE, &rl);
      ::setenv("ATRIUM_BOOTSTRAP_TOKEN", kToken, 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(ATRIUMD_PATH, argv.data());
      ::_exit(127);
    }
    for (int i = 0; i < 300; ++i) {
      if (http(port_, "GET", "/readyz").status == 200) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL("atriumd did not become ready");
  }
  ~Daemon() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  uint16_t port() const { return port_; }
  size_t open_descriptors() const {
    size_t n = 0;
    for (auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/fd")) {
      (void)e;
      ++n;
    }
    return n;
  }

 private:
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

std::string get_healthz(const std::string& extra = "") {
  return "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + "\r\n";
}

// Raises this process's descriptor limit for the client side; the number of sockets a test
// may open.
size_t client_sockets(size_t wanted) {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
  size_t room = rl.rlim_cur > 200 ? static_cast<size_t>(rl.rlim_cur) - 200 : 0;
  return std::min(wanted, room);
}

// Opens n connections that each ask /healthz, read the answer and stay open, like the
// attack of issue 10.1. Returns how many were answered 200.
size_t hold_idle_sockets(uint16_t port, size_t n,
                         std::vector<std::unique_ptr<RawConnection>>& out) {
  size_t answered = 0;
  for (size_t i = 0; i < n; ++i) {
    auto c = std::make_unique<RawConnection>(port);
    if (!c->ok() || !c->send(get_healthz())) continue;
    answered += c->read_reply(2000).status == 200;
    out.push_back(std::move(c));
  }
  return answered;
}

// /healthz and a real login, each on a fresh connection with a 2 s limit.
void check_still_served(uint16_t port) {
  auto t0 = std::chrono::steady_clock::now();
  auto h = http(port, "GET", "/healthz", "", {}, 2000);
  CHECK(h.status == 200);
  std::string auth = std::string("Bearer ") + kToken;
  auto u = http(port, "POST", "/v1/users", R"({"name":"victim","password":"password-victim-1"})",
                {{"Authorization", auth}}, 2000);
  CHECK((u.status == 201 || u.status == 409));
  auto login = http(port, "POST", "/v1/auth/login",
                    R"({"name":"victim","password":"password-victim-1"})", {}, 2000);
  CHECK(login.status == 200);
  double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("healthz, user creation and login under the attack: " << ms << " ms");
}

}  // namespace

TEST_CASE("10.1: thousands of idle sockets from one address leave /healthz and login served") {
  size_t n = client_sockets(3000);
  if (n < 1500) {
    MESSAGE("SKIPPED: this process may open only " << n << " sockets");
    return;
  }
  TempDir dir;
  Daemon d(dir.str(), 1024);  // the per-address cap (512) binds first
  std::vector<std::unique_ptr<RawConnection>> held;
  size_t answered = hold_idle_sockets(d.port(), n, held);
  CHECK(answered == n);  // each new one evicted the longest idle one
  check_still_served(d.port());
  CHECK(d.open_descriptors() < 1024);
}

TEST_CASE("10.1: thousands of idle sockets against the global cap (ulimit -n 1024)") {
  size_t n = client_sockets(3000);
  if (n < 1500) {
    MESSAGE("SKIPPED: this process may open only " << n << " sockets");
    return;
  }
  TempDir dir;
  Daemon d(dir.str(), 1024, {"--max-connections-per-ip=100000"});
  std::vector<std::unique_ptr<RawConnection>> held;
  size_t answered = hold_idle_sockets(d.port(), n, held);
  CHECK(answered == n);
  check_still_served(d.port());
  size_t fds = d.open_descriptors();
  MESSAGE("atriumd holds " << fds << " descriptors of 1024 with " << n << " client sockets");
  CHECK(fds < 1024);
}

TEST_CASE("10.1: at the cap with no idle connection, a new one gets 503 problem+json and EOF") {
  TestBroker b([](atrium::api::DaemonConfig& c) { c.api.max_connections = 16; });
  REQUIRE(b.daemon().http_server().max_connections() == 16);
  std::vector<std::unique_ptr<RawConnection>> busy;
  for (int i = 0; i < 16; ++i) {
    busy.push_back(std::make_unique<RawConnection>(b.port()));
    REQUIRE(busy.back()->send("GET /healthz HTTP/1.1\r\n"));  // a request under way
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  RawConnection refused(b.port());
  REQUIRE(refused.send(get_healthz()));
  auto r = refused.read_reply(2000);
  CHECK(r.status == 503);
  CHECK(r.header("content-type") == "application/problem+json");
  CHECK(r.json()["reason"] == "too_many_connections");
  CHECK(refused.closed_within(1000));
  // One of them finishes its request and idles: the next newcomer evicts it and is served.
  REQUIRE(busy[3]->send("Host: x\r\n\r\n"));
  REQUIRE(busy[3]->read_reply().status == 200);
  RawConnection next(b.port());
  REQUIRE(next.send(get_healthz()));
  CHECK(next.read_reply(2000).status == 200);
  CHECK(busy[3]->closed_within(1000));
}

TEST_CASE("10.1: the per-address cap evicts that address's longest idle connection") {
  TestBroker b([](atrium::api::DaemonConfig& c) { c.api.max_connections_per_ip = 4; });
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 4; ++i) {
    idle.push_back(std::make_unique<RawConnection>(b.port()));
    REQUIRE(idle.back()->send(get_healthz()));
    REQUIRE(idle.back()->read_reply().status == 200);
  }
  RawConnection fifth(b.port());
  REQUIRE(fifth.send(get_healthz()));
  CHECK(fifth.read_reply(2000).status == 200);
  CHECK(idle[0]->closed_within(1000));    // the oldest
  REQUIRE(idle[3]->send(get_healthz()));  // the others stay
  CHECK(idle[3]->read_reply().status == 200);
}

TEST_CASE("10.1: a socket answered with Connection: close does not hold a descriptor") {
  TempDir dir;
  Daemon d(dir.str(), 1024);
  size_t before = d.open_descriptors();
  std::vector<std::unique_ptr<RawConnection>> held;
  for (int i = 0; i < 200; ++i) {
    held.push_back(std::make_unique<RawConnection>(d.port()));
    REQUIRE(held.back()->send(get_healthz("Connection: close\r\n")));
    REQUIRE(held.back()->read_reply().status == 200);
  }
  // The clients keep their sockets open; the daemon closes its side after the linger (2 s).
  size_t fds = 0;
  for (int i = 0; i < 60; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    fds = d.open_descriptors();
    if (fds < before + 20) break;
  }
  CHECK(fds < before + 20);
  CHECK(held[0]->closed_within(100));
}

TEST_CASE("10.2: a Content-Length above the limit is refused with 413 before the body is read") {
  TestBroker b;
  RawConnection c(b.port());
  // Only the head is sent: the answer comes without waiting for 20 MiB.
  REQUIRE(
      c.send("POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: 20971520\r\n\r\n"));
  auto r = c.read_reply(2000);
  CHECK(r.status == 413);
  CHECK(r.header("content-type") == "application/problem+json");
  CHECK(r.json()["reason"] == "body_too_large");
  CHECK(r.header("connection") == "close");
  CHECK(c.closed_within(3000));
}

TEST_CASE("10.2: 16 uploads of 20 MiB at once are refused and /healthz stays served") {
  TestBroker b;
  std::string chunk(1 << 16, 'a');
  auto upload = [&] {
    RawConnection c(b.port());
    if (!c.send("POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 20971520\r\n\r\n")) {
      return 0;
    }
    // Like curl: keep sending until the answer is there (the broker reads no body).
    for (int i = 0; i < 320; ++i) {
      pollfd p{c.fd(), POLLIN, 0};
      if (::poll(&p, 1, 0) > 0 || !c.send(chunk)) break;
    }
    return c.read_reply(5000).status;
  };
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 16; ++i) fs.push_back(std::async(std::launch::async, upload));
  auto h = http(b.port(), "GET", "/healthz", "", {}, 2000);
  CHECK(h.status == 200);
  std::vector<int> statuses;
  for (auto& f : fs) statuses.push_back(f.get());
  CHECK_MESSAGE(std::count(statuses.begin(), statuses.end(), 413) == 16,
                doctest::toString(statuses));
  MESSAGE(
      "16 x 20 MiB refused in "
      << std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()
      << " ms");
}

TEST_CASE("10.2: curl streaming 20 MiB without Expect reads the whole 413 answer, every time") {
  if (atrium::testing::run_command("command -v curl > /dev/null") != 0) {
    MESSAGE("SKIPPED: curl not installed");
    return;
  }
  TestBroker b;
  TempDir d;
  std::string file = d.str() + "/big";
  {
    std::ofstream out(file);
    std::string mib(1 << 20, 'a');
    for (int i = 0; i < 20; ++i) out << mib;
  }
  // A client that keeps writing while the answer is already there: the answer must not be
  // held back behind the bytes it sends, nor lost to the close.
  std::string cmd = "for i in 1 2 3 4 5; do timeout 10 curl -s -o " + d.str() +
                    "/body -w '%{http_code} %{content_type}\\n' -X POST -H 'Expect:' "
                    "--data-binary @" +
                    file + " http://127.0.0.1:" + std::to_string(b.port()) +
                    "/v1/auth/login; done > " + d.str() + "/codes";
  atrium::testing::run_command(cmd);
  std::ifstream in(d.str() + "/codes");
  std::string codes((std::istreambuf_iterator<char>(in)), {});
  std::string want;
  for (int i = 0; i < 5; ++i) want += "413 application/problem+json\n";
  CHECK(codes == want);
}

TEST_CASE("10.2: a chunked body is cut at the limit with 413 problem+json and a close") {
  TestBroker b([](atrium::api::DaemonConfig& c) { c.api.max_body_bytes = 4096; });
  RawConnection c(b.port());
  std::string head =
      "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";
  std::string wire = head;
  for (int i = 0; i < 5; ++i) wire += "400\r\n" + std::string(1024, 'a') + "\r\n";  // 5 KiB
  REQUIRE(c.send(wire));
  auto r = c.read_reply(2000);
  CHECK(r.status == 413);
  CHECK(r.header("content-type") == "application/problem+json");
  CHECK(r.json()["reason"] == "body_too_large");
  CHECK(c.closed_within(3000));
  // A single chunk announcing more than the limit is refused before its data.
  RawConnection big(b.port());
  REQUIRE(big.send(head + "fffffffffff\r\n"));
  CHECK(big.read_reply(2000).status == 413);
}

TEST_CASE("10.3: invalid Content-Length values are 400 problem+json and the connection closes") {
  TestBroker b;
  for (std::string cl : {"-5", "abc", "+5", "0x10", "5 5", "", "5, 6", "5\r\nContent-Length: 6",
                         "99999999999999999999"}) {
    RawConnection c(b.port());
    REQUIRE(
        c.send("POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               "Content-Length: " +
               cl + "\r\n\r\n{}"));
    auto r = c.read_reply(2000);
    CHECK_MESSAGE(r.status == 400, "Content-Length: " << cl);
    CHECK_MESSAGE(r.header("content-type") == "application/problem+json", cl);
    CHECK_MESSAGE(r.json()["reason"] == "invalid_content_length", cl);
    CHECK_MESSAGE(c.closed_within(2000), cl);
  }
  // A well-formed length beyond the limit is "too large" (RFC 9110 15.5.14), not malformed.
  RawConnection c(b.port());
  REQUIRE(c.send("POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"));
  auto r = c.read_reply(2000);
  CHECK(r.status == 413);
  CHECK(r.header("content-type") == "application/problem+json");
  CHECK(c.closed_within(2000));
  CHECK(http(b.port(), "GET", "/healthz").status == 200);
}

TEST_CASE("10.3: framing that could smuggle a request is refused") {
  TestBroker b;
  struct Row {
    std::string headers;
    int status;
    std::string reason;
  };
  for (const Row& row : std::vector<Row>{
           {"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", 400, "conflicting_framing"},
           {"Transfer-Encoding: gzip, chunked\r\n", 501, "unsupported_transfer_encoding"},
           {"Content-Length : 2\r\n", 400, "invalid_header"},
           {"X-Folded: a\r\n b\r\n", 400, "invalid_header"},
           {std::string("X-Nul: a\0b\r\n", 12), 400, "invalid_header"},
       }) {
    RawConnection c(b.port());
    REQUIRE(c.send("POST /v1/auth/login HTTP/1.1\r\nHost: x\r\n" + row.headers + "\r\n{}"));
    auto r = c.read_reply(2000);
    CHECK_MESSAGE(r.status == row.status, row.headers);
    CHECK_MESSAGE(r.json()["reason"] == row.reason, row.headers);
    CHECK_MESSAGE(c.closed_within(2000), row.headers);
  }
  RawConnection huge(b.port());
  REQUIRE(huge.send("GET /healthz HTTP/1.1\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n"));
  auto r = huge.read_reply(2000);
  CHECK(r.status == 431);
  CHECK(r.json()["reason"] == "header_too_large");
  RawConnection v2(b.port());
  REQUIRE(v2.send("GET /healthz HTTP/2.0\r\n\r\n"));
  CHECK(v2.read_reply(2000).status == 505);
  RawConnection brew(b.port());
  REQUIRE(brew.send("BREW /healthz HTTP/1.1\r\n\r\n"));
  CHECK(brew.read_reply(2000).status == 501);
}

// ============================================================================================
#include <filesystem>

using atrium::testing::poll;
using atrium::testing::TempDir;
using atrium::testing::TestBroker;
using nlohmann::json;
using namespace std::chrono_literals;

// ---- 10.4: host URIs reach the broker's operating system -------------------------------------

namespace {

void fast_hosts(atrium::api::DaemonConfig& cfg) {
  cfg.hosts.poll_interval = 20ms;
  cfg.hosts.backoff_initial = 100ms;
  cfg.hosts.backoff_max = 200ms;
  cfg.hosts.connect_timeout = 500ms;
  cfg.hosts.call_timeout = 5s;
}

}  // namespace

TEST_CASE("10.4: POST /v1/hosts refuses URIs that run commands, read files or probe ports") {
  TempDir dir;
  const std::string marker = dir.str() + "/ran";
  const std::string script = dir.str() + "/x.sh";
  std::ofstream(script) << "#!/bin/sh\ntouch " << marker << "\n";
  std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  TestBroker b([](atrium::api::DaemonConfig& cfg) {
    fast_hosts(cfg);
    cfg.host_uris.allow_test = false;  // the daemon's default
  });
  const uint64_t before = b.daemon().store().last_position();
  const std::vector<std::string> uris = {
      "qemu+ext:///system?command=" + script,
      "qemu:///system?command=" + script,
      "qemu+ssh://localhost/system?netcat=" + script,
      "qemu+ssh://localhost/system?keyfile=/etc/shadow",
      "qemu+tls://localhost/system?pkipath=/root",
      "qemu+ssh://localhost/system?known_hosts=/etc/shadow",
      "qemu:///system?socket=/run/x.sock",
      "qemu+ssh://-oProxyCommand=" + script + "/system",
      "test:///etc/shadow",
      "test:///etc/passwd",
      "test:///default",
      "qemu+tcp://127.0.0.1:22/system",
      "lxc:///",
      "qemu:///embed?root=/tmp",
  };
  for (const auto& uri : uris) {
    CAPTURE(uri);
    auto r = b.call("POST", "/v1/hosts", {{"name", "h"}, {"uri", uri}});
    CHECK(r.status == 400);
    CHECK(r.header("content-type") == "application/problem+json");
    CHECK(r.json()["reason"] == "uri_not_allowed");
    CHECK(r.json()["errors"][0]["field"] == "uri");
  }
  std::this_thread::sleep_for(300ms);  // a worker would have run the script by now
  CHECK(b.daemon().store().last_position() == before);
  CHECK_FALSE(std::filesystem::exists(marker));
  CHECK(b.call("GET", "/v1/hosts").json()["items"].empty());
  // Allowed URIs are still accepted (this one fails fast: nothing listens on port 1).
  auto ok =
      b.call("POST", "/v1/hosts", {{"name", "kvm"}, {"uri", "qemu+tls://127.0.0.1:1/system"}});
  CHECK(ok.status == 202);
}

TEST_CASE("10.4: test:/// hosts only with --allow-test-hosts, but the default host always") {
  TestBroker b([](atrium::api::DaemonConfig& cfg) {
    fast_hosts(cfg);
    cfg.host_uris.allow_test = false;
    cfg.default_host_uri = "test:///default";
  });
  auto hosts = poll(b, "/v1/hosts", [](const json& j) {
    return j["items"].size() == 1 && j["items"][0]["state"] == "up";
  });
  CHECK(hosts["items"][0]["uri"] == "test:///default");
  auto fixture = std::string("test://") + ATRIUM_SOURCE_DIR + "/tests/adapters/fixtures/host.xml";
  auto r = b.call("POST", "/v1/hosts", {{"name", "fixture"}, {"uri", fixture}});
  CHECK(r.status == 400);
  CHECK(r.json()["reason"] == "uri_not_allowed");
  CHECK(r.json()["detail"].get<std::string>().find("--allow-test-hosts") != std::string::npos);
}

TEST_CASE(
    "10.4: a test:///<file> host's errors keep the file's content out of events and answers") {
  TempDir dir;
  const std::string secret = "SECRETLINE-root:$y$j9T$hash:19000:0:99999:7:::";
  const std::vector<std::string> files = {
      secret + "\nsecond:line\n",                        // /etc/shadow-like
      "<a>&" + std::string("SECRETENTITY") + ";</a>\n",  // libxml2 quotes the entity
      "<node><domain type='test'><name>a</name><memory>1</memory><os><type>SECRETTYPE</type>"
      "</os></domain></node>\n",  // libvirt quotes the value
  };
  TestBroker b(fast_hosts);  // test hosts allowed (as in every TestBroker)
  std::vector<std::string> ids;
  for (size_t i = 0; i < files.size(); ++i) {
    std::string path = dir.str() + "/passwd" + std::to_string(i);
    std::ofstream(path) << files[i];
    auto r =
        b.call("POST", "/v1/hosts", {{"name", "h" + std::to_string(i)}, {"uri", "test://" + path}});
    REQUIRE(r.status == 202);
    ids.push_back(r.json()["host_id"]);
    std::string op = r.json()["id"];
    auto done =
        poll(b, "/v1/operations/" + op, [](const json& j) { return j["state"] == "failed"; });
    MESSAGE("operation error: " << done["error"]);
    CHECK(done["error"].get<std::string>().find("SECRET") == std::string::npos);
    CHECK_FALSE(done["error"].get<std::string>().empty());
  }
  for (const auto& id : ids) {
    auto h = b.call("GET", "/v1/hosts/" + id);
    REQUIRE(h.status == 200);
    CHECK(h.json()["state"] == "alert");
    CHECK(h.body.find("SECRET") == std::string::npos);
  }
  auto events = b.call("GET", "/v1/events?limit=1000");
  REQUIRE(events.status == 200);
  CHECK(events.body.find("HostConnectAttemptFailed") != std::string::npos);
  CHECK(events.body.find("SECRET") == std::string::npos);
}

// ==== 11: agent endpoints: rejections of callers that are no agent =========================

namespace {

// A rejected agent request: the status, the reason, and a Retry-After of whole seconds.
void agent_rejected(const HttpReply& r, int status, const std::string& reason) {
  CHECK_MESSAGE(r.status == status, r.body);
  CHECK(r.json()["reason"] == reason);
  CHECK_FALSE(r.header("retry-after").empty());
}

}  // namespace

TEST_CASE(
    "11: a flood of made-up credentials, agent ids and hostnames logs one line per reason and "
    "interval") {
  TestBroker b;
  std::string log;
  {
    atrium::testing::StderrCapture cap;
    for (int i = 0; i < 30; ++i) {
      std::string id = "made-up-" + std::to_string(i);
      agent_rejected(b.call("POST", "/v1/agents/" + id + "/heartbeat", atrium::testing::beat(),
                            "atr_bogus_credential_" + std::to_string(i) + "_0123456789abcdef"),
                     401, "agent_unknown");
      agent_rejected(b.call("POST", "/v1/agents/" + id + "/register", json::object(), ""), 401,
                     "credential_missing");
      agent_rejected(b.call("POST", "/v1/agents/enroll",
                            {{"token", "atr_no_such_token_" + std::to_string(i)},
                             {"hostname", "host-" + std::to_string(i)},
                             {"machine_id", id}},
                            ""),
                     401, "enrollment_token_invalid");
    }
    log = cap.text();
  }
  CHECK_MESSAGE(atrium::testing::occurrences(log, "refused (agent_unknown)") == 1, log);
  CHECK_MESSAGE(atrium::testing::occurrences(log, "refused (credential_missing)") == 1, log);
  CHECK_MESSAGE(atrium::testing::occurrences(log, "refused (enrollment_token_invalid)") == 1, log);
  CHECK(metric(b, "atrium_agent_rejections_total{reason=\"agent_unknown\"}") == 30);
  // The next interval logs again, with the number suppressed meanwhile.
  b.advance_clock_ms(31'000);
  {
    atrium::testing::StderrCapture cap;
    b.call("POST", "/v1/agents/x/heartbeat", atrium::testing::beat(),
           "atr_bogus_credential_again_0123456789");
    log = cap.text();
  }
  CHECK_MESSAGE(log.find("29 more since the last line") != std::string::npos, log);
}

// ==== 14: directory sign-in and the second factor ============================================
TEST_CASE("14.1: LDAP filter metacharacters in a login are escaped, not a wildcard or a clause") {
  atrium::testing::Slapd ldap;
  if (!ldap.ok()) {
    MESSAGE("skipped: " << ldap.why());
    return;
  }
  TestBroker b;
  json dir{{"name", "corp"},
           {"urls", {ldap.ldaps_url()}},
           {"bind_dn", atrium::testing::Slapd::kServiceDn},
           {"bind_password", atrium::testing::Slapd::kServicePassword},
           {"user_base", "ou=people,dc=atrium,dc=test"},
           {"group_base", "ou=groups,dc=atrium,dc=test"},
           {"ca_file", ldap.ca_file()},
           {"role_map", {{"*", {"user"}}}}};
  REQUIRE(b.call("POST", "/v1/directories", dir).status == 201);
  // Each would match alice (or everyone) if pasted into the filter unescaped.
  for (const char* name : {"*@corp", "a*@corp", "alice)(uid=*@corp", "*)(|(uid=*@corp",
                           "alice\\2a@corp"}) {
    auto r = b.call("POST", "/v1/auth/login", {{"name", name}, {"password", "alice-pw-123"}}, "");
    CHECK_MESSAGE(r.status == 401, name);
    CHECK(r.json()["reason"] == "bad_credentials");
  }
  CHECK(b.call("POST", "/v1/auth/login", {{"name", "alice@corp"}, {"password", "alice-pw-123"}}, "")
            .status == 200);
}

TEST_CASE("14.2: directory definitions: no plaintext unless said, no password echoed, bad bodies 400") {
  TestBroker b;
  json base{{"name", "corp"},
            {"urls", {"ldaps://127.0.0.1:1"}},
            {"bind_dn", "cn=svc"},
            {"bind_password", "s3cret-bind-pw"},
            {"user_base", "ou=people"},
            {"group_base", "ou=groups"}};
  auto with = [&](const char* k, json v) {
    json j = base;
    if (v.is_null()) {
      j.erase(k);
    } else {
      j[k] = v;
    }
    return b.call("POST", "/v1/directories", j);
  };
  CHECK(with("urls", {"ldap://127.0.0.1:1"}).json()["reason"] == "plaintext_not_allowed");
  CHECK(with("urls", {"http://127.0.0.1:1"}).status == 400);
  CHECK(with("urls", json::array()).status == 400);
  CHECK(with("kind", "nis").status == 400);
  CHECK(with("name", "Corp Name").status == 400);
  CHECK(with("role_map", {{"g", {"root"}}}).status == 400);
  CHECK(with("role_map", {{"g", "admin"}}).status == 400);
  CHECK(with("timeout_ms", "soon").status == 400);
  CHECK(with("bind_password_file", "/etc/passwd").status == 400);  // both given
  CHECK(with("color", "red").status == 400);
  auto ok = with("urls", {"ldap://127.0.0.1:1"});
  CHECK(ok.status == 400);
  auto created = with("starttls", true);
  REQUIRE(created.status == 201);
  CHECK(created.body.find("s3cret-bind-pw") == std::string::npos);
  CHECK(b.call("GET", "/v1/directories").body.find("s3cret") == std::string::npos);
  CHECK(b.call("GET", "/v1/events?limit=1000").body.find("s3cret-bind-pw") == std::string::npos);
  // A non-admin may not list or add directories.
  auto [uid, tok] = b.user("mallory");
  CHECK(b.call("GET", "/v1/directories", nullptr, tok).status == 403);
  CHECK(b.call("POST", "/v1/directories", base, tok).status == 403);
  // The directory is unreachable (port 1): 503 for its users, never 401; locals still sign in.
  auto down = b.call("POST", "/v1/auth/login", {{"name", "x@corp"}, {"password", "whatever1"}}, "");
  CHECK(down.status == 503);
  CHECK(down.json()["reason"] == "directory_unavailable");
  CHECK(b.call("POST", "/v1/auth/login", {{"name", "mallory"}, {"password", "password-mallory"}}, "")
            .status == 200);
}

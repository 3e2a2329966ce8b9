// What operators watch, over HTTP: /metrics after launches on a test:/// host pool and an
// application launch shows pool VMs by state, sessions by kind and state, launches by outcome
// and reason with their durations, and hosts by name; promtool accepts the exposition.
#include <doctest/doctest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include "api/daemon.h"
#include "support/pool_fixture.h"
#include "support/test_support.h"

using atrium::testing::poll;
using atrium::testing::run_command;
using atrium::testing::TempDir;
using atrium::testing::TestBroker;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

using atrium::testing::fast_workers;

// The exposition's samples: "name{labels}" -> value (comments skipped).
std::map<std::string, double> samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    size_t sp = line.rfind(' ');
    if (sp == std::string::npos) {
      FAIL_CHECK("not a sample: " << line);
      continue;
    }
    out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return out;
}

std::string scrape(TestBroker& b) {
  auto m = b.call("GET", "/metrics", nullptr, "");
  REQUIRE(m.status == 200);
  return m.body;
}

double value(const std::map<std::string, double>& s, const std::string& series) {
  auto it = s.find(series);
  if (it == s.end()) {
    FAIL_CHECK("no series " << series);
    return -1;
  }
  return it->second;
}

std::string pool_series(const std::string& pool, const std::string& name,
                        const std::string& state) {
  return "atrium_pool_vms{pool=\"" + pool + "\",pool_name=\"" + name + "\",state=\"" + state +
         "\"}";
}

std::string launches(const std::string& kind, const std::string& outcome,
                     const std::string& reason) {
  return "atrium_launches_total{kind=\"" + kind + "\",outcome=\"" + outcome + "\",reason=\"" +
         reason + "\"}";
}

}  // namespace

TEST_CASE(
    "9.9: /metrics shows pools, sessions, launches and named hosts, computed from the views") {
  TestBroker b(fast_workers);
  std::string host = atrium::testing::add_fixture_host(b);

  // Before any pool or session: the session series exist, at 0.
  auto s0 = samples(scrape(b));
  CHECK(value(s0, "atrium_sessions{kind=\"desktop\",state=\"connected\"}") == 0);
  CHECK(value(s0, "atrium_sessions{kind=\"application\",state=\"active\"}") == 0);

  std::string pool = atrium::testing::make_test_pool(b, host, {{"min_ready", 2}, {"max_size", 3}});
  poll(b, "/v1/pools/" + pool, [](const json& j) { return j["size"]["ready"] == 2; });
  auto [ann, ann_tok] = b.user("ann");
  auto [bob, bob_tok] = b.user("bob");
  REQUIRE(b.call("POST", "/v1/pools/" + pool + "/entitlements", {{"user_id", ann}}).status == 201);

  // Desktop launches: created, reconnected, refused (not entitled, bad body).
  auto l1 = b.call("POST", "/v1/launches", {{"pool_id", pool}}, ann_tok);
  REQUIRE_MESSAGE(l1.status == 201, l1.body);
  CHECK(b.call("POST", "/v1/launches", {{"pool_id", pool}}, ann_tok).status == 200);
  CHECK(b.call("POST", "/v1/launches", {{"pool_id", pool}}, bob_tok).status == 403);
  CHECK(b.call("POST", "/v1/launches", {{"pool_id", pool}, {"x", 1}}, ann_tok).status == 400);

  // An application launch, and one refused.
  auto srv = b.call("POST", "/v1/servers",
                    {{"name", "s1"}, {"address", "10.0.9.1"}, {"os_type", "windows"}});
  REQUIRE(srv.status == 201);
  std::string s1 = srv.json()["id"];
  auto app = b.call("POST", "/v1/servers/" + s1 + "/applications",
                    {{"name", "A"}, {"executable_path", "C:\\A.exe"}});
  REQUIRE(app.status == 201);
  std::string A = app.json()["id"];
  REQUIRE(b.call("POST", "/v1/publications",
                 {{"application_id", A}, {"scope", "server"}, {"target_id", s1}})
              .status == 201);
  CHECK(b.call("POST", "/v1/launches", {{"application_id", A}}, ann_tok).status ==
        409);  // not authorized
  REQUIRE(b.call("POST", "/v1/authorizations",
                 {{"user_id", ann}, {"application_id", A}, {"scope", "server"}, {"target_id", s1}})
              .status == 201);
  REQUIRE(b.call("POST", "/v1/servers/" + s1 + "/report",
                 {{"cpu_load", 0.1}, {"memory_load", 0.1}, {"sessions", 0}})
              .status == 200);
  auto la = b.call("POST", "/v1/launches", {{"application_id", A}}, ann_tok);
  REQUIRE_MESSAGE(la.status == 201, la.body);

  // The pool's gauges are its size, field by field. The pool worker may still be growing the
  // pool: compare a scrape taken between two equal reads of the size.
  json size;
  std::string text;
  for (int attempt = 0; attempt < 50; ++attempt) {
    size = b.call("GET", "/v1/pools/" + pool).json()["size"];
    text = scrape(b);
    if (b.call("GET", "/v1/pools/" + pool).json()["size"] == size) break;
  }
  auto s = samples(text);
  for (const auto& [state, n] : size.items()) {
    CHECK_MESSAGE(value(s, pool_series(pool, "desks", state)) == n.get<double>(), state);
  }
  CHECK(value(s, pool_series(pool, "desks", "in_use")) == 1);
  CHECK(value(s, pool_series(pool, "desks", "total")) >= 2);
  // Sessions by kind and state: ann's desktop session in the state GET shows, her app session.
  std::string desktop_state =
      b.call("GET", "/v1/sessions/" + l1.json()["session_id"].get<std::string>(), nullptr, ann_tok)
          .json()["state"];
  CHECK(value(s, "atrium_sessions{kind=\"desktop\",state=\"" + desktop_state + "\"}") == 1);
  CHECK(value(s, "atrium_sessions{kind=\"application\",state=\"active\"}") == 1);
  CHECK(value(s, "atrium_sessions{kind=\"desktop\",state=\"ended\"}") == 0);
  // Launches by kind, outcome and reason; a duration for each.
  CHECK(value(s, launches("desktop", "created", "none")) == 1);
  CHECK(value(s, launches("desktop", "reconnected", "none")) == 1);
  CHECK(value(s, launches("desktop", "refused", "not_entitled")) == 1);
  CHECK(value(s, launches("desktop", "refused", "invalid_body")) == 1);
  CHECK(value(s, launches("application", "created", "none")) == 1);
  CHECK(value(s, launches("application", "refused", "not_authorized")) == 1);
  CHECK(value(s, "atrium_launch_duration_seconds_count{kind=\"desktop\",outcome=\"created\"}") ==
        1);
  CHECK(
      value(s, "atrium_launch_duration_seconds_count{kind=\"application\",outcome=\"created\"}") ==
      1);
  CHECK(value(s,
              "atrium_launch_duration_seconds_bucket{kind=\"desktop\",outcome=\"created\",le=\"+"
              "Inf\"}") == 1);
  // Hosts by id and name.
  json h = b.call("GET", "/v1/hosts/" + host).json();
  CHECK(value(s, "atrium_display_ports_free{host=\"" + host + "\",host_name=\"fixture\"}") ==
        h["display_ports_free"].get<double>());
  // No user id in any label.
  CHECK(text.find(ann) == std::string::npos);
  CHECK(text.find(bob) == std::string::npos);

  // promtool accepts the whole exposition.
  if (run_command("command -v promtool > /dev/null") == 0) {
    TempDir d;
    std::ofstream(d.str() + "/m.txt") << text;
    CHECK(run_command("promtool check metrics < " + d.str() + "/m.txt > " + d.str() +
                      "/lint.txt 2>&1") == 0);
    std::ifstream lint(d.str() + "/lint.txt");
    std::string problems((std::istreambuf_iterator<char>(lint)), {});
    CHECK_MESSAGE(problems.empty(), problems);
  } else {
    MESSAGE("promtool not installed: lint skipped");
  }

  // Logoff of both: ended sessions are counted as ended, no longer in use.
  CHECK(b.call("DELETE", "/v1/sessions/" + l1.json()["session_id"].get<std::string>(), nullptr,
               ann_tok)
            .status == 204);
  CHECK(b.call("DELETE", "/v1/sessions/" + la.json()["session_id"].get<std::string>(), nullptr,
               ann_tok)
            .status == 204);
  s = samples(scrape(b));
  CHECK(value(s, "atrium_sessions{kind=\"desktop\",state=\"ended\"}") == 1);
  CHECK(value(s, "atrium_sessions{kind=\"application\",state=\"ended\"}") == 1);
  CHECK(value(s, "atrium_sessions{kind=\"application\",state=\"active\"}") == 0);
  CHECK(value(s, pool_series(pool, "desks", "in_use")) == 0);

  // A renamed pool changes its label (the old series goes); a deleted one leaves none.
  REQUIRE(b.call("PATCH", "/v1/pools/" + pool, {{"name", "office"}}).status == 200);
  text = scrape(b);
  CHECK(text.find("pool_name=\"desks\"") == std::string::npos);
  CHECK(samples(text).count(pool_series(pool, "office", "total")) == 1);
  REQUIRE(b.call("DELETE", "/v1/pools/" + pool).status == 202);
  for (int i = 0; i < 500 && b.call("GET", "/v1/pools/" + pool).status == 200; ++i) {
    std::this_thread::sleep_for(20ms);
  }
  REQUIRE(b.call("GET", "/v1/pools/" + pool).status == 404);
  CHECK(scrape(b).find("atrium_pool_vms{") == std::string::npos);
}

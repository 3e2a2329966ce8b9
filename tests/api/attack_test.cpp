// Attacks and bad input over HTTP, one section per finding (issue and point in each name).
#include <doctest/doctest.h>

#include <string>

#include "support/test_support.h"

using atrium::testing::TestBroker;
using nlohmann::json;

// ---- 9.8: unknown query parameters ----------------------------------------------------
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

// The login throttle alone (api/login_throttle.h): windows, limits, records, memory bound.
#include "api/login_throttle.h"

#include <doctest/doctest.h>

using atrium::api::LoginThrottle;
using atrium::api::LoginThrottleConfig;

TEST_CASE("a name is blocked from its limit until its window ends; a success clears it") {
  LoginThrottleConfig cfg;
  cfg.window_ms = 1000;
  cfg.failures_per_user = 3;
  cfg.failures_per_address = 100;
  LoginThrottle t(cfg);
  CHECK(t.failed("carol", "10.0.0.1", 0).empty());
  CHECK(t.failed("carol", "10.0.0.1", 100).empty());
  CHECK(t.blocked_for("carol", "10.0.0.1", 200) == 0);
  auto engaged = t.failed("carol", "10.0.0.2", 300);  // the third failure engages it
  REQUIRE(engaged.size() == 1);
  CHECK(engaged[0].scope == "user");
  CHECK(engaged[0].key == "carol");
  CHECK(engaged[0].until_ms == 1000);
  CHECK(t.blocked_for("carol", "10.0.0.9", 400) == 600);  // from any address
  CHECK(t.blocked_for("dave", "10.0.0.1", 400) == 0);
  CHECK(t.failed("carol", "10.0.0.1", 500).empty());     // recorded once per window
  CHECK(t.blocked_for("carol", "10.0.0.1", 1000) == 0);  // the window is over
  t.failed("erin", "", 0);
  t.succeeded("erin");
  t.failed("erin", "", 0);
  t.failed("erin", "", 0);
  CHECK(t.blocked_for("erin", "", 0) == 0);  // 2 since the success
}

TEST_CASE("an address is blocked across names; records are capped per window; memory is bounded") {
  LoginThrottleConfig cfg;
  cfg.window_ms = 1000;
  cfg.failures_per_user = 1;
  cfg.failures_per_address = 5;
  cfg.max_records_per_window = 3;
  cfg.max_keys = 100;
  LoginThrottle t(cfg);
  size_t records = 0;
  for (int i = 0; i < 500; ++i) records += t.failed("n" + std::to_string(i), "10.0.0.1", 10).size();
  CHECK(records == 3);
  CHECK(t.blocked_for("fresh", "10.0.0.1", 20) == 990);
  CHECK(t.blocked_for("fresh", "10.0.0.2", 20) == 0);
  CHECK(t.blocked_for("n499", "10.0.0.2", 20) == 990);  // the newest names are kept
}

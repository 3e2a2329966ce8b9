// Attack cases on the agent endpoints (finding 11): floods of made-up credentials, agent ids and
// enrollment tokens are refused with a reason and Retry-After, and logged once per reason and
// interval. Each case failed on the code before its fix; keep them.
#include <doctest/doctest.h>

#include <string>

#include "api/daemon.h"
#include "support/agents.h"
#include "support/attack_support.h"
#include "support/stderr_capture.h"
#include "support/test_support.h"

using atrium::testing::HttpReply;
using atrium::testing::TestBroker;
using atrium::testing::attack::metric;
using nlohmann::json;

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

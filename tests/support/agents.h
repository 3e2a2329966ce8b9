// Enrolling agents over HTTP in tests: an admin's enrollment token, then the agent's enroll
// and register calls (what atrium-agent does on its first start).
#pragma once

#include <doctest/doctest.h>

#include <string>

#include "support/test_support.h"

namespace atrium::testing {

struct EnrolledAgent {
  std::string id;
  std::string credential;
  nlohmann::json enrolled;  // the enroll answer (without the credential's use)
};

// Creates a token with `token_body` ({server_id} / {vm_id} / {pool_id} / {kind}) and enrolls
// with it as `machine_id`; REQUIREs success.
inline EnrolledAgent enroll_agent(TestBroker& b, const nlohmann::json& token_body,
                                  const std::string& machine_id,
                                  const std::string& hostname = "agent-host") {
  auto t = b.call("POST", "/v1/agents/enrollment-tokens", token_body);
  REQUIRE_MESSAGE(t.status == 201, t.body);
  auto e = b.call("POST", "/v1/agents/enroll",
                  {{"token", t.json()["token"]},
                   {"hostname", hostname},
                   {"os", "linux"},
                   {"agent_version", "test"},
                   {"machine_id", machine_id}},
                  "");
  REQUIRE_MESSAGE(e.status == 201, e.body);
  return {e.json()["id"], e.json()["credential"], e.json()};
}

// POST /v1/agents/{id}/<what> with the agent's credential.
inline HttpReply agent_call(TestBroker& b, const EnrolledAgent& a, const std::string& what,
                            const nlohmann::json& body = nlohmann::json::object()) {
  return b.call("POST", "/v1/agents/" + a.id + "/" + what, body, a.credential);
}

inline nlohmann::json beat(double cpu = 0.1, double mem = 0.2) {
  return {{"cpu_load", cpu}, {"memory_load", mem}, {"disk_free_bytes", 1000}};
}

}  // namespace atrium::testing

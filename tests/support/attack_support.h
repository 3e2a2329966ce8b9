// Helpers of the attack tests (tests/api/attack_*_test.cpp, one file per concern): the
// `reason` of a problem answer, a Prometheus series, events of one type, a login, a server,
// and a host configuration that polls and backs off fast.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstddef>
#include <sstream>
#include <string>

#include "api/daemon.h"
#include "support/test_support.h"

namespace atrium::testing::attack {

// The `reason` of a problem+json answer ("" when the body is no JSON object).
inline std::string reason(const HttpReply& r) {
  nlohmann::json j = r.json();
  return j.is_object() ? j.value("reason", "") : "";
}

// The value of one Prometheus series (0 when absent), e.g. `name{label="x"}`.
inline double metric(TestBroker& b, const std::string& series) {
  std::string body = b.call("GET", "/metrics", nullptr, "").body;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return 0;
}

inline size_t count_events(TestBroker& b, const std::string& type) {
  return b.call("GET", "/v1/events?limit=1000&type=" + type).json()["items"].size();
}

inline HttpReply login(TestBroker& b, const std::string& name, const std::string& password) {
  return b.call("POST", "/v1/auth/login", {{"name", name}, {"password", password}}, "");
}

inline std::string make_server(TestBroker& b, const std::string& name) {
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

// Hosts polled every 20 ms, retried after 100-200 ms: the host cases finish in seconds.
inline void fast_hosts(api::DaemonConfig& cfg) {
  using namespace std::chrono_literals;
  cfg.hosts.poll_interval = 20ms;
  cfg.hosts.backoff_initial = 100ms;
  cfg.hosts.backoff_max = 200ms;
  cfg.hosts.connect_timeout = 500ms;
  cfg.hosts.call_timeout = 5s;
}

}  // namespace atrium::testing::attack

// Fixtures of the HTTP tests that run pools on libvirt's test driver: the fixture host, a
// small template, fast reconciler and pool-worker settings, and helpers to add the host and
// create a pool through the API.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

#include "api/daemon.h"
#include "support/test_support.h"

namespace atrium::testing {

// A test:/// host with a few domains (tests/adapters/fixtures/host.xml).
inline const std::string kFixtureUri =
    std::string("test://") + ATRIUM_SOURCE_DIR + "/tests/adapters/fixtures/host.xml";

// A diskless 64 MiB test-driver domain with one network interface.
inline const char* kTestTemplate =
    "<domain type='test'><name>tmpl</name><uuid>11111111-1111-4111-8111-111111111111</uuid>"
    "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
    "<devices><interface type='network'><source network='default'/></interface></devices></domain>";

// Reconciler and pool worker passes in tens of milliseconds instead of seconds.
inline void fast_workers(api::DaemonConfig& cfg) {
  using namespace std::chrono_literals;
  cfg.hosts.resync_interval = 300ms;
  cfg.hosts.poll_interval = 20ms;
  cfg.hosts.backoff_initial = 100ms;
  cfg.hosts.call_timeout = 5s;
  cfg.pools.interval = 50ms;
  cfg.pools.launch_wait = 10s;
}

// Adds the fixture host through the API and waits until it is up; its id.
inline std::string add_fixture_host(TestBroker& b, const std::string& name = "fixture") {
  auto r = b.call("POST", "/v1/hosts", {{"name", name}, {"uri", kFixtureUri}});
  REQUIRE_MESSAGE(r.status == 202, r.body);
  std::string h = r.json()["host_id"];
  poll(b, "/v1/hosts/" + h, [](const nlohmann::json& j) { return j["state"] == "up"; });
  return h;
}

// Creates a pool of kTestTemplate on `host` (floating, "desks", max_size 4 unless `extra`
// says otherwise; every field of `extra` goes into the body); its id.
inline std::string make_test_pool(TestBroker& b, const std::string& host, const nlohmann::json& extra) {
  nlohmann::json body{{"name", "desks"}, {"kind", "floating"}, {"template", {{"domain_xml", kTestTemplate}}},
                      {"host_ids", {host}}, {"max_size", 4}};
  for (auto& [k, v] : extra.items()) body[k] = v;
  auto r = b.call("POST", "/v1/pools", body);
  REQUIRE_MESSAGE(r.status == 201, r.body);
  CHECK(r.header("location") == "/v1/pools/" + r.json()["id"].get<std::string>());
  return r.json()["id"];
}

}  // namespace atrium::testing

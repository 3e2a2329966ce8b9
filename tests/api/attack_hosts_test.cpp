// Attack cases on host URIs (finding 10.4): URIs that would run commands, read files or probe
// ports from the broker's operating system, test:/// hosts, and a test:///<file> host whose
// errors must not leak the file. Each case failed on the code before its fix; keep them.
#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "api/daemon.h"
#include "support/attack_support.h"
#include "support/test_support.h"

using atrium::testing::poll;
using atrium::testing::TempDir;
using atrium::testing::TestBroker;
using atrium::testing::attack::fast_hosts;
using nlohmann::json;
using namespace std::chrono_literals;

// ==== 10.4: host URIs reach the broker's operating system ====================================

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

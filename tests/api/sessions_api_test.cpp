// Desktop sessions over real HTTP on libvirt's test driver (issue 9): the display signal, the
// cleanup between two users, pending shutdowns, pools that go, templates libvirt refuses.
// The test driver emits no graphics events: the display events a QEMU host would deliver are
// fed through HostManager::inject_display_event (tests/adapters/pools_qemu_e2e_test.cpp shows
// the real ones with remote-viewer).
#include <doctest/doctest.h>

#include <chrono>
#include <thread>

#include "adapters/host_reconciler.h"
#include "api/daemon.h"
#include "support/pool_fixture.h"
#include "support/test_support.h"

using atrium::testing::poll;
using atrium::testing::TestBroker;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

void fast(atrium::api::DaemonConfig& cfg) {
  atrium::testing::fast_workers(cfg);
  cfg.pools.client_timeout = 90s;
}

std::string add_host(TestBroker& b) { return atrium::testing::add_fixture_host(b); }

// A small floating pool (max_size 2 unless `extra` says otherwise).
std::string make_pool(TestBroker& b, const std::string& host, json extra) {
  if (!extra.contains("max_size")) extra["max_size"] = 2;
  return atrium::testing::make_test_pool(b, host, extra);
}

// The graphics event QEMU sends for one SPICE channel of a client.
atrium::adapters::DisplayClientEvent display_event(const json& vm, const std::string& phase, int port) {
  atrium::adapters::DisplayClientEvent ev;
  ev.name = vm["name"];
  ev.uuid = vm["uuid"];
  ev.phase = phase;
  ev.family = "ipv4";
  ev.remote_address = "192.0.2.44";
  ev.remote_service = std::to_string(port);
  ev.auth_scheme = "spice";
  return ev;
}

}  // namespace

TEST_CASE("9.1: a viewer attached to the display keeps its session connected past the client timeout") {
  TestBroker b(fast);
  std::string h = add_host(b);
  std::string p = make_pool(b, h, {{"min_ready", 1}});
  auto [uid, tok] = b.user("vera");
  REQUIRE(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", uid}}).status == 201);
  poll(b, "/v1/pools/" + p, [](const json& j) { return j["size"]["ready"] == 1; });
  auto l = b.call("POST", "/v1/launches", {{"pool_id", p}}, tok);
  REQUIRE_MESSAGE(l.status == 201, l.body);
  std::string sid = l.json()["session_id"];
  json vm = b.call("GET", "/v1/vms/" + l.json()["vm_id"].get<std::string>()).json();
  auto* hosts = b.daemon().host_manager();
  // The main channel, then three more, as remote-viewer does; the client never reports.
  hosts->inject_display_event(h, display_event(vm, "connect", 40000));
  hosts->inject_display_event(h, display_event(vm, "initialize", 40000));
  for (int port : {40001, 40002, 40003}) hosts->inject_display_event(h, display_event(vm, "connect", port));
  for (int port : {40001, 40002, 40003}) hosts->inject_display_event(h, display_event(vm, "initialize", port));
  auto s = poll(b, "/v1/sessions/" + sid, [](const json& j) { return j["state"] == "connected"; });
  CHECK(s["display_signal"] == true);
  CHECK(s["client_address"] == "192.0.2.44");
  // 10 minutes of client silence: still connected (without the display signal the monitor
  // deactivates a silent session after 90 s).
  for (int i = 0; i < 10; ++i) {
    b.advance_clock_ms(60'000);
    std::this_thread::sleep_for(100ms);
  }
  CHECK(b.call("GET", "/v1/sessions/" + sid).json()["state"] == "connected");
  // One more channel event changes nothing in the log.
  auto before = b.call("GET", "/v1/events?limit=1000").json()["items"].size();
  hosts->inject_display_event(h, display_event(vm, "connect", 40004));
  hosts->inject_display_event(h, display_event(vm, "initialize", 40004));
  std::this_thread::sleep_for(300ms);
  auto events = b.call("GET", "/v1/events?limit=1000").json()["items"];
  size_t session_events = 0;
  for (size_t i = before; i < events.size(); ++i) {
    session_events += events[i]["stream"] == "desktop-session-" + sid;
  }
  CHECK(session_events == 0);
  // The viewer closes: every channel disconnects, the session is disconnected by the display.
  for (int port : {40000, 40001, 40002, 40003, 40004}) hosts->inject_display_event(h, display_event(vm, "disconnect", port));
  s = poll(b, "/v1/sessions/" + sid, [](const json& j) { return j["state"] == "disconnected"; });
  auto hist = b.call("GET", "/v1/streams/desktop-session-" + sid).json()["items"];
  CHECK(hist.back()["type"] == "DesktopSessionDisconnected");
  CHECK(hist.back()["data"]["reason"] == "display_closed");
  // A VM that stops takes its clients with it (QEMU sends no disconnects then): the display
  // table forgets them on the lifecycle event.
  hosts->inject_display_event(h, display_event(vm, "connect", 40010));
  hosts->inject_display_event(h, display_event(vm, "initialize", 40010));
  poll(b, "/v1/sessions/" + sid, [](const json& j) { return j["state"] == "connected"; });
  std::string name = vm["name"];
  REQUIRE(hosts->with_connection(h, [&](atrium::adapters::HypervisorConnection& c) { return c.destroy(name); }).ok());
  bool cleared = false;
  for (int i = 0; i < 200 && !cleared; ++i) {
    auto w = hosts->display_wave(vm["id"]);
    cleared = w && w->initialized == 0;
    if (!cleared) std::this_thread::sleep_for(20ms);
  }
  CHECK(cleared);
  poll(b, "/v1/sessions/" + sid, [](const json& j) { return j["state"] != "connected"; });
}

TEST_CASE("9.2: the next user never gets a VM still shutting down or with the last viewer on it") {
  TestBroker b(fast);
  std::string h = add_host(b);
  std::string p = make_pool(b, h, {{"min_ready", 1}, {"max_size", 1}, {"power_policy", "shutdown_on_logoff"}});
  auto [u1, t1] = b.user("ada");
  auto [u2, t2] = b.user("bea");
  for (auto& u : {u1, u2}) REQUIRE(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", u}}).status == 201);
  poll(b, "/v1/pools/" + p, [](const json& j) { return j["size"]["ready"] == 1; });
  auto first = b.call("POST", "/v1/launches", {{"pool_id", p}}, t1);
  REQUIRE_MESSAGE(first.status == 201, first.body);
  std::string vm = first.json()["vm_id"];
  REQUIRE(b.call("DELETE", "/v1/sessions/" + first.json()["session_id"].get<std::string>(), nullptr, t1).status == 204);
  // Right after the logoff: the second launch waits for the VM to be clean, then gets it.
  auto second = b.call("POST", "/v1/launches", {{"pool_id", p}}, t2);
  REQUIRE_MESSAGE(second.status == 201, second.body);
  CHECK(second.json()["vm_id"] == vm);
  json v = b.call("GET", "/v1/vms/" + vm).json();
  CHECK(v["desired_state"] == "running");
  // The reset and the shutdown came before the second session was created.
  auto events = b.call("GET", "/v1/events?limit=1000").json()["items"];
  int64_t reset_at = 0, off_at = 0, created_at = 0;
  for (const auto& e : events) {
    if (e["type"] == "PoolVmDisplayReset" && e["data"]["vm_id"] == vm && reset_at == 0) reset_at = e["position"];
    if (e["type"] == "VmObserved" && e["stream"] == "vm-" + vm && e["data"]["observed"] == "shut_off") off_at = e["position"];
    if (e["type"] == "DesktopSessionCreated" && e["stream"] == "desktop-session-" + second.json()["session_id"].get<std::string>()) {
      created_at = e["position"];
    }
  }
  CHECK(reset_at > 0);
  CHECK(off_at > 0);
  CHECK(reset_at < created_at);
  CHECK(off_at < created_at);
  // And the second session is not ended a moment later by the old shutdown.
  std::this_thread::sleep_for(1s);
  CHECK(b.call("GET", "/v1/sessions/" + second.json()["session_id"].get<std::string>()).json()["state"] != "ended");
}

TEST_CASE("9.4: a deleted pool leaves no managed VM behind; the host can be removed; DELETE /v1/vms") {
  TestBroker b(fast);
  std::string h = add_host(b);
  std::string p = make_pool(b, h, {{"min_ready", 2}});
  poll(b, "/v1/pools/" + p, [](const json& j) { return j["size"]["ready"] == 2; });
  REQUIRE(b.call("DELETE", "/v1/pools/" + p).status == 202);
  for (int i = 0; i < 500 && b.call("GET", "/v1/pools/" + p).status == 200; ++i) std::this_thread::sleep_for(20ms);
  REQUIRE(b.call("GET", "/v1/pools/" + p).status == 404);
  const json all = b.call("GET", "/v1/vms?limit=1000").json();
  for (const auto& v : all["items"]) {
    CHECK_MESSAGE(v["pool_id"].is_null(), v.dump());
  }
  // An unmanaged VM of the fixture host can be forgotten (a relist imports it again while it
  // exists); an unknown one is 404.
  auto vms = b.call("GET", "/v1/vms?limit=1000").json()["items"];
  REQUIRE(!vms.empty());
  std::string some = vms[0]["id"];
  CHECK(b.call("DELETE", "/v1/vms/" + some).status == 204);
  CHECK(b.call("DELETE", "/v1/vms/nope").status == 404);
  auto rm = b.call("DELETE", "/v1/hosts/" + h);
  CHECK_MESSAGE(rm.status / 100 == 2, rm.body);
}

TEST_CASE("9.5: a template libvirt refuses is a 400 at creation and update, not a user's launch error") {
  TestBroker b(fast);
  std::string h = add_host(b);
  std::string broken =
      "<domain type='test'><name>bad</name><memory unit='MiB'>64</memory><os><type>hvm</type></os>"
      "<devices><disk type='file' device='disk'><source file='/x.img'/><target dev='vda' bus='nosuchbus'/>"
      "</disk></devices></domain>";
  auto r = b.call("POST", "/v1/pools", {{"name", "broken"}, {"kind", "floating"},
                                        {"template", {{"domain_xml", broken}, {"base_volume", "/x.img"}}},
                                        {"host_ids", {h}}, {"max_size", 1}});
  CHECK(r.status == 400);
  CHECK(r.json()["reason"] == "invalid_template");
  CHECK(r.json()["detail"].get<std::string>().find("nosuchbus") != std::string::npos);
  CHECK(b.call("GET", "/v1/pools").json()["items"].empty());
  std::string p = make_pool(b, h, {});
  auto patch = b.call("PATCH", "/v1/pools/" + p, {{"template", {{"domain_xml", broken}, {"base_volume", "/x.img"}}}});
  CHECK(patch.status == 400);
  CHECK(patch.json()["reason"] == "invalid_template");
  // No throwaway validation domain is left on the host.
  const json vms = b.call("GET", "/v1/vms?limit=1000").json();
  for (const auto& v : vms["items"]) {
    CHECK(v["name"].get<std::string>().rfind("atrium-validate-", 0) != 0);
  }
}

TEST_CASE("10.11: a client flipping its session state is limited to 10 changes a minute") {
  TestBroker b(fast);
  std::string h = add_host(b);
  std::string p = make_pool(b, h, {{"min_ready", 1}});
  auto [uid, tok] = b.user("flip");
  REQUIRE(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", uid}}).status == 201);
  poll(b, "/v1/pools/" + p, [](const json& j) { return j["size"]["ready"] == 1; });
  auto l = b.call("POST", "/v1/launches", {{"pool_id", p}}, tok);
  REQUIRE(l.status == 201);
  std::string sid = l.json()["session_id"];
  int limited = 0;
  for (int i = 0; i < 40; ++i) {
    auto r = b.call("POST", "/v1/sessions/" + sid + "/report",
                    {{"state", i % 2 == 0 ? "connected" : "disconnected"}}, tok);
    CHECK((r.status / 100 == 2 || r.status == 429));
    if (r.status == 429) {
      ++limited;
      CHECK(r.json()["reason"] == "too_many_state_changes");
    }
  }
  // After 10 flips the session stays disconnected: each "connected" is refused, each
  // "disconnected" changes nothing.
  CHECK(limited == 15);
  auto hist = b.call("GET", "/v1/streams/desktop-session-" + sid + "?limit=1000").json()["items"];
  int flips = 0;
  for (const auto& e : hist) {
    flips += e["type"] == "DesktopSessionConnected" || e["type"] == "DesktopSessionDisconnected";
  }
  CHECK(flips == 10);
}

// Hosts, VMs and operations over real HTTP (TestBroker), with the reconciler on test:/// hosts.
#include <doctest/doctest.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "api/daemon.h"
#include "support/pool_fixture.h"
#include "support/test_support.h"

using atrium::testing::poll;
using atrium::testing::TestBroker;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

using atrium::testing::kFixtureUri;

void fast(atrium::api::DaemonConfig& cfg) {
  atrium::testing::fast_workers(cfg);
  cfg.hosts.backoff_max = 400ms;
  cfg.hosts.connect_timeout = 1500ms;  // failures reach alert quickly
}

std::string add_host(TestBroker& b, const json& body) {
  auto r = b.call("POST", "/v1/hosts", body);
  REQUIRE(r.status == 202);
  std::string op = r.json()["id"];
  CHECK(r.header("location") == "/v1/operations/" + op);
  CHECK(r.json()["kind"] == "connect_host");
  poll(b, "/v1/operations/" + op, [](const json& j) { return j["state"] == "succeeded"; });
  return r.json()["host_id"];
}

json vm_named(TestBroker& b, const std::string& host, const std::string& name) {
  auto r = b.call("GET", "/v1/vms?host_id=" + host);
  REQUIRE(r.status == 200);
  json page = r.json();
  for (const auto& v : page["items"]) {
    if (v["name"] == name) return v;
  }
  FAIL("no vm " << name);
  return {};
}

}  // namespace

TEST_CASE("POST /v1/hosts answers 202 with an operation; the host comes up with capabilities") {
  TestBroker b(fast);
  std::string h = add_host(b, {{"name", "fixture"}, {"uri", kFixtureUri}});
  auto g = b.call("GET", "/v1/hosts/" + h);
  REQUIRE(g.status == 200);
  json host = g.json();
  CHECK(host["state"] == "up");
  CHECK(host["address"] == "127.0.0.1");
  CHECK(host["display_ports"] == json{{"first", 5500}, {"last", 5699}});
  CHECK(host["display_ports_free"] == 200);
  CHECK(host["capabilities"]["cpus"] == 8);
  CHECK(host["capabilities"]["storage_pools"] == json::array({"vdi-images"}));
  CHECK(g.header("etag") == "\"" + std::to_string(host["version"].get<int>()) + "\"");
  auto list = b.call("GET", "/v1/hosts");
  REQUIRE(list.status == 200);
  CHECK(list.json()["items"].size() == 1);
  CHECK(b.call("GET", "/v1/hosts?state=alert").json()["items"].empty());
  // The operation lists the events it produced, all in the log.
  auto op = b.call("GET", "/v1/operations/" + host["id"].get<std::string>());
  CHECK(op.status == 404);  // host ids are not operation ids
  poll(b, "/v1/vms?host_id=" + h, [](const json& j) { return j["items"].size() == 3; });
}

TEST_CASE("hosts: bad input is 400, users get 403, unknown ids 404, duplicates 409") {
  TestBroker b(fast);
  auto [uid, utok] = b.user("alice");
  CHECK(b.call("GET", "/v1/hosts", nullptr, utok).status == 403);
  CHECK(b.call("POST", "/v1/hosts", {{"name", "x"}, {"uri", "test:///default"}}, utok).status == 403);
  uint64_t before = b.daemon().store().last_position();
  auto unknown = b.call("POST", "/v1/hosts", {{"name", "x"}, {"uri", "test:///default"}, {"ssh_key", "k"}});
  CHECK(unknown.status == 400);
  auto range = b.call("POST", "/v1/hosts", {{"name", "x"}, {"uri", "test:///default"},
                                            {"display_ports", {{"first", 6000}, {"last", 5000}}}});
  CHECK(range.status == 400);
  CHECK(range.json()["reason"] == "invalid_port_range");
  auto nolast = b.call("POST", "/v1/hosts", {{"name", "x"}, {"uri", "test:///default"},
                                             {"display_ports", {{"first", 6000}}}});
  CHECK(nolast.status == 400);
  auto uri = b.call("POST", "/v1/hosts", {{"name", "x"}, {"uri", "no scheme"}});
  CHECK(uri.status == 400);
  CHECK(uri.json()["reason"] == "invalid_uri");
  CHECK(b.call("POST", "/v1/hosts", {{"uri", "test:///default"}}).status == 400);
  CHECK(b.daemon().store().last_position() == before);  // the log did not change
  CHECK(b.call("GET", "/v1/hosts/nope").status == 404);
  CHECK(b.call("GET", "/v1/vms/nope").status == 404);
  CHECK(b.call("GET", "/v1/operations/nope").status == 404);
  CHECK(b.call("POST", "/v1/vms/nope/power", {{"action", "start"}}).status == 404);
  CHECK(b.call("POST", "/v1/hosts", {{"name", "a"}, {"uri", "test:///default"}}).status == 202);
  auto dup = b.call("POST", "/v1/hosts", {{"name", "a"}, {"uri", "test:///default"}});
  CHECK(dup.status == 409);
  CHECK(dup.json()["reason"] == "host_name_taken");
}

TEST_CASE("VMs: list with filters, power through the API converges, 202 + Location, If-Match") {
  TestBroker b(fast);
  std::string h = add_host(b, {{"name", "fixture"}, {"uri", kFixtureUri}});
  poll(b, "/v1/vms?host_id=" + h, [](const json& j) { return j["items"].size() == 3; });
  json off = vm_named(b, h, "desk-off");
  CHECK(off["managed"] == false);
  CHECK(off["pool_id"].is_null());
  CHECK(off["desired_state"] == "none");
  CHECK(off["observed_state"] == "shut_off");
  CHECK(b.call("GET", "/v1/vms?state=running").json()["items"].size() == 1);
  CHECK(b.call("GET", "/v1/vms?pool_id=p1").json()["items"].empty());
  auto page = b.call("GET", "/v1/vms?limit=2");
  CHECK(page.json()["items"].size() == 2);
  auto rest = b.call("GET", "/v1/vms?limit=2&cursor=" + page.json()["next_cursor"].get<std::string>());
  CHECK(rest.json()["items"].size() == 1);

  std::string id = off["id"];
  auto bad = b.call("POST", "/v1/vms/" + id + "/power", {{"action", "suspend"}});
  CHECK(bad.status == 400);
  auto stale = b.call("POST", "/v1/vms/" + id + "/power", {{"action", "start"}}, TestBroker::kAdminToken,
                      {{"If-Match", "\"999\""}});
  CHECK(stale.status == 412);
  auto g = b.call("GET", "/v1/vms/" + id);
  auto p = b.call("POST", "/v1/vms/" + id + "/power", {{"action", "start"}}, TestBroker::kAdminToken,
                  {{"If-Match", g.header("etag")}});
  REQUIRE(p.status == 202);
  std::string op = p.json()["id"];
  CHECK(p.header("location") == "/v1/operations/" + op);
  CHECK(p.json()["state"] == "pending");
  CHECK(p.json()["action"] == "start");
  json done = poll(b, "/v1/operations/" + op, [](const json& j) { return j["state"] == "succeeded"; });
  CHECK(done["events"].size() >= 4);
  CHECK(done["error"].is_null());
  json vm = b.call("GET", "/v1/vms/" + id).json();
  CHECK(vm["desired_state"] == "running");
  CHECK(vm["observed_state"] == "running");

  // Every event of the operation is in the log.
  for (const auto& pos : done["events"]) {
    auto e = b.call("GET", "/v1/events?after=" + std::to_string(pos.get<uint64_t>() - 1) + "&limit=1");
    CHECK(e.json()["items"][0]["position"] == pos);
  }
  p = b.call("POST", "/v1/vms/" + id + "/power", {{"action", "destroy"}});
  REQUIRE(p.status == 202);
  poll(b, "/v1/operations/" + p.json()["id"].get<std::string>(),
       [](const json& j) { return j["state"] == "succeeded"; });
  CHECK(b.call("GET", "/v1/vms/" + id).json()["observed_state"] == "shut_off");
}

TEST_CASE("maintenance refuses starts with 409; activate; display ports exhausted is 409; delete") {
  TestBroker b(fast);
  std::string h = add_host(b, {{"name", "fixture"}, {"uri", kFixtureUri},
                               {"display_ports", {{"first", 5901}, {"last", 5901}}}});
  poll(b, "/v1/vms?host_id=" + h, [](const json& j) { return j["items"].size() == 3; });
  std::string off = vm_named(b, h, "desk-off")["id"];

  auto m = b.call("POST", "/v1/hosts/" + h + "/maintenance");
  REQUIRE(m.status == 200);
  CHECK(m.json()["state"] == "maintenance");
  auto refused = b.call("POST", "/v1/vms/" + off + "/power", {{"action", "start"}});
  CHECK(refused.status == 409);
  CHECK(refused.json()["reason"] == "host_in_maintenance");
  auto a = b.call("POST", "/v1/hosts/" + h + "/activate");
  REQUIRE(a.status == 200);
  CHECK(a.json()["state"] == "up");

  auto full = b.call("POST", "/v1/vms/" + off + "/display-port");
  CHECK(full.status == 409);
  CHECK(full.json()["reason"] == "display_ports_exhausted");
  // Stop the VM that holds 5901: the port returns.
  std::string running = vm_named(b, h, "desk-running")["id"];
  auto p = b.call("POST", "/v1/vms/" + running + "/power", {{"action", "destroy"}});
  REQUIRE(p.status == 202);
  poll(b, "/v1/hosts/" + h, [](const json& j) { return j["display_ports_free"] == 1; });
  auto ok = b.call("POST", "/v1/vms/" + off + "/display-port");
  REQUIRE(ok.status == 200);
  CHECK(ok.json()["allocated_display_port"] == 5901);

  auto del = b.call("DELETE", "/v1/hosts/" + h);
  CHECK(del.status == 204);
  CHECK(b.call("GET", "/v1/hosts/" + h).json()["state"] == "removed");
  CHECK(b.call("GET", "/v1/hosts").json()["items"].empty());
  CHECK(b.call("GET", "/v1/vms/" + off).status == 404);
  CHECK(b.call("POST", "/v1/hosts/" + h + "/maintenance").status == 409);
}

TEST_CASE("an unreachable host: its operation fails with libvirt's message; cancel; alert") {
  TestBroker b([](atrium::api::DaemonConfig& cfg) {
    fast(cfg);
    cfg.host_uris.allow_tcp = true;  // plain TCP: "Connection refused" at once
  });
  auto r = b.call("POST", "/v1/hosts", {{"name", "dead"}, {"uri", "qemu+tcp://127.0.0.1:1/system"}});
  REQUIRE(r.status == 202);
  std::string op = r.json()["id"];
  std::string h = r.json()["host_id"];
  json failed = poll(b, "/v1/operations/" + op, [](const json& j) { return j["state"] == "failed"; });
  CHECK(failed["error"].get<std::string>().find("Connection refused") != std::string::npos);
  json host = b.call("GET", "/v1/hosts/" + h).json();
  CHECK(host["state"] == "alert");
  CHECK(host["failed_attempts"].get<int>() >= 2);
  auto again = b.call("POST", "/v1/operations/" + op + "/cancel");
  CHECK(again.status == 409);
  CHECK(again.json()["reason"] == "operation_finished");

  // Cancelling a connect that is still trying ends it.
  b.restart();  // same data; the dead host stays in alert
  auto r2 = b.call("POST", "/v1/hosts", {{"name", "dead2"}, {"uri", "qemu+tcp://127.0.0.1:1/system"}});
  REQUIRE(r2.status == 202);
  std::string op2 = r2.json()["id"];
  auto c = b.call("POST", "/v1/operations/" + op2 + "/cancel", {{"reason", "typo in the URI"}});
  REQUIRE(c.status == 200);
  CHECK(c.json()["state"] == "cancelled");
  CHECK(c.json()["error"] == "typo in the URI");
  CHECK(b.call("GET", "/v1/hosts/" + r2.json()["host_id"].get<std::string>()).json()["state"] == "alert");
}

TEST_CASE("metrics: host and VM families on /metrics") {
  TestBroker b(fast);
  std::string h = add_host(b, {{"name", "default"}, {"uri", "test:///default"}});
  poll(b, "/v1/vms?host_id=" + h, [](const json& j) { return j["items"].size() == 1; });
  auto m = b.call("GET", "/metrics", nullptr, "");
  CHECK(m.body.find("atrium_hosts{state=\"up\"} 1") != std::string::npos);
  CHECK(m.body.find("atrium_vms{desired=\"none\",observed=\"running\"} 1") != std::string::npos);
  CHECK(m.body.find("atrium_display_ports_free{host=\"" + h + "\",host_name=\"default\"} 200") !=
        std::string::npos);
  CHECK(m.body.find("atrium_libvirt_call_duration_seconds_bucket{call=\"virConnectOpen\"") !=
        std::string::npos);
  CHECK(m.body.find("# TYPE atrium_libvirt_call_errors_total counter") != std::string::npos);
  CHECK(m.body.find("# TYPE atrium_reconcile_duration_seconds histogram") != std::string::npos);

  // promtool's conventions, on this families (when promtool is installed).
  if (atrium::testing::run_command("command -v promtool >/dev/null") != 0) {
    MESSAGE("promtool not installed: lint skipped");
    return;
  }
  atrium::testing::TempDir dir;
  std::string mine;
  std::istringstream in(m.body);
  for (std::string line; std::getline(in, line);) {
    for (const char* f : {"atrium_hosts", "atrium_vms", "atrium_reconcile_duration_seconds",
                          "atrium_libvirt_call_", "atrium_display_ports_free"}) {
      if (line.find(f) != std::string::npos) {
        mine += line + "\n";
        break;
      }
    }
  }
  std::ofstream(dir.str() + "/m.txt") << mine;
  CHECK(atrium::testing::run_command("promtool check metrics < " + dir.str() + "/m.txt") == 0);
}

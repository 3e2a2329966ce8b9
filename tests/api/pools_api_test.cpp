// Desktop pools over real HTTP (TestBroker) on a test:/// host: the pool worker provisions
// from the template, many users launch at once, no VM is handed to two users, logoff frees it.
#include <doctest/doctest.h>

#include <chrono>
#include <map>
#include <mutex>
#include <set>
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

const char* kTemplate = atrium::testing::kTestTemplate;

void fast(atrium::api::DaemonConfig& cfg) {
  atrium::testing::fast_workers(cfg);
  cfg.api.threads = 32;
}

std::string add_host(TestBroker& b) { return atrium::testing::add_fixture_host(b); }

std::string make_pool(TestBroker& b, const std::string& host, const json& extra) {
  return atrium::testing::make_test_pool(b, host, extra);
}

}  // namespace

TEST_CASE("pool CRUD, validation and entitlements") {
  TestBroker b(fast);
  std::string h = add_host(b);
  auto bad = b.call("POST", "/v1/pools", {{"name", "x"}, {"kind", "shared"}, {"template", {{"domain_xml", kTemplate}}},
                                          {"host_ids", {h}}, {"max_size", 2}});
  CHECK(bad.status == 400);
  bad = b.call("POST", "/v1/pools", {{"name", "x"}, {"kind", "floating"}, {"template", {{"domain_xml", kTemplate}}},
                                     {"host_ids", {h}}, {"max_size", 2}, {"min_ready", 3}});
  CHECK(bad.status == 400);
  CHECK(bad.json()["reason"] == "invalid_capacity");
  std::string p = make_pool(b, h, {{"max_size", 2}});
  auto [uid, tok] = b.user("ann");
  CHECK(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", uid}}).status == 201);
  auto g = b.call("GET", "/v1/pools/" + p);
  REQUIRE(g.status == 200);
  CHECK(g.json()["entitled_users"] == json::array({uid}));
  CHECK(!g.header("etag").empty());
  // Users see only the pools they may launch, without admin details.
  auto mine = b.call("GET", "/v1/pools", nullptr, tok);
  REQUIRE(mine.status == 200);
  REQUIRE(mine.json()["items"].size() == 1);
  CHECK(!mine.json()["items"][0].contains("template"));
  CHECK(b.call("GET", "/v1/pools/" + p, nullptr, tok).status == 403);
  auto patch = b.call("PATCH", "/v1/pools/" + p, {{"min_ready", 1}, {"power_policy", "shutdown_on_logoff"}});
  CHECK(patch.status == 200);
  CHECK(patch.json()["power_policy"] == "shutdown_on_logoff");
  CHECK(b.call("PATCH", "/v1/pools/" + p, {{"color", "red"}}).status == 400);
  CHECK(b.call("DELETE", "/v1/pools/" + p + "/entitlements/" + uid).status == 204);
  CHECK(b.call("DELETE", "/v1/pools/" + p + "/entitlements/" + uid).status == 404);
  // Deletion: 202, then the worker removes the members and the pool.
  auto del = b.call("DELETE", "/v1/pools/" + p);
  CHECK(del.status == 202);
  // "deleted" at once when it had no member yet, else "deleting" until the worker is done.
  CHECK((del.json()["state"] == "deleting" || del.json()["state"] == "deleted"));
  for (int i = 0; i < 500 && b.call("GET", "/v1/pools/" + p).status == 200; ++i) std::this_thread::sleep_for(20ms);
  CHECK(b.call("GET", "/v1/pools/" + p).status == 404);
}

TEST_CASE("many concurrent launches on test:///: zero double assignment, reasons for the rest") {
  TestBroker b(fast);
  std::string h = add_host(b);
  constexpr int kSpares = 12, kMax = 16, kUsers = 40;
  std::string p = make_pool(b, h, {{"min_ready", kSpares}, {"max_size", kMax}});
  poll(b, "/v1/pools/" + p, [](const json& j) { return j["size"]["ready"] == kSpares; }, 60s);
  // Spares are defined on the host from the template with a new name, uuid and a SPICE display.
  auto vms = b.call("GET", "/v1/pools/" + p + "/vms").json()["items"];
  REQUIRE(vms.size() == kSpares);
  std::set<std::string> names, macs;
  for (const auto& v : vms) {
    names.insert(v["name"].get<std::string>());
    macs.insert(v["mac"].get<std::string>());
    CHECK(v["desired_state"] == "running");
  }
  CHECK(names.size() == kSpares);
  CHECK(macs.size() == kSpares);

  std::vector<std::pair<std::string, std::string>> users;
  for (int i = 0; i < kUsers; ++i) {
    users.push_back(b.user("u" + std::to_string(i)));
    REQUIRE(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", users.back().first}}).status == 201);
  }
  std::mutex mu;
  std::vector<json> ok;
  std::map<std::string, int> refusals;
  std::vector<int> other;
  std::vector<std::thread> threads;
  for (int i = 0; i < kUsers; ++i) {
    threads.emplace_back([&, i] {
      auto r = b.call("POST", "/v1/launches", {{"pool_id", p}}, users[i].second);
      std::lock_guard lock(mu);
      if (r.status == 201) {
        json j = r.json();
        j["user"] = users[i].first;
        ok.push_back(j);
      } else if (r.status == 409) {
        refusals[r.json().value("reason", "")]++;
      } else {
        other.push_back(r.status);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(other.empty());
  CHECK(ok.size() >= kSpares);
  CHECK(ok.size() <= kMax);
  CHECK(ok.size() + refusals["pool_full"] + refusals["no_vm_ready"] == kUsers);
  std::set<std::string> vm_ids, sessions;
  for (const auto& j : ok) {
    vm_ids.insert(j["vm_id"].get<std::string>());
    sessions.insert(j["session_id"].get<std::string>());
    CHECK(j["protocol"] == "spice");
    CHECK(j["host"] == "127.0.0.1");
    CHECK(j["port"].get<int>() >= 5500);
    CHECK(j["port"].get<int>() <= 5699);
    CHECK(j["ticket"].get<std::string>().size() == 24);
    std::string vv = j["connection_file"];
    CHECK(vv.rfind("[virt-viewer]\n", 0) == 0);
    CHECK(vv.find("type=spice\n") != std::string::npos);
    CHECK(vv.find("host=127.0.0.1\n") != std::string::npos);
    CHECK(vv.find("port=" + std::to_string(j["port"].get<int>()) + "\n") != std::string::npos);
    CHECK(vv.find("password=" + j["ticket"].get<std::string>() + "\n") != std::string::npos);
    CHECK(vv.find("delete-this-file=1\n") != std::string::npos);
  }
  CHECK(vm_ids.size() == ok.size());  // no VM handed to two users
  CHECK(sessions.size() == ok.size());
  // The pool's own records agree: each busy member has exactly one user.
  std::map<std::string, std::string> by_vm;
  json members = b.call("GET", "/v1/pools/" + p + "/vms").json();
  for (const auto& v : members["items"]) {
    if (!v["assigned_user_id"].is_null()) by_vm[v["vm_id"].get<std::string>()] = v["assigned_user_id"].get<std::string>();
  }
  CHECK(by_vm.size() == ok.size());
  for (const auto& j : ok) CHECK(by_vm[j["vm_id"]] == j["user"]);

  // A second launch reconnects to the same session and VM, with a new ticket.
  const json& first = ok.front();
  std::string tok;
  for (const auto& [id, t] : users) {
    if (id == first["user"]) tok = t;
  }
  auto again = b.call("POST", "/v1/launches", {{"pool_id", p}}, tok);
  REQUIRE(again.status == 200);
  CHECK(again.json()["session_id"] == first["session_id"]);
  CHECK(again.json()["vm_id"] == first["vm_id"]);
  CHECK(again.json()["reconnected"] == true);
  // Sessions: the user sees their own, not others'.
  std::string sid = first["session_id"];
  auto s = b.call("GET", "/v1/sessions/" + sid, nullptr, tok);
  REQUIRE(s.status == 200);
  CHECK(s.json()["state"] == "created");
  CHECK(b.call("POST", "/v1/sessions/" + sid + "/report", {{"state", "connected"}}, tok).json()["state"] == "connected");
  std::string other_tok = users[0].first == first["user"] ? users[1].second : users[0].second;
  CHECK(b.call("GET", "/v1/sessions/" + sid, nullptr, other_tok).status == 404);
  CHECK(b.call("DELETE", "/v1/sessions/" + sid, nullptr, other_tok).status == 404);
  auto list = b.call("GET", "/v1/sessions?kind=desktop", nullptr, tok);
  REQUIRE(list.status == 200);
  CHECK(list.json()["items"].size() == 1);
  // Without kind the list has every kind of session (here the desktop one), each labelled.
  auto every = b.call("GET", "/v1/sessions", nullptr, tok);
  REQUIRE(every.status == 200);
  REQUIRE(every.json()["items"].size() == 1);
  CHECK(every.json()["items"][0]["id"] == sid);
  CHECK(every.json()["items"][0]["kind"] == "desktop");
  CHECK(b.call("GET", "/v1/sessions?kind=application", nullptr, tok).json()["items"].empty());
  CHECK(b.call("GET", "/v1/sessions?kind=printer", nullptr, tok).status == 400);
  // Admins page through everyone's sessions by id with a cursor, and can pick one user.
  auto page1 = b.call("GET", "/v1/sessions?limit=5").json();
  REQUIRE(page1["items"].size() == 5);
  auto page2 = b.call("GET", "/v1/sessions?limit=5&cursor=" + page1["next_cursor"].get<std::string>()).json();
  REQUIRE(!page2["items"].empty());
  CHECK(page1["items"][4]["id"].get<std::string>() < page2["items"][0]["id"].get<std::string>());
  auto by_user = b.call("GET", "/v1/sessions?user_id=" + first["user"].get<std::string>()).json();
  REQUIRE(by_user["items"].size() == 1);
  CHECK(by_user["items"][0]["id"] == sid);
  // Logoff ends it and frees the VM; the launch events are all in the log.
  CHECK(b.call("DELETE", "/v1/sessions/" + sid, nullptr, tok).status == 204);
  CHECK(b.call("GET", "/v1/sessions/" + sid, nullptr, tok).json()["state"] == "ended");
  auto ev = b.call("GET", "/v1/events?type=DesktopSessionCreated&limit=1000").json();
  CHECK(ev["items"].size() == ok.size());
  auto assigned = b.call("GET", "/v1/events?type=DesktopAssigned&limit=1000").json();
  CHECK(assigned["items"].size() == ok.size());
}

TEST_CASE("dedicated pools keep the assignment; refusals; admin messages over SSE") {
  TestBroker b([](atrium::api::DaemonConfig& cfg) {
    fast(cfg);
    cfg.api.sse_wait = 2s;
  });
  std::string h = add_host(b);
  std::string p = make_pool(b, h, {{"kind", "dedicated"}, {"max_size", 1}, {"min_ready", 1},
                                   {"power_policy", "shutdown_on_logoff"}});
  poll(b, "/v1/pools/" + p, [](const json& j) { return j["size"]["ready"] == 1; });
  auto [a, atok] = b.user("amy");
  auto [c, ctok] = b.user("cat");
  auto [x, xtok] = b.user("xan");
  for (auto u : {a, c}) b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", u}});
  auto no = b.call("POST", "/v1/launches", {{"pool_id", p}}, xtok);
  CHECK(no.status == 403);
  CHECK(no.json()["reason"] == "not_entitled");
  auto l1 = b.call("POST", "/v1/launches", {{"pool_id", p}}, atok);
  REQUIRE_MESSAGE(l1.status == 201, l1.body);
  std::string vm = l1.json()["vm_id"];
  auto full = b.call("POST", "/v1/launches", {{"pool_id", p}}, ctok);
  CHECK(full.status == 409);
  CHECK(full.json()["reason"] == "pool_full");
  // Admin channel: a message to amy's live sessions, delivered on her notifications stream.
  CHECK(b.call("POST", "/v1/users/" + a + "/messages", {{"text", "reboot at 18:00"}}).status == 202);
  CHECK(b.call("POST", "/v1/users/" + a + "/commands", {{"command", "reconnect"}}).status == 202);
  CHECK(b.call("POST", "/v1/users/" + c + "/messages", {{"text", "hi"}}).status == 409);
  auto sse = b.call("GET", "/v1/me/notifications", nullptr, atok);
  REQUIRE(sse.status == 200);
  CHECK(sse.header("content-type").find("text/event-stream") == 0);
  CHECK(sse.body.find("event: message\n") != std::string::npos);
  CHECK(sse.body.find("reboot at 18:00") != std::string::npos);
  CHECK(sse.body.find("event: command\n") != std::string::npos);
  CHECK(b.call("GET", "/v1/me/notifications", nullptr, ctok).body.find("reboot") == std::string::npos);
  // Logoff with shutdown_on_logoff: the VM is powered off, the assignment stays.
  std::string sid = l1.json()["session_id"];
  CHECK(b.call("DELETE", "/v1/sessions/" + sid, nullptr, atok).status == 204);
  poll(b, "/v1/vms/" + vm, [](const json& j) { return j["observed_state"] == "shut_off"; });
  auto l2 = b.call("POST", "/v1/launches", {{"pool_id", p}}, atok);
  REQUIRE_MESSAGE(l2.status == 201, l2.body);
  CHECK(l2.json()["vm_id"] == vm);
  CHECK(l2.json()["ticket_applied"] == true);  // booted with the ticket in its definition
  // Removing amy's entitlement ends her session and assignment; cat can now get the VM.
  CHECK(b.call("DELETE", "/v1/pools/" + p + "/entitlements/" + a).status == 204);
  CHECK(b.call("GET", "/v1/sessions/" + l2.json()["session_id"].get<std::string>()).json()["end_reason"] ==
        "entitlement_removed");
  auto l3 = b.call("POST", "/v1/launches", {{"pool_id", p}}, ctok);
  CHECK(l3.status == 201);
  CHECK(l3.json()["vm_id"] == vm);
}

TEST_CASE("overlay disks: members get a qcow2 overlay over the base volume; a missing base fails them") {
  TestBroker b(fast);
  std::string h = add_host(b);
  const std::string disk_tmpl =
      "<domain type='test'><name>tmpl</name><uuid>11111111-1111-4111-8111-111111111111</uuid>"
      "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
      "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
      "<source file='/var/lib/atrium/images/base.qcow2'/><target dev='vda' bus='virtio'/></disk>"
      "</devices></domain>";
  // The fixture host's pool vdi-images holds /var/lib/atrium/images/base.qcow2.
  std::string p = make_pool(b, h, {{"name", "disks"}, {"max_size", 2}, {"min_ready", 1},
                                   {"template", {{"domain_xml", disk_tmpl},
                                                 {"base_volume", "/var/lib/atrium/images/base.qcow2"},
                                                 {"storage_pool", "vdi-images"}}}});
  json ready = poll(b, "/v1/pools/" + p + "/vms", [](const json& j) {
    for (const auto& v : j["items"]) {
      if (v["state"] == "ready") return true;
    }
    return false;
  });
  json member;
  for (const auto& v : ready["items"]) {
    if (v["state"] == "ready") member = v;
  }
  CHECK(member["overlay"] == member["name"].get<std::string>() + ".qcow2");
  CHECK(member["error"].is_null());

  // An admin refresh of a free member: back to the template with a fresh overlay.
  std::string vm = member["vm_id"];
  CHECK(b.call("POST", "/v1/pools/" + p + "/vms/nope/refresh").status == 404);
  auto rf = b.call("POST", "/v1/pools/" + p + "/vms/" + vm + "/refresh");
  REQUIRE_MESSAGE(rf.status == 202, rf.body);
  CHECK(rf.json()["state"] == "refreshing");
  json refreshed = poll(b, "/v1/events?type=PoolVmRefreshed&limit=10", [](const json& j) { return !j["items"].empty(); });
  CHECK(refreshed["items"][0]["data"]["vm_id"] == vm);
  CHECK(refreshed["items"][0]["data"]["ok"] == true);
  auto started = b.call("GET", "/v1/events?type=PoolVmRefreshStarted&limit=10").json()["items"];
  REQUIRE(started.size() == 1);
  CHECK(started[0]["data"]["reason"] == "admin");
  poll(b, "/v1/pools/" + p + "/vms", [&](const json& j) {
    for (const auto& v : j["items"]) {
      if (v["vm_id"] == vm) return v["state"] == "ready";
    }
    return false;
  });
  // Not while a user is on it.
  auto [u, tok] = b.user("ria");
  REQUIRE(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", u}}).status == 201);
  auto l = b.call("POST", "/v1/launches", {{"pool_id", p}}, tok);
  REQUIRE_MESSAGE(l.status == 201, l.body);
  auto busy = b.call("POST", "/v1/pools/" + p + "/vms/" + l.json()["vm_id"].get<std::string>() + "/refresh");
  CHECK(busy.status == 409);
  CHECK(busy.json()["reason"] == "vm_busy");
  CHECK(b.call("DELETE", "/v1/sessions/" + l.json()["session_id"].get<std::string>(), nullptr, tok).status == 204);

  // A base volume the host does not know: the member fails with libvirt's message.
  std::string bad = make_pool(b, h, {{"name", "nobase"}, {"max_size", 1}, {"min_ready", 1},
                                     {"template", {{"domain_xml", disk_tmpl},
                                                   {"base_volume", "/nowhere/base.qcow2"},
                                                   {"storage_pool", "vdi-images"}}}});
  // (Failed members are removed and retried at once, so the record is read from the log.)
  json failed = poll(b, "/v1/events?type=PoolVmProvisionFailed&limit=100",
                     [](const json& j) { return !j["items"].empty(); });
  std::string err = failed["items"][0]["data"].value("error", "");
  CHECK_MESSAGE(err.find("/nowhere/base.qcow2") != std::string::npos, failed.dump());

  // Deleting the pool removes its members (domain and overlay volume) and then the pool.
  CHECK(b.call("DELETE", "/v1/pools/" + p).status == 202);
  for (int i = 0; i < 500 && b.call("GET", "/v1/pools/" + p).status == 200; ++i) std::this_thread::sleep_for(20ms);
  CHECK(b.call("GET", "/v1/pools/" + p).status == 404);
}

TEST_CASE("a template naming an existing domain: exported at creation, its disk is the overlays' base") {
  TestBroker b(fast);
  auto r = b.call("POST", "/v1/hosts",
                  {{"name", "golden"},
                   {"uri", std::string("test://") + ATRIUM_SOURCE_DIR + "/tests/adapters/fixtures/template-host.xml"}});
  REQUIRE(r.status == 202);
  std::string h = r.json()["host_id"];
  poll(b, "/v1/hosts/" + h, [](const json& j) { return j["state"] == "up"; });
  auto create = [&](json tmpl, const std::string& name = "gold-desks") {
    return b.call("POST", "/v1/pools", {{"name", name}, {"kind", "floating"}, {"template", tmpl},
                                         {"host_ids", {h}}, {"max_size", 2}, {"min_ready", 1}});
  };
  // Refusals, each with its reason and nothing recorded.
  auto before = b.call("GET", "/v1/events?type=PoolCreated&limit=10").json()["items"].size();
  auto bad = create({{"domain_name", "nope"}});
  CHECK(bad.status == 400);
  CHECK(bad.json()["reason"] == "template_domain_not_found");
  CHECK(bad.body.find("template.domain_name") != std::string::npos);
  bad = create({{"domain_name", "gold"}, {"domain_xml", kTemplate}});
  CHECK(bad.status == 400);
  CHECK(bad.body.find("either domain_xml or domain_name") != std::string::npos);
  bad = create({{"domain_name", "gold"}, {"host_id", "no-such-host"}});
  CHECK(bad.status == 400);
  CHECK(bad.json()["reason"] == "host_not_found");
  // A running template whose own disk would be the base: overlays over a live disk are refused.
  bad = create({{"domain_name", "gold-running"}, {"storage_pool", "vdi-images"}});
  CHECK(bad.status == 409);
  CHECK(bad.json()["reason"] == "template_running");
  CHECK(b.call("GET", "/v1/events?type=PoolCreated&limit=10").json()["items"].size() == before);

  // The shut-off template: host defaults to the pool's only host, base volume from its disk.
  auto ok = create({{"domain_name", "gold"}, {"storage_pool", "vdi-images"}});
  REQUIRE_MESSAGE(ok.status == 201, ok.body);
  json t = ok.json()["template"];
  CHECK(t["domain_name"] == "gold");
  CHECK(t["host_id"] == h);
  CHECK(t["base_volume"] == "/var/lib/atrium/images/base.qcow2");
  CHECK(t["memory_kib"] == 131072);
  CHECK(t["domain_xml"].get<std::string>().find("<name>gold</name>") != std::string::npos);
  std::string p = ok.json()["id"];
  json vms = poll(b, "/v1/pools/" + p + "/vms", [](const json& j) {
    return !j["items"].empty() && j["items"][0]["state"] == "ready";
  });
  json m = vms["items"][0];
  // The member's definition on the host: a clone of gold with its own name, MAC and overlay.
  std::string xml;
  auto st = b.daemon().host_manager()->with_connection(h, [&](atrium::adapters::HypervisorConnection& c) {
    auto x = c.domain_xml(m["name"].get<std::string>());
    if (x.ok()) xml = *x;
    return x.ok() ? atrium::Status::Ok() : atrium::Status(x.error());
  });
  REQUIRE(st.ok());
  CHECK(xml.find("<name>" + m["name"].get<std::string>() + "</name>") != std::string::npos);
  CHECK(xml.find(m["mac"].get<std::string>()) != std::string::npos);
  CHECK(xml.find("52:54:00:0a:0b:0c") == std::string::npos);
  CHECK(xml.find("/var/lib/atrium/images/" + m["overlay"].get<std::string>()) != std::string::npos);
  CHECK(xml.find("<source file='/var/lib/atrium/images/base.qcow2'/>") == std::string::npos);
  CHECK(xml.find("type='spice'") != std::string::npos);
  // The template itself is untouched.
  std::string gold;
  (void)b.daemon().host_manager()->with_connection(h, [&](atrium::adapters::HypervisorConnection& c) {
    auto x = c.domain_xml("gold");
    if (x.ok()) gold = *x;
    return atrium::Status::Ok();
  });
  CHECK(gold.find("<source file='/var/lib/atrium/images/base.qcow2'/>") != std::string::npos);
  CHECK(gold.find("52:54:00:0a:0b:0c") != std::string::npos);
}

TEST_CASE("power policies over HTTP with the broker's clock moved: grace, idle, silent client, refresh") {
  TestBroker b([](atrium::api::DaemonConfig& cfg) {
    fast(cfg);
    cfg.pools.client_timeout = 90s;
  });
  std::string h = add_host(b);
  auto [u, tok] = b.user("una");
  auto entitle = [&](const std::string& p) {
    REQUIRE(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", u}}).status == 201);
  };
  auto launch = [&](const std::string& p) {
    auto l = b.call("POST", "/v1/launches", {{"pool_id", p}}, tok);
    REQUIRE_MESSAGE((l.status == 201 || l.status == 200), l.body);
    return l.json();
  };
  auto session = [&](const std::string& sid) { return b.call("GET", "/v1/sessions/" + sid).json(); };
  auto vm_state = [&](const std::string& vm) { return b.call("GET", "/v1/vms/" + vm).json(); };

  SUBCASE("a disconnected session ends after the grace time, then shutdown_on_logoff powers off") {
    std::string p = make_pool(b, h, {{"name", "grace"}, {"max_size", 1}, {"grace_s", 120},
                                     {"power_policy", "shutdown_on_logoff"}});
    entitle(p);
    json l = launch(p);
    std::string sid = l["session_id"], vm = l["vm_id"];
    CHECK(b.call("POST", "/v1/sessions/" + sid + "/report", {{"state", "connected"}}, tok).status == 200);
    CHECK(b.call("POST", "/v1/sessions/" + sid + "/report", {{"state", "disconnected"}}, tok).status == 200);
    b.advance_clock_ms(60'000);  // within the grace: the session and the VM stay
    std::this_thread::sleep_for(300ms);
    CHECK(session(sid)["state"] == "disconnected");
    CHECK(vm_state(vm)["observed_state"] == "running");
    // The user comes back within the grace: the same session and VM.
    json again = launch(p);
    CHECK(again["session_id"] == sid);
    CHECK(again["reconnected"] == true);
    CHECK(b.call("POST", "/v1/sessions/" + sid + "/report", {{"state", "disconnected"}}, tok).status == 200);
    b.advance_clock_ms(121'000);
    json ended = poll(b, "/v1/sessions/" + sid, [](const json& j) { return j["state"] == "ended"; });
    CHECK(ended["end_reason"] == "grace_expired");
    poll(b, "/v1/vms/" + vm, [](const json& j) { return j["observed_state"] == "shut_off"; });
  }

  SUBCASE("a client that stops reporting is deactivated after the client timeout") {
    std::string p = make_pool(b, h, {{"name", "silent"}, {"max_size", 1}, {"grace_s", 600}});
    entitle(p);
    json l = launch(p);
    std::string sid = l["session_id"];
    CHECK(b.call("POST", "/v1/sessions/" + sid + "/report", {{"state", "connected"}}, tok).status == 200);
    b.advance_clock_ms(60'000);
    CHECK(b.call("POST", "/v1/sessions/" + sid + "/report", {{"state", "connected"}}, tok).status == 200);
    b.advance_clock_ms(60'000);  // 60 s since the last report: still fine
    std::this_thread::sleep_for(300ms);
    CHECK(session(sid)["state"] == "connected");
    b.advance_clock_ms(31'000);  // 91 s of silence
    poll(b, "/v1/sessions/" + sid, [](const json& j) { return j["state"] == "disconnected"; });
    auto evs = b.call("GET", "/v1/events?type=DesktopSessionDisconnected&limit=10").json()["items"];
    REQUIRE(!evs.empty());
    CHECK(evs.back()["data"].dump().find("client_timeout") != std::string::npos);
  }

  SUBCASE("shutdown_when_idle: the VM runs on after logoff and is shut down after the idle timeout") {
    std::string p = make_pool(b, h, {{"name", "idle"}, {"max_size", 1}, {"idle_timeout_s", 600},
                                     {"power_policy", "shutdown_when_idle"}});
    entitle(p);
    json l = launch(p);
    std::string sid = l["session_id"], vm = l["vm_id"];
    CHECK(b.call("DELETE", "/v1/sessions/" + sid, nullptr, tok).status == 204);
    b.advance_clock_ms(300'000);
    std::this_thread::sleep_for(300ms);
    CHECK(vm_state(vm)["observed_state"] == "running");
    b.advance_clock_ms(301'000);
    poll(b, "/v1/vms/" + vm, [](const json& j) { return j["observed_state"] == "shut_off"; });
    // The next launch powers it on again.
    json l2 = launch(p);
    CHECK(l2["vm_id"] == vm);
    CHECK(vm_state(vm)["observed_state"] == "running");
  }

  SUBCASE("refresh_on_logoff: the floating VM goes back to a fresh overlay before its next user") {
    const std::string disk_tmpl =
        "<domain type='test'><name>tmpl</name><uuid>11111111-1111-4111-8111-111111111111</uuid>"
        "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
        "<devices><disk type='file' device='disk'><source file='/var/lib/atrium/images/base.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>";
    std::string p = make_pool(b, h, {{"name", "fresh"}, {"max_size", 1}, {"power_policy", "refresh_on_logoff"},
                                     {"template", {{"domain_xml", disk_tmpl}, {"storage_pool", "vdi-images"}}}});
    entitle(p);
    json l = launch(p);
    std::string sid = l["session_id"], vm = l["vm_id"];
    CHECK(b.call("DELETE", "/v1/sessions/" + sid, nullptr, tok).status == 204);
    poll(b, "/v1/events?type=PoolVmRefreshed&limit=10", [](const json& j) { return !j["items"].empty(); });
    json members = poll(b, "/v1/pools/" + p + "/vms", [](const json& j) {
      return j["items"].size() == 1 && j["items"][0]["state"] == "ready";
    });
    CHECK(members["items"][0]["vm_id"] == vm);
    CHECK(members["items"][0]["assigned_user_id"].is_null());
    // Refreshing means the VM was powered off and its overlay recreated: the refresh started
    // after the session ended and before the member was ready again.
    auto log = b.call("GET", "/v1/events?stream=pool-" + p + "&limit=100").json()["items"];
    std::vector<std::string> types;
    for (const auto& e : log) types.push_back(e["type"]);
    auto at = [&](const std::string& t) { return std::find(types.begin(), types.end(), t) - types.begin(); };
    CHECK(at("PoolVmRefreshStarted") < at("PoolVmRefreshed"));
    CHECK(at("PoolVmRefreshed") < static_cast<long>(types.size()));
    CHECK(vm_state(vm)["observed_state"] == "shut_off");
    json l2 = launch(p);
    CHECK(l2["vm_id"] == vm);
    CHECK(l2["session_id"] != sid);
  }
}

TEST_CASE("on demand: a pool without spares grows by one VM per launch up to max_size") {
  TestBroker b(fast);
  std::string h = add_host(b);
  std::string p = make_pool(b, h, {{"name", "lazy"}, {"max_size", 2}, {"min_ready", 0}});
  std::this_thread::sleep_for(300ms);  // several worker passes: nothing is provisioned ahead
  CHECK(b.call("GET", "/v1/pools/" + p).json()["size"]["total"] == 0);
  std::vector<std::string> tokens;
  for (const char* name : {"odd", "ola", "oto"}) {
    auto [id, tok] = b.user(name);
    REQUIRE(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", id}}).status == 201);
    tokens.push_back(tok);
  }
  std::set<std::string> vms;
  for (int i = 0; i < 2; ++i) {
    auto l = b.call("POST", "/v1/launches", {{"pool_id", p}}, tokens[i]);
    REQUIRE_MESSAGE(l.status == 201, l.body);
    vms.insert(l.json()["vm_id"].get<std::string>());
    CHECK(b.call("GET", "/v1/pools/" + p).json()["size"]["total"] == i + 1);
  }
  CHECK(vms.size() == 2);
  auto full = b.call("POST", "/v1/launches", {{"pool_id", p}}, tokens[2]);
  CHECK(full.status == 409);
  CHECK(full.json()["reason"] == "pool_full");
  CHECK(b.call("GET", "/v1/pools/" + p).json()["size"]["total"] == 2);
}

TEST_CASE("template update over HTTP: free members move to the new version, a busy one after logoff") {
  TestBroker b(fast);
  std::string h = add_host(b);
  auto disk_tmpl = [](int mib) {
    return "<domain type='test'><name>tmpl</name><uuid>11111111-1111-4111-8111-111111111111</uuid>"
           "<memory unit='MiB'>" + std::to_string(mib) + "</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
           "<source file='/var/lib/atrium/images/base.qcow2'/><target dev='vda' bus='virtio'/></disk>"
           "</devices></domain>";
  };
  std::string p = make_pool(b, h, {{"name", "golden"}, {"max_size", 3}, {"min_ready", 2},
                                   {"template", {{"domain_xml", disk_tmpl(64)}, {"storage_pool", "vdi-images"}}}});
  poll(b, "/v1/pools/" + p, [](const json& j) { return j["size"]["ready"] == 2; });
  auto [u, tok] = b.user("tia");
  REQUIRE(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", u}}).status == 201);
  auto l = b.call("POST", "/v1/launches", {{"pool_id", p}}, tok);
  REQUIRE_MESSAGE(l.status == 201, l.body);
  std::string busy = l.json()["vm_id"], sid = l.json()["session_id"];
  poll(b, "/v1/pools/" + p, [](const json& j) { return j["size"]["ready"] == 2 && j["size"]["total"] == 3; });

  // A layout change is refused; the new template is version 2.
  auto bad = b.call("PATCH", "/v1/pools/" + p,
                    {{"template", {{"domain_xml", kTemplate}, {"storage_pool", "vdi-images"}}}});
  CHECK(bad.status == 409);
  CHECK(bad.json()["reason"] == "template_layout_changed");
  auto up = b.call("PATCH", "/v1/pools/" + p,
                   {{"template", {{"domain_xml", disk_tmpl(128)}, {"storage_pool", "vdi-images"}}}});
  REQUIRE_MESSAGE(up.status == 200, up.body);
  CHECK(up.json()["template_version"] == 2);
  CHECK(up.json()["template"]["memory_kib"] == 128 * 1024);

  // The free members are refreshed to version 2 (and started again as spares); the busy one
  // keeps its session and version 1.
  auto members_at = [&](const json& j, int version) {
    int n = 0;
    for (const auto& m : j["items"]) n += m["template_version"] == version && m["state"] == "ready";
    return n;
  };
  json vms = poll(b, "/v1/pools/" + p + "/vms", [&](const json& j) { return members_at(j, 2) == 2; });
  for (const auto& m : vms["items"]) {
    if (m["vm_id"] == busy) {
      CHECK(m["template_version"] == 1);
      CHECK(m["session_id"] == sid);
    } else {
      CHECK(m["memory_kib"] == 128 * 1024);
      std::string xml;
      (void)b.daemon().host_manager()->with_connection(h, [&](atrium::adapters::HypervisorConnection& c) {
        auto x = c.domain_xml(m["name"].get<std::string>());
        if (x.ok()) xml = *x;
        return atrium::Status::Ok();
      });
      CHECK_MESSAGE(xml.find("<memory unit='KiB'>131072</memory>") != std::string::npos, xml);
    }
  }
  CHECK(b.call("GET", "/v1/sessions/" + sid, nullptr, tok).json()["state"] != "ended");
  poll(b, "/v1/pools/" + p, [](const json& j) { return j["size"]["ready"] == 2 && j["size"]["outdated"] == 1; });

  // Logoff frees the last one: it is refreshed too.
  CHECK(b.call("DELETE", "/v1/sessions/" + sid, nullptr, tok).status == 204);
  poll(b, "/v1/pools/" + p + "/vms", [&](const json& j) { return members_at(j, 2) == 3; });
  CHECK(b.call("GET", "/v1/pools/" + p).json()["size"]["outdated"] == 0);
  auto refreshed = b.call("GET", "/v1/events?type=PoolVmRefreshStarted&limit=100").json()["items"];
  CHECK(refreshed.size() == 3);
  for (const auto& e : refreshed) CHECK(e["data"]["reason"] == "template_updated");
}

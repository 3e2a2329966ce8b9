// Directory sign-in over HTTP against a real slapd (tests/support/slapd.h) and the real broker
// on loopback: sign-in, wrong password, no such user, a disabled user, nested group -> role,
// group entitlement -> launch, the user leaving the group -> its assignment ended, the
// directory stopped -> 503 for directory users while local users sign in, a renamed user
// keeps its desktop, tokens rechecked, the bind password in no event, log or metric.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "support/child_daemon.h"
#include "support/pool_fixture.h"
#include "support/slapd.h"
#include "support/test_support.h"

using atrium::testing::poll;
using atrium::testing::Slapd;
using atrium::testing::TestBroker;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const std::string kAliceUuid = "0e3b6c52-7d2f-4c1a-9b1e-00000a11ce00";
const std::string kBindPassword = Slapd::kServicePassword;

json directory_body(const Slapd& ldap, const std::string& name = "corp") {
  return json{{"name", name},
              {"kind", "ldap"},
              {"urls", {ldap.ldaps_url()}},
              {"bind_dn", Slapd::kServiceDn},
              {"bind_password", kBindPassword},
              {"user_base", std::string("ou=people,") + Slapd::kBase},
              {"user_filter", "(&(objectClass=inetOrgPerson)(!(employeeType=disabled)))"},
              {"group_base", std::string("ou=groups,") + Slapd::kBase},
              {"ca_file", ldap.ca_file()},
              {"timeout_ms", 2000},
              {"role_map", {{"staff", {"user"}}, {"admins", {"admin"}}}}};
}

atrium::testing::HttpReply login(TestBroker& b, const std::string& name, const std::string& pw) {
  return b.call("POST", "/v1/auth/login", {{"name", name}, {"password", pw}}, "");
}

void fast(atrium::api::DaemonConfig& cfg) {
  atrium::testing::fast_workers(cfg);
  cfg.api.directory_recheck_ms = 60'000;
}

}  // namespace

TEST_CASE("directory sign-in: nested groups to roles, refusals, throttling, directory down") {
  Slapd ldap;
  if (!ldap.ok()) {
    MESSAGE("skipped: " << ldap.why());
    return;
  }
  TestBroker b(fast);
  auto created = b.call("POST", "/v1/directories", directory_body(ldap));
  REQUIRE_MESSAGE(created.status == 201, created.body);
  CHECK_FALSE(created.json().contains("bind_password"));
  CHECK_FALSE(created.json().contains("bind_password_sealed"));
  CHECK(created.json()["has_bind_password"] == true);
  std::string dir_id = created.json()["id"];
  CHECK(b.call("POST", "/v1/directories", directory_body(ldap)).json()["reason"] ==
        "directory_name_taken");
  auto plain = directory_body(ldap, "plain");
  plain["urls"] = {ldap.ldap_url()};
  CHECK(b.call("POST", "/v1/directories", plain).json()["reason"] == "plaintext_not_allowed");

  // alice is in devs, in engineering, in staff: staff maps to user.
  auto a = login(b, "alice@corp", "alice-pw-123");
  REQUIRE_MESSAGE(a.status == 200, a.body);
  CHECK(a.json()["roles"] == json::array({"user"}));
  CHECK(a.header("cache-control") == "no-store");
  std::string alice_id = a.json()["user_id"], alice_tok = a.json()["token"];
  auto me = b.call("GET", "/v1/users/" + alice_id, nullptr, alice_tok);
  REQUIRE(me.status == 200);
  CHECK(me.json()["name"] == "alice@corp");
  CHECK(me.json()["has_password"] == false);
  CHECK(me.json()["directory"]["external_id"] == kAliceUuid);
  CHECK(me.json()["directory"]["groups"] ==
        json::array({"devs@corp", "engineering@corp", "staff@corp"}));
  // Signing in again is the same user (provisioned once).
  auto a2 = login(b, "alice@corp", "alice-pw-123");
  REQUIRE(a2.status == 200);
  CHECK(a2.json()["user_id"] == alice_id);
  // bob is an admin through the admins group.
  auto bob = login(b, "bob@corp", "bob-pw-123");
  REQUIRE(bob.status == 200);
  CHECK(bob.json()["roles"] == json::array({"admin"}));

  // One answer for a wrong password, no such user, a disabled user, a user in no mapped group.
  for (auto [n, p] :
       {std::pair{"alice@corp", "wrong-pw-123"}, std::pair{"nobody@corp", "x-pw-1234"},
        std::pair{"carol@corp", "carol-pw-123"}, std::pair{"dave@corp", "dave-pw-123"}}) {
    auto r = login(b, n, p);
    CHECK_MESSAGE(r.status == 401, n);
    CHECK(r.json()["reason"] == "bad_credentials");
  }
  // Directory failures count toward the login throttle like local ones.
  for (int i = 0; i < 12; ++i) (void)login(b, "alice@corp", "wrong-pw-123");
  auto thr = login(b, "alice@corp", "alice-pw-123");
  CHECK(thr.status == 429);
  CHECK(thr.json()["reason"] == "login_throttled");

  // The directory stops: directory users get 503 (never 401), local users still sign in.
  b.user("local1");
  ldap.stop();
  auto down = login(b, "bob@corp", "bob-pw-123");
  CHECK(down.status == 503);
  CHECK(down.json()["reason"] == "directory_unavailable");
  auto local = login(b, "local1", "password-local1");
  CHECK(local.status == 200);
  // A token due for its recheck while the directory is down: 503, not a silent pass.
  b.advance_clock_ms(61'000);
  auto stale = b.call("GET", "/v1/users/" + alice_id, nullptr, alice_tok);
  CHECK(stale.status == 503);
  CHECK(stale.json()["reason"] == "directory_unavailable");
  REQUIRE(ldap.start());
  CHECK(b.call("GET", "/v1/users/" + alice_id, nullptr, alice_tok).status == 200);

  // alice disabled in the directory: her token stops at its next check, sign-in refused.
  CHECK(ldap.modify("ldapmodify",
                    std::string("dn: uid=alice,ou=people,") + Slapd::kBase +
                        "\nchangetype: modify\nadd: employeeType\nemployeeType: disabled\n") == 0);
  CHECK(b.call("GET", "/v1/users/" + alice_id, nullptr, alice_tok).status == 200);  // not due yet
  b.advance_clock_ms(61'000);
  auto gone = b.call("GET", "/v1/users/" + alice_id, nullptr, alice_tok);
  CHECK(gone.status == 401);
  CHECK(b.call("GET", "/v1/users/" + alice_id, nullptr, alice_tok).status == 401);  // for good
  CHECK(login(b, "bob@corp", "bob-pw-123").status == 200);
  (void)dir_id;
}

TEST_CASE(
    "group entitlement -> launch; leaving the group ends it; a renamed user keeps its desktop") {
  Slapd ldap;
  if (!ldap.ok()) {
    MESSAGE("skipped: " << ldap.why());
    return;
  }
  TestBroker b(fast);
  REQUIRE(b.call("POST", "/v1/directories", directory_body(ldap)).status == 201);
  std::string h = atrium::testing::add_fixture_host(b);
  std::string p = atrium::testing::make_test_pool(
      b, h, {{"kind", "dedicated"}, {"max_size", 2}, {"min_ready", 1}});
  CHECK(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"group", "engineering@nowhere"}})
            .json()["reason"] == "unknown_group");
  CHECK(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"group", "x@corp"}, {"user_id", "u"}})
            .status == 400);
  auto ent = b.call("POST", "/v1/pools/" + p + "/entitlements", {{"group", "engineering@corp"}});
  REQUIRE_MESSAGE(ent.status == 201, ent.body);
  auto list = b.call("GET", "/v1/pools/" + p + "/entitlements");
  CHECK(list.json()["items"].dump().find("engineering@corp") != std::string::npos);

  auto a = login(b, "alice@corp", "alice-pw-123");
  REQUIRE(a.status == 200);
  std::string alice_id = a.json()["user_id"], tok = a.json()["token"];
  auto l = b.call("POST", "/v1/launches", {{"pool_id", p}}, tok);
  REQUIRE_MESSAGE(l.status == 201, l.body);
  std::string vm = l.json()["vm_id"];
  CHECK(b.call("GET", "/v1/pools", nullptr, tok).json()["items"].size() == 1);

  // Renamed in the directory (uid alice -> alicia, same entryUUID): same user, same desktop.
  CHECK(ldap.modify("ldapmodrdn",
                    std::string("-r uid=alice,ou=people,") + Slapd::kBase + " uid=alicia",
                    false) == 0);
  CHECK(ldap.modify("ldapmodify",
                    std::string("dn: cn=devs,ou=groups,") + Slapd::kBase +
                        "\nchangetype: modify\nreplace: member\nmember: uid=alicia,ou=people," +
                        Slapd::kBase + "\n") == 0);
  auto r = login(b, "alicia@corp", "alice-pw-123");
  REQUIRE_MESSAGE(r.status == 200, r.body);
  CHECK(r.json()["user_id"] == alice_id);
  CHECK(login(b, "alice@corp", "alice-pw-123").status == 401);
  auto again =
      b.call("POST", "/v1/launches", {{"pool_id", p}}, r.json()["token"].get<std::string>());
  REQUIRE_MESSAGE(again.status / 100 == 2, again.body);
  CHECK(again.json()["vm_id"] == vm);

  // alicia leaves devs (so engineering): at her next sign-in her assignment ends.
  CHECK(ldap.modify("ldapmodify",
                    std::string("dn: cn=devs,ou=groups,") + Slapd::kBase +
                        "\nchangetype: modify\nreplace: member\nmember: uid=dave,ou=people," +
                        Slapd::kBase + "\n") == 0);
  CHECK(ldap.modify("ldapmodify",
                    std::string("dn: cn=staff,ou=groups,") + Slapd::kBase +
                        "\nchangetype: modify\nadd: member\nmember: uid=alicia,ou=people," +
                        Slapd::kBase + "\n") == 0);
  auto r2 = login(b, "alicia@corp", "alice-pw-123");
  REQUIRE(r2.status == 200);
  auto ev = b.call("GET", "/v1/events?type=DesktopUnassigned");
  REQUIRE(ev.status == 200);
  CHECK(ev.json()["items"].size() == 1);
  auto ents = b.call("GET", "/v1/pools/" + p + "/entitlements").json();
  for (const auto& e : ents["items"]) CHECK(e.value("assigned_vm_id", json()).is_null());
  auto refused =
      b.call("POST", "/v1/launches", {{"pool_id", p}}, r2.json()["token"].get<std::string>());
  CHECK(refused.status == 403);
  CHECK(refused.json()["reason"] == "not_entitled");
  CHECK(b.call("DELETE", "/v1/pools/" + p + "/group-entitlements/engineering@corp").status == 204);
  CHECK(b.call("DELETE", "/v1/pools/" + p + "/group-entitlements/engineering@corp").status == 404);
}

TEST_CASE("the bind password is in no event, log line or metric of a real atriumd") {
  Slapd ldap;
  if (!ldap.ok()) {
    MESSAGE("skipped: " << ldap.why());
    return;
  }
  namespace child = atrium::testing::child;
  atrium::testing::TempDir dir;
  std::string log = dir.str() + "/stderr.log";
  child::SpawnOptions o;
  o.extra = {"--access-log=on", "--default-host=none", "--host-reconciler=off"};
  o.stderr_path = log;
  auto c = child::spawn_with(dir.str() + "/data", o);
  auto body = directory_body(ldap);
  auto r = child::http(c.port, "POST", "/v1/directories", body.dump(), child::auth());
  REQUIRE_MESSAGE(r.status == 201, r.body);
  // Make it log: a failing sign-in while the directory is down, and a good one.
  CHECK(child::http(c.port, "POST", "/v1/auth/login",
                    json{{"name", "bob@corp"}, {"password", "bob-pw-123"}}.dump())
            .status == 200);
  ldap.stop();
  CHECK(child::http(c.port, "POST", "/v1/auth/login",
                    json{{"name", "bob@corp"}, {"password", "bob-pw-123"}}.dump())
            .status == 503);
  std::string metrics = child::http(c.port, "GET", "/metrics").body;
  std::string events;
  for (const auto& e : child::all_events(c.port)) events += e.dump() + "\n";
  ::kill(c.pid, SIGTERM);
  CHECK(child::wait_exit(c.pid) == 0);
  std::stringstream ss;
  ss << std::ifstream(log).rdbuf();
  CHECK(events.find("DirectoryCreated") != std::string::npos);
  CHECK(events.find("\"bind_password_sealed\":\"[redacted]\"") != std::string::npos);
  CHECK(ss.str().find("directory corp") != std::string::npos);  // the outage was logged
  for (const std::string* where : {&events, &metrics})
    CHECK(where->find(kBindPassword) == std::string::npos);
  CHECK(ss.str().find(kBindPassword) == std::string::npos);
  CHECK(ss.str().find("bob-pw-123") == std::string::npos);
  // Nor anywhere in the store's files (the log holds only the sealed form).
  for (const auto& [path, bytes] : atrium::testing::file_contents(dir.str() + "/data")) {
    CHECK_MESSAGE(bytes.find(kBindPassword) == std::string::npos, path);
  }
}

TEST_CASE(
    "PATCH /v1/directories/{id}: the role_map reaches the next sign-in and recheck; stale If-Match "
    "412; a rotated bind password works and is in no event or view; a rename keeps its users") {
  Slapd ldap;
  if (!ldap.ok()) {
    MESSAGE("skipped: " << ldap.why());
    return;
  }
  TestBroker b(fast);
  auto created = b.call("POST", "/v1/directories", directory_body(ldap));
  REQUIRE_MESSAGE(created.status == 201, created.body);
  std::string id = created.json()["id"], path = "/v1/directories/" + id;
  std::string created_at = created.header("x-atrium-position");
  auto a = login(b, "alice@corp", "alice-pw-123");
  REQUIRE(a.status == 200);
  CHECK(a.json()["roles"] == json::array({"user"}));
  std::string alice_id = a.json()["user_id"], alice_tok = a.json()["token"];
  std::string etag = b.call("GET", path).header("etag");
  CHECK(etag == "\"1\"");

  // staff (alice, through nested groups) now maps to user and agent.
  json map2{{"staff", {"user", "agent"}}, {"admins", {"admin"}}};
  auto p =
      b.call("PATCH", path, {{"role_map", map2}}, TestBroker::kAdminToken, {{"If-Match", etag}});
  REQUIRE_MESSAGE(p.status == 200, p.body);
  CHECK(p.json()["role_map"]["staff"] == json::array({"agent", "user"}));
  CHECK(p.json()["version"] == 2);
  CHECK(p.header("etag") == "\"2\"");
  auto stale =
      b.call("PATCH", path, {{"timeout_ms", 3000}}, TestBroker::kAdminToken, {{"If-Match", etag}});
  CHECK(stale.status == 412);
  CHECK(stale.json()["reason"] == "version_mismatch");
  CHECK(b.call("GET", path).json()["timeout_ms"] == 2000);
  CHECK(b.call("PATCH", path, {{"urls", {ldap.ldap_url()}}}).json()["reason"] ==
        "plaintext_not_allowed");
  for (const json& bad : {json{{"nonsense", 1}}, json{{"role_map", 5}}, json{{"timeout_ms", "x"}},
                          json{{"urls", "ldaps://x"}}, json{{"starttls", "yes"}}}) {
    auto r = b.call("PATCH", path, bad);
    CHECK_MESSAGE(r.status == 400, bad.dump());
    CHECK(r.json()["reason"] == "invalid_body");
  }
  CHECK(b.call("PATCH", path, {{"timeout_ms", 5}}).json()["reason"] == "invalid_directory");
  CHECK(b.call("PATCH", path, {{"role_map", {{"staff", {"root"}}}}}).json()["reason"] ==
        "invalid_roles");
  CHECK(b.call("PATCH", "/v1/directories/nope", {{"timeout_ms", 3000}}).status == 404);
  // The view as it was before the change.
  auto before = b.call("GET", path + "?as_of=" + created_at);
  REQUIRE(before.status == 200);
  CHECK(before.json()["role_map"]["staff"] == json::array({"user"}));
  // The next sign-in has the new roles.
  auto a2 = login(b, "alice@corp", "alice-pw-123");
  REQUIRE(a2.status == 200);
  CHECK(a2.json()["roles"] == json::array({"agent", "user"}));
  // And the recheck of a token: staff back to user alone, seen at alice's next check.
  REQUIRE(b.call("PATCH", path, {{"role_map", directory_body(ldap)["role_map"]}}).status == 200);
  b.advance_clock_ms(61'000);
  CHECK(b.call("GET", "/v1/users/" + alice_id, nullptr, alice_tok).status == 200);
  CHECK(b.call("GET", "/v1/users/" + alice_id).json()["roles"] == json::array({"user"}));

  // The service account's password is rotated in the directory: sign-ins fail (503) until
  // the directory gets the new one.
  const std::string rotated = "svc-rotated-pw-456";
  REQUIRE(ldap.modify("ldapmodify", std::string("dn: ") + Slapd::kServiceDn +
                                        "\nchangetype: modify\nreplace: userPassword\n"
                                        "userPassword: " +
                                        rotated + "\n") == 0);
  auto down = login(b, "bob@corp", "bob-pw-123");
  CHECK(down.status == 503);
  CHECK(down.json()["reason"] == "directory_unavailable");
  auto rot = b.call("PATCH", path, {{"bind_password", rotated}});
  REQUIRE_MESSAGE(rot.status == 200, rot.body);
  CHECK(rot.body.find(rotated) == std::string::npos);
  CHECK_FALSE(rot.json().contains("bind_password_sealed"));
  CHECK(rot.json()["has_bind_password"] == true);
  CHECK(login(b, "bob@corp", "bob-pw-123").status == 200);
  CHECK(b.call("PATCH", path, {{"bind_password", "x-pw-1"}, {"bind_password_file", "/x"}})
            .json()["reason"] == "invalid_body");
  auto ev = b.call("GET", "/v1/events?type=DirectoryUpdated");
  REQUIRE(ev.status == 200);
  CHECK(ev.json()["items"].size() == 3);
  CHECK(ev.body.find(rotated) == std::string::npos);
  CHECK(ev.json()["items"][2]["data"]["bind_password_sealed"] == "[redacted]");
  CHECK(b.call("GET", path).body.find(rotated) == std::string::npos);
  for (const auto& [file, bytes] : atrium::testing::file_contents(b.data_dir())) {
    CHECK_MESSAGE(bytes.find(rotated) == std::string::npos, file);
  }

  // Renamed: its users follow (same ids), and sign in under the new name.
  auto rn = b.call("PATCH", path, {{"name", "corp2"}});
  REQUIRE_MESSAGE(rn.status == 200, rn.body);
  auto u = b.call("GET", "/v1/users/" + alice_id).json();
  CHECK(u["name"] == "alice@corp2");
  CHECK(u["directory"]["groups"] ==
        json::array({"devs@corp2", "engineering@corp2", "staff@corp2"}));
  auto a3 = login(b, "alice@corp2", "alice-pw-123");
  REQUIRE_MESSAGE(a3.status == 200, a3.body);
  CHECK(a3.json()["user_id"] == alice_id);
  CHECK(login(b, "alice@corp", "alice-pw-123").status == 401);
  // All of it replays.
  b.restart();
  CHECK(b.call("GET", "/v1/users/" + alice_id).json()["name"] == "alice@corp2");
  CHECK(b.call("GET", path).json()["version"] == 5);
  CHECK(login(b, "bob@corp2", "bob-pw-123").status == 200);
}

TEST_CASE(
    "an admin's role grant to a directory user survives its sign-ins; revoking a role its "
    "directory gives is 409 role_from_directory") {
  Slapd ldap;
  if (!ldap.ok()) {
    MESSAGE("skipped: " << ldap.why());
    return;
  }
  TestBroker b(fast);
  REQUIRE(b.call("POST", "/v1/directories", directory_body(ldap)).status == 201);
  auto a = login(b, "alice@corp", "alice-pw-123");
  REQUIRE(a.status == 200);
  std::string alice_id = a.json()["user_id"], upath = "/v1/users/" + alice_id;
  auto u = b.call("GET", upath).json();
  CHECK(u["directory_roles"] == json::array({"user"}));
  CHECK(u["granted_roles"] == json::array());
  // The admin makes alice an admin too.
  auto g = b.call("PATCH", upath, {{"roles", {"user", "admin"}}});
  REQUIRE_MESSAGE(g.status == 200, g.body);
  CHECK(g.json()["roles"] == json::array({"admin", "user"}));
  CHECK(g.json()["granted_roles"] == json::array({"admin"}));
  // She signs in again: the directory still gives user only, the grant stays.
  auto a2 = login(b, "alice@corp", "alice-pw-123");
  REQUIRE(a2.status == 200);
  CHECK(a2.json()["roles"] == json::array({"admin", "user"}));
  CHECK(b.call("GET", "/v1/directories", nullptr, a2.json()["token"].get<std::string>()).status ==
        200);
  u = b.call("GET", upath).json();
  CHECK(u["roles"] == json::array({"admin", "user"}));
  CHECK(u["directory_roles"] == json::array({"user"}));
  CHECK(u["granted_roles"] == json::array({"admin"}));
  // Revoking the role the directory gives: refused, with what to change instead.
  auto r = b.call("PATCH", upath, {{"roles", {"admin"}}});
  CHECK(r.status == 409);
  CHECK(r.json()["reason"] == "role_from_directory");
  CHECK(b.call("GET", upath).json()["roles"] == json::array({"admin", "user"}));
  // Survives a restart (replay), then the grant is withdrawn.
  b.restart();
  CHECK(b.call("GET", upath).json()["granted_roles"] == json::array({"admin"}));
  auto w = b.call("PATCH", upath, {{"granted_roles", json::array()}});
  REQUIRE_MESSAGE(w.status == 200, w.body);
  CHECK(w.json()["roles"] == json::array({"user"}));
  CHECK(login(b, "alice@corp", "alice-pw-123").json()["roles"] == json::array({"user"}));
}

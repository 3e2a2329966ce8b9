// Directories, just-in-time directory users and group entitlements (domain/directories.h).
#include "domain/directories.h"

#include <doctest/doctest.h>

#include "domain/placement.h"
#include "pools_fixture.h"

using namespace atrium::domain;
using namespace atrium::domain::testing;

namespace {

Directory dir(const std::string& id, const std::string& name) {
  Directory d;
  d.id = id;
  d.name = name;
  d.kind = "ldap";
  d.urls = {"ldaps://127.0.0.1:636"};
  d.bind_dn = "cn=svc,dc=x";
  d.bind_password_sealed = "c2VhbGVk";
  d.user_base = "ou=people,dc=x";
  d.user_filter = "(objectClass=inetOrgPerson)";
  d.name_attribute = "uid";
  d.id_attribute = "entryUUID";
  d.group_base = "ou=groups,dc=x";
  d.group_filter = "(objectClass=groupOfNames)";
  d.role_map = {{"staff", {"user"}}, {"admins", {"admin", "user"}}};
  return d;
}

ProvisionDirectoryUser prov(const std::string& new_id, const std::string& ext,
                            const std::string& name, std::set<std::string> groups) {
  return ProvisionDirectoryUser{
      new_id,           "d1", ext, "uid=" + name + ",ou=people,dc=x", name + "@corp", {"user"},
      std::move(groups)};
}

}  // namespace

TEST_CASE(
    "directory definitions: validated with a specific reason, the password never in the view") {
  Given g;
  auto bad = [&](auto edit, const std::string& reason) {
    Directory d = dir("dx", "x");
    edit(d);
    CHECK(g.err(CreateDirectory{d}).reason == reason);
  };
  bad([](Directory& d) { d.name = "Corp!"; }, "invalid_directory");
  bad([](Directory& d) { d.kind = "nis"; }, "invalid_directory");
  bad([](Directory& d) { d.urls = {"http://x"}; }, "invalid_directory");
  bad([](Directory& d) { d.urls = {"ldap://127.0.0.1"}; }, "plaintext_not_allowed");
  bad([](Directory& d) { d.bind_password_sealed.clear(); }, "invalid_directory");
  bad([](Directory& d) { d.bind_password_file = "/etc/pw"; }, "invalid_directory");  // both
  bad([](Directory& d) { d.user_filter = "uid=*"; }, "invalid_directory");
  bad([](Directory& d) { d.role_map = {{"g", {"root"}}}; }, "invalid_roles");
  bad([](Directory& d) { d.timeout_ms = 10; }, "invalid_directory");
  Directory starttls = dir("d0", "plain-ok");
  starttls.urls = {"ldap://127.0.0.1"};
  starttls.starttls = true;
  g.ok(CreateDirectory{starttls});
  auto es = g.ok(CreateDirectory{dir("d1", "corp")});
  REQUIRE(types(es) == V{"DirectoryCreated"});
  CHECK(es[0].data.value("bind_password_sealed", "") == "c2VhbGVk");  // sealed, never plain
  CHECK(g.err(CreateDirectory{dir("d2", "corp")}).reason == "directory_name_taken");
  Json view = directory_to_json(*g.s.directories.find("d1"));
  CHECK_FALSE(view.contains("bind_password_sealed"));
  CHECK(view["has_bind_password"] == true);
  CHECK(roles_for_groups(*g.s.directories.find("d1"), {"admins", "other"}) ==
        std::set<std::string>{"admin", "user"});
  g.check_replay();
}

TEST_CASE("directory users: provisioned once by stable id, renamed in place, refused names") {
  Given g;
  g.ok(CreateDirectory{dir("d1", "corp")});
  auto es = g.ok(prov("u1", "uuid-a", "alice", {"staff@corp"}));
  REQUIRE(types(es) == V{"UserCreated"});
  const User* u = g.s.users.find_external("d1", "uuid-a");
  REQUIRE(u != nullptr);
  CHECK(u->id == "u1");
  CHECK(u->name == "alice@corp");
  CHECK(u->password_hash.empty());
  // The same answer again: nothing to record.
  CHECK(g.ok(prov("u9", "uuid-a", "alice", {"staff@corp"})).empty());
  // Renamed in the directory: the same user (same id), the new name, the old one free.
  es = g.ok(prov("u9", "uuid-a", "alicia", {"staff@corp"}));
  CHECK(types(es) == V{"UserUpdated"});
  CHECK(g.s.users.find_by_name("alicia@corp")->id == "u1");
  CHECK(g.s.users.find_by_name("alice@corp") == nullptr);
  CHECK(g.s.users.find("u9") == nullptr);
  // A local user already holds the name another directory user would get.
  g.ok(CreateUser{"l1", "bob@corp", {"user"}, ""});
  CHECK(g.err(prov("u2", "uuid-b", "bob", {})).reason == "user_name_taken");
  // Disabled in Atrium: the directory cannot bring it back.
  g.ok(UpdateUser{"u1", std::nullopt, std::nullopt, std::nullopt, true});
  CHECK(g.err(prov("", "uuid-a", "alicia", {})).reason == "user_disabled");
  // A directory with users cannot be deleted; the tokens of a user the directory lost end.
  CHECK(g.err(DeleteDirectory{"d1", std::nullopt}).reason == "directory_has_users");
  g.ok(prov("u3", "uuid-c", "carol", {}));
  g.ok(IssueToken{"u3", std::string(64, 'a'), 5000});
  g.ok(IssueToken{"u3", std::string(64, 'b'), 5000});
  CHECK(types(g.ok(RevokeUserTokens{"u3", "directory_user_gone"})) ==
        V{"TokenRevoked", "TokenRevoked"});
  CHECK(g.s.users.authenticate(std::string(64, 'a'), 2000) == nullptr);
  g.check_replay();
}

TEST_CASE(
    "group entitlements: launches resolve groups; removing one, or leaving a group, ends what it "
    "gave") {
  Given g = base("dedicated", 3);
  g.ok(CreateDirectory{dir("d1", "corp")});
  g.ok(prov("da", "uuid-a", "dana", {"staff@corp"}));
  g.ok(prov("de", "uuid-e", "eve", {"staff@corp", "devs@corp"}));
  provision(g, "p");
  provision(g, "p");
  CHECK(g.err(LaunchDesktop{"s1", "da", "p"}).reason == "not_entitled");
  CHECK(g.err(AddEntitlement{"p", "", "staff@nowhere"}).reason == "unknown_group");
  CHECK(types(g.ok(AddEntitlement{"p", "", "staff@corp"})) == V{"PoolEntitlementAdded"});
  g.ok(AddEntitlement{"p", "", "devs@corp"});
  g.ok(LaunchDesktop{"s1", "da", "p"});
  g.ok(LaunchDesktop{"s2", "de", "p"});
  CHECK(g.s.pools.assigned("p", "da") != nullptr);
  // Dana leaves staff (seen at her next sign-in or recheck): her session and desk end.
  auto es = g.ok(prov("", "uuid-a", "dana", {}));
  CHECK(types(es) == V{"UserUpdated", "DesktopSessionEnded", "DesktopUnassigned"});
  CHECK(g.s.pools.assigned("p", "da") == nullptr);
  CHECK(g.err(LaunchDesktop{"s3", "da", "p"}).reason == "not_entitled");
  // Removing staff: eve keeps hers through devs.
  es = g.ok(RemoveEntitlement{"p", "", "staff@corp"});
  CHECK(types(es) == V{"PoolEntitlementRemoved"});
  CHECK(g.s.pools.assigned("p", "de") != nullptr);
  // Removing devs too ends eve's.
  es = g.ok(RemoveEntitlement{"p", "", "devs@corp"});
  CHECK(types(es) == V{"DesktopSessionEnded", "DesktopUnassigned", "PoolEntitlementRemoved"});
  for (const auto& [id, m] : g.s.pools.members) CHECK(m.assigned_user.empty());
  // A user entitled by name and by group keeps the pool when the group goes.
  g.ok(AddEntitlement{"p", "de"});
  g.ok(AddEntitlement{"p", "", "devs@corp"});
  CHECK(types(g.ok(RemoveEntitlement{"p", "", "devs@corp"})) == V{"PoolEntitlementRemoved"});
  CHECK(entitled(g.s, *g.s.pools.pool("p"), "de"));
  g.check_replay();
}

TEST_CASE("group authorizations: launches resolve groups; join subset rules hold for groups") {
  Given g;
  g.ctx.now_ms = 10'000'000;
  g.ok(CreateDirectory{dir("d1", "corp")});
  g.ok(prov("da", "uuid-a", "dana", {"staff@corp"}));
  g.ok(prov("de", "uuid-e", "eve", {"devs@corp"}));
  auto srv = [](const std::string& id) {
    return CreateServer{id, "server " + id, id + ".example.org", "windows", "2019", 4, 8192, true};
  };
  auto app_on = [](const std::string& s) {
    return AddServerApplication{s, "calc", "C:\\calc.exe", "calc", "/calc.desktop"};
  };
  std::string calc = application_id("calc", "C:\\calc.exe");
  g.ok(CreateCluster{"c1", "cluster c1", "", {}});
  g.ok(srv("s1"));
  g.ok(srv("s2"));
  g.ok(app_on("s1"));
  g.ok(app_on("s2"));
  g.ok(JoinCluster{"s1", "c1", std::nullopt});
  g.ok(Publish{"pc", calc, Scope::cluster, "c1"});
  g.ok(Publish{"ps", calc, Scope::server, "s2"});
  CHECK(g.err(Authorize{"a0", "group:staff@nowhere", calc, Scope::cluster, "c1"}).reason ==
        "unknown_group");
  auto es = g.ok(Authorize{"a1", "group:staff@corp", calc, Scope::cluster, "c1"});
  CHECK(es[0].data["user_id"] == "group:staff@corp");
  CHECK(authorization_to_json(*g.s.appcloud.authorization("a1"))["group"] == "staff@corp");
  CHECK(g.err(Authorize{"a2", "group:staff@corp", calc, Scope::cluster, "c1"}).reason ==
        "already_authorized");
  // Loads come from the liveness table now (issue 11), not the log.
  LoadLookup loads = [&](const std::string&) -> std::optional<LoadReport> {
    return LoadReport{0.1, 0.1, 0, g.ctx.now_ms, 0};
  };
  // dana (in staff) may launch, placed in the cluster; eve (in devs) may not.
  es = g.ok(LaunchApplication{"x1", "da", calc, {}, loads});
  CHECK(es[0].data["server_id"] == "s1");
  CHECK(g.err(LaunchApplication{"x2", "de", calc, {}, loads}).reason == "not_authorized");
  CHECK(g.s.appcloud.entitlements("da", g.s.users.find("da")->groups).size() == 1);
  CHECK(g.s.appcloud.entitlements("de", g.s.users.find("de")->groups).empty());
  // A group authorized on s2 but not in c1: s2 may not join (subset rule, as for a user).
  g.ok(Authorize{"a3", "group:devs@corp", calc, Scope::server, "s2"});
  CHECK(g.err(JoinCluster{"s2", "c1", std::nullopt}).reason == "join_authorizations_not_subset");
  g.ok(Unauthorize{"a3", std::nullopt});
  // staff on s2 as well as in c1: on join the server-scope one is dropped (rule 3).
  g.ok(Authorize{"a4", "group:staff@corp", calc, Scope::server, "s2"});
  es = g.ok(JoinCluster{"s2", "c1", std::nullopt});
  bool dropped = false;
  for (const auto& e : es)
    dropped = dropped || (e.type == "ApplicationUnauthorized" && e.stream == "authorization-a4");
  CHECK(dropped);
  g.check_replay();
}

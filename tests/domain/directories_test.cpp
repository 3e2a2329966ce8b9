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

// ---- PATCH /v1/directories/{id} (UpdateDirectory) ------------------------------------------
TEST_CASE(
    "directory update: fields given change, validated as at create, replayed; stale "
    "version refused") {
  Given g;
  g.ok(CreateDirectory{dir("d1", "corp")});
  g.ok(CreateDirectory{dir("d2", "other")});
  UpdateDirectory c{"d1"};
  c.role_map = std::map<std::string, std::set<std::string>>{{"staff", {"user", "agent"}}};
  c.timeout_ms = 2000;
  c.expected_version = 1;
  auto es = g.ok(c);
  REQUIRE(types(es) == V{"DirectoryUpdated"});
  CHECK(es[0].data.size() == 2);  // only what changed
  CHECK(es[0].data["timeout_ms"] == 2000);
  const Directory* d = g.s.directories.find("d1");
  CHECK(d->role_map.at("staff") == std::set<std::string>{"user", "agent"});
  CHECK(d->role_map.count("admins") == 0);
  CHECK(d->timeout_ms == 2000);
  CHECK(d->version == 2);
  CHECK(d->bind_password_sealed == "c2VhbGVk");  // untouched
  // The same again: nothing to record. A stale version: refused.
  c.expected_version = std::nullopt;
  CHECK(g.ok(c).empty());
  c.expected_version = 1;
  CHECK(g.err(c).reason == "version_mismatch");
  // The rules of create hold for the result.
  auto bad = [&](auto edit, const std::string& reason) {
    UpdateDirectory u{"d1"};
    edit(u);
    CHECK(g.err(u).reason == reason);
  };
  bad([](UpdateDirectory& u) { u.urls = std::vector<std::string>{"ldap://127.0.0.1"}; },
      "plaintext_not_allowed");
  bad([](UpdateDirectory& u) { u.timeout_ms = 10; }, "invalid_directory");
  bad([](UpdateDirectory& u) { u.user_filter = "uid=*"; }, "invalid_directory");
  bad([](UpdateDirectory& u) { u.name = "Corp!"; }, "invalid_directory");
  bad([](UpdateDirectory& u) { u.name = "other"; }, "directory_name_taken");
  bad(
      [](UpdateDirectory& u) {
        u.role_map = std::map<std::string, std::set<std::string>>{{"g", {"root"}}};
      },
      "invalid_roles");
  bad(
      [](UpdateDirectory& u) {
        u.bind_password_sealed = "bmV3";
        u.bind_password_file = "/etc/pw";
      },
      "invalid_directory");
  UpdateDirectory dflt{"d2"};
  dflt.is_default = true;
  g.ok(dflt);
  dflt.id = "d1";
  CHECK(g.err(dflt).reason == "default_directory_exists");
  CHECK(g.err(UpdateDirectory{"nope"}).code == atrium::Code::not_found);
  // StartTLS and a plain URL together are fine, as at create; ca_file "" clears it.
  UpdateDirectory tls{"d1"};
  tls.urls = std::vector<std::string>{"ldap://127.0.0.1:389", "ldaps://127.0.0.1:636"};
  tls.starttls = true;
  tls.ca_file = "/etc/ca.pem";
  g.ok(tls);
  CHECK(g.s.directories.find("d1")->urls.size() == 2);
  UpdateDirectory clear{"d1"};
  clear.ca_file = "";
  CHECK(g.ok(clear)[0].data["ca_file"] == "");
  CHECK(g.s.directories.find("d1")->ca_file.empty());
  g.check_replay();
}

TEST_CASE("directory update: a new bind password is recorded sealed only; a file replaces it") {
  Given g;
  g.ok(CreateDirectory{dir("d1", "corp")});
  UpdateDirectory c{"d1"};
  c.bind_password_sealed = "bmV3LXNlYWxlZA==";
  auto es = g.ok(c);
  REQUIRE(types(es) == V{"DirectoryUpdated"});
  CHECK(es[0].data == Json{{"bind_password_sealed", "bmV3LXNlYWxlZA=="}});
  CHECK(g.s.directories.find("d1")->bind_password_sealed == "bmV3LXNlYWxlZA==");
  CHECK_FALSE(directory_to_json(*g.s.directories.find("d1")).contains("bind_password_sealed"));
  UpdateDirectory f{"d1"};
  f.bind_password_file = "/etc/atrium/bind.pw";
  es = g.ok(f);
  CHECK(es[0].data["bind_password_file"] == "/etc/atrium/bind.pw");
  CHECK(es[0].data["bind_password_sealed"] == "");
  CHECK(g.s.directories.find("d1")->bind_password_sealed.empty());
  CHECK(directory_to_json(*g.s.directories.find("d1"))["has_bind_password"] == true);
  g.check_replay();
}

TEST_CASE(
    "directory update: a rename keeps its users (ids, groups follow); refused while its "
    "groups are entitled or the id attribute would change under users") {
  Given g = base("dedicated", 3);
  g.ok(CreateDirectory{dir("d1", "corp")});
  g.ok(prov("da", "uuid-a", "dana", {"staff@corp"}));
  UpdateDirectory idattr{"d1"};
  idattr.id_attribute = "uid";
  CHECK(g.err(idattr).reason == "directory_has_users");
  g.ok(AddEntitlement{"p", "", "staff@corp"});
  UpdateDirectory rn{"d1"};
  rn.name = "corp2";
  CHECK(g.err(rn).reason == "directory_groups_in_use");
  g.ok(RemoveEntitlement{"p", "", "staff@corp"});
  // A local user holding the name a renamed user would get: refused, nothing changed.
  g.ok(CreateUser{"l1", "dana@corp3", {"user"}, ""});
  UpdateDirectory taken{"d1"};
  taken.name = "corp3";
  CHECK(g.err(taken).reason == "user_name_taken");
  auto es = g.ok(rn);
  CHECK(types(es) == V{"DirectoryUpdated", "UserUpdated"});
  const User* u = g.s.users.find("da");
  CHECK(u->name == "dana@corp2");
  CHECK(u->groups == std::set<std::string>{"staff@corp2"});
  CHECK(g.s.users.find_by_name("dana@corp") == nullptr);
  CHECK(g.s.directories.find_by_name("corp2")->id == "d1");
  CHECK(g.s.directories.find_by_name("corp") == nullptr);
  // Her next sign-in (as dana@corp2) is the same user, and changes nothing.
  ProvisionDirectoryUser again = prov("dx", "uuid-a", "dana", {"staff@corp2"});
  again.name = "dana@corp2";
  CHECK(g.ok(again).empty());
  CHECK(g.s.users.find("dx") == nullptr);
  g.check_replay();
}

// ---- admin grants on directory users ------------------------------------------------------
TEST_CASE(
    "directory users: an admin's grant survives sign-ins; a role from the directory "
    "cannot be revoked in Atrium") {
  Given g;
  g.ok(CreateUser{"root", "root", {"admin"}, ""});
  g.ok(CreateDirectory{dir("d1", "corp")});
  g.ok(prov("u1", "uuid-a", "alice", {"staff@corp"}));
  const User* u = g.s.users.find("u1");
  CHECK(u->directory_roles == std::set<std::string>{"user"});
  CHECK(u->granted_roles.empty());
  // The admin grants admin: recorded as a grant.
  auto es = g.ok(UpdateUser{"u1", std::nullopt, std::set<std::string>{"user", "admin"}});
  REQUIRE(types(es) == V{"UserUpdated"});
  CHECK(es[0].data["granted_roles"] == Json::array({"admin"}));
  u = g.s.users.find("u1");
  CHECK(u->roles == std::set<std::string>{"admin", "user"});
  // She signs in again (the role_map still gives only user): the grant stays.
  CHECK(g.ok(prov("", "uuid-a", "alice", {"staff@corp"})).empty());
  CHECK(g.s.users.find("u1")->roles == std::set<std::string>{"admin", "user"});
  // The role_map now gives her nothing: the directory's role goes, the grant stays.
  ProvisionDirectoryUser none = prov("", "uuid-a", "alice", {});
  none.roles = {};
  es = g.ok(none);
  CHECK(es[0].data["directory_roles"] == Json::array());
  CHECK(g.s.users.find("u1")->roles == std::set<std::string>{"admin"});
  g.ok(prov("", "uuid-a", "alice", {"staff@corp"}));
  // Revoking the directory's role in Atrium: refused, with what to do instead.
  auto e = g.err(UpdateUser{"u1", std::nullopt, std::set<std::string>{"admin"}});
  CHECK(e.reason == "role_from_directory");
  CHECK(e.message.find("role_map") != std::string::npos);
  // Revoking the grant: the directory's role stays.
  es = g.ok(UpdateUser{"u1", std::nullopt, std::set<std::string>{"user"}});
  CHECK(es[0].data["granted_roles"] == Json::array());
  CHECK(g.s.users.find("u1")->roles == std::set<std::string>{"user"});
  // granted_roles directly: for directory users only, not with roles.
  UpdateUser direct{"u1"};
  direct.granted_roles = std::set<std::string>{"agent"};
  g.ok(direct);
  CHECK(g.s.users.find("u1")->roles == std::set<std::string>{"agent", "user"});
  direct.roles = std::set<std::string>{"user"};
  CHECK(g.err(direct).reason == "invalid_roles");
  UpdateUser local{"root"};
  local.granted_roles = std::set<std::string>{"user"};
  CHECK(g.err(local).reason == "invalid_roles");
  // A local user's roles are all its own, as before.
  CHECK(g.s.users.find("root")->granted_roles == std::set<std::string>{"admin"});
  CHECK(user_to_json(*g.s.users.find("u1"))["directory_roles"] == Json::array({"user"}));
  CHECK(user_to_json(*g.s.users.find("u1"))["granted_roles"] == Json::array({"agent"}));
  g.check_replay();
}

TEST_CASE(
    "directory users: logs from before the split replay (their roles were the "
    "directory's)") {
  State s;
  uint64_t pos = 0;
  auto apply = [&](const std::string& stream, const std::string& type, Json data) {
    Applied at{++pos, s.version_of(stream) + 1, 1000};
    evolve(s, Event{stream, type, 1, std::move(data)}, at);
  };
  apply("directory-d1", "DirectoryCreated",
        Json{{"id", "d1"},
             {"name", "corp"},
             {"kind", "ldap"},
             {"urls", {"ldaps://x"}},
             {"bind_dn", "cn=s"},
             {"bind_password_sealed", "eA=="},
             {"user_base", "o=x"},
             {"user_filter", "(a=b)"},
             {"name_attribute", "uid"},
             {"id_attribute", "entryUUID"},
             {"group_base", "o=g"},
             {"group_filter", "(a=b)"},
             {"role_map", Json::object()}});
  apply("user-u1", "UserCreated",
        Json{{"id", "u1"},
             {"name", "alice@corp"},
             {"roles", {"user"}},
             {"password_hash", ""},
             {"directory_id", "d1"},
             {"external_id", "x"},
             {"groups", Json::array()}});
  apply("user-u1", "UserUpdated", Json{{"roles", {"admin", "user"}}});
  apply("user-l1", "UserCreated",
        Json{{"id", "l1"}, {"name", "bob"}, {"roles", {"user"}}, {"password_hash", ""}});
  const User* u = s.users.find("u1");
  CHECK(u->roles == std::set<std::string>{"admin", "user"});
  CHECK(u->directory_roles == std::set<std::string>{"admin", "user"});
  CHECK(u->granted_roles.empty());
  CHECK(s.users.find("l1")->granted_roles == std::set<std::string>{"user"});
  CHECK(s.users.enabled_admins == 1);
  // A snapshot from before the split (roles alone) reads the same way.
  Json snap = state_to_json(s);
  for (auto& [id, uj] : snap["users"]["users"].items()) {
    uj.erase("directory_roles");
    uj.erase("granted_roles");
  }
  auto back = state_from_json(snap);
  REQUIRE(back.ok());
  CHECK(state_to_json(*back) == state_to_json(s));
}

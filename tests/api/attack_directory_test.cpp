// Attack cases on directory sign-in (finding 14): LDAP filter metacharacters in a login, and
// directory definitions (plaintext, echoed passwords, bad bodies, non-admins, an unreachable
// directory), against a real slapd the tests start. Each case failed on the code before its
// fix; keep them.
#include <doctest/doctest.h>

#include <string>

#include "api/daemon.h"
#include "support/slapd.h"
#include "support/test_support.h"

using atrium::testing::TestBroker;
using nlohmann::json;

// ==== 14: directory sign-in and the second factor ============================================
TEST_CASE("14.1: LDAP filter metacharacters in a login are escaped, not a wildcard or a clause") {
  atrium::testing::Slapd ldap;
  if (!ldap.ok()) {
    MESSAGE("skipped: " << ldap.why());
    return;
  }
  TestBroker b;
  json dir{{"name", "corp"},
           {"urls", {ldap.ldaps_url()}},
           {"bind_dn", atrium::testing::Slapd::kServiceDn},
           {"bind_password", atrium::testing::Slapd::kServicePassword},
           {"user_base", "ou=people,dc=atrium,dc=test"},
           {"group_base", "ou=groups,dc=atrium,dc=test"},
           {"ca_file", ldap.ca_file()},
           {"role_map", {{"*", {"user"}}}}};
  REQUIRE(b.call("POST", "/v1/directories", dir).status == 201);
  // Each would match alice (or everyone) if pasted into the filter unescaped.
  for (const char* name :
       {"*@corp", "a*@corp", "alice)(uid=*@corp", "*)(|(uid=*@corp", "alice\\2a@corp"}) {
    auto r = b.call("POST", "/v1/auth/login", {{"name", name}, {"password", "alice-pw-123"}}, "");
    CHECK_MESSAGE(r.status == 401, name);
    CHECK(r.json()["reason"] == "bad_credentials");
  }
  CHECK(b.call("POST", "/v1/auth/login", {{"name", "alice@corp"}, {"password", "alice-pw-123"}}, "")
            .status == 200);
}

TEST_CASE(
    "14.2: directory definitions: no plaintext unless said, no password echoed, bad bodies 400") {
  TestBroker b;
  json base{{"name", "corp"},           {"urls", {"ldaps://127.0.0.1:1"}},
            {"bind_dn", "cn=svc"},      {"bind_password", "s3cret-bind-pw"},
            {"user_base", "ou=people"}, {"group_base", "ou=groups"}};
  auto with = [&](const char* k, json v) {
    json j = base;
    if (v.is_null()) {
      j.erase(k);
    } else {
      j[k] = v;
    }
    return b.call("POST", "/v1/directories", j);
  };
  CHECK(with("urls", {"ldap://127.0.0.1:1"}).json()["reason"] == "plaintext_not_allowed");
  CHECK(with("urls", {"http://127.0.0.1:1"}).status == 400);
  CHECK(with("urls", json::array()).status == 400);
  CHECK(with("kind", "nis").status == 400);
  CHECK(with("name", "Corp Name").status == 400);
  CHECK(with("role_map", {{"g", {"root"}}}).status == 400);
  CHECK(with("role_map", {{"g", "admin"}}).status == 400);
  CHECK(with("timeout_ms", "soon").status == 400);
  CHECK(with("bind_password_file", "/etc/passwd").status == 400);  // both given
  CHECK(with("color", "red").status == 400);
  auto ok = with("urls", {"ldap://127.0.0.1:1"});
  CHECK(ok.status == 400);
  auto created = with("starttls", true);
  REQUIRE(created.status == 201);
  CHECK(created.body.find("s3cret-bind-pw") == std::string::npos);
  CHECK(b.call("GET", "/v1/directories").body.find("s3cret") == std::string::npos);
  CHECK(b.call("GET", "/v1/events?limit=1000").body.find("s3cret-bind-pw") == std::string::npos);
  // A non-admin may not list or add directories.
  auto [uid, tok] = b.user("mallory");
  CHECK(b.call("GET", "/v1/directories", nullptr, tok).status == 403);
  CHECK(b.call("POST", "/v1/directories", base, tok).status == 403);
  // The directory is unreachable (port 1): 503 for its users, never 401; locals still sign in.
  auto down = b.call("POST", "/v1/auth/login", {{"name", "x@corp"}, {"password", "whatever1"}}, "");
  CHECK(down.status == 503);
  CHECK(down.json()["reason"] == "directory_unavailable");
  CHECK(
      b.call("POST", "/v1/auth/login", {{"name", "mallory"}, {"password", "password-mallory"}}, "")
          .status == 200);
}

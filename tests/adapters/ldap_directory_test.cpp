// adapters/ldap_directory.h against a real slapd (tests/support/slapd.h): search as the
// service account, bind as the user, nested groups, a disabled user, URLs tried in order,
// certificate checks, the directory down.
#include "adapters/ldap_directory.h"

#include <doctest/doctest.h>

#include "support/slapd.h"

using atrium::Code;
using atrium::adapters::make_ldap_directory_client;
using atrium::testing::Slapd;

namespace {

atrium::domain::Directory test_directory(const Slapd& ldap) {
  atrium::domain::Directory d;
  d.id = "d1";
  d.name = "corp";
  d.kind = "ldap";
  d.urls = {ldap.ldaps_url()};
  d.bind_dn = Slapd::kServiceDn;
  d.user_base = std::string("ou=people,") + Slapd::kBase;
  d.user_filter = "(&(objectClass=inetOrgPerson)(!(employeeType=disabled)))";
  d.name_attribute = "uid";
  d.id_attribute = "entryUUID";
  d.group_base = std::string("ou=groups,") + Slapd::kBase;
  d.group_filter = "(objectClass=groupOfNames)";
  d.ca_file = ldap.ca_file();
  d.timeout_ms = 2000;
  return d;
}

}  // namespace

TEST_CASE("ldap directory: sign-in, nested groups, refusals, failover, TLS checks") {
  Slapd ldap;
  if (!ldap.ok()) {
    MESSAGE("skipped: " << ldap.why());
    return;
  }
  auto client = make_ldap_directory_client();
  auto d = test_directory(ldap);
  const std::string pw = Slapd::kServicePassword;

  SUBCASE("alice signs in with her entryUUID and every nested group") {
    auto e = client->sign_in(d, pw, "alice", "alice-pw-123");
    REQUIRE_MESSAGE(e.ok(), e.error().message);
    CHECK(e->dn == std::string("uid=alice,ou=people,") + Slapd::kBase);
    CHECK(e->external_id == "0e3b6c52-7d2f-4c1a-9b1e-00000a11ce00");
    CHECK(e->login == "alice");
    CHECK(e->groups == std::set<std::string>{"devs", "engineering", "staff"});
    auto again = client->lookup(d, pw, e->external_id);
    REQUIRE(again.ok());
    CHECK(again->dn == e->dn);
  }
  SUBCASE("wrong password, unknown user, empty password, disabled user: bad_credentials") {
    for (auto [name, pass] : {std::pair{"alice", "wrong-password"}, std::pair{"nobody", "x-pw-123"},
                              std::pair{"alice", ""}, std::pair{"carol", "carol-pw-123"},
                              std::pair{"*", "alice-pw-123"}}) {
      auto e = client->sign_in(d, pw, name, pass);
      REQUIRE_FALSE(e.ok());
      CHECK(e.error().reason == "bad_credentials");
    }
  }
  SUBCASE("StartTLS on ldap://, and a dead first URL costs nothing but a refused connect") {
    d.starttls = true;
    d.urls = {"ldap://127.0.0.1:" + std::to_string(atrium::testing::child::free_port()),
              ldap.ldap_url()};
    auto e = client->sign_in(d, pw, "bob", "bob-pw-123");
    REQUIRE_MESSAGE(e.ok(), e.error().message);
    CHECK(e->groups == std::set<std::string>{"admins"});
  }
  SUBCASE("a certificate from another CA is refused: unavailable, not signed in") {
    d.ca_file = "/etc/ssl/certs/ca-certificates.crt";
    auto e = client->sign_in(d, pw, "alice", "alice-pw-123");
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().reason == "directory_unavailable");
  }
  SUBCASE("a wrong service password is the directory's problem, not the user's") {
    auto e = client->sign_in(d, "not-the-password", "alice", "alice-pw-123");
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().code == Code::unavailable);
  }
  SUBCASE("the directory stopped: unavailable; back: works again") {
    ldap.stop();
    auto e = client->sign_in(d, pw, "alice", "alice-pw-123");
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().reason == "directory_unavailable");
    REQUIRE(ldap.start());
    CHECK(client->sign_in(d, pw, "alice", "alice-pw-123").ok());
  }
  SUBCASE("a disabled user's lookup says gone") {
    CHECK(ldap.modify("ldapmodify", std::string("dn: uid=alice,ou=people,") + Slapd::kBase +
                                        "\nchangetype: modify\nadd: employeeType\n"
                                        "employeeType: disabled\n") == 0);
    auto e = client->lookup(d, pw, "0e3b6c52-7d2f-4c1a-9b1e-00000a11ce00");
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().reason == "directory_user_gone");
  }
}

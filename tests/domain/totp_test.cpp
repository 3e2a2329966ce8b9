// The second factor's rules (domain/totp.h).
#include "domain/totp.h"

#include <doctest/doctest.h>

#include "given.h"

using namespace atrium::domain;
using namespace atrium::domain::testing;

TEST_CASE("TOTP rules: enroll, confirm, recovery once, reset, enforcement per user and role") {
  Given g;
  g.ok(CreateUser{"u1", "tina", {"user"}, ""});
  g.ok(CreateUser{"a1", "root", {"admin"}, ""});
  CHECK(g.err(ConfirmTotp{"u1", {"h1"}}).reason == "totp_not_enrolling");
  g.ok(StartTotpEnrollment{"u1", "sealed-1"});
  CHECK_FALSE(g.s.totp.enabled("u1"));
  g.ok(StartTotpEnrollment{"u1", "sealed-2"});  // a new secret replaces the pending one
  g.ok(ConfirmTotp{"u1", {"h1", "h2"}});
  CHECK(g.s.totp.enabled("u1"));
  CHECK(g.s.totp.find("u1")->secret_sealed == "sealed-2");
  CHECK(g.err(StartTotpEnrollment{"u1", "sealed-3"}).reason == "totp_enabled");
  g.ok(UseRecoveryCode{"u1", "h1"});
  CHECK(g.err(UseRecoveryCode{"u1", "h1"}).reason == "recovery_code_unknown");
  CHECK_FALSE(g.s.totp.required(*g.s.users.find("u1")));
  g.ok(SetTotpPolicy{{"user"}});
  CHECK(g.s.totp.required(*g.s.users.find("u1")));
  CHECK_FALSE(g.s.totp.required(*g.s.users.find("a1")));
  CHECK(g.err(SetTotpPolicy{{"root"}}).reason == "invalid_roles");
  g.ok(SetTotpRequired{"a1", true});
  CHECK(g.s.totp.required(*g.s.users.find("a1")));
  CHECK(g.ok(SetTotpRequired{"a1", true}).empty());
  g.ok(ResetTotp{"u1"});
  CHECK_FALSE(g.s.totp.enabled("u1"));
  CHECK(g.ok(ResetTotp{"u1"}).empty());
  g.check_replay();
}

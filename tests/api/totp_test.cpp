// TOTP (api/totp.h over liboath): the RFC 6238 test vectors, and over HTTP enrollment,
// confirmation, login with a code, replay, throttled wrong codes, recovery codes, enforcement.
#include "api/totp.h"

#include <doctest/doctest.h>
#include <liboath/oath.h>

#include <cstdlib>
#include <ctime>

#include "support/test_support.h"

using atrium::api::totp_code;
using atrium::api::totp_match;
using atrium::testing::TestBroker;
using nlohmann::json;

TEST_CASE("TOTP: the RFC 6238 appendix B test vectors (SHA-1 and SHA-256, 8 digits)") {
  const std::string sha1_key = "12345678901234567890";
  const std::string sha256_key = "12345678901234567890123456789012";
  struct V {
    int64_t t;
    const char* sha1;
    const char* sha256;
  };
  for (V v : {V{59, "94287082", "46119246"}, V{1111111109, "07081804", "68084774"},
              V{1111111111, "14050471", "67062674"}, V{1234567890, "89005924", "91819424"},
              V{2000000000, "69279037", "90698825"}, V{20000000000, "65353130", "77737706"}}) {
    CHECK(*totp_code(sha1_key, v.t, 8) == v.sha1);
    CHECK(*totp_code(sha256_key, v.t, 8, true) == v.sha256);
  }
  // Six digits, one step of skew either way, nothing beyond; junk is no match.
  std::string now = *totp_code(sha1_key, 1111111111);
  CHECK(now == "050471");
  CHECK(totp_match(sha1_key, 1111111111, now) == 1111111111 / 30);
  CHECK(totp_match(sha1_key, 1111111111 + 30, now) == 1111111111 / 30);
  CHECK(totp_match(sha1_key, 1111111111 - 30, now) == 1111111111 / 30);
  CHECK(totp_match(sha1_key, 1111111111 + 90, now) == -1);
  CHECK(totp_match(sha1_key, 1111111111, "05047") == -1);
  CHECK(totp_match(sha1_key, 1111111111, "05047x") == -1);
  std::string uri = atrium::api::totp_uri("Atrium", "alice@corp", sha1_key);
  CHECK(uri ==
        "otpauth://totp/Atrium:alice%40corp?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        "&issuer=Atrium&algorithm=SHA1&digits=6&period=30");
}

namespace {

std::string raw_secret(const std::string& base32) {
  char* out = nullptr;
  size_t len = 0;
  REQUIRE(oath_base32_decode(base32.data(), base32.size(), &out, &len) == OATH_OK);
  std::string s(out, len);
  std::free(out);
  return s;
}

}  // namespace

TEST_CASE(
    "TOTP over HTTP: enroll, confirm, login with a code, replay refused, wrong codes throttled, "
    "recovery") {
  int64_t offset_ms = 0;
  TestBroker b;
  auto now_s = [&] { return static_cast<int64_t>(std::time(nullptr)) + offset_ms / 1000; };
  auto [uid, tok] = b.user("tina");
  auto login = [&](const json& extra) {
    json body{{"name", "tina"}, {"password", "password-tina"}};
    for (auto& [k, v] : extra.items()) body[k] = v;
    return b.call("POST", "/v1/auth/login", body, "");
  };
  auto en = b.call("POST", "/v1/me/totp", nullptr, tok);
  REQUIRE_MESSAGE(en.status == 201, en.body);
  std::string uri = en.json()["otpauth_uri"];
  CHECK(uri.rfind("otpauth://totp/Atrium:tina?secret=", 0) == 0);
  std::string raw = raw_secret(en.json()["secret"]);
  // Until confirmed, nothing changes at login.
  CHECK(login({}).status == 200);
  auto bad = b.call("POST", "/v1/me/totp/confirm", {{"code", "000000"}}, tok);
  CHECK(bad.json()["reason"] == "totp_invalid");
  auto ok = b.call("POST", "/v1/me/totp/confirm", {{"code", *totp_code(raw, now_s())}}, tok);
  REQUIRE_MESSAGE(ok.status == 200, ok.body);
  auto recovery = ok.json()["recovery_codes"];
  REQUIRE(recovery.size() == 10);
  CHECK(b.call("POST", "/v1/me/totp", nullptr, tok).json()["reason"] == "totp_enabled");
  // The secret and the recovery codes are in no event as given.
  std::string events = b.call("GET", "/v1/events?limit=1000").body;
  CHECK(events.find(en.json()["secret"].get<std::string>()) == std::string::npos);
  CHECK(events.find(recovery[0].get<std::string>()) == std::string::npos);

  CHECK(login({}).json()["reason"] == "totp_required");
  b.advance_clock_ms(31'000);
  offset_ms += 31'000;
  std::string code = *totp_code(raw, now_s());
  CHECK(login({{"totp_code", code}}).status == 200);
  auto replay = login({{"totp_code", code}});
  CHECK(replay.status == 401);
  CHECK(replay.json()["reason"] == "totp_invalid");
  // Wrong codes (with the right password) count toward the throttle: the 11th is 429.
  int last = 0;
  for (int i = 0; i < 11; ++i) last = login({{"totp_code", "000000"}}).status;
  CHECK(last == 429);
  b.advance_clock_ms(61'000);
  offset_ms += 61'000;
  // A recovery code works once.
  std::string rc = recovery[3];
  CHECK(login({{"recovery_code", rc}}).status == 200);
  CHECK(login({{"recovery_code", rc}}).json()["reason"] == "totp_invalid");
  // An admin resets it: password alone again.
  CHECK(b.call("DELETE", "/v1/users/" + uid + "/totp").status == 204);
  CHECK(login({}).status == 200);
}

TEST_CASE("TOTP enforcement per role and per user: only enrollment is open until enrolled") {
  TestBroker b;
  auto [uid, tok] = b.user("ursula");
  auto [vid, vtok] = b.user("victor");
  CHECK(b.call("PUT", "/v1/totp-policy", {{"required_roles", {"root"}}}).status == 400);
  auto pol = b.call("PUT", "/v1/totp-policy", {{"required_roles", {"user"}}});
  REQUIRE_MESSAGE(pol.status == 200, pol.body);
  CHECK(b.call("GET", "/v1/totp-policy").json()["required_roles"] == json::array({"user"}));
  auto blocked = b.call("GET", "/v1/users/" + uid, nullptr, tok);
  CHECK(blocked.status == 403);
  CHECK(blocked.json()["reason"] == "totp_enrollment_required");
  auto en = b.call("POST", "/v1/me/totp", nullptr, tok);
  REQUIRE(en.status == 201);
  std::string raw = raw_secret(en.json()["secret"]);
  REQUIRE(
      b.call("POST", "/v1/me/totp/confirm", {{"code", *totp_code(raw, std::time(nullptr))}}, tok)
          .status == 200);
  CHECK(b.call("GET", "/v1/users/" + uid, nullptr, tok).status == 200);
  // Admins are not in the policy: the admin token still works; per user, too.
  CHECK(b.call("PUT", "/v1/totp-policy", {{"required_roles", json::array()}}).status == 200);
  CHECK(b.call("GET", "/v1/users/" + vid, nullptr, vtok).status == 200);
  auto req = b.call("PUT", "/v1/users/" + vid + "/totp-required", {{"required", true}});
  REQUIRE_MESSAGE(req.status == 200, req.body);
  CHECK(req.json()["required"] == true);
  CHECK(b.call("GET", "/v1/users/" + vid, nullptr, vtok).json()["reason"] ==
        "totp_enrollment_required");
}

// The console's users page shows each user's second factor: the user view carries it.
TEST_CASE("TOTP state in the user view: enabled, required per user or by role, reset") {
  TestBroker b;
  auto [uid, tok] = b.user("wanda");
  auto totp_of = [&] {
    auto r = b.call("GET", "/v1/users/" + uid);
    REQUIRE_MESSAGE(r.status == 200, r.body);
    return r.json()["totp"];
  };
  CHECK(totp_of() == json{{"enabled", false}, {"required", false}, {"required_for_user", false}});
  auto en = b.call("POST", "/v1/me/totp", nullptr, tok);
  REQUIRE(en.status == 201);
  CHECK(totp_of()["enabled"] == false);  // not before it is confirmed
  std::string raw = raw_secret(en.json()["secret"]);
  REQUIRE(
      b.call("POST", "/v1/me/totp/confirm", {{"code", *totp_code(raw, std::time(nullptr))}}, tok)
          .status == 200);
  CHECK(totp_of()["enabled"] == true);
  REQUIRE(b.call("PUT", "/v1/totp-policy", {{"required_roles", {"user"}}}).status == 200);
  CHECK(totp_of() == json{{"enabled", true}, {"required", true}, {"required_for_user", false}});
  REQUIRE(b.call("PUT", "/v1/users/" + uid + "/totp-required", {{"required", true}}).status == 200);
  REQUIRE(b.call("PUT", "/v1/totp-policy", {{"required_roles", json::array()}}).status == 200);
  CHECK(totp_of() == json{{"enabled", true}, {"required", true}, {"required_for_user", true}});
  REQUIRE(b.call("DELETE", "/v1/users/" + uid + "/totp").status == 204);
  CHECK(totp_of()["enabled"] == false);
  // The list and the user's own read say the same; never a secret.
  auto list = b.call("GET", "/v1/users");
  CHECK(list.body.find(en.json()["secret"].get<std::string>()) == std::string::npos);
  bool seen = false;
  json items = list.json()["items"];
  for (const auto& u : items) {
    if (u["id"] == uid) {
      seen = true;
      CHECK(u["totp"]["required_for_user"] == true);
    }
  }
  CHECK(seen);
}

// The second factor: codes (liboath), enrollment routes, the check at login and the
// enforcement of enrollment (issue 14).
#include "api/totp.h"

#include <liboath/oath.h>
#include <sodium.h>

#include <cstdlib>
#include <mutex>

#include "api/api.h"
#include "api/crypto.h"
#include "api/json_input.h"
#include "domain/state.h"

namespace atrium::api {

using domain::State;

namespace {
bool oath_ready() {
  static const bool ok = oath_init() == OATH_OK;
  return ok;
}
std::string uri_escape(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) != 0 || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}
}  // namespace

std::string totp_new_secret() {
  std::string raw(20, '\0');
  randombytes_buf(raw.data(), raw.size());
  return raw;
}

std::string totp_base32(const std::string& raw) {
  char* out = nullptr;
  size_t len = 0;
  if (!oath_ready() || oath_base32_encode(raw.data(), raw.size(), &out, &len) != OATH_OK) return {};
  std::string s(out, len);
  std::free(out);
  while (!s.empty() && s.back() == '=') s.pop_back();  // authenticator apps want no padding
  return s;
}

std::string totp_uri(const std::string& issuer, const std::string& account,
                     const std::string& raw) {
  return "otpauth://totp/" + uri_escape(issuer) + ":" + uri_escape(account) +
         "?secret=" + totp_base32(raw) + "&issuer=" + uri_escape(issuer) +
         "&algorithm=SHA1&digits=" + std::to_string(kTotpDigits) +
         "&period=" + std::to_string(kTotpStepS);
}

Result<std::string> totp_code(const std::string& raw, int64_t t, unsigned digits, bool sha256) {
  char out[16] = {0};
  if (!oath_ready() || digits < 6 || digits > 8 ||
      oath_totp_generate2(raw.data(), raw.size(), static_cast<time_t>(t), kTotpStepS, 0, digits,
                          sha256 ? OATH_TOTP_HMAC_SHA256 : 0, out) != OATH_OK) {
    return invalid("cannot compute a TOTP code");
  }
  return std::string(out);
}

int64_t totp_match(const std::string& raw, int64_t t, const std::string& code) {
  if (!oath_ready() || code.size() != kTotpDigits) return -1;
  for (char c : code) {
    if (c < '0' || c > '9') return -1;
  }
  int pos = 0;
  int rc = oath_totp_validate2(raw.data(), raw.size(), static_cast<time_t>(t), kTotpStepS, 0, 1,
                               &pos, code.c_str());
  if (rc < 0) return -1;
  return t / kTotpStepS + pos;
}

// ---- the login's second factor ----------------------------------------------------------
std::optional<HttpResponse> Api::check_second_factor(const HttpRequest& req,
                                                     const std::string& throttle_name,
                                                     const std::string& user_id,
                                                     const std::optional<std::string>& code,
                                                     const std::optional<std::string>& recovery) {
  auto secret = views_.read([&](const State& s) -> std::optional<std::string> {
    const domain::TotpEntry* e = s.totp.find(user_id);
    if (e == nullptr || !e->enabled) return std::nullopt;
    return e->secret_sealed;
  });
  if (!secret) return std::nullopt;  // no second factor for this user
  static const Error kRequired =
      Error::make(Code::unauthenticated,
                  "this user needs a TOTP code (totp_code) or a recovery code", "totp_required");
  static const Error kWrong =
      Error::make(Code::unauthenticated, "wrong or reused TOTP or recovery code", "totp_invalid");
  if (!code && !recovery) return problem(kRequired);
  if (recovery) {
    domain::UseRecoveryCode cmd{user_id, sha256_hex(*recovery)};
    pipeline::Command c = command("UseRecoveryCode", cmd, 204);
    c.meta.actor = user_id;
    c.meta.correlation_id = req.request_id;
    auto r = pipeline_.execute(std::move(c), cfg_.command_timeout);
    if (r.ok()) return std::nullopt;
    return login_failed(req, throttle_name, user_id, kWrong);
  }
  auto raw = open_secret(cfg_.secret_key, *secret);
  int64_t step = raw.ok() ? totp_match(*raw, now_ms() / 1000, *code) : -1;
  {
    // A code is good once: a step at or before the last accepted one is a replay.
    std::lock_guard l(totp_mu_);
    auto it = totp_last_step_.find(user_id);
    if (step >= 0 && (it == totp_last_step_.end() || step > it->second)) {
      totp_last_step_[user_id] = step;
      return std::nullopt;
    }
  }
  return login_failed(req, throttle_name, user_id, kWrong);
}

std::optional<HttpResponse> Api::enforce_totp_enrollment(const HttpRequest& req,
                                                         const std::string& tmpl) {
  if (!req.principal || tmpl == "/v1/me/totp" || tmpl == "/v1/me/totp/confirm" ||
      tmpl == "/v1/auth/logout") {
    return std::nullopt;
  }
  bool must = views_.read([&](const State& s) {
    const domain::User* u = s.users.find(req.principal->user_id);
    return u != nullptr && s.totp.required(*u) && !s.totp.enabled(u->id);
  });
  if (!must) return std::nullopt;
  return problem(Error::make(Code::permission_denied,
                             "enroll a TOTP authenticator first (POST /v1/me/totp)",
                             "totp_enrollment_required"));
}

// ---- routes -----------------------------------------------------------------------------
void register_totp_routes(Api& api) {
  Router& r = api.router();
  r.add("POST", "/v1/me/totp", Access::AnyRole(), [&api](HttpRequest& req) {
    if (!req.body.empty()) {
      auto body = parse_object(req.body);
      if (!body.ok()) return problem(body.error());
      BodyReader br(*body, {});
      if (auto st = br.finish(); !st) return problem(st.error());
    }
    if (api.config().secret_key.empty()) {
      return problem(
          Error::make(Code::failed_precondition, "this broker has no secret key", "no_secret_key"));
    }
    std::string raw = totp_new_secret();
    domain::StartTotpEnrollment cmd{req.principal->user_id,
                                    seal_secret(api.config().secret_key, raw)};
    req.headers.erase("idempotency-key");  // each call is a new secret
    std::string uri = totp_uri("Atrium", req.principal->name, raw);
    HttpResponse resp =
        api.run(req, command("StartTotpEnrollment", cmd, 201, [uri, raw](const State&) {
                  return Json{{"otpauth_uri", uri},
                              {"secret", totp_base32(raw)},
                              {"digits", kTotpDigits},
                              {"period_s", kTotpStepS}};
                }));
    resp.with_header("Cache-Control", "no-store");
    return resp;
  });

  r.add("POST", "/v1/me/totp/confirm", Access::AnyRole(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"code"});
    auto code = br.str("code", true, 16, 1);
    if (auto st = br.finish(); !st) return problem(st.error());
    const std::string uid = req.principal->user_id;
    auto pending = api.views().read([&](const State& s) -> std::optional<std::string> {
      const domain::TotpEntry* e = s.totp.find(uid);
      if (e == nullptr || e->pending_sealed.empty()) return std::nullopt;
      return e->pending_sealed;
    });
    if (!pending) {
      return problem(
          refused("totp_not_enrolling", "no TOTP enrollment to confirm; start one first"));
    }
    auto raw = open_secret(api.config().secret_key, *pending);
    if (!raw.ok() || totp_match(*raw, api.now_ms() / 1000, *code) < 0) {
      return api.login_failed(req, req.principal->name, uid,
                              Error{Code::invalid_argument,
                                    "the code does not match",
                                    "totp_invalid",
                                    {{"code", "is not the authenticator's current code"}}});
    }
    std::vector<std::string> codes;
    std::set<std::string> hashes;
    for (int i = 0; i < 10; ++i) {
      std::string h = random_hex(5);  // 40 bits each, used once, stored hashed
      codes.push_back(h.substr(0, 5) + "-" + h.substr(5));
      hashes.insert(sha256_hex(codes.back()));
    }
    req.headers.erase("idempotency-key");
    HttpResponse resp = api.run(
        req, command("ConfirmTotp", domain::ConfirmTotp{uid, hashes}, 200, [codes](const State&) {
          return Json{{"enabled", true}, {"recovery_codes", codes}};
        }));
    resp.with_header("Cache-Control", "no-store");
    return resp;
  });

  r.add("DELETE", "/v1/users/{id}/totp", Access::Admin(), [&api](HttpRequest& req) {
    return api.run(req, command("ResetTotp", domain::ResetTotp{req.param("id")}, 204));
  });

  r.add("PUT", "/v1/users/{id}/totp-required", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"required"});
    auto required = br.boolean("required", true);
    if (auto st = br.finish(); !st) return problem(st.error());
    std::string id = req.param("id");
    return api.run(req, command("SetTotpRequired", domain::SetTotpRequired{id, *required}, 200,
                                [id](const State& s) {
                                  return Json{{"user_id", id},
                                              {"required", s.users.find(id) != nullptr &&
                                                               s.totp.required(*s.users.find(id))},
                                              {"enabled", s.totp.enabled(id)}};
                                }));
  });

  r.add("PUT", "/v1/totp-policy", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"required_roles"});
    auto roles = br.string_set("required_roles", true);
    if (auto st = br.finish(); !st) return problem(st.error());
    return api.run(req,
                   command("SetTotpPolicy", domain::SetTotpPolicy{*roles}, 200, [](const State& s) {
                     return Json{{"required_roles", s.totp.required_roles}};
                   }));
  });

  r.add("GET", "/v1/totp-policy", Access::Admin(), [&api](HttpRequest& req) {
    return api.with_state(req, [&](const State& s) {
      return HttpResponse::json(200, Json{{"required_roles", s.totp.required_roles}});
    });
  });
}

}  // namespace atrium::api

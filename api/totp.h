// TOTP (RFC 6238) codes with liboath, and the otpauth:// URI authenticator apps read.
#pragma once

#include <cstdint>
#include <string>

#include "common/result.h"

namespace atrium::api {

inline constexpr unsigned kTotpDigits = 6;
inline constexpr unsigned kTotpStepS = 30;

// 20 random bytes (160 bits, RFC 4226's recommendation).
std::string totp_new_secret();
std::string totp_base32(const std::string& raw);
// otpauth://totp/<issuer>:<account>?secret=...&issuer=...&algorithm=SHA1&digits=6&period=30
std::string totp_uri(const std::string& issuer, const std::string& account, const std::string& raw);
// The code at unix time `t` (digits 6 to 8; SHA-1, or SHA-256 when `sha256`).
Result<std::string> totp_code(const std::string& raw, int64_t t, unsigned digits = kTotpDigits,
                              bool sha256 = false);
// The time step (t / 30, +-1 for clock skew) whose code `code` is, or -1.
int64_t totp_match(const std::string& raw, int64_t t, const std::string& code);

}  // namespace atrium::api

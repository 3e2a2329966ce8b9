// Second factor: TOTP (RFC 6238) enrollment, recovery codes and enforcement (issue 14).
// Pure: the codes themselves are computed in api/totp.h (liboath); this module records what
// changed. Secrets are only ever here sealed (api/crypto.h), recovery codes only as SHA-256.
//
// Streams: "totp-<user id>" (TotpEnrollmentStarted, TotpEnabled, TotpRecoveryCodeUsed,
// TotpReset, TotpRequirementSet) and "totp-policy" (TotpPolicySet).
// Rules: enrolling again while enabled is refused [totp_enabled] (an admin resets it first);
// confirming needs a pending enrollment [totp_not_enrolling]; a recovery code works once
// [recovery_code_unknown]; TOTP is required for a user when an admin said so for that user or
// for one of its roles.
#pragma once

#include <set>
#include <string>
#include <unordered_map>

#include "domain/event.h"

namespace atrium::domain {

struct User;

struct TotpEntry {
  std::string pending_sealed;  // an enrollment not yet confirmed
  std::string secret_sealed;   // the confirmed secret
  bool enabled = false;
  std::set<std::string> recovery_hashes;  // SHA-256 hex of each unused recovery code
  bool required = false;                  // per-user enforcement
};

struct TotpState {
  std::unordered_map<std::string, TotpEntry> by_user;
  std::set<std::string> required_roles;

  const TotpEntry* find(const std::string& user_id) const;
  bool enabled(const std::string& user_id) const;
  // Required for this user: per user, or through one of its roles.
  bool required(const User& u) const;
};

struct StartTotpEnrollment {
  std::string user_id;
  std::string secret_sealed;
};
struct ConfirmTotp {
  std::string user_id;
  std::set<std::string> recovery_hashes;
};
struct UseRecoveryCode {
  std::string user_id;
  std::string hash;
};
struct ResetTotp {
  std::string user_id;
};
struct SetTotpRequired {
  std::string user_id;
  bool required = false;
};
struct SetTotpPolicy {
  std::set<std::string> required_roles;
};

struct State;
Result<Events> decide(const State& s, const StartTotpEnrollment& c, const Context& ctx);
Result<Events> decide(const State& s, const ConfirmTotp& c, const Context& ctx);
Result<Events> decide(const State& s, const UseRecoveryCode& c, const Context& ctx);
Result<Events> decide(const State& s, const ResetTotp& c, const Context& ctx);
Result<Events> decide(const State& s, const SetTotpRequired& c, const Context& ctx);
Result<Events> decide(const State& s, const SetTotpPolicy& c, const Context& ctx);

inline constexpr const char* kTotpPolicyStream = "totp-policy";

}  // namespace atrium::domain

#include "domain/totp.h"

#include "domain/evolve_table.h"
#include "domain/state.h"

namespace atrium::domain {

const TotpEntry* TotpState::find(const std::string& user_id) const {
  auto it = by_user.find(user_id);
  return it == by_user.end() ? nullptr : &it->second;
}

bool TotpState::enabled(const std::string& user_id) const {
  const TotpEntry* e = find(user_id);
  return e != nullptr && e->enabled;
}

bool TotpState::required(const User& u) const {
  if (const TotpEntry* e = find(u.id); e != nullptr && e->required) return true;
  for (const auto& r : u.roles) {
    if (required_roles.count(r) != 0) return true;
  }
  return false;
}

namespace {
std::string stream(const std::string& user_id) {
  return "totp-" + user_id;
}
Status known_user(const State& s, const std::string& id) {
  if (s.users.find(id) == nullptr) return not_found("user " + id + " not found");
  return Status::Ok();
}
}  // namespace

Result<Events> decide(const State& s, const StartTotpEnrollment& c, const Context&) {
  if (auto st = known_user(s, c.user_id); !st) return st.error();
  if (s.totp.enabled(c.user_id)) {
    return refused("totp_enabled", "TOTP is already enabled; an admin must reset it first");
  }
  if (c.secret_sealed.empty()) return invalid("the sealed secret is required");
  return Events{{stream(c.user_id), "TotpEnrollmentStarted", 1,
                 Json{{"user_id", c.user_id}, {"secret_sealed", c.secret_sealed}}}};
}

Result<Events> decide(const State& s, const ConfirmTotp& c, const Context&) {
  const TotpEntry* e = s.totp.find(c.user_id);
  if (e == nullptr || e->pending_sealed.empty()) {
    return refused("totp_not_enrolling", "no TOTP enrollment to confirm; start one first");
  }
  return Events{{stream(c.user_id), "TotpEnabled", 1,
                 Json{{"user_id", c.user_id}, {"recovery_code_hashes", c.recovery_hashes}}}};
}

Result<Events> decide(const State& s, const UseRecoveryCode& c, const Context&) {
  const TotpEntry* e = s.totp.find(c.user_id);
  if (e == nullptr || !e->enabled || e->recovery_hashes.count(c.hash) == 0) {
    return Error::make(Code::unauthenticated, "unknown recovery code", "recovery_code_unknown");
  }
  return Events{{stream(c.user_id), "TotpRecoveryCodeUsed", 1,
                 Json{{"user_id", c.user_id}, {"recovery_code_hash", c.hash}}}};
}

Result<Events> decide(const State& s, const ResetTotp& c, const Context&) {
  if (auto st = known_user(s, c.user_id); !st) return st.error();
  const TotpEntry* e = s.totp.find(c.user_id);
  if (e == nullptr || (!e->enabled && e->pending_sealed.empty())) return Events{};
  return Events{{stream(c.user_id), "TotpReset", 1, Json{{"user_id", c.user_id}}}};
}

Result<Events> decide(const State& s, const SetTotpRequired& c, const Context&) {
  if (auto st = known_user(s, c.user_id); !st) return st.error();
  const TotpEntry* e = s.totp.find(c.user_id);
  if ((e != nullptr && e->required) == c.required) return Events{};
  return Events{{stream(c.user_id), "TotpRequirementSet", 1,
                 Json{{"user_id", c.user_id}, {"required", c.required}}}};
}

Result<Events> decide(const State& s, const SetTotpPolicy& c, const Context&) {
  for (const auto& r : c.required_roles) {
    if (r != kRoleAdmin && r != kRoleUser && r != kRoleAgent) {
      return Error{Code::invalid_argument,
                   "unknown role '" + r + "'",
                   "invalid_roles",
                   {{"required_roles", "each role is one of admin, user, agent"}}};
    }
  }
  if (c.required_roles == s.totp.required_roles) return Events{};
  return Events{
      {kTotpPolicyStream, "TotpPolicySet", 1, Json{{"required_roles", c.required_roles}}}};
}

namespace {
TotpEntry& entry(State& s, const Event& e) {
  return s.totp.by_user[e.data.at("user_id").get<std::string>()];
}
void on_started(State& s, const Event& e, const Applied&) {
  entry(s, e).pending_sealed = e.data.at("secret_sealed").get<std::string>();
}
void on_enabled(State& s, const Event& e, const Applied&) {
  TotpEntry& t = entry(s, e);
  t.secret_sealed = t.pending_sealed;
  t.pending_sealed.clear();
  t.enabled = true;
  t.recovery_hashes = e.data.at("recovery_code_hashes").get<std::set<std::string>>();
}
void on_recovery_used(State& s, const Event& e, const Applied&) {
  entry(s, e).recovery_hashes.erase(e.data.at("recovery_code_hash").get<std::string>());
}
void on_reset(State& s, const Event& e, const Applied&) {
  TotpEntry& t = entry(s, e);
  bool required = t.required;
  t = TotpEntry{};
  t.required = required;
}
void on_required(State& s, const Event& e, const Applied&) {
  entry(s, e).required = e.data.at("required").get<bool>();
}
void on_policy(State& s, const Event& e, const Applied&) {
  s.totp.required_roles = e.data.at("required_roles").get<std::set<std::string>>();
}
}  // namespace

void register_totp(EvolveTable& t) {
  t["TotpEnrollmentStarted"] = on_started;
  t["TotpEnabled"] = on_enabled;
  t["TotpRecoveryCodeUsed"] = on_recovery_used;
  t["TotpReset"] = on_reset;
  t["TotpRequirementSet"] = on_required;
  t["TotpPolicySet"] = on_policy;
}

Json totp_to_json(const TotpState& s) {
  Json users = Json::object();
  for (const auto& [id, t] : s.by_user) {
    users[id] = Json{{"pending_sealed", t.pending_sealed},
                     {"secret_sealed", t.secret_sealed},
                     {"enabled", t.enabled},
                     {"recovery_code_hashes", t.recovery_hashes},
                     {"required", t.required}};
  }
  return Json{{"users", users}, {"required_roles", s.required_roles}};
}

Status totp_from_json(TotpState& s, const Json& j) {
  s = TotpState{};
  for (const auto& [id, tj] : j.at("users").items()) {
    TotpEntry t;
    t.pending_sealed = tj.at("pending_sealed").get<std::string>();
    t.secret_sealed = tj.at("secret_sealed").get<std::string>();
    t.enabled = tj.at("enabled").get<bool>();
    t.recovery_hashes = tj.at("recovery_code_hashes").get<std::set<std::string>>();
    t.required = tj.at("required").get<bool>();
    s.by_user[id] = std::move(t);
  }
  s.required_roles = j.at("required_roles").get<std::set<std::string>>();
  return Status::Ok();
}

}  // namespace atrium::domain

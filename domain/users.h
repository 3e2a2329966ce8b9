// Users, roles and API tokens.
//
// Streams: "user-<id>" (UserCreated, UserUpdated, UserPasswordChanged, UserDeleted) and
// "tokens-<user id>" (TokenIssued, TokenRevoked). Tokens are stored only as SHA-256 hex.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "domain/event.h"

namespace atrium::domain {

inline constexpr const char* kRoleAdmin = "admin";
inline constexpr const char* kRoleUser = "user";
inline constexpr const char* kRoleAgent = "agent";

struct User {
  std::string id;
  std::string name;
  std::set<std::string> roles;
  std::string password_hash;  // argon2id string; empty = no password login
  bool disabled = false;
  int64_t created_at_ms = 0;
  int64_t updated_at_ms = 0;
  uint64_t version = 0;

  bool has_role(const std::string& r) const { return roles.count(r) > 0; }
};

struct Token {
  std::string hash;  // SHA-256 hex of the secret
  std::string user_id;
  int64_t expires_at_ms = 0;
  bool revoked = false;
};

struct UsersState {
  std::unordered_map<std::string, User> by_id;
  std::unordered_map<std::string, std::string> id_by_name;
  std::unordered_map<std::string, Token> tokens;  // by hash
  size_t enabled_admins = 0;

  const User* find(const std::string& id) const;
  const User* find_by_name(const std::string& name) const;
  // The user a token authenticates at `now_ms`, or nullptr (unknown, revoked, expired,
  // user disabled or deleted).
  const User* authenticate(const std::string& token_hash, int64_t now_ms) const;
};

// ---- commands ---------------------------------------------------------------------------
struct CreateUser {
  std::string id;
  std::string name;
  std::set<std::string> roles;
  std::string password_hash;
};

struct UpdateUser {
  std::string id;
  std::optional<uint64_t> expected_version;  // If-Match
  std::optional<std::set<std::string>> roles;
  std::optional<std::string> password_hash;
  std::optional<bool> disabled;
};

struct DeleteUser {
  std::string id;
  std::optional<uint64_t> expected_version;
};

struct IssueToken {
  std::string user_id;
  std::string token_hash;
  int64_t expires_at_ms = 0;
};

struct RevokeToken {
  std::string token_hash;
};

struct State;
Result<Events> decide(const State& s, const CreateUser& c, const Context& ctx);
Result<Events> decide(const State& s, const UpdateUser& c, const Context& ctx);
Result<Events> decide(const State& s, const DeleteUser& c, const Context& ctx);
Result<Events> decide(const State& s, const IssueToken& c, const Context& ctx);
Result<Events> decide(const State& s, const RevokeToken& c, const Context& ctx);

// Validation shared with the API layer.
Status validate_name(const std::string& field, const std::string& name);
Status validate_roles(const std::set<std::string>& roles);

std::string user_stream(const std::string& id);

Json user_to_json(const User& u);  // public view: never includes the password hash

}  // namespace atrium::domain

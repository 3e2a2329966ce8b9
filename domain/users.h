// Users, roles and API tokens.
//
// Streams: "user-<id>" (UserCreated, UserUpdated, UserPasswordChanged, UserDeleted),
// "tokens-<user id>" (TokenIssued, TokenRevoked) and "login-throttle" (LoginThrottled, an
// audit record only: throttling itself lives in memory). Tokens are stored only as SHA-256 hex.
// A password change, disabling a user and deleting it end every token of that user.
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
  // For role agent: the one server this agent acts for (set by an admin); empty = none.
  std::string agent_server_id;
  std::string name_skeleton;  // UTS #39 skeleton of the name (domain/user_names.h)
  // A directory user (domain/directories.h): its directory, stable id there (entryUUID or
  // objectGUID), DN and groups ("<cn>@<directory>") as of its last sign-in or recheck.
  std::string directory_id;
  std::string external_id;
  std::string directory_dn;
  std::set<std::string> groups;
  // Roles = directory_roles + granted_roles. A directory user's directory_roles come from its
  // directory's role_map at its last sign-in or recheck (replaced each time); granted_roles are
  // those an admin granted in Atrium and survive sign-ins. A local user's roles are all granted.
  std::set<std::string> directory_roles;
  std::set<std::string> granted_roles;
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
  bool bootstrap = false;  // the operator's bootstrap token (renewed, or revoked, at start)
};

struct UsersState {
  std::unordered_map<std::string, User> by_id;
  std::unordered_map<std::string, std::string> id_by_name;
  std::unordered_map<std::string, std::string> id_by_skeleton;  // UTS #39 skeleton of the name
  std::unordered_map<std::string, Token> tokens;  // by hash
  std::unordered_map<std::string, std::string> id_by_external;  // "<directory id>|<external id>"
  size_t enabled_admins = 0;

  const User* find(const std::string& id) const;
  const User* find_by_name(const std::string& name) const;
  // A user whose name is confusable with `name` (same UTS #39 skeleton), or nullptr.
  const User* find_confusable(const std::string& name) const;
  // The directory user with this stable id in that directory, or nullptr.
  const User* find_external(const std::string& directory_id, const std::string& external_id) const;
  // The user a token authenticates at `now_ms`, or nullptr (unknown, revoked, expired,
  // user disabled or deleted).
  const User* authenticate(const std::string& token_hash, int64_t now_ms) const;
};

// ---- commands ---------------------------------------------------------------------------
// The name must already be NFKC (domain/user_names.h); it is refused when it breaks the
// name rules (invalid_name), is taken (user_name_taken) or is confusable with an existing
// user's name (user_name_confusable). agent_server_id needs the role agent and a server.
struct CreateUser {
  std::string id;
  std::string name;
  std::set<std::string> roles;
  std::string password_hash;
  std::string agent_server_id = {};
};

// roles is the user's new set of roles. For a directory user it cannot drop a role its
// directory gives (role_from_directory: change the role_map or the groups instead): the roles
// beyond those become its granted_roles (the ones it already had granted stay granted).
// granted_roles sets a directory user's grants directly (may be empty); not with roles.
struct UpdateUser {
  std::string id;
  std::optional<uint64_t> expected_version = {};  // If-Match
  std::optional<std::set<std::string>> roles = {};
  std::optional<std::string> password_hash = {};
  std::optional<bool> disabled = {};
  std::optional<std::string> agent_server_id = {};  // "" unbinds
  std::optional<std::set<std::string>> granted_roles = {};
};

struct DeleteUser {
  std::string id;
  std::optional<uint64_t> expected_version;
};

// A bootstrap token may be issued again for the same user (renewal at start) unless revoked.
struct IssueToken {
  std::string user_id;
  std::string token_hash;
  int64_t expires_at_ms = 0;
  bool bootstrap = false;
};

struct RevokeToken {
  std::string token_hash;
};

// The audit record of a login throttle that engaged: scope "user" (name, and user_id when the
// name is a user's) or "address"; once per throttle window and key (api/login_throttle.h).
struct RecordLoginThrottled {
  std::string scope;
  std::string key;
  std::string user_id;
  uint32_t failures = 0;
  int64_t until_ms = 0;
};

struct State;
Result<Events> decide(const State& s, const CreateUser& c, const Context& ctx);
Result<Events> decide(const State& s, const UpdateUser& c, const Context& ctx);
Result<Events> decide(const State& s, const DeleteUser& c, const Context& ctx);
Result<Events> decide(const State& s, const IssueToken& c, const Context& ctx);
Result<Events> decide(const State& s, const RevokeToken& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordLoginThrottled& c, const Context& ctx);

// Validation shared with the API layer.
Status validate_name(const std::string& field, const std::string& name);
Status validate_roles(const std::set<std::string>& roles);

std::string user_stream(const std::string& id);

Json user_to_json(const User& u);  // public view: never includes the password hash

inline constexpr const char* kLoginThrottleStream = "login-throttle";

}  // namespace atrium::domain

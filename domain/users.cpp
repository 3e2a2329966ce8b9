#include "domain/users.h"

#include <algorithm>

#include "domain/evolve_table.h"
#include "domain/state.h"
#include "domain/user_names.h"

namespace atrium::domain {

// ---- queries ----------------------------------------------------------------------------
const User* UsersState::find(const std::string& id) const {
  auto it = by_id.find(id);
  return it == by_id.end() ? nullptr : &it->second;
}

const User* UsersState::find_by_name(const std::string& name) const {
  auto it = id_by_name.find(name);
  return it == id_by_name.end() ? nullptr : find(it->second);
}

const User* UsersState::find_confusable(const std::string& name) const {
  auto it = id_by_skeleton.find(user_name_skeleton(name));
  return it == id_by_skeleton.end() ? nullptr : find(it->second);
}

const User* UsersState::find_external(const std::string& directory_id,
                                      const std::string& external_id) const {
  auto it = id_by_external.find(directory_id + "|" + external_id);
  return it == id_by_external.end() ? nullptr : find(it->second);
}

const User* UsersState::authenticate(const std::string& token_hash, int64_t now_ms) const {
  auto it = tokens.find(token_hash);
  if (it == tokens.end()) return nullptr;
  const Token& t = it->second;
  if (t.revoked || t.expires_at_ms <= now_ms) return nullptr;
  const User* u = find(t.user_id);
  if (u == nullptr || u->disabled) return nullptr;
  return u;
}

std::string user_stream(const std::string& id) { return "user-" + id; }
static std::string tokens_stream(const std::string& user_id) { return "tokens-" + user_id; }

Status validate_name(const std::string& field, const std::string& name) {
  if (name.empty() || name.size() > 128) {
    return Error{Code::invalid_argument, field + " must be 1 to 128 characters", "invalid_name",
                 {{field, "must be 1 to 128 characters"}}};
  }
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f) {
      return Error{Code::invalid_argument, field + " must not contain control characters",
                   "invalid_name", {{field, "must not contain control characters"}}};
    }
  }
  return Status::Ok();
}

Status validate_roles(const std::set<std::string>& roles) {
  if (roles.empty()) {
    return Error{Code::invalid_argument, "a user needs at least one role", "invalid_roles",
                 {{"roles", "must not be empty"}}};
  }
  for (const auto& r : roles) {
    if (r != kRoleAdmin && r != kRoleUser && r != kRoleAgent) {
      return Error{Code::invalid_argument, "unknown role '" + r + "'", "invalid_roles",
                   {{"roles", "each role is one of admin, user, agent"}}};
    }
  }
  return Status::Ok();
}

Json user_to_json(const User& u) {
  Json j{{"id", u.id},
         {"name", u.name},
         {"roles", u.roles},
         {"directory_roles", u.directory_roles},
         {"granted_roles", u.granted_roles},
         {"disabled", u.disabled},
         {"has_password", !u.password_hash.empty()},
         {"created_at_ms", u.created_at_ms},
         {"updated_at_ms", u.updated_at_ms},
         {"version", u.version}};
  if (!u.agent_server_id.empty()) j["agent_server_id"] = u.agent_server_id;
  if (!u.directory_id.empty()) {
    j["directory"] = Json{{"id", u.directory_id},
                          {"external_id", u.external_id},
                          {"dn", u.directory_dn},
                          {"groups", u.groups}};
  }
  return j;
}

// The fields of a directory user, from an event or a snapshot.
static void read_directory_fields(User& u, const Json& j) {
  u.directory_id = j.value("directory_id", "");
  u.external_id = j.value("external_id", "");
  u.directory_dn = j.value("directory_dn", "");
  if (j.contains("groups")) u.groups = j["groups"].get<std::set<std::string>>();
}

static std::set<std::string> union_of(const std::set<std::string>& a,
                                      const std::set<std::string>& b) {
  std::set<std::string> out = a;
  out.insert(b.begin(), b.end());
  return out;
}

// The two origins of a user's roles, from an event or a snapshot that sets them. Events and
// snapshots from before the split carry `roles` alone: a directory user's were all from its
// directory (sign-ins replaced them), a local user's all granted.
static void read_roles(User& u, const Json& j) {
  bool split = j.contains("directory_roles") || j.contains("granted_roles");
  if (j.contains("directory_roles")) {
    u.directory_roles = j["directory_roles"].get<std::set<std::string>>();
  }
  if (j.contains("granted_roles")) {
    u.granted_roles = j["granted_roles"].get<std::set<std::string>>();
  }
  if (!split && j.contains("roles")) {
    auto roles = j["roles"].get<std::set<std::string>>();
    if (u.directory_id.empty()) {
      u.granted_roles = std::move(roles);
    } else {
      u.directory_roles = std::move(roles);
      u.granted_roles.clear();
    }
  }
  u.roles = union_of(u.directory_roles, u.granted_roles);
}

// An agent binding names an existing server, and only users with the role agent have one.
static Status check_agent_binding(const State& s, const std::string& server_id,
                                  const std::set<std::string>& roles) {
  if (server_id.empty()) return Status::Ok();
  if (roles.count(kRoleAgent) == 0) {
    return Error{Code::invalid_argument,
                 "only a user with the role agent is bound to a server",
                 "agent_binding_needs_agent_role",
                 {{"agent_server_id", "needs the role agent"}}};
  }
  if (s.appcloud.server(server_id) == nullptr)
    return not_found("server " + server_id + " not found");
  return Status::Ok();
}

// ---- decide -----------------------------------------------------------------------------
Result<Events> decide(const State& s, const CreateUser& c, const Context&) {
  if (auto st = validate_user_name("name", c.name); !st) return st.error();
  if (auto st = validate_roles(c.roles); !st) return st.error();
  if (c.id.empty()) return invalid("user id must not be empty");
  if (s.users.find(c.id) != nullptr) {
    return Error::make(Code::already_exists, "user " + c.id + " already exists",
                       "user_exists");
  }
  if (s.users.find_by_name(c.name) != nullptr) {
    return Error::make(Code::already_exists, "a user named '" + c.name + "' already exists",
                       "user_name_taken");
  }
  if (const User* other = s.users.find_confusable(c.name)) {
    return Error::make(
        Code::already_exists,
        "the name '" + c.name + "' looks like the existing user '" + other->name + "'",
        "user_name_confusable");
  }
  if (auto st = check_agent_binding(s, c.agent_server_id, c.roles); !st) return st.error();
  // The skeleton rides in the event, so replay folds users without running ICU.
  Json data{{"id", c.id},
            {"name", c.name},
            {"roles", c.roles},
            {"password_hash", c.password_hash},
            {"name_skeleton", user_name_skeleton(c.name)}};
  if (!c.agent_server_id.empty()) data["agent_server_id"] = c.agent_server_id;
  return Events{{user_stream(c.id), "UserCreated", 1, data}};
}

// Would this change leave the system without an enabled admin?
static bool removes_last_admin(const State& s, const User& u, bool still_enabled_admin) {
  bool is_enabled_admin = !u.disabled && u.has_role(kRoleAdmin);
  return is_enabled_admin && !still_enabled_admin && s.users.enabled_admins <= 1;
}

Result<Events> decide(const State& s, const UpdateUser& c, const Context&) {
  const User* u = s.users.find(c.id);
  if (u == nullptr) return not_found("user " + c.id + " not found");
  if (auto st = check_expected(s, user_stream(c.id), c.expected_version); !st) return st.error();
  Events out;
  Json changes = Json::object();
  std::set<std::string> roles = u->roles;  // after the change
  const bool from_directory = !u->directory_id.empty();
  if (c.roles && c.granted_roles) {
    return Error{Code::invalid_argument,
                 "give roles or granted_roles, not both",
                 "invalid_roles",
                 {{"granted_roles", "not with roles"}}};
  }
  if (c.roles) {
    if (auto st = validate_roles(*c.roles); !st) return st.error();
    if (from_directory) {
      for (const auto& r : u->directory_roles) {
        if (c.roles->count(r) == 0) {
          return refused("role_from_directory",
                         "the role " + r + " of " + u->name +
                             " comes from its directory's role_map; change the role_map or the "
                             "user's groups in the directory instead");
        }
      }
    }
  }
  if (c.granted_roles) {
    if (!from_directory) {
      return Error{Code::invalid_argument,
                   "only a directory user has granted_roles: give roles",
                   "invalid_roles",
                   {{"granted_roles", "only for a directory user"}}};
    }
    if (!c.granted_roles->empty()) {
      if (auto st = validate_roles(*c.granted_roles); !st) return st.error();
    }
  }
  if (from_directory && (c.roles || c.granted_roles)) {
    std::set<std::string> granted;
    if (c.granted_roles) {
      granted = *c.granted_roles;
    } else {
      // Beyond the directory's roles, and the grants it keeps (a role both granted and given by
      // the directory stays granted unless it is dropped here).
      for (const auto& r : *c.roles) {
        if (u->directory_roles.count(r) == 0 || u->granted_roles.count(r) != 0) granted.insert(r);
      }
    }
    roles = union_of(u->directory_roles, granted);
    if (auto st = validate_roles(roles); !st) return st.error();
    if (granted != u->granted_roles) {
      changes["granted_roles"] = granted;
      changes["roles"] = roles;
    }
  } else if (c.roles && *c.roles != u->roles) {
    roles = *c.roles;
    changes["roles"] = roles;
  }
  if (c.disabled && *c.disabled != u->disabled) changes["disabled"] = *c.disabled;
  if (c.agent_server_id && *c.agent_server_id != u->agent_server_id) {
    if (auto st = check_agent_binding(s, *c.agent_server_id, roles); !st) {
      return st.error();
    }
    changes["agent_server_id"] = *c.agent_server_id;
  }
  bool will_be_enabled = !changes.value("disabled", u->disabled);
  bool will_be_admin = roles.count(kRoleAdmin) > 0;
  if (removes_last_admin(s, *u, will_be_enabled && will_be_admin)) {
    return refused("last_admin", "the last enabled admin cannot lose the admin role or be "
                                 "disabled");
  }
  if (!changes.empty()) out.push_back({user_stream(c.id), "UserUpdated", 1, changes});
  if (c.password_hash) {
    out.push_back({user_stream(c.id), "UserPasswordChanged", 1,
                   Json{{"password_hash", *c.password_hash}}});
  }
  return out;
}

Result<Events> decide(const State& s, const DeleteUser& c, const Context&) {
  const User* u = s.users.find(c.id);
  if (u == nullptr) return not_found("user " + c.id + " not found");
  if (auto st = check_expected(s, user_stream(c.id), c.expected_version); !st) return st.error();
  if (removes_last_admin(s, *u, false)) {
    return refused("last_admin", "the last enabled admin cannot be deleted");
  }
  return Events{{user_stream(c.id), "UserDeleted", 1, Json{{"id", c.id}}}};
}

Result<Events> decide(const State& s, const IssueToken& c, const Context& ctx) {
  const User* u = s.users.find(c.user_id);
  if (u == nullptr) return not_found("user " + c.user_id + " not found");
  if (u->disabled) return refused("user_disabled", "user " + c.user_id + " is disabled");
  if (c.token_hash.size() != 64) return invalid("token hash must be 64 hex characters");
  if (c.expires_at_ms <= ctx.now_ms) return invalid("token expiry must be in the future");
  if (auto it = s.users.tokens.find(c.token_hash); it != s.users.tokens.end()) {
    const Token& t = it->second;
    bool renewal = c.bootstrap && t.bootstrap && !t.revoked && t.user_id == c.user_id;
    if (!renewal) return Error::make(Code::already_exists, "token already issued", "token_exists");
  }
  Json data{
      {"token_hash", c.token_hash}, {"user_id", c.user_id}, {"expires_at_ms", c.expires_at_ms}};
  if (c.bootstrap) data["bootstrap"] = true;
  return Events{{tokens_stream(c.user_id), "TokenIssued", 1, data}};
}

Result<Events> decide(const State& s, const RevokeToken& c, const Context&) {
  auto it = s.users.tokens.find(c.token_hash);
  if (it == s.users.tokens.end()) return not_found("token not found");
  if (it->second.revoked) return Events{};
  return Events{{tokens_stream(it->second.user_id), "TokenRevoked", 1,
                 Json{{"token_hash", c.token_hash}}}};
}

Result<Events> decide(const State&, const RecordLoginThrottled& c, const Context&) {
  if (c.scope != "user" && c.scope != "address") return invalid("scope must be user or address");
  Json data{{"scope", c.scope}, {"failures", c.failures}, {"until_ms", c.until_ms}};
  data[c.scope == "user" ? "name" : "address"] = c.key;
  if (!c.user_id.empty()) data["user_id"] = c.user_id;
  return Events{{kLoginThrottleStream, "LoginThrottled", 1, data}};
}

// ---- evolve -----------------------------------------------------------------------------
namespace {

void revoke_tokens_of(UsersState& us, const std::string& user_id) {
  for (auto& [h, t] : us.tokens) {
    if (t.user_id == user_id) t.revoked = true;
  }
}

void recount_admins(UsersState& us) {
  us.enabled_admins = static_cast<size_t>(std::count_if(
      us.by_id.begin(), us.by_id.end(),
      [](const auto& kv) { return !kv.second.disabled && kv.second.has_role(kRoleAdmin); }));
}

void on_created(State& s, const Event& e, const Applied& at) {
  User u;
  u.id = e.data.at("id").get<std::string>();
  u.name = e.data.at("name").get<std::string>();
  u.password_hash = e.data.value("password_hash", "");
  u.agent_server_id = e.data.value("agent_server_id", "");
  u.name_skeleton = e.data.contains("name_skeleton") ? e.data["name_skeleton"].get<std::string>()
                                                     : user_name_skeleton(u.name);  // older logs
  read_directory_fields(u, e.data);
  read_roles(u, e.data);
  u.created_at_ms = at.recorded_at_ms;
  u.updated_at_ms = at.recorded_at_ms;
  u.version = at.stream_version;
  if (!u.disabled && u.has_role(kRoleAdmin)) s.users.enabled_admins++;
  if (!u.directory_id.empty()) s.users.id_by_external[u.directory_id + "|" + u.external_id] = u.id;
  s.users.id_by_name[u.name] = u.id;
  s.users.id_by_skeleton.emplace(u.name_skeleton, u.id);
  s.users.by_id[u.id] = std::move(u);
}

User* user_of(State& s, const Event& e) {
  auto id = e.stream.substr(5);  // "user-"
  auto it = s.users.by_id.find(id);
  return it == s.users.by_id.end() ? nullptr : &it->second;
}

void on_updated(State& s, const Event& e, const Applied& at) {
  User* u = user_of(s, e);
  if (u == nullptr) return;
  if (e.data.contains("roles") || e.data.contains("directory_roles") ||
      e.data.contains("granted_roles")) {
    read_roles(*u, e.data);
  }
  if (e.data.contains("name")) {  // a directory user renamed in its directory
    s.users.id_by_name.erase(u->name);
    if (auto it = s.users.id_by_skeleton.find(u->name_skeleton);
        it != s.users.id_by_skeleton.end() && it->second == u->id) {
      s.users.id_by_skeleton.erase(it);
    }
    u->name = e.data["name"].get<std::string>();
    u->name_skeleton = e.data.value("name_skeleton", user_name_skeleton(u->name));
    s.users.id_by_name[u->name] = u->id;
    s.users.id_by_skeleton.emplace(u->name_skeleton, u->id);
  }
  if (e.data.contains("directory_dn")) u->directory_dn = e.data["directory_dn"].get<std::string>();
  if (e.data.contains("groups")) u->groups = e.data["groups"].get<std::set<std::string>>();
  if (e.data.contains("disabled")) u->disabled = e.data["disabled"].get<bool>();
  if (e.data.contains("agent_server_id")) {
    u->agent_server_id = e.data["agent_server_id"].get<std::string>();
  }
  // Disabling ends every token: enabling the user again does not bring them back.
  if (e.data.value("disabled", false)) revoke_tokens_of(s.users, u->id);
  u->updated_at_ms = at.recorded_at_ms;
  u->version = at.stream_version;
  recount_admins(s.users);
}

void on_password(State& s, const Event& e, const Applied& at) {
  User* u = user_of(s, e);
  if (u == nullptr) return;
  u->password_hash = e.data.at("password_hash").get<std::string>();
  u->updated_at_ms = at.recorded_at_ms;
  u->version = at.stream_version;
  // A password change ends every session that proved the old password.
  revoke_tokens_of(s.users, u->id);
}

void on_deleted(State& s, const Event& e, const Applied&) {
  User* u = user_of(s, e);
  if (u == nullptr) return;
  std::string id = u->id;
  s.users.id_by_name.erase(u->name);
  if (auto it = s.users.id_by_skeleton.find(u->name_skeleton);
      it != s.users.id_by_skeleton.end() && it->second == id) {
    s.users.id_by_skeleton.erase(it);
  }
  if (!u->directory_id.empty()) s.users.id_by_external.erase(u->directory_id + "|" + u->external_id);
  s.users.by_id.erase(id);
  for (auto it = s.users.tokens.begin(); it != s.users.tokens.end();) {
    it = it->second.user_id == id ? s.users.tokens.erase(it) : std::next(it);
  }
  recount_admins(s.users);
}

void on_token_issued(State& s, const Event& e, const Applied& at) {
  Token t;
  t.hash = e.data.at("token_hash").get<std::string>();
  t.user_id = e.data.at("user_id").get<std::string>();
  t.expires_at_ms = int_of<int64_t>(e.data.at("expires_at_ms"));
  // Logs from before the flag existed: the bootstrap token was the one token issued for
  // 365 days (logins were bounded by --token-ttl-s); treat such a token as the bootstrap one.
  constexpr int64_t kLegacyBootstrapMs = int64_t{360} * 24 * 3600 * 1000;
  t.bootstrap = e.data.contains("bootstrap")
                    ? e.data["bootstrap"].get<bool>()
                    : t.expires_at_ms - at.recorded_at_ms > kLegacyBootstrapMs;
  s.users.tokens[t.hash] = t;
}

void on_token_revoked(State& s, const Event& e, const Applied&) {
  auto it = s.users.tokens.find(e.data.at("token_hash").get<std::string>());
  if (it != s.users.tokens.end()) it->second.revoked = true;
}

}  // namespace

void register_users(EvolveTable& t) {
  t["UserCreated"] = on_created;
  t["UserUpdated"] = on_updated;
  t["UserPasswordChanged"] = on_password;
  t["UserDeleted"] = on_deleted;
  t["TokenIssued"] = on_token_issued;
  t["TokenRevoked"] = on_token_revoked;
}

Json users_to_json(const UsersState& s) {
  std::map<std::string, Json> users;
  for (const auto& [id, u] : s.by_id) {
    Json j = user_to_json(u);
    j["password_hash"] = u.password_hash;
    j["name_skeleton"] = u.name_skeleton;
    if (!u.directory_id.empty()) {
      j["directory_id"] = u.directory_id;
      j["external_id"] = u.external_id;
      j["directory_dn"] = u.directory_dn;
      j["groups"] = u.groups;
    }
    users[id] = j;
  }
  std::map<std::string, Json> tokens;
  for (const auto& [h, t] : s.tokens) {
    tokens[h] = Json{{"user_id", t.user_id},
                     {"expires_at_ms", t.expires_at_ms},
                     {"revoked", t.revoked},
                     {"bootstrap", t.bootstrap}};
  }
  return Json{{"users", users}, {"tokens", tokens}, {"enabled_admins", s.enabled_admins}};
}

}  // namespace atrium::domain

namespace atrium::domain {

Status users_from_json(UsersState& s, const Json& j) {
  s = UsersState{};
  for (const auto& [id, uj] : j.at("users").items()) {
    User u;
    u.id = uj.at("id").get<std::string>();
    u.name = uj.at("name").get<std::string>();
    u.disabled = uj.at("disabled").get<bool>();
    u.password_hash = uj.value("password_hash", "");
    u.agent_server_id = uj.value("agent_server_id", "");
    u.name_skeleton = uj.contains("name_skeleton") ? uj["name_skeleton"].get<std::string>()
                                                   : user_name_skeleton(u.name);
    u.created_at_ms = int_of<int64_t>(uj.at("created_at_ms"));
    u.updated_at_ms = int_of<int64_t>(uj.at("updated_at_ms"));
    u.version = int_of<uint64_t>(uj.at("version"));
    read_directory_fields(u, uj);
    read_roles(u, uj);
    if (!u.directory_id.empty()) s.id_by_external[u.directory_id + "|" + u.external_id] = u.id;
    s.id_by_name[u.name] = u.id;
    s.id_by_skeleton.emplace(u.name_skeleton, u.id);
    s.by_id[id] = std::move(u);
  }
  for (const auto& [hash, tj] : j.at("tokens").items()) {
    Token t;
    t.hash = hash;
    t.user_id = tj.at("user_id").get<std::string>();
    t.expires_at_ms = int_of<int64_t>(tj.at("expires_at_ms"));
    t.revoked = tj.at("revoked").get<bool>();
    t.bootstrap = tj.value("bootstrap", false);
    s.tokens[hash] = std::move(t);
  }
  recount_admins(s);
  return Status::Ok();
}

}  // namespace atrium::domain

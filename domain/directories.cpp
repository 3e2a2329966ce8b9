#include "domain/directories.h"

#include <algorithm>

#include "domain/evolve_table.h"
#include "domain/state.h"
#include "domain/user_names.h"

namespace atrium::domain {

const Directory* DirectoriesState::find(const std::string& id) const {
  auto it = by_id.find(id);
  return it == by_id.end() ? nullptr : &it->second;
}

const Directory* DirectoriesState::find_by_name(const std::string& name) const {
  auto it = id_by_name.find(name);
  return it == id_by_name.end() ? nullptr : find(it->second);
}

const Directory* DirectoriesState::default_directory() const {
  for (const auto& [id, d] : by_id) {
    if (d.is_default) return &d;
  }
  return nullptr;
}

std::string directory_stream(const std::string& id) {
  return "directory-" + id;
}

namespace {

Error field(const std::string& f, const std::string& msg, const std::string& reason) {
  return Error{Code::invalid_argument, f + " " + msg, reason, {{f, msg}}};
}

bool starts_with(const std::string& s, const char* p) {
  return s.rfind(p, 0) == 0;
}

}  // namespace

Status validate_directory(const Directory& d) {
  if (d.name.empty() || d.name.size() > 64) {
    return field("name", "must be 1 to 64 characters", "invalid_directory");
  }
  for (char c : d.name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok)
      return field("name", "must be lower-case letters, digits and '-'", "invalid_directory");
  }
  if (d.kind != "ldap" && d.kind != "active_directory") {
    return field("kind", "must be ldap or active_directory", "invalid_directory");
  }
  if (d.urls.empty() || d.urls.size() > 8) {
    return field("urls", "must list 1 to 8 URLs", "invalid_directory");
  }
  for (const auto& u : d.urls) {
    if (starts_with(u, "ldaps://")) continue;
    if (!starts_with(u, "ldap://")) {
      return field("urls", "each URL is ldap:// or ldaps://", "invalid_directory");
    }
    if (!d.starttls && !d.allow_plaintext) {
      return field("urls", "a plain ldap:// URL needs starttls, or allow_plaintext set explicitly",
                   "plaintext_not_allowed");
    }
  }
  if (d.bind_dn.empty()) return field("bind_dn", "is required", "invalid_directory");
  if (d.bind_password_sealed.empty() == d.bind_password_file.empty()) {
    return field("bind_password", "give exactly one of bind_password and bind_password_file",
                 "invalid_directory");
  }
  if (d.user_base.empty()) return field("user_base", "is required", "invalid_directory");
  if (d.group_base.empty()) return field("group_base", "is required", "invalid_directory");
  for (const auto* f : {&d.user_filter, &d.group_filter}) {
    if (f->empty() || f->front() != '(' || f->back() != ')') {
      return field(f == &d.user_filter ? "user_filter" : "group_filter",
                   "must be one parenthesised LDAP filter", "invalid_directory");
    }
  }
  if (d.timeout_ms < 100 || d.timeout_ms > 60000) {
    return field("timeout_ms", "must be 100 to 60000", "invalid_directory");
  }
  for (const auto& [group, roles] : d.role_map) {
    if (group.empty())
      return field("role_map", "group names must not be empty", "invalid_directory");
    if (auto st = validate_roles(roles); !st) return st.error();
  }
  return Status::Ok();
}

Status validate_group(const State& s, const std::string& group) {
  auto at = group.rfind('@');
  if (at == std::string::npos || at == 0 || group.size() > 256 ||
      s.directories.find_by_name(group.substr(at + 1)) == nullptr) {
    return Error{Code::invalid_argument, "group must be <cn>@<directory> of a known directory",
                 "unknown_group", {{"group", "must be <cn>@<directory> of a known directory"}}};
  }
  return Status::Ok();
}

std::set<std::string> roles_for_groups(const Directory& d, const std::set<std::string>& cns) {
  std::set<std::string> out;
  for (const auto& g : cns) {
    if (auto it = d.role_map.find(g); it != d.role_map.end())
      out.insert(it->second.begin(), it->second.end());
  }
  return out;
}

Json directory_to_json(const Directory& d) {
  Json roles = Json::object();
  for (const auto& [g, r] : d.role_map) roles[g] = r;
  Json j{{"id", d.id},
         {"name", d.name},
         {"kind", d.kind},
         {"urls", d.urls},
         {"bind_dn", d.bind_dn},
         {"has_bind_password", !d.bind_password_sealed.empty() || !d.bind_password_file.empty()},
         {"user_base", d.user_base},
         {"user_filter", d.user_filter},
         {"name_attribute", d.name_attribute},
         {"id_attribute", d.id_attribute},
         {"group_base", d.group_base},
         {"group_filter", d.group_filter},
         {"starttls", d.starttls},
         {"allow_plaintext", d.allow_plaintext},
         {"default", d.is_default},
         {"timeout_ms", d.timeout_ms},
         {"role_map", roles},
         {"created_at_ms", d.created_at_ms},
         {"version", d.version}};
  if (!d.ca_file.empty()) j["ca_file"] = d.ca_file;
  if (!d.bind_password_file.empty()) j["bind_password_file"] = d.bind_password_file;
  return j;
}

// The recorded form of a directory: its view with the sealed password, without what the log
// knows by itself (creation time, version).
static Json stored_form(const Directory& d) {
  Json j = directory_to_json(d);
  j.erase("has_bind_password");
  j.erase("created_at_ms");
  j.erase("version");
  if (!d.bind_password_sealed.empty()) j["bind_password_sealed"] = d.bind_password_sealed;
  return j;
}

// ---- decide -----------------------------------------------------------------------------
Result<Events> decide(const State& s, const CreateDirectory& c, const Context&) {
  const Directory& d = c.d;
  if (d.id.empty()) return invalid("directory id must not be empty");
  if (auto st = validate_directory(d); !st) return st.error();
  if (s.directories.find_by_name(d.name) != nullptr) {
    return Error::make(Code::already_exists, "a directory named '" + d.name + "' exists",
                       "directory_name_taken");
  }
  if (d.is_default && s.directories.default_directory() != nullptr) {
    return refused("default_directory_exists", "another directory is already the default");
  }
  return Events{{directory_stream(d.id), "DirectoryCreated", 1, stored_form(d)}};
}

namespace {

template <typename T>
void set_if(T& field, const std::optional<T>& v) {
  if (v) field = *v;
}

// The groups of directory `name` that a pool entitlement or an authorization names.
std::vector<std::string> groups_in_use(const State& s, const std::string& name) {
  const std::string suffix = "@" + name;
  auto of_directory = [&](const std::string& g) {
    return g.size() > suffix.size() &&
           g.compare(g.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  std::set<std::string> out;
  for (const auto& [id, p] : s.pools.pools) {
    for (const auto& g : p.entitled_groups) {
      if (of_directory(g)) out.insert(g);
    }
  }
  const std::string prefix = kGroupPrincipal;
  for (const auto& [id, a] : s.appcloud.authorizations) {
    if (a.user_id.rfind(prefix, 0) == 0 && of_directory(a.user_id.substr(prefix.size()))) {
      out.insert(a.user_id.substr(prefix.size()));
    }
  }
  return {out.begin(), out.end()};
}

// "<x>@<old>" -> "<x>@<new>" (x: a login or a group cn).
std::string renamed(const std::string& n, const std::string& to) {
  auto at = n.rfind('@');
  return (at == std::string::npos ? n : n.substr(0, at)) + "@" + to;
}

}  // namespace

Result<Events> decide(const State& s, const UpdateDirectory& c, const Context&) {
  const Directory* d = s.directories.find(c.id);
  if (d == nullptr) return not_found("directory " + c.id + " not found");
  if (auto st = check_expected(s, directory_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  Directory n = *d;
  set_if(n.name, c.name);
  set_if(n.kind, c.kind);
  set_if(n.urls, c.urls);
  set_if(n.bind_dn, c.bind_dn);
  if (c.bind_password_sealed) {
    n.bind_password_sealed = *c.bind_password_sealed;
    if (!c.bind_password_file) n.bind_password_file.clear();
  }
  if (c.bind_password_file) {
    n.bind_password_file = *c.bind_password_file;
    if (!c.bind_password_sealed) n.bind_password_sealed.clear();
  }
  set_if(n.user_base, c.user_base);
  set_if(n.user_filter, c.user_filter);
  set_if(n.name_attribute, c.name_attribute);
  set_if(n.id_attribute, c.id_attribute);
  set_if(n.group_base, c.group_base);
  set_if(n.group_filter, c.group_filter);
  set_if(n.starttls, c.starttls);
  set_if(n.ca_file, c.ca_file);
  set_if(n.allow_plaintext, c.allow_plaintext);
  set_if(n.is_default, c.is_default);
  set_if(n.timeout_ms, c.timeout_ms);
  set_if(n.role_map, c.role_map);
  if (auto st = validate_directory(n); !st) return st.error();
  std::vector<const User*> users;
  for (const auto& [id, u] : s.users.by_id) {
    if (u.directory_id == c.id) users.push_back(&u);
  }
  if (n.name != d->name) {
    if (s.directories.find_by_name(n.name) != nullptr) {
      return Error::make(Code::already_exists, "a directory named '" + n.name + "' exists",
                         "directory_name_taken");
    }
    auto in_use = groups_in_use(s, d->name);
    if (!in_use.empty()) {
      return refused("directory_groups_in_use",
                     "pool entitlements or authorizations name the group " + in_use.front() +
                         " of this directory; remove them before renaming it");
    }
  }
  if (n.is_default && !d->is_default && s.directories.default_directory() != nullptr) {
    return refused("default_directory_exists", "another directory is already the default");
  }
  if (n.id_attribute != d->id_attribute && !users.empty()) {
    return refused("directory_has_users", "id_attribute identifies the users of directory " +
                                              d->name + "; it cannot change while it has users");
  }
  // What changed, field by field (a field absent from a view is empty).
  Json before = stored_form(*d), after = stored_form(n), changes = Json::object();
  for (const auto* side : {&before, &after}) {
    for (const auto& [k, v] : side->items()) {
      Json b = before.contains(k) ? before[k] : Json("");
      Json a = after.contains(k) ? after[k] : Json("");
      if (a != b) changes[k] = a;
    }
  }
  // A password given is a new one even when it seals to the same text (a fresh nonce anyway).
  if (c.bind_password_sealed) changes["bind_password_sealed"] = n.bind_password_sealed;
  if (changes.empty()) return Events{};
  Events out{{directory_stream(c.id), "DirectoryUpdated", 1, changes}};
  if (n.name != d->name) {
    // Its users follow, with their ids (and desktops): "<login>@<new name>", groups likewise.
    std::sort(users.begin(), users.end(), [](auto* a, auto* b) { return a->id < b->id; });
    for (const User* u : users) {
      std::string name = renamed(u->name, n.name);
      if (auto st = validate_user_name("name", name); !st) return st.error();
      const User* holder = s.users.find_by_name(name);
      const User* other = s.users.find_confusable(name);
      for (const User* x : {holder, other}) {
        if (x != nullptr && x->directory_id != c.id) {
          return Error::make(
              Code::already_exists,
              "renaming would name a user '" + name + "', like the user '" + x->name + "'",
              "user_name_taken");
        }
      }
      std::set<std::string> groups;
      for (const auto& g : u->groups) groups.insert(renamed(g, n.name));
      out.push_back(
          {user_stream(u->id), "UserUpdated", 1,
           Json{{"name", name}, {"name_skeleton", user_name_skeleton(name)}, {"groups", groups}}});
    }
  }
  return out;
}

Result<Events> decide(const State& s, const DeleteDirectory& c, const Context&) {
  const Directory* d = s.directories.find(c.id);
  if (d == nullptr) return not_found("directory " + c.id + " not found");
  if (auto st = check_expected(s, directory_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  for (const auto& [id, u] : s.users.by_id) {
    if (u.directory_id == c.id) {
      return refused("directory_has_users",
                     "directory " + d->name + " still has users; delete them first");
    }
  }
  return Events{{directory_stream(c.id), "DirectoryDeleted", 1, Json{{"id", c.id}}}};
}

Result<Events> decide(const State& s, const ProvisionDirectoryUser& c, const Context& ctx) {
  const Directory* d = s.directories.find(c.directory_id);
  if (d == nullptr) return not_found("directory " + c.directory_id + " not found");
  if (c.external_id.empty()) return invalid("a directory user needs its external id");
  const User* u = s.users.find_external(c.directory_id, c.external_id);
  // What the role_map gives now, plus what an admin granted (those survive every sign-in).
  std::set<std::string> roles = c.roles;
  if (u != nullptr) roles.insert(u->granted_roles.begin(), u->granted_roles.end());
  if (auto st = validate_roles(roles); !st) return st.error();
  // A name another user holds (a local user, or a directory user the directory renamed).
  const User* holder = s.users.find_by_name(c.name);
  if (holder != nullptr && holder != u) {
    return Error::make(Code::already_exists, "a user named '" + c.name + "' already exists",
                       "user_name_taken");
  }
  if (u == nullptr) {
    if (c.new_user_id.empty() || s.users.find(c.new_user_id) != nullptr) {
      return invalid("a new user id is required");
    }
    if (auto st = validate_user_name("name", c.name); !st) return st.error();
    if (const User* other = s.users.find_confusable(c.name)) {
      return Error::make(
          Code::already_exists,
          "the name '" + c.name + "' looks like the existing user '" + other->name + "'",
          "user_name_confusable");
    }
    return Events{{user_stream(c.new_user_id), "UserCreated", 1,
                   Json{{"id", c.new_user_id},
                        {"name", c.name},
                        {"roles", c.roles},
                        {"directory_roles", c.roles},
                        {"password_hash", ""},
                        {"name_skeleton", user_name_skeleton(c.name)},
                        {"directory_id", c.directory_id},
                        {"external_id", c.external_id},
                        {"directory_dn", c.dn},
                        {"groups", c.groups}}}};
  }
  if (u->disabled) return refused("user_disabled", "user " + u->id + " is disabled");
  Json changes = Json::object();
  if (u->name != c.name) {
    if (auto st = validate_user_name("name", c.name); !st) return st.error();
    const User* other = s.users.find_confusable(c.name);
    if (other != nullptr && other != u) {
      return Error::make(
          Code::already_exists,
          "the name '" + c.name + "' looks like the existing user '" + other->name + "'",
          "user_name_confusable");
    }
    changes["name"] = c.name;
    changes["name_skeleton"] = user_name_skeleton(c.name);
  }
  if (u->directory_dn != c.dn) changes["directory_dn"] = c.dn;
  if (u->directory_roles != c.roles) {
    if (u->has_role(kRoleAdmin) && roles.count(kRoleAdmin) == 0 && s.users.enabled_admins <= 1) {
      return refused("last_admin", "the last enabled admin cannot lose the admin role");
    }
    changes["directory_roles"] = c.roles;
    changes["roles"] = roles;  // the effective roles, for readers of the log
  }
  Events out;
  if (u->groups != c.groups) {
    changes["groups"] = c.groups;
    // Pools the user is entitled to only through a group it left: end what that gave.
    pool_entitlement_loss_events(s, u->id, c.groups, ctx, out);
  }
  if (changes.empty()) return out;
  out.insert(out.begin(), Event{user_stream(u->id), "UserUpdated", 1, changes});
  return out;
}

Result<Events> decide(const State& s, const RevokeUserTokens& c, const Context&) {
  if (s.users.find(c.user_id) == nullptr) return not_found("user " + c.user_id + " not found");
  Events out;
  for (const auto& [hash, t] : s.users.tokens) {
    if (t.user_id == c.user_id && !t.revoked) {
      out.push_back({"tokens-" + c.user_id, "TokenRevoked", 1,
                     Json{{"token_hash", hash}, {"reason", c.reason}}});
    }
  }
  return out;
}

// ---- evolve -----------------------------------------------------------------------------
namespace {

Directory directory_from(const Json& j) {
  Directory d;
  d.id = j.at("id").get<std::string>();
  d.name = j.at("name").get<std::string>();
  d.kind = j.at("kind").get<std::string>();
  d.urls = j.at("urls").get<std::vector<std::string>>();
  d.bind_dn = j.at("bind_dn").get<std::string>();
  d.bind_password_sealed = j.value("bind_password_sealed", "");
  d.bind_password_file = j.value("bind_password_file", "");
  d.user_base = j.at("user_base").get<std::string>();
  d.user_filter = j.at("user_filter").get<std::string>();
  d.name_attribute = j.at("name_attribute").get<std::string>();
  d.id_attribute = j.at("id_attribute").get<std::string>();
  d.group_base = j.at("group_base").get<std::string>();
  d.group_filter = j.at("group_filter").get<std::string>();
  d.starttls = j.value("starttls", false);
  d.ca_file = j.value("ca_file", "");
  d.allow_plaintext = j.value("allow_plaintext", false);
  d.is_default = j.value("default", false);
  d.timeout_ms = j.value("timeout_ms", int64_t{5000});
  for (const auto& [g, r] : j.at("role_map").items())
    d.role_map[g] = r.get<std::set<std::string>>();
  return d;
}

void on_created(State& s, const Event& e, const Applied& at) {
  Directory d = directory_from(e.data);
  d.created_at_ms = at.recorded_at_ms;
  d.version = at.stream_version;
  s.directories.id_by_name[d.name] = d.id;
  s.directories.by_id[d.id] = std::move(d);
}

void on_updated(State& s, const Event& e, const Applied& at) {
  auto it = s.directories.by_id.find(e.stream.substr(10));  // "directory-"
  if (it == s.directories.by_id.end()) return;
  Json j = stored_form(it->second);
  for (const auto& [k, v] : e.data.items()) j[k] = v;
  Directory d = directory_from(j);
  d.created_at_ms = it->second.created_at_ms;
  d.version = at.stream_version;
  s.directories.id_by_name.erase(it->second.name);
  s.directories.id_by_name[d.name] = d.id;
  it->second = std::move(d);
}

void on_deleted(State& s, const Event& e, const Applied&) {
  auto it = s.directories.by_id.find(e.stream.substr(10));  // "directory-"
  if (it == s.directories.by_id.end()) return;
  s.directories.id_by_name.erase(it->second.name);
  s.directories.by_id.erase(it);
}

}  // namespace

void register_directories(EvolveTable& t) {
  t["DirectoryCreated"] = on_created;
  t["DirectoryUpdated"] = on_updated;
  t["DirectoryDeleted"] = on_deleted;
}

Json directories_to_json(const DirectoriesState& s) {
  Json out = Json::object();
  for (const auto& [id, d] : s.by_id) {
    Json j = directory_to_json(d);
    j["bind_password_sealed"] = d.bind_password_sealed;
    out[id] = j;
  }
  return out;
}

Status directories_from_json(DirectoriesState& s, const Json& j) {
  s = DirectoriesState{};
  for (const auto& [id, dj] : j.items()) {
    Directory d = directory_from(dj);
    d.created_at_ms = int_of<int64_t>(dj.at("created_at_ms"));
    d.version = int_of<uint64_t>(dj.at("version"));
    s.id_by_name[d.name] = d.id;
    s.by_id[id] = std::move(d);
  }
  return Status::Ok();
}

}  // namespace atrium::domain

// Directories (LDAP / Active Directory) that users sign in against, and the users they
// provision just in time (issue 14). Pure: the directory itself is reached by
// adapters/ldap_directory.h; this module only records what the API learnt from it.
//
// Streams: "directory-<id>" (DirectoryCreated, DirectoryUpdated, DirectoryDeleted). Directory users
// live in the users module ("user-<id>": UserCreated with directory_id, external_id, directory_dn
// and groups; UserUpdated when the name, DN, roles or groups change).
//
// Rules:
//   - a directory's name is 1 to 64 of [a-z0-9-] and unique [directory_name_taken]; at most
//     one is the default (a sign-in name without "@directory" tries it after the local users);
//   - every URL is ldap:// or ldaps://; a plain ldap:// URL without StartTLS needs
//     allow_plaintext [plaintext_not_allowed];
//   - the bind password is never in a directory's events: only the sealed form (secretbox,
//     api/crypto.h) or the path of a file holding it;
//   - a directory user is identified by (directory, external_id) (entryUUID or objectGUID):
//     a rename in the directory renames the Atrium user, which keeps its id (and desktop);
//   - groups are named "<group cn>@<directory name>"; the role_map maps a group's cn to roles;
//     a user's directory_roles are replaced at each sign-in or recheck, its granted_roles (an
//     admin's, domain/users.h) stay;
//   - UpdateDirectory changes the fields given, validated as at create; the id_attribute of a
//     directory with users stays [directory_has_users]; a rename renames its users
//     ("<login>@<new name>", same ids) and their groups, and is refused while a pool
//     entitlement or an authorization names one of its groups [directory_groups_in_use];
//   - a change of a user's groups that ends its entitlement to a pool ends its session and
//     dedicated assignment there, in the same decision (domain/pools.h).
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

struct Directory {
  std::string id;
  std::string name;
  std::string kind;  // ldap | active_directory
  std::vector<std::string> urls;
  std::string bind_dn;
  std::string bind_password_sealed;  // base64 secretbox (api/crypto.h); never shown
  std::string bind_password_file;    // or a file that holds the password
  std::string user_base;
  std::string user_filter;     // matches enabled users; the name/id clause is added to it
  std::string name_attribute;  // uid | sAMAccountName
  std::string id_attribute;    // entryUUID | objectGUID
  std::string group_base;
  std::string group_filter;
  bool starttls = false;
  std::string ca_file;
  bool allow_plaintext = false;
  bool is_default = false;
  int64_t timeout_ms = 5000;
  std::map<std::string, std::set<std::string>> role_map;  // group cn -> roles
  int64_t created_at_ms = 0;
  uint64_t version = 0;
};

struct DirectoriesState {
  std::map<std::string, Directory> by_id;
  std::unordered_map<std::string, std::string> id_by_name;

  const Directory* find(const std::string& id) const;
  const Directory* find_by_name(const std::string& name) const;
  const Directory* default_directory() const;
};

// ---- commands ---------------------------------------------------------------------------
struct CreateDirectory {
  Directory d;  // id, name, kind, ... (created_at/version ignored)
};

// Every field given replaces the directory's; the others stay. bind_password_sealed and
// bind_password_file replace each other (giving both is invalid).
struct UpdateDirectory {
  std::string id;
  std::optional<uint64_t> expected_version = {};
  std::optional<std::string> name = {};
  std::optional<std::string> kind = {};
  std::optional<std::vector<std::string>> urls = {};
  std::optional<std::string> bind_dn = {};
  std::optional<std::string> bind_password_sealed = {};
  std::optional<std::string> bind_password_file = {};
  std::optional<std::string> user_base = {};
  std::optional<std::string> user_filter = {};
  std::optional<std::string> name_attribute = {};
  std::optional<std::string> id_attribute = {};
  std::optional<std::string> group_base = {};
  std::optional<std::string> group_filter = {};
  std::optional<bool> starttls = {};
  std::optional<std::string> ca_file = {};  // "" clears
  std::optional<bool> allow_plaintext = {};
  std::optional<bool> is_default = {};
  std::optional<int64_t> timeout_ms = {};
  std::optional<std::map<std::string, std::set<std::string>>> role_map = {};
};

struct DeleteDirectory {
  std::string id;
  std::optional<uint64_t> expected_version;
};

// A directory user signed in (or was rechecked): create it the first time, else bring its
// name, DN, roles and groups up to date.
struct ProvisionDirectoryUser {
  std::string new_user_id;  // used when the user is new
  std::string directory_id;
  std::string external_id;
  std::string dn;
  std::string name;  // "<login>@<directory name>", already NFKC
  std::set<std::string> roles;
  std::set<std::string> groups;  // "<cn>@<directory name>"
};

// The directory no longer knows the user (deleted or disabled there): every token of it ends.
struct RevokeUserTokens {
  std::string user_id;
  std::string reason;
};

struct State;
Result<Events> decide(const State& s, const CreateDirectory& c, const Context& ctx);
Result<Events> decide(const State& s, const UpdateDirectory& c, const Context& ctx);
Result<Events> decide(const State& s, const DeleteDirectory& c, const Context& ctx);
Result<Events> decide(const State& s, const ProvisionDirectoryUser& c, const Context& ctx);
Result<Events> decide(const State& s, const RevokeUserTokens& c, const Context& ctx);

// Validation of a directory definition (also used by the API before sealing the password).
Status validate_directory(const Directory& d);

// A group name "<cn>@<directory>" of a known directory, else 400 unknown_group.
Status validate_group(const State& s, const std::string& group);

// The roles the role_map gives to these group cns (empty: none).
std::set<std::string> roles_for_groups(const Directory& d, const std::set<std::string>& cns);

std::string directory_stream(const std::string& id);
Json directory_to_json(const Directory& d);  // public view: no password, sealed or not

}  // namespace atrium::domain

// Directory sign-in over OpenLDAP's libldap (issue 14), behind a small interface so the API
// can be tested with a fake and the real thing runs against a real slapd.
//
// Each call opens its own connection (no shared handle, no lock): the URLs are tried in
// order, each with the directory's timeout for the connect and for every operation, so a dead
// server costs one timeout and the next URL is tried. ldaps:// checks the server certificate
// against ca_file (else the system's CAs) and the host name; ldap:// does StartTLS with the
// same checks when starttls is set, and is plain only when the directory allows it. Calls
// block: the API makes them on its HTTP worker, never on the writer thread.
#pragma once

#include <memory>
#include <set>
#include <string>

#include "common/result.h"
#include "domain/directories.h"

namespace atrium::adapters {

struct DirectoryEntry {
  std::string dn;
  std::string external_id;       // entryUUID, or objectGUID as 32 lower-case hex digits
  std::string login;             // the name attribute's value (uid / sAMAccountName)
  std::set<std::string> groups;  // cn of every group it is in, nested ones included
};

class DirectoryClient {
 public:
  virtual ~DirectoryClient() = default;
  // Searches `login` as the service account, reads its groups, then binds as it with
  // `password`. Errors: unauthenticated "bad_credentials" (no such or disabled user, wrong or
  // empty password), unavailable "directory_unavailable" (no URL answered, service bind
  // refused, timeouts).
  virtual Result<DirectoryEntry> sign_in(const domain::Directory& d,
                                         const std::string& bind_password, const std::string& login,
                                         const std::string& password) = 0;
  // Looks the user up by its stable id as the service account (the token recheck).
  // not_found "directory_user_gone" when the directory no longer has it as an enabled user.
  virtual Result<DirectoryEntry> lookup(const domain::Directory& d,
                                        const std::string& bind_password,
                                        const std::string& external_id) = 0;
};

std::unique_ptr<DirectoryClient> make_ldap_directory_client();

}  // namespace atrium::adapters

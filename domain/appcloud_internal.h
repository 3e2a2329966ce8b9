// Error builders and rules shared by the application cloud's files (appcloud.cpp,
// appcloud_servers.cpp, appcloud_membership.cpp, appcloud_publications.cpp, appcloud_json.cpp).
// Internal to domain/: nothing outside it includes this.
#pragma once

#include <string>
#include <vector>

#include "domain/appcloud.h"

namespace atrium::domain::appcloud_detail {

Error already(std::string reason, std::string msg);
Error missing(std::string reason, std::string msg);
Error field_error(const std::string& field, const std::string& problem, std::string reason);
std::string join(const std::vector<std::string>& items, const char* sep = ", ");

// The data of an ApplicationUnpublished / ApplicationUnauthorized event with its cause.
Json publication_removed(const Publication& p, const char* cause);
Json authorization_removed(const Authorization& a, const char* cause);
// Removes the authorizations, then the publications, at (scope, target), optionally of one
// application only. Authorizations of a removed publication carry cause "unpublished" when
// the publication itself is removed on request; otherwise both carry `cause`.
void remove_at(const AppCloudState& s, Scope scope, const std::string& target,
               const std::string* only_app, const char* pub_cause, const char* auth_cause,
               Events& out);

}  // namespace atrium::domain::appcloud_detail

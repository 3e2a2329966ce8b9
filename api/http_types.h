// Transport-neutral request/response types: handlers never see Pistache.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/result.h"
#include "domain/event.h"

namespace atrium::api {

using domain::Json;

struct Principal {
  std::string user_id;
  std::string name;
  std::set<std::string> roles;
  std::string token_hash;
  std::string agent_server_id;  // a legacy agent user (before issue 11): its server ("" = none)
  std::string agent_id;         // an enrolled agent's credential (api/routes_agents.cpp)
  bool has_role(const std::string& r) const { return roles.count(r) > 0; }
  bool is_admin() const { return has_role("admin"); }
};

struct HttpRequest {
  std::string method;
  std::string path;
  std::map<std::string, std::string> query;              // decoded
  std::unordered_map<std::string, std::string> params;   // from the route template
  std::unordered_map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string request_id;
  std::string remote_address;  // the peer's IP address, from the transport ("" = unknown)
  std::optional<Principal> principal;

  std::optional<std::string> header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    if (it == headers.end()) return std::nullopt;
    return it->second;
  }
  const std::string& param(const std::string& name) const { return params.at(name); }
};

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;

  static HttpResponse json(int status, const Json& body);
  HttpResponse& with_header(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
    return *this;
  }
};

// RFC 9457 problem+json for an error. The single error->HTTP status table lives here.
int http_status(Code c);
HttpResponse problem(const Error& e, const std::string& instance = {});
HttpResponse problem(Code c, const std::string& detail, const std::string& reason = {});
// 429 Too Many Requests as problem+json, with Retry-After in whole seconds (at least 1).
HttpResponse too_many_requests(const std::string& detail, const std::string& reason,
                               int64_t retry_after_ms);

}  // namespace atrium::api

// Routing on path templates ("/v1/users/{id}"), independent of Pistache. The template is
// also the `route` label of HTTP metrics, so label cardinality stays bounded.
#pragma once

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "api/http_types.h"

namespace atrium::api {

using Handler = std::function<HttpResponse(HttpRequest&)>;

// Who may call a route: nobody authenticated (public), any valid token, or given roles.
// "admin" may call every authenticated route.
struct Access {
  bool authenticated = true;
  std::set<std::string> roles;  // empty with authenticated = any role
  // An agent endpoint (api/routes_agents.cpp): its handler authenticates the agent credential
  // itself (rejections with Retry-After, counted, logged once per agent and interval), and its
  // requests are not access-logged one line each (metrics count them).
  bool agent = false;
  // On a follower of a shared log, writes (every method but GET and HEAD) are forwarded to the
  // leader before anything else; a `local` route is handled by the follower itself, which then
  // forwards (Api::forward) only what needs the writer (agent heartbeats: api/routes_agents.cpp).
  bool local = false;
  static Access Public() { return {false, {}}; }
  static Access AnyRole() { return {true, {}}; }
  static Access Roles(std::set<std::string> r) { return {true, std::move(r)}; }
  static Access Admin() { return {true, {"admin"}}; }
  static Access Agent() { return {false, {}, true}; }
};

struct Route {
  std::string method;
  std::string tmpl;
  std::vector<std::string> segments;
  Access access;
  Handler handler;
};

class Router {
 public:
  void add(std::string method, std::string tmpl, Access access, Handler h);
  // Replaces the handler of an existing route with wrap(old handler), keeping its access
  // rule; adds `fallback_access` + wrap(nullptr) when there is no such route yet. Lets two
  // route files share one path (e.g. POST /v1/launches for pools and applications).
  void wrap(const std::string& method, const std::string& tmpl, Access fallback_access,
            const std::function<Handler(Handler)>& wrap);

  struct Match {
    const Route* route = nullptr;
    std::unordered_map<std::string, std::string> params;
    std::vector<std::string> allowed;  // methods of a matching path, for 405
    std::string tmpl;                  // matched template, or "unmatched"
  };
  Match match(const std::string& method, const std::string& path) const;
  // Every route, in registration order (the contract test holds them against openapi.yaml).
  const std::vector<Route>& routes() const { return routes_; }

 private:
  std::vector<Route> routes_;
};

// Splits a path into segments, decoding percent-escapes; false when the path is malformed.
bool split_path(const std::string& path, std::vector<std::string>& out);
std::string url_decode(std::string_view s, bool plus_is_space, bool* ok);

}  // namespace atrium::api

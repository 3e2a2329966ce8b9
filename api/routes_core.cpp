// Core routes: health, metrics, OpenAPI, login, users, and the audit log.
#include <algorithm>
#include <charconv>

#include "api/api.h"
#include "api/crypto.h"
#include "api/json_input.h"
#include "domain/state.h"
#include "domain/user_names.h"

namespace atrium::api {

using domain::State;
using pipeline::Command;

namespace {

bool parse_u64(const std::string& s, uint64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

// Secrets never leave the broker, even for auditors: password and token hashes are redacted,
// at any depth.
void redact(Json& j) {
  if (j.is_object()) {
    for (auto& [k, v] : j.items()) {
      if (k == "password_hash" || k == "token_hash" || k == "bind_password_sealed" ||
          k == "secret_sealed" || k == "recovery_code_hashes" || k == "recovery_code_hash") {
        v = "[redacted]";
      } else {
        redact(v);
      }
    }
  } else if (j.is_array()) {
    for (auto& v : j) redact(v);
  }
}

Json event_to_json(const eventstore::RecordedEvent& e) {
  Json data = Json::parse(e.data, nullptr, false);
  if (data.is_discarded()) data = e.data;
  redact(data);
  Json j{{"position", e.position},
         {"stream", e.stream},
         {"stream_version", e.stream_version},
         {"type", e.type},
         {"schema_version", e.schema_version},
         {"recorded_at_ms", e.recorded_at_ms},
         {"actor", e.actor},
         {"correlation_id", e.correlation_id},
         {"data", data},
         {"hash", eventstore::to_hex(e.hash)}};
  if (!e.causation_id.empty()) j["causation_id"] = e.causation_id;
  if (!e.idempotency_key.empty()) j["idempotency_key"] = e.idempotency_key;
  return j;
}

// Public view of a user, with no password hash, and its second factor's state (the console
// shows it; the secret and recovery codes never leave the broker).
Json user_view(const State& s, const domain::User& u) {
  Json j = domain::user_to_json(u);
  const domain::TotpEntry* e = s.totp.find(u.id);
  j["totp"] = Json{{"enabled", s.totp.enabled(u.id)},
                   {"required", s.totp.required(u)},
                   {"required_for_user", e != nullptr && e->required}};
  return j;
}

// Reads a password field: 8 to 1024 bytes.
std::optional<std::string> read_password(BodyReader& br, bool required) {
  return br.str("password", required, 1024, 8);
}

// Reads a user name and returns its NFKC form (the rules themselves are the domain's).
std::optional<std::string> read_user_name(BodyReader& br) {
  auto raw = br.str("name", true, 512, 1);
  if (!raw) return std::nullopt;
  auto n = domain::normalize_user_name(*raw);
  if (!n.ok()) {
    br.fail("name", n.error().message);
    return std::nullopt;
  }
  return *n;
}

void register_health(Api& api, const std::string& openapi_text) {
  Router& r = api.router();
  r.add("GET", "/healthz", Access::Public(), [](HttpRequest&) {
    return HttpResponse::json(200, Json{{"status", "ok"}});
  });
  r.add("GET", "/readyz", Access::Public(), [&api](HttpRequest&) {
    uint64_t durable = api.store().last_position();
    uint64_t applied = api.views().position();
    // Details (paths, RocksDB's words) go to the log, not to this public route.
    if (!api.store().corruption().empty()) {
      return problem(Error::make(Code::unavailable,
                                 "the event store read corrupted data; see the broker's log",
                                 "storage_corrupt"));
    }
    if (!api.pipeline().storage_ok()) {
      return problem(Error::make(Code::unavailable,
                                 "storage failed; writes are refused until it recovers",
                                 "storage_unavailable"));
    }
    if (!api.started() || applied < durable) {
      return problem(Error::make(Code::unavailable,
                                 "projections are at " + std::to_string(applied) + " of " +
                                     std::to_string(durable) + " events",
                                 "not_ready"));
    }
    return HttpResponse::json(200, Json{{"status", "ready"}, {"position", durable}});
  });
  r.add("GET", "/metrics", Access::Public(), [&api](HttpRequest&) {
    HttpResponse resp;
    resp.body = api.metrics().serialize();
    resp.content_type = "text/plain; version=0.0.4; charset=utf-8";
    return resp;
  });
  r.add("GET", "/openapi.yaml", Access::Public(), [openapi_text](HttpRequest&) {
    HttpResponse resp;
    resp.body = openapi_text;
    resp.content_type = "application/yaml";
    return resp;
  });
}

void register_auth(Api& api) {
  Router& r = api.router();
  r.add("POST", "/v1/auth/login", Access::Public(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"name", "password", "totp_code", "recovery_code"});
    auto raw_name = br.str("name", true, 512, 1);
    auto password = br.str("password", true, 1024, 1);
    auto totp_code = br.str("totp_code", false, 16, 1);
    auto recovery_code = br.str("recovery_code", false, 64, 1);
    if (auto st = br.finish(); !st) return problem(st.error());
    // Names are stored in NFKC: `ａｄｍｉｎ` signs in as `admin`, and throttles count by it.
    auto norm = domain::normalize_user_name(*raw_name);
    std::string name = norm.ok() ? *norm : *raw_name;
    // "<login>@<directory>", or a name no local user has while a default directory exists:
    // the directory checks the password (api/directory_auth.cpp).
    auto directory = api.views().read([&](const State& s) -> std::optional<std::pair<domain::Directory, std::string>> {
      if (auto at = name.rfind('@'); at != std::string::npos && at > 0) {
        if (const domain::Directory* d = s.directories.find_by_name(name.substr(at + 1))) {
          return std::make_pair(*d, name.substr(0, at));
        }
      }
      if (s.users.find_by_name(name) == nullptr) {
        if (const domain::Directory* d = s.directories.default_directory()) {
          return std::make_pair(*d, name);
        }
      }
      return std::nullopt;
    });
    if (directory) {
      return api.directory_sign_in(req, directory->first, directory->second, *password, totp_code,
                                   recovery_code);
    }
    auto found =
        api.views().read([&](const State& s) -> std::optional<std::pair<std::string, std::string>> {
          const domain::User* u = s.users.find_by_name(name);
          // A directory user's password is the directory's, never a local one.
          if (u == nullptr || u->disabled || !u->directory_id.empty()) return std::nullopt;
          return std::make_pair(u->id, u->password_hash);
        });
    // One answer for an unknown user, a user without a password and a wrong password, in
    // the same time (Api::check_password runs the KDF on every path).
    static const Error kBad =
        Error::make(Code::unauthenticated, "wrong name or password", "bad_credentials");
    if (auto refusal = api.check_password(req, name, found ? found->first : "",
                                          found ? std::optional(found->second) : std::nullopt,
                                          *password, kBad)) {
      return *refusal;
    }
    if (auto refusal = api.check_second_factor(req, name, found->first, totp_code, recovery_code)) {
      return *refusal;
    }
    api.login_succeeded(name);
    return api.issue_login_token(req, found->first, name);
  });
  r.add("POST", "/v1/auth/logout", Access::AnyRole(), [&api](HttpRequest& req) {
    // Logout acts on the calling token; a replayed answer for another token of the same
    // user would leave that token alive, so Idempotency-Key is ignored here.
    req.headers.erase("idempotency-key");
    domain::RevokeToken cmd{req.principal->token_hash};
    return api.run(req, command("RevokeToken", cmd, 204));
  });
}

// Binding a user with role agent to a server (agent_server_id, the stop-gap of issue 10.12) is
// replaced by enrolled agents (api/routes_agents.cpp); existing bindings keep working and
// folding, and may be removed.
Error agent_binding_replaced() {
  return Error{Code::invalid_argument,
               "agent_server_id is replaced by enrolled agents: create an enrollment token for "
               "the server (POST /v1/agents/enrollment-tokens {server_id}) and enroll its agent",
               "agent_binding_replaced",
               {{"agent_server_id", "new bindings are made by enrolling an agent"}}};
}

void register_users(Api& api) {
  Router& r = api.router();
  r.add("POST", "/v1/users", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"name", "password", "roles", "agent_server_id"});
    auto name = read_user_name(br);
    auto password = read_password(br, false);
    auto roles = br.string_set("roles", false);
    auto agent_server = br.str("agent_server_id", false, 128, 1);
    if (auto st = br.finish(); !st) return problem(st.error());
    if (agent_server) return problem(agent_binding_replaced());
    domain::CreateUser cmd{new_id(), *name, roles.value_or(std::set<std::string>{"user"}), ""};
    if (password) {
      auto h = hash_password(*password);
      if (!h.ok()) return problem(h.error());
      cmd.password_hash = *h;
    }
    HttpResponse resp = api.run(req, command("CreateUser", cmd, 201, [id = cmd.id](const State& s) {
                                  return user_view(s, *s.users.find(id));
                                }));
    if (resp.status == 201) {
      Json j = Json::parse(resp.body, nullptr, false);
      if (j.is_object()) resp.with_header("Location", "/v1/users/" + j.value("id", ""));
    }
    return resp;
  });

  r.add("GET", "/v1/users", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    return api.with_state(req, [&](const State& s) {
      std::vector<const domain::User*> all;
      for (const auto& [id, u] : s.users.by_id) {
        if (id > pg->after) all.push_back(&u);
      }
      size_t n = std::min(all.size(), pg->limit);
      std::partial_sort(all.begin(), all.begin() + static_cast<long>(n), all.end(),
                        [](auto* a, auto* b) { return a->id < b->id; });
      Json items = Json::array();
      for (size_t i = 0; i < n; ++i) items.push_back(user_view(s, *all[i]));
      Json out{{"items", items}, {"next_cursor", nullptr}};
      if (all.size() > n) out["next_cursor"] = Api::encode_cursor(all[n - 1]->id);
      return HttpResponse::json(200, out);
    });
  });

  r.add("GET", "/v1/users/{id}", Access::AnyRole(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    if (!req.principal->is_admin() && req.principal->user_id != id) {
      return problem(not_found("user " + id + " not found"));  // 404, not 403
    }
    return api.with_state(req, [&](const State& s) {
      return entity_response(s.users.find(id), "user", id,
                             [&s](const domain::User& u) { return user_view(s, u); });
    });
  });

  r.add("PATCH", "/v1/users/{id}", Access::AnyRole(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    bool self = req.principal->user_id == id;
    if (!req.principal->is_admin() && !self) return problem(not_found("user " + id + " not found"));
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"roles", "granted_roles", "password", "current_password", "disabled",
                          "agent_server_id"});
    auto roles = br.string_set("roles", false);
    auto granted = br.string_set("granted_roles", false);
    auto password = read_password(br, false);
    auto current = br.str("current_password", false, 1024, 1);
    auto disabled = br.boolean("disabled", false);
    auto agent_server = br.str("agent_server_id", false, 128, 0);
    if (auto st = br.finish(); !st) return problem(st.error());
    if (!req.principal->is_admin() && (roles || granted || disabled || agent_server)) {
      return problem(Error::make(Code::permission_denied,
                                 "only an admin may change roles, disable a user or bind an agent",
                                 "role_required"));
    }
    // Legacy bindings can be removed ("") but no new one made: agents enroll now.
    if (agent_server && !agent_server->empty()) return problem(agent_binding_replaced());
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    // Changing one's own password proves the current one (a stolen token alone cannot lock
    // the owner out); an admin resetting another user's does not. A user who has no password
    // yet sets the first one with its token alone: there is nothing to prove.
    if (password && self) {
      auto own = api.views().read(
          [&](const State& s) -> std::optional<std::pair<std::string, std::string>> {
            const domain::User* u = s.users.find(id);
            if (u == nullptr) return std::nullopt;
            return std::make_pair(u->name, u->password_hash);
          });
      if (own && !own->second.empty()) {
        if (!current) {
          return problem(Error{Code::invalid_argument,
                               "changing your own password needs current_password",
                               "current_password_required",
                               {{"current_password", "is required to change your own password"}}});
        }
        static const Error kWrong = Error::make(
            Code::permission_denied, "current_password is wrong", "current_password_wrong");
        if (auto refusal = api.check_password(req, own->first, id, own->second, *current, kWrong)) {
          return *refusal;
        }
      }
    }
    domain::UpdateUser cmd{id, *expected, roles, std::nullopt, disabled, agent_server, granted};
    if (password) {
      auto h = hash_password(*password);
      if (!h.ok()) return problem(h.error());
      cmd.password_hash = *h;
    }
    return api.run(req, command("UpdateUser", cmd, 200,
                                [id](const State& s) { return user_view(s, *s.users.find(id)); }));
  });

  r.add("DELETE", "/v1/users/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    domain::DeleteUser cmd{req.param("id"), *expected};
    return api.run(req, command("DeleteUser", cmd, 204));
  });
}

void register_audit(Api& api) {
  Router& r = api.router();
  r.add("GET", "/v1/events", Access::Admin(), [&api](HttpRequest& req) {
    uint64_t after = 0;
    if (auto it = req.query.find("after"); it != req.query.end() && !parse_u64(it->second, after)) {
      return problem(invalid("after must be an event position", "invalid_query"));
    }
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    if (!pg->after.empty() && !parse_u64(pg->after, after)) {
      return problem(invalid("cursor is not one this server issued", "invalid_query"));
    }
    std::string stream = req.query.count("stream") ? req.query["stream"] : "";
    std::string type = req.query.count("type") ? req.query["type"] : "";
    Json items = Json::array();
    uint64_t last_seen = after;
    constexpr uint64_t kMaxScan = 100000;  // bounds the work of one request with filters
    auto scanned = api.store().scan(after, kMaxScan, [&](const eventstore::RecordedEvent& e) {
      last_seen = e.position;
      if ((stream.empty() || e.stream == stream) && (type.empty() || e.type == type)) {
        items.push_back(event_to_json(e));
      }
      return items.size() < pg->limit;
    });
    if (!scanned.ok()) return problem(scanned.error());
    Json out{{"items", items}, {"next_cursor", nullptr}};
    if (last_seen < api.store().last_position()) {
      out["next_cursor"] = Api::encode_cursor(std::to_string(last_seen));
    }
    return HttpResponse::json(200, out);
  });

  r.add("GET", "/v1/streams/{stream}", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    uint64_t after = 0;
    if (!pg->after.empty() && !parse_u64(pg->after, after)) {
      return problem(invalid("cursor is not one this server issued", "invalid_query"));
    }
    const std::string& stream = req.param("stream");
    auto events = api.store().read_stream(stream, after, pg->limit + 1);
    if (!events.ok()) return problem(events.error());
    if (events->empty() && after == 0) return problem(not_found("stream " + stream + " not found"));
    Json items = Json::array();
    size_t n = std::min(events->size(), pg->limit);
    for (size_t i = 0; i < n; ++i) items.push_back(event_to_json((*events)[i]));
    Json out{{"stream", stream}, {"items", items}, {"next_cursor", nullptr}};
    if (events->size() > n) {
      out["next_cursor"] = Api::encode_cursor(std::to_string((*events)[n - 1].stream_version));
    }
    return HttpResponse::json(200, out);
  });

  // Server-Sent Events, long-poll style: sends what exists after Last-Event-ID (or ?after),
  // waiting up to sse_wait for the first new event, then ends the response; EventSource
  // clients reconnect by themselves (retry: 500) and resume from the last id they saw.
  // This keeps every HTTP worker free of unbounded streams.
  r.add("GET", "/v1/events/stream", Access::Admin(), [&api](HttpRequest& req) {
    uint64_t after = 0;
    std::optional<std::string> from = req.header("last-event-id");
    if (!from && req.query.count("after")) from = req.query["after"];
    if (from && !parse_u64(*from, after)) {
      return problem(invalid("Last-Event-ID must be an event position", "invalid_header"));
    }
    if (auto refusal = api.enter_stream(*req.principal)) return *refusal;
    std::string out = "retry: 500\n\n";
    // Wait in short slices so a draining daemon answers waiting streams promptly.
    auto deadline = std::chrono::steady_clock::now() + api.config().sse_wait;
    while (api.store().last_position() <= after && !api.draining() &&
           std::chrono::steady_clock::now() < deadline) {
      api.store().wait_for(after, std::chrono::milliseconds(250));
    }
    size_t n = 0;
    auto scanned = api.store().scan(after, 1000, [&](const eventstore::RecordedEvent& e) {
      out += "id: " + std::to_string(e.position) + "\nevent: " + e.type +
             "\ndata: " + event_to_json(e).dump() + "\n\n";
      ++n;
      return true;
    });
    api.leave_stream(*req.principal);
    if (!scanned.ok()) return problem(scanned.error());
    if (n == 0) out += ": no new events\n\n";
    HttpResponse resp;
    resp.body = std::move(out);
    resp.content_type = "text/event-stream";
    resp.with_header("Cache-Control", "no-cache");
    return resp;
  });
}

}  // namespace

void register_core_routes(Api& api, const std::string& openapi_text) {
  register_health(api, openapi_text);
  register_auth(api);
  register_users(api);
  register_audit(api);
}

}  // namespace atrium::api

// Application-cloud routes [DOMAIN.md section 6]: clusters, servers and their applications,
// publications, authorizations, entitlements, launches and the "why this server" session view.
// Every write is one domain command through the pipeline; every refusal keeps its reason.
#include <algorithm>

#include "api/api.h"
#include "api/crypto.h"
#include "api/json_input.h"
#include "domain/placement.h"
#include "domain/state.h"

namespace atrium::api {

using domain::Json;
using domain::State;
using pipeline::Command;

namespace {

HttpResponse with_etag(HttpResponse r, uint64_t version) {
  r.with_header("ETag", "\"" + std::to_string(version) + "\"");
  return r;
}

// Runs a create command and adds Location: <prefix><id of the reply>.
HttpResponse run_created(Api& api, const HttpRequest& req, Command c, const std::string& prefix) {
  HttpResponse resp = api.run(req, std::move(c));
  if (resp.status == 201) {
    Json j = Json::parse(resp.body, nullptr, false);
    if (j.is_object() && j.contains("id")) resp.with_header("Location", prefix + j.value("id", ""));
  }
  return resp;
}

// A body that may be absent (empty) or must be a JSON object.
Result<Json> optional_object(const std::string& body) {
  if (body.empty()) return Json::object();
  return parse_object(body);
}

// Reads "placement" through the domain's reader; its refusal (reason invalid_placement) is
// kept in `err` and answered once the other fields are known to be well formed.
std::optional<domain::ClusterPlacement> read_placement(BodyReader& br, std::optional<Error>& err) {
  const Json* pj = br.object("placement", false);
  if (pj == nullptr) return std::nullopt;
  auto p = domain::placement_from_json(*pj);
  if (!p.ok()) {
    err = p.error();
    return std::nullopt;
  }
  return *p;
}

std::optional<bool> read_service(BodyReader& br) {
  auto v = br.one_of("remote_app_service", false, {"enabled", "disabled"});
  if (!v) return std::nullopt;
  return *v == "enabled";
}

const std::string* query(const HttpRequest& req, const char* name) {
  auto it = req.query.find(name);
  return it == req.query.end() ? nullptr : &it->second;
}

// ?scope=server|cluster; nullopt with `err` set when present and wrong or required and absent.
std::optional<domain::Scope> scope_query(const HttpRequest& req, bool required,
                                         std::optional<Error>& err) {
  const std::string* v = query(req, "scope");
  if (v == nullptr) {
    if (required) err = invalid("scope is required: server or cluster", "invalid_query");
    return std::nullopt;
  }
  auto s = domain::parse_scope(*v);
  if (!s) err = invalid("scope must be server or cluster", "invalid_query");
  return s;
}

// Pages over an id-ordered map: entries after the cursor that pass `keep`.
template <typename M, typename Keep, typename View>
HttpResponse page_of(const M& m, const Page& pg, Keep keep, View view) {
  Json items = Json::array();
  std::string last;
  bool more = false;
  for (auto it = m.upper_bound(pg.after); it != m.end(); ++it) {
    if (!keep(it->second)) continue;
    if (items.size() == pg.limit) {
      more = true;
      break;
    }
    items.push_back(view(it->second));
    last = it->first;
  }
  Json out{{"items", items}, {"next_cursor", nullptr}};
  if (more) out["next_cursor"] = Api::encode_cursor(last);
  return HttpResponse::json(200, out);
}

// Pages over a sorted list of ids.
template <typename View>
HttpResponse page_ids(const std::vector<std::string>& ids, const Page& pg, View view) {
  Json items = Json::array();
  auto it = std::upper_bound(ids.begin(), ids.end(), pg.after);
  std::string last;
  bool more = false;
  for (; it != ids.end(); ++it) {
    if (items.size() == pg.limit) {
      more = true;
      break;
    }
    items.push_back(view(*it));
    last = *it;
  }
  Json out{{"items", items}, {"next_cursor", nullptr}};
  if (more) out["next_cursor"] = Api::encode_cursor(last);
  return HttpResponse::json(200, out);
}

std::string target_name(const domain::AppCloudState& ac, domain::Scope scope,
                        const std::string& id) {
  if (scope == domain::Scope::server) {
    const domain::Server* s = ac.server(id);
    return s ? s->name : "";
  }
  const domain::Cluster* c = ac.cluster(id);
  return c ? c->name : "";
}

Json cluster_view(const domain::AppCloudState& ac, const domain::Cluster& c) {
  Json j = domain::cluster_to_json(c);
  Json members = Json::array();
  std::set<std::string> apps;
  for (const domain::Server* s : ac.members(c.id)) {
    members.push_back(s->id);
    apps.insert(s->applications.begin(), s->applications.end());
  }
  j["servers"] = members;
  j["applications"] = apps;
  return j;
}

Json load_json(const domain::LoadReport& l) {
  return Json{{"cpu_load", l.cpu_load},
              {"memory_load", l.memory_load},
              {"sessions", l.sessions},
              {"reported_at_ms", l.reported_at_ms}};
}

// A server as admins see it: the live load (liveness table) where there is one, its agent.
Json server_view(Api& api, const State& st, const domain::Server& s) {
  const domain::AppCloudState& ac = st.appcloud;
  Json j = domain::server_to_json(s);
  if (auto l = api.liveness().load(s.id)) {
    j["load"] = load_json(*l);
    j["load_source"] = "live";
  } else {
    j["load_source"] = s.load ? "log" : "none";
  }
  if (const domain::Agent* a = st.agents.of_server(s.id)) {
    j["agent"] = Json{{"id", a->id}, {"registration", domain::effective_registration(st, *a)}};
  } else {
    j["agent"] = nullptr;
  }
  if (auto d = ac.desired_state(s.id)) j["desired_state"] = domain::desired_state_to_json(*d);
  if (auto st = ac.sync_status(s.id)) {
    j["in_sync"] = st->in_sync;
    j["sync"] = domain::sync_status_to_json(*st);
  }
  return j;
}

// ---- clusters ---------------------------------------------------------------------------
void register_clusters(Api& api) {
  Router& r = api.router();
  r.add("POST", "/v1/clusters", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"name", "description", "placement"});
    auto name = br.str("name", true, 128, 1);
    auto description = br.str("description", false, 4096);
    std::optional<Error> placement_err;
    auto placement = read_placement(br, placement_err);
    if (auto st = br.finish(); !st) return problem(st.error());
    if (placement_err) return problem(*placement_err);
    domain::CreateCluster cmd{new_id(), *name, description.value_or(""),
                              placement.value_or(domain::ClusterPlacement{})};
    auto c = command("CreateCluster", cmd, 201, [id = cmd.id](const State& s) {
      const domain::Cluster* cl = s.appcloud.cluster(id);
      return cl ? cluster_view(s.appcloud, *cl) : Json::object();
    });
    return run_created(api, req, std::move(c), "/v1/clusters/");
  });

  r.add("GET", "/v1/clusters", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    return api.with_state(req, [&](const State& s) {
      return page_of(
          s.appcloud.clusters, *pg, [](const auto&) { return true; },
          [](const domain::Cluster& c) { return domain::cluster_to_json(c); });
    });
  });

  r.add("GET", "/v1/clusters/{id}", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      return entity_response(s.appcloud.cluster(id), "cluster", id, [&](const domain::Cluster& x) {
        return cluster_view(s.appcloud, x);
      });
    });
  });

  r.add("PATCH", "/v1/clusters/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"name", "description", "placement"});
    auto name = br.str("name", false, 128, 1);
    auto description = br.str("description", false, 4096);
    std::optional<Error> placement_err;
    auto placement = read_placement(br, placement_err);
    if (auto st = br.finish(); !st) return problem(st.error());
    if (placement_err) return problem(*placement_err);
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    std::string id = req.param("id");
    domain::UpdateCluster cmd{id, *expected, name, description, placement};
    return api.run(req, command("UpdateCluster", cmd, 200, [id](const State& s) {
      const domain::Cluster* cl = s.appcloud.cluster(id);
      return cl ? cluster_view(s.appcloud, *cl) : Json::object();
    }));
  });

  r.add("DELETE", "/v1/clusters/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    domain::DeleteCluster cmd{req.param("id"), *expected};
    return api.run(req, command("DeleteCluster", cmd, 204));
  });
}

// ---- servers ----------------------------------------------------------------------------
std::function<Json(const State&)> render_server(Api& api, const std::string& id) {
  return [&api, id](const State& s) {
    const domain::Server* v = s.appcloud.server(id);
    return v ? server_view(api, s, *v) : Json::object();
  };
}

void register_servers(Api& api) {
  Router& r = api.router();
  r.add("POST", "/v1/servers", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"name", "address", "os_type", "os_version", "cpus", "memory_mb",
                          "remote_app_service"});
    auto name = br.str("name", true, 128, 1);
    auto address = br.str("address", true, 255, 1);
    auto os_type = br.one_of("os_type", true, {"windows", "linux"});
    auto os_version = br.str("os_version", false, 128);
    auto cpus = br.integer("cpus", false, 0, 65536);
    auto memory = br.integer("memory_mb", false, 0, int64_t{1} << 40);
    auto service = read_service(br);
    if (auto st = br.finish(); !st) return problem(st.error());
    domain::CreateServer cmd{new_id(),
                             *name,
                             *address,
                             *os_type,
                             os_version.value_or(""),
                             static_cast<uint32_t>(cpus.value_or(0)),
                             static_cast<uint64_t>(memory.value_or(0)),
                             service.value_or(true)};
    auto c = command("CreateServer", cmd, 201, render_server(api, cmd.id));
    return run_created(api, req, std::move(c), "/v1/servers/");
  });

  r.add("GET", "/v1/servers", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    const std::string* cluster = query(req, "cluster_id");
    std::optional<bool> standalone;
    if (const std::string* v = query(req, "standalone")) {
      if (*v != "true" && *v != "false") {
        return problem(invalid("standalone must be true or false", "invalid_query"));
      }
      standalone = *v == "true";
    }
    return api.with_state(req, [&](const State& s) {
      return page_of(
          s.appcloud.servers, *pg,
          [&](const domain::Server& v) {
            if (cluster != nullptr && v.cluster_id != *cluster) return false;
            return !standalone || v.standalone() == *standalone;
          },
          [](const domain::Server& v) { return domain::server_to_json(v); });
    });
  });

  r.add("GET", "/v1/servers/{id}", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      return entity_response(s.appcloud.server(id), "server", id, [&](const domain::Server& x) {
        return server_view(api, s, x);
      });
    });
  });

  r.add("PATCH", "/v1/servers/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body,
                  {"name", "address", "os_version", "cpus", "memory_mb", "remote_app_service"});
    auto name = br.str("name", false, 128, 1);
    auto address = br.str("address", false, 255, 1);
    auto os_version = br.str("os_version", false, 128);
    auto cpus = br.integer("cpus", false, 0, 65536);
    auto memory = br.integer("memory_mb", false, 0, int64_t{1} << 40);
    auto service = read_service(br);
    if (auto st = br.finish(); !st) return problem(st.error());
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    std::string id = req.param("id");
    domain::UpdateServer cmd{id, *expected, name, address, os_version, std::nullopt,
                             std::nullopt, service};
    if (cpus) cmd.cpus = static_cast<uint32_t>(*cpus);
    if (memory) cmd.memory_mb = static_cast<uint64_t>(*memory);
    return api.run(req, command("UpdateServer", cmd, 200, render_server(api, id)));
  });

  r.add("DELETE", "/v1/servers/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    domain::DeleteServer cmd{req.param("id"), *expected};
    return api.run(req, command("DeleteServer", cmd, 204));
  });

  r.add("POST", "/v1/servers/{id}/join", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"cluster_id"});
    auto cluster = br.str("cluster_id", true, 128, 1);
    if (auto st = br.finish(); !st) return problem(st.error());
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    std::string id = req.param("id");
    domain::JoinCluster cmd{id, *cluster, *expected};
    return api.run(req, command("JoinCluster", cmd, 200, render_server(api, id)));
  });

  r.add("POST", "/v1/servers/{id}/leave", Access::Admin(), [&api](HttpRequest& req) {
    auto body = optional_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {});
    if (auto st = br.finish(); !st) return problem(st.error());
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    std::string id = req.param("id");
    domain::LeaveCluster cmd{id, *expected};
    return api.run(req, command("LeaveCluster", cmd, 200, render_server(api, id)));
  });

  r.add("POST", "/v1/servers/{id}/applications", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"name", "executable_path", "description", "desktop_file"});
    auto name = br.str("name", true, 128, 1);
    auto exe = br.str("executable_path", true, 1024, 1);
    auto description = br.str("description", false, 4096);
    auto desktop = br.str("desktop_file", false, 1024);
    if (auto st = br.finish(); !st) return problem(st.error());
    domain::AddServerApplication cmd{req.param("id"), *name, *exe, description.value_or(""),
                                     desktop.value_or("")};
    std::string app_id = domain::application_id(*name, *exe);
    auto c = command("AddServerApplication", cmd, 201, [app_id](const State& s) {
      const domain::Application* a = s.appcloud.application(app_id);
      return a ? domain::application_to_json(s.appcloud, *a) : Json::object();
    });
    return run_created(api, req, std::move(c), "/v1/applications/");
  });

  r.add("GET", "/v1/servers/{id}/applications", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      const domain::Server* v = s.appcloud.server(id);
      if (v == nullptr) return problem(not_found("server " + id + " not found"));
      std::vector<std::string> ids(v->applications.begin(), v->applications.end());
      return page_ids(ids, *pg, [&](const std::string& app_id) {
        const domain::Application* a = s.appcloud.application(app_id);
        return a ? domain::application_to_json(s.appcloud, *a) : Json{{"id", app_id}};
      });
    });
  });

  r.add("DELETE", "/v1/servers/{id}/applications/{application_id}", Access::Admin(),
        [&api](HttpRequest& req) {
          domain::RemoveServerApplication cmd{req.param("id"), req.param("application_id")};
          return api.run(req, command("RemoveServerApplication", cmd, 204));
        });

  // Load (and optionally inventory) reported by hand: an admin, or a legacy agent user (role
  // agent, bound with agent_server_id before enrolled agents existed; enrolled agents use
  // /v1/agents/{id}/heartbeat and /inventory). The load goes to the liveness table, never the
  // log; an inventory is recorded only when what the server holds changed. A report may not
  // be dated more than kMaxReportSkewMs ahead of the broker's clock (it would never go stale).
  r.add("POST", "/v1/servers/{id}/report", Access::Roles({"agent"}), [&api](HttpRequest& req) {
    constexpr int64_t kMaxReportSkewMs = 60'000;
    const Principal& who = *req.principal;
    if (!who.is_admin()) {
      if (who.agent_server_id.empty()) {
        return problem(Error::make(Code::permission_denied,
                                   "this agent is bound to no server; an admin sets its "
                                   "agent_server_id",
                                   "agent_not_bound"));
      }
      if (who.agent_server_id != req.param("id")) {
        return problem(Error::make(Code::permission_denied,
                                   "this agent reports only for its own server",
                                   "agent_server_mismatch"));
      }
    }
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"cpu_load", "memory_load", "sessions", "reported_at_ms", "inventory"});
    auto cpu = br.number("cpu_load", true, 0, 1);
    auto mem = br.number("memory_load", true, 0, 1);
    auto sessions = br.integer("sessions", true, 0, 1000000);
    auto at = br.integer("reported_at_ms", false, 1, int64_t{1} << 53);
    const Json* inv = br.object("inventory", false);
    std::optional<domain::ReportServerInventory> inventory;
    if (inv != nullptr) {
      BodyReader ir(*inv, {"apps", "users"});
      auto apps = ir.string_set("apps", true);
      auto users = ir.string_set("users", true);
      if (auto st = ir.finish(); !st) {
        for (const auto& fe : st.error().fields) br.fail("inventory." + fe.field, fe.message);
      } else {
        inventory = domain::ReportServerInventory{req.param("id"), *apps, *users, at.value_or(0)};
      }
    }
    if (auto st = br.finish(); !st) return problem(st.error());
    if (at && *at > api.now_ms() + kMaxReportSkewMs) {
      return problem(Error{Code::invalid_argument,
                           "reported_at_ms is more than " +
                               std::to_string(kMaxReportSkewMs / 1000) +
                               " s ahead of the broker's clock",
                           "reported_at_in_future",
                           {{"reported_at_ms", "is in the future"}}});
    }
    std::string id = req.param("id");
    domain::LoadReport load{*cpu, *mem, static_cast<uint32_t>(*sessions),
                            at.value_or(api.now_ms()), api.views().position()};
    if (auto st = domain::validate_load(load); !st) return problem(st.error());
    bool known = api.views().read([&](const State& s) { return s.appcloud.server(id) != nullptr; });
    if (!known) {
      return problem(Error::make(Code::not_found, "server " + id + " not found", "server_not_found"));
    }
    api.liveness().server_load(id, load);
    if (!inventory) {
      return api.views().read([&](const State& s) {
        return HttpResponse::json(200, render_server(api, id)(s));
      });
    }
    Command c = command("ReportServerInventory", *inventory, 200, render_server(api, id));
    return api.run(req, std::move(c));
  });
}

// ---- applications -----------------------------------------------------------------------
void register_applications(Api& api) {
  Router& r = api.router();
  r.add("GET", "/v1/applications", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    const std::string* server = query(req, "server_id");
    return api.with_state(req, [&](const State& s) {
      const domain::Server* v = nullptr;
      if (server != nullptr) {
        v = s.appcloud.server(*server);
        if (v == nullptr) return problem(not_found("server " + *server + " not found"));
      }
      return page_of(
          s.appcloud.applications, *pg,
          [&](const domain::Application& a) { return v == nullptr || v->has(a.id); },
          [&](const domain::Application& a) { return domain::application_to_json(s.appcloud, a); });
    });
  });

  r.add("GET", "/v1/applications/{id}", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      const domain::Application* a = s.appcloud.application(id);
      if (a == nullptr) return problem(not_found("application " + id + " not found"));
      return with_etag(HttpResponse::json(200, domain::application_to_json(s.appcloud, *a)),
                       a->version);
    });
  });

  r.add("GET", "/v1/applications/{id}/publish-targets", Access::Admin(),
        [&api](HttpRequest& req) {
          std::optional<Error> err;
          auto scope = scope_query(req, true, err);
          if (err) return problem(*err);
          const std::string& id = req.param("id");
          return api.with_state(req, [&](const State& s) {
            if (s.appcloud.application(id) == nullptr) {
              return problem(not_found("application " + id + " not found"));
            }
            Json items = Json::array();
            for (const auto& t : s.appcloud.publish_targets(id, *scope)) {
              items.push_back(Json{{"scope", domain::scope_name(*scope)},
                                   {"target_id", t},
                                   {"name", target_name(s.appcloud, *scope, t)}});
            }
            return HttpResponse::json(
                200, Json{{"application_id", id}, {"scope", domain::scope_name(*scope)},
                          {"items", items}});
          });
        });
}

// ---- publications and authorizations ----------------------------------------------------
void register_publications(Api& api) {
  Router& r = api.router();
  r.add("POST", "/v1/publications", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"application_id", "scope", "target_id"});
    auto app = br.str("application_id", true, 128, 1);
    auto scope = br.one_of("scope", true, {"server", "cluster"});
    auto target = br.str("target_id", true, 128, 1);
    if (auto st = br.finish(); !st) return problem(st.error());
    domain::Publish cmd{new_id(), *app, *domain::parse_scope(*scope), *target};
    auto c = command("Publish", cmd, 201, [id = cmd.id](const State& s) {
      const domain::Publication* p = s.appcloud.publication(id);
      return p ? domain::publication_to_json(*p) : Json::object();
    });
    return run_created(api, req, std::move(c), "/v1/publications/");
  });

  r.add("GET", "/v1/publications", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    std::optional<Error> err;
    auto scope = scope_query(req, false, err);
    if (err) return problem(*err);
    const std::string* app = query(req, "application_id");
    const std::string* target = query(req, "target_id");
    return api.with_state(req, [&](const State& s) {
      return page_of(
          s.appcloud.publications, *pg,
          [&](const domain::Publication& p) {
            return (app == nullptr || p.application_id == *app) &&
                   (!scope || p.scope == *scope) && (target == nullptr || p.target_id == *target);
          },
          [](const domain::Publication& p) { return domain::publication_to_json(p); });
    });
  });

  r.add("GET", "/v1/publications/{id}", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      return entity_response(s.appcloud.publication(id), "publication", id, [&](const domain::Publication& x) {
        return domain::publication_to_json(x);
      });
    });
  });

  r.add("DELETE", "/v1/publications/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    domain::Unpublish cmd{req.param("id"), *expected};
    return api.run(req, command("Unpublish", cmd, 204));
  });

  // Where the publication's application may still be authorized to the user: the targets
  // where it is published at that scope (default: the publication's own scope) minus those
  // already authorized for the user.
  r.add("GET", "/v1/publications/{id}/authorize-targets", Access::Admin(),
        [&api](HttpRequest& req) {
          std::optional<Error> err;
          auto scope = scope_query(req, false, err);
          if (err) return problem(*err);
          const std::string* user = query(req, "user_id");
          if (user == nullptr || user->empty()) {
            return problem(invalid("user_id is required", "invalid_query"));
          }
          const std::string& id = req.param("id");
          return api.with_state(req, [&](const State& s) {
            const domain::Publication* p = s.appcloud.publication(id);
            if (p == nullptr) return problem(not_found("publication " + id + " not found"));
            if (s.users.find(*user) == nullptr) {
              return problem(not_found("user " + *user + " not found"));
            }
            domain::Scope sc = scope.value_or(p->scope);
            Json items = Json::array();
            for (const auto& t : s.appcloud.authorize_targets(p->application_id, *user, sc)) {
              items.push_back(Json{{"scope", domain::scope_name(sc)},
                                   {"target_id", t},
                                   {"name", target_name(s.appcloud, sc, t)}});
            }
            return HttpResponse::json(200, Json{{"publication_id", id},
                                                {"application_id", p->application_id},
                                                {"user_id", *user},
                                                {"scope", domain::scope_name(sc)},
                                                {"items", items}});
          });
        });
}

void register_authorizations(Api& api) {
  Router& r = api.router();
  r.add("POST", "/v1/authorizations", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"user_id", "group", "application_id", "scope", "target_id"});
    auto user = br.str("user_id", false, 128, 1);
    auto group = br.str("group", false, 256, 1);
    if (user.has_value() == group.has_value()) br.fail("user_id", "give exactly one of user_id and group");
    auto app = br.str("application_id", true, 128, 1);
    auto scope = br.one_of("scope", true, {"server", "cluster"});
    auto target = br.str("target_id", true, 128, 1);
    if (auto st = br.finish(); !st) return problem(st.error());
    domain::Authorize cmd{new_id(), user ? *user : domain::kGroupPrincipal + *group, *app,
                          *domain::parse_scope(*scope), *target};
    auto c = command("Authorize", cmd, 201, [id = cmd.id](const State& s) {
      const domain::Authorization* a = s.appcloud.authorization(id);
      return a ? domain::authorization_to_json(*a) : Json::object();
    });
    return run_created(api, req, std::move(c), "/v1/authorizations/");
  });

  r.add("GET", "/v1/authorizations", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    std::optional<Error> err;
    auto scope = scope_query(req, false, err);
    if (err) return problem(*err);
    const std::string* user = query(req, "user_id");
    const std::string* app = query(req, "application_id");
    const std::string* target = query(req, "target_id");
    return api.with_state(req, [&](const State& s) {
      return page_of(
          s.appcloud.authorizations, *pg,
          [&](const domain::Authorization& a) {
            return (user == nullptr || a.user_id == *user) &&
                   (app == nullptr || a.application_id == *app) && (!scope || a.scope == *scope) &&
                   (target == nullptr || a.target_id == *target);
          },
          [](const domain::Authorization& a) { return domain::authorization_to_json(a); });
    });
  });

  r.add("GET", "/v1/authorizations/{id}", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      return entity_response(s.appcloud.authorization(id), "authorization", id, [&](const domain::Authorization& x) {
        return domain::authorization_to_json(x);
      });
    });
  });

  r.add("DELETE", "/v1/authorizations/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    domain::Unauthorize cmd{req.param("id"), *expected};
    return api.run(req, command("Unauthorize", cmd, 204));
  });
}

// ---- the user's side: entitlements, launches, sessions -----------------------------------
Json entitlement_view(const domain::AppCloudState& ac, const domain::Entitlement& e) {
  Json j = domain::entitlement_to_json(e);
  if (const domain::Application* a = ac.application(e.application_id)) {
    j["description"] = a->description;
  }
  for (auto& w : j["where"]) {
    auto sc = domain::parse_scope(w["scope"].get<std::string>());
    w["name"] = target_name(ac, sc.value_or(domain::Scope::server),
                            w["target_id"].get<std::string>());
  }
  return j;
}

std::string rdp_file(const domain::Server& srv, const domain::Application& app,
                     const std::string& user_name) {
  std::string f;
  f += "full address:s:" + srv.address + "\r\n";
  f += "remoteapplicationmode:i:1\r\n";
  f += "remoteapplicationprogram:s:" + app.executable_path + "\r\n";
  f += "remoteapplicationname:s:" + app.name + "\r\n";
  f += "username:s:" + user_name + "\r\n";
  f += "prompt for credentials:i:1\r\n";
  return f;
}

// The summary of a decision shown with a launch: where and by which policy.
Json decision_summary(const Json& d) {
  Json s{{"scope", d.value("scope", "")},
         {"target_id", d.value("target_id", "")},
         {"authorization_id", d.value("authorization_id", "")},
         {"policy", d.value("policy", Json::object())},
         {"candidates", d.contains("candidates") ? d["candidates"].size() : 0},
         {"excluded", d.contains("excluded") ? d["excluded"].size() : 0}};
  if (d.contains("candidates")) {
    for (const auto& c : d["candidates"]) {
      if (c.value("server_id", "") == d.value("server_id", "")) s["score"] = c.value("score", 0.0);
    }
  }
  return s;
}

Json session_view(const domain::AppCloudState& ac, const domain::AppSession& a) {
  Json j = domain::session_to_json(a);
  j["kind"] = "application";
  const Json& d = a.decision;
  Json why{{"policy", d.value("policy", Json::object())},
           {"choice",
            {{"server_id", a.server_id},
             {"server_name", target_name(ac, domain::Scope::server, a.server_id)},
             {"scope", d.value("scope", "")},
             {"target_id", d.value("target_id", "")},
             {"authorization_id", d.value("authorization_id", "")}}},
           {"targets", d.value("targets", Json::array())},
           {"candidates", d.value("candidates", Json::array())},
           {"excluded", d.value("excluded", Json::array())},
           {"stale_after_ms", d.value("stale_after_ms", int64_t{0})}};
  j["why"] = why;
  if (const domain::Application* app = ac.application(a.application_id)) {
    j["application_name"] = app->name;
  }
  return j;
}

void register_user_side(Api& api) {
  Router& r = api.router();
  r.add("GET", "/v1/me/entitlements", Access::Roles({"user"}), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    std::string user = req.principal->user_id;
    return api.with_state(req, [&](const State& s) {
      const domain::User* me = s.users.find(user);
      auto ents = s.appcloud.entitlements(user, me ? me->groups : std::set<std::string>{});
      Json items = Json::array();
      std::string last;
      bool more = false;
      for (const auto& e : ents) {
        if (e.application_id <= pg->after) continue;
        if (items.size() == pg->limit) {
          more = true;
          break;
        }
        items.push_back(entitlement_view(s.appcloud, e));
        last = e.application_id;
      }
      Json out{{"user_id", user}, {"items", items}, {"next_cursor", nullptr}};
      if (more) out["next_cursor"] = Api::encode_cursor(last);
      return HttpResponse::json(200, out);
    });
  });

  r.add("POST", "/v1/launches", Access::Roles({"user"}), [&api](HttpRequest& req) {
    auto t0 = std::chrono::steady_clock::now();
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"application_id"});
    auto app = br.str("application_id", true, 128, 1);
    if (auto st = br.finish(); !st) return api.count_launch("application", t0, problem(st.error()));
    domain::LaunchApplication cmd{new_id(), req.principal->user_id, *app,
                                  api.config().placement,
                                  [&api](const std::string& server_id) {
                                    return api.liveness().load(server_id);
                                  }};
    auto c = command("LaunchApplication", cmd, 201, [id = cmd.session_id](const State& s) {
      const domain::AppSession* a = s.appcloud.session(id);
      if (a == nullptr) return Json::object();
      const domain::Server* srv = s.appcloud.server(a->server_id);
      const domain::Application* app = s.appcloud.application(a->application_id);
      const domain::User* u = s.users.find(a->user_id);
      if (srv == nullptr || app == nullptr) return Json::object();
      return Json{{"id", a->id},
                  {"session_id", a->id},
                  {"protocol", "rdp"},
                  {"application", {{"id", app->id}, {"name", app->name}}},
                  {"server", {{"id", srv->id}, {"name", srv->name}, {"address", srv->address}}},
                  {"host", srv->address},
                  {"port", 3389},
                  {"connection_file", rdp_file(*srv, *app, u ? u->name : a->user_id)},
                  {"state", a->state},
                  {"decision", decision_summary(a->decision)},
                  {"version", a->version}};
    });
    return api.count_launch("application", t0,
                            run_created(api, req, std::move(c), "/v1/sessions/"));
  });

  r.add("GET", "/v1/sessions", Access::Roles({"user"}), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    bool admin = req.principal->is_admin();
    std::string me = req.principal->user_id;
    const std::string* user = query(req, "user_id");
    const std::string* state = query(req, "state");
    return api.with_state(req, [&](const State& s) {
      return page_of(
          s.appcloud.sessions, *pg,
          [&](const domain::AppSession& a) {
            if (!admin && a.user_id != me) return false;
            if (state != nullptr && a.state != *state) return false;
            return user == nullptr || a.user_id == *user;
          },
          [](const domain::AppSession& a) {
            Json j = domain::session_to_json(a);
            j["kind"] = "application";
            return j;
          });
    });
  });

  r.add("GET", "/v1/sessions/{id}", Access::Roles({"user"}), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    bool admin = req.principal->is_admin();
    std::string me = req.principal->user_id;
    return api.with_state(req, [&](const State& s) {
      const domain::AppSession* a = s.appcloud.session(id);
      // 404 (not 403) for another user's session.
      if (a == nullptr || (!admin && a->user_id != me)) {
        return problem(not_found("session " + id + " not found"));
      }
      return with_etag(HttpResponse::json(200, session_view(s.appcloud, *a)), a->version);
    });
  });

  // Logoff of an application session (desktop sessions: routes_pools.cpp wraps this route).
  r.add("DELETE", "/v1/sessions/{id}", Access::Roles({"user"}), [&api](HttpRequest& req) {
    domain::EndApplicationSession cmd{req.param("id"), req.principal->user_id,
                                      req.principal->is_admin(), "logoff"};
    return api.run(req, command("EndApplicationSession", cmd, 204));
  });
}

}  // namespace

void register_appcloud_routes(Api& api) {
  register_clusters(api);
  register_servers(api);
  register_applications(api);
  register_publications(api);
  register_authorizations(api);
  register_user_side(api);
}

}  // namespace atrium::api

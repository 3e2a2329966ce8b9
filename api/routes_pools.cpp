// Desktop pools, entitlements, desktop launches and sessions, admin channels
// (domain/pools.h). POST /v1/launches and the session routes are shared with application
// launches (routes_appcloud.cpp): a body with pool_id, or a desktop session id, is handled
// here; anything else goes to the application-cloud handler.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <optional>
#include <thread>
#include <vector>

#include "adapters/pool_worker.h"
#include "api/api.h"
#include "api/crypto.h"
#include "api/json_input.h"
#include "common/time_text.h"
#include "domain/pools.h"
#include "domain/state.h"

namespace atrium::api {

using domain::State;
using pipeline::Command;

namespace {

HttpResponse with_etag(HttpResponse r, uint64_t version) {
  r.with_header("ETag", "\"" + std::to_string(version) + "\"");
  return r;
}

std::function<Json(const State&)> render_pool(const std::string& id) {
  return [id](const State& s) {
    const domain::Pool* p = s.pools.pool(id);
    return p ? domain::pool_to_json(s, *p) : Json{{"id", id}, {"state", "deleted"}};
  };
}

std::optional<std::vector<std::string>> read_ids(BodyReader& br, const char* name, bool required) {
  auto set = br.string_set(name, required);
  if (!set) return std::nullopt;
  return std::vector<std::string>(set->begin(), set->end());
}

// .vv file for virt-viewer / remote-viewer.
// A virt-viewer connection file. With TLS the port is the TLS port (tls-port=, no plain port)
// and the client verifies the host: ca= carries the CA certificate (PEM, its lines joined with
// a literal "\n", as virt-viewer's format wants) and host-subject= the expected subject.
std::string vv_file(const std::string& title, const adapters::DisplayGrant& g) {
  auto clean = [](std::string v) {
    v.erase(std::remove_if(v.begin(), v.end(), [](char c) { return c == '\n' || c == '\r'; }), v.end());
    return v;
  };
  std::string out = "[virt-viewer]\ntype=spice\nhost=" + clean(g.host) + "\n";
  if (g.tls) {
    std::string ca;
    for (char c : g.ca_cert) {
      if (c == '\n') ca += "\\n";
      else if (c != '\r') ca += c;
    }
    out += "tls-port=" + std::to_string(g.port) + "\nca=" + ca + "\nhost-subject=" + clean(g.host_subject) + "\n";
  } else {
    out += "port=" + std::to_string(g.port) + "\n";
  }
  return out + "password=" + clean(g.ticket) + "\ndelete-this-file=1\ntitle=" + clean(title) +
         "\nrelease-cursor=shift+f12\nsecure-attention=ctrl+alt+end\n";
}

// A template field error (400 problem+json naming the field).
Error template_field(const std::string& field, const std::string& msg, const std::string& reason) {
  Error e = invalid("template." + field + " " + msg, reason);
  e.fields.push_back({"template." + field, msg});
  return e;
}

// Reads a template object into `br`'s errors (fields "template.*"). `pool_hosts`: the pool's
// hosts, for the default host of a named template (nullptr: unknown here).
domain::PoolTemplate read_template(BodyReader& br, const Json& t,
                                   const std::optional<std::vector<std::string>>& pool_hosts) {
  domain::PoolTemplate out;
  BodyReader tr(t, {"domain_xml", "domain_name", "host_id", "base_volume", "storage_pool"});
  auto xml = tr.str("domain_xml", false, 65536, 1);
  auto dn = tr.str("domain_name", false, 256, 1);
  auto hid = tr.str("host_id", false, 128, 1);
  auto base = tr.str("base_volume", false, 4096, 1);
  auto sp = tr.str("storage_pool", false, 256, 1);
  if (auto st = tr.finish(); !st) {
    for (const auto& f : st.error().fields) br.fail("template." + f.field, f.message);
    return out;
  }
  out.domain_xml = xml.value_or("");
  out.domain_name = dn.value_or("");
  out.host_id = hid.value_or("");
  out.base_volume = base.value_or("");
  out.storage_pool = sp.value_or("default");
  if (xml && dn) br.fail("template", "give either domain_xml or domain_name, not both");
  if (!xml && !dn) br.fail("template", "must carry domain_xml or domain_name");
  if (hid && !dn) br.fail("template.host_id", "is only used with domain_name");
  if (dn && !hid) {
    // The host of a named template defaults to the pool's only host.
    if (pool_hosts && pool_hosts->size() == 1) {
      out.host_id = pool_hosts->front();
    } else {
      br.fail("template.host_id", "is required with domain_name when the pool has several hosts");
    }
  }
  return out;
}

// A named template: the pool keeps a copy of the domain's persistent definition, exported from
// its host now. The refusal to answer, if it cannot be exported.
std::optional<HttpResponse> export_named_template(Api& api, adapters::PoolWorker* worker,
                                                  domain::PoolTemplate& t) {
  if (t.domain_name.empty()) return std::nullopt;
  bool known = api.views().read([&](const State& s) { return s.hosts.host(t.host_id) != nullptr; });
  if (!known) return problem(template_field("host_id", "names no host", "host_not_found"));
  if (worker == nullptr) {
    return problem(Error::make(Code::unavailable, "the pool worker is not running", "no_pool_worker"));
  }
  auto exported = worker->export_domain_xml(t.host_id, t.domain_name);
  if (!exported.ok() && exported.error().code == Code::not_found) {
    return problem(template_field("domain_name", "names no domain on host " + t.host_id,
                                  "template_domain_not_found"));
  }
  if (!exported.ok() && exported.error().code == Code::unavailable) {
    return problem(Error::make(Code::unavailable,
                               "cannot export template domain " + t.domain_name + " from host " + t.host_id +
                                   ": " + exported.error().message,
                               "template_host_unavailable"));
  }
  if (!exported.ok()) return problem(exported.error());
  t.domain_xml = std::move(*exported);
  return std::nullopt;
}

// A template libvirt itself refuses is refused here, at creation or update, with libvirt's
// message (400 invalid_template), not at a user's launch. Only host ids the pool can use are
// tried; the domain rules check the rest of the template when the command is decided.
std::optional<HttpResponse> validate_with_libvirt(Api& api, adapters::PoolWorker* worker,
                                                  const std::vector<std::string>& host_ids,
                                                  const domain::PoolTemplate& t) {
  if (worker == nullptr || t.domain_xml.empty()) return std::nullopt;
  std::vector<std::string> known = api.views().read([&](const State& s) {
    std::vector<std::string> out;
    for (const auto& h : host_ids) {
      const domain::Host* host = s.hosts.host(h);
      if (host != nullptr && host->state != "removed") out.push_back(h);
    }
    return out;
  });
  if (known.empty()) return std::nullopt;  // the decider refuses unknown hosts (400)
  Status st = worker->validate_template(known, t);
  if (st.ok()) return std::nullopt;
  // No pool host connected yet (e.g. added a moment ago): the pool is accepted, and a template
  // libvirt refuses shows as provisioning failures with libvirt's message (never a user's 4xx).
  if (st.error().reason == "template_host_unavailable") return std::nullopt;
  if (st.error().reason == "invalid_template") {
    return problem(Error{Code::invalid_argument, st.error().message, "invalid_template",
                         {{"template", st.error().message}}});
  }
  return problem(st.error());
}

// "policy" (the desktop policy pushed to the members' agents) over `base`: fields left out keep
// base's value.
std::optional<domain::PoolPolicy> read_policy(BodyReader& br, const domain::PoolPolicy& base) {
  const Json* pj = br.object("policy", false);
  if (pj == nullptr) return std::nullopt;
  Json merged = domain::pool_policy_to_json(base);
  if (pj->is_object()) {
    for (const auto& [k, v] : pj->items()) merged[k] = v;
  }
  auto pol = domain::pool_policy_from_json(pj->is_object() ? merged : *pj);
  if (!pol.ok()) {
    for (const auto& fe : pol.error().fields) br.fail(fe.field, fe.message);
    return std::nullopt;
  }
  return *pol;
}

void register_pools(Api& api, adapters::PoolWorker* worker) {
  Router& r = api.router();
  r.add("POST", "/v1/pools", Access::Admin(), [&api, worker](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"name", "kind", "template", "host_ids", "min_ready", "min_standby",
                          "max_size", "power_policy", "idle_timeout_s", "reconnect", "grace_s",
                          "policy"});
    domain::CreatePool c;
    c.id = new_id();
    auto name = br.str("name", true, 128, 1);
    auto kind = br.one_of("kind", true, {"dedicated", "floating"});
    auto hosts = read_ids(br, "host_ids", true);
    auto min_ready = br.integer("min_ready", false, 0, 10000);
    auto min_standby = br.integer("min_standby", false, 0, 10000);
    auto max_size = br.integer("max_size", true, 1, 10000);
    auto policy = br.one_of("power_policy", false,
                            {"keep_on", "shutdown_on_logoff", "shutdown_when_idle", "refresh_on_logoff"});
    auto idle = br.integer("idle_timeout_s", false, 1, 30LL * 24 * 3600);
    auto reconnect = br.one_of("reconnect", false, {"always", "disconnected_only"});
    auto grace = br.integer("grace_s", false, 0, 7LL * 24 * 3600);
    auto desktop_policy = read_policy(br, domain::PoolPolicy{});
    if (const Json* t = br.object("template", true)) c.tmpl = read_template(br, *t, hosts);
    if (auto st = br.finish(); !st) return problem(st.error());
    if (auto failed = export_named_template(api, worker, c.tmpl)) return *failed;
    if (auto failed = validate_with_libvirt(api, worker, *hosts, c.tmpl)) return *failed;
    c.name = *name;
    c.kind = *kind;
    c.host_ids = *hosts;
    c.min_ready = static_cast<int>(min_ready.value_or(0));
    c.min_standby = static_cast<int>(min_standby.value_or(0));
    c.max_size = static_cast<int>(*max_size);
    c.power_policy = policy.value_or("keep_on");
    c.idle_timeout_s = idle.value_or(3600);
    c.reconnect = reconnect.value_or("always");
    c.grace_s = grace.value_or(300);
    c.policy = desktop_policy.value_or(domain::PoolPolicy{});
    Command cmd = command("CreatePool", c, 201);
    cmd.render = render_pool(c.id);
    HttpResponse resp = api.run(req, std::move(cmd));
    if (resp.status == 201) resp.with_header("Location", "/v1/pools/" + c.id);
    return resp;
  });

  r.add("GET", "/v1/pools", Access::Roles({"user"}), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    bool admin = req.principal->is_admin();
    std::string me = req.principal->user_id;
    return api.with_state(req, [&](const State& s) {
      std::vector<const domain::Pool*> all;
      for (const auto& [id, p] : s.pools.pools) {
        if (id <= pg->after) continue;
        if (!admin && !domain::entitled(s, p, me)) continue;  // users see what they may launch
        all.push_back(&p);
      }
      size_t n = std::min(all.size(), pg->limit);
      std::partial_sort(all.begin(), all.begin() + static_cast<long>(n), all.end(),
                        [](auto* a, auto* b) { return a->id < b->id; });
      Json items = Json::array();
      for (size_t i = 0; i < n; ++i) {
        Json j = domain::pool_to_json(s, *all[i]);
        if (!admin) j = Json{{"id", j["id"]}, {"name", j["name"]}, {"kind", j["kind"]}};
        items.push_back(j);
      }
      Json out{{"items", items}, {"next_cursor", nullptr}};
      if (all.size() > n) out["next_cursor"] = Api::encode_cursor(all[n - 1]->id);
      return HttpResponse::json(200, out);
    });
  });

  r.add("GET", "/v1/pools/{id}", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      const domain::Pool* p = s.pools.pool(id);
      if (p == nullptr) return problem(not_found("pool " + id + " not found"));
      return with_etag(HttpResponse::json(200, domain::pool_to_json(s, *p)), p->version);
    });
  });

  r.add("GET", "/v1/pools/{id}/vms", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      if (s.pools.pool(id) == nullptr) return problem(not_found("pool " + id + " not found"));
      Json items = Json::array();
      for (const auto* m : s.pools.members_of(id)) items.push_back(domain::member_to_json(s, *m));
      return HttpResponse::json(200, Json{{"items", items}, {"next_cursor", nullptr}});
    });
  });

  // Back to the template: a free VM is powered off, redefined from the pool's current template
  // and its overlay recreated (a broken desktop, a VM to wipe). 202 with the VM (refreshing);
  // 409 vm_busy while it is assigned or in a session.
  r.add("POST", "/v1/pools/{id}/vms/{vm_id}/refresh", Access::Admin(), [&api](HttpRequest& req) {
    std::string pool = req.param("id"), vm = req.param("vm_id");
    bool member = api.views().read([&](const State& s) {
      const domain::PoolMember* m = s.pools.member(vm);
      return m != nullptr && m->pool_id == pool;
    });
    if (!member) return problem(not_found("pool " + pool + " has no vm " + vm));
    Command cmd = command("RefreshPoolVm", domain::RefreshPoolVm{vm, "admin", "pw-" + new_id()}, 202);
    cmd.render = [vm](const State& s) { return domain::member_to_json(s, *s.pools.member(vm)); };
    return api.run(req, std::move(cmd));
  });

  r.add("PATCH", "/v1/pools/{id}", Access::Admin(), [&api, worker](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"name", "host_ids", "min_ready", "min_standby", "max_size",
                          "power_policy", "idle_timeout_s", "reconnect", "grace_s", "template",
                          "policy"});
    domain::UpdatePool c;
    c.id = req.param("id");
    c.policy = read_policy(br, api.views().read([&](const State& s) {
      const domain::Pool* p = s.pools.pool(c.id);
      return p ? p->policy : domain::PoolPolicy{};
    }));
    c.name = br.str("name", false, 128, 1);
    c.host_ids = read_ids(br, "host_ids", false);
    if (auto v = br.integer("min_ready", false, 0, 10000)) c.min_ready = static_cast<int>(*v);
    if (auto v = br.integer("min_standby", false, 0, 10000)) c.min_standby = static_cast<int>(*v);
    if (auto v = br.integer("max_size", false, 1, 10000)) c.max_size = static_cast<int>(*v);
    c.power_policy = br.one_of("power_policy", false,
                               {"keep_on", "shutdown_on_logoff", "shutdown_when_idle", "refresh_on_logoff"});
    c.idle_timeout_s = br.integer("idle_timeout_s", false, 1, 30LL * 24 * 3600);
    c.reconnect = br.one_of("reconnect", false, {"always", "disconnected_only"});
    c.grace_s = br.integer("grace_s", false, 0, 7LL * 24 * 3600);
    if (const Json* t = br.object("template", false)) {
      // A new template version: free members are refreshed to it (rolling), busy ones after
      // their session.
      auto hosts = c.host_ids;
      if (!hosts) {
        hosts = api.views().read([&](const State& s) -> std::optional<std::vector<std::string>> {
          const domain::Pool* p = s.pools.pool(c.id);
          return p ? std::optional(p->host_ids) : std::nullopt;
        });
      }
      c.tmpl = read_template(br, *t, hosts);
    }
    if (auto st = br.finish(); !st) return problem(st.error());
    if (c.tmpl) {
      if (auto failed = export_named_template(api, worker, *c.tmpl)) return *failed;
      std::vector<std::string> pool_hosts = c.host_ids ? *c.host_ids : api.views().read([&](const State& s) {
        const domain::Pool* p = s.pools.pool(c.id);
        return p ? p->host_ids : std::vector<std::string>{};
      });
      if (auto failed = validate_with_libvirt(api, worker, pool_hosts, *c.tmpl)) return *failed;
    }
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    c.expected_version = *expected;
    Command cmd = command("UpdatePool", c);
    cmd.render = render_pool(c.id);
    return api.run(req, std::move(cmd));
  });

  // Deletion is safe and asynchronous: the pool stops launching, the worker removes members
  // as their sessions end, then the pool is deleted. 202 with the pool (state deleting).
  r.add("DELETE", "/v1/pools/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    std::string id = req.param("id");
    Command cmd = command("DeletePool", domain::DeletePool{id, *expected}, 202);
    cmd.render = render_pool(id);
    return api.run(req, std::move(cmd));
  });

  r.add("POST", "/v1/pools/{id}/entitlements", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"user_id", "group"});
    auto user = br.str("user_id", false, 128, 1);
    auto group = br.str("group", false, 256, 1);
    if (user.has_value() == group.has_value()) br.fail("user_id", "give exactly one of user_id and group");
    if (auto st = br.finish(); !st) return problem(st.error());
    std::string id = req.param("id");
    Command cmd = command("AddEntitlement",
                          domain::AddEntitlement{id, user.value_or(""), group.value_or("")}, 201);
    cmd.render = [id, user, group](const State&) {
      return user ? Json{{"pool_id", id}, {"user_id", *user}} : Json{{"pool_id", id}, {"group", *group}};
    };
    return api.run(req, std::move(cmd));
  });

  r.add("GET", "/v1/pools/{id}/entitlements", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      const domain::Pool* p = s.pools.pool(id);
      if (p == nullptr) return problem(not_found("pool " + id + " not found"));
      Json items = Json::array();
      for (const auto& u : p->entitled) {
        Json j{{"pool_id", id}, {"user_id", u}, {"assigned_vm_id", nullptr}};
        if (const auto* m = s.pools.assigned(id, u)) j["assigned_vm_id"] = m->vm_id;
        items.push_back(j);
      }
      for (const auto& g : p->entitled_groups) items.push_back(Json{{"pool_id", id}, {"group", g}});
      return HttpResponse::json(200, Json{{"items", items}, {"next_cursor", nullptr}});
    });
  });

  r.add("DELETE", "/v1/pools/{id}/entitlements/{user_id}", Access::Admin(), [&api](HttpRequest& req) {
    return api.run(req, command("RemoveEntitlement",
                                     domain::RemoveEntitlement{req.param("id"), req.param("user_id")}, 204));
  });

  r.add("DELETE", "/v1/pools/{id}/group-entitlements/{group}", Access::Admin(), [&api](HttpRequest& req) {
    return api.run(req, command("RemoveEntitlement",
                                domain::RemoveEntitlement{req.param("id"), "", req.param("group")}, 204));
  });
}

// ---- launches and sessions --------------------------------------------------------------
HttpResponse launch_desktop(Api& api, adapters::PoolWorker* worker, HttpRequest& req, const Json& body) {
  BodyReader br(body, {"pool_id"});
  auto pool = br.str("pool_id", true, 128, 1);
  if (auto st = br.finish(); !st) return problem(st.error());
  if (worker == nullptr) {
    return problem(Error::make(Code::unavailable, "the pool worker is not running", "no_pool_worker"));
  }
  std::string user = req.principal->user_id;
  domain::LaunchDesktop c{new_id(), user, *pool};
  auto launch = [&] {
    Command cmd = command("LaunchDesktop", c, 201);
    cmd.render = [pool = *pool, user](const State& s) {
      const domain::DesktopSession* d = s.pools.live_session(pool, user);
      return d ? Json{{"session_id", d->id}} : Json::object();
    };
    return api.run(req, std::move(cmd));
  };
  // Each launch hands out a fresh ticket: never answered from an idempotency record.
  req.headers.erase("idempotency-key");
  auto reason_of = [](const HttpResponse& resp) {
    Json j = resp.status == 409 ? Json::parse(resp.body, nullptr, false) : Json();
    return j.is_object() ? j.value("reason", "") : std::string();
  };
  auto deadline = std::chrono::steady_clock::now() + worker->launch_wait();
  HttpResponse r = launch();
  // A desktop still being cleaned up after its last session (display reset, shutdown) is
  // free in a moment: wait for it within the launch wait rather than refuse the user.
  while (reason_of(r) == "desktop_releasing" && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    r = launch();
  }
  if (reason_of(r) == "no_vm_ready") {
    // Capacity left but nothing free: grow the pool by one for this user (on demand, within
    // max_size), then try once more. The template was validated at pool creation, so a failure
    // here is the broker's or the host's, never the user's request: 503.
    if (Status st = worker->provision_for_launch(*pool); !st.ok()) {
      // The pool's own rules (pool_full, no_host_up, ...) stay what they are.
      if (st.error().code == Code::failed_precondition) return problem(st.error());
      std::fprintf(stderr, "launch %s: provisioning for pool %s failed: %s\n", c.session_id.c_str(),
                   pool->c_str(), st.error().message.c_str());
      return problem(Error::make(Code::unavailable, "no desktop could be provisioned for this launch; retry later",
                                 "provisioning_failed"));
    }
    r = launch();
  }
  if (r.status != 201) return r;
  Json j = Json::parse(r.body, nullptr, false);
  std::string sid = j.is_object() ? j.value("session_id", "") : "";
  if (sid.empty()) return problem(Error::make(Code::conflict, "the session ended meanwhile", "session_ended"));
  auto grant = worker->prepare_display(sid);
  if (!grant.ok()) {
    std::fprintf(stderr, "launch %s: the desktop of session %s could not be started: %s\n",
                 c.session_id.c_str(), sid.c_str(), grant.error().message.c_str());
    if (sid == c.session_id) worker->end_failed_launch(sid, "launch_failed");
    std::string reason = grant.error().reason == "vm_start_timeout" ? "vm_start_timeout" : "provisioning_failed";
    return problem(Error::make(Code::unavailable, "the desktop could not be started; retry later", reason));
  }
  struct Info {
    std::string pool_name, vm_id, state;
    uint64_t version = 0;
  };
  Info info = api.views().read([&](const State& s) {
    Info i;
    if (const auto* d = s.pools.session(sid)) {
      i.vm_id = d->vm_id;
      i.state = d->state;
      i.version = d->version;
    }
    if (const auto* p = s.pools.pool(*pool)) i.pool_name = p->name;
    return i;
  });
  bool reconnect = sid != c.session_id;
  Json out{{"session_id", sid},
           {"kind", "desktop"},
           {"protocol", "spice"},
           {"host", grant->host},
           {"port", grant->port},
           {"ticket", grant->ticket},
           {"expires_at", utc_iso8601(grant->expires_at_ms)},
           {"expires_at_ms", grant->expires_at_ms},
           {"ticket_applied", grant->ticket_applied},
           {"pool_id", *pool},
           {"vm_id", info.vm_id},
           {"state", info.state},
           {"reconnected", reconnect},
           {"tls", grant->tls},
           {"connection_file", vv_file(info.pool_name + " - " + req.principal->name, *grant)}};
  // The hypervisor's own words stay with admins (the DesktopSessionTicketIssued event has
  // them); the user learns only that the ticket could not be set.
  if (!grant->note.empty()) {
    out["ticket_note"] = req.principal->is_admin() ? grant->note
                         : grant->ticket_applied
                             ? "the ticket is set in the desktop's definition"
                             : "the display password could not be set on this host";
  }
  HttpResponse resp = HttpResponse::json(reconnect ? 200 : 201, out);
  resp.with_header("Location", "/v1/sessions/" + sid);
  resp.with_header("Cache-Control", "no-store");
  return resp;
}

bool is_desktop_session(Api& api, const std::string& id) {
  return api.views().read([&](const State& s) { return s.pools.session(id) != nullptr; });
}

void register_sessions(Api& api, adapters::PoolWorker* worker) {
  Router& r = api.router();
  r.wrap("POST", "/v1/launches", Access::Roles({"user"}), [&api, worker](Handler prev) -> Handler {
    return [&api, worker, prev](HttpRequest& req) {
      auto t0 = std::chrono::steady_clock::now();
      auto body = parse_object(req.body);
      if (!body.ok()) return problem(body.error());
      if (!body->contains("pool_id") && prev) return prev(req);
      return api.count_launch("desktop", t0, launch_desktop(api, worker, req, *body));
    };
  });

  // Both kinds of session in one list ordered by id (kind=desktop|application narrows it):
  // application sessions come from the application cloud (routes_appcloud.cpp), desktop
  // sessions from pools. Users see their own; admins all, optionally ?user_id=. ?state= matches
  // each kind's own states (desktop: created, connected, disconnected, ended; application:
  // active, ended).
  r.wrap("GET", "/v1/sessions", Access::Roles({"user"}), [&api](Handler prev) -> Handler {
    return [&api, prev](HttpRequest& req) {
      std::string kind = req.query.count("kind") ? req.query["kind"] : "";
      if (!kind.empty() && kind != "desktop" && kind != "application") {
        return problem(invalid("kind must be desktop or application", "invalid_query"));
      }
      if (auto st = req.query.find("state"); st != req.query.end()) {
        static const std::set<std::string> kStates{"created", "connected", "disconnected", "ended",
                                                   "active"};
        if (kStates.count(st->second) == 0) {
          return problem(invalid("state must be created, connected, disconnected, active or ended",
                                 "invalid_query"));
        }
      }
      if (kind == "application" && prev) return prev(req);
      auto pg = api.page(req);
      if (!pg.ok()) return problem(pg.error());
      bool admin = req.principal->is_admin();
      std::string me = req.principal->user_id;
      std::string user = req.query.count("user_id") ? req.query["user_id"] : "";
      std::string state = req.query.count("state") ? req.query["state"] : "";
      return api.with_state(req, [&](const State& s) {
        struct Item {
          const std::string* id;
          const domain::DesktopSession* d;
          const domain::AppSession* a;
        };
        auto visible = [&](const std::string& id, const std::string& owner) {
          return id > pg->after && (admin || owner == me) && (user.empty() || owner == user);
        };
        std::vector<Item> all;
        if (kind != "application") {
          for (const auto& [id, d] : s.pools.sessions) {
            if (visible(id, d.user_id) && (state.empty() || d.state == state)) all.push_back({&id, &d, nullptr});
          }
        }
        if (kind != "desktop") {
          for (const auto& [id, a] : s.appcloud.sessions) {
            if (visible(id, a.user_id) && (state.empty() || a.state == state))
              all.push_back({&id, nullptr, &a});
          }
        }
        size_t n = std::min(all.size(), pg->limit);
        std::partial_sort(all.begin(), all.begin() + static_cast<long>(n), all.end(),
                          [](const Item& x, const Item& y) { return *x.id < *y.id; });
        Json items = Json::array();
        for (size_t i = 0; i < n; ++i) {
          if (all[i].d != nullptr) {
            items.push_back(domain::desktop_session_to_json(*all[i].d));
          } else {
            Json j = domain::session_to_json(*all[i].a);
            j["kind"] = "application";
            items.push_back(std::move(j));
          }
        }
        Json out{{"items", items}, {"next_cursor", nullptr}};
        if (all.size() > n) out["next_cursor"] = Api::encode_cursor(*all[n - 1].id);
        return HttpResponse::json(200, out);
      });
    };
  });

  r.wrap("GET", "/v1/sessions/{id}", Access::Roles({"user"}), [&api](Handler prev) -> Handler {
    return [&api, prev](HttpRequest& req) {
      std::string id = req.param("id");
      if (!is_desktop_session(api, id) && prev) return prev(req);
      bool admin = req.principal->is_admin();
      std::string me = req.principal->user_id;
      return api.with_state(req, [&](const State& s) {
        const domain::DesktopSession* d = s.pools.session(id);
        if (d == nullptr || (!admin && d->user_id != me)) {
          return problem(not_found("session " + id + " not found"));
        }
        return with_etag(HttpResponse::json(200, domain::desktop_session_to_json(*d)), d->version);
      });
    };
  });

  // Logoff: ends the session and applies the pool's power policy.
  r.wrap("DELETE", "/v1/sessions/{id}", Access::Roles({"user"}), [&api](Handler prev) -> Handler {
    return [&api, prev](HttpRequest& req) {
      std::string id = req.param("id");
      if (!is_desktop_session(api, id) && prev) return prev(req);
      bool mine = api.views().read([&](const State& s) {
        const auto* d = s.pools.session(id);
        return d != nullptr && (req.principal->is_admin() || d->user_id == req.principal->user_id);
      });
      if (!mine) return problem(not_found("session " + id + " not found"));
      return api.run(req, command("EndDesktopSession",
                                       domain::EndDesktopSession{id, "logoff", "pw-" + new_id()}, 204));
    };
  });

  // The client reports its display connection (connected|disconnected). The report itself is
  // liveness (kept in memory for the client timeout); only a change of state is an event.
  r.add("POST", "/v1/sessions/{id}/report", Access::Roles({"user"}), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"state"});
    auto state = br.one_of("state", true, {"connected", "disconnected"});
    if (auto st = br.finish(); !st) return problem(st.error());
    std::string id = req.param("id");
    bool mine = api.views().read([&](const State& s) {
      const auto* d = s.pools.session(id);
      return d != nullptr && (req.principal->is_admin() || d->user_id == req.principal->user_id);
    });
    if (!mine) return problem(not_found("session " + id + " not found"));
    api.liveness().client_seen(id, api.now_ms());
    auto unchanged = api.views().read([&](const State& s) -> std::optional<Json> {
      const auto* d = s.pools.session(id);
      if (d == nullptr || d->state != *state) return std::nullopt;
      return domain::desktop_session_to_json(*d);
    });
    if (unchanged) return HttpResponse::json(200, *unchanged);
    Command cmd = command("ReportSession", domain::ReportSession{id, *state});
    cmd.render = [id](const State& s) { return domain::desktop_session_to_json(*s.pools.session(id)); };
    return api.run(req, std::move(cmd));
  });
}

// ---- admin channels ---------------------------------------------------------------------
void register_channels(Api& api) {
  Router& r = api.router();
  auto send = [&api](const char* kind, const char* field) {
    return [&api, kind, field](HttpRequest& req) {
      auto body = parse_object(req.body);
      if (!body.ok()) return problem(body.error());
      BodyReader br(*body, {field});
      std::optional<std::string> text = std::string(kind) == "command"
                                            ? br.one_of(field, true, {"logoff", "reconnect"})
                                            : br.str(field, true, 2000, 1);
      if (auto st = br.finish(); !st) return problem(st.error());
      Command cmd = command(kind == std::string("command") ? "SendClientCommand" : "SendUserMessage",
                                 domain::SendUserMessage{req.param("id"), kind, *text}, 202);
      cmd.render = [kind, field, t = *text, u = req.param("id")](const State&) {
        return Json{{"user_id", u}, {"kind", kind}, {field, t}};
      };
      return api.run(req, std::move(cmd));
    };
  };
  r.add("POST", "/v1/users/{id}/messages", Access::Admin(), send("message", "text"));
  r.add("POST", "/v1/users/{id}/commands", Access::Admin(), send("command", "command"));

  // Server-Sent Events, long-poll form like /v1/events/stream: the caller's messages and
  // commands after Last-Event-ID (a log position), waiting up to sse_wait for the first.
  r.add("GET", "/v1/me/notifications", Access::AnyRole(), [&api](HttpRequest& req) {
    uint64_t after = 0;
    std::optional<std::string> from = req.header("last-event-id");
    if (!from && req.query.count("after")) from = req.query["after"];
    if (from) {
      char* end = nullptr;
      after = std::strtoull(from->c_str(), &end, 10);
      if (from->empty() || *end != '\0' || from->size() > 20) {
        return problem(invalid("Last-Event-ID must be an event position", "invalid_header"));
      }
    }
    if (auto refusal = api.enter_stream(*req.principal)) return *refusal;
    std::string me = req.principal->user_id;
    auto collect = [&] {
      return api.views().read([&](const State& s) {
        std::vector<domain::UserNotice> out;
        for (const auto& n : s.pools.notices) {
          if (n.position > after && n.user_id == me) out.push_back(n);
        }
        return out;
      });
    };
    auto deadline = std::chrono::steady_clock::now() + api.config().sse_wait;
    auto found = collect();
    while (found.empty() && !api.draining() && std::chrono::steady_clock::now() < deadline) {
      api.store().wait_for(api.store().last_position(), std::chrono::milliseconds(250));
      found = collect();
    }
    api.leave_stream(*req.principal);
    std::string out = "retry: 500\n\n";
    for (const auto& n : found) {
      Json d = n.data;
      d["at_ms"] = n.at_ms;
      out += "id: " + std::to_string(n.position) + "\nevent: " + n.kind + "\ndata: " + d.dump() + "\n\n";
    }
    if (found.empty()) out += ": no new notifications\n\n";
    HttpResponse resp;
    resp.body = std::move(out);
    resp.content_type = "text/event-stream";
    resp.with_header("Cache-Control", "no-cache");
    return resp;
  });
}

}  // namespace

void register_pool_routes(Api& api, adapters::PoolWorker* worker) {
  register_pools(api, worker);
  register_sessions(api, worker);
  register_channels(api);
}

}  // namespace atrium::api

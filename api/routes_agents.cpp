// Agent routes [DOMAIN.md section 4, issue 11]: enrollment tokens and the agents' admin views,
// enrollment, registration, heartbeats and inventory. The heartbeat path never goes through
// the writer unless something changed (an unregistered agent comes back, a user logged in or
// out inside a desktop): heartbeats and load figures are liveness (Api::liveness()).
//
// Agent endpoints (Access::Agent) authenticate the agent credential here: every rejection is a
// 4xx problem+json with Retry-After, counted in atrium_agent_rejections_total{reason} and
// logged at most once per agent (callers that are no agent: once in all), reason and
// heartbeat interval.
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <cstdio>
#include <mutex>

#include "api/api.h"
#include "api/crypto.h"
#include "api/json_input.h"
#include "api/liveness_relay.h"
#include "common/broker_groups.h"
#include "common/time_text.h"
#include "domain/agents.h"
#include "domain/state.h"

namespace atrium::api {

using domain::Json;
using domain::State;
using pipeline::Command;

namespace {

constexpr const char* kRejectionReasons[] = {
    "credential_missing", "agent_unknown",       "agent_revoked",           "agent_mismatch",
    "not_registered",     "heartbeat_too_early", "enrollment_token_invalid"};
constexpr const char* kRegistrations[] = {"enrolled", "soft", "hard", "unregistered", "revoked"};

// Metrics, the rejection log limiter and the config cache of the agent endpoints.
class AgentEndpoints {
 public:
  explicit AgentEndpoints(Api& api) : api_(api) {
    auto& reg = *api.metrics().registry;
    heartbeats_ = &prometheus::BuildCounter()
                       .Name("atrium_agent_heartbeats_total")
                       .Help("Agent heartbeats accepted")
                       .Register(reg)
                       .Add({});
    rejections_ = &prometheus::BuildCounter()
                       .Name("atrium_agent_rejections_total")
                       .Help("Agent requests refused, by reason")
                       .Register(reg);
    for (const char* r : kRejectionReasons) rejections_->Add({{"reason", r}});
    duration_ = &prometheus::BuildHistogram()
                     .Name("atrium_agent_heartbeat_duration_seconds")
                     .Help("Time to handle one agent heartbeat (accepted or refused)")
                     .Register(reg)
                     .Add({}, prometheus::Histogram::BucketBoundaries{0.00005, 0.0001, 0.00025,
                                                                      0.0005, 0.001, 0.0025, 0.005,
                                                                      0.01, 0.025, 0.05, 0.1, 0.5});
    agents_ = &prometheus::BuildGauge()
                   .Name("atrium_agents")
                   .Help("Agents by kind and registration (as the broker acts on it)")
                   .Register(reg);
    for (const char* k : {domain::kAgentServer, domain::kAgentVm}) {
      for (const char* r : kRegistrations)
        gauges_[{k, r}] = &agents_->Add({{"kind", k}, {"registration", r}});
    }
  }

  void refresh_gauges(const State& s) {
    std::map<std::pair<std::string, std::string>, double> n;
    for (const auto& [id, a] : s.agents.agents) n[{a.kind, domain::effective_registration(s, a)}]++;
    std::lock_guard l(mu_);
    for (auto& [key, g] : gauges_) g->Set(n.count(key) ? n[key] : 0);
  }

  int64_t interval_ms() const { return api_.config().agent_heartbeat_ms; }

  // A 4xx answer with Retry-After, counted, logged at most once per key (`who`, reason) and
  // interval. `who` names a known agent, or a fixed bucket when the caller is not one (the
  // path's id, a credential or a hostname are the caller's to vary: keyed by them, a flood of
  // made-up ones would be one log line per request); `note` (the log line only) names the
  // first of such a bucket.
  HttpResponse reject(const std::string& who, Code code, const std::string& reason,
                      const std::string& detail, int64_t retry_after_ms,
                      const std::string& note = "") {
    rejections_->Add({{"reason", reason}}).Increment();
    log_rejection(who, reason, note.empty() ? detail : detail + " (" + note + ")");
    HttpResponse r = code == Code::too_many_requests
                         ? too_many_requests(detail, reason, retry_after_ms)
                         : problem(Error::make(code, detail, reason));
    if (code != Code::too_many_requests) {
      r.with_header("Retry-After",
                    std::to_string(std::max<int64_t>(1, (retry_after_ms + 999) / 1000)));
    }
    return r;
  }

  void heartbeat_done(double secs, bool accepted) {
    if (accepted) heartbeats_->Increment();
    duration_->Observe(secs);
  }

  // The agent a credential names, checked against the {id} of the path.
  struct Who {
    domain::Agent agent;
    std::string registration;  // effective
  };
  std::variant<Who, HttpResponse> authenticate(HttpRequest& req, const std::string& id) {
    auto h = req.header("authorization");
    std::string_view tok;
    if (h && h->size() > 7 && h->size() < 512 &&
        (h->rfind("Bearer ", 0) == 0 || h->rfind("bearer ", 0) == 0)) {
      tok = std::string_view(*h).substr(7);
    }
    if (tok.empty()) {
      return reject("(no credential)", Code::unauthenticated, "credential_missing",
                    "agent endpoints need 'Authorization: Bearer <agent credential>'", 60'000,
                    "on agent " + id);
    }
    std::string hash = sha256_hex(tok);
    auto found = api_.views().read([&](const State& s) -> std::optional<Who> {
      const domain::Agent* a = s.agents.by_credential_hash(hash);
      if (a == nullptr) return std::nullopt;
      return Who{*a, domain::effective_registration(s, *a)};
    });
    if (!found) {
      return reject("(unknown credential)", Code::unauthenticated, "agent_unknown",
                    "no agent has this credential (unknown, or replaced by a re-enrollment)",
                    300'000, "on agent " + id + ", credential hash " + hash.substr(0, 12));
    }
    if (found->agent.id != id) {
      return reject(found->agent.id, Code::permission_denied, "agent_mismatch",
                    "this credential is agent " + found->agent.id + "'s; it acts only for itself",
                    300'000);
    }
    if (found->agent.revoked()) {
      return reject(id, Code::permission_denied, "agent_revoked",
                    "agent " + id + " was revoked; enroll it again with a new token", 3'600'000);
    }
    req.principal = Principal{id, found->agent.hostname, {domain::kRoleAgent}, hash, "", id};
    return std::move(*found);
  }

  // The configuration of an agent, cached per log position (heartbeats at a steady state find
  // it without recomputing the desired lists).
  std::pair<std::string, Json> config(const State& s, const domain::Agent& a) {
    {
      std::lock_guard l(mu_);
      auto it = config_cache_.find(a.id);
      if (it != config_cache_.end() && it->second.position == s.position) {
        return {it->second.version, it->second.config};
      }
    }
    Json c = domain::agent_config(s, a);
    std::string v = domain::config_version(c);
    std::lock_guard l(mu_);
    if (config_cache_.size() > 200'000) config_cache_.clear();
    config_cache_[a.id] = CachedConfig{s.position, v, c};
    return {v, c};
  }

  // --agent-brokers when given; else the brokers of the shared log (one group: any of them
  // takes registrations and heartbeats); else the address the agent reached.
  Json brokers(const HttpRequest& req) const {
    if (auto g = parse_broker_groups(api_.config().agent_brokers)) return *g;
    if (auto members = api_.cluster_brokers(); !members.empty()) {
      return Json::array({Json(members)});
    }
    std::string host =
        req.header("host").value_or(api_.config().host + ":" + std::to_string(api_.config().port));
    std::string scheme = api_.config().tls_cert.empty() ? "http://" : "https://";
    return Json::array({Json::array({scheme + host})});
  }

 private:
  void log_rejection(const std::string& who, const std::string& reason, const std::string& detail) {
    int64_t now = api_.now_ms();
    std::string key = who + ' ' + reason;
    uint64_t suppressed = 0;
    {
      std::lock_guard l(mu_);
      auto it = logged_.find(key);
      if (it != logged_.end() && now - it->second.at_ms < interval_ms()) {
        it->second.suppressed++;
        return;
      }
      if (logged_.size() >= 10'000) {  // bounded: forget entries older than one interval
        for (auto i = logged_.begin(); i != logged_.end();) {
          i = now - i->second.at_ms >= interval_ms() ? logged_.erase(i) : std::next(i);
        }
        if (logged_.size() >= 10'000) return;  // a flood of distinct keys: the counter says it
      }
      if (it != logged_.end()) suppressed = it->second.suppressed;
      logged_[key] = Logged{now, 0};
    }
    std::fprintf(stderr, "atriumd: agent %s refused (%s): %s%s\n", log_escape(who).c_str(),
                 reason.c_str(), log_escape(detail).c_str(),
                 suppressed
                     ? (" [" + std::to_string(suppressed) + " more since the last line]").c_str()
                     : "");
  }

  struct Logged {
    int64_t at_ms = 0;
    uint64_t suppressed = 0;
  };
  struct CachedConfig {
    uint64_t position = 0;
    std::string version;
    Json config;
  };
  Api& api_;
  prometheus::Counter* heartbeats_;
  prometheus::Family<prometheus::Counter>* rejections_;
  prometheus::Histogram* duration_;
  prometheus::Family<prometheus::Gauge>* agents_;
  std::map<std::pair<std::string, std::string>, prometheus::Gauge*> gauges_;
  std::mutex mu_;
  std::unordered_map<std::string, Logged> logged_;
  std::unordered_map<std::string, CachedConfig> config_cache_;
};

Json beat_to_json(const std::optional<pipeline::AgentBeat>& b) {
  if (!b) return nullptr;
  return Json{{"cpu_load", b->cpu_load},
              {"memory_load", b->memory_load},
              {"disk_free_bytes", b->disk_free_bytes},
              {"sessions", b->sessions},
              {"config_version", b->config_version},
              {"reported_at_ms", b->at_ms}};
}

Json agent_view(Api& api, const State& s, const domain::Agent& a) {
  Json j = domain::agent_to_json(s, a);
  auto beat = api.liveness().agent(a.id);
  // A registration counts for the miss deadline only: no heartbeat, no figures to show yet.
  if (beat && !beat->heartbeat) beat.reset();
  j["last_heartbeat_at"] = beat ? Json(utc_iso8601(beat->at_ms)) : Json(nullptr);
  j["last_heartbeat_at_ms"] = beat ? Json(beat->at_ms) : Json(nullptr);
  j["load"] = beat_to_json(beat);
  return j;
}

const std::string* query(const HttpRequest& req, const char* name) {
  auto it = req.query.find(name);
  return it == req.query.end() ? nullptr : &it->second;
}

Result<Json> optional_object(const std::string& body) {
  if (body.empty()) return Json::object();
  return parse_object(body);
}

// ---- admin: enrollment tokens and agents -------------------------------------------------
void register_admin(Api& api) {
  Router& r = api.router();
  r.add("POST", "/v1/agents/enrollment-tokens", Access::Admin(), [&api](HttpRequest& req) {
    auto body = optional_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"server_id", "vm_id", "pool_id", "kind", "uses", "expires_in_s"});
    auto server = br.str("server_id", false, 128, 1);
    auto vm = br.str("vm_id", false, 256, 1);
    auto pool = br.str("pool_id", false, 128, 1);
    auto kind = br.one_of("kind", false, {"server", "vm"});
    auto uses = br.integer("uses", false, 1, 100000);
    auto ttl = br.integer("expires_in_s", false, 1, 365LL * 24 * 3600);
    if (auto st = br.finish(); !st) return problem(st.error());
    std::string token = new_token();
    domain::CreateEnrollmentToken cmd{new_id(),
                                      sha256_hex(token),
                                      kind.value_or(""),
                                      server.value_or(""),
                                      vm.value_or(""),
                                      pool.value_or(""),
                                      static_cast<uint32_t>(uses.value_or(1)),
                                      api.now_ms() + ttl.value_or(86400) * 1000};
    auto c = command("CreateEnrollmentToken", cmd, 201, [id = cmd.id, token](const State& s) {
      const domain::EnrollmentToken* t = s.agents.token(id);
      if (t == nullptr) return Json::object();
      Json j = domain::enrollment_token_to_json(*t);
      j["token"] = token;  // shown once: only its hash is kept
      j["expires_at"] = utc_iso8601(t->expires_at_ms);
      return j;
    });
    HttpResponse resp = api.run(req, std::move(c));
    if (resp.status == 201) {
      resp.with_header("Location", "/v1/agents/enrollment-tokens/" + cmd.id);
      resp.with_header("Cache-Control", "no-store");
    }
    return resp;
  });

  r.add("GET", "/v1/agents/enrollment-tokens", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    return api.with_state(req, [&](const State& s) {
      Json items = Json::array();
      std::string last;
      bool more = false;
      for (auto it = s.agents.tokens.upper_bound(pg->after); it != s.agents.tokens.end(); ++it) {
        if (items.size() == pg->limit) {
          more = true;
          break;
        }
        Json j = domain::enrollment_token_to_json(it->second);
        j["expires_at"] = utc_iso8601(it->second.expires_at_ms);
        items.push_back(j);
        last = it->first;
      }
      Json out{{"items", items}, {"next_cursor", nullptr}};
      if (more) out["next_cursor"] = Api::encode_cursor(last);
      return HttpResponse::json(200, out);
    });
  });

  r.add("DELETE", "/v1/agents/enrollment-tokens/{id}", Access::Admin(), [&api](HttpRequest& req) {
    return api.run(
        req, command("RevokeEnrollmentToken", domain::RevokeEnrollmentToken{req.param("id")}, 204));
  });

  r.add("GET", "/v1/agents", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    const std::string* kind = query(req, "kind");
    const std::string* reg = query(req, "registration");
    const std::string* server = query(req, "server_id");
    return api.with_state(req, [&](const State& s) {
      Json items = Json::array();
      std::string last;
      bool more = false;
      for (auto it = s.agents.agents.upper_bound(pg->after); it != s.agents.agents.end(); ++it) {
        const domain::Agent& a = it->second;
        if (kind && a.kind != *kind) continue;
        if (server && a.server_id != *server) continue;
        if (reg && domain::effective_registration(s, a) != *reg) continue;
        if (items.size() == pg->limit) {
          more = true;
          break;
        }
        items.push_back(agent_view(api, s, a));
        last = it->first;
      }
      Json out{{"items", items}, {"next_cursor", nullptr}};
      if (more) out["next_cursor"] = Api::encode_cursor(last);
      return HttpResponse::json(200, out);
    });
  });

  r.add("GET", "/v1/agents/{id}", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      return entity_response(s.agents.find(id), "agent", id,
                             [&](const domain::Agent& a) { return agent_view(api, s, a); });
    });
  });

  r.add("DELETE", "/v1/agents/{id}", Access::Admin(), [&api](HttpRequest& req) {
    return api.run(req, command("RevokeAgent", domain::RevokeAgent{req.param("id"), "admin"}, 204));
  });

  r.add("POST", "/v1/agents/{id}/bind", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"server_id", "vm_id"});
    auto server = br.str("server_id", false, 128, 1);
    auto vm = br.str("vm_id", false, 256, 1);
    if (auto st = br.finish(); !st) return problem(st.error());
    std::string id = req.param("id");
    domain::BindAgent cmd{id, server.value_or(""), vm.value_or(""), "admin"};
    return api.run(req, command("BindAgent", cmd, 200, [&api, id](const State& s) {
                     const domain::Agent* a = s.agents.find(id);
                     return a ? agent_view(api, s, *a) : Json::object();
                   }));
  });
}

// ---- the agent's side -------------------------------------------------------------------
void register_agent_side(Api& api, std::shared_ptr<AgentEndpoints> ep) {
  Router& r = api.router();

  r.add("POST", "/v1/agents/enroll", Access::Public(), [&api, ep](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"token", "hostname", "os", "agent_version", "machine_id"});
    auto token = br.str("token", true, 256, 1);
    auto hostname = br.str("hostname", true, 255, 1);
    auto os = br.str("os", false, 128);
    auto version = br.str("agent_version", false, 64);
    auto machine = br.str("machine_id", true, 128, 1);
    if (auto st = br.finish(); !st) return problem(st.error());
    std::string credential = new_token();
    domain::EnrollAgent cmd{new_id(),  sha256_hex(*token), sha256_hex(credential),
                            *hostname, os.value_or(""),    version.value_or(""),
                            *machine};
    std::string hash = cmd.credential_hash;
    auto c = command("EnrollAgent", cmd, 201, [&api, hash, credential](const State& s) {
      const domain::Agent* a = s.agents.by_credential_hash(hash);
      if (a == nullptr) return Json::object();
      Json j = agent_view(api, s, *a);
      j["credential"] = credential;  // shown once: only its hash is kept
      return j;
    });
    HttpResponse resp = api.run(req, std::move(c));
    if (resp.status == 401) {
      return ep->reject("(enrollment)", Code::unauthenticated, "enrollment_token_invalid",
                        Json::parse(resp.body, nullptr, false).value("detail", "invalid token"),
                        60'000, "hostname " + *hostname);
    }
    if (resp.status == 201) resp.with_header("Cache-Control", "no-store");
    return resp;
  });

  r.add("POST", "/v1/agents/{id}/register", Access::Agent(), [&api, ep](HttpRequest& req) {
    std::string id = req.param("id");
    auto who = ep->authenticate(req, id);
    if (auto* refusal = std::get_if<HttpResponse>(&who)) return std::move(*refusal);
    auto body = optional_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {});
    if (auto st = br.finish(); !st) return problem(st.error());
    int64_t now = api.now_ms();
    // The registration counts as a heartbeat for the miss deadline.
    api.liveness().agent_beat(id, pipeline::AgentBeat{now, 0, 0, 0, 0, "", false});
    Command c =
        command("RegisterAgent", domain::RegisterAgent{id, "register", now}, 200,
                [&api, ep, id, brokers = ep->brokers(req)](const State& s) {
                  const domain::Agent* a = s.agents.find(id);
                  if (a == nullptr) return Json::object();
                  auto [version, config] = ep->config(s, *a);
                  return Json{{"agent_id", id},
                              {"kind", a->kind},
                              {"registration", domain::effective_registration(s, *a)},
                              {"heartbeat_interval_s", api.config().agent_heartbeat_ms / 1000.0},
                              {"grace_factor", api.config().agent_grace_factor},
                              {"brokers", brokers},
                              {"config_version", version},
                              {"config", config},
                              {"version", a->version}};
                });
    return api.run(req, std::move(c));
  });

  // On a follower the heartbeat is answered here (its views, its liveness) and relayed to the
  // leader in a batch; one that needs the writer (an agent back from unregistered, sessions
  // that changed) or a follower without a relay (no cluster secret) forwards it whole.
  Access heartbeat_access = Access::Agent();
  heartbeat_access.local = true;
  r.add("POST", "/v1/agents/{id}/heartbeat", heartbeat_access, [&api, ep](HttpRequest& req) {
    auto t0 = std::chrono::steady_clock::now();
    auto done = [&](HttpResponse resp) {
      ep->heartbeat_done(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
          resp.status == 200);
      return resp;
    };
    std::string id = req.param("id");
    auto who = ep->authenticate(req, id);
    if (auto* refusal = std::get_if<HttpResponse>(&who)) return done(std::move(*refusal));
    const auto& me = std::get<AgentEndpoints::Who>(who);
    auto body = parse_object(req.body);
    if (!body.ok()) return done(problem(body.error()));
    BodyReader br(*body,
                  {"cpu_load", "memory_load", "disk_free_bytes", "sessions", "config_version"});
    auto cpu = br.number("cpu_load", true, 0, 1);
    auto mem = br.number("memory_load", true, 0, 1);
    auto disk = br.integer("disk_free_bytes", false, 0, int64_t{1} << 62);
    auto version = br.str("config_version", false, 64);
    domain::RecordAgentSessions sessions{id, {}};
    if (body->contains("sessions")) {
      const Json& arr = (*body)["sessions"];
      if (!arr.is_array() || arr.size() > 10000) {
        br.fail("sessions", "must be an array of at most 10000 {user, state}");
      } else {
        for (const auto& e : arr) {
          if (!e.is_object() || !e.contains("user") || !e["user"].is_string() ||
              (e.contains("state") && !e["state"].is_string()) || e.size() > 2 ||
              e["user"].get<std::string>().size() > 256) {
            br.fail("sessions", "each entry is {user: string, state: string}");
            break;
          }
          sessions.sessions.push_back({e["user"].get<std::string>(), e.value("state", "active")});
        }
      }
    }
    if (auto st = br.finish(); !st) return done(problem(st.error()));
    int64_t now = api.now_ms();
    const int64_t interval = ep->interval_ms();
    if (me.registration == "enrolled") {
      return done(ep->reject(
          id, Code::failed_precondition, "not_registered",
          "agent " + id + " has not registered: POST /v1/agents/" + id + "/register first", 1000));
    }
    if (api.follower()) {
      bool writes = me.registration == "unregistered" || api.views().read([&](const State& s) {
        return domain::agent_sessions_change(s, sessions);
      });
      if (writes || api.liveness_relay() == nullptr) return done(api.forward(req));
    }
    int64_t last = api.liveness().last_beat_ms(id);
    auto prev = api.liveness().agent(id);
    if (prev && prev->heartbeat && now - last < interval / 4) {
      return done(ep->reject(id, Code::too_many_requests, "heartbeat_too_early",
                             "heartbeats come every " + std::to_string(interval / 1000) +
                                 " s; this one came after " + std::to_string(now - last) + " ms",
                             interval / 4 - (now - last)));
    }
    pipeline::AgentBeat beat{now,
                             *cpu,
                             *mem,
                             static_cast<uint64_t>(disk.value_or(0)),
                             static_cast<uint32_t>(sessions.sessions.size()),
                             version.value_or(""),
                             true};
    api.liveness().agent_beat(id, beat);
    if (api.follower() && api.liveness_relay() != nullptr) {
      const bool server = me.agent.kind == domain::kAgentServer && !me.agent.server_id.empty();
      api.liveness_relay()->add(id, beat, server ? me.agent.server_id : "", api.views().position());
    }
    if (me.registration == "unregistered") {
      // Back after missing its heartbeats: registered again, without an admin.
      auto out = api.pipeline().execute(
          command("RegisterAgent", domain::RegisterAgent{id, "heartbeat", now}));
      if (!out.ok()) return done(problem(out.error()));
    }
    if (me.agent.kind == domain::kAgentServer && !me.agent.server_id.empty()) {
      domain::LoadReport l{*cpu, *mem, beat.sessions, now, api.views().position()};
      api.liveness().server_load(me.agent.server_id, l);
    }
    bool sessions_changed = api.views().read(
        [&](const State& s) { return domain::agent_sessions_change(s, sessions); });
    if (sessions_changed) {
      auto out = api.pipeline().execute(command("RecordAgentSessions", sessions));
      if (!out.ok()) return done(problem(out.error()));
    }
    Json answer = api.views().read([&](const State& s) {
      const domain::Agent* a = s.agents.find(id);
      if (a == nullptr) return Json::object();
      auto [cv, config] = ep->config(s, *a);
      Json j{{"registration", domain::effective_registration(s, *a)},
             {"config_version", cv},
             {"heartbeat_interval_s", interval / 1000.0}};
      if (!version || *version != cv) j["config"] = config;
      return j;
    });
    return done(HttpResponse::json(200, answer));
  });

  r.add("POST", "/v1/agents/{id}/inventory", Access::Agent(), [&api, ep](HttpRequest& req) {
    std::string id = req.param("id");
    auto who = ep->authenticate(req, id);
    if (auto* refusal = std::get_if<HttpResponse>(&who)) return std::move(*refusal);
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"applications", "remote_apps", "remote_users"});
    auto apps = br.string_set("remote_apps", false);
    auto users = br.string_set("remote_users", false);
    domain::RecordAgentInventory inv{
        id, {}, apps.value_or(std::set<std::string>{}), users.value_or(std::set<std::string>{})};
    if (body->contains("applications")) {
      const Json& arr = (*body)["applications"];
      if (!arr.is_array() || arr.size() > 10000) {
        br.fail("applications", "must be an array of at most 10000 applications");
      } else {
        for (const auto& e : arr) {
          auto field = [&](const char* k) {
            return e.contains(k) && e[k].is_string() ? e[k].get<std::string>() : std::string();
          };
          bool ok = e.is_object() && e.contains("name") && e["name"].is_string() &&
                    e.contains("executable_path") && e["executable_path"].is_string();
          if (ok) {
            for (const auto& [k, v] : e.items()) {
              bool known = k == "name" || k == "executable_path" || k == "description" ||
                           k == "desktop_file";
              if (!known || !v.is_string()) ok = false;
            }
          }
          if (!ok) {
            br.fail("applications",
                    "each entry is {name, executable_path, description?, desktop_file?} (strings)");
            break;
          }
          inv.applications.push_back({field("name"), field("executable_path"), field("description"),
                                      field("desktop_file")});
        }
      }
    }
    if (auto st = br.finish(); !st) return problem(st.error());
    auto render = [&api, id](const State& s) {
      const domain::Agent* a = s.agents.find(id);
      std::string sid = a ? a->server_id : "";
      Json j{{"server_id", sid.empty() ? Json(nullptr) : Json(sid)}};
      if (auto st = s.appcloud.sync_status(sid)) {
        j["in_sync"] = st->in_sync;
        j["sync"] = domain::sync_status_to_json(*st);
      }
      (void)api;
      return j;
    };
    bool changes =
        api.views().read([&](const State& s) { return domain::agent_inventory_changes(s, inv); });
    if (!changes)
      return api.views().read([&](const State& s) { return HttpResponse::json(200, render(s)); });
    return api.run(req, command("RecordAgentInventory", inv, 200, render));
  });
}

}  // namespace

void register_agent_routes(Api& api) {
  auto ep = std::make_shared<AgentEndpoints>(api);
  api.metrics().add_collector([ep, &api] {
    api.views().read([&](const State& s) {
      ep->refresh_gauges(s);
      return 0;
    });
  });
  // Literal paths first: the router takes the first template that matches.
  register_agent_side(api, ep);
  register_admin(api);
}

}  // namespace atrium::api

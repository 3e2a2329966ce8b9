#include "domain/agents.h"

#include <algorithm>
#include <cctype>

#include "domain/evolve_table.h"
#include "domain/sha256.h"
#include "domain/state.h"

namespace atrium::domain {

namespace {

constexpr int64_t kMaxTokenLifeMs = int64_t{365} * 24 * 3600 * 1000;
constexpr uint32_t kMaxTokenUses = 100000;

Error agent_error(Code c, const std::string& reason, const std::string& msg,
                  const std::string& field = {}) {
  Error e = Error::make(c, msg, reason);
  if (!field.empty()) e.fields.push_back({field, msg});
  return e;
}

Status text(const char* field, const std::string& v, size_t min, size_t max) {
  if (v.size() < min || v.size() > max) {
    return agent_error(Code::invalid_argument, "invalid_agent",
                       std::string(field) + " must be " + std::to_string(min) + " to " +
                           std::to_string(max) + " characters",
                       field);
  }
  for (unsigned char c : v) {
    if (c < 0x20 || c == 0x7f) {
      return agent_error(Code::invalid_argument, "invalid_agent",
                         std::string(field) + " must not contain control characters", field);
    }
  }
  return Status::Ok();
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string machine_key(const std::string& kind, const std::string& machine_id) {
  return kind + '\x1f' + lower(machine_id);
}

Event agent_event(const std::string& id, const char* type, Json data) {
  return Event{agent_stream(id), type, 1, std::move(data)};
}

// The VM whose UUID is `uuid` (any host), or nullptr.
const Vm* vm_by_uuid(const State& s, const std::string& uuid) {
  std::string u = lower(uuid);
  for (const auto& [host, by_uuid] : s.hosts.vm_by_uuid) {
    if (auto it = by_uuid.find(u); it != by_uuid.end()) {
      if (const Vm* v = s.hosts.vm(it->second)) return v;
    }
  }
  return nullptr;
}

bool vm_in_pool(const State& s, const std::string& vm_id) {
  const Vm* v = s.hosts.vm(vm_id);
  return v != nullptr && v->managed() && s.pools.pool(v->pool_id) != nullptr;
}

bool belongs_as(const State& s, const std::string& kind, const std::string& server_id,
                const std::string& vm_id) {
  if (kind == kAgentServer) return !server_id.empty() && s.appcloud.server(server_id) != nullptr;
  return !vm_id.empty() && vm_in_pool(s, vm_id);
}

}  // namespace

// ---- queries ----------------------------------------------------------------------------
std::string agent_stream(const std::string& id) {
  return "agent-" + id;
}
std::string enrollment_token_stream(const std::string& id) {
  return "enrollment-token-" + id;
}

std::string EnrollmentToken::unusable(int64_t now_ms) const {
  if (revoked) return "revoked";
  if (expires_at_ms <= now_ms) return "expired";
  if (used >= uses) return "used up";
  return "";
}

const Agent* AgentsState::find(const std::string& id) const {
  auto it = agents.find(id);
  return it == agents.end() ? nullptr : &it->second;
}

const Agent* AgentsState::by_credential_hash(const std::string& hash) const {
  auto it = by_credential.find(hash);
  return it == by_credential.end() ? nullptr : find(it->second);
}

const Agent* AgentsState::of_server(const std::string& server_id) const {
  auto it = by_server.find(server_id);
  return it == by_server.end() ? nullptr : find(it->second);
}

const Agent* AgentsState::of_vm(const std::string& vm_id) const {
  if (by_vm.empty()) return nullptr;
  auto it = by_vm.find(vm_id);
  return it == by_vm.end() ? nullptr : find(it->second);
}

const EnrollmentToken* AgentsState::token(const std::string& id) const {
  auto it = tokens.find(id);
  return it == tokens.end() ? nullptr : &it->second;
}

void AgentsState::reindex() {
  by_credential.clear();
  token_by_hash.clear();
  by_server.clear();
  by_vm.clear();
  by_machine.clear();
  for (const auto& [id, t] : tokens) token_by_hash[t.token_hash] = id;
  for (const auto& [id, a] : agents) {
    by_credential[a.credential_hash] = id;  // revoked too: its answer says so
    if (a.revoked()) continue;
    by_machine[machine_key(a.kind, a.machine_id)] = id;
    if (!a.server_id.empty()) by_server[a.server_id] = id;
    if (!a.vm_id.empty()) by_vm[a.vm_id] = id;
  }
}

bool belongs(const State& s, const Agent& a) {
  return belongs_as(s, a.kind, a.server_id, a.vm_id);
}

std::string effective_registration(const State& s, const Agent& a) {
  if (!a.registered()) return a.registration;
  return belongs(s, a) ? "hard" : "soft";
}

Json agent_config(const State& s, const Agent& a) {
  Json c{{"kind", a.kind}};
  if (a.kind == kAgentServer && belongs(s, a)) {
    const Server* srv = s.appcloud.server(a.server_id);
    c["server_id"] = srv->id;
    auto d = s.appcloud.desired_state(srv->id);
    c["remote_app_service"] = srv->remote_app_service ? "enabled" : "disabled";
    Json apps = Json::array(), users = Json::array();
    for (const auto& id : d->remote_apps) {
      const Application* app = s.appcloud.application(id);
      apps.push_back(Json{{"id", id},
                          {"name", app ? app->name : ""},
                          {"executable_path", app ? app->executable_path : ""}});
    }
    for (const auto& id : d->remote_users) {
      const User* u = s.users.find(id);
      users.push_back(Json{{"id", id}, {"name", u ? u->name : ""}});
    }
    c["remote_apps"] = apps;
    c["remote_users"] = users;
  } else if (a.kind == kAgentVm && belongs(s, a)) {
    const Vm* v = s.hosts.vm(a.vm_id);
    const Pool* p = s.pools.pool(v->pool_id);
    c["vm_id"] = v->id;
    c["pool_id"] = p->id;
    c["policy"] = pool_policy_to_json(p->policy);
  }
  return c;
}

std::string config_version(const Json& config) {
  return sha256_hex(config.dump()).substr(0, 16);
}

// ---- decide: tokens ---------------------------------------------------------------------
Result<Events> decide(const State& s, const CreateEnrollmentToken& c, const Context& ctx) {
  if (auto st = validate_id("id", c.id); !st) return st.error();
  if (s.agents.token(c.id) != nullptr) {
    return Error::make(Code::already_exists, "token " + c.id + " exists", "already_exists");
  }
  if (c.token_hash.size() != 64 || s.agents.token_by_hash.count(c.token_hash) > 0) {
    return invalid("the token hash must be a new SHA-256 hex digest", "invalid_enrollment_token");
  }
  int bindings = !c.server_id.empty() + !c.vm_id.empty() + !c.pool_id.empty();
  auto bad = [](const std::string& field, const std::string& msg) {
    return agent_error(Code::invalid_argument, "invalid_enrollment_token", msg, field);
  };
  if (bindings > 1) return bad("server_id", "give at most one of server_id, vm_id and pool_id");
  std::string kind = c.kind;
  if (!c.server_id.empty()) {
    if (!kind.empty() && kind != kAgentServer)
      return bad("kind", "a server_id token is kind server");
    kind = kAgentServer;
    if (s.appcloud.server(c.server_id) == nullptr) {
      return Error::make(Code::not_found, "server " + c.server_id + " not found",
                         "server_not_found");
    }
  } else if (!c.vm_id.empty() || !c.pool_id.empty()) {
    if (!kind.empty() && kind != kAgentVm)
      return bad("kind", "a vm_id or pool_id token is kind vm");
    kind = kAgentVm;
    if (!c.vm_id.empty() && s.hosts.vm(c.vm_id) == nullptr) {
      return Error::make(Code::not_found, "vm " + c.vm_id + " not found", "vm_not_found");
    }
    if (!c.pool_id.empty() && s.pools.pool(c.pool_id) == nullptr) {
      return Error::make(Code::not_found, "pool " + c.pool_id + " not found", "pool_not_found");
    }
  }
  if (kind != kAgentServer && kind != kAgentVm) {
    return bad("kind", "kind must be server or vm (or give server_id, vm_id or pool_id)");
  }
  if (c.uses < 1 || c.uses > kMaxTokenUses) return bad("uses", "uses must be 1 to 100000");
  if (c.expires_at_ms <= ctx.now_ms || c.expires_at_ms - ctx.now_ms > kMaxTokenLifeMs) {
    return bad("expires_in_s", "a token lives 1 s to 365 days");
  }
  Json data{{"id", c.id},
            {"token_hash", c.token_hash},
            {"kind", kind},
            {"uses", c.uses},
            {"expires_at_ms", c.expires_at_ms}};
  if (!c.server_id.empty()) data["server_id"] = c.server_id;
  if (!c.vm_id.empty()) data["vm_id"] = c.vm_id;
  if (!c.pool_id.empty()) data["pool_id"] = c.pool_id;
  return Events{{enrollment_token_stream(c.id), "EnrollmentTokenCreated", 1, data}};
}

Result<Events> decide(const State& s, const RevokeEnrollmentToken& c, const Context&) {
  const EnrollmentToken* t = s.agents.token(c.id);
  if (t == nullptr) return not_found("enrollment token " + c.id + " not found");
  if (t->revoked) return Events{};
  return Events{{enrollment_token_stream(c.id), "EnrollmentTokenRevoked", 1, Json{{"id", c.id}}}};
}

// ---- decide: enrollment -----------------------------------------------------------------
Result<Events> decide(const State& s, const EnrollAgent& c, const Context& ctx) {
  auto it = s.agents.token_by_hash.find(c.token_hash);
  const EnrollmentToken* t =
      it == s.agents.token_by_hash.end() ? nullptr : s.agents.token(it->second);
  if (t == nullptr) {
    return Error::make(Code::unauthenticated, "the enrollment token is unknown",
                       "enrollment_token_invalid");
  }
  if (std::string why = t->unusable(ctx.now_ms); !why.empty()) {
    return Error::make(Code::unauthenticated, "the enrollment token is " + why,
                       "enrollment_token_invalid");
  }
  if (auto st = text("hostname", c.hostname, 1, 255); !st) return st.error();
  if (auto st = text("os", c.os, 0, 128); !st) return st.error();
  if (auto st = text("agent_version", c.agent_version, 0, 64); !st) return st.error();
  if (auto st = text("machine_id", c.machine_id, 1, 128); !st) return st.error();
  if (auto st = validate_id("agent_id", c.agent_id); !st) return st.error();
  if (c.credential_hash.size() != 64 || s.agents.by_credential.count(c.credential_hash) > 0) {
    return invalid("the credential hash must be a new SHA-256 hex digest", "invalid_agent");
  }
  // The same machine enrolling again (a reinstall, a lost credential) keeps its agent.
  const Agent* prev = nullptr;
  if (auto m = s.agents.by_machine.find(machine_key(t->kind, c.machine_id));
      m != s.agents.by_machine.end()) {
    prev = s.agents.find(m->second);
  }
  std::string id = prev ? prev->id : c.agent_id;
  if (!prev && s.agents.find(id) != nullptr) {
    return Error::make(Code::already_exists, "agent " + id + " exists", "already_exists");
  }
  std::string server_id = t->server_id, vm_id = t->vm_id;
  if (t->kind == kAgentVm && vm_id.empty()) {
    // A pool token (golden image) or an unbound VM token: the VM is the one whose UUID the
    // agent read from SMBIOS; a pool token binds only to a VM of its pool.
    if (const Vm* v = vm_by_uuid(s, c.machine_id)) {
      if (t->pool_id.empty() || v->pool_id == t->pool_id) vm_id = v->id;
    }
  }
  if (prev && server_id.empty() && vm_id.empty()) {
    server_id = prev->server_id;
    vm_id = prev->vm_id;
  }
  if (!server_id.empty()) {
    if (const Agent* other = s.agents.of_server(server_id); other && other->id != id) {
      return refused("server_has_agent", "server " + server_id + " already has agent " + other->id +
                                             " (revoke it first)");
    }
  }
  if (!vm_id.empty()) {
    if (const Agent* other = s.agents.of_vm(vm_id); other && other->id != id) {
      return refused("vm_has_agent",
                     "vm " + vm_id + " already has agent " + other->id + " (revoke it first)");
    }
  }
  Json data{{"id", id},
            {"token_id", t->id},
            {"kind", t->kind},
            {"hostname", c.hostname},
            {"os", c.os},
            {"agent_version", c.agent_version},
            {"machine_id", c.machine_id},
            {"credential_hash", c.credential_hash}};
  if (!server_id.empty()) data["server_id"] = server_id;
  if (!vm_id.empty()) data["vm_id"] = vm_id;
  if (!t->pool_id.empty()) data["pool_id"] = t->pool_id;
  if (prev) data["re_enrolled"] = true;
  return Events{agent_event(id, "AgentEnrolled", data)};
}

// ---- decide: registration ---------------------------------------------------------------
namespace {
Result<const Agent*> live_agent(const State& s, const std::string& id) {
  const Agent* a = s.agents.find(id);
  if (a == nullptr) {
    return Error::make(Code::not_found, "agent " + id + " not found", "agent_not_found");
  }
  if (a->revoked()) {
    return Error::make(Code::permission_denied, "agent " + id + " is revoked", "agent_revoked");
  }
  return a;
}
}  // namespace

Result<Events> decide(const State& s, const RegisterAgent& c, const Context& ctx) {
  auto a = live_agent(s, c.agent_id);
  if (!a.ok()) return a.error();
  std::string eff = belongs(s, **a) ? "hard" : "soft";
  if ((*a)->registration == eff) return Events{};
  return Events{agent_event(
      c.agent_id, "AgentRegistered",
      Json{{"registration", eff},
           {"previous", (*a)->registration},
           {"cause", c.cause},
           {"heartbeat_at_ms", c.heartbeat_at_ms > 0 ? c.heartbeat_at_ms : ctx.now_ms}})};
}

Result<Events> decide(const State& s, const UnregisterAgent& c, const Context&) {
  const Agent* a = s.agents.find(c.agent_id);
  if (a == nullptr || !a->registered()) return Events{};
  if (c.reason.empty() || c.reason.size() > 64) return invalid("reason must be 1 to 64 characters");
  return Events{agent_event(c.agent_id, "AgentUnregistered",
                            Json{{"reason", c.reason},
                                 {"previous", a->registration},
                                 {"last_heartbeat_at_ms", c.last_heartbeat_at_ms},
                                 {"deadline_ms", c.deadline_ms}})};
}

Result<Events> decide(const State& s, const SyncAgentRegistration& c, const Context&) {
  const Agent* a = s.agents.find(c.agent_id);
  if (a == nullptr || !a->registered()) return Events{};
  std::string eff = effective_registration(s, *a);
  if (eff == a->registration) return Events{};
  return Events{agent_event(c.agent_id, "AgentRegistrationChanged",
                            Json{{"registration", eff},
                                 {"previous", a->registration},
                                 {"cause", eff == "hard" ? "joined_catalog" : "left_catalog"}})};
}

Result<Events> decide(const State& s, const BindAgent& c, const Context&) {
  auto r = live_agent(s, c.agent_id);
  if (!r.ok()) return r.error();
  const Agent& a = **r;
  if (c.server_id.empty() == c.vm_id.empty()) {
    return agent_error(Code::invalid_argument, "invalid_agent", "give server_id or vm_id",
                       "server_id");
  }
  if (!c.server_id.empty()) {
    if (a.kind != kAgentServer) {
      return refused("agent_kind_mismatch", "agent " + a.id + " is a VM agent: bind it to a VM");
    }
    if (s.appcloud.server(c.server_id) == nullptr) {
      return Error::make(Code::not_found, "server " + c.server_id + " not found",
                         "server_not_found");
    }
    if (const Agent* other = s.agents.of_server(c.server_id); other && other->id != a.id) {
      return refused("server_has_agent",
                     "server " + c.server_id + " already has agent " + other->id);
    }
    if (a.server_id == c.server_id) return Events{};
  } else {
    if (a.kind != kAgentVm) {
      return refused("agent_kind_mismatch",
                     "agent " + a.id + " is a server agent: bind it to a server");
    }
    const Vm* v = s.hosts.vm(c.vm_id);
    if (v == nullptr)
      return Error::make(Code::not_found, "vm " + c.vm_id + " not found", "vm_not_found");
    if (!a.pool_id.empty() && v->pool_id != a.pool_id) {
      return refused("agent_kind_mismatch", "agent " + a.id + " came from a token of pool " +
                                                a.pool_id + "; vm " + c.vm_id + " is not in it");
    }
    if (const Agent* other = s.agents.of_vm(c.vm_id); other && other->id != a.id) {
      return refused("vm_has_agent", "vm " + c.vm_id + " already has agent " + other->id);
    }
    if (a.vm_id == c.vm_id) return Events{};
  }
  Json data{{"cause", c.cause}};
  if (!c.server_id.empty()) data["server_id"] = c.server_id;
  if (!c.vm_id.empty()) data["vm_id"] = c.vm_id;
  Events out{agent_event(a.id, "AgentBound", data)};
  if (a.registered()) {
    std::string eff = belongs_as(s, a.kind, c.server_id, c.vm_id) ? "hard" : "soft";
    if (eff != a.registration) {
      out.push_back(agent_event(
          a.id, "AgentRegistrationChanged",
          Json{{"registration", eff}, {"previous", a.registration}, {"cause", "bound"}}));
    }
  }
  return out;
}

Result<Events> decide(const State& s, const RevokeAgent& c, const Context&) {
  const Agent* a = s.agents.find(c.agent_id);
  if (a == nullptr) {
    return Error::make(Code::not_found, "agent " + c.agent_id + " not found", "agent_not_found");
  }
  if (a->revoked()) return Events{};
  return Events{agent_event(c.agent_id, "AgentRevoked",
                            Json{{"reason", c.reason}, {"previous", a->registration}})};
}

// ---- decide: what agents report ---------------------------------------------------------
namespace {

// The live desktop session on the agent's VM and whether the agent says its user is logged
// in; nullptr when there is none.
const DesktopSession* agent_session(const State& s, const Agent& a,
                                    const std::vector<AgentSessionReport>& reports, bool& present) {
  if (a.kind != kAgentVm || a.vm_id.empty()) return nullptr;
  const PoolMember* m = s.pools.member(a.vm_id);
  if (m == nullptr || m->session_id.empty()) return nullptr;
  const DesktopSession* d = s.pools.session(m->session_id);
  if (d == nullptr || !d->live()) return nullptr;
  const User* u = s.users.find(d->user_id);
  present = false;
  for (const auto& r : reports) {
    bool in = r.state == "active" || r.state == "connected";
    if (in && u != nullptr && (r.user == u->name || r.user == u->id)) present = true;
  }
  return d;
}

}  // namespace

bool agent_sessions_change(const State& s, const RecordAgentSessions& c) {
  const Agent* a = s.agents.find(c.agent_id);
  if (a == nullptr || a->revoked()) return false;
  bool present = false;
  const DesktopSession* d = agent_session(s, *a, c.sessions, present);
  if (d == nullptr) return false;
  // A session the agent never spoke about and whose user is not logged in yet: nothing to say
  // (the user may still be on the way).
  if (!d->agent_signal && !present) return false;
  return present != d->agent_present;
}

Result<Events> decide(const State& s, const RecordAgentSessions& c, const Context&) {
  auto r = live_agent(s, c.agent_id);
  if (!r.ok()) return r.error();
  if (!agent_sessions_change(s, c)) return Events{};
  bool present = false;
  const DesktopSession* d = agent_session(s, **r, c.sessions, present);
  std::string stream = desktop_session_stream(d->id);
  if (present && d->state != "connected") {
    return Events{{stream, "DesktopSessionConnected", 1,
                   Json{{"source", "agent"}, {"agent_id", c.agent_id}}}};
  }
  if (!present && d->state == "connected") {
    return Events{
        {stream, "DesktopSessionDisconnected", 1,
         Json{{"reason", "agent_logged_out"}, {"source", "agent"}, {"agent_id", c.agent_id}}}};
  }
  return Events{
      {stream, "DesktopSessionAgentSeen", 1, Json{{"present", present}, {"agent_id", c.agent_id}}}};
}

namespace {

struct InventoryPlan {
  const Server* server = nullptr;
  std::vector<const AgentApplication*> add;
  std::vector<std::string> remove;
};

Result<InventoryPlan> plan_inventory(const State& s, const RecordAgentInventory& c) {
  auto r = live_agent(s, c.agent_id);
  if (!r.ok()) return r.error();
  const Agent& a = **r;
  if (a.kind != kAgentServer || a.server_id.empty() || s.appcloud.server(a.server_id) == nullptr) {
    return refused("agent_not_bound",
                   "agent " + a.id + " is bound to no server of the catalog; an admin binds it");
  }
  InventoryPlan p;
  p.server = s.appcloud.server(a.server_id);
  std::set<std::string> seen;
  for (const auto& app : c.applications) {
    std::string id = application_id(app.name, app.executable_path);
    if (!seen.insert(id).second) continue;
    if (!p.server->has(id)) p.add.push_back(&app);
  }
  for (const auto& id : p.server->agent_applications) {
    if (seen.count(id) == 0) p.remove.push_back(id);
  }
  return p;
}

}  // namespace

bool agent_inventory_changes(const State& s, const RecordAgentInventory& c) {
  auto p = plan_inventory(s, c);
  if (!p.ok()) return true;  // let the decider say why
  if (!p->add.empty() || !p->remove.empty()) return true;
  const auto& held = p->server->reported;
  return !held || held->apps != c.remote_apps || held->users != c.remote_users;
}

Result<Events> decide(const State& s, const RecordAgentInventory& c, const Context& ctx) {
  auto p = plan_inventory(s, c);
  if (!p.ok()) return p.error();
  const std::string& sid = p->server->id;
  Events out;
  for (const AgentApplication* app : p->add) {
    auto r = decide(s,
                    AddServerApplication{sid, app->name, app->executable_path, app->description,
                                         app->desktop_file, "agent"},
                    ctx);
    if (!r.ok()) return r.error();
    for (auto& e : *r) out.push_back(std::move(e));
  }
  for (const auto& id : p->remove) {
    auto r = decide(s, RemoveServerApplication{sid, id}, ctx);
    if (!r.ok()) return r.error();
    for (auto& e : *r) out.push_back(std::move(e));
  }
  auto inv = decide(s, ReportServerInventory{sid, c.remote_apps, c.remote_users, ctx.now_ms}, ctx);
  if (!inv.ok()) return inv.error();
  for (auto& e : *inv) out.push_back(std::move(e));
  return out;
}

// ---- the monitor ------------------------------------------------------------------------
std::vector<AgentAction> agent_actions(const State& s, const LastHeartbeat& last, int64_t now_ms,
                                       const AgentTiming& t) {
  std::vector<AgentAction> out;
  bool any_unbound_vm = false;
  for (const auto& [id, a] : s.agents.agents) {
    if (a.revoked()) continue;
    if (a.kind == kAgentVm && a.vm_id.empty()) any_unbound_vm = true;
    if (!a.registered()) continue;
    int64_t beat = std::max(last ? last(id) : 0, t.started_at_ms);
    beat = std::max(beat, a.registered_at_ms);
    int64_t deadline = beat + t.grace_ms();
    if (now_ms > deadline) {
      out.push_back({"unregister", id, "", last ? last(id) : 0, deadline});
      continue;
    }
    if (effective_registration(s, a) != a.registration)
      out.push_back({"sync_registration", id, "", 0, 0});
  }
  if (any_unbound_vm) {
    for (const auto& [id, a] : s.agents.agents) {
      if (a.revoked() || a.kind != kAgentVm || !a.vm_id.empty()) continue;
      const Vm* v = vm_by_uuid(s, a.machine_id);
      if (v == nullptr || s.agents.of_vm(v->id) != nullptr) continue;
      if (!a.pool_id.empty() && v->pool_id != a.pool_id) continue;
      out.push_back({"bind_vm", id, v->id, 0, 0});
    }
  }
  return out;
}

// ---- views ------------------------------------------------------------------------------
Json agent_to_json(const State& s, const Agent& a) {
  Json j{{"id", a.id},
         {"kind", a.kind},
         {"hostname", a.hostname},
         {"os", a.os},
         {"agent_version", a.agent_version},
         {"machine_id", a.machine_id},
         {"token_id", a.token_id},
         {"registration", effective_registration(s, a)},
         {"recorded_registration", a.registration},
         {"reason", a.reason.empty() ? Json(nullptr) : Json(a.reason)},
         {"server_id", a.server_id.empty() ? Json(nullptr) : Json(a.server_id)},
         {"vm_id", a.vm_id.empty() ? Json(nullptr) : Json(a.vm_id)},
         {"pool_id", a.pool_id.empty() ? Json(nullptr) : Json(a.pool_id)},
         {"enrolled_at_ms", a.enrolled_at_ms},
         {"registered_at_ms", a.registered_at_ms == 0 ? Json(nullptr) : Json(a.registered_at_ms)},
         {"changed_at_ms", a.changed_at_ms},
         {"version", a.version}};
  if (a.kind == kAgentVm && !a.vm_id.empty()) {
    if (const Vm* v = s.hosts.vm(a.vm_id); v && v->managed()) j["pool_id"] = v->pool_id;
  }
  return j;
}

Json enrollment_token_to_json(const EnrollmentToken& t) {
  return Json{{"id", t.id},
              {"kind", t.kind},
              {"server_id", t.server_id.empty() ? Json(nullptr) : Json(t.server_id)},
              {"vm_id", t.vm_id.empty() ? Json(nullptr) : Json(t.vm_id)},
              {"pool_id", t.pool_id.empty() ? Json(nullptr) : Json(t.pool_id)},
              {"uses", t.uses},
              {"used", t.used},
              {"expires_at_ms", t.expires_at_ms},
              {"revoked", t.revoked},
              {"created_at_ms", t.created_at_ms},
              {"version", t.version}};
}

// ---- evolve -----------------------------------------------------------------------------
namespace {

Agent* agent_of(State& s, const Event& e) {
  auto it = s.agents.agents.find(e.stream.substr(6));  // "agent-"
  return it == s.agents.agents.end() ? nullptr : &it->second;
}

void unindex(AgentsState& as, const Agent& a) {
  auto drop = [&](std::unordered_map<std::string, std::string>& m, const std::string& k) {
    if (auto it = m.find(k); it != m.end() && it->second == a.id) m.erase(it);
  };
  drop(as.by_credential, a.credential_hash);
  drop(as.by_machine, machine_key(a.kind, a.machine_id));
  if (!a.server_id.empty()) drop(as.by_server, a.server_id);
  if (!a.vm_id.empty()) drop(as.by_vm, a.vm_id);
}

void index(AgentsState& as, const Agent& a) {
  as.by_credential[a.credential_hash] = a.id;
  if (a.revoked()) return;
  as.by_machine[machine_key(a.kind, a.machine_id)] = a.id;
  if (!a.server_id.empty()) as.by_server[a.server_id] = a.id;
  if (!a.vm_id.empty()) as.by_vm[a.vm_id] = a.id;
}

void touch(Agent& a, const Applied& at) {
  a.version = at.stream_version;
  a.changed_at_ms = at.recorded_at_ms;
}

void on_token_created(State& s, const Event& e, const Applied& at) {
  EnrollmentToken t;
  t.id = e.data.at("id").get<std::string>();
  t.token_hash = e.data.at("token_hash").get<std::string>();
  t.kind = e.data.at("kind").get<std::string>();
  t.server_id = e.data.value("server_id", "");
  t.vm_id = e.data.value("vm_id", "");
  t.pool_id = e.data.value("pool_id", "");
  t.uses = e.data.value("uses", 1u);
  t.expires_at_ms = int_of<int64_t>(e.data.at("expires_at_ms"));
  t.created_at_ms = at.recorded_at_ms;
  t.version = at.stream_version;
  s.agents.token_by_hash[t.token_hash] = t.id;
  s.agents.tokens[t.id] = std::move(t);
}

void on_token_revoked(State& s, const Event& e, const Applied& at) {
  auto it = s.agents.tokens.find(e.data.at("id").get<std::string>());
  if (it == s.agents.tokens.end()) return;
  it->second.revoked = true;
  it->second.version = at.stream_version;
}

void on_enrolled(State& s, const Event& e, const Applied& at) {
  std::string id = e.data.at("id").get<std::string>();
  Agent a;
  if (auto it = s.agents.agents.find(id); it != s.agents.agents.end()) {
    unindex(s.agents, it->second);  // re-enrolled: the old credential stops working
    a = it->second;
  }
  a.id = id;
  a.kind = e.data.at("kind").get<std::string>();
  a.token_id = e.data.value("token_id", "");
  a.hostname = e.data.value("hostname", "");
  a.os = e.data.value("os", "");
  a.agent_version = e.data.value("agent_version", "");
  a.machine_id = e.data.value("machine_id", "");
  a.credential_hash = e.data.at("credential_hash").get<std::string>();
  a.server_id = e.data.value("server_id", "");
  a.vm_id = e.data.value("vm_id", "");
  a.pool_id = e.data.value("pool_id", "");
  a.registration = "enrolled";
  a.reason = e.data.value("re_enrolled", false) ? "re_enrolled" : "";
  a.enrolled_at_ms = at.recorded_at_ms;
  touch(a, at);
  if (auto t = s.agents.tokens.find(a.token_id); t != s.agents.tokens.end()) t->second.used++;
  index(s.agents, a);
  s.agents.agents[id] = std::move(a);
}

void on_registered(State& s, const Event& e, const Applied& at) {
  if (Agent* a = agent_of(s, e)) {
    a->registration = e.data.at("registration").get<std::string>();
    a->reason = e.data.value("cause", "register");
    a->registered_at_ms = at.recorded_at_ms;
    a->last_heartbeat_at_ms = e.data.value("heartbeat_at_ms", at.recorded_at_ms);
    touch(*a, at);
  }
}

void on_registration_changed(State& s, const Event& e, const Applied& at) {
  if (Agent* a = agent_of(s, e)) {
    a->registration = e.data.at("registration").get<std::string>();
    a->reason = e.data.value("cause", "");
    touch(*a, at);
  }
}

void on_unregistered(State& s, const Event& e, const Applied& at) {
  if (Agent* a = agent_of(s, e)) {
    a->registration = "unregistered";
    a->reason = e.data.value("reason", "missed_heartbeats");
    a->last_heartbeat_at_ms = e.data.value("last_heartbeat_at_ms", int64_t{0});
    touch(*a, at);
  }
}

void on_bound(State& s, const Event& e, const Applied& at) {
  if (Agent* a = agent_of(s, e)) {
    unindex(s.agents, *a);
    if (e.data.contains("server_id")) a->server_id = e.data["server_id"].get<std::string>();
    if (e.data.contains("vm_id")) a->vm_id = e.data["vm_id"].get<std::string>();
    index(s.agents, *a);
    touch(*a, at);
  }
}

void on_revoked(State& s, const Event& e, const Applied& at) {
  if (Agent* a = agent_of(s, e)) {
    unindex(s.agents, *a);
    a->registration = "revoked";
    a->reason = e.data.value("reason", "admin");
    index(s.agents, *a);  // the credential only, so that its answer says "revoked"
    touch(*a, at);
  }
}

// A server or VM that goes away leaves its agent unbound (it keeps its registration, which
// becomes soft: effective_registration() follows the catalog).
void on_server_deleted(State& s, const Event& e, const Applied&) {
  std::string sid = e.data.value("id", "");
  auto it = s.agents.by_server.find(sid);
  if (it == s.agents.by_server.end()) return;
  if (auto a = s.agents.agents.find(it->second); a != s.agents.agents.end())
    a->second.server_id.clear();
  s.agents.by_server.erase(it);
}

}  // namespace

void register_agents(EvolveTable& t) {
  t["EnrollmentTokenCreated"] = on_token_created;
  t["EnrollmentTokenRevoked"] = on_token_revoked;
  t["AgentEnrolled"] = on_enrolled;
  t["AgentRegistered"] = on_registered;
  t["AgentRegistrationChanged"] = on_registration_changed;
  t["AgentUnregistered"] = on_unregistered;
  t["AgentBound"] = on_bound;
  t["AgentRevoked"] = on_revoked;
}

void agents_after_evolve(State& s, const Event& e) {
  if (e.type == "ServerDeleted") on_server_deleted(s, e, Applied{});
}

Json agents_to_json(const AgentsState& s) {
  Json agents = Json::object(), tokens = Json::object();
  for (const auto& [id, a] : s.agents) {
    agents[id] = Json{{"id", a.id},
                      {"kind", a.kind},
                      {"hostname", a.hostname},
                      {"os", a.os},
                      {"agent_version", a.agent_version},
                      {"machine_id", a.machine_id},
                      {"credential_hash", a.credential_hash},
                      {"token_id", a.token_id},
                      {"server_id", a.server_id},
                      {"vm_id", a.vm_id},
                      {"pool_id", a.pool_id},
                      {"registration", a.registration},
                      {"reason", a.reason},
                      {"enrolled_at_ms", a.enrolled_at_ms},
                      {"registered_at_ms", a.registered_at_ms},
                      {"changed_at_ms", a.changed_at_ms},
                      {"last_heartbeat_at_ms", a.last_heartbeat_at_ms},
                      {"version", a.version}};
  }
  for (const auto& [id, t] : s.tokens) {
    Json j = enrollment_token_to_json(t);
    j["token_hash"] = t.token_hash;
    tokens[id] = j;
  }
  return Json{{"agents", agents}, {"tokens", tokens}};
}

Status agents_from_json(AgentsState& out, const Json& j) {
  AgentsState s;
  try {
    for (const auto& [id, aj] : j.at("agents").items()) {
      Agent a;
      a.id = aj.at("id").get<std::string>();
      a.kind = aj.at("kind").get<std::string>();
      a.hostname = aj.at("hostname").get<std::string>();
      a.os = aj.at("os").get<std::string>();
      a.agent_version = aj.at("agent_version").get<std::string>();
      a.machine_id = aj.at("machine_id").get<std::string>();
      a.credential_hash = aj.at("credential_hash").get<std::string>();
      a.token_id = aj.at("token_id").get<std::string>();
      a.server_id = aj.at("server_id").get<std::string>();
      a.vm_id = aj.at("vm_id").get<std::string>();
      a.pool_id = aj.at("pool_id").get<std::string>();
      a.registration = aj.at("registration").get<std::string>();
      a.reason = aj.at("reason").get<std::string>();
      a.enrolled_at_ms = int_of<int64_t>(aj.at("enrolled_at_ms"));
      a.registered_at_ms = int_of<int64_t>(aj.at("registered_at_ms"));
      a.changed_at_ms = int_of<int64_t>(aj.at("changed_at_ms"));
      a.last_heartbeat_at_ms = int_of<int64_t>(aj.at("last_heartbeat_at_ms"));
      a.version = int_of<uint64_t>(aj.at("version"));
      s.agents[id] = std::move(a);
    }
    for (const auto& [id, tj] : j.at("tokens").items()) {
      EnrollmentToken t;
      t.id = tj.at("id").get<std::string>();
      t.token_hash = tj.at("token_hash").get<std::string>();
      t.kind = tj.at("kind").get<std::string>();
      if (!tj.at("server_id").is_null()) t.server_id = tj["server_id"].get<std::string>();
      if (!tj.at("vm_id").is_null()) t.vm_id = tj["vm_id"].get<std::string>();
      if (!tj.at("pool_id").is_null()) t.pool_id = tj["pool_id"].get<std::string>();
      t.uses = int_of<uint32_t>(tj.at("uses"));
      t.used = int_of<uint32_t>(tj.at("used"));
      t.expires_at_ms = int_of<int64_t>(tj.at("expires_at_ms"));
      t.revoked = tj.at("revoked").get<bool>();
      t.created_at_ms = int_of<int64_t>(tj.at("created_at_ms"));
      t.version = int_of<uint64_t>(tj.at("version"));
      s.tokens[id] = std::move(t);
    }
  } catch (const std::exception& ex) {
    return Error::make(Code::invalid_argument, std::string("not an agents snapshot: ") + ex.what(),
                       "invalid_snapshot");
  }
  s.reindex();
  out = std::move(s);
  return Status::Ok();
}

}  // namespace atrium::domain

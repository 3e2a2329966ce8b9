#include "domain/pools.h"

#include <algorithm>
#include <cctype>

#include "domain/evolve_table.h"
#include "domain/hosts.h"
#include "domain/pools_internal.h"
#include "domain/state.h"
#include "domain/users.h"

namespace atrium::domain {

std::string pool_stream(const std::string& id) { return "pool-" + id; }
std::string desktop_session_stream(const std::string& id) { return "desktop-session-" + id; }


// ---- queries ----------------------------------------------------------------------------
const Pool* PoolsState::pool(const std::string& id) const {
  auto it = pools.find(id);
  return it == pools.end() ? nullptr : &it->second;
}
const PoolMember* PoolsState::member(const std::string& vm_id) const {
  auto it = members.find(vm_id);
  return it == members.end() ? nullptr : &it->second;
}
const DesktopSession* PoolsState::session(const std::string& id) const {
  auto it = sessions.find(id);
  return it == sessions.end() ? nullptr : &it->second;
}
std::vector<const PoolMember*> PoolsState::members_of(const std::string& pool_id) const {
  std::vector<const PoolMember*> out;
  for (const auto& [id, m] : members) {
    if (m.pool_id == pool_id) out.push_back(&m);
  }
  std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->vm_id < b->vm_id; });
  return out;
}
const DesktopSession* PoolsState::live_session(const std::string& pool_id,
                                               const std::string& user_id) const {
  auto it = live_by_user.find(user_id);
  if (it == live_by_user.end()) return nullptr;
  for (const auto& sid : it->second) {
    const DesktopSession* d = session(sid);
    if (d != nullptr && d->live() && d->pool_id == pool_id) return d;
  }
  return nullptr;
}
const PoolMember* PoolsState::assigned(const std::string& pool_id,
                                       const std::string& user_id) const {
  for (const auto& [id, m] : members) {
    if (m.pool_id == pool_id && m.assigned_user == user_id) return &m;
  }
  return nullptr;
}

// ---- shared rules (pools_internal.h) --------------------------------------------------
namespace pools_detail {

std::string messages_stream(const std::string& user) { return "user-messages-" + user; }

bool running_like(const std::string& o) { return o == "running" || o == "blocked"; }

bool host_up(const State& s, const std::string& host_id) {
  const Host* h = s.hosts.host(host_id);
  return h != nullptr && h->state == "up" && h->connected;
}

// Is the member's VM running, or on its way to running?
bool powered_on(const State& s, const PoolMember& m) {
  const Vm* v = s.hosts.vm(m.vm_id);
  if (v == nullptr) return false;
  if (v->desired == "running") return true;
  return v->desired == "none" && running_like(v->observed);
}

bool shutdown_pending(const State& s, const PoolMember& m) {
  const Vm* v = s.hosts.vm(m.vm_id);
  if (v == nullptr) return false;
  if (v->desired == "shut_off" && (running_like(v->observed) || v->observed == "paused" ||
                                   v->observed == "shutting_down")) {
    return true;
  }
  const Operation* op = s.hosts.operation(v->operation);
  return op != nullptr && op->active() &&
         (op->action == "shutdown" || op->action == "destroy" || op->action == "reboot");
}

bool needs_port(const State& s, const PoolMember& m) {
  const Vm* v = s.hosts.vm(m.vm_id);
  if (v == nullptr) return true;
  if (v->allocated_port >= 0) return false;
  return !(running_like(v->observed) && v->display_port >= 0);
}

uint64_t host_memory_kib(const Host& h) {
  auto it = h.capabilities.find("memory_kib");
  if (it == h.capabilities.end() || !it->is_number_unsigned()) return 0;
  return it->get<uint64_t>();
}


Event pool_event(const std::string& id, const char* type, Json data) {
  return {pool_stream(id), type, 1, std::move(data)};
}
Event session_event(const std::string& id, const char* type, Json data) {
  return {desktop_session_stream(id), type, 1, std::move(data)};
}
Error pool_not_found(const std::string& id) { return not_found("pool " + id + " not found"); }

Error field_error(const std::string& field, const std::string& msg,
                  const std::string& reason) {
  return Error{Code::invalid_argument, field + " " + msg, reason, {{field, msg}}};
}

bool one_of(const std::string& v, std::initializer_list<const char*> options) {
  for (const char* o : options) {
    if (v == o) return true;
  }
  return false;
}



void append(Events& out, Result<Events> r) {
  if (!r.ok()) return;
  for (auto& e : *r) out.push_back(std::move(e));
}

// Starts refreshing a member: back to the pool's current template and a fresh overlay, powered
// off first (the worker redefines it once it is off).
void refresh_events(const State& s, const Pool& p, const PoolMember& m, const std::string& reason,
                    const std::string& op_id, const Context& ctx, Events& out) {
  out.push_back(pool_event(p.id, "PoolVmRefreshStarted", Json{{"vm_id", m.vm_id}, {"reason", reason}}));
  const Vm* v = s.hosts.vm(m.vm_id);
  if (v != nullptr && v->desired != "shut_off" && !op_id.empty()) {
    append(out, decide(s, RequestVmPower{m.vm_id, op_id, "destroy", std::nullopt}, ctx));
  }
}

// Ends a live session: the session event, the floating assignment, the power policy.
void end_session_events(const State& s, const DesktopSession& d, const std::string& reason,
                        const std::string& op_id, const Context& ctx, Events& out) {
  out.push_back(session_event(d.id, "DesktopSessionEnded",
                              Json{{"reason", reason}, {"vm_id", d.vm_id},
                                   {"pool_id", d.pool_id}, {"user_id", d.user_id}}));
  const Pool* p = s.pools.pool(d.pool_id);
  const PoolMember* m = s.pools.member(d.vm_id);
  if (p == nullptr || m == nullptr) return;
  if (p->kind == "floating" && m->assigned_user == d.user_id) {
    out.push_back(pool_event(p->id, "DesktopUnassigned",
                             Json{{"vm_id", m->vm_id}, {"user_id", d.user_id},
                                  {"reason", "session ended: " + reason}}));
  }
  if (op_id.empty()) return;
  const Vm* v = s.hosts.vm(m->vm_id);
  if (v == nullptr) return;
  if (p->power_policy == "shutdown_on_logoff" && v->desired != "shut_off") {
    append(out, decide(s, RequestVmPower{m->vm_id, op_id, "shutdown", std::nullopt}, ctx));
  } else if (p->power_policy == "refresh_on_logoff" && m->state == "ready") {
    refresh_events(s, *p, *m, "logoff", op_id, ctx, out);
  }
}

}  // namespace pools_detail

using namespace pools_detail;

// ---- pure rules -------------------------------------------------------------------------

bool member_free(const State& s, const PoolMember& m) {
  return m.state == "ready" && m.assigned_user.empty() && m.session_id.empty() &&
         s.hosts.vm(m.vm_id) != nullptr && host_up(s, m.host_id) && m.display_reset.empty() &&
         !shutdown_pending(s, m);
}

bool member_releasing(const State& s, const PoolMember& m) {
  return m.state == "ready" && m.assigned_user.empty() && m.session_id.empty() &&
         s.hosts.vm(m.vm_id) != nullptr && host_up(s, m.host_id) &&
         (!m.display_reset.empty() || shutdown_pending(s, m));
}

bool display_wave_complete(const DisplayWave& w, int64_t now_ms) {
  if (w.initialized < 1 || w.connecting > 0) return false;
  if (now_ms - w.last_event_ms < kDisplaySettleMs) return false;
  return w.initialized >= 2 || now_ms - w.wave_started_ms >= kDisplaySingleChannelMs;
}

Result<std::string> choose_host(const State& s, const Pool& pool) {
  struct Cand {
    std::string id;
    int64_t free_mem;
    int free_ports;
    int members;
  };
  std::vector<Cand> cands;
  bool any_up = false;
  for (const auto& hid : pool.host_ids) {
    const Host* h = s.hosts.host(hid);
    if (h == nullptr || h->state != "up" || !h->connected) continue;
    any_up = true;
    int ports = s.hosts.ports_free(hid);
    if (ports <= 0) continue;
    int64_t used = 0;
    int n = 0;
    for (const auto& [id, m] : s.pools.members) {
      if (m.host_id != hid) continue;
      used += static_cast<int64_t>(m.memory_kib);
      ++n;
    }
    cands.push_back({hid, static_cast<int64_t>(host_memory_kib(*h)) - used, ports, n});
  }
  if (!any_up) {
    return refused("no_host_up", "no host of pool " + pool.name +
                                     " is up (hosts in maintenance, down or removed are skipped)");
  }
  if (cands.empty()) {
    return refused("display_ports_exhausted",
                   "every up host of pool " + pool.name + " has used all its display ports");
  }
  std::sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) {
    if (a.free_mem != b.free_mem) return a.free_mem > b.free_mem;
    if (a.free_ports != b.free_ports) return a.free_ports > b.free_ports;
    if (a.members != b.members) return a.members < b.members;
    return a.id < b.id;
  });
  return cands.front().id;
}

SparePlan plan_spares(const State& s, const Pool& pool) {
  SparePlan plan;
  auto members = s.pools.members_of(pool.id);
  if (pool.deleting) {
    for (const PoolMember* m : members) {
      if (m->session_id.empty() && m->state != "removing" && m->state != "provisioning") {
        plan.remove.push_back(m->vm_id);
      }
    }
    plan.finish_deletion = members.empty();
    return plan;
  }
  std::vector<const PoolMember*> running, standby;
  int provisioning = 0, active = 0, refreshing = 0, releasing = 0;
  for (const PoolMember* m : members) {
    if (m->state == "failed") {
      plan.remove.push_back(m->vm_id);
      continue;
    }
    if (m->state == "removing") continue;
    ++active;
    if (m->state == "provisioning") ++provisioning;
    if (m->state == "refreshing") ++refreshing;  // comes back as a free member
    if (member_releasing(s, *m)) ++releasing;  // so does one whose last session is cleaned up
    if (!member_free(s, *m)) continue;
    (powered_on(s, *m) ? running : standby).push_back(m);
  }
  // Members on the current template first: started first, removed last.
  auto outdated = [&](const PoolMember* m) { return m->template_version < pool.template_version; };
  for (auto* list : {&standby, &running}) {
    std::stable_partition(list->begin(), list->end(), [&](const PoolMember* m) { return !outdated(m); });
  }
  // Shrink first: never a member in use, standby spares before running ones.
  int excess = active - pool.max_size;
  for (auto* list : {&standby, &running}) {
    while (excess > 0 && !list->empty()) {
      plan.remove.push_back(list->back()->vm_id);
      list->pop_back();
      --excess;
      --active;
    }
  }
  // Standby members on an older template are refreshed rather than started: they run (or wait
  // as standby) once refreshed, and count as spares meanwhile, so the pool does not grow.
  std::vector<const PoolMember*> standby_old;
  while (!standby.empty() && outdated(standby.back())) {
    standby_old.insert(standby_old.begin(), standby.back());
    standby.pop_back();
  }
  int need_run = std::max(0, pool.min_ready - static_cast<int>(running.size()));
  int i = 0;
  for (; i < static_cast<int>(standby.size()) && i < need_run; ++i) plan.start.push_back(standby[i]->vm_id);
  int old_for_run = std::min(need_run - i, static_cast<int>(standby_old.size()));
  int short_run = need_run - i - old_for_run;
  int standby_left = static_cast<int>(standby.size()) - i + static_cast<int>(standby_old.size()) - old_for_run;
  int need_standby = std::max(0, pool.min_standby - standby_left);
  int want = short_run + need_standby - provisioning - refreshing - releasing;
  int capacity = pool.max_size - active;
  plan.provision = std::max(0, std::min(want, capacity));
  // Rolling template update: a few free members at a time, powered-off ones first.
  int rolling = std::max(1, pool.max_size / 5) - refreshing;
  for (const auto* list : {&standby_old, &running}) {
    for (const PoolMember* m : *list) {
      if (rolling > 0 && outdated(m)) {
        plan.refresh.push_back(m->vm_id);
        --rolling;
      }
    }
  }
  return plan;
}

// ---- views ------------------------------------------------------------------------------
Json pool_to_json(const State& s, const Pool& p) {
  int ready = 0, standby = 0, in_use = 0, provisioning = 0, total = 0, outdated = 0;
  for (const PoolMember* m : s.pools.members_of(p.id)) {
    ++total;
    if (m->template_version < p.template_version) ++outdated;
    if (m->state == "provisioning") ++provisioning;
    if (!m->session_id.empty()) ++in_use;
    if (member_free(s, *m)) (powered_on(s, *m) ? ready : standby)++;
  }
  Json t = template_to_json(p.tmpl);
  return Json{{"id", p.id},
              {"name", p.name},
              {"kind", p.kind},
              {"template", t},
              {"host_ids", p.host_ids},
              {"min_ready", p.min_ready},
              {"min_standby", p.min_standby},
              {"max_size", p.max_size},
              {"power_policy", p.power_policy},
              {"idle_timeout_s", p.idle_timeout_s},
              {"reconnect", p.reconnect},
              {"grace_s", p.grace_s},
              {"policy", pool_policy_to_json(p.policy)},
              {"state", p.deleting ? "deleting" : "active"},
              {"entitled_users", p.entitled},
              {"entitled_groups", p.entitled_groups},
              {"size", Json{{"total", total}, {"ready", ready}, {"standby", standby},
                            {"in_use", in_use}, {"provisioning", provisioning},
                            {"outdated", outdated}}},
              {"template_version", p.template_version},
              {"created_at_ms", p.created_at_ms},
              {"updated_at_ms", p.updated_at_ms},
              {"version", p.version}};
}

Json member_to_json(const State& s, const PoolMember& m) {
  Json j{{"vm_id", m.vm_id},     {"pool_id", m.pool_id}, {"host_id", m.host_id},
         {"name", m.name},       {"uuid", m.uuid},       {"mac", m.mac},
         {"overlay", m.overlay}, {"state", m.state},     {"memory_kib", m.memory_kib},
         {"free", member_free(s, m)}, {"template_version", m.template_version}};
  j["assigned_user_id"] = m.assigned_user.empty() ? Json(nullptr) : Json(m.assigned_user);
  j["session_id"] = m.session_id.empty() ? Json(nullptr) : Json(m.session_id);
  j["error"] = m.error.empty() ? Json(nullptr) : Json(m.error);
  j["releasing"] = member_releasing(s, m);
  j["display_reset_pending"] = m.display_reset.empty() ? Json(nullptr) : Json(m.display_reset);
  if (const Vm* v = s.hosts.vm(m.vm_id)) {
    j["desired_state"] = v->desired;
    j["observed_state"] = shown_observed(s.hosts, *v);
  }
  return j;
}

Json pool_policy_to_json(const PoolPolicy& p) {
  return Json{{"clipboard", p.clipboard},
              {"usb_redirection", p.usb_redirection},
              {"folder_redirection", p.folder_redirection},
              {"idle_timeout_s", p.idle_timeout_s}};
}

Result<PoolPolicy> pool_policy_from_json(const Json& j) {
  PoolPolicy p;
  if (!j.is_object()) return field_error("policy", "must be an object");
  for (auto [key, dst] : {std::pair{"clipboard", &p.clipboard},
                          std::pair{"usb_redirection", &p.usb_redirection},
                          std::pair{"folder_redirection", &p.folder_redirection}}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_boolean()) return field_error(std::string("policy.") + key, "must be a boolean");
    *dst = j[key].get<bool>();
  }
  if (j.contains("idle_timeout_s")) {
    const Json& v = j["idle_timeout_s"];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 30LL * 24 * 3600) {
      return field_error("policy.idle_timeout_s", "must be an integer from 0 to 2592000");
    }
    p.idle_timeout_s = v.get<int64_t>();
  }
  for (const auto& [k, v] : j.items()) {
    if (k != "clipboard" && k != "usb_redirection" && k != "folder_redirection" &&
        k != "idle_timeout_s") {
      return field_error("policy." + k, "is not a policy field");
    }
  }
  return p;
}

Json desktop_session_to_json(const DesktopSession& d) {
  Json j{{"id", d.id},
         {"kind", "desktop"},
         {"pool_id", d.pool_id},
         {"user_id", d.user_id},
         {"vm_id", d.vm_id},
         {"host_id", d.host_id},
         {"state", d.state},
         {"ticket_expires_at_ms", d.ticket_expires_at_ms},
         {"ticket_applied", d.ticket_applied},
         {"ticket_retired", d.ticket_retired},
         {"display_signal", d.display_signal},
         {"agent_signal", d.agent_signal},
         {"agent_present", d.agent_present},
         {"last_seen_ms", d.last_seen_ms},
         {"created_at_ms", d.created_at_ms},
         {"updated_at_ms", d.updated_at_ms},
         {"version", d.version}};
  j["end_reason"] = d.end_reason.empty() ? Json(nullptr) : Json(d.end_reason);
  j["ticket_note"] = d.ticket_note.empty() ? Json(nullptr) : Json(d.ticket_note);
  j["client_address"] = d.client_address.empty() ? Json(nullptr) : Json(d.client_address);
  return j;
}

// ---- decide -----------------------------------------------------------------------------
namespace {

// Validates the settings a pool would have after a create or update.
Status validate_pool(const State& s, const Pool& p, const std::string& self_id) {
  if (auto st = validate_name("name", p.name); !st) return st;
  for (const auto& [id, other] : s.pools.pools) {
    if (id != self_id && other.name == p.name) {
      return Error::make(Code::already_exists, "a pool named '" + p.name + "' already exists",
                         "pool_name_taken");
    }
  }
  if (!one_of(p.kind, {"dedicated", "floating"})) {
    return field_error("kind", "must be dedicated or floating");
  }
  if (p.host_ids.empty()) return field_error("host_ids", "must name at least one host");
  std::set<std::string> seen;
  for (const auto& h : p.host_ids) {
    const Host* host = s.hosts.host(h);
    if (host == nullptr || host->state == "removed") {
      return Error{Code::invalid_argument, "host " + h + " does not exist", "unknown_host",
                   {{"host_ids", "host " + h + " does not exist"}}};
    }
    if (!seen.insert(h).second) return field_error("host_ids", "must not repeat a host");
  }
  if (p.min_ready < 0) return field_error("min_ready", "must be >= 0");
  if (p.min_standby < 0) return field_error("min_standby", "must be >= 0");
  if (p.max_size < 1 || p.max_size > 10000) return field_error("max_size", "must be 1 to 10000");
  if (p.min_ready + p.min_standby > p.max_size) {
    return Error{Code::invalid_argument, "min_ready + min_standby must not exceed max_size",
                 "invalid_capacity", {{"max_size", "must be >= min_ready + min_standby"}}};
  }
  if (!one_of(p.power_policy,
              {"keep_on", "shutdown_on_logoff", "shutdown_when_idle", "refresh_on_logoff"})) {
    return field_error("power_policy",
                       "must be keep_on, shutdown_on_logoff, shutdown_when_idle or refresh_on_logoff");
  }
  if (p.power_policy == "refresh_on_logoff" && p.kind != "floating") {
    return field_error("power_policy", "refresh_on_logoff is for floating pools only");
  }
  if (p.idle_timeout_s < 1) return field_error("idle_timeout_s", "must be >= 1");
  if (!one_of(p.reconnect, {"always", "disconnected_only"})) {
    return field_error("reconnect", "must be always or disconnected_only");
  }
  if (p.grace_s < 0) return field_error("grace_s", "must be >= 0");
  if (p.policy.idle_timeout_s < 0) return field_error("policy.idle_timeout_s", "must be >= 0");
  return Status::Ok();
}

Json pool_settings(const Pool& p) {
  return Json{{"name", p.name},
              {"host_ids", p.host_ids},
              {"min_ready", p.min_ready},
              {"min_standby", p.min_standby},
              {"max_size", p.max_size},
              {"power_policy", p.power_policy},
              {"idle_timeout_s", p.idle_timeout_s},
              {"reconnect", p.reconnect},
              {"grace_s", p.grace_s},
              {"policy", pool_policy_to_json(p.policy)}};
}

}  // namespace


// Checks a template (CreatePool, UpdatePool) and completes it: memory, storage pool, and the
// base volume from the template's own disk when none is given.
Result<PoolTemplate> resolve_template(const State& s, const PoolTemplate& in) {
  PoolTemplate t = in;
  if (in.domain_xml.empty()) {
    if (!in.domain_name.empty()) {
      // The API exports the named domain's definition before it submits the command.
      return Error::make(Code::failed_precondition,
                         "the definition of template domain " + in.domain_name + " was not exported",
                         "template_not_exported");
    }
    return field_error("template", "must carry domain_xml or domain_name", "invalid_template");
  }
  if (in.domain_xml.size() > 65536) return field_error("template.domain_xml", "must be at most 64 KiB");
  if (!in.domain_name.empty() && s.hosts.host(in.host_id) == nullptr) {
    return field_error("template.host_id", "no host " + in.host_id, "host_not_found");
  }
  t.memory_kib = domain_memory_kib(in.domain_xml);
  t.storage_pool = in.storage_pool.empty() ? "default" : in.storage_pool;
  TemplateDisks disks = template_disks(in.domain_xml);
  if (disks.writable > 1) {
    return field_error("template",
                       "has " + std::to_string(disks.writable) +
                           " writable disks: a member gets a copy-on-write overlay of the first only, and "
                           "every member would share the others (mark them <readonly/> or <shareable/>, or "
                           "remove them)",
                       "invalid_template");
  }
  bool base_is_template_disk = false;
  if (disks.writable == 1 && t.base_volume.empty()) {
    if (disks.first_file.empty()) {
      return field_error("template.base_volume",
                         "is required: the template's disk has no file source to use as the base of the "
                         "members' overlays",
                         "invalid_template");
    }
    t.base_volume = disks.first_file;  // members never write to the template's disk
    base_is_template_disk = true;
  } else if (disks.writable == 1 && t.base_volume == disks.first_file) {
    base_is_template_disk = true;
  }
  if (base_is_template_disk && !in.domain_name.empty()) {
    for (const Vm* v : s.hosts.vms_of(in.host_id)) {
      if (v->name == in.domain_name && v->observed != "shut_off" && v->observed != "missing" &&
          v->observed != "unknown") {
        return refused("template_running",
                       "template domain " + in.domain_name + " is " + v->observed +
                           ": shut it down first, overlays over a disk that is still being written would "
                           "be corrupt");
      }
    }
  }
  MemberXmlParams probe;
  probe.name = "probe";
  probe.uuid = "00000000-0000-4000-8000-000000000000";
  probe.mac = "52:54:00:00:00:00";
  if (!t.base_volume.empty()) probe.overlay_path = "/probe.qcow2";
  if (auto x = member_domain_xml(in.domain_xml, probe); !x.ok()) return x.error();
  return t;
}

Result<Events> decide(const State& s, const CreatePool& c, const Context&) {
  if (c.id.empty()) return invalid("pool id is required");
  if (s.pools.pool(c.id) != nullptr) {
    return Error::make(Code::already_exists, "pool " + c.id + " exists", "pool_exists");
  }
  Pool p;
  p.name = c.name;
  p.kind = c.kind;
  p.tmpl = c.tmpl;
  p.host_ids = c.host_ids;
  p.min_ready = c.min_ready;
  p.min_standby = c.min_standby;
  p.max_size = c.max_size;
  p.power_policy = c.power_policy;
  p.idle_timeout_s = c.idle_timeout_s;
  p.reconnect = c.reconnect;
  p.grace_s = c.grace_s;
  p.policy = c.policy;
  if (auto st = validate_pool(s, p, c.id); !st) return st.error();
  auto tmpl = resolve_template(s, c.tmpl);
  if (!tmpl.ok()) return tmpl.error();
  p.tmpl = std::move(*tmpl);
  Json data = pool_settings(p);
  data["id"] = c.id;
  data["kind"] = c.kind;
  data["template"] = template_to_json(p.tmpl);
  return Events{pool_event(c.id, "PoolCreated", data)};
}

Result<Events> decide(const State& s, const UpdatePool& c, const Context&) {
  const Pool* cur = s.pools.pool(c.id);
  if (cur == nullptr) return pool_not_found(c.id);
  if (auto st = check_expected(s, pool_stream(c.id), c.expected_version); !st) return st.error();
  if (cur->deleting) return refused("pool_deleting", "pool " + cur->name + " is being deleted");
  Pool p = *cur;
  if (c.name) p.name = *c.name;
  if (c.host_ids) p.host_ids = *c.host_ids;
  if (c.min_ready) p.min_ready = *c.min_ready;
  if (c.min_standby) p.min_standby = *c.min_standby;
  if (c.max_size) p.max_size = *c.max_size;
  if (c.power_policy) p.power_policy = *c.power_policy;
  if (c.idle_timeout_s) p.idle_timeout_s = *c.idle_timeout_s;
  if (c.reconnect) p.reconnect = *c.reconnect;
  if (c.grace_s) p.grace_s = *c.grace_s;
  if (c.policy) p.policy = *c.policy;
  if (auto st = validate_pool(s, p, c.id); !st) return st.error();
  Json before = pool_settings(*cur), after = pool_settings(p), changes = Json::object();
  for (auto& [k, v] : after.items()) {
    if (before[k] != v) changes[k] = v;
  }
  if (c.tmpl) {
    auto t = resolve_template(s, *c.tmpl);
    if (!t.ok()) return t.error();
    if (t->base_volume.empty() != cur->tmpl.base_volume.empty() || t->storage_pool != cur->tmpl.storage_pool) {
      return refused("template_layout_changed",
                     "a template update keeps the pool's disk layout (" +
                         (cur->tmpl.base_volume.empty() ? std::string("diskless")
                                                        : "overlays in storage pool " + cur->tmpl.storage_pool) +
                         "): create a new pool for another layout");
    }
    Json tj = template_to_json(*t);
    if (tj != template_to_json(cur->tmpl)) {
      changes["template"] = tj;
      changes["template_version"] = cur->template_version + 1;
    }
  }
  if (changes.empty()) return Events{};
  return Events{pool_event(c.id, "PoolUpdated", changes)};
}

Result<Events> decide(const State& s, const DeletePool& c, const Context&) {
  const Pool* p = s.pools.pool(c.id);
  if (p == nullptr) return pool_not_found(c.id);
  if (auto st = check_expected(s, pool_stream(c.id), c.expected_version); !st) return st.error();
  if (p->deleting) return Events{};
  Events out{pool_event(c.id, "PoolDeletionRequested", Json::object())};
  if (s.pools.members_of(c.id).empty()) out.push_back(pool_event(c.id, "PoolDeleted", Json::object()));
  return out;
}

Result<Events> decide(const State& s, const FinishPoolDeletion& c, const Context&) {
  const Pool* p = s.pools.pool(c.id);
  if (p == nullptr || !p->deleting) return Events{};
  if (!s.pools.members_of(c.id).empty()) {
    return refused("pool_has_members", "pool " + p->name + " still has VMs");
  }
  return Events{pool_event(c.id, "PoolDeleted", Json::object())};
}

bool entitled(const State& s, const Pool& p, const std::string& user_id) {
  if (p.entitled.count(user_id) != 0) return true;
  if (p.entitled_groups.empty()) return false;
  const User* u = s.users.find(user_id);
  if (u == nullptr) return false;
  for (const auto& g : u->groups) {
    if (p.entitled_groups.count(g) != 0) return true;
  }
  return false;
}

namespace {
// Ends the user's session and dedicated assignment in the pool (the entitlement is gone).
void end_entitlement_events(const State& s, const Pool& p, const std::string& user_id,
                            const std::string& why, const Context& ctx, Events& out) {
  if (const DesktopSession* d = s.pools.live_session(p.id, user_id)) {
    end_session_events(s, *d, "entitlement_removed", "", ctx, out);
  }
  if (const PoolMember* m = s.pools.assigned(p.id, user_id); m && p.kind == "dedicated") {
    out.push_back(pool_event(p.id, "DesktopUnassigned",
                             Json{{"vm_id", m->vm_id}, {"user_id", user_id}, {"reason", why}}));
  }
}
}  // namespace

void pool_entitlement_loss_events(const State& s, const std::string& user_id,
                                  const std::set<std::string>& groups, const Context& ctx,
                                  Events& out) {
  for (const auto& [id, p] : s.pools.pools) {
    if (!entitled(s, p, user_id) || p.entitled.count(user_id) != 0) continue;
    bool still = false;
    for (const auto& g : groups) still = still || p.entitled_groups.count(g) != 0;
    if (!still) end_entitlement_events(s, p, user_id, "left group", ctx, out);
  }
}

Result<Events> decide(const State& s, const AddEntitlement& c, const Context&) {
  const Pool* p = s.pools.pool(c.pool_id);
  if (p == nullptr) return pool_not_found(c.pool_id);
  if (p->deleting) return refused("pool_deleting", "pool " + p->name + " is being deleted");
  if (!c.group.empty()) {
    if (auto st = validate_group(s, c.group); !st) return st.error();
    if (p->entitled_groups.count(c.group) != 0) return Events{};
    return Events{pool_event(c.pool_id, "PoolEntitlementAdded", Json{{"group", c.group}})};
  }
  if (s.users.find(c.user_id) == nullptr) {
    return Error{Code::invalid_argument, "user " + c.user_id + " does not exist", "unknown_user",
                 {{"user_id", "no such user"}}};
  }
  if (p->entitled.count(c.user_id) != 0) return Events{};
  return Events{pool_event(c.pool_id, "PoolEntitlementAdded", Json{{"user_id", c.user_id}})};
}

Result<Events> decide(const State& s, const RemoveEntitlement& c, const Context& ctx) {
  const Pool* p = s.pools.pool(c.pool_id);
  if (p == nullptr) return pool_not_found(c.pool_id);
  Events out;
  if (!c.group.empty()) {
    if (p->entitled_groups.count(c.group) == 0) {
      return not_found("group " + c.group + " is not entitled to pool " + p->name);
    }
    Pool without = *p;
    without.entitled_groups.erase(c.group);
    for (const auto& [uid, u] : s.users.by_id) {
      if (u.groups.count(c.group) != 0 && !entitled(s, without, uid)) {
        end_entitlement_events(s, *p, uid, "entitlement removed", ctx, out);
      }
    }
    out.push_back(pool_event(c.pool_id, "PoolEntitlementRemoved", Json{{"group", c.group}}));
    return out;
  }
  if (p->entitled.count(c.user_id) == 0) {
    return not_found("user " + c.user_id + " is not entitled to pool " + p->name);
  }
  Pool without = *p;
  without.entitled.erase(c.user_id);
  if (!entitled(s, without, c.user_id)) {
    end_entitlement_events(s, *p, c.user_id, "entitlement removed", ctx, out);
  }
  out.push_back(pool_event(c.pool_id, "PoolEntitlementRemoved", Json{{"user_id", c.user_id}}));
  return out;
}

Result<Events> decide(const State& s, const ProvisionPoolVm& c, const Context&) {
  const Pool* p = s.pools.pool(c.pool_id);
  if (p == nullptr) return pool_not_found(c.pool_id);
  if (p->deleting) return refused("pool_deleting", "pool " + p->name + " is being deleted");
  int active = 0;
  for (const PoolMember* m : s.pools.members_of(p->id)) active += m->state != "removing";
  if (active >= p->max_size) {
    return refused("pool_full", "pool " + p->name + " has reached max_size " + std::to_string(p->max_size));
  }
  if (c.name.empty() || c.uuid.empty() || c.mac.empty()) return invalid("name, uuid and mac are required");
  auto host = choose_host(s, *p);
  if (!host.ok()) return host.error();
  std::string vm_id = vm_id_for(*host, c.uuid);
  if (s.pools.member(vm_id) != nullptr || s.hosts.vm(vm_id) != nullptr) {
    return Error::make(Code::already_exists, "vm " + vm_id + " exists", "vm_exists");
  }
  std::string overlay = c.with_overlay && !p->tmpl.base_volume.empty() ? c.name + ".qcow2" : "";
  return Events{pool_event(p->id, "PoolVmProvisionStarted",
                           Json{{"vm_id", vm_id}, {"host_id", *host}, {"name", c.name},
                                {"uuid", c.uuid}, {"mac", c.mac}, {"overlay", overlay},
                                {"memory_kib", p->tmpl.memory_kib},
                                {"template_version", p->template_version}})};
}

Result<Events> decide(const State& s, const RecordPoolVmProvisioned& c, const Context& ctx) {
  const PoolMember* m = s.pools.member(c.vm_id);
  if (m == nullptr || m->state != "provisioning") return Events{};
  if (!c.ok) {
    return Events{pool_event(m->pool_id, "PoolVmProvisionFailed",
                             Json{{"vm_id", m->vm_id}, {"error", c.error}})};
  }
  if (s.hosts.vm(c.vm_id) == nullptr) {
    return refused("vm_not_observed", "vm " + m->name + " is defined but not yet observed on its host");
  }
  Events out{pool_event(m->pool_id, "PoolVmProvisioned", Json{{"vm_id", m->vm_id}})};
  auto adopt = decide(s, AdoptVm{m->vm_id, m->pool_id}, ctx);
  if (!adopt.ok()) return adopt.error();
  for (auto& e : *adopt) out.push_back(std::move(e));
  return out;
}

Result<Events> decide(const State& s, const RemovePoolVm& c, const Context& ctx) {
  const PoolMember* m = s.pools.member(c.vm_id);
  if (m == nullptr) return not_found("pool vm " + c.vm_id + " not found");
  if (m->state == "removing") return Events{};
  if (!m->session_id.empty()) {
    return refused("vm_in_use", "vm " + m->name + " has a live session: it is never removed");
  }
  const Pool* p = s.pools.pool(m->pool_id);
  bool deleting = p != nullptr && p->deleting;
  if (!m->assigned_user.empty() && !deleting) {
    return refused("vm_assigned", "vm " + m->name + " is assigned to user " + m->assigned_user);
  }
  Events out;
  if (!m->assigned_user.empty()) {
    out.push_back(pool_event(m->pool_id, "DesktopUnassigned",
                             Json{{"vm_id", m->vm_id}, {"user_id", m->assigned_user},
                                  {"reason", "vm removed: " + c.reason}}));
  }
  out.push_back(pool_event(m->pool_id, "PoolVmRemovalStarted",
                           Json{{"vm_id", m->vm_id}, {"reason", c.reason}}));
  const Vm* v = s.hosts.vm(m->vm_id);
  if (v != nullptr && v->desired == "running") {
    append(out, decide(s, RequestVmPower{m->vm_id, "rm-" + m->vm_id + "-" + std::to_string(ctx.now_ms),
                                         "destroy", std::nullopt}, ctx));
  }
  return out;
}

Result<Events> decide(const State& s, const RecordPoolVmRemoved& c, const Context&) {
  const PoolMember* m = s.pools.member(c.vm_id);
  if (m == nullptr || m->state != "removing") return Events{};
  if (!c.ok) {
    return Events{pool_event(m->pool_id, "PoolVmRemovalFailed",
                             Json{{"vm_id", m->vm_id}, {"error", c.error}})};
  }
  return Events{pool_event(m->pool_id, "PoolVmRemoved", Json{{"vm_id", m->vm_id}})};
}

Result<Events> decide(const State& s, const RecordPoolVmRefreshed& c, const Context&) {
  const PoolMember* m = s.pools.member(c.vm_id);
  if (m == nullptr || m->state != "refreshing") return Events{};
  const Pool* p = s.pools.pool(m->pool_id);
  int version = c.template_version > 0 ? c.template_version : (p ? p->template_version : m->template_version);
  return Events{pool_event(m->pool_id, "PoolVmRefreshed",
                           Json{{"vm_id", m->vm_id}, {"ok", c.ok}, {"error", c.error},
                                {"template_version", version},
                                {"memory_kib", p ? p->tmpl.memory_kib : m->memory_kib}})};
}

Result<Events> decide(const State& s, const RefreshPoolVm& c, const Context& ctx) {
  const PoolMember* m = s.pools.member(c.vm_id);
  if (m == nullptr) return not_found("pool vm " + c.vm_id + " not found");
  const Pool* p = s.pools.pool(m->pool_id);
  if (p == nullptr) return pool_not_found(m->pool_id);
  if (p->deleting) return refused("pool_deleting", "pool " + p->name + " is being deleted");
  if (m->state != "ready" || !member_free(s, *m)) {
    return refused("vm_busy", "pool vm " + m->name + " is " + m->state +
                                  (m->session_id.empty() ? "" : " with a live session") +
                                  (m->assigned_user.empty() ? "" : ", assigned"));
  }
  Events out;
  refresh_events(s, *p, *m, c.reason.empty() ? "refresh" : c.reason, c.operation_id, ctx, out);
  return out;
}

// ---- evolve -----------------------------------------------------------------------------
namespace {

constexpr size_t kMaxNotices = 1000;

Pool* pool_of(State& s, const Event& e) {
  auto it = s.pools.pools.find(e.stream.substr(5));  // "pool-"
  return it == s.pools.pools.end() ? nullptr : &it->second;
}
void touch(Pool& p, const Applied& at) {
  p.updated_at_ms = at.recorded_at_ms;
  p.version = at.stream_version;
}
PoolMember* member_of(State& s, const Event& e) {
  auto it = s.pools.members.find(e.data.value("vm_id", ""));
  return it == s.pools.members.end() ? nullptr : &it->second;
}
DesktopSession* session_of(State& s, const Event& e) {
  auto it = s.pools.sessions.find(e.stream.substr(16));  // "desktop-session-"
  return it == s.pools.sessions.end() ? nullptr : &it->second;
}

void apply_settings(Pool& p, const Json& d) {
  p.name = d.value("name", p.name);
  if (d.contains("host_ids")) p.host_ids = d["host_ids"].get<std::vector<std::string>>();
  p.min_ready = d.value("min_ready", p.min_ready);
  p.min_standby = d.value("min_standby", p.min_standby);
  p.max_size = d.value("max_size", p.max_size);
  p.power_policy = d.value("power_policy", p.power_policy);
  p.idle_timeout_s = d.value("idle_timeout_s", p.idle_timeout_s);
  p.reconnect = d.value("reconnect", p.reconnect);
  p.grace_s = d.value("grace_s", p.grace_s);
  if (d.contains("policy")) {
    if (auto pol = pool_policy_from_json(d["policy"]); pol.ok()) p.policy = *pol;
  }
  if (d.contains("template")) p.tmpl = template_from_json(d["template"]);
  p.template_version = d.value("template_version", p.template_version);
}

void on_pool_created(State& s, const Event& e, const Applied& at) {
  Pool p;
  p.id = e.data.at("id").get<std::string>();
  p.kind = e.data.at("kind").get<std::string>();
  apply_settings(p, e.data);
  p.tmpl = template_from_json(e.data.at("template"));
  p.created_at_ms = at.recorded_at_ms;
  touch(p, at);
  std::string id = p.id;
  s.pools.pools[id] = std::move(p);
}
void on_pool_updated(State& s, const Event& e, const Applied& at) {
  if (Pool* p = pool_of(s, e)) {
    apply_settings(*p, e.data);
    touch(*p, at);
  }
}
void on_deletion_requested(State& s, const Event& e, const Applied& at) {
  if (Pool* p = pool_of(s, e)) {
    p->deleting = true;
    touch(*p, at);
  }
}
void on_pool_deleted(State& s, const Event& e, const Applied&) {
  s.pools.pools.erase(e.stream.substr(5));
}
void on_entitled(State& s, const Event& e, const Applied& at) {
  if (Pool* p = pool_of(s, e)) {
    if (e.data.contains("group")) {
      p->entitled_groups.insert(e.data["group"].get<std::string>());
    } else {
      p->entitled.insert(e.data.at("user_id").get<std::string>());
    }
    touch(*p, at);
  }
}
void on_unentitled(State& s, const Event& e, const Applied& at) {
  if (Pool* p = pool_of(s, e)) {
    if (e.data.contains("group")) {
      p->entitled_groups.erase(e.data["group"].get<std::string>());
    } else {
      p->entitled.erase(e.data.at("user_id").get<std::string>());
    }
    touch(*p, at);
  }
}
void on_provision_started(State& s, const Event& e, const Applied& at) {
  PoolMember m;
  m.vm_id = e.data.at("vm_id").get<std::string>();
  m.pool_id = e.stream.substr(5);
  m.host_id = e.data.at("host_id").get<std::string>();
  m.name = e.data.at("name").get<std::string>();
  m.uuid = e.data.at("uuid").get<std::string>();
  m.mac = e.data.at("mac").get<std::string>();
  m.overlay = e.data.value("overlay", "");
  m.memory_kib = e.data.value("memory_kib", uint64_t{0});
  m.template_version = e.data.value("template_version", 1);
  m.state = "provisioning";
  m.since_ms = at.recorded_at_ms;
  std::string id = m.vm_id;
  s.pools.members[id] = std::move(m);
  if (Pool* p = pool_of(s, e)) touch(*p, at);
}
void set_member_state(State& s, const Event& e, const Applied& at, const char* state) {
  if (PoolMember* m = member_of(s, e)) {
    m->state = state;
    m->error = e.data.value("error", "");
    m->since_ms = at.recorded_at_ms;
  }
  if (Pool* p = pool_of(s, e)) touch(*p, at);
}
void on_provisioned(State& s, const Event& e, const Applied& at) { set_member_state(s, e, at, "ready"); }
void on_provision_failed(State& s, const Event& e, const Applied& at) { set_member_state(s, e, at, "failed"); }
void on_removal_started(State& s, const Event& e, const Applied& at) { set_member_state(s, e, at, "removing"); }
void on_removal_failed(State& s, const Event& e, const Applied& at) { set_member_state(s, e, at, "removing"); }
void on_refresh_started(State& s, const Event& e, const Applied& at) { set_member_state(s, e, at, "refreshing"); }
void on_refreshed(State& s, const Event& e, const Applied& at) {
  bool ok = e.data.value("ok", true);
  set_member_state(s, e, at, ok ? "ready" : "failed");
  PoolMember* m = member_of(s, e);
  if (m != nullptr && ok) {
    m->template_version = e.data.value("template_version", m->template_version);
    m->memory_kib = e.data.value("memory_kib", m->memory_kib);
  }
}
void on_display_reset(State& s, const Event& e, const Applied& at) {
  if (PoolMember* m = member_of(s, e)) m->display_reset.clear();
  if (Pool* p = pool_of(s, e)) touch(*p, at);
}
void on_removed(State& s, const Event& e, const Applied& at) {
  s.pools.members.erase(e.data.at("vm_id").get<std::string>());
  if (Pool* p = pool_of(s, e)) touch(*p, at);
}
void on_assigned(State& s, const Event& e, const Applied& at) {
  if (PoolMember* m = member_of(s, e)) m->assigned_user = e.data.at("user_id").get<std::string>();
  if (Pool* p = pool_of(s, e)) touch(*p, at);
}
void on_unassigned(State& s, const Event& e, const Applied& at) {
  if (PoolMember* m = member_of(s, e)) m->assigned_user.clear();
  if (Pool* p = pool_of(s, e)) touch(*p, at);
}

void touch(DesktopSession& d, const Applied& at) {
  d.updated_at_ms = at.recorded_at_ms;
  d.version = at.stream_version;
}
void on_session_created(State& s, const Event& e, const Applied& at) {
  DesktopSession d;
  d.id = e.data.at("id").get<std::string>();
  d.pool_id = e.data.at("pool_id").get<std::string>();
  d.user_id = e.data.at("user_id").get<std::string>();
  d.vm_id = e.data.at("vm_id").get<std::string>();
  d.host_id = e.data.at("host_id").get<std::string>();
  d.state = "created";
  d.created_at_ms = at.recorded_at_ms;
  d.last_seen_ms = at.recorded_at_ms;
  touch(d, at);
  if (auto it = s.pools.members.find(d.vm_id); it != s.pools.members.end()) {
    it->second.session_id = d.id;
  }
  s.pools.live_by_user[d.user_id].insert(d.id);
  std::string id = d.id;
  s.pools.sessions[id] = std::move(d);
}
void on_ticket(State& s, const Event& e, const Applied& at) {
  if (DesktopSession* d = session_of(s, e)) {
    d->ticket_expires_at_ms = e.data.value("expires_at_ms", int64_t{0});
    d->ticket_applied = e.data.value("applied", false);
    d->ticket_note = e.data.value("note", "");
    d->ticket_issued_at_ms = at.recorded_at_ms;
    d->ticket_retired = false;
    // A new ticket was set with connected='disconnect': it resets the display itself.
    if (auto it = s.pools.members.find(d->vm_id);
        it != s.pools.members.end() && it->second.session_id == d->id) {
      it->second.display_reset.clear();
    }
    touch(*d, at);
  }
}
void on_ticket_retired(State& s, const Event& e, const Applied& at) {
  if (DesktopSession* d = session_of(s, e)) {
    d->ticket_retired = true;
    touch(*d, at);
  }
}
// Client-reported flips count toward the per-minute limit (domain::kMaxSessionFlipsPerMinute).
void count_flip(DesktopSession& d, const Event& e, const Applied& at) {
  if (e.data.value("source", "client") != "client") return;
  if (at.recorded_at_ms - d.flip_window_start_ms >= 60000) {
    d.flip_window_start_ms = at.recorded_at_ms;
    d.flips_in_window = 0;
  }
  ++d.flips_in_window;
}
void on_connected(State& s, const Event& e, const Applied& at) {
  if (DesktopSession* d = session_of(s, e)) {
    if (d->state != "connected") count_flip(*d, e, at);
    d->state = "connected";
    d->last_seen_ms = at.recorded_at_ms;
    if (e.data.value("source", "") == "display") {
      d->display_signal = true;
      d->client_address = e.data.value("client_address", "");
    }
    if (e.data.value("source", "") == "agent") {
      d->agent_signal = true;
      d->agent_present = true;
    }
    touch(*d, at);
  }
}
// The agent's view changed without changing the session's state (e.g. the user logged in
// inside a desktop whose display already said connected).
void on_agent_seen(State& s, const Event& e, const Applied& at) {
  if (DesktopSession* d = session_of(s, e)) {
    d->agent_signal = true;
    d->agent_present = e.data.value("present", false);
    touch(*d, at);
  }
}
// Logs from before issue 11 only: client reports no longer append heartbeats (their
// liveness is in memory, pipeline/liveness.h).
void on_heartbeat(State& s, const Event& e, const Applied& at) {
  if (DesktopSession* d = session_of(s, e)) {
    d->last_seen_ms = at.recorded_at_ms;
    touch(*d, at);
  }
}
void on_disconnected(State& s, const Event& e, const Applied& at) {
  if (DesktopSession* d = session_of(s, e)) {
    count_flip(*d, e, at);
    d->state = "disconnected";
    d->disconnected_at_ms = at.recorded_at_ms;
    std::string reason = e.data.value("reason", "");
    if (reason == "client") d->last_seen_ms = at.recorded_at_ms;
    if (reason == "display_closed") d->display_signal = true;
    if (e.data.value("source", "") == "agent") {
      d->agent_signal = true;
      d->agent_present = false;
    }
    // The user logged out inside the desktop (agent): like a closed display, the grace applies
    // and nothing is reset yet.
    if (reason != "client" && reason != "display_closed" && reason != "agent_logged_out") {
      // Deactivated by the broker (client timeout, VM lost): whatever viewer may still be
      // attached is dropped and the ticket killed; a reconnect gets a fresh one.
      if (auto it = s.pools.members.find(d->vm_id);
          it != s.pools.members.end() && it->second.session_id == d->id) {
        it->second.display_reset = "deactivated: " + reason;
      }
    }
    touch(*d, at);
  }
}
void end_session(State& s, DesktopSession& d, const std::string& reason, int64_t at_ms) {
  d.state = "ended";
  d.end_reason = reason;
  d.updated_at_ms = at_ms;
  if (auto it = s.pools.members.find(d.vm_id); it != s.pools.members.end()) {
    if (it->second.session_id == d.id) it->second.session_id.clear();
    it->second.last_session_end_ms = at_ms;
    // Every client of this session is dropped before the next user gets the VM.
    it->second.display_reset = "session_ended: " + reason;
  }
  if (auto it = s.pools.live_by_user.find(d.user_id); it != s.pools.live_by_user.end()) {
    it->second.erase(d.id);
    if (it->second.empty()) s.pools.live_by_user.erase(it);
  }
}
void on_ended(State& s, const Event& e, const Applied& at) {
  if (DesktopSession* d = session_of(s, e)) {
    end_session(s, *d, e.data.value("reason", ""), at.recorded_at_ms);
    touch(*d, at);
  }
}
void on_notice(State& s, const Event& e, const Applied& at) {
  UserNotice n;
  n.position = at.position;
  n.user_id = e.data.at("user_id").get<std::string>();
  n.kind = e.type == "AdminMessageSent" ? "message" : "command";
  n.data = e.data;
  n.at_ms = at.recorded_at_ms;
  s.pools.notices.push_back(std::move(n));
  if (s.pools.notices.size() > kMaxNotices) {
    s.pools.notices.erase(s.pools.notices.begin(),
                          s.pools.notices.begin() + static_cast<long>(s.pools.notices.size() - kMaxNotices));
  }
}

// Cascades of other modules' events: a deleted user or a VM that is gone ends the sessions
// and assignments it had, in the same fold, so no stale assignment survives.
void drop_user(State& s, const std::string& user_id, int64_t at_ms) {
  for (auto& [id, d] : s.pools.sessions) {
    if (d.user_id == user_id && d.live()) end_session(s, d, "user_deleted", at_ms);
  }
  for (auto& [id, m] : s.pools.members) {
    if (m.assigned_user == user_id) m.assigned_user.clear();
  }
  for (auto& [id, p] : s.pools.pools) p.entitled.erase(user_id);
}
void drop_vm(State& s, const std::string& vm_id, int64_t at_ms, bool forget) {
  auto it = s.pools.members.find(vm_id);
  if (it == s.pools.members.end()) return;
  PoolMember& m = it->second;
  if (!m.session_id.empty()) {
    if (auto sit = s.pools.sessions.find(m.session_id); sit != s.pools.sessions.end()) {
      end_session(s, sit->second, "vm_lost", at_ms);
    }
  }
  m.assigned_user.clear();
  if (forget) {
    s.pools.members.erase(it);
  } else if (m.state == "ready" || m.state == "refreshing") {
    m.state = "failed";
    m.error = "vm disappeared from its host";
  }
}

}  // namespace

void pools_after_evolve(State& s, const Event& e, const Applied& at) {
  if (e.type == "PoolVmRemoved") {
    // The broker undefined the domain: the hosts module forgets it, so no managed VM of a
    // pool that no longer has it stays behind (and the host can be removed).
    forget_vm(s.hosts, e.data.value("vm_id", ""));
  } else if (e.type == "PoolDeleted") {
    // Any VM still naming the deleted pool (logs written before PoolVmRemoved forgot VMs) is
    // released: forgotten when missing, unmanaged otherwise.
    release_pool_vms(s.hosts, e.stream.substr(5));
  } else if (e.type == "VmForgotten") {
    drop_vm(s, e.stream.substr(3), at.recorded_at_ms, true);
  } else if (e.type == "UserDeleted") {
    drop_user(s, e.stream.substr(5), at.recorded_at_ms);
  } else if (e.type == "VmObserved" && e.data.value("observed", "") == "missing") {
    drop_vm(s, e.stream.substr(3), at.recorded_at_ms, false);
  } else if (e.type == "HostRemoved") {
    std::string host = e.stream.substr(5);
    std::vector<std::string> gone;
    for (const auto& [id, m] : s.pools.members) {
      if (m.host_id == host) gone.push_back(id);
    }
    for (const auto& id : gone) drop_vm(s, id, at.recorded_at_ms, true);
  }
}

void register_pools(EvolveTable& t) {
  t["PoolCreated"] = on_pool_created;
  t["PoolUpdated"] = on_pool_updated;
  t["PoolDeletionRequested"] = on_deletion_requested;
  t["PoolDeleted"] = on_pool_deleted;
  t["PoolEntitlementAdded"] = on_entitled;
  t["PoolEntitlementRemoved"] = on_unentitled;
  t["PoolVmProvisionStarted"] = on_provision_started;
  t["PoolVmProvisioned"] = on_provisioned;
  t["PoolVmProvisionFailed"] = on_provision_failed;
  t["PoolVmRemovalStarted"] = on_removal_started;
  t["PoolVmRemovalFailed"] = on_removal_failed;
  t["PoolVmRemoved"] = on_removed;
  t["PoolVmRefreshStarted"] = on_refresh_started;
  t["PoolVmRefreshed"] = on_refreshed;
  t["DesktopAssigned"] = on_assigned;
  t["DesktopUnassigned"] = on_unassigned;
  t["DesktopSessionCreated"] = on_session_created;
  t["DesktopSessionTicketIssued"] = on_ticket;
  t["DesktopSessionTicketRetired"] = on_ticket_retired;
  t["PoolVmDisplayReset"] = on_display_reset;
  t["DesktopSessionConnected"] = on_connected;
  t["DesktopSessionHeartbeat"] = on_heartbeat;
  t["DesktopSessionAgentSeen"] = on_agent_seen;
  t["DesktopSessionDisconnected"] = on_disconnected;
  t["DesktopSessionEnded"] = on_ended;
  t["AdminMessageSent"] = on_notice;
  t["ClientCommandSent"] = on_notice;
}

}  // namespace atrium::domain

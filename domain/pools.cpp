// Desktop pools (domain/pools.h): stream names, the state's queries and the rules shared by
// the pools module's files (domain/pools_internal.h). Pool lifecycle is in pools_lifecycle.cpp,
// members in pools_members.cpp, entitlements in pools_entitlements.cpp, views in
// pools_views.cpp, evolve in pools_evolve.cpp; sessions, XML and codec have their own files.
#include "domain/pools.h"

#include <algorithm>

#include "domain/hosts.h"
#include "domain/pools_internal.h"
#include "domain/state.h"

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

}  // namespace atrium::domain

// Pool members: whether a member is free or releasing, host choice and the spare plan that
// sizes a pool, and the decisions that provision, remove and refresh members (domain/pools.h).
#include <algorithm>

#include "domain/hosts.h"
#include "domain/pools.h"
#include "domain/pools_internal.h"
#include "domain/state.h"

namespace atrium::domain {

using namespace pools_detail;

// ---- member rules, host choice, sizing ---------------------------------------------
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
    if (member_releasing(s, *m)) ++releasing;    // so does one whose last session is cleaned up
    if (!member_free(s, *m)) continue;
    (powered_on(s, *m) ? running : standby).push_back(m);
  }
  // Members on the current template first: started first, removed last.
  auto outdated = [&](const PoolMember* m) { return m->template_version < pool.template_version; };
  for (auto* list : {&standby, &running}) {
    std::stable_partition(list->begin(), list->end(),
                          [&](const PoolMember* m) { return !outdated(m); });
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
  for (; i < static_cast<int>(standby.size()) && i < need_run; ++i)
    plan.start.push_back(standby[i]->vm_id);
  int old_for_run = std::min(need_run - i, static_cast<int>(standby_old.size()));
  int short_run = need_run - i - old_for_run;
  int standby_left =
      static_cast<int>(standby.size()) - i + static_cast<int>(standby_old.size()) - old_for_run;
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

// ---- decide: members, provisioning, refresh ----------------------------------------
Result<Events> decide(const State& s, const ProvisionPoolVm& c, const Context&) {
  const Pool* p = s.pools.pool(c.pool_id);
  if (p == nullptr) return pool_not_found(c.pool_id);
  if (p->deleting) return refused("pool_deleting", "pool " + p->name + " is being deleted");
  int active = 0;
  for (const PoolMember* m : s.pools.members_of(p->id)) active += m->state != "removing";
  if (active >= p->max_size) {
    return refused("pool_full",
                   "pool " + p->name + " has reached max_size " + std::to_string(p->max_size));
  }
  if (c.name.empty() || c.uuid.empty() || c.mac.empty())
    return invalid("name, uuid and mac are required");
  auto host = choose_host(s, *p);
  if (!host.ok()) return host.error();
  std::string vm_id = vm_id_for(*host, c.uuid);
  if (s.pools.member(vm_id) != nullptr || s.hosts.vm(vm_id) != nullptr) {
    return Error::make(Code::already_exists, "vm " + vm_id + " exists", "vm_exists");
  }
  std::string overlay = c.with_overlay && !p->tmpl.base_volume.empty() ? c.name + ".qcow2" : "";
  return Events{pool_event(p->id, "PoolVmProvisionStarted",
                           Json{{"vm_id", vm_id},
                                {"host_id", *host},
                                {"name", c.name},
                                {"uuid", c.uuid},
                                {"mac", c.mac},
                                {"overlay", overlay},
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
    return refused("vm_not_observed",
                   "vm " + m->name + " is defined but not yet observed on its host");
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
                             Json{{"vm_id", m->vm_id},
                                  {"user_id", m->assigned_user},
                                  {"reason", "vm removed: " + c.reason}}));
  }
  out.push_back(pool_event(m->pool_id, "PoolVmRemovalStarted",
                           Json{{"vm_id", m->vm_id}, {"reason", c.reason}}));
  const Vm* v = s.hosts.vm(m->vm_id);
  if (v != nullptr && v->desired == "running") {
    append(out, decide(s,
                       RequestVmPower{m->vm_id, "rm-" + m->vm_id + "-" + std::to_string(ctx.now_ms),
                                      "destroy", std::nullopt},
                       ctx));
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
  int version =
      c.template_version > 0 ? c.template_version : (p ? p->template_version : m->template_version);
  return Events{pool_event(m->pool_id, "PoolVmRefreshed",
                           Json{{"vm_id", m->vm_id},
                                {"ok", c.ok},
                                {"error", c.error},
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

}  // namespace atrium::domain

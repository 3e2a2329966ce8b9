// Desktop launches, sessions, the monitor and the power policy (domain/pools.h).
#include <algorithm>

#include "domain/pools.h"
#include "domain/pools_internal.h"
#include "domain/state.h"

namespace atrium::domain {

using namespace pools_detail;

namespace {

// Issue 11: a session takes its connected/disconnected state from the VM's agent (the user
// logged in or out inside the desktop) once that agent is registered and has spoken about the
// session; before that (or without an agent) from the display's graphics events, and without
// those from the client's reports.
bool agent_in_charge(const State& s, const DesktopSession& d) {
  if (!d.agent_signal) return false;
  const Agent* a = s.agents.of_vm(d.vm_id);
  return a != nullptr && a->registered();
}

}  // namespace

// ---- monitor and power policy ---------------------------------------------------------
std::vector<PowerAction> power_actions(const State& s, int64_t now_ms, int64_t client_timeout_ms,
                                       const SessionLiveness& liveness) {
  std::vector<PowerAction> out;
  std::vector<const DesktopSession*> live;
  for (const auto& [uid, ids] : s.pools.live_by_user) {
    for (const auto& id : ids) {
      if (const DesktopSession* d = s.pools.session(id)) live.push_back(d);
    }
  }
  std::sort(live.begin(), live.end(), [](auto* a, auto* b) { return a->id < b->id; });
  for (const DesktopSession* d : live) {
    const Pool* p = s.pools.pool(d->pool_id);
    const Vm* v = s.hosts.vm(d->vm_id);
    std::string vm_state;
    if (v == nullptr) {
      vm_state = "missing";
    } else if (v->observed == "crashed" || v->observed == "missing" ||
               (v->observed == "shut_off" && v->desired != "running")) {
      vm_state = v->observed;
    }
    if (d->state == "created" && d->ticket_expires_at_ms == 0 &&
        (client_timeout_ms <= 0 || now_ms - d->created_at_ms <= client_timeout_ms)) {
      // The launch is still powering the VM on and issuing the ticket: a VM seen shut off
      // here is the one being started, not a lost desktop.
      continue;
    }
    if (d->state == "disconnected") {
      int64_t grace_ms = (p ? p->grace_s : 0) * 1000;
      if (!vm_state.empty()) {
        out.push_back({"end_session", d->id, "vm_" + vm_state});
      } else if (now_ms - d->disconnected_at_ms >= grace_ms) {
        out.push_back({"end_session", d->id, "grace_expired"});
      }
      continue;
    }
    const Agent* agent = s.agents.of_vm(d->vm_id);
    bool agent_watches =
        agent != nullptr && (agent->registered() || agent->registration == "unregistered");
    int64_t seen = std::max(d->last_seen_ms, liveness.started_at_ms);
    if (liveness.client_seen) seen = std::max(seen, liveness.client_seen(d->id));
    if (!vm_state.empty()) {
      out.push_back({"deactivate_session", d->id, "vm_" + vm_state});
    } else if (agent_watches && (d->agent_signal || !d->display_signal)) {
      // The VM's agent is in charge: silent once it missed its heartbeats.
      if (agent->registration == "unregistered") {
        out.push_back({"deactivate_session", d->id, "agent_silent"});
      }
    } else if (d->display_signal) {
      // The display itself says whether the client is there.
    } else if (client_timeout_ms > 0 && now_ms - seen > client_timeout_ms) {
      // Only sessions whose display reports nothing: with graphics events the display itself
      // says whether the client is there.
      out.push_back({"deactivate_session", d->id, "client_timeout"});
    }
  }
  // Idle shutdown: members without a session past idle_timeout; unassigned spares only
  // beyond min_ready.
  std::vector<std::string> pool_ids;
  for (const auto& [id, p] : s.pools.pools) pool_ids.push_back(id);
  std::sort(pool_ids.begin(), pool_ids.end());
  for (const auto& pid : pool_ids) {
    const Pool& p = *s.pools.pool(pid);
    if (p.power_policy != "shutdown_when_idle") continue;
    int spares_kept = 0;
    std::vector<const PoolMember*> idle;
    for (const PoolMember* m : s.pools.members_of(pid)) {
      if (m->state != "ready" || !m->session_id.empty() || !powered_on(s, *m)) continue;
      int64_t since = std::max(m->last_session_end_ms, m->since_ms);
      bool timed_out = now_ms - since >= p.idle_timeout_s * 1000;
      if (m->assigned_user.empty() && spares_kept < p.min_ready) {
        ++spares_kept;
        continue;
      }
      if (timed_out) idle.push_back(m);
    }
    for (const PoolMember* m : idle) out.push_back({"shutdown_vm", m->vm_id, "idle_timeout"});
  }
  return out;
}

// ---- launch and sessions ----------------------------------------------------------------
Result<Events> decide(const State& s, const LaunchDesktop& c, const Context& ctx) {
  const Pool* p = s.pools.pool(c.pool_id);
  if (p == nullptr) return pool_not_found(c.pool_id);
  if (s.users.find(c.user_id) == nullptr) return not_found("user " + c.user_id + " not found");
  if (!entitled(s, *p, c.user_id)) {
    return Error::make(Code::permission_denied, "user is not entitled to pool " + p->name,
                       "not_entitled");
  }
  if (p->deleting) return refused("pool_deleting", "pool " + p->name + " is being deleted");
  // A live session: reconnect to it (same VM, same session).
  if (const DesktopSession* d = s.pools.live_session(p->id, c.user_id)) {
    if (p->reconnect == "disconnected_only" && d->state == "connected") {
      return refused("session_connected", "session " + d->id + " is connected elsewhere; pool " +
                                              p->name +
                                              " reconnects only to a disconnected session");
    }
    return Events{};
  }
  if (c.session_id.empty() || s.pools.session(c.session_id) != nullptr) {
    return invalid("a new session id is required");
  }
  const PoolMember* chosen = nullptr;
  bool assign = true;
  std::string refusal, detail;
  if (p->kind == "dedicated") {
    if (const PoolMember* m = s.pools.assigned(p->id, c.user_id)) {
      assign = false;
      if (m->state != "ready" || s.hosts.vm(m->vm_id) == nullptr) {
        return refused("vm_unavailable", "the user's desktop " + m->name + " is " + m->state);
      }
      if (!host_up(s, m->host_id)) {
        return refused("no_host_up", "the host of the user's desktop " + m->name + " is not up");
      }
      if (!m->display_reset.empty() || shutdown_pending(s, *m)) {
        return refused(
            "desktop_releasing",
            "the user's desktop " + m->name + " is still being cleaned up after the last session");
      }
      if (needs_port(s, *m) && s.hosts.ports_free(m->host_id) <= 0) {
        return refused("display_ports_exhausted",
                       "the host of the user's desktop " + m->name + " has no free display port");
      }
      chosen = m;
    }
  }
  if (chosen == nullptr) {
    std::vector<const PoolMember*> free_on, free_off;
    bool free_but_host_down = false, free_but_no_port = false;
    bool resetting = false, shutting_down = false;
    int active = 0;
    for (const PoolMember* m : s.pools.members_of(p->id)) {
      if (m->state != "removing") ++active;
      bool candidate = m->state == "ready" && m->assigned_user.empty() && m->session_id.empty() &&
                       s.hosts.vm(m->vm_id) != nullptr;
      if (!candidate) continue;
      if (!m->display_reset.empty()) {  // the last user's clients are still being dropped
        resetting = true;
        continue;
      }
      if (shutdown_pending(s, *m)) {  // never hand out a VM that is shutting down
        shutting_down = true;
        continue;
      }
      if (!host_up(s, m->host_id)) {
        free_but_host_down = true;
        continue;
      }
      if (!needs_port(s, *m) || s.hosts.ports_free(m->host_id) > 0) {
        (powered_on(s, *m) ? free_on : free_off).push_back(m);
      } else {
        free_but_no_port = true;
      }
    }
    // Members on the pool's current template first (a rolling update may still be under way).
    auto current = [&](const PoolMember* m) { return m->template_version >= p->template_version; };
    std::stable_partition(free_on.begin(), free_on.end(), current);
    std::stable_partition(free_off.begin(), free_off.end(), current);
    if (!free_on.empty() &&
        (current(free_on.front()) || free_off.empty() || !current(free_off.front()))) {
      chosen = free_on.front();
    } else if (!free_off.empty()) {
      chosen = free_off.front();
    } else if (free_but_no_port) {
      return refused("display_ports_exhausted", "free desktops of pool " + p->name +
                                                    " are on hosts without a free display port");
    } else if (free_but_host_down) {
      return refused("no_host_up",
                     "free desktops of pool " + p->name + " are on hosts that are not up");
    } else if (resetting || (shutting_down && active >= p->max_size)) {
      return refused("desktop_releasing",
                     "pool " + p->name + " has desktops being cleaned up after their last session");
    } else if (active >= p->max_size) {
      return refused("pool_full", "every desktop of pool " + p->name + " is in use (max_size " +
                                      std::to_string(p->max_size) + ")");
    } else {
      return refused("no_vm_ready",
                     "pool " + p->name + " has no desktop ready yet; more are being provisioned");
    }
  }
  Events out;
  if (needs_port(s, *chosen)) {
    auto port = decide(s, AllocateDisplayPort{chosen->vm_id}, ctx);
    if (!port.ok()) return port.error();
    for (auto& e : *port) out.push_back(std::move(e));
  }
  if (assign) {
    out.push_back(pool_event(
        p->id, "DesktopAssigned",
        Json{{"vm_id", chosen->vm_id}, {"user_id", c.user_id}, {"session_id", c.session_id}}));
  }
  out.push_back(session_event(c.session_id, "DesktopSessionCreated",
                              Json{{"id", c.session_id},
                                   {"pool_id", p->id},
                                   {"user_id", c.user_id},
                                   {"vm_id", chosen->vm_id},
                                   {"host_id", chosen->host_id}}));
  return out;
}

Result<Events> decide(const State& s, const RecordSessionTicket& c, const Context&) {
  const DesktopSession* d = s.pools.session(c.session_id);
  if (d == nullptr) return not_found("session " + c.session_id + " not found");
  if (!d->live()) return refused("session_ended", "session " + c.session_id + " has ended");
  Json data{{"expires_at_ms", c.expires_at_ms}, {"applied", c.applied}};
  if (!c.note.empty()) data["note"] = c.note;
  return Events{session_event(d->id, "DesktopSessionTicketIssued", data)};
}

Result<Events> decide(const State& s, const ReportSession& c, const Context& ctx) {
  const DesktopSession* d = s.pools.session(c.session_id);
  if (d == nullptr) return not_found("session " + c.session_id + " not found");
  if (c.state != "connected" && c.state != "disconnected") {
    return field_error("state", "must be connected or disconnected", "invalid_state");
  }
  if (!d->live()) return refused("session_ended", "session " + c.session_id + " has ended");
  // The VM's agent says whether the user is in the desktop: the client's report is liveness.
  if (agent_in_charge(s, *d)) return Events{};
  bool flip = (c.state == "connected" && d->state != "connected") ||
              (c.state == "disconnected" && d->state != "disconnected");
  if (flip) {
    int recent = ctx.now_ms - d->flip_window_start_ms < 60000 ? d->flips_in_window : 0;
    if (recent >= kMaxSessionFlipsPerMinute) {
      return Error::make(Code::too_many_requests,
                         "session " + d->id + " changed state " + std::to_string(recent) +
                             " times in the last minute; the limit is " +
                             std::to_string(kMaxSessionFlipsPerMinute),
                         "too_many_state_changes");
    }
  }
  if (c.state == "connected" && d->state != "connected") {
    return Events{session_event(d->id, "DesktopSessionConnected", Json{{"source", "client"}})};
  }
  if (c.state == "disconnected" && d->state != "disconnected") {
    return Events{session_event(d->id, "DesktopSessionDisconnected",
                                Json{{"reason", "client"}, {"source", "client"}})};
  }
  // Not a change: the report is liveness only, kept in memory by the API (the liveness table),
  // never a DesktopSessionHeartbeat in the log.
  return Events{};
}

Result<Events> decide(const State& s, const RecordDisplayClients& c, const Context&) {
  const Vm* v = s.hosts.vm(c.vm_id);
  if (v == nullptr) return Events{};
  const Host* h = s.hosts.host(v->host_id);
  if (h == nullptr || h->epoch != c.epoch) return Events{};  // a late report of another epoch
  const PoolMember* m = s.pools.member(c.vm_id);
  if (m == nullptr || m->session_id.empty()) return Events{};
  const DesktopSession* d = s.pools.session(m->session_id);
  if (d == nullptr || !d->live()) return Events{};
  if (agent_in_charge(s, *d)) return Events{};  // the VM's agent says it (issue 11)
  if (c.connected) {
    if (d->state == "connected" && d->display_signal && d->client_address == c.client_address) {
      return Events{};  // a repeat
    }
    Json data{{"source", "display"}};
    if (!c.client_address.empty()) data["client_address"] = c.client_address;
    return Events{session_event(d->id, "DesktopSessionConnected", data)};
  }
  if (d->state != "connected") return Events{};
  return Events{session_event(d->id, "DesktopSessionDisconnected",
                              Json{{"reason", "display_closed"}, {"source", "display"}})};
}

Result<Events> decide(const State& s, const RetireSessionTicket& c, const Context&) {
  const DesktopSession* d = s.pools.session(c.session_id);
  if (d == nullptr) return not_found("session " + c.session_id + " not found");
  if (!d->live() || d->ticket_retired || d->ticket_expires_at_ms == 0) return Events{};
  Json data{{"applied", c.applied}};
  if (!c.note.empty()) data["note"] = c.note;
  return Events{session_event(d->id, "DesktopSessionTicketRetired", data)};
}

Result<Events> decide(const State& s, const RecordDisplayReset& c, const Context&) {
  const PoolMember* m = s.pools.member(c.vm_id);
  if (m == nullptr || m->display_reset.empty()) return Events{};
  Json data{{"vm_id", m->vm_id}, {"ok", c.ok}, {"reason", m->display_reset}};
  if (!c.note.empty()) data["note"] = c.note;
  return Events{pool_event(m->pool_id, "PoolVmDisplayReset", data)};
}

Result<Events> decide(const State& s, const DeactivateSession& c, const Context&) {
  const DesktopSession* d = s.pools.session(c.session_id);
  if (d == nullptr || !d->live() || d->state == "disconnected") return Events{};
  return Events{session_event(d->id, "DesktopSessionDisconnected", Json{{"reason", c.reason}})};
}

Result<Events> decide(const State& s, const EndDesktopSession& c, const Context& ctx) {
  const DesktopSession* d = s.pools.session(c.session_id);
  if (d == nullptr) return not_found("session " + c.session_id + " not found");
  if (!d->live()) return Events{};
  Events out;
  end_session_events(s, *d, c.reason.empty() ? "logoff" : c.reason, c.power_operation_id, ctx, out);
  return out;
}

Result<Events> decide(const State& s, const SetMemberPower& c, const Context& ctx) {
  const PoolMember* m = s.pools.member(c.vm_id);
  if (m == nullptr) return not_found("pool vm " + c.vm_id + " not found");
  if (c.action != "shutdown") return invalid("only shutdown is decided here");
  if (!m->session_id.empty()) return refused("vm_in_use", "vm " + m->name + " has a live session");
  const Vm* v = s.hosts.vm(m->vm_id);
  if (v == nullptr || v->desired == "shut_off") return Events{};
  return decide(s, RequestVmPower{m->vm_id, c.operation_id, "shutdown", std::nullopt}, ctx);
}

Result<Events> decide(const State& s, const SendUserMessage& c, const Context&) {
  if (s.users.find(c.user_id) == nullptr) return not_found("user " + c.user_id + " not found");
  Json sessions = Json::array();
  if (auto it = s.pools.live_by_user.find(c.user_id); it != s.pools.live_by_user.end()) {
    for (const auto& id : it->second) sessions.push_back(id);
  }
  if (sessions.empty()) {
    return refused("no_live_session", "user " + c.user_id + " has no live desktop session");
  }
  if (c.kind == "message") {
    if (c.text.empty() || c.text.size() > 2000)
      return field_error("text", "must be 1 to 2000 characters", "invalid_message");
    return Events{{messages_stream(c.user_id), "AdminMessageSent", 1,
                   Json{{"user_id", c.user_id}, {"text", c.text}, {"session_ids", sessions}}}};
  }
  if (c.kind == "command") {
    if (c.text != "logoff" && c.text != "reconnect") {
      return field_error("command", "must be logoff or reconnect", "invalid_command");
    }
    return Events{{messages_stream(c.user_id), "ClientCommandSent", 1,
                   Json{{"user_id", c.user_id}, {"command", c.text}, {"session_ids", sessions}}}};
  }
  return invalid("kind must be message or command");
}

}  // namespace atrium::domain

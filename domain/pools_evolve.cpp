// Evolve of the pools module: how pool, member and desktop-session events and the notices
// change PoolsState, and the cascades of other modules' events (pools_after_evolve).
#include "domain/evolve_table.h"
#include "domain/hosts.h"
#include "domain/pools.h"
#include "domain/state.h"

namespace atrium::domain {

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
void on_provisioned(State& s, const Event& e, const Applied& at) {
  set_member_state(s, e, at, "ready");
}
void on_provision_failed(State& s, const Event& e, const Applied& at) {
  set_member_state(s, e, at, "failed");
}
void on_removal_started(State& s, const Event& e, const Applied& at) {
  set_member_state(s, e, at, "removing");
}
void on_removal_failed(State& s, const Event& e, const Applied& at) {
  set_member_state(s, e, at, "removing");
}
void on_refresh_started(State& s, const Event& e, const Applied& at) {
  set_member_state(s, e, at, "refreshing");
}
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
    s.pools.notices.erase(
        s.pools.notices.begin(),
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

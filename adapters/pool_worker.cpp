#include "adapters/pool_worker.h"

#include <algorithm>
#include <cctype>
#include <ctime>
#include <random>

#include "common/time_text.h"
#include "domain/hosts.h"
#include "domain/pools.h"

namespace atrium::adapters {

using domain::State;

namespace {

std::string random_hex(size_t bytes) {
  static thread_local std::random_device rd;  // /dev/urandom on Linux
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < bytes; ++i) {
    unsigned v = rd() & 0xffu;
    out += kHex[v >> 4];
    out += kHex[v & 15];
  }
  return out;
}

std::string new_uuid() {
  std::string h = random_hex(16);
  h[12] = '4';
  h[16] = "89ab"[std::stoi(h.substr(16, 1), nullptr, 16) & 3];
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
         "-" + h.substr(20, 12);
}

std::string new_mac() {
  std::string h = random_hex(3);
  return "52:54:00:" + h.substr(0, 2) + ":" + h.substr(2, 2) + ":" + h.substr(4, 2);
}

template <typename C>
pipeline::Command command(const char* name, C c) {
  pipeline::Command cmd = pipeline::decide_command(name, std::move(c));
  cmd.meta.actor = "system";
  cmd.meta.correlation_id = "pool-worker";
  return cmd;
}

bool running_like(const std::string& o) { return o == "running" || o == "blocked"; }

}  // namespace

PoolWorker::PoolWorker(pipeline::Pipeline& pipeline, projections::Views& views, HostManager* hosts,
                       PoolWorkerOptions options, pipeline::Clock clock)
    : pipeline_(pipeline), views_(views), hosts_(hosts), opts_(std::move(options)),
      clock_(std::move(clock)) {}

PoolWorker::~PoolWorker() { stop(); }

void PoolWorker::start() {
  std::lock_guard lock(mu_);
  if (running_) return;
  running_ = true;
  stopping_ = false;
  thread_ = std::thread([this] { loop(); });
}

void PoolWorker::stop() {
  {
    std::lock_guard lock(mu_);
    if (!running_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
  std::lock_guard lock(mu_);
  running_ = false;
}

void PoolWorker::loop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    lock.unlock();
    run_once();
    lock.lock();
    cv_.wait_for(lock, opts_.interval, [this] { return stopping_; });
  }
}

Status PoolWorker::submit(pipeline::Command c) {
  auto r = pipeline_.execute(std::move(c));
  if (!r.ok()) return r.error();
  return Status::Ok();
}

Status PoolWorker::define_member(const std::string& vm_id, int port, const std::string& password,
                                 int64_t expires_ms, bool fresh_disk, int* template_version) {
  if (hosts_ == nullptr) return Error::make(Code::unavailable, "no host manager runs");
  struct Plan {
    std::string host, xml_tmpl, overlay, storage_pool, base_volume;
    int template_version = 0;
    domain::MemberXmlParams params;
  };
  auto plan = views_.read([&](const State& s) -> Result<Plan> {
    const domain::PoolMember* m = s.pools.member(vm_id);
    if (m == nullptr) return not_found("pool vm " + vm_id + " not found");
    const domain::Pool* p = s.pools.pool(m->pool_id);
    if (p == nullptr) return not_found("pool " + m->pool_id + " not found");
    Plan pl;
    pl.host = m->host_id;
    pl.xml_tmpl = p->tmpl.domain_xml;
    pl.template_version = p->template_version;
    pl.params.name = m->name;
    pl.params.uuid = m->uuid;
    pl.params.mac = m->mac;
    pl.params.spice_port = port;
    pl.params.spice_password = password;
    pl.params.spice_listen = opts_.spice_listen;
    if (const domain::Host* h = s.hosts.host(m->host_id)) pl.params.spice_tls = h->spice_tls();
    if (expires_ms > 0) pl.params.password_valid_to = utc_iso8601(expires_ms, false);
    pl.overlay = m->overlay;
    pl.storage_pool = p->tmpl.storage_pool.empty() ? "default" : p->tmpl.storage_pool;
    pl.base_volume = p->tmpl.base_volume;
    return pl;
  });
  if (!plan.ok()) return plan.error();
  if (template_version != nullptr) *template_version = plan->template_version;
  if (!plan->overlay.empty() && plan->base_volume.empty()) {
    return Error::make(Code::failed_precondition,
                       "the member has an overlay volume but its pool template has no base volume",
                       "invalid_template");
  }
  return hosts_->with_connection(plan->host, [&](HypervisorConnection& c) -> Status {
    domain::MemberXmlParams params = plan->params;
    bool created = false;
    if (!plan->overlay.empty()) {
      // The member's copy-on-write disk over the template's base volume: kept across power
      // cycles unless a fresh disk is asked for (provisioning, refresh), then (re)created.
      auto existing = c.volume_path(plan->storage_pool, plan->overlay);
      if (existing.ok() && fresh_disk) {
        if (Status d = c.delete_volume(*existing); !d.ok() && d.error().code != Code::not_found) return d;
      } else if (existing.ok()) {
        params.overlay_path = *existing;
      } else if (existing.error().code != Code::not_found ||
                 existing.error().reason == "libvirt_no_storage_pool") {
        return existing.error();
      }
      if (params.overlay_path.empty()) {
        auto path = c.create_overlay_volume(plan->storage_pool, plan->overlay, plan->base_volume);
        if (!path.ok()) return path.error();
        params.overlay_path = *path;
        created = true;
      }
    }
    auto xml = domain::member_domain_xml(plan->xml_tmpl, params);
    Status st = xml.ok() ? Status::Ok() : Status(xml.error());
    if (st.ok()) {
      auto d = c.define(*xml);
      if (!d.ok()) st = d.error();
    }
    if (!st.ok() && created) (void)c.delete_volume(params.overlay_path);  // no orphaned disk
    return st;
  });
}

Result<std::string> PoolWorker::export_domain_xml(const std::string& host_id, const std::string& name) {
  if (hosts_ == nullptr) return Error::make(Code::unavailable, "no host manager runs");
  std::string xml;
  Status st = hosts_->with_connection(host_id, [&](HypervisorConnection& c) -> Status {
    auto x = c.domain_xml(name);
    if (!x.ok()) return x.error();
    xml = std::move(*x);
    return Status::Ok();
  });
  if (!st.ok()) return st.error();
  return xml;
}

Status PoolWorker::validate_template(const std::vector<std::string>& host_ids,
                                     const domain::PoolTemplate& t) {
  if (hosts_ == nullptr) return Error::make(Code::unavailable, "no host manager runs", "template_host_unavailable");
  domain::MemberXmlParams params;
  std::string uuid = new_uuid();
  params.name = domain::kValidationDomainPrefix + uuid.substr(0, 8);
  params.uuid = uuid;
  params.mac = new_mac();
  params.spice_listen = opts_.spice_listen;
  params.spice_password = random_hex(12);
  if (!t.base_volume.empty()) params.overlay_path = t.base_volume;  // never started: not opened
  auto xml = domain::member_domain_xml(t.domain_xml, params);
  if (!xml.ok()) return xml.error();
  std::string last_unavailable = "no host of the pool is connected";
  for (const auto& host : host_ids) {
    Status st = hosts_->with_connection(host, [&](HypervisorConnection& c) -> Status {
      auto d = c.define(*xml);
      if (!d.ok()) return d.error();
      return c.undefine(params.name);
    });
    if (st.ok()) return st;
    if (st.error().code == Code::unavailable) {
      last_unavailable = st.error().message;
      continue;  // try the pool's next host
    }
    return Error::make(Code::invalid_argument, "libvirt on host " + host + " refuses the template: " + st.error().message,
                       "invalid_template");
  }
  return Error::make(Code::unavailable, "the template cannot be checked: " + last_unavailable,
                     "template_host_unavailable");
}

Result<std::string> PoolWorker::provision(const std::string& pool_id) {
  int64_t now = clock_();
  std::string prefix = views_.read([&](const State& s) {
    const domain::Pool* p = s.pools.pool(pool_id);
    std::string n = p ? p->name : pool_id;
    for (char& ch : n) {
      if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_') ch = '-';
    }
    return n.substr(0, 40);
  });
  std::string uuid = new_uuid();
  domain::ProvisionPoolVm c{pool_id, prefix + "-" + uuid.substr(0, 8), uuid, new_mac(), true};
  auto r = pipeline_.execute(command("ProvisionPoolVm", c));
  if (!r.ok()) {
    pool_backoff_until_[pool_id] = now + 2000;  // no host up, pool full: look again later
    return r.error();
  }
  std::string vm_id = views_.read([&](const State& s) {
    for (const auto& [id, m] : s.pools.members) {
      if (m.uuid == uuid) return id;
    }
    return std::string();
  });
  if (vm_id.empty()) return Error::make(Code::internal, "the proposed member was not recorded");
  // Defined shut off with autoport: the display port and ticket are set when it starts.
  Status st = define_member(vm_id, -1, random_hex(12), 0, true);
  if (!st.ok()) {
    (void)submit(command("RecordPoolVmProvisioned",
                         domain::RecordPoolVmProvisioned{vm_id, false, st.error().message}));
    pool_backoff_until_[pool_id] = now + 5000;
    return st.error();
  }
  provisioning_since_[vm_id] = now;
  finish_provisioning(vm_id);
  return vm_id;
}

Status PoolWorker::provision_for_launch(const std::string& pool_id) {
  auto deadline = std::chrono::steady_clock::now() + opts_.launch_wait;
  std::string vm;
  {
    std::lock_guard pass(pass_mu_);
    auto r = provision(pool_id);
    if (!r.ok()) return r.error();
    vm = *r;
  }
  for (;;) {
    std::string state = views_.read([&](const State& s) {
      const domain::PoolMember* m = s.pools.member(vm);
      return m ? m->state : std::string("missing");
    });
    if (state == "ready") return Status::Ok();
    if (state != "provisioning") {
      return Error::make(Code::unavailable, "the desktop provisioned for this launch is " + state,
                         "provisioning_failed");
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return Error::make(Code::unavailable, "no desktop was provisioned within " +
                                                std::to_string(opts_.launch_wait.count()) + " ms",
                         "provisioning_timeout");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::lock_guard pass(pass_mu_);
    finish_provisioning(vm);
  }
}

bool PoolWorker::finish_provisioning(const std::string& vm_id) {
  auto r = pipeline_.execute(command("RecordPoolVmProvisioned",
                                     domain::RecordPoolVmProvisioned{vm_id, true, ""}));
  if (r.ok()) {
    provisioning_since_.erase(vm_id);
    return true;
  }
  int64_t now = clock_();
  auto it = provisioning_since_.find(vm_id);
  if (it == provisioning_since_.end()) {
    // Found after a restart: give it one provision timeout from now.
    provisioning_since_[vm_id] = now;
  } else if (now - it->second > opts_.provision_timeout.count()) {
    (void)submit(command("RecordPoolVmProvisioned",
                         domain::RecordPoolVmProvisioned{
                             vm_id, false, "the defined domain was not observed on its host within " +
                                               std::to_string(opts_.provision_timeout.count()) + " ms"}));
    provisioning_since_.erase(it);
  }
  return false;
}

Status PoolWorker::ensure_running(const std::string& vm_id, const std::string& ticket,
                                  int64_t expires_ms, bool* defined_with_ticket) {
  if (defined_with_ticket != nullptr) *defined_with_ticket = false;
  struct Look {
    bool on = false;
    bool exists = false;
  };
  auto look = views_.read([&](const State& s) {
    Look l;
    const domain::Vm* v = s.hosts.vm(vm_id);
    if (v == nullptr) return l;
    l.exists = true;
    l.on = v->desired == "running" || running_like(v->observed);
    return l;
  });
  if (!look.exists) return not_found("vm " + vm_id + " not found");
  if (look.on) return Status::Ok();
  if (auto st = submit(command("AllocateDisplayPort", domain::AllocateDisplayPort{vm_id})); !st) return st;
  int port = views_.read([&](const State& s) {
    const domain::Vm* v = s.hosts.vm(vm_id);
    return v ? v->allocated_port : -1;
  });
  if (auto st = define_member(vm_id, port, ticket, expires_ms, false); !st) return st;
  if (defined_with_ticket != nullptr) *defined_with_ticket = true;
  return submit(command("RequestVmPower", domain::RequestVmPower{vm_id, "pw-" + random_hex(12),
                                                                 "start", std::nullopt}));
}

void PoolWorker::finish_removal(const std::string& vm_id) {
  struct Look {
    std::string host, name, observed, overlay, storage_pool;
    bool exists = false;
  };
  auto l = views_.read([&](const State& s) {
    Look k;
    const domain::PoolMember* m = s.pools.member(vm_id);
    if (m == nullptr) return k;
    k.host = m->host_id;
    k.name = m->name;
    k.overlay = m->overlay;
    const domain::Pool* p = s.pools.pool(m->pool_id);
    k.storage_pool = p == nullptr || p->tmpl.storage_pool.empty() ? "default" : p->tmpl.storage_pool;
    const domain::Vm* v = s.hosts.vm(vm_id);
    k.observed = v ? v->observed : "missing";
    k.exists = true;
    return k;
  });
  if (!l.exists || running_like(l.observed) || l.observed == "paused") return;  // still stopping
  // The overlay volume goes with the domain (a missing one is fine).
  auto delete_overlay = [&](HypervisorConnection& c) -> Status {
    if (l.overlay.empty()) return Status::Ok();
    auto path = c.volume_path(l.storage_pool, l.overlay);
    if (!path.ok()) return path.error().code == Code::not_found ? Status::Ok() : Status(path.error());
    Status d = c.delete_volume(*path);
    if (!d.ok() && d.error().code == Code::not_found) return Status::Ok();
    return d;
  };
  Status st = Status::Ok();
  if (l.observed != "missing" && hosts_ != nullptr) {
    st = hosts_->with_connection(l.host, [&](HypervisorConnection& c) -> Status {
      Status u = c.undefine(l.name);
      if (!u.ok() && u.error().code != Code::not_found) return u;
      return delete_overlay(c);
    });
  } else if (hosts_ != nullptr && !l.overlay.empty()) {
    // The domain is gone (or its host is): remove its disk if the host is reachable; a
    // removed or unreachable host keeps the volume (nothing else can be done here).
    (void)hosts_->with_connection(l.host, delete_overlay);
  }
  if (!st.ok() && st.error().code == Code::unavailable) return;  // host not connected: later
  (void)submit(command("RecordPoolVmRemoved",
                       domain::RecordPoolVmRemoved{vm_id, st.ok(), st.ok() ? "" : st.error().message}));
}

void PoolWorker::finish_refresh(const std::string& vm_id) {
  std::string observed = views_.read([&](const State& s) {
    const domain::Vm* v = s.hosts.vm(vm_id);
    return v ? v->observed : std::string("missing");
  });
  if (running_like(observed) || observed == "paused" || observed == "shutting_down") return;
  // The definition is rewritten from the template (fresh display password) and an overlay disk
  // is recreated empty over the base volume, so nothing of the last user's data or settings
  // stays (diskless members are clean after a power cycle anyway).
  int version = 0;
  Status st = define_member(vm_id, -1, random_hex(12), 0, true, &version);
  if (!st.ok() && st.error().code == Code::unavailable) return;
  (void)submit(command("RecordPoolVmRefreshed", domain::RecordPoolVmRefreshed{
                                                    vm_id, st.ok(), st.ok() ? "" : st.error().message, version}));
}

void PoolWorker::run_once() {
  std::lock_guard pass(pass_mu_);
  int64_t now = clock_();
  struct Work {
    std::vector<std::pair<std::string, domain::SparePlan>> plans;
    std::vector<std::string> provisioning, removing, refreshing, resetting;
    std::vector<domain::PowerAction> actions;
  };
  Work w = views_.read([&](const State& s) {
    Work k;
    std::vector<std::string> ids;
    for (const auto& [id, p] : s.pools.pools) ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    for (const auto& id : ids) k.plans.emplace_back(id, domain::plan_spares(s, *s.pools.pool(id)));
    for (const auto& [id, m] : s.pools.members) {
      if (m.state == "provisioning") k.provisioning.push_back(id);
      if (m.state == "removing") k.removing.push_back(id);
      if (m.state == "refreshing") k.refreshing.push_back(id);
      if (!m.display_reset.empty()) k.resetting.push_back(id);
    }
    domain::SessionLiveness live;
    if (const pipeline::Liveness* l = liveness_) {
      live.started_at_ms = l->started_at_ms();
      live.client_seen = [l](const std::string& id) { return l->client_seen_ms(id); };
    }
    k.actions = domain::power_actions(s, now, opts_.client_timeout.count(), live);
    return k;
  });
  for (const auto& id : w.provisioning) {
    finish_provisioning(id);
  }
  for (const auto& a : w.actions) {
    if (a.kind == "deactivate_session") {
      (void)submit(command("DeactivateSession", domain::DeactivateSession{a.id, a.reason}));
    } else if (a.kind == "end_session") {
      (void)submit(command("EndDesktopSession",
                           domain::EndDesktopSession{a.id, a.reason, "pw-" + random_hex(12)}));
    } else if (a.kind == "shutdown_vm") {
      (void)submit(command("SetMemberPower",
                           domain::SetMemberPower{a.id, "shutdown", "pw-" + random_hex(12)}));
    }
  }
  for (const auto& [pool_id, plan] : w.plans) {
    for (const auto& vm : plan.remove) {
      (void)submit(command("RemovePoolVm", domain::RemovePoolVm{vm, "pool shrink or deletion"}));
    }
    for (const auto& vm : plan.refresh) {
      (void)submit(command("RefreshPoolVm",
                           domain::RefreshPoolVm{vm, "template_updated", "pw-" + random_hex(12)}));
    }
    for (const auto& vm : plan.start) (void)ensure_running(vm, random_hex(12), 0, nullptr);
    for (int i = 0; i < plan.provision; ++i) {
      if (auto it = pool_backoff_until_.find(pool_id); it != pool_backoff_until_.end() && it->second > now) break;
      (void)provision(pool_id);
    }
    if (plan.finish_deletion) {
      (void)submit(command("FinishPoolDeletion", domain::FinishPoolDeletion{pool_id}));
    }
  }
  for (const auto& id : w.removing) finish_removal(id);
  for (const auto& id : w.refreshing) finish_refresh(id);
  for (const auto& id : w.resetting) reset_display(id, now);
  retire_tickets(now);
}

Result<DisplayGrant> PoolWorker::prepare_display(const std::string& session_id) {
  struct Look {
    std::string vm, host, name, address, ca, subject;
    bool found = false;
  };
  auto l = views_.read([&](const State& s) {
    Look k;
    const domain::DesktopSession* d = s.pools.session(session_id);
    if (d == nullptr || !d->live()) return k;
    const domain::PoolMember* m = s.pools.member(d->vm_id);
    const domain::Host* h = s.hosts.host(d->host_id);
    if (m == nullptr || h == nullptr) return k;
    k.vm = d->vm_id;
    k.host = d->host_id;
    k.name = m->name;
    k.address = h->address;
    k.ca = h->spice_ca_cert;
    k.subject = h->spice_host_subject;
    k.found = true;
    return k;
  });
  if (!l.found) return not_found("session " + session_id + " not found or ended");
  DisplayGrant g;
  g.host = l.address;
  g.tls = !l.ca.empty();
  g.ca_cert = l.ca;
  g.host_subject = l.subject;
  g.ticket = random_hex(12);
  g.expires_at_ms = clock_() + opts_.ticket_ttl.count();
  bool booted_with_ticket = false;
  if (auto st = ensure_running(l.vm, g.ticket, g.expires_at_ms, &booted_with_ticket); !st) {
    return st.error();
  }
  // Wait (bounded) until the VM runs with a known display port.
  auto deadline = std::chrono::steady_clock::now() + opts_.launch_wait;
  for (;;) {
    int port = views_.read([&](const State& s) {
      const domain::Vm* v = s.hosts.vm(l.vm);
      if (v == nullptr || !running_like(v->observed)) return -1;
      return v->display_port >= 0 ? v->display_port : v->allocated_port;
    });
    if (port > 0) {
      g.port = port;
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return Error::make(Code::unavailable,
                         "desktop did not start within " + std::to_string(opts_.launch_wait.count()) + " ms",
                         "vm_start_timeout");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::lock_guard display(display_mu_);
  if (booted_with_ticket) {
    // Booted with the ticket (and its expiry) in its display definition.
    g.ticket_applied = true;
    g.note = "set in the domain definition at start";
  } else if (hosts_ == nullptr) {
    g.note = "no host manager runs";
  } else {
    // A reconnect: whoever is still attached with an older ticket is dropped, so the display
    // follows the newest launch and no earlier ticket stays usable.
    Status st = hosts_->with_connection(l.host, [&](HypervisorConnection& c) {
      return c.set_display_password(l.name, g.ticket, g.expires_at_ms / 1000, ConnectedClients::disconnect);
    });
    g.ticket_applied = st.ok();
    if (!st.ok()) g.note = "the hypervisor did not accept the ticket: " + st.error().message;
  }
  (void)submit(command("RecordSessionTicket", domain::RecordSessionTicket{
                                                 session_id, g.expires_at_ms, g.ticket_applied, g.note}));
  return g;
}

void PoolWorker::end_failed_launch(const std::string& session_id, const std::string& reason) {
  (void)submit(command("EndDesktopSession",
                       domain::EndDesktopSession{session_id, reason, "pw-" + random_hex(12)}));
}

void PoolWorker::retire_tickets(int64_t now) {
  if (hosts_ == nullptr) return;
  struct Due {
    std::string session, vm, host, name;
    int64_t issued = 0;
  };
  auto due = views_.read([&](const State& s) {
    std::vector<Due> out;
    for (const auto& [uid, ids] : s.pools.live_by_user) {
      for (const auto& id : ids) {
        const domain::DesktopSession* d = s.pools.session(id);
        if (d == nullptr || !d->ticket_applied || d->ticket_retired || d->ticket_expires_at_ms <= now) continue;
        const domain::PoolMember* m = s.pools.member(d->vm_id);
        if (m == nullptr) continue;
        out.push_back({d->id, d->vm_id, d->host_id, m->name, d->ticket_issued_at_ms});
      }
    }
    return out;
  });
  for (const Due& d : due) {
    auto wave = hosts_->display_wave(d.vm);
    // The client that authenticated with this ticket, after it was issued, has all its
    // channels open: the ticket has done its job.
    if (!wave || wave->wave_started_ms < d.issued || !domain::display_wave_complete(*wave, now)) continue;
    std::lock_guard display(display_mu_);
    bool still_due = views_.read([&](const State& s) {
      const domain::DesktopSession* x = s.pools.session(d.session);
      return x != nullptr && x->live() && !x->ticket_retired && x->ticket_issued_at_ms == d.issued;
    });
    if (!still_due) continue;
    Status st = hosts_->with_connection(d.host, [&](HypervisorConnection& c) {
      return c.set_display_password(d.name, random_hex(16), now / 1000 + 1, ConnectedClients::keep);
    });
    if (!st.ok() && st.error().code == Code::unavailable) continue;  // host not connected: later
    (void)submit(command("RetireSessionTicket",
                         domain::RetireSessionTicket{d.session, st.ok(),
                                                     st.ok() ? "" : "the hypervisor did not change the password: " +
                                                                         st.error().message}));
  }
}

void PoolWorker::reset_display(const std::string& vm_id, int64_t now) {
  struct Look {
    std::string host, name, observed, reset, desired;
    bool exists = false;
  };
  auto look = [&] {
    return views_.read([&](const State& s) {
      Look l;
      const domain::PoolMember* m = s.pools.member(vm_id);
      const domain::Vm* v = s.hosts.vm(vm_id);
      if (m == nullptr || v == nullptr || m->display_reset.empty()) return l;
      l.exists = true;
      l.host = m->host_id;
      l.name = m->name;
      l.reset = m->display_reset;
      l.observed = v->observed;
      l.desired = v->desired;
      return l;
    });
  };
  auto record = [&](const std::string& note) {
    reset_progress_.erase(vm_id);
    (void)submit(command("RecordDisplayReset", domain::RecordDisplayReset{vm_id, true, note}));
  };
  std::lock_guard display(display_mu_);
  Look l = look();
  if (!l.exists) {
    reset_progress_.erase(vm_id);
    return;
  }
  if (!running_like(l.observed) && l.observed != "paused" && l.observed != "shutting_down") {
    record("the vm is " + l.observed + ": no display client can be attached");
    return;
  }
  ResetProgress& p = reset_progress_.emplace(vm_id, ResetProgress{now}).first->second;
  if (p.powered_off) return;  // the fallback below: recorded once the VM is observed off
  auto attached = [&] {
    auto w = hosts_ ? hosts_->display_wave(vm_id) : std::nullopt;
    return w && (w->initialized > 0 || w->connecting > 0);
  };
  bool timed_out = now - p.since > opts_.display_reset_timeout.count();
  if (!p.rotated) {
    Status st = hosts_ == nullptr ? Status(Error::make(Code::unavailable, "no host manager runs"))
                                  : hosts_->with_connection(l.host, [&](HypervisorConnection& c) {
                                      return c.set_display_password(l.name, random_hex(16), now / 1000 + 1,
                                                                    ConnectedClients::disconnect);
                                    });
    if (st.ok()) {
      p.rotated = true;
    } else if (st.error().code == Code::unavailable) {
      return;  // host not connected: nothing can be done from here until it is again
    } else if (st.error().code != Code::unavailable && !attached()) {
      // The hypervisor cannot change the password (libvirt's test driver) and no display
      // client is known to be attached: nothing to drop.
      record("no display client attached; the hypervisor did not change the password: " +
             st.error().message);
      return;
    }
  }
  if (p.rotated) {
    if (!attached()) {
      record("display password rotated with connected='disconnect': no client is attached");
      return;
    }
    if (!timed_out) return;  // clients are dropping
  }
  // Clients that do not go, or a password that cannot be changed while one is attached: power
  // the VM off, the only way to be sure the next user sees nobody else's display.
  p.powered_off = submit(command("RequestVmPower", domain::RequestVmPower{vm_id, "pw-" + random_hex(12),
                                                                         "destroy", std::nullopt}))
                      .ok();
}

}  // namespace atrium::adapters

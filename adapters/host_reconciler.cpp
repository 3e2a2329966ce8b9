#include "adapters/host_reconciler.h"

#include <algorithm>
#include <cstdio>
#include <future>
#include <set>
#include <vector>

#include "domain/hosts.h"

namespace atrium::adapters {

using domain::Json;
using domain::State;
using Ms = std::chrono::milliseconds;

// ---- metrics ----------------------------------------------------------------------------
namespace {
prometheus::Histogram::BucketBoundaries call_buckets() {
  return {0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30};
}
constexpr const char* kHostStates[] = {"connecting", "up", "disconnected", "alert", "maintenance",
                                       "removed"};
}  // namespace

HostMetrics::HostMetrics(prometheus::Registry& r) {
  hosts = &prometheus::BuildGauge()
               .Name("atrium_hosts")
               .Help("Hypervisor hosts by state")
               .Register(r);
  for (const char* s : kHostStates) hosts->Add({{"state", s}}).Set(0);
  vms = &prometheus::BuildGauge()
             .Name("atrium_vms")
             .Help("VMs by desired and observed power state (unknown while the host is not connected)")
             .Register(r);
  reconcile_duration = &prometheus::BuildHistogram()
                            .Name("atrium_reconcile_duration_seconds")
                            .Help("Duration of one reconcile pass of one host")
                            .Register(r)
                            .Add({}, call_buckets());
  libvirt_duration = &prometheus::BuildHistogram()
                          .Name("atrium_libvirt_call_duration_seconds")
                          .Help("Duration of libvirt calls by libvirt function")
                          .Register(r);
  libvirt_errors = &prometheus::BuildCounter()
                        .Name("atrium_libvirt_call_errors_total")
                        .Help("Failed libvirt calls by libvirt function")
                        .Register(r);
  ports_free = &prometheus::BuildGauge()
                    .Name("atrium_display_ports_free")
                    .Help("Free display ports per host")
                    .Register(r);
}

LibvirtCallObserver HostMetrics::observer() {
  return [this](std::string_view call, double seconds, bool ok) {
    std::string name(call);
    prometheus::Histogram* h;
    prometheus::Counter* c;
    {
      std::lock_guard lock(mu_);
      auto it = call_hist_.find(name);
      if (it == call_hist_.end()) {
        it = call_hist_.emplace(name, &libvirt_duration->Add({{"call", name}}, call_buckets())).first;
        call_err_[name] = &libvirt_errors->Add({{"call", name}});
      }
      h = it->second;
      c = call_err_[name];
    }
    h->Observe(seconds);
    if (!ok) c->Increment();
  };
}

void HostMetrics::refresh(const projections::Views& views) {
  struct Snap {
    std::map<std::string, int> by_state;
    std::map<std::pair<std::string, std::string>, int> vm_counts;
    std::map<std::pair<std::string, std::string>, int> free;  // (host id, name) -> ports
  };
  Snap snap = views.read([](const State& s) {
    Snap out;
    for (const auto& [id, h] : s.hosts.hosts) {
      out.by_state[h.state]++;
      if (h.state != "removed") out.free[{h.id, h.name}] = s.hosts.ports_free(h.id);
    }
    for (const auto& [id, v] : s.hosts.vms) {
      out.vm_counts[{v.desired, domain::shown_observed(s.hosts, v)}]++;
    }
    return out;
  });
  std::lock_guard lock(mu_);
  for (const char* st : kHostStates) hosts->Add({{"state", st}}).Set(snap.by_state[st]);
  for (auto& [k, g] : vm_gauges_) g->Set(0);
  for (const auto& [k, n] : snap.vm_counts) {
    auto it = vm_gauges_.find(k);
    if (it == vm_gauges_.end()) {
      it = vm_gauges_.emplace(k, &vms->Add({{"desired", k.first}, {"observed", k.second}})).first;
    }
    it->second->Set(n);
  }
  for (auto it = port_gauges_.begin(); it != port_gauges_.end();) {
    if (snap.free.count(it->first) == 0) {
      ports_free->Remove(it->second);
      it = port_gauges_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [host, n] : snap.free) {
    auto it = port_gauges_.find(host);
    if (it == port_gauges_.end()) {
      it = port_gauges_
               .emplace(host, &ports_free->Add({{"host", host.first}, {"host_name", host.second}}))
               .first;
    }
    it->second->Set(n);
  }
}

// ---- manager ----------------------------------------------------------------------------
struct HostManager::Worker {
  std::string host_id;
  std::thread thread;
  std::atomic<bool> done{false};

  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  bool relist = true;
  bool views_changed = true;
  bool lost = false;
  bool display_changed = false;  // a VM's display gained its first or lost its last client
  std::string lost_reason;
  std::shared_ptr<HypervisorConnection> conn;  // guarded by mu (the worker also keeps a copy)
  uint64_t epoch = 0;

  // Worker-thread only.
  std::map<std::string, int64_t> shutdown_deadline;  // vm id -> when to destroy
  std::map<std::string, int> correction_attempts;    // vm id -> failed corrections
  std::map<std::string, std::string> correction_error;
  std::map<std::string, int64_t> correction_not_before;
};

HostManager::HostManager(pipeline::Pipeline& pipeline, projections::Views& views,
                         std::shared_ptr<Hypervisor> hypervisor, HostManagerOptions options,
                         pipeline::Clock clock, HostMetrics* metrics)
    : pipeline_(pipeline),
      views_(views),
      hypervisor_(std::move(hypervisor)),
      opts_(options),
      clock_(std::move(clock)),
      metrics_(metrics) {}

HostManager::~HostManager() { stop(); }

namespace {

pipeline::Command reconciler_command(
    std::string name,
    std::function<Result<domain::Events>(const State&, const domain::Context&)> decide) {
  pipeline::Command c;
  c.name = std::move(name);
  c.decide = std::move(decide);
  c.meta.actor = "reconciler";
  c.meta.correlation_id = "reconciler";
  return c;
}

template <typename C>
pipeline::Command cmd(const char* name, C c) {
  return reconciler_command(name, pipeline::decide_command(name, std::move(c)).decide);
}

Json caps_json(const HostCapabilities& c) {
  return Json{{"cpu_model", c.cpu_model},
              {"cpus", c.cpus},
              {"memory_kib", c.memory_kib},
              {"hypervisor", c.hypervisor},
              {"hypervisor_version", c.hypervisor_version},
              {"libvirt_version", c.libvirt_version},
              {"hostname", c.hostname},
              {"storage_pools", c.storage_pools},
              {"networks", c.networks}};
}

bool running_state(const std::string& s) { return s == "running" || s == "blocked"; }
bool satisfies(const std::string& desired, const std::string& observed) {
  if (desired == "running") return running_state(observed);
  if (desired == "shut_off") return observed == "shut_off" || observed == "missing";
  return true;
}

void log(const std::string& msg) { std::fprintf(stderr, "host-reconciler: %s\n", msg.c_str()); }

}  // namespace

void HostManager::recover_operations() {
  struct Todo {
    std::string id;
    std::string why;
  };
  auto todo = views_.read([](const State& s) {
    std::vector<Todo> out;
    for (const auto& [id, op] : s.hosts.operations) {
      if (!op.active()) continue;
      if (op.kind == "vm_power") {
        const domain::Vm* v = s.hosts.vm(op.target);
        if (v == nullptr) {
          out.push_back({id, "the VM no longer exists"});
        } else if (op.state == "running" && op.action == "reboot") {
          out.push_back({id, "interrupted by a daemon restart before the reboot was confirmed"});
        }
      } else if (op.kind == "connect_host") {
        const domain::Host* h = s.hosts.host(op.target);
        if (h == nullptr || h->state == "removed" || h->state == "alert") {
          out.push_back({id, "the host is no longer being connected"});
        }
      }
    }
    return out;
  });
  for (const auto& t : todo) {
    auto r = pipeline_.execute(cmd("FailOperation", domain::FailOperation{t.id, t.why}));
    if (!r.ok()) log("cannot fail operation " + t.id + ": " + r.error().message);
  }
}

void HostManager::start() {
  {
    std::lock_guard lock(mu_);
    if (running_) return;
    running_ = true;
    stopping_ = false;
  }
  recover_operations();
  scanner_ = std::thread([this] { scan_loop(); });
}

void HostManager::stop() {
  std::map<std::string, std::shared_ptr<Worker>> ws;
  {
    std::lock_guard lock(mu_);
    if (!running_) return;
    stopping_ = true;
    ws.swap(workers_);
  }
  cv_.notify_all();
  if (scanner_.joinable()) scanner_.join();
  // The scanner may have added workers before it saw stopping_.
  {
    std::lock_guard lock(mu_);
    for (auto& [k, w] : workers_) ws[k] = w;
    workers_.clear();
  }
  for (auto& [id, w] : ws) {
    {
      std::lock_guard lock(w->mu);
      w->stop = true;
    }
    w->cv.notify_all();
  }
  for (auto& [id, w] : ws) {
    if (w->thread.joinable()) w->thread.join();
  }
  std::lock_guard lock(mu_);
  running_ = false;
}

size_t HostManager::worker_count() const {
  std::lock_guard lock(mu_);
  return workers_.size();
}

Status HostManager::with_connection(const std::string& host_id,
                                    const std::function<Status(HypervisorConnection&)>& fn) {
  std::shared_ptr<Worker> w;
  {
    std::lock_guard lock(mu_);
    auto it = workers_.find(host_id);
    if (it != workers_.end()) w = it->second;
  }
  if (!w) return Error::make(Code::unavailable, "no worker for host " + host_id);
  std::shared_ptr<HypervisorConnection> c;
  {
    std::lock_guard lock(w->mu);
    c = w->conn;
  }
  if (!c) return Error::make(Code::unavailable, "host " + host_id + " is not connected");
  return fn(*c);
}

void HostManager::simulate_connection_lost(const std::string& host_id) {
  std::shared_ptr<Worker> w;
  {
    std::lock_guard lock(mu_);
    auto it = workers_.find(host_id);
    if (it != workers_.end()) w = it->second;
  }
  if (!w) return;
  {
    std::lock_guard lock(w->mu);
    w->lost = true;
    w->lost_reason = "simulated";
  }
  w->cv.notify_all();
}

void HostManager::scan_loop() {
  uint64_t seen = UINT64_MAX;
  std::unique_lock lock(mu_);
  while (!stopping_) {
    lock.unlock();
    uint64_t pos = views_.position();
    if (pos != seen) {
      seen = pos;
      scan_once();
    }
    lock.lock();
    cv_.wait_for(lock, opts_.poll_interval, [&] { return stopping_; });
  }
}

// Starts workers for hosts that need one, reaps finished ones, and wakes all of them
// because the views moved.
void HostManager::scan_once() {
  auto wanted = views_.read([](const State& s) {
    std::set<std::string> out;
    for (const auto& [id, h] : s.hosts.hosts) {
      if (h.state == "connecting" || h.state == "up" || h.state == "disconnected" ||
          h.state == "maintenance") {
        out.insert(id);
      }
    }
    return out;
  });
  std::vector<std::shared_ptr<Worker>> finished;
  std::vector<std::shared_ptr<Worker>> all;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (it->second->done.load()) {
        finished.push_back(it->second);
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    for (const auto& id : wanted) {
      if (workers_.count(id) != 0) continue;
      auto w = std::make_shared<Worker>();
      w->host_id = id;
      workers_[id] = w;
      w->thread = std::thread([this, w] { run_worker(w); });
    }
    for (auto& [id, w] : workers_) all.push_back(w);
  }
  for (auto& w : finished) {
    if (w->thread.joinable()) w->thread.join();
  }
  for (auto& w : all) {
    {
      std::lock_guard lock(w->mu);
      w->views_changed = true;
    }
    w->cv.notify_all();
  }
}

namespace {

struct HostSnap {
  bool exists = false;
  domain::Host host;
  std::string connect_op_pending;  // the host's connect operation, if still pending
};

struct VmSnap {
  std::string id, name, desired, observed, op_id, op_state, op_action;
  bool drift = false;
  bool managed = false;
};

}  // namespace

void HostManager::run_worker(const std::shared_ptr<Worker>& w) {
  const std::string hid = w->host_id;
  std::shared_ptr<HypervisorConnection> conn;
  Ms backoff = opts_.backoff_initial;
  int64_t next_resync = 0;
  auto stopped = [&] {
    std::lock_guard lock(w->mu);
    return w->stop;
  };
  auto exec = [&](pipeline::Command c) { return pipeline_.execute(std::move(c)); };
  auto drop_connection = [&] {
    if (conn) (void)conn->close();
    conn.reset();
    std::lock_guard lock(w->mu);
    w->conn.reset();
    w->lost = false;
  };
  // Waits until stop or `until_ms`, or (if `wake_on_change`) a wake-up flag is set.
  auto wait_until = [&](int64_t until_ms, bool wake_on_change) {
    std::unique_lock lock(w->mu);
    while (!w->stop) {
      if (wake_on_change && (w->relist || w->views_changed || w->lost || w->display_changed)) return;
      int64_t left = until_ms - clock_();
      if (left <= 0) return;
      w->cv.wait_for(lock, Ms(std::min<int64_t>(left, 1000)));
    }
  };

  while (!stopped()) {
    HostSnap hs = views_.read([&](const State& s) {
      HostSnap out;
      if (const domain::Host* h = s.hosts.host(hid)) {
        out.exists = true;
        out.host = *h;
        const domain::Operation* op = s.hosts.operation(h->connect_operation);
        if (op != nullptr && op->state == "pending") out.connect_op_pending = op->id;
      }
      return out;
    });
    const std::string& state = hs.host.state;
    if (!hs.exists || state == "removed" || state == "alert") break;

    // ---- connect ------------------------------------------------------------------------
    if (!conn) {
      if (!hs.connect_op_pending.empty()) {
        (void)exec(cmd("BeginOperations",
                       domain::BeginOperations{hid, hs.host.epoch, {hs.connect_op_pending}}));
      }
      if (auto allowed = domain::check_host_uri(hs.host.uri, opts_.uri_policy); !allowed) {
        log("host " + hid + ": not connecting: " + allowed.error().message);
        (void)exec(cmd("RecordHostConnectFailed",
                       domain::RecordHostConnectFailed{hid, allowed.error().message, false, true}));
        break;  // alert now; POST .../activate checks again
      }
      ConnectOptions co;
      co.uri = hs.host.uri;
      co.keepalive_interval_s = opts_.keepalive_interval_s;
      co.keepalive_count = opts_.keepalive_count;
      co.timeout = opts_.call_timeout;
      auto c = hypervisor_->connect(co);
      Result<HostCapabilities> caps = Error::make(Code::unavailable, "not connected");
      if (c.ok()) {
        conn = std::shared_ptr<HypervisorConnection>(std::move(*c));
        caps = conn->capabilities();
      }
      if (!c.ok() || !caps.ok()) {
        std::string msg = c.ok() ? caps.error().message : c.error().message;
        drop_connection();
        bool final = clock_() - hs.host.state_since_ms >= opts_.connect_timeout.count();
        (void)exec(cmd("RecordHostConnectFailed", domain::RecordHostConnectFailed{hid, msg, final}));
        if (final && state != "maintenance") break;
        wait_until(clock_() + backoff.count(), false);
        backoff = std::min(backoff * 2, opts_.backoff_max);
        continue;
      }
      auto weak = std::weak_ptr<Worker>(w);
      Status sub = conn->subscribe(
          [this, weak, hid](const DomainEvent& ev) {
            // A domain that stopped has no display clients left, and QEMU, gone, reports no
            // disconnects for them.
            if ((ev.state == DomainState::shut_off || ev.state == DomainState::crashed) && !weak.expired()) {
              on_display_stopped(hid, ev.uuid);
            }
            if (auto wk = weak.lock()) {
              {
                std::lock_guard lock(wk->mu);
                wk->relist = true;
              }
              wk->cv.notify_all();
            }
          },
          [weak](std::string reason) {
            if (auto wk = weak.lock()) {
              {
                std::lock_guard lock(wk->mu);
                wk->lost = true;
                wk->lost_reason = std::move(reason);
              }
              wk->cv.notify_all();
            }
          },
          [this, weak, hid](const DisplayClientEvent& ev) {
            if (weak.expired()) return;
            on_display_event(hid, ev);
          });
      if (!sub.ok()) log("host " + hid + ": no lifecycle events: " + sub.error().message);
      uint64_t epoch = std::max(hs.host.epoch, w->epoch) + 1;
      auto r = exec(cmd("RecordHostConnected", domain::RecordHostConnected{hid, epoch, caps_json(*caps)}));
      if (!r.ok() || r->first_position == 0) {
        // Refused or ignored (host removed or in alert meanwhile): let go of the connection.
        drop_connection();
        if (r.ok()) continue;
        wait_until(clock_() + backoff.count(), false);
        continue;
      }
      {
        std::lock_guard lock(w->mu);
        w->conn = conn;
        w->epoch = epoch;
        w->relist = true;
        w->lost = false;
      }
      w->shutdown_deadline.clear();
      backoff = opts_.backoff_initial;
      continue;
    }

    // ---- connection lost ----------------------------------------------------------------
    bool lost;
    std::string lost_reason;
    bool relist;
    {
      std::lock_guard lock(w->mu);
      lost = w->lost;
      lost_reason = w->lost_reason;
      relist = w->relist;
      w->relist = false;
      w->views_changed = false;
    }
    if (!lost && !conn->is_alive()) {
      lost = true;
      lost_reason = "connection not alive";
    }
    if (lost) {
      (void)exec(cmd("RecordHostDisconnected", domain::RecordHostDisconnected{hid, w->epoch, lost_reason}));
      drop_connection();
      continue;
    }
    bool display_changed;
    {
      std::lock_guard lock(w->mu);
      display_changed = w->display_changed;
      w->display_changed = false;
    }
    if (display_changed) report_display(hid, w->epoch);

    auto pass_start = std::chrono::steady_clock::now();
    // ---- observe ------------------------------------------------------------------------
    if (relist || clock_() >= next_resync) {
      auto doms = conn->list_domains();
      if (!doms.ok()) {
        log("host " + hid + ": list_domains: " + doms.error().message);
        if (!conn->is_alive()) {
          std::lock_guard lock(w->mu);
          w->lost = true;
          w->lost_reason = "error";
        }
        wait_until(clock_() + backoff.count(), true);
        continue;
      }
      domain::RecordDomainsObserved obs{hid, w->epoch, {}};
      obs.domains.reserve(doms->size());
      for (const auto& d : *doms) {
        obs.domains.push_back({d.name, d.uuid, to_string(d.state), d.display_port});
      }
      auto r = exec(cmd("RecordDomainsObserved", std::move(obs)));
      if (!r.ok()) log("host " + hid + ": observation not recorded: " + r.error().message);
      next_resync = clock_() + opts_.resync_interval.count();
    }

    // ---- reconcile ----------------------------------------------------------------------
    struct Plan {
      bool maintenance = false;
      bool stale = false;
      std::vector<VmSnap> vms;
    };
    Plan plan = views_.read([&](const State& s) {
      Plan p;
      const domain::Host* h = s.hosts.host(hid);
      if (h == nullptr || h->epoch != w->epoch || !h->connected) {
        p.stale = true;
        return p;
      }
      p.maintenance = h->state == "maintenance";
      for (const domain::Vm* v : s.hosts.vms_of(hid)) {
        bool active_op = false;
        const domain::Operation* op = s.hosts.operation(v->operation);
        active_op = op != nullptr && op->active();
        if (!active_op && !v->drift) continue;
        VmSnap vs{v->id, v->name, v->desired, v->observed, "", "", "", v->drift, v->managed()};
        if (active_op) {
          vs.op_id = op->id;
          vs.op_state = op->state;
          vs.op_action = op->action;
        }
        p.vms.push_back(std::move(vs));
      }
      return p;
    });
    if (plan.stale) {
      wait_until(clock_() + opts_.poll_interval.count(), true);
      continue;
    }

    int64_t now = clock_();
    int64_t next_wake = next_resync;
    std::vector<std::string> begin;
    struct Action {
      const VmSnap* vm;
      std::string call;  // start|shutdown|destroy|reboot
    };
    std::vector<Action> actions;
    std::vector<pipeline::Command> records;
    for (const VmSnap& v : plan.vms) {
      if (!v.op_id.empty()) {
        if (v.op_action != "reboot" && satisfies(v.desired, v.observed)) {
          w->shutdown_deadline.erase(v.id);
          records.push_back(cmd("RecordVmActionResult",
                                domain::RecordVmActionResult{v.id, w->epoch, v.op_id, v.op_action, true, ""}));
          continue;
        }
        if (v.op_action == "start" && plan.maintenance) {
          records.push_back(cmd("FailOperation",
                                domain::FailOperation{v.op_id, "host is in maintenance: no VM starts"}));
          continue;
        }
        if (v.op_state == "pending") begin.push_back(v.op_id);
        std::string call = v.op_action;
        if (call == "shutdown") {
          auto it = w->shutdown_deadline.find(v.id);
          if (it == w->shutdown_deadline.end()) {
            w->shutdown_deadline[v.id] = now + opts_.shutdown_timeout.count();
          } else if (now >= it->second) {
            call = "destroy";
          } else {
            next_wake = std::min(next_wake, it->second);
            continue;  // waiting for the guest
          }
        }
        if (v.op_state == "running" && call == "reboot") continue;  // sent already
        actions.push_back({&v, call});
        continue;
      }
      // Drift without an operation.
      if (!v.managed && !opts_.correct_unmanaged) {
        records.push_back(cmd("RecordDriftResolved",
                              domain::RecordDriftResolved{v.id, w->epoch, "given_up",
                                                          "unmanaged VM: the reconcile policy does not "
                                                          "correct VMs no pool manages"}));
        continue;
      }
      if (v.desired == "running" && plan.maintenance) continue;  // no starts in maintenance
      int attempts = w->correction_attempts[v.id];
      if (attempts >= opts_.max_correction_attempts) {
        records.push_back(cmd("RecordDriftResolved",
                              domain::RecordDriftResolved{v.id, w->epoch, "given_up",
                                                          "correction failed " + std::to_string(attempts) +
                                                              " times: " + w->correction_error[v.id]}));
        w->correction_attempts.erase(v.id);
        continue;
      }
      if (auto nb = w->correction_not_before.find(v.id);
          nb != w->correction_not_before.end() && now < nb->second) {
        next_wake = std::min(next_wake, nb->second);
        continue;
      }
      std::string call = v.desired == "running" ? "start" : "shutdown";
      if (call == "shutdown") {
        auto it = w->shutdown_deadline.find(v.id);
        if (it == w->shutdown_deadline.end()) {
          w->shutdown_deadline[v.id] = now + opts_.shutdown_timeout.count();
        } else if (now >= it->second) {
          call = "destroy";
        } else {
          next_wake = std::min(next_wake, it->second);
          continue;
        }
      }
      actions.push_back({&v, call});
    }
    // Deadlines and correction counts of VMs no longer driven are forgotten.
    for (auto* m : {&w->correction_attempts}) {
      for (auto it = m->begin(); it != m->end();) {
        bool keep = std::any_of(plan.vms.begin(), plan.vms.end(),
                                [&](const VmSnap& v) { return v.id == it->first && v.drift; });
        it = keep ? std::next(it) : m->erase(it);
      }
    }
    for (auto it = w->shutdown_deadline.begin(); it != w->shutdown_deadline.end();) {
      bool keep = std::any_of(plan.vms.begin(), plan.vms.end(), [&](const VmSnap& v) { return v.id == it->first; });
      it = keep ? std::next(it) : w->shutdown_deadline.erase(it);
    }

    if (opts_.before_side_effects && (!begin.empty() || !actions.empty())) opts_.before_side_effects(hid);
    if (!begin.empty()) {
      // An operation is carried out only once it is recorded as running in this broker's term:
      // a broker whose append is refused (fenced, not the leader, store down) calls nothing.
      auto r = exec(cmd("BeginOperations", domain::BeginOperations{hid, w->epoch, begin}));
      if (!r.ok()) {
        log("host " + hid + ": operations not begun, nothing called: " + r.error().message);
        wait_until(clock_() + backoff.count(), true);
        continue;
      }
    }
    for (const Action& a : actions) {
      const VmSnap& v = *a.vm;
      Status st = Status::Ok();
      if (a.call == "start") st = conn->start(v.name);
      else if (a.call == "shutdown") st = conn->shutdown(v.name);
      else if (a.call == "destroy") st = conn->destroy(v.name);
      else if (a.call == "reboot") st = conn->reboot(v.name);
      if (!v.op_id.empty()) {
        // A shutdown request that was sent is not a result yet: the observation completes it.
        if (a.call == "shutdown" && st.ok()) continue;
        records.push_back(cmd("RecordVmActionResult",
                              domain::RecordVmActionResult{v.id, w->epoch, v.op_id, v.op_action, st.ok(),
                                                           st.ok() ? "" : st.error().message}));
        if (!st.ok()) w->shutdown_deadline.erase(v.id);
      } else if (!st.ok()) {
        w->correction_attempts[v.id]++;
        w->correction_error[v.id] = st.error().message;
        w->correction_not_before[v.id] = clock_() + opts_.backoff_initial.count();
        w->shutdown_deadline.erase(v.id);
      } else {
        w->correction_not_before.erase(v.id);
      }
    }
    // Record every result in one group commit.
    std::vector<std::future<Result<pipeline::Outcome>>> futures;
    futures.reserve(records.size());
    for (auto& c : records) futures.push_back(pipeline_.submit(std::move(c)));
    for (auto& f : futures) {
      auto r = f.get();
      if (!r.ok()) log("host " + hid + ": result not recorded: " + r.error().message);
    }
    if (metrics_ != nullptr) {
      metrics_->reconcile_duration->Observe(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - pass_start).count());
    }
    if (!actions.empty()) {
      std::lock_guard lock(w->mu);
      w->relist = true;  // look at what the actions did
      continue;
    }
    wait_until(next_wake, true);
  }
  drop_connection();
  w->done = true;
  // Wake the scanner so it reaps this worker soon.
  cv_.notify_all();
}

// ---- display clients --------------------------------------------------------------------
void HostManager::on_display_event(const std::string& host_id, const DisplayClientEvent& ev) {
  if (ev.uuid.empty()) return;
  std::string vm_id = domain::vm_id_for(host_id, ev.uuid);
  std::string endpoint = ev.remote_address + "|" + ev.remote_service;
  bool changed = false;
  {
    std::lock_guard lock(display_mu_);
    DisplayTrack& t = display_[vm_id];
    t.host_id = host_id;
    t.last_event_ms = clock_();
    int before = 0;
    for (const auto& [k, init] : t.channels) before += init ? 1 : 0;
    if (ev.phase == "connect") {
      t.channels.emplace(endpoint, false);
    } else if (ev.phase == "initialize") {
      t.channels[endpoint] = true;
    } else if (ev.phase == "disconnect") {
      t.channels.erase(endpoint);
    }
    int after = 0;
    for (const auto& [k, init] : t.channels) after += init ? 1 : 0;
    if (before == 0 && after > 0) {
      t.wave_started_ms = t.last_event_ms;
      t.client_address = ev.remote_address;
    }
    changed = (after > 0) != t.reported_connected;
  }
  if (!changed) return;
  wake_display(host_id);
}

void HostManager::wake_display(const std::string& host_id) {
  std::shared_ptr<Worker> w;
  {
    std::lock_guard lock(mu_);
    if (auto it = workers_.find(host_id); it != workers_.end()) w = it->second;
  }
  if (!w) return;
  {
    std::lock_guard lock(w->mu);
    w->display_changed = true;
  }
  w->cv.notify_all();
}

void HostManager::on_display_stopped(const std::string& host_id, const std::string& uuid) {
  if (uuid.empty()) return;
  std::string vm_id = domain::vm_id_for(host_id, uuid);
  {
    std::lock_guard lock(display_mu_);
    auto it = display_.find(vm_id);
    if (it == display_.end() || it->second.channels.empty()) return;
    it->second.channels.clear();
    it->second.last_event_ms = clock_();
    if (!it->second.reported_connected) return;
  }
  wake_display(host_id);
}

void HostManager::report_display(const std::string& host_id, uint64_t epoch) {
  std::vector<domain::RecordDisplayClients> reports;
  {
    std::lock_guard lock(display_mu_);
    for (auto& [vm_id, t] : display_) {
      if (t.host_id != host_id) continue;
      bool connected = std::any_of(t.channels.begin(), t.channels.end(),
                                   [](const auto& c) { return c.second; });
      if (connected == t.reported_connected) continue;
      t.reported_connected = connected;
      reports.push_back({vm_id, epoch, connected, connected ? t.client_address : std::string()});
    }
  }
  for (auto& r : reports) {
    auto out = pipeline_.execute(cmd("RecordDisplayClients", std::move(r)));
    if (!out.ok()) log("host " + host_id + ": display clients not recorded: " + out.error().message);
  }
}

std::optional<domain::DisplayWave> HostManager::display_wave(const std::string& vm_id) const {
  std::lock_guard lock(display_mu_);
  auto it = display_.find(vm_id);
  if (it == display_.end()) return std::nullopt;
  domain::DisplayWave w;
  for (const auto& [k, init] : it->second.channels) (init ? w.initialized : w.connecting)++;
  w.wave_started_ms = it->second.wave_started_ms;
  w.last_event_ms = it->second.last_event_ms;
  return w;
}

void HostManager::inject_display_event(const std::string& host_id, const DisplayClientEvent& ev) {
  on_display_event(host_id, ev);
}

}  // namespace atrium::adapters

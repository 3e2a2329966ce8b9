#include "adapters/agent_monitor.h"

#include <cstdio>

#include "domain/state.h"

namespace atrium::adapters {

AgentMonitor::AgentMonitor(pipeline::Pipeline& pipeline, projections::Views& views,
                           pipeline::Liveness& liveness, AgentMonitorOptions options,
                           pipeline::Clock clock)
    : pipeline_(pipeline),
      views_(views),
      live_(liveness),
      opts_(options),
      clock_(std::move(clock)) {}

AgentMonitor::~AgentMonitor() {
  stop();
}

void AgentMonitor::start() {
  std::lock_guard l(mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] {
    std::unique_lock lock(mu_);
    while (!stopping_) {
      cv_.wait_for(lock, opts_.interval);
      if (stopping_) break;
      lock.unlock();
      run_once();
      lock.lock();
    }
  });
}

void AgentMonitor::stop() {
  {
    std::lock_guard l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int AgentMonitor::run_once() {
  int64_t now = clock_();
  domain::AgentTiming t{opts_.heartbeat_ms, opts_.grace_factor, live_.started_at_ms()};
  auto last = [this](const std::string& id) { return live_.last_beat_ms(id); };
  auto actions =
      views_.read([&](const domain::State& s) { return domain::agent_actions(s, last, now, t); });
  int recorded = 0;
  for (const auto& a : actions) {
    pipeline::Command c;
    c.meta.actor = "system";
    c.meta.correlation_id = "agent-monitor";
    if (a.kind == "unregister") {
      c.name = "UnregisterAgent";
      domain::UnregisterAgent u{a.agent_id, "missed_heartbeats", a.last_heartbeat_at_ms,
                                a.deadline_ms};
      // Decided against the newest heartbeat: one that arrived since this pass read the table
      // wins (nothing recorded).
      c.decide = [u, this, seen = a.last_heartbeat_at_ms](const domain::State& s,
                                                          const domain::Context& ctx) {
        if (live_.last_beat_ms(u.agent_id) > seen) return Result<domain::Events>(domain::Events{});
        return domain::decide(s, u, ctx);
      };
    } else if (a.kind == "sync_registration") {
      c = pipeline::decide_command("SyncAgentRegistration",
                                   domain::SyncAgentRegistration{a.agent_id});
    } else if (a.kind == "bind_vm") {
      c = pipeline::decide_command("BindAgent",
                                   domain::BindAgent{a.agent_id, "", a.vm_id, "vm_uuid"});
    } else {
      continue;
    }
    c.meta.actor = "system";
    c.meta.correlation_id = "agent-monitor";
    auto out = pipeline_.execute(std::move(c));
    if (out.ok() && out->last_position > 0) {
      ++recorded;
      if (a.kind == "unregister") {
        std::fprintf(
            stderr, "atriumd: agent %s unregistered: no heartbeat for %lld ms\n",
            a.agent_id.c_str(),
            static_cast<long long>(now - std::max(a.last_heartbeat_at_ms, t.started_at_ms)));
      }
    }
  }
  // Forget what is gone, now and then.
  if (++passes_ % 60 == 0) {
    views_.read([&](const domain::State& s) {
      live_.prune([&](const char* kind, const std::string& key) {
        std::string k = kind;
        if (k == "agent") {
          const domain::Agent* a = s.agents.find(key);
          return a != nullptr && !a->revoked();
        }
        if (k == "server") return s.appcloud.server(key) != nullptr;
        const domain::DesktopSession* d = s.pools.session(key);
        return d != nullptr && d->live();
      });
      return 0;
    });
  }
  return recorded;
}

}  // namespace atrium::adapters

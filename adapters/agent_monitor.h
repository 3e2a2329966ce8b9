// The agent monitor: one thread, level-based, every `interval`. Each pass reads the views and
// the liveness table and records what domain::agent_actions() says: agents that missed their
// heartbeats past interval x grace are unregistered (one AgentUnregistered each, with the
// reason; brokering stops sending users there), soft/hard changes the catalog made are
// recorded (AgentRegistrationChanged), unbound VM agents are bound to the VM whose UUID is
// their machine id. A broker that just started waits one full grace period before declaring
// anyone missing (Liveness::started_at_ms), so a restart does not unregister the fleet. It
// also forgets liveness entries of agents, servers and sessions that are gone.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "domain/agents.h"
#include "pipeline/liveness.h"
#include "pipeline/pipeline.h"
#include "projections/views.h"

namespace atrium::adapters {

struct AgentMonitorOptions {
  std::chrono::milliseconds interval{1000};
  int64_t heartbeat_ms = 30'000;
  int64_t grace_factor = 3;
};

class AgentMonitor {
 public:
  AgentMonitor(pipeline::Pipeline& pipeline, projections::Views& views,
               pipeline::Liveness& liveness, AgentMonitorOptions options,
               pipeline::Clock clock = pipeline::system_now_ms);
  ~AgentMonitor();
  AgentMonitor(const AgentMonitor&) = delete;
  AgentMonitor& operator=(const AgentMonitor&) = delete;

  void start();
  void stop();
  // One pass now (tests); returns the number of commands that recorded something.
  int run_once();

 private:
  pipeline::Pipeline& pipeline_;
  projections::Views& views_;
  pipeline::Liveness& live_;
  AgentMonitorOptions opts_;
  pipeline::Clock clock_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
  int passes_ = 0;
};

}  // namespace atrium::adapters

// The liveness table: what the broker knows only from repeated observations (agent heartbeats
// and their load figures, server load reports, desktop clients' reports), kept in memory, never
// in the log, the pipeline's decided state or snapshots. A log that grew with time alone would
// be a bug: only changes of state are events (domain/agents.h, domain/pools.h).
//
// Readers: the agent monitor (missed heartbeats), the pool worker's monitor (silent clients),
// placement (live load, copied into each launch decision), the agent views (last heartbeat,
// latest load). Forgotten on restart by design: started_at_ms() is when this table began to
// watch, and nobody counts as silent before it plus one full grace period.
//
// Thread-safe; sharded by key so that thousands of heartbeats a second from many HTTP
// workers do not queue on one lock.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "domain/appcloud.h"

namespace atrium::pipeline {

struct AgentBeat {
  int64_t at_ms = 0;
  double cpu_load = 0;
  double memory_load = 0;
  uint64_t disk_free_bytes = 0;
  uint32_t sessions = 0;
  std::string config_version;
  bool heartbeat = false;  // false: a registration (counts for the miss deadline only)
};

class Liveness {
 public:
  explicit Liveness(int64_t started_at_ms = 0) : started_at_ms_(started_at_ms) {}

  // The broker (re)started or became leader at now_ms: everything known is forgotten.
  void restart(int64_t now_ms);
  int64_t started_at_ms() const { return started_at_ms_.load(); }

  void agent_beat(const std::string& agent_id, const AgentBeat& b);
  std::optional<AgentBeat> agent(const std::string& agent_id) const;
  int64_t last_beat_ms(const std::string& agent_id) const;  // 0: none since the start

  // Live load of an application server (its agent's heartbeat, or a report by hand).
  void server_load(const std::string& server_id, const domain::LoadReport& l);
  std::optional<domain::LoadReport> load(const std::string& server_id) const;

  // A desktop client's report about its session.
  void client_seen(const std::string& session_id, int64_t at_ms);
  int64_t client_seen_ms(const std::string& session_id) const;  // 0: none since the start

  // Drops the entries `keep` refuses (kind "agent", "server" or "session"), e.g. ended sessions.
  void prune(const std::function<bool(const char* kind, const std::string& key)>& keep);

  struct Sizes {
    size_t agents = 0, servers = 0, sessions = 0;
  };
  Sizes sizes() const;

 private:
  static constexpr size_t kShards = 16;
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, AgentBeat> agents;
    std::unordered_map<std::string, domain::LoadReport> servers;
    std::unordered_map<std::string, int64_t> sessions;
  };
  Shard& shard(const std::string& key) const;
  std::atomic<int64_t> started_at_ms_;
  mutable std::array<Shard, kShards> shards_;
};

}  // namespace atrium::pipeline

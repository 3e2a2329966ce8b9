#include "pipeline/liveness.h"

namespace atrium::pipeline {

Liveness::Shard& Liveness::shard(const std::string& key) const {
  return shards_[std::hash<std::string>{}(key) % kShards];
}

void Liveness::restart(int64_t now_ms) {
  for (auto& s : shards_) {
    std::lock_guard l(s.mu);
    s.agents.clear();
    s.servers.clear();
    s.sessions.clear();
  }
  started_at_ms_ = now_ms;
}

void Liveness::agent_beat(const std::string& agent_id, const AgentBeat& b) {
  Shard& s = shard(agent_id);
  std::lock_guard l(s.mu);
  s.agents[agent_id] = b;
}

std::optional<AgentBeat> Liveness::agent(const std::string& agent_id) const {
  Shard& s = shard(agent_id);
  std::lock_guard l(s.mu);
  auto it = s.agents.find(agent_id);
  if (it == s.agents.end()) return std::nullopt;
  return it->second;
}

int64_t Liveness::last_beat_ms(const std::string& agent_id) const {
  Shard& s = shard(agent_id);
  std::lock_guard l(s.mu);
  auto it = s.agents.find(agent_id);
  return it == s.agents.end() ? 0 : it->second.at_ms;
}

void Liveness::server_load(const std::string& server_id, const domain::LoadReport& r) {
  Shard& s = shard(server_id);
  std::lock_guard l(s.mu);
  auto& kept = s.servers[server_id];
  if (r.reported_at_ms >= kept.reported_at_ms) kept = r;  // reports may arrive out of order
}

std::optional<domain::LoadReport> Liveness::load(const std::string& server_id) const {
  Shard& s = shard(server_id);
  std::lock_guard l(s.mu);
  auto it = s.servers.find(server_id);
  if (it == s.servers.end()) return std::nullopt;
  return it->second;
}

void Liveness::client_seen(const std::string& session_id, int64_t at_ms) {
  Shard& s = shard(session_id);
  std::lock_guard l(s.mu);
  int64_t& kept = s.sessions[session_id];
  if (at_ms > kept) kept = at_ms;
}

int64_t Liveness::client_seen_ms(const std::string& session_id) const {
  Shard& s = shard(session_id);
  std::lock_guard l(s.mu);
  auto it = s.sessions.find(session_id);
  return it == s.sessions.end() ? 0 : it->second;
}

void Liveness::prune(const std::function<bool(const char*, const std::string&)>& keep) {
  for (auto& s : shards_) {
    std::lock_guard l(s.mu);
    for (auto it = s.agents.begin(); it != s.agents.end();) {
      it = keep("agent", it->first) ? std::next(it) : s.agents.erase(it);
    }
    for (auto it = s.servers.begin(); it != s.servers.end();) {
      it = keep("server", it->first) ? std::next(it) : s.servers.erase(it);
    }
    for (auto it = s.sessions.begin(); it != s.sessions.end();) {
      it = keep("session", it->first) ? std::next(it) : s.sessions.erase(it);
    }
  }
}

Liveness::Sizes Liveness::sizes() const {
  Sizes z;
  for (auto& s : shards_) {
    std::lock_guard l(s.mu);
    z.agents += s.agents.size();
    z.servers += s.servers.size();
    z.sessions += s.sessions.size();
  }
  return z;
}

}  // namespace atrium::pipeline

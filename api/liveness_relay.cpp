#include "api/liveness_relay.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <vector>

#include "api/forwarder.h"
#include "domain/appcloud.h"

namespace atrium::api {

using domain::Json;

LivenessRelay::LivenessRelay(LivenessRelayOptions opts,
                             std::function<std::optional<std::string>()> leader,
                             std::function<int64_t()> now_ms)
    : opts_(std::move(opts)), leader_(std::move(leader)), now_ms_(std::move(now_ms)) {}

LivenessRelay::~LivenessRelay() {
  stop();
}

void LivenessRelay::start() {
  std::lock_guard l(mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { loop(); });
}

void LivenessRelay::stop() {
  {
    std::lock_guard l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void LivenessRelay::add(const std::string& agent_id, const pipeline::AgentBeat& beat,
                        const std::string& server_id, uint64_t position) {
  std::lock_guard l(mu_);
  pending_[agent_id] = Entry{beat, server_id, position};
}

size_t LivenessRelay::pending() const {
  std::lock_guard l(mu_);
  return pending_.size();
}

void LivenessRelay::loop() {
  std::unique_lock l(mu_);
  while (!stopping_) {
    cv_.wait_for(l, opts_.every);
    if (stopping_) break;
    if (pending_.empty()) continue;
    l.unlock();
    flush();
    l.lock();
  }
}

size_t LivenessRelay::flush() {
  std::lock_guard one(flush_mu_);
  auto url = leader_();
  std::unordered_map<std::string, Entry> batch;
  {
    std::lock_guard l(mu_);
    batch.swap(pending_);
  }
  if (!url || batch.empty()) return 0;  // leading (its own table has them) or nothing to do
  const int64_t now = now_ms_();
  std::vector<const std::pair<const std::string, Entry>*> items;
  items.reserve(batch.size());
  for (const auto& e : batch) items.push_back(&e);
  size_t taken = 0;
  std::vector<std::string> failed;
  for (size_t from = 0; from < items.size(); from += opts_.batch) {
    const size_t to = std::min(items.size(), from + opts_.batch);
    Json beats = Json::array();
    for (size_t i = from; i < to; ++i) {
      const auto& [id, e] = *items[i];
      Json b{{"agent_id", id},
             {"age_ms", std::max<int64_t>(0, now - e.beat.at_ms)},
             {"cpu_load", e.beat.cpu_load},
             {"memory_load", e.beat.memory_load},
             {"disk_free_bytes", e.beat.disk_free_bytes},
             {"sessions", e.beat.sessions},
             {"config_version", e.beat.config_version},
             {"heartbeat", e.beat.heartbeat}};
      if (!e.server_id.empty()) {
        b["server_id"] = e.server_id;
        b["position"] = e.position;
      }
      beats.push_back(std::move(b));
    }
    const std::string body = Json{{"beats", beats}}.dump();
    auto r = post_to_peer(*url, "/v1/cluster/liveness", body, "liveness", opts_.cluster_secret,
                          opts_.timeout);
    if (r && r->status == 200) {
      taken += to - from;
      continue;
    }
    static std::atomic<int64_t> logged{0};
    if (now - logged.load() >= 10'000) {
      logged = now;
      std::fprintf(stderr, "atriumd: relaying %zu heartbeats to the leader %s failed (%s); kept\n",
                   to - from, url->c_str(),
                   r ? ("HTTP " + std::to_string(r->status)).c_str() : "no answer");
    }
    for (size_t i = from; i < to; ++i) failed.push_back(items[i]->first);
  }
  if (!failed.empty()) {
    std::lock_guard l(mu_);
    for (const auto& id : failed) {
      auto& e = batch[id];
      auto it = pending_.find(id);
      if (it == pending_.end() || it->second.beat.at_ms < e.beat.at_ms) pending_[id] = e;
    }
  }
  return taken;
}

Result<size_t> apply_relayed_beats(const std::string& body, pipeline::Liveness& live,
                                   int64_t now_ms, int64_t max_age_ms) {
  Json j = Json::parse(body, nullptr, false);
  if (!j.is_object() || !j.contains("beats") || !j["beats"].is_array()) {
    return invalid("the body must be {beats: [...]}", "invalid_body");
  }
  size_t applied = 0;
  for (const auto& b : j["beats"]) {
    if (!b.is_object() || !b.contains("agent_id") || !b["agent_id"].is_string() ||
        !b.contains("age_ms") || !b["age_ms"].is_number_integer()) {
      return invalid("each beat needs agent_id and age_ms", "invalid_body");
    }
    const int64_t age = b["age_ms"].get<int64_t>();
    if (age < 0 || age > max_age_ms) continue;
    pipeline::AgentBeat beat;
    beat.at_ms = now_ms - age;
    beat.cpu_load = b.value("cpu_load", 0.0);
    beat.memory_load = b.value("memory_load", 0.0);
    beat.disk_free_bytes = b.value("disk_free_bytes", uint64_t{0});
    beat.sessions = b.value("sessions", uint32_t{0});
    beat.config_version = b.value("config_version", "");
    beat.heartbeat = b.value("heartbeat", true);
    const std::string id = b["agent_id"].get<std::string>();
    if (live.last_beat_ms(id) >= beat.at_ms) continue;  // it heard from the agent since
    live.agent_beat(id, beat);
    if (b.contains("server_id") && b["server_id"].is_string()) {
      domain::LoadReport l{beat.cpu_load, beat.memory_load, beat.sessions, beat.at_ms,
                           b.value("position", uint64_t{0})};
      if (domain::validate_load(l)) live.server_load(b["server_id"].get<std::string>(), l);
    }
    ++applied;
  }
  return applied;
}

}  // namespace atrium::api

// Agent liveness across the brokers of one shared log (issue 12, seed 001): any broker takes
// an agent's heartbeats, but only the leader's liveness table counts (its agent monitor
// unregisters the silent, its placement reads the loads). A follower answers a heartbeat
// from its own views and liveness, and this relay sends the latest beat of each agent to the
// leader in memory, in batches (POST /v1/cluster/liveness, signed with the cluster secret):
// never through the log, and one request a period whatever the number of agents.
//
// The beats carry their age, not the follower's clock: the leader dates each one by its own
// clock minus that age. A batch the leader did not take is kept (a newer beat of the same
// agent replaces it) and sent to whoever leads next.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "common/result.h"
#include "pipeline/liveness.h"

namespace atrium::api {

struct LivenessRelayOptions {
  std::string cluster_secret;
  std::chrono::milliseconds every{1000};
  size_t batch = 2000;  // beats per POST (about 200 bytes each, under the body limit)
  std::chrono::milliseconds timeout{5000};
};

class LivenessRelay {
 public:
  // `leader`: the leader's URL, nullopt when there is none or this broker leads (then
  // nothing is sent and what waits is dropped: this broker's own table has it).
  LivenessRelay(LivenessRelayOptions opts, std::function<std::optional<std::string>()> leader,
                std::function<int64_t()> now_ms);
  ~LivenessRelay();
  LivenessRelay(const LivenessRelay&) = delete;
  LivenessRelay& operator=(const LivenessRelay&) = delete;

  void start();
  void stop();

  // A heartbeat this follower accepted; `server_id`: the app server whose load it reports
  // ("" for none), `position`: this broker's log position when it came (LoadReport).
  void add(const std::string& agent_id, const pipeline::AgentBeat& beat,
           const std::string& server_id, uint64_t position);
  size_t pending() const;
  // One send now (tests); the number of beats the leader took.
  size_t flush();

 private:
  struct Entry {
    pipeline::AgentBeat beat;
    std::string server_id;
    uint64_t position = 0;
  };
  void loop();

  LivenessRelayOptions opts_;
  std::function<std::optional<std::string>()> leader_;
  std::function<int64_t()> now_ms_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> pending_;
  std::mutex flush_mu_;  // one flush at a time
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

// The leader's side of POST /v1/cluster/liveness: the batch `body` into `live`, each beat
// dated now_ms - its age (an age over `max_age_ms` is dropped; a beat older than the one the
// table has is ignored). The number of beats applied, or invalid_argument for a malformed
// batch.
Result<size_t> apply_relayed_beats(const std::string& body, pipeline::Liveness& live,
                                   int64_t now_ms, int64_t max_age_ms);

}  // namespace atrium::api

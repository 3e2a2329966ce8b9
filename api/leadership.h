// Leadership of a broker on a shared log (eventstore/shared_log.h): campaigns for the lease
// in the log's head row, renews it every TTL/3, and switches the pipeline and the
// side-effect workers (host reconcilers, pool worker) between leading and following.
//
// Taking the lease: the term is set on the store, the pipeline folds the log's tail, then
// on_lead runs (bootstrap, start the workers). Losing it (renew says the term passed, an
// append was fenced, or the lease could not be renewed before 4/5 of the TTL went by on
// this broker's monotonic clock): the pipeline refuses commands at once, on_step_down stops
// the workers, and only then is the term dropped; the broker follows again.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "eventstore/shared_log.h"
#include "pipeline/pipeline.h"

namespace atrium::api {

struct LeadershipOptions {
  std::string member_id;  // unique per process
  std::string url;        // advertised URL (forwarded writes)
  std::chrono::milliseconds ttl{10000};
  // How often a follower tries to take the lease (a dead leader's session ends at once,
  // so this bounds the failover time after a crash).
  std::chrono::milliseconds campaign_every{250};
  // The position this broker's views applied, reported with its role about once a second.
  std::function<uint64_t()> applied;
};

class Leadership {
 public:
  Leadership(eventstore::SharedLog& log, pipeline::Pipeline& pipeline, LeadershipOptions opts,
             std::function<void()> on_lead, std::function<void()> on_step_down);
  ~Leadership();
  Leadership(const Leadership&) = delete;
  Leadership& operator=(const Leadership&) = delete;

  void start();
  // Steps down if leading and releases the lease, so that a follower takes over at once.
  void stop();

  bool leading() const { return leading_.load(); }
  uint64_t term() const { return term_.load(); }
  const LeadershipOptions& options() const { return opts_; }

 private:
  void loop();
  bool campaign();
  void step_down(const std::string& why);
  bool wait(std::chrono::milliseconds d);  // false once stopping
  void report();                           // at most once a second

  eventstore::SharedLog& log_;
  pipeline::Pipeline& pipeline_;
  LeadershipOptions opts_;
  std::function<void()> on_lead_, on_step_down_;
  std::atomic<bool> leading_{false};
  std::atomic<uint64_t> term_{0};
  std::chrono::steady_clock::time_point deadline_{};
  std::chrono::steady_clock::time_point reported_{};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace atrium::api

// The one command pipeline. Commands from any thread go into a bounded queue; one writer
// thread takes every waiting command (group commit), decides each against the current
// state with the pure domain decider, appends the whole batch in one synced write, applies
// it to the read views, and only then completes each caller. A success means "on disk".
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>

#include "domain/state.h"
#include "eventstore/event_store.h"
#include "pipeline/metrics.h"
#include "projections/views.h"

namespace atrium::pipeline {

using Clock = std::function<int64_t()>;  // milliseconds since the epoch
int64_t system_now_ms();

struct CommandMeta {
  std::string actor;           // who acts; recorded on every event
  std::string correlation_id;  // the request id
  std::string causation_id;
  // Optional. Scoped by actor. The same key with the same fingerprint returns the first
  // outcome; with another fingerprint the command is refused (unprocessable).
  std::string idempotency_key;
  std::string fingerprint;  // e.g. a hash of method, path and body
};

struct Command {
  std::string name;  // for metrics and logs, e.g. "CreateUser"
  std::function<Result<domain::Events>(const domain::State&, const domain::Context&)> decide;
  // Builds the reply from the state right after this command's events (optional).
  std::function<domain::Json(const domain::State&)> render;
  int success_status = 200;
  CommandMeta meta;
};

// A command whose decision is domain::decide(state, c, ctx) for a domain command struct `c`
// (found by argument-dependent lookup, so this header needs no module's header).
template <typename C>
Command decide_command(std::string name, C c, int success_status = 200) {
  Command cmd;
  cmd.name = std::move(name);
  cmd.success_status = success_status;
  cmd.decide = [c = std::move(c)](const domain::State& s, const domain::Context& ctx) {
    return decide(s, c, ctx);
  };
  return cmd;
}

struct Outcome {
  int status = 200;
  domain::Json body;
  uint64_t first_position = 0;  // 0 when the command appended nothing
  uint64_t last_position = 0;
  bool replayed = false;  // answered from an earlier idempotent request
};

// The snapshot checkpoint: CBOR of {format, state: domain::state_to_json}.
std::string encode_snapshot(const domain::State& s);
// Its inverse: invalid_argument (never an exception, never a partial state) for bytes that
// are not a snapshot this binary can read.
Result<domain::State> decode_snapshot(std::string_view bytes);

struct PipelineOptions {
  size_t queue_capacity = 10000;
  size_t max_batch = 1000;
  // A snapshot is written in the background once this many events follow the last one,
  // and on stop(); 0 disables snapshots.
  uint64_t snapshot_every = 100000;
};

class Pipeline {
 public:
  Pipeline(eventstore::EventStore& store, projections::Views& views, Metrics& metrics,
           Clock clock = system_now_ms, PipelineOptions opts = {});
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // Rebuilds the writer state and the views from the log, then starts the writer thread.
  Status start();

  // Queues a command. The future completes after the batch holding it is durable (or
  // refused). Fails at once with unavailable when the queue is full or stopping.
  std::future<Result<Outcome>> submit(Command cmd);

  // submit() and wait. unavailable if no answer within `timeout` (the command may still
  // commit later; idempotency keys make a retry safe).
  Result<Outcome> execute(Command cmd,
                          std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Stops taking commands, finishes every queued one, stops the writer.
  void stop();

  // Writes the current views as a snapshot checkpoint (CBOR of domain::state_to_json) so
  // the next start replays only the events after it. Safe from any thread; readers are
  // blocked only while the state is copied.
  Status write_snapshot();
  uint64_t snapshot_position() const { return snapshot_position_.load(); }

  bool ready() const { return ready_.load(); }
  // False from a failed append until the store and the writer state are back (writes get
  // 503 storage_unavailable meanwhile; reads keep answering from the views).
  bool storage_ok() const { return storage_ok_.load(); }
  size_t queue_depth() const;
  uint64_t last_position() const { return store_.last_position(); }

  // Several brokers on one shared log (eventstore/shared_log.h): only the leader decides
  // commands. A follower (leading = false) refuses every command at once (unavailable,
  // reason not_leader) and its writer thread folds what the leader appends into the state
  // and the views instead; the new leader folds the whole tail before it decides anything.
  // Leading is the default (one broker on its own store).
  void set_leading(bool leading);
  bool leading() const { return leading_.load(); }

 private:
  struct Pending {
    Command cmd;
    std::promise<Result<Outcome>> promise;
  };
  void run();
  void run_snapshots();
  void process(std::vector<Pending>& batch);
  Status rebuild();
  void recover();  // store, then state, after a failed batch; broken until both are back
  Status tail();   // folds the events the store holds past state_ (writer thread)

  eventstore::EventStore& store_;
  projections::Views& views_;
  Metrics& metrics_;
  Clock clock_;
  PipelineOptions opts_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  bool stopping_ = false;
  std::atomic<bool> ready_{false};
  std::atomic<uint64_t> snapshot_position_{0};
  std::mutex snapshot_mu_;
  bool broken_ = false;  // writer thread only
  std::string broken_reason_;  // writer thread only
  std::atomic<bool> storage_ok_{true};
  std::atomic<bool> leading_{true};
  std::thread writer_;
  std::thread snapshotter_;
  std::condition_variable snapshot_cv_;  // with mu_

  domain::State state_;  // writer-private decision state
};

}  // namespace atrium::pipeline

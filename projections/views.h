// Read views: the domain state folded from durable events only, shared by many readers.
// The single writer applies each committed batch here before answering its callers, so a
// reader that got a 2xx sees its own write.
#pragma once

#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "domain/state.h"
#include "eventstore/event_store.h"

namespace atrium::projections {

// Turns a stored event back into a domain event. invalid_argument when data is not JSON.
Result<domain::Event> decode(const eventstore::RecordedEvent& e);

// Folds every stored event with position in (state.position, upto] into `state`.
// Returns the number of events applied.
Result<uint64_t> replay(const eventstore::EventStore& store, domain::State& state,
                        uint64_t upto = UINT64_MAX);

struct AppliedEvent {
  domain::Event event;
  domain::Applied at;
};

class Views {
 public:
  // Applies a committed batch atomically with respect to readers.
  void apply(const std::vector<AppliedEvent>& batch);

  // Replaces the whole state (start-up, or after the writer rebuilt its own).
  void reset(domain::State s);

  // Runs f(const State&) under a shared lock and returns its result.
  template <typename F>
  auto read(F&& f) const {
    std::shared_lock lock(mu_);
    return f(static_cast<const domain::State&>(state_));
  }

  uint64_t position() const {
    std::shared_lock lock(mu_);
    return state_.position;
  }

  // The state as it was right after event `position` (audit replay). Rebuilt from the log;
  // the last answer is cached since auditors tend to page through one point in time.
  Result<domain::State> as_of(const eventstore::EventStore& store, uint64_t position) const;

 private:
  mutable std::shared_mutex mu_;
  domain::State state_;
  mutable std::mutex as_of_mu_;
  mutable uint64_t as_of_pos_ = 0;
  mutable std::shared_ptr<const domain::State> as_of_cache_;
};

}  // namespace atrium::projections

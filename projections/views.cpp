#include "projections/views.h"

#include <condition_variable>
#include <deque>
#include <thread>

namespace atrium::projections {

Result<domain::Event> decode(const eventstore::RecordedEvent& e) {
  domain::Event out;
  out.stream = e.stream;
  out.type = e.type;
  out.schema = e.schema_version;
  out.data = domain::Json::parse(e.data, nullptr, /*allow_exceptions=*/false);
  if (out.data.is_discarded()) {
    return invalid("event " + std::to_string(e.position) + " has data that is not JSON");
  }
  return out;
}

// Replay runs in two stages on two threads: a reader scans the log and decodes JSON into
// batches, the caller's thread folds them. Decoding and folding cost about the same, so on
// two cores this nearly halves start-up and audit rebuilds.
Result<uint64_t> replay(const eventstore::EventStore& store, domain::State& state,
                        uint64_t upto) {
  struct Item {
    domain::Event event;
    domain::Applied at;
  };
  constexpr size_t kBatch = 4096, kMaxBatches = 4;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::vector<Item>> ready;
  std::deque<std::vector<Item>> spent;  // folded batches, freed by the reader (see below)
  bool done = false, cancelled = false;
  std::optional<Error> failure;

  std::thread reader([&] {
    std::vector<Item> batch;
    batch.reserve(kBatch);
    // Decoded JSON is freed on the thread that allocated it: freeing it on the folding
    // thread doubled that thread's work and made the allocator contend across threads.
    auto push = [&](std::vector<Item>&& b) {
      std::deque<std::vector<Item>> to_free;
      {
        std::unique_lock l(mu);
        cv.wait(l, [&] { return ready.size() < kMaxBatches || cancelled; });
        if (cancelled) return false;
        ready.push_back(std::move(b));
        to_free.swap(spent);
        cv.notify_all();
      }
      return true;
    };
    auto visited = store.scan(state.position, 0, [&](const eventstore::RecordedEvent& re) {
      if (re.position > upto) return false;
      auto ev = decode(re);
      if (!ev.ok()) {
        std::lock_guard l(mu);
        failure = ev.error();
        return false;
      }
      batch.push_back({std::move(*ev), {re.position, re.stream_version, re.recorded_at_ms}});
      if (batch.size() == kBatch) {
        if (!push(std::move(batch))) return false;
        batch = {};
        batch.reserve(kBatch);
      }
      return true;
    });
    if (!batch.empty()) push(std::move(batch));
    std::lock_guard l(mu);
    if (!visited.ok() && !failure) failure = visited.error();
    done = true;
    cv.notify_all();
  });

  uint64_t applied = 0;
  for (;;) {
    std::vector<Item> batch;
    {
      std::unique_lock l(mu);
      cv.wait(l, [&] { return !ready.empty() || done; });
      if (ready.empty()) break;
      batch = std::move(ready.front());
      ready.pop_front();
      cv.notify_all();
    }
    struct Recycle {  // hands the folded batch back to the reader to free
      std::vector<Item>& b;
      std::mutex& mu;
      std::deque<std::vector<Item>>& spent;
      bool& done;
      ~Recycle() {
        std::lock_guard l(mu);
        if (!done) spent.push_back(std::move(b));
      }
    } recycle{batch, mu, spent, done};
    try {
      for (const auto& it : batch) {
        domain::evolve(state, it.event, it.at);
        ++applied;
      }
    } catch (const std::exception& ex) {
      std::lock_guard l(mu);
      failure = Error::make(Code::internal, "event " + std::to_string(state.position + 1) +
                                                " could not be applied: " + ex.what());
      cancelled = true;
      cv.notify_all();
      break;
    }
  }
  reader.join();
  if (failure) return *failure;
  return applied;
}

void Views::apply(const std::vector<AppliedEvent>& batch) {
  std::unique_lock lock(mu_);
  for (const auto& a : batch) domain::evolve(state_, a.event, a.at);
}

void Views::reset(domain::State s) {
  std::unique_lock lock(mu_);
  state_ = std::move(s);
}

Result<domain::State> Views::as_of(const eventstore::EventStore& store,
                                   uint64_t position) const {
  std::lock_guard lock(as_of_mu_);
  if (as_of_cache_ && as_of_pos_ == position) return *as_of_cache_;
  domain::State s;
  auto r = replay(store, s, position);
  if (!r.ok()) return r.error();
  as_of_cache_ = std::make_shared<const domain::State>(s);
  as_of_pos_ = position;
  return s;
}

}  // namespace atrium::projections

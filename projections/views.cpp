#include "projections/views.h"

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

Result<uint64_t> replay(const eventstore::EventStore& store, domain::State& state,
                        uint64_t upto) {
  std::optional<Error> failure;
  uint64_t applied = 0;
  auto visited = store.scan(state.position, 0, [&](const eventstore::RecordedEvent& re) {
    if (re.position > upto) return false;
    auto ev = decode(re);
    if (!ev.ok()) {
      failure = ev.error();
      return false;
    }
    try {
      domain::evolve(state, *ev, {re.position, re.stream_version, re.recorded_at_ms});
    } catch (const std::exception& ex) {
      failure = Error::make(Code::internal, "event " + std::to_string(re.position) + " (" +
                                                re.type + ") could not be applied: " + ex.what());
      return false;
    }
    ++applied;
    return true;
  });
  if (!visited.ok()) return visited.error();
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

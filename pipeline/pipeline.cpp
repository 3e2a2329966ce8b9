#include "pipeline/pipeline.h"

#include <cstdio>
#include <unordered_map>

namespace atrium::pipeline {

using domain::Json;

int64_t system_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Pipeline::Pipeline(eventstore::EventStore& store, projections::Views& views, Metrics& metrics,
                   Clock clock, PipelineOptions opts)
    : store_(store), views_(views), metrics_(metrics), clock_(std::move(clock)), opts_(opts) {}

Pipeline::~Pipeline() { stop(); }

namespace {
constexpr const char* kSnapshotName = "snapshot";
constexpr int kSnapshotFormat = 1;
// Deeper than any state_to_json (about 8 levels); the CBOR reader recurses once per level, so
// a corrupt snapshot of nested arrays must stop long before the stack does.
constexpr int kMaxSnapshotDepth = 128;

// nlohmann's DOM builder with a nesting limit (from_cbor takes no parser callback).
class BoundedDomSax : public nlohmann::detail::json_sax_dom_parser<Json> {
  using Base = nlohmann::detail::json_sax_dom_parser<Json>;

 public:
  explicit BoundedDomSax(Json& out) : Base(out, /*allow_exceptions=*/false) {}
  bool start_object(std::size_t n) { return ++depth_ <= kMaxSnapshotDepth && Base::start_object(n); }
  bool start_array(std::size_t n) { return ++depth_ <= kMaxSnapshotDepth && Base::start_array(n); }
  bool end_object() { return --depth_, Base::end_object(); }
  bool end_array() { return --depth_, Base::end_array(); }
  bool too_deep() const { return depth_ > kMaxSnapshotDepth; }

 private:
  int depth_ = 0;
};
}  // namespace

std::string encode_snapshot(const domain::State& s) {
  Json j{{"format", kSnapshotFormat}, {"state", domain::state_to_json(s)}};
  std::vector<uint8_t> bytes = Json::to_cbor(j);
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

Result<domain::State> decode_snapshot(std::string_view bytes) {
  Json j;
  try {
    // As Json::from_cbor(bytes, strict, allow_exceptions=false), with a depth limit. Even
    // without exceptions nlohmann 3.11.2 throws out_of_range (408, "excessive array size")
    // for a length header past max_size().
    BoundedDomSax sax(j);
    bool ok = Json::sax_parse(bytes.begin(), bytes.end(), &sax, nlohmann::json::input_format_t::cbor,
                              /*strict=*/true);
    if (sax.too_deep()) {
      return invalid("the snapshot nests deeper than " + std::to_string(kMaxSnapshotDepth) +
                     " levels");
    }
    if (!ok || sax.is_errored()) return invalid("the snapshot is not CBOR");
  } catch (const std::exception& ex) {
    return invalid(std::string("the snapshot is not CBOR: ") + ex.what());
  }
  const auto* format = j.is_object() && j.contains("format") ? &j["format"] : nullptr;
  if (format == nullptr || !format->is_number_integer() || *format != kSnapshotFormat ||
      !j.contains("state")) {
    return invalid("the snapshot is not in format " + std::to_string(kSnapshotFormat));
  }
  return domain::state_from_json(j["state"]);
}

// Start-up and recovery: the latest snapshot (if readable and not ahead of the log), then
// the events after it. An unreadable or incompatible snapshot costs a full replay, never
// a wrong state.
Status Pipeline::rebuild() {
  domain::State fresh;
  auto snap = store_.get_checkpoint(kSnapshotName);
  if (snap.ok() && snap->has_value()) {
    auto st = decode_snapshot(**snap);
    if (st.ok() && st->position <= store_.last_position()) {
      fresh = std::move(*st);
      snapshot_position_ = fresh.position;
    } else {
      std::fprintf(stderr, "atriumd: ignoring snapshot (%s); replaying the whole log\n",
                   st.ok() ? "ahead of the log" : st.error().message.c_str());
    }
  }
  auto r = projections::replay(store_, fresh);
  if (!r.ok()) return r.error();
  state_ = fresh;
  views_.reset(std::move(fresh));
  metrics_.last_position->Set(static_cast<double>(state_.position));
  metrics_.projection_lag->Set(0);
  return Status::Ok();
}

Status Pipeline::write_snapshot() {
  std::lock_guard lock(snapshot_mu_);
  domain::State copy = views_.read([](const domain::State& s) { return s; });
  if (copy.position == snapshot_position_.load()) return Status::Ok();
  auto st = store_.put_checkpoint(kSnapshotName, encode_snapshot(copy));
  if (st.ok()) snapshot_position_ = copy.position;
  return st;
}

Status Pipeline::start() {
  if (auto st = rebuild(); !st) return st;
  {
    std::lock_guard lock(mu_);
    stopping_ = false;
  }
  writer_ = std::thread([this] { run(); });
  if (opts_.snapshot_every > 0) snapshotter_ = std::thread([this] { run_snapshots(); });
  ready_ = true;
  return Status::Ok();
}

std::future<Result<Outcome>> Pipeline::submit(Command cmd) {
  Pending p{std::move(cmd), {}};
  auto fut = p.promise.get_future();
  if (!leading_.load()) {
    p.promise.set_value(Error::make(
        Code::unavailable, "this broker follows the shared log; the leader takes writes",
        "not_leader"));
    return fut;
  }
  {
    std::lock_guard lock(mu_);
    if (stopping_ || !writer_.joinable()) {
      p.promise.set_value(Error::make(Code::unavailable, "the broker is shutting down",
                                      "shutting_down"));
      return fut;
    }
    if (queue_.size() >= opts_.queue_capacity) {
      p.promise.set_value(Error::make(Code::unavailable,
                                      "the command queue is full; retry shortly", "queue_full"));
      return fut;
    }
    queue_.push_back(std::move(p));
    metrics_.queue_depth->Set(static_cast<double>(queue_.size()));
  }
  cv_.notify_one();
  return fut;
}

Result<Outcome> Pipeline::execute(Command cmd, std::chrono::milliseconds timeout) {
  auto fut = submit(std::move(cmd));
  if (fut.wait_for(timeout) != std::future_status::ready) {
    return Error::make(Code::unavailable, "the command was not answered in time",
                       "timeout");
  }
  return fut.get();
}

size_t Pipeline::queue_depth() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

void Pipeline::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  snapshot_cv_.notify_all();
  bool was_running = writer_.joinable();
  if (writer_.joinable()) writer_.join();
  if (snapshotter_.joinable()) snapshotter_.join();
  if (was_running && opts_.snapshot_every > 0 &&
      views_.position() > snapshot_position_.load()) {
    if (auto st = write_snapshot(); !st) {
      std::fprintf(stderr, "atriumd: final snapshot failed: %s\n", st.error().message.c_str());
    }
  }
  ready_ = false;
}

void Pipeline::run_snapshots() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    snapshot_cv_.wait_for(lock, std::chrono::seconds(5));
    if (stopping_) break;
    if (views_.position() < snapshot_position_.load() + opts_.snapshot_every) continue;
    lock.unlock();
    if (auto st = write_snapshot(); !st) {
      std::fprintf(stderr, "atriumd: snapshot failed: %s\n", st.error().message.c_str());
    }
    lock.lock();
  }
}

void Pipeline::set_leading(bool leading) {
  {
    std::lock_guard lock(mu_);
    leading_ = leading;
  }
  cv_.notify_all();
}

Status Pipeline::tail() {
  std::vector<projections::AppliedEvent> applied;
  Status failure = Status::Ok();
  auto st = store_.scan(state_.position, 4096, [&](const eventstore::RecordedEvent& re) {
    auto ev = projections::decode(re);
    if (!ev.ok()) {
      failure = ev.error();
      return false;
    }
    applied.push_back({std::move(*ev), {re.position, re.stream_version, re.recorded_at_ms}});
    return true;
  });
  if (!st.ok()) return st.error();
  for (const auto& a : applied) domain::evolve(state_, a.event, a.at);
  if (!applied.empty()) {
    views_.apply(applied);
    metrics_.last_position->Set(static_cast<double>(state_.position));
  }
  return failure;
}

void Pipeline::run() {
  std::vector<Pending> batch;
  for (;;) {
    // Behind the log: a follower, or a leader that just took over. Fold the tail first.
    if (!leading_.load() || state_.position < store_.last_position()) {
      std::deque<Pending> refused;
      {
        std::lock_guard lock(mu_);
        if (!leading_.load()) refused.swap(queue_);
      }
      for (auto& p : refused) {
        p.promise.set_value(Error::make(
            Code::unavailable, "this broker follows the shared log; the leader takes writes",
            "not_leader"));
      }
      {
        std::lock_guard lock(mu_);
        if (stopping_ && !leading_.load()) return;
      }
      if (!leading_.load() && broken_) {
        // A failed (e.g. fenced) batch may be folded into the writer state: start over from
        // the log, as recover() does, before following it.
        if (auto st = rebuild(); !st) {
          std::fprintf(stderr, "atriumd: rebuilding from the log failed: %s\n",
                       st.error().message.c_str());
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
          continue;
        }
        broken_ = false;
        storage_ok_ = true;
      }
      if (state_.position < store_.last_position()) {
        if (auto st = tail(); !st) {
          std::fprintf(stderr, "atriumd: following the log failed: %s\n",
                       st.error().message.c_str());
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
        }
        continue;
      }
      if (!leading_.load()) {
        store_.wait_for(state_.position, std::chrono::milliseconds(50));
        continue;
      }
    }
    {
      std::unique_lock lock(mu_);
      auto pred = [&] { return stopping_ || !queue_.empty(); };
      if (broken_) {
        // Recover by itself when storage returns, also without traffic.
        if (!cv_.wait_for(lock, std::chrono::milliseconds(200), pred)) {
          lock.unlock();
          recover();
          continue;
        }
      } else {
        cv_.wait(lock, [&] { return pred() || !leading_.load(); });
      }
      if (queue_.empty() && stopping_) return;
      if (queue_.empty()) continue;  // leadership changed
      size_t n = std::min(queue_.size(), opts_.max_batch);
      batch.clear();
      batch.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      metrics_.queue_depth->Set(static_cast<double>(queue_.size()));
    }
    process(batch);
  }
}

namespace {

std::string idem_storage_key(const CommandMeta& m) { return m.actor + "\n" + m.idempotency_key; }

Json idem_record(const CommandMeta& m, const Outcome& o) {
  return Json{{"fingerprint", m.fingerprint},
              {"status", o.status},
              {"body", o.body},
              {"first_position", o.first_position},
              {"last_position", o.last_position}};
}

Result<Outcome> from_idem_record(const CommandMeta& m, const std::string& raw) {
  Json j = Json::parse(raw, nullptr, false);
  if (j.is_discarded()) return Error::make(Code::internal, "unreadable idempotency record");
  if (j.value("fingerprint", "") != m.fingerprint) {
    return Error::make(Code::unprocessable,
                       "Idempotency-Key '" + m.idempotency_key +
                           "' was already used with a different request",
                       "idempotency_key_reused");
  }
  Outcome o;
  o.status = j.value("status", 200);
  o.body = j.value("body", Json());
  o.first_position = j.value("first_position", uint64_t{0});
  o.last_position = j.value("last_position", uint64_t{0});
  o.replayed = true;
  return o;
}

}  // namespace

// After a failed batch: the store first (it reopens itself once storage allows), then the
// writer state and the views from the log. Until both work the pipeline stays broken: every
// command is answered 503 at once and nothing is decided against a state that may hold the
// failed batch.
void Pipeline::recover() {
  Status st = store_.recover_storage();
  if (st.ok()) st = rebuild();
  if (!st.ok()) {
    broken_reason_ = st.error().message;
    broken_ = true;
    storage_ok_ = false;
    return;
  }
  if (broken_) std::fprintf(stderr, "atriumd: storage recovered; taking writes again\n");
  broken_ = false;
  storage_ok_ = true;
}

void Pipeline::process(std::vector<Pending>& batch) {
  if (broken_) recover();
  if (broken_) {
    for (auto& p : batch) {
      p.promise.set_value(Error::make(
          Code::unavailable,
          "the event store cannot take writes right now (" + broken_reason_ + "); retry shortly",
          "storage_unavailable"));
    }
    return;
  }
  const int64_t now = clock_();
  std::vector<std::optional<Result<Outcome>>> results(batch.size());
  std::vector<bool> wrote(batch.size(), false);
  eventstore::AppendRequest req;
  std::vector<projections::AppliedEvent> applied;
  std::unordered_map<std::string, std::string> pending_idem;  // within this batch
  std::unordered_map<std::string, uint64_t> batch_versions;   // stream -> version so far
  uint64_t next_position = store_.last_position() + 1;

  for (size_t i = 0; i < batch.size(); ++i) {
    const Command& cmd = batch[i].cmd;
    const CommandMeta& meta = cmd.meta;
    std::string idem_key;
    if (!meta.idempotency_key.empty()) {
      idem_key = idem_storage_key(meta);
      if (auto it = pending_idem.find(idem_key); it != pending_idem.end()) {
        results[i] = from_idem_record(meta, it->second);
        continue;
      }
      auto stored = store_.get_idempotency(idem_key);
      if (!stored.ok()) {
        results[i] = stored.error();
        continue;
      }
      if (stored->has_value()) {
        results[i] = from_idem_record(meta, **stored);
        continue;
      }
    }

    domain::Context ctx{now, meta.actor};
    Result<domain::Events> decided = Error::make(Code::internal, "not decided");
    try {
      decided = cmd.decide(state_, ctx);
    } catch (const std::exception& ex) {
      decided = Error::make(Code::internal, std::string("decider failed: ") + ex.what());
    }
    if (!decided.ok()) {
      results[i] = decided.error();
      continue;
    }

    Outcome out;
    out.status = cmd.success_status;
    try {
      for (auto& ev : *decided) {
        uint64_t before = batch_versions.count(ev.stream) ? batch_versions[ev.stream]
                                                          : state_.version_of(ev.stream);
        uint64_t version = before + 1;
        batch_versions[ev.stream] = version;
        domain::Applied at{next_position, version, now};
        domain::evolve(state_, ev, at);
        if (out.first_position == 0) out.first_position = next_position;
        out.last_position = next_position;
        ++next_position;

        eventstore::NewEvent ne;
        ne.type = ev.type;
        ne.schema_version = ev.schema;
        ne.data = ev.data.dump();
        ne.actor = meta.actor;
        ne.correlation_id = meta.correlation_id;
        ne.causation_id = meta.causation_id;
        ne.idempotency_key = meta.idempotency_key;
        ne.recorded_at_ms = now;
        if (!req.writes.empty() && req.writes.back().stream == ev.stream) {
          req.writes.back().events.push_back(std::move(ne));
        } else {
          eventstore::StreamWrite w;
          w.stream = ev.stream;
          w.expected = before == 0 ? eventstore::ExpectedVersion::NoStream()
                                   : eventstore::ExpectedVersion::Exact(before);
          w.events.push_back(std::move(ne));
          req.writes.push_back(std::move(w));
        }
        applied.push_back({std::move(ev), at});
      }
      if (cmd.render) out.body = cmd.render(state_);
    } catch (const std::exception& ex) {
      // The writer state may hold part of this command: refuse the whole batch (nothing was
      // written) and rebuild the state from the log.
      results[i] = Error::make(Code::internal, std::string("applying events failed: ") + ex.what());
      for (size_t k = 0; k < batch.size(); ++k) {
        if (k != i) results[k] = Error::make(Code::unavailable, "batch aborted; retry", "aborted");
      }
      recover();
      for (size_t k = 0; k < batch.size(); ++k) batch[k].promise.set_value(std::move(*results[k]));
      return;
    }
    if (!idem_key.empty()) {
      std::string rec = idem_record(meta, out).dump();
      pending_idem[idem_key] = rec;
      req.idempotency.push_back({idem_key, rec});
    }
    wrote[i] = true;
    results[i] = std::move(out);
  }

  metrics_.append_batch_commands->Observe(static_cast<double>(batch.size()));
  if (!req.writes.empty() || !req.idempotency.empty()) {
    auto t0 = std::chrono::steady_clock::now();
    auto appended = store_.append(req);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    metrics_.synced_write_seconds->Observe(secs);
    bool consistent = appended.ok() && (applied.empty() ||
                                        appended->first_position == applied.front().at.position);
    if (!consistent) {
      metrics_.append_failures->Increment();
      Error err = appended.ok()
                      ? Error::make(Code::internal, "log positions diverged from the writer")
                      : appended.error();
      if (err.code != Code::conflict) err.code = Code::unavailable;
      if (err.reason.empty()) err.reason = "storage_unavailable";
      for (size_t i = 0; i < batch.size(); ++i) {
        if (wrote[i]) results[i] = err;
      }
      // The writer state may hold the failed batch, and the store may need reopening.
      std::fprintf(stderr, "atriumd: append failed (%s); writes refused until storage recovers\n",
                   err.message.c_str());
      broken_ = true;
      broken_reason_ = err.message;
      storage_ok_ = false;
      recover();
    } else {
      metrics_.events_appended->Increment(static_cast<double>(applied.size()));
      metrics_.append_batch_events->Observe(static_cast<double>(applied.size()));
      metrics_.projection_lag->Set(static_cast<double>(applied.size()));
      views_.apply(applied);
      metrics_.projection_lag->Set(0);
      metrics_.last_position->Set(static_cast<double>(store_.last_position()));
    }
  }

  for (size_t i = 0; i < batch.size(); ++i) {
    const auto& r = *results[i];
    metrics_.commands
        ->Add({{"command", batch[i].cmd.name}, {"result", r.ok() ? "ok" : code_name(r.error().code)}})
        .Increment();
    batch[i].promise.set_value(std::move(*results[i]));
  }
}

}  // namespace atrium::pipeline

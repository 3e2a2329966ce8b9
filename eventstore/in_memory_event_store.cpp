// A volatile event store with the same contract (and hash chain) as the RocksDB one.
// One shared_mutex guards the state; events are immutable once appended and held by
// shared_ptr, so scans copy pointers in small chunks and call the visitor without any lock
// held (a visitor may call back into the store).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "eventstore/event_store.h"
#include "eventstore/internal.h"

namespace atrium::eventstore {
namespace {

using detail::guarded;
using detail::StringHash;

template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

using EventPtr = std::shared_ptr<const RecordedEvent>;

class MemEventStore final : public EventStore {
 public:
  Result<AppendResult> append(const AppendRequest& req) override {
    return guarded("append", [&]() -> Result<AppendResult> {
      if (Status s = detail::validate_request(req); !s) return s.error();
      std::unique_lock<std::shared_mutex> lk(mu_);

      std::unordered_map<std::string_view, uint64_t> next;
      std::vector<uint64_t> base(req.writes.size());
      for (size_t w = 0; w < req.writes.size(); ++w) {
        const StreamWrite& sw = req.writes[w];
        uint64_t current = 0;
        if (auto it = next.find(sw.stream); it != next.end()) {
          current = it->second;
        } else if (auto it2 = streams_.find(sw.stream); it2 != streams_.end()) {
          current = it2->second.size();
        }
        if (Status s = detail::check_expected(sw.stream, sw.expected, current); !s) {
          return s.error();
        }
        base[w] = current;
        next[sw.stream] = current + sw.events.size();
      }

      // Build everything aside first; commit only once nothing can fail half-way.
      const uint64_t first = events_.size() + 1;
      uint64_t pos = first - 1;
      Hash hash = last_hash_;
      std::vector<EventPtr> fresh;
      std::string bytes;
      for (size_t w = 0; w < req.writes.size(); ++w) {
        const StreamWrite& sw = req.writes[w];
        uint64_t version = base[w];
        for (const NewEvent& ne : sw.events) {
          auto e = std::make_shared<RecordedEvent>();
          hash = detail::record_new_event(ne, sw.stream, ++pos, ++version, hash, *e, bytes);
          fresh.push_back(std::move(e));
        }
      }
      // Reserve so the commit below cannot fail half-way with bad_alloc.
      events_.reserve(events_.size() + fresh.size());
      for (const auto& [stream, v] : next) {
        auto& positions = streams_[std::string(stream)];
        positions.reserve(v);
      }
      StringMap<std::string> idem;
      for (const auto& r : req.idempotency) idem.insert_or_assign(r.key, r.value);
      idempotency_.reserve(idempotency_.size() + idem.size());
      StringMap<std::string> ckpt;
      for (const auto& [name, v] : req.checkpoints) ckpt.insert_or_assign(name, v);
      checkpoints_.reserve(checkpoints_.size() + ckpt.size());

      // Commit: capacity is reserved and nodes are pre-built, so nothing allocates below.
      for (auto& e : fresh) {
        streams_.find(e->stream)->second.push_back(e->position);
        events_.push_back(std::move(e));
      }
      move_nodes(idem, idempotency_);
      move_nodes(ckpt, checkpoints_);
      last_hash_ = hash;
      position_.publish(pos);
      if (pos < first) return AppendResult{};
      return AppendResult{first, pos};
    });
  }

  Result<uint64_t> scan(uint64_t after, uint64_t max_events,
                        const EventVisitor& visit) const override {
    return guarded("scan", [&]() -> Result<uint64_t> {
      constexpr size_t kChunk = 256;
      std::vector<EventPtr> chunk;
      chunk.reserve(kChunk);
      uint64_t visited = 0;
      uint64_t next = after;  // last position handed out
      for (;;) {
        chunk.clear();
        {
          std::shared_lock<std::shared_mutex> lk(mu_);
          const uint64_t n = events_.size();
          for (uint64_t p = next + 1; p <= n && chunk.size() < kChunk; ++p) {
            if (max_events != 0 && visited + chunk.size() >= max_events) break;
            chunk.push_back(events_[p - 1]);
          }
        }
        if (chunk.empty()) return visited;
        for (const auto& e : chunk) {
          ++visited;
          next = e->position;
          if (!visit(*e)) return visited;
        }
      }
    });
  }

  Result<std::vector<RecordedEvent>> read_stream(std::string_view stream, uint64_t after_version,
                                                 size_t limit) const override {
    return guarded("read_stream", [&]() -> Result<std::vector<RecordedEvent>> {
      std::vector<RecordedEvent> out;
      std::shared_lock<std::shared_mutex> lk(mu_);
      auto it = streams_.find(stream);
      if (it == streams_.end()) return out;
      const auto& positions = it->second;
      for (uint64_t v = after_version; v < positions.size(); ++v) {
        if (limit != 0 && out.size() >= limit) break;
        out.push_back(*events_[positions[v] - 1]);
      }
      return out;
    });
  }

  Result<uint64_t> stream_version(std::string_view stream) const override {
    return guarded("stream_version", [&]() -> Result<uint64_t> {
      std::shared_lock<std::shared_mutex> lk(mu_);
      auto it = streams_.find(stream);
      return it == streams_.end() ? uint64_t{0} : uint64_t{it->second.size()};
    });
  }

  uint64_t last_position() const override { return position_.get(); }

  uint64_t wait_for(uint64_t after, std::chrono::milliseconds timeout) const override {
    return position_.wait_for(after, timeout);
  }

  Result<std::optional<std::string>> get_idempotency(std::string_view key) const override {
    return guarded("get_idempotency", [&] { return lookup(idempotency_, key); });
  }

  Result<std::optional<std::string>> get_checkpoint(std::string_view name) const override {
    return guarded("get_checkpoint", [&] { return lookup(checkpoints_, name); });
  }

  Status put_checkpoint(std::string_view name, std::string_view value) override {
    return guarded("put_checkpoint", [&]() -> Status {
      if (name.empty()) return invalid("checkpoint name is empty", "empty_checkpoint_name");
      std::unique_lock<std::shared_mutex> lk(mu_);
      checkpoints_.insert_or_assign(std::string(name), std::string(value));
      return Status::Ok();
    });
  }

  Status scan_records(bool checkpoints, const RecordVisitor& visit) const override {
    return guarded("scan_records", [&]() -> Status {
      std::vector<std::pair<std::string, std::string>> sorted;
      {
        std::shared_lock<std::shared_mutex> lk(mu_);
        const auto& m = checkpoints ? checkpoints_ : idempotency_;
        sorted.assign(m.begin(), m.end());
      }
      std::sort(sorted.begin(), sorted.end());
      for (const auto& [k, v] : sorted) {
        if (!visit(k, v)) break;
      }
      return Status::Ok();
    });
  }

  Result<VerifyReport> verify() const override {
    return guarded("verify", [&]() -> Result<VerifyReport> {
      VerifyReport r;
      std::shared_lock<std::shared_mutex> lk(mu_);
      Hash prev{};
      StringMap<uint64_t> stream_last;
      for (size_t i = 0; i < events_.size(); ++i) {
        const RecordedEvent& e = *events_[i];
        const uint64_t p = i + 1;
        std::string problem;
        if (e.position != p) {
          problem = "position gap: expected " + std::to_string(p) + ", found " +
                    std::to_string(e.position);
        } else if (Hash h = chain_hash(prev, e); h != e.hash) {
          problem = "hash mismatch: stored " + to_hex(e.hash) + ", recomputed " + to_hex(h);
        } else {
          uint64_t& last = stream_last[e.stream];
          auto sit = streams_.find(e.stream);
          if (e.stream_version != last + 1) {
            problem = "stream '" + e.stream + "' version " + std::to_string(e.stream_version) +
                      " follows version " + std::to_string(last);
          } else if (sit == streams_.end() || sit->second.size() < e.stream_version ||
                     sit->second[e.stream_version - 1] != p) {
            problem = "stream index for '" + e.stream + "' version " +
                      std::to_string(e.stream_version) + " does not point here";
          }
          last = e.stream_version;
        }
        if (!problem.empty()) {
          r.ok = false;
          r.first_bad_position = p;
          r.problem = std::move(problem);
          return r;
        }
        prev = e.hash;
        ++r.events_checked;
      }
      return r;
    });
  }

 private:
  // Moves every entry of `from` into `to` (overwriting), reusing the nodes of `from`.
  static void move_nodes(StringMap<std::string>& from, StringMap<std::string>& to) {
    while (!from.empty()) {
      auto res = to.insert(from.extract(from.begin()));
      if (!res.inserted) res.position->second = std::move(res.node.mapped());
    }
  }

  Result<std::optional<std::string>> lookup(const StringMap<std::string>& m,
                                            std::string_view key) const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    auto it = m.find(key);
    if (it == m.end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second);
  }

  mutable std::shared_mutex mu_;
  std::vector<EventPtr> events_;               // index = position - 1
  StringMap<std::vector<uint64_t>> streams_;   // stream -> positions, index = version - 1
  StringMap<std::string> idempotency_;
  StringMap<std::string> checkpoints_;
  Hash last_hash_{};

  detail::PositionSignal position_;
};

}  // namespace

std::unique_ptr<EventStore> make_in_memory() { return std::make_unique<MemEventStore>(); }

}  // namespace atrium::eventstore

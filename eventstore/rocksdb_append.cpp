// The RocksDB store's append path: expected versions against storage and the stream-version
// cache, one WriteBatch per append (events, stream index, idempotency records, checkpoints),
// publishing the new position once durable; and checkpoint writes.
#include <rocksdb/write_batch.h>

#include "eventstore/rocksdb_internal.h"

namespace atrium::eventstore::rocks_detail {

Result<AppendResult> RocksEventStore::append(const AppendRequest& req) {
  return guarded("append", [&]() -> Result<AppendResult> {
    if (Status s = writable(); !s) return s.error();
    std::lock_guard<std::mutex> wl(write_mu_);
    if (Status s = reopen_if_failed_locked(); !s) return s.error();
    if (Status s = detail::validate_request(req); !s) return s.error();
    auto db_or = acquire();
    if (!db_or) return db_or.error();
    const Db& db = **db_or;

    // Expected versions, against storage plus earlier writes of this same request.
    std::unordered_map<std::string_view, uint64_t> next;  // stream -> version after req
    std::vector<uint64_t> base(req.writes.size());
    for (size_t w = 0; w < req.writes.size(); ++w) {
      const StreamWrite& sw = req.writes[w];
      uint64_t current = 0;
      if (auto it = next.find(sw.stream); it != next.end()) {
        current = it->second;
      } else {
        auto v = cached_version(db, sw.stream);
        if (!v) return v.error();
        current = *v;
      }
      if (Status s = detail::check_expected(sw.stream, sw.expected, current); !s) {
        return s.error();
      }
      base[w] = current;
      next[sw.stream] = current + sw.events.size();
    }

    // Build the batch: positions, versions and the hash chain.
    const uint64_t first = position_.get() + 1;
    uint64_t pos = first - 1;
    Hash hash = last_hash_;
    rocksdb::WriteBatch batch;
    RecordedEvent e;
    std::string value;
    for (size_t w = 0; w < req.writes.size(); ++w) {
      const StreamWrite& sw = req.writes[w];
      uint64_t version = base[w];
      for (const NewEvent& ne : sw.events) {
        hash = detail::record_new_event(ne, sw.stream, ++pos, ++version, hash, e, value);
        value.append(reinterpret_cast<const char*>(hash.data()), hash.size());
        BeKey pk(pos);
        rocksdb::Status s = batch.Put(db.events, slice(pk.view()), slice(value));
        if (s.ok()) {
          s = batch.Put(db.streams, slice(stream_key(sw.stream, version)), slice(pk.view()));
        }
        if (!s.ok()) return storage_error(s, "building the append batch");
      }
    }
    for (const auto& r : req.idempotency) {
      rocksdb::Status s = batch.Put(db.idempotency, slice(r.key), slice(r.value));
      if (!s.ok()) return storage_error(s, "building the append batch");
    }
    for (const auto& [name, v] : req.checkpoints) {
      rocksdb::Status s = batch.Put(db.checkpoints, slice(name), slice(v));
      if (!s.ok()) return storage_error(s, "building the append batch");
    }
    if (batch.Count() == 0) return AppendResult{};

    rocksdb::WriteOptions wo;
    wo.sync = opts_.sync;
    if (rocksdb::Status s = db.db->Write(wo, &batch); !s.ok()) {
      // Nothing in memory was touched; nothing more goes through this instance.
      return failed_locked("event store write failed: " + s.ToString()).error();
    }

    // Durable: publish. Position and hash first (cannot throw).
    last_hash_ = hash;
    publish_position(pos);
    try {
      std::lock_guard<std::mutex> cl(cache_mu_);
      for (const auto& [stream, version] : next) {
        versions_.insert_or_assign(std::string(stream), version);
      }
    } catch (...) {
      drop_version_cache();
    }
    if (pos < first) return AppendResult{};
    return AppendResult{first, pos};
  });
}

Status RocksEventStore::put_checkpoint(std::string_view name, std::string_view value) {
  return guarded("put_checkpoint", [&]() -> Status {
    if (name.empty()) return invalid("checkpoint name is empty", "empty_checkpoint_name");
    if (Status s = writable(); !s) return s;
    std::lock_guard<std::mutex> wl(write_mu_);
    if (Status s = reopen_if_failed_locked(); !s) return s;
    auto db_or = acquire();
    if (!db_or) return db_or.error();
    const Db& db = **db_or;
    rocksdb::WriteOptions wo;
    wo.sync = opts_.sync;
    rocksdb::Status s = db.db->Put(wo, db.checkpoints, slice(name), slice(value));
    if (!s.ok()) return failed_locked("checkpoint write failed: " + s.ToString());
    return Status::Ok();
  });
}

Result<uint64_t> RocksEventStore::cached_version(const Db& db, std::string_view stream) const {
  uint64_t epoch = 0;
  {
    std::lock_guard<std::mutex> cl(cache_mu_);
    if (auto it = versions_.find(stream); it != versions_.end()) return it->second;
    epoch = cache_epoch_;
  }
  const std::string prefix = stream_prefix(stream);
  std::string upper = prefix;
  upper.append(8, '\xff');
  std::unique_ptr<rocksdb::Iterator> it(db.db->NewIterator(rocksdb::ReadOptions(), db.streams));
  it->SeekForPrev(slice(upper));
  uint64_t version = 0;
  if (it->Valid()) {
    const std::string_view key = view(it->key());
    if (key.starts_with(prefix)) {
      if (key.size() != prefix.size() + 8) {
        return corrupt("malformed stream index entry for '" + std::string(stream) + "'");
      }
      version = get_be64(key.data() + prefix.size());
    }
  }
  if (!it->status().ok()) return storage_error(it->status(), "reading a stream version");
  if (version > 0) {
    // A reader may race the writer: the writer overwrites entries after each append, a
    // reader only fills a missing one, and never across a cache drop (epoch).
    std::lock_guard<std::mutex> cl(cache_mu_);
    if (cache_epoch_ == epoch) versions_.try_emplace(std::string(stream), version);
  }
  return version;
}

}  // namespace atrium::eventstore::rocks_detail

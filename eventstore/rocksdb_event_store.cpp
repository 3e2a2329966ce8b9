// RocksDB-backed event store.
//
// Column families:
//   events       8-byte big-endian position -> canonical bytes || 32-byte hash
//   streams      stream bytes + '\0' + 8-byte BE version -> 8-byte BE position
//   idempotency  key -> opaque value
//   checkpoints  name -> opaque value
// Every append is one WriteBatch (events, index, idempotency records, checkpoints), so it
// lands completely or not at all; the WAL is synced before append() returns (opts.sync).
//
// Threads: append()/put_checkpoint() are serialized by write_mu_ (one writer in practice);
// readers never take write_mu_. In-memory state is the last position (atomic, published
// after the batch is durable), the last hash (writer only) and a cache of stream versions
// (cache_mu_). A failed write changes none of them, so positions stay gap-free.
//
// Storage failures: after a failed write the next writer call first asks RocksDB to
// Resume(); when RocksDB refuses (a non-retryable I/O error is fatal to a DB instance), the
// instance is closed and reopened (WAL recovery) once readers have let go of it. The tail is
// then re-read from storage, which stays the only source of truth. Readers hold a
// shared_ptr to the open instance for the length of one call; while the store is closed
// between a failed reopen and the next attempt they get Code::unavailable.
#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "eventstore/event_store.h"
#include "eventstore/internal.h"

namespace atrium::eventstore {
namespace {

using detail::BeKey;
using detail::get_be64;

constexpr const char* kEventsCf = "events";
constexpr const char* kStreamsCf = "streams";
constexpr const char* kIdempotencyCf = "idempotency";
constexpr const char* kCheckpointsCf = "checkpoints";

rocksdb::Slice slice(std::string_view s) { return {s.data(), s.size()}; }
std::string_view view(const rocksdb::Slice& s) { return {s.data(), s.size()}; }

Error storage_error(const rocksdb::Status& s, std::string_view what) {
  std::string msg = std::string(what) + ": " + s.ToString();
  if (s.IsCorruption()) return Error::make(Code::internal, std::move(msg), "storage_corrupt");
  return Error::make(Code::unavailable, std::move(msg), "storage_unavailable");
}

Error corrupt(std::string msg) {
  return Error::make(Code::internal, "event store corrupt: " + msg, "storage_corrupt");
}

// Never let an exception (bad_alloc, a throwing visitor) escape the store.
template <typename F>
auto guarded(const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::exception& ex) {
    return Error::make(Code::internal, std::string(what) + ": " + ex.what(), "internal");
  } catch (...) {
    return Error::make(Code::internal, std::string(what) + ": unknown exception", "internal");
  }
}

std::string stream_prefix(std::string_view stream) {
  std::string k;
  k.reserve(stream.size() + 9);
  k.append(stream);
  k.push_back('\0');
  return k;
}

std::string stream_key(std::string_view stream, uint64_t version) {
  std::string k = stream_prefix(stream);
  k.append(BeKey(version).view());
  return k;
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Releases a snapshot on scope exit.
class SnapshotGuard {
 public:
  explicit SnapshotGuard(rocksdb::DB* db) : db_(db), snap_(db->GetSnapshot()) {}
  ~SnapshotGuard() { db_->ReleaseSnapshot(snap_); }
  SnapshotGuard(const SnapshotGuard&) = delete;
  SnapshotGuard& operator=(const SnapshotGuard&) = delete;
  const rocksdb::Snapshot* get() const { return snap_; }

 private:
  rocksdb::DB* db_;
  const rocksdb::Snapshot* snap_;
};

struct Tail {
  uint64_t position = 0;
  Hash hash{};
};

// One open RocksDB instance with its column families; closed when the last user drops it.
struct Db {
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::ColumnFamilyHandle* events = nullptr;
  rocksdb::ColumnFamilyHandle* streams = nullptr;
  rocksdb::ColumnFamilyHandle* idempotency = nullptr;
  rocksdb::ColumnFamilyHandle* checkpoints = nullptr;

  Db() = default;
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  ~Db() {
    if (db == nullptr) return;
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
    db->Close().PermitUncheckedError();
    delete db;
  }
};

rocksdb::ColumnFamilyOptions cf_options(const std::shared_ptr<rocksdb::Cache>& cache,
                                        bool bloom) {
  rocksdb::BlockBasedTableOptions t;
  t.checksum = rocksdb::kXXH3;  // every block checksummed, verified on read
  t.block_cache = cache;
  if (bloom) t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  rocksdb::ColumnFamilyOptions cf;
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
  return cf;
}

Result<std::shared_ptr<Db>> open_db(const std::string& dir, const RocksOptions& opts,
                                    const std::shared_ptr<rocksdb::Cache>& cache) {
  rocksdb::DBOptions db_opts;
  db_opts.create_if_missing = opts.create_if_missing;
  db_opts.create_missing_column_families = true;
  db_opts.paranoid_checks = true;
  db_opts.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  db_opts.keep_log_file_num = 10;
  if (opts.env != nullptr) db_opts.env = opts.env;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, cf_options(cache, false)},
      {kEventsCf, cf_options(cache, false)},
      {kStreamsCf, cf_options(cache, true)},
      {kIdempotencyCf, cf_options(cache, true)},
      {kCheckpointsCf, cf_options(cache, true)},
  };
  auto db = std::make_shared<Db>();
  rocksdb::Status s = rocksdb::DB::Open(db_opts, dir, cfs, &db->handles, &db->db);
  if (!s.ok()) return storage_error(s, "opening event store at " + dir);
  db->events = db->handles[1];
  db->streams = db->handles[2];
  db->idempotency = db->handles[3];
  db->checkpoints = db->handles[4];
  return db;
}

// Loads the last event (position and hash) from storage.
Result<Tail> load_tail(const Db& db) {
  std::unique_ptr<rocksdb::Iterator> it(db.db->NewIterator(rocksdb::ReadOptions(), db.events));
  it->SeekToLast();
  Tail t;
  if (it->Valid()) {
    if (it->key().size() != 8) return corrupt("malformed event key");
    RecordedEvent e;
    if (!detail::decode_stored(view(it->value()), e)) {
      return corrupt("last event is undecodable");
    }
    t.position = get_be64(it->key().data());
    if (e.position != t.position) {
      return corrupt("last event key " + std::to_string(t.position) + " holds position " +
                     std::to_string(e.position));
    }
    t.hash = e.hash;
  }
  if (!it->status().ok()) return storage_error(it->status(), "reading the last event");
  return t;
}

class RocksEventStore final : public EventStore {
 public:
  RocksEventStore(std::string dir, RocksOptions opts, std::shared_ptr<rocksdb::Cache> cache,
                  std::shared_ptr<Db> db)
      : dir_(std::move(dir)), opts_(opts), cache_(std::move(cache)), db_(std::move(db)) {}

  Status init() {
    auto tail = load_tail(*db_);
    if (!tail) return tail.error();
    last_hash_ = tail->hash;
    position_.publish(tail->position);
    return Status::Ok();
  }

  Result<AppendResult> append(const AppendRequest& req) override {
    return guarded("append", [&]() -> Result<AppendResult> {
      std::lock_guard<std::mutex> wl(write_mu_);
      if (needs_recovery_) {
        if (Status s = recover_locked(); !s) return s.error();
      }
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
          e.position = ++pos;
          e.stream = sw.stream;
          e.stream_version = ++version;
          e.type = ne.type;
          e.schema_version = ne.schema_version;
          e.recorded_at_ms = ne.recorded_at_ms;
          e.actor = ne.actor;
          e.correlation_id = ne.correlation_id;
          e.causation_id = ne.causation_id;
          e.idempotency_key = ne.idempotency_key;
          e.data = ne.data;
          detail::encode_canonical(e, value);
          hash = detail::chain_hash_bytes(hash, value);
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
        // Nothing in memory was touched; storage is asked to resume before the next write.
        needs_recovery_ = true;
        return Error::make(Code::unavailable, "event store write failed: " + s.ToString(),
                           "storage_unavailable");
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

  Result<uint64_t> scan(uint64_t after, uint64_t max_events,
                        const EventVisitor& visit) const override {
    return guarded("scan", [&]() -> Result<uint64_t> {
      if (after == UINT64_MAX) return uint64_t{0};
      auto db_or = acquire();
      if (!db_or) return db_or.error();
      const Db& db = **db_or;
      rocksdb::ReadOptions ro;
      ro.verify_checksums = true;
      std::unique_ptr<rocksdb::Iterator> it(db.db->NewIterator(ro, db.events));
      BeKey start(after + 1);
      uint64_t expected = after + 1;
      uint64_t visited = 0;
      RecordedEvent e;  // reused: strings keep their capacity across events
      for (it->Seek(slice(start.view())); it->Valid(); it->Next()) {
        if (max_events != 0 && visited >= max_events) break;
        const rocksdb::Slice key = it->key();
        if (key.size() != 8) return corrupt("malformed event key");
        const uint64_t p = get_be64(key.data());
        if (p != expected) {
          return corrupt("gap in the log: expected position " + std::to_string(expected) +
                         ", found " + std::to_string(p));
        }
        if (!detail::decode_stored(view(it->value()), e) || e.position != p) {
          return corrupt("event at position " + std::to_string(p) + " is undecodable");
        }
        ++visited;
        ++expected;
        if (!visit(e)) break;
      }
      if (!it->status().ok()) return storage_error(it->status(), "scanning events");
      return visited;
    });
  }

  Result<std::vector<RecordedEvent>> read_stream(std::string_view stream, uint64_t after_version,
                                                 size_t limit) const override {
    return guarded("read_stream", [&]() -> Result<std::vector<RecordedEvent>> {
      std::vector<RecordedEvent> out;
      if (stream.empty() || stream.find('\0') != std::string_view::npos ||
          after_version == UINT64_MAX) {
        return out;
      }
      auto db_or = acquire();
      if (!db_or) return db_or.error();
      const Db& db = **db_or;
      SnapshotGuard snap(db.db);
      rocksdb::ReadOptions ro;
      ro.snapshot = snap.get();
      const std::string prefix = stream_prefix(stream);
      std::unique_ptr<rocksdb::Iterator> it(db.db->NewIterator(ro, db.streams));
      uint64_t expected = after_version + 1;
      std::string value;
      for (it->Seek(slice(stream_key(stream, expected))); it->Valid(); it->Next()) {
        if (limit != 0 && out.size() >= limit) break;
        const std::string_view key = view(it->key());
        if (!key.starts_with(prefix)) break;
        if (key.size() != prefix.size() + 8 || it->value().size() != 8) {
          return corrupt("malformed stream index entry for '" + std::string(stream) + "'");
        }
        const uint64_t version = get_be64(key.data() + prefix.size());
        if (version != expected) {
          return corrupt("stream '" + std::string(stream) + "' skips from version " +
                         std::to_string(expected - 1) + " to " + std::to_string(version));
        }
        const uint64_t pos = get_be64(it->value().data());
        BeKey pk(pos);
        rocksdb::Status s = db.db->Get(ro, db.events, slice(pk.view()), &value);
        if (s.IsNotFound()) {
          return corrupt("stream '" + std::string(stream) + "' version " +
                         std::to_string(version) + " points to missing position " +
                         std::to_string(pos));
        }
        if (!s.ok()) return storage_error(s, "reading a stream");
        RecordedEvent& e = out.emplace_back();
        if (!detail::decode_stored(value, e) || e.position != pos || e.stream != stream ||
            e.stream_version != version) {
          return corrupt("stream '" + std::string(stream) + "' version " +
                         std::to_string(version) + " does not match the event at position " +
                         std::to_string(pos));
        }
        ++expected;
      }
      if (!it->status().ok()) return storage_error(it->status(), "reading a stream");
      return out;
    });
  }

  Result<uint64_t> stream_version(std::string_view stream) const override {
    return guarded("stream_version", [&]() -> Result<uint64_t> {
      if (stream.empty() || stream.find('\0') != std::string_view::npos) return uint64_t{0};
      auto db_or = acquire();
      if (!db_or) return db_or.error();
      return cached_version(**db_or, stream);
    });
  }

  uint64_t last_position() const override { return position_.get(); }

  uint64_t wait_for(uint64_t after, std::chrono::milliseconds timeout) const override {
    return position_.wait_for(after, timeout);
  }

  Result<std::optional<std::string>> get_idempotency(std::string_view key) const override {
    return guarded("get_idempotency", [&] { return get(&Db::idempotency, key, "idempotency"); });
  }

  Result<std::optional<std::string>> get_checkpoint(std::string_view name) const override {
    return guarded("get_checkpoint", [&] { return get(&Db::checkpoints, name, "checkpoint"); });
  }

  Status put_checkpoint(std::string_view name, std::string_view value) override {
    return guarded("put_checkpoint", [&]() -> Status {
      if (name.empty()) return invalid("checkpoint name is empty", "empty_checkpoint_name");
      std::lock_guard<std::mutex> wl(write_mu_);
      if (needs_recovery_) {
        if (Status s = recover_locked(); !s) return s;
      }
      auto db_or = acquire();
      if (!db_or) return db_or.error();
      const Db& db = **db_or;
      rocksdb::WriteOptions wo;
      wo.sync = opts_.sync;
      rocksdb::Status s = db.db->Put(wo, db.checkpoints, slice(name), slice(value));
      if (!s.ok()) {
        needs_recovery_ = true;
        return Error::make(Code::unavailable, "checkpoint write failed: " + s.ToString(),
                           "storage_unavailable");
      }
      return Status::Ok();
    });
  }

  Result<VerifyReport> verify() const override {
    return guarded("verify", [&]() -> Result<VerifyReport> {
      VerifyReport r;
      auto fail = [&r](uint64_t position, std::string problem) {
        r.ok = false;
        r.first_bad_position = position;
        r.problem = std::move(problem);
        return r;
      };
      auto db_or = acquire();
      if (!db_or) return db_or.error();
      const Db& db = **db_or;
      SnapshotGuard snap(db.db);
      rocksdb::ReadOptions ro;
      ro.snapshot = snap.get();
      ro.verify_checksums = true;
      // The events walk is sequential and read once: keep it out of the block cache. Index
      // lookups jump between streams and do reuse blocks: cache them.
      rocksdb::ReadOptions walk = ro;
      walk.fill_cache = false;

      std::unordered_map<std::string, uint64_t, StringHash, std::equal_to<>> stream_last;
      std::unique_ptr<rocksdb::Iterator> it(db.db->NewIterator(walk, db.events));
      Hash prev{};
      uint64_t expected = 1;
      RecordedEvent e;
      std::string canonical;
      std::string index_value;
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        if (it->key().size() != 8) return fail(expected, "malformed event key");
        const uint64_t p = get_be64(it->key().data());
        if (p != expected) {
          return fail(expected, "position gap: expected " + std::to_string(expected) +
                                    ", found " + std::to_string(p));
        }
        if (!detail::decode_stored(view(it->value()), e)) {
          return fail(p, "event bytes are undecodable");
        }
        if (e.position != p) {
          return fail(p, "event under key " + std::to_string(p) + " claims position " +
                             std::to_string(e.position));
        }
        detail::encode_canonical(e, canonical);
        const Hash h = detail::chain_hash_bytes(prev, canonical);
        if (h != e.hash) {
          return fail(p, "hash mismatch: stored " + to_hex(e.hash) + ", recomputed " +
                             to_hex(h));
        }
        auto [sit, inserted] = stream_last.try_emplace(e.stream, 0);
        if (e.stream_version != sit->second + 1) {
          return fail(p, "stream '" + e.stream + "' version " +
                             std::to_string(e.stream_version) + " follows version " +
                             std::to_string(sit->second));
        }
        sit->second = e.stream_version;
        rocksdb::Status s =
            db.db->Get(ro, db.streams, slice(stream_key(e.stream, e.stream_version)), &index_value);
        if (s.IsNotFound()) {
          return fail(p, "no stream index entry for '" + e.stream + "' version " +
                             std::to_string(e.stream_version));
        }
        if (s.IsCorruption()) return fail(p, "stream index unreadable: " + s.ToString());
        if (!s.ok()) return storage_error(s, "verifying the stream index");
        if (index_value.size() != 8 || get_be64(index_value.data()) != p) {
          return fail(p, "stream index for '" + e.stream + "' version " +
                             std::to_string(e.stream_version) + " does not point here");
        }
        prev = e.hash;
        ++r.events_checked;
        ++expected;
      }
      if (!it->status().ok()) {
        if (it->status().IsCorruption()) {
          return fail(expected, "storage corruption: " + it->status().ToString());
        }
        return storage_error(it->status(), "verifying events");
      }

      // Every index entry must belong to an event seen above (no orphans).
      std::unique_ptr<rocksdb::Iterator> idx(db.db->NewIterator(walk, db.streams));
      for (idx->SeekToFirst(); idx->Valid(); idx->Next()) {
        const std::string_view key = view(idx->key());
        const size_t nul = key.find('\0');
        const uint64_t pos = idx->value().size() == 8 ? get_be64(idx->value().data()) : 0;
        if (nul == std::string_view::npos || key.size() != nul + 9) {
          return fail(pos, "malformed stream index key");
        }
        const uint64_t version = get_be64(key.data() + nul + 1);
        auto sit = stream_last.find(key.substr(0, nul));
        if (sit == stream_last.end() || version > sit->second) {
          return fail(pos, "stream index entry '" + std::string(key.substr(0, nul)) +
                               "' version " + std::to_string(version) + " has no event");
        }
      }
      if (!idx->status().ok()) {
        if (idx->status().IsCorruption()) {
          return fail(0, "stream index corruption: " + idx->status().ToString());
        }
        return storage_error(idx->status(), "verifying the stream index");
      }
      return r;
    });
  }

 private:
  Result<std::optional<std::string>> get(rocksdb::ColumnFamilyHandle* Db::*cf,
                                         std::string_view key, const char* what) const {
    auto db_or = acquire();
    if (!db_or) return db_or.error();
    const Db& db = **db_or;
    std::string value;
    rocksdb::Status s = db.db->Get(rocksdb::ReadOptions(), db.*cf, slice(key), &value);
    if (s.IsNotFound()) return std::optional<std::string>();
    if (!s.ok()) return storage_error(s, std::string("reading ") + what);
    return std::optional<std::string>(std::move(value));
  }

  // Stream version from the cache, else from the last index entry of the stream.
  Result<uint64_t> cached_version(const Db& db, std::string_view stream) const {
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

  void drop_version_cache() noexcept {
    std::lock_guard<std::mutex> cl(cache_mu_);
    versions_.clear();
    ++cache_epoch_;
  }

  void publish_position(uint64_t pos) noexcept { position_.publish(pos); }

  // The open instance, or unavailable while closed after a failed reopen.
  Result<std::shared_ptr<Db>> acquire() const {
    std::lock_guard<std::mutex> lk(db_mu_);
    if (db_) return db_;
    return Error::make(Code::unavailable,
                       "event store is closed after a storage failure: " + closed_reason_,
                       "storage_unavailable");
  }

  // After a failed write: let RocksDB resume (it flushes memtables and starts a new WAL, so a
  // torn WAL record can never hide later ones); if it refuses, close and reopen the instance.
  // Then re-read the tail from storage, which may differ from memory only if the failed
  // batch reached the WAL after all (e.g. the write landed but the sync failed).
  Status recover_locked() {
    std::shared_ptr<Db> current;
    {
      std::lock_guard<std::mutex> lk(db_mu_);
      current = db_;
    }
    rocksdb::Status resumed =
        current ? current->db->Resume() : rocksdb::Status::IOError("closed");
    if (!resumed.ok()) {
      if (current) {
        // Take the instance away from new readers and wait for current ones to let go: only
        // one instance may hold the directory's LOCK.
        {
          std::lock_guard<std::mutex> lk(db_mu_);
          db_.reset();
          closed_reason_ = resumed.ToString();
        }
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (current.use_count() > 1 && std::chrono::steady_clock::now() < deadline) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (current.use_count() > 1) {
          std::lock_guard<std::mutex> lk(db_mu_);
          db_ = std::move(current);
          return Error::make(Code::unavailable,
                             "event store storage failed (" + resumed.ToString() +
                                 ") and readers still hold it; not reopened yet",
                             "storage_unavailable");
        }
        current.reset();  // closes the failed instance
      }
      auto reopened = open_db(dir_, opts_, cache_);
      if (!reopened) {
        std::lock_guard<std::mutex> lk(db_mu_);
        closed_reason_ = reopened.error().message;
        return Error::make(Code::unavailable,
                           "event store storage has not recovered: " + reopened.error().message,
                           "storage_unavailable");
      }
      current = std::move(reopened).value();
      std::lock_guard<std::mutex> lk(db_mu_);
      db_ = current;
    }
    auto tail = load_tail(*current);
    if (!tail) return tail.error();
    if (tail->position != last_position() || tail->hash != last_hash_) {
      last_hash_ = tail->hash;
      publish_position(tail->position);
      drop_version_cache();
    }
    needs_recovery_ = false;
    return Status::Ok();
  }

  const std::string dir_;
  const RocksOptions opts_;
  const std::shared_ptr<rocksdb::Cache> cache_;

  mutable std::mutex db_mu_;  // guards db_ and closed_reason_ (the pointer, not the DB)
  std::shared_ptr<Db> db_;
  std::string closed_reason_;

  std::mutex write_mu_;  // serializes writers
  Hash last_hash_{};     // writer only (write_mu_)
  bool needs_recovery_ = false;  // write_mu_

  detail::PositionSignal position_;

  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, uint64_t, StringHash, std::equal_to<>> versions_;
  mutable uint64_t cache_epoch_ = 0;
};

}  // namespace

Result<std::unique_ptr<EventStore>> open_rocksdb(const std::string& dir,
                                                  const RocksOptions& opts) {
  return guarded("open_rocksdb", [&]() -> Result<std::unique_ptr<EventStore>> {
    if (dir.empty()) return invalid("event store directory is empty");
    if (opts.create_if_missing) {
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);
      if (ec) {
        return Error::make(Code::unavailable,
                           "cannot create event store directory " + dir + ": " + ec.message(),
                           "storage_unavailable");
      }
    }
    auto cache = rocksdb::NewLRUCache(opts.block_cache_bytes);
    auto db = open_db(dir, opts, cache);
    if (!db) return db.error();
    auto store =
        std::make_unique<RocksEventStore>(dir, opts, std::move(cache), std::move(db).value());
    if (Status st = store->init(); !st) return st.error();
    return std::unique_ptr<EventStore>(std::move(store));
  });
}

}  // namespace atrium::eventstore

// Internals of the RocksDB event store, shared by its files: rocksdb_event_store.cpp (opening,
// reopening after a storage failure, recovery and the WAL walk, permissions), rocksdb_append.cpp
// (the append path), rocksdb_read.cpp (reads of events, streams and records) and
// rocksdb_verify.cpp (the full verification, corruption latching). Internal to eventstore/:
// nothing outside those files includes this.
#pragma once

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include <chrono>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "eventstore/event_store.h"
#include "eventstore/internal.h"

namespace atrium::eventstore::rocks_detail {

using detail::BeKey;
using detail::get_be64;

constexpr const char* kEventsCf = "events";
constexpr const char* kStreamsCf = "streams";
constexpr const char* kIdempotencyCf = "idempotency";
constexpr const char* kCheckpointsCf = "checkpoints";

inline rocksdb::Slice slice(std::string_view s) {
  return {s.data(), s.size()};
}
inline std::string_view view(const rocksdb::Slice& s) {
  return {s.data(), s.size()};
}

inline Error storage_error(const rocksdb::Status& s, std::string_view what) {
  std::string msg = std::string(what) + ": " + s.ToString();
  if (s.IsCorruption()) return Error::make(Code::internal, std::move(msg), "storage_corrupt");
  return Error::make(Code::unavailable, std::move(msg), "storage_unavailable");
}

inline Error corrupt(std::string msg) {
  return Error::make(Code::internal, "event store corrupt: " + msg, "storage_corrupt");
}

using detail::guarded;

inline std::string stream_prefix(std::string_view stream) {
  std::string k;
  k.reserve(stream.size() + 9);
  k.append(stream);
  k.push_back('\0');
  return k;
}

inline std::string stream_key(std::string_view stream, uint64_t version) {
  std::string k = stream_prefix(stream);
  k.append(BeKey(version).view());
  return k;
}

using detail::StringHash;

// Releases a snapshot on scope exit. A secondary instance has no snapshots (and changes
// only when told to catch up, which this store never does): reads see it as it is.
class SnapshotGuard {
 public:
  SnapshotGuard(rocksdb::DB* db, bool supported)
      : db_(db), snap_(supported ? db->GetSnapshot() : nullptr) {}
  ~SnapshotGuard() {
    if (snap_ != nullptr) db_->ReleaseSnapshot(snap_);
  }
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

// What every instance of one store shares: the environment (file system wrapper) and the
// logger. Outlives every Db opened through it.
struct Storage {
  std::shared_ptr<rocksdb::FileSystem> fs;
  std::shared_ptr<rocksdb::Env> env;
  std::shared_ptr<rocksdb::Logger> logger;
  std::function<void(const std::string&)> warn;
};

std::shared_ptr<Storage> make_storage(const RocksOptions& opts);

// Tightens what an older version (or another umask) left: 0700 directories, 0600 files.
void tighten_tree(const std::string& dir);

// One open RocksDB instance with its column families; closed when the last user drops it.
struct Db {
  std::shared_ptr<Storage> storage;  // outlives db
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::ColumnFamilyHandle* events = nullptr;
  rocksdb::ColumnFamilyHandle* streams = nullptr;
  rocksdb::ColumnFamilyHandle* idempotency = nullptr;
  rocksdb::ColumnFamilyHandle* checkpoints = nullptr;
  std::string secondary_dir;  // a secondary instance's own (temporary) directory

  Db() = default;
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  ~Db() {
    if (db != nullptr) {
      for (auto* h : handles) db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
      db->Close().PermitUncheckedError();
      delete db;
    }
    if (!secondary_dir.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(secondary_dir, ec);
    }
  }
};

// Loads the last event (position and hash) from storage.
Result<Tail> load_tail(const Db& db);

// The WAL walk, and with damage what point-in-time recovery would keep (from an instance
// that writes nothing).
Result<WalReport> inspect(const std::string& dir, const RocksOptions& opts,
                          const std::shared_ptr<Storage>& storage);

std::string utc_now();

// Opens the directory for `opts.mode` after walking its WAL (see rocksdb_event_store.cpp).
// `accepted` says whether acknowledged data was dropped by the caller's leave.
Result<std::shared_ptr<Db>> open_checked(const std::string& dir, const RocksOptions& opts,
                                         const std::shared_ptr<Storage>& storage,
                                         const std::shared_ptr<rocksdb::Cache>& cache,
                                         WalReport& report, bool& accepted);

class RocksEventStore final : public EventStore {
 public:
  RocksEventStore(std::string dir, RocksOptions opts, std::shared_ptr<Storage> storage,
                  std::shared_ptr<rocksdb::Cache> cache, std::shared_ptr<Db> db)
      : dir_(std::move(dir)),
        opts_(std::move(opts)),
        storage_(std::move(storage)),
        cache_(std::move(cache)),
        db_(std::move(db)) {}

  Status init();

  Result<AppendResult> append(const AppendRequest& req) override;

  Result<uint64_t> scan(uint64_t after, uint64_t max_events,
                        const EventVisitor& visit) const override;

  Result<std::vector<RecordedEvent>> read_stream(std::string_view stream, uint64_t after_version,
                                                 size_t limit) const override;

  Result<uint64_t> stream_version(std::string_view stream) const override;

  uint64_t last_position() const override { return position_.get(); }

  uint64_t wait_for(uint64_t after, std::chrono::milliseconds timeout) const override {
    return position_.wait_for(after, timeout);
  }

  Result<std::optional<std::string>> get_idempotency(std::string_view key) const override;

  Result<std::optional<std::string>> get_checkpoint(std::string_view name) const override;

  Status put_checkpoint(std::string_view name, std::string_view value) override;

  Status recover_storage() override;

  std::string corruption() const override {
    std::lock_guard<std::mutex> lk(corrupt_mu_);
    return corruption_;
  }

  Status scan_records(bool checkpoints, const RecordVisitor& visit) const override;

  Result<VerifyReport> verify() const override;

  Result<VerifyReport> verify_impl() const;

 private:
  Result<std::optional<std::string>> get(rocksdb::ColumnFamilyHandle* Db::*cf, std::string_view key,
                                         const char* what) const;

  // Stream version from the cache, else from the last index entry of the stream.
  Result<uint64_t> cached_version(const Db& db, std::string_view stream) const;

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

  Status writable() const {
    if (opts_.mode == OpenMode::read_write) return Status::Ok();
    return invalid("the event store is open read-only", "store_read_only");
  }

  // After a failed write: no more writes through that instance (RocksDB 7.8 asserts when a
  // file writer that saw an error is used again). Called with write_mu_ held.
  Status failed_locked(std::string what);

  // When a write failed earlier and the next attempt is due: close the failed instance once
  // readers let go of it (only one instance may hold the directory's LOCK), reopen the
  // directory (WAL recovery: the failed write is at most a torn tail), and re-read the tail,
  // which differs from memory only if the failed batch reached the WAL after all (the write
  // landed, the sync failed). Attempts are spaced out (100 ms doubling to 1 s).
  Status reopen_if_failed_locked();

  // Latches the first corruption a read ran into (corruption(), /readyz).
  void note_corruption(const std::string& what) const;
  template <typename R>
  R watched(R r) const {
    if (!r.ok() && r.error().reason == "storage_corrupt") note_corruption(r.error().message);
    return r;
  }

  const std::string dir_;
  const RocksOptions opts_;
  const std::shared_ptr<Storage> storage_;
  const std::shared_ptr<rocksdb::Cache> cache_;

  mutable std::mutex db_mu_;  // guards db_ and closed_reason_ (the pointer, not the DB)
  std::shared_ptr<Db> db_;
  std::string closed_reason_;

  std::mutex write_mu_;  // serializes writers
  Hash last_hash_{};     // writer only (write_mu_)
  bool failed_ = false;  // a write failed; reopen before the next one (write_mu_)
  std::string failure_;  // write_mu_
  std::chrono::milliseconds backoff_{100};                // write_mu_
  std::chrono::steady_clock::time_point next_attempt_{};  // write_mu_

  mutable std::mutex corrupt_mu_;
  mutable std::string corruption_;

  detail::PositionSignal position_;

  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, uint64_t, StringHash, std::equal_to<>> versions_;
  mutable uint64_t cache_epoch_ = 0;
};

}  // namespace atrium::eventstore::rocks_detail

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
// Storage failures: after a failed write nothing more is written through that RocksDB
// instance. The next writer call (or recover_storage()) closes it once readers have let go
// and reopens the directory (WAL recovery), attempts spaced out from 100 ms to 1 s; the tail
// is then re-read from storage, which stays the only source of truth. Never DB::Resume():
// in 7.8 it rewrites the failed batch's buffered bytes into the old WAL, after a partial
// write a damaged record in the middle of the log. RocksDB's info log goes to `warn`
// (warnings and errors only), not to a LOG file: a LOG file on a full disk is what aborted
// the process (`Assertion 'sync_without_flush_called_'`: 7.8 asserts when a file writer
// that saw an error is used again, and the info log is written after every error). Readers
// hold a shared_ptr to the open instance for the length of one call; while the store is
// closed between a failed reopen and the next attempt they get Code::unavailable.
//
// Opening: the WAL is walked first (wal_inspect.cpp). Clean: RocksDB recovers in
// kTolerateCorruptedTailRecords mode (a torn last record is fine, any other corruption
// fails the open). Damaged: point-in-time recovery, which drops the damaged record and all
// after it, only when that loses no acknowledged event (a torn tail, warned about) or when
// the caller accepts the loss (warned about and recorded in kDataLossCheckpoint).
//
// Permissions: every file is created 0600 and every directory 0700 through a FileSystem
// wrapper (RocksDB itself creates 0644/0755 minus the umask); existing ones are tightened.
#include <fcntl.h>
#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cinttypes>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <ctime>
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

// RocksDB's info log, warnings and errors only, to `warn` (never a file in the store).
class WarnLogger final : public rocksdb::Logger {
 public:
  explicit WarnLogger(std::function<void(const std::string&)> warn)
      : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL), warn_(std::move(warn)) {}
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel() || level == rocksdb::InfoLogLevel::HEADER_LEVEL) return;
    char buf[2048];
    std::vsnprintf(buf, sizeof buf, format, ap);
    std::string line = std::string("rocksdb: ") + buf;
    while (!line.empty() && line.back() == '\n') line.pop_back();
    try {
      warn_(line);
    } catch (...) {
    }
  }

 private:
  std::function<void(const std::string&)> warn_;
};

void restrict_mode(const std::string& path, mode_t mode) {
  (void)::chmod(path.c_str(), mode);  // best effort: the directory is 0700 in any case
}

// Creates every file 0600 and every directory 0700, whatever the umask.
class PrivateFs final : public rocksdb::FileSystemWrapper {
 public:
  explicit PrivateFs(const std::shared_ptr<rocksdb::FileSystem>& target)
      : FileSystemWrapper(target) {}
  const char* Name() const override { return "AtriumPrivateFs"; }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* d) override {
    return file(f, target()->NewWritableFile(f, o, r, d));
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* d) override {
    return file(f, target()->ReopenWritableFile(f, o, r, d));
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old,
                                      const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* d) override {
    return file(f, target()->ReuseWritableFile(f, old, o, r, d));
  }
  rocksdb::IOStatus NewRandomRWFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>* r,
                                    rocksdb::IODebugContext* d) override {
    return file(f, target()->NewRandomRWFile(f, o, r, d));
  }
  rocksdb::IOStatus CreateDir(const std::string& dir, const rocksdb::IOOptions& o,
                              rocksdb::IODebugContext* d) override {
    return directory(dir, target()->CreateDir(dir, o, d));
  }
  rocksdb::IOStatus CreateDirIfMissing(const std::string& dir, const rocksdb::IOOptions& o,
                                       rocksdb::IODebugContext* d) override {
    return directory(dir, target()->CreateDirIfMissing(dir, o, d));
  }
  rocksdb::IOStatus LockFile(const std::string& f, const rocksdb::IOOptions& o,
                             rocksdb::FileLock** lock, rocksdb::IODebugContext* d) override {
    return file(f, target()->LockFile(f, o, lock, d));
  }

 private:
  static rocksdb::IOStatus file(const std::string& f, rocksdb::IOStatus s) {
    if (s.ok()) restrict_mode(f, 0600);
    return s;
  }
  static rocksdb::IOStatus directory(const std::string& dir, rocksdb::IOStatus s) {
    if (s.ok()) restrict_mode(dir, 0700);
    return s;
  }
};

// Tightens what an older version (or another umask) left: 0700 directories, 0600 files.
void tighten_tree(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  auto fix = [](const fs::path& p, bool is_dir) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0 || S_ISLNK(st.st_mode)) return;
    const mode_t want = is_dir ? 0700 : 0600;
    if ((st.st_mode & 07777) != want) restrict_mode(p.string(), want);
  };
  fix(dir, true);
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    fix(it->path(), it->is_directory(ec));
  }
}

// What every instance of one store shares: the environment (file system wrapper) and the
// logger. Outlives every Db opened through it.
struct Storage {
  std::shared_ptr<rocksdb::FileSystem> fs;
  std::shared_ptr<rocksdb::Env> env;
  std::shared_ptr<rocksdb::Logger> logger;
  std::function<void(const std::string&)> warn;
};

std::shared_ptr<Storage> make_storage(const RocksOptions& opts) {
  auto st = std::make_shared<Storage>();
  st->warn = opts.warn ? opts.warn : [](const std::string& line) {
    std::fprintf(stderr, "event store: %s\n", line.c_str());
  };
  std::shared_ptr<rocksdb::FileSystem> base =
      opts.env != nullptr ? opts.env->GetFileSystem() : rocksdb::FileSystem::Default();
  st->fs = std::make_shared<PrivateFs>(base);
  st->env = rocksdb::NewCompositeEnv(st->fs);
  st->logger = std::make_shared<WarnLogger>(st->warn);
  return st;
}

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
                                    const std::shared_ptr<Storage>& storage,
                                    const std::shared_ptr<rocksdb::Cache>& cache,
                                    rocksdb::WALRecoveryMode recovery) {
  rocksdb::DBOptions db_opts;
  const bool writer = opts.mode == OpenMode::read_write;
  db_opts.create_if_missing = writer && opts.create_if_missing;
  db_opts.create_missing_column_families = writer;
  db_opts.paranoid_checks = true;
  db_opts.wal_recovery_mode = recovery;
  // This store recovers from write errors by reopening; RocksDB must not Resume() by itself.
  db_opts.max_bgerror_resume_count = 0;
  db_opts.info_log = storage->logger;
  db_opts.env = storage->env.get();
  // Read-only and secondary instances open every table file at once and keep it open, so
  // a running writer's compactions cannot delete a file from under them.
  if (!writer) db_opts.max_open_files = -1;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, cf_options(cache, false)},
      {kEventsCf, cf_options(cache, false)},
      {kStreamsCf, cf_options(cache, true)},
      {kIdempotencyCf, cf_options(cache, true)},
      {kCheckpointsCf, cf_options(cache, true)},
  };
  auto db = std::make_shared<Db>();
  db->storage = storage;
  rocksdb::Status s;
  switch (opts.mode) {
    case OpenMode::read_write:
      s = rocksdb::DB::Open(db_opts, dir, cfs, &db->handles, &db->db);
      break;
    case OpenMode::read_only:
      s = rocksdb::DB::OpenForReadOnly(db_opts, dir, cfs, &db->handles, &db->db);
      break;
    case OpenMode::secondary: {
      std::string tmpl =
          (std::filesystem::temp_directory_path() / "atrium-secondary-XXXXXX").string();
      if (::mkdtemp(tmpl.data()) == nullptr) {
        return Error::make(Code::unavailable, "cannot create a directory for a secondary instance",
                           "storage_unavailable");
      }
      db->secondary_dir = tmpl;
      s = rocksdb::DB::OpenAsSecondary(db_opts, dir, tmpl, cfs, &db->handles, &db->db);
      break;
    }
  }
  if (!s.ok()) {
    db->db = nullptr;
    db->handles.clear();
    return storage_error(s, "opening event store at " + dir);
  }
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

constexpr auto kTolerateTail = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
constexpr auto kPointInTime = rocksdb::WALRecoveryMode::kPointInTimeRecovery;

// The WAL walk, and with damage what point-in-time recovery would keep (from an instance
// that writes nothing).
Result<WalReport> inspect(const std::string& dir, const RocksOptions& opts,
                          const std::shared_ptr<Storage>& storage) {
  auto scan = detail::scan_wal_files(dir);
  if (!scan) return scan.error();
  WalReport r = std::move(scan).value();
  if (!r.damaged) return r;
  RocksOptions ro = opts;
  if (ro.mode == OpenMode::read_write) ro.mode = OpenMode::read_only;
  // RocksDB's warnings about the damage come once, from the real open, not from this look.
  auto quiet = std::make_shared<Storage>(*storage);
  quiet->logger = std::make_shared<WarnLogger>([](const std::string&) {});
  auto db = open_db(dir, ro, quiet, rocksdb::NewLRUCache(8u << 20), kPointInTime);
  if (!db) return db.error();
  auto tail = load_tail(**db);
  if (!tail) return tail.error();
  r.kept_position = tail->position;
  r.lost_events =
      r.last_position_after > r.kept_position ? r.last_position_after - r.kept_position : 0;
  return r;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Opens the directory for `opts.mode` after walking its WAL (see the file comment).
// `accepted` says whether acknowledged data was dropped by the caller's leave.
Result<std::shared_ptr<Db>> open_checked(const std::string& dir, const RocksOptions& opts,
                                         const std::shared_ptr<Storage>& storage,
                                         const std::shared_ptr<rocksdb::Cache>& cache,
                                         WalReport& report, bool& accepted) {
  accepted = false;
  auto rep = inspect(dir, opts, storage);
  if (!rep) return rep.error();
  report = std::move(rep).value();
  rocksdb::WALRecoveryMode recovery = kTolerateTail;
  if (opts.mode != OpenMode::read_write) {
    recovery = kPointInTime;  // a reader looks at what is there and changes nothing
  } else if (report.damaged) {
    if (report.data_loss()) {
      if (!opts.accept_data_loss) {
        return Error::make(Code::internal,
                           "refusing to open " + dir +
                               ": the write-ahead log is damaged in the middle, not just at "
                               "its tail: " +
                               report.describe() +
                               ". Restore the directory from a backup, or accept the loss "
                               "explicitly",
                           "wal_corrupt");
      }
      accepted = true;
    }
    recovery = kPointInTime;
  }
  auto db = open_db(dir, opts, storage, cache, recovery);
  if (!db && recovery == kTolerateTail && db.error().reason == "storage_corrupt") {
    if (!opts.accept_data_loss) {
      return Error::make(Code::internal,
                         "refusing to open " + dir +
                             ": RocksDB found corruption in the "
                             "write-ahead log (" +
                             db.error().message +
                             "); recovery would drop it and everything after it. Restore "
                             "the directory from a backup, or accept the loss explicitly",
                         "wal_corrupt");
    }
    accepted = true;
    report.damaged = true;
    report.problem = db.error().message;
    db = open_db(dir, opts, storage, cache, kPointInTime);
  }
  return db;
}

class RocksEventStore final : public EventStore {
 public:
  RocksEventStore(std::string dir, RocksOptions opts, std::shared_ptr<Storage> storage,
                  std::shared_ptr<rocksdb::Cache> cache, std::shared_ptr<Db> db)
      : dir_(std::move(dir)),
        opts_(std::move(opts)),
        storage_(std::move(storage)),
        cache_(std::move(cache)),
        db_(std::move(db)) {}

  Status init() {
    auto tail = load_tail(*db_);
    if (!tail) return tail.error();
    last_hash_ = tail->hash;
    position_.publish(tail->position);
    return Status::Ok();
  }

  Result<AppendResult> append(const AppendRequest& req) override {
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

  Result<uint64_t> scan(uint64_t after, uint64_t max_events,
                        const EventVisitor& visit) const override {
    return watched(guarded("scan", [&]() -> Result<uint64_t> {
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
    }));
  }

  Result<std::vector<RecordedEvent>> read_stream(std::string_view stream, uint64_t after_version,
                                                 size_t limit) const override {
    return watched(guarded("read_stream", [&]() -> Result<std::vector<RecordedEvent>> {
      std::vector<RecordedEvent> out;
      if (stream.empty() || stream.find('\0') != std::string_view::npos ||
          after_version == UINT64_MAX) {
        return out;
      }
      auto db_or = acquire();
      if (!db_or) return db_or.error();
      const Db& db = **db_or;
      SnapshotGuard snap(db.db, opts_.mode != OpenMode::secondary);
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
    }));
  }

  Result<uint64_t> stream_version(std::string_view stream) const override {
    return watched(guarded("stream_version", [&]() -> Result<uint64_t> {
      if (stream.empty() || stream.find('\0') != std::string_view::npos) return uint64_t{0};
      auto db_or = acquire();
      if (!db_or) return db_or.error();
      return cached_version(**db_or, stream);
    }));
  }

  uint64_t last_position() const override { return position_.get(); }

  uint64_t wait_for(uint64_t after, std::chrono::milliseconds timeout) const override {
    return position_.wait_for(after, timeout);
  }

  Result<std::optional<std::string>> get_idempotency(std::string_view key) const override {
    return watched(
        guarded("get_idempotency", [&] { return get(&Db::idempotency, key, "idempotency"); }));
  }

  Result<std::optional<std::string>> get_checkpoint(std::string_view name) const override {
    return watched(
        guarded("get_checkpoint", [&] { return get(&Db::checkpoints, name, "checkpoint"); }));
  }

  Status put_checkpoint(std::string_view name, std::string_view value) override {
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

  Status recover_storage() override {
    if (opts_.mode != OpenMode::read_write) return Status::Ok();
    std::lock_guard<std::mutex> wl(write_mu_);
    return reopen_if_failed_locked();
  }

  std::string corruption() const override {
    std::lock_guard<std::mutex> lk(corrupt_mu_);
    return corruption_;
  }

  Status scan_records(bool checkpoints, const RecordVisitor& visit) const override {
    return guarded("scan_records", [&]() -> Status {
      auto db_or = acquire();
      if (!db_or) return db_or.error();
      const Db& db = **db_or;
      std::unique_ptr<rocksdb::Iterator> it(db.db->NewIterator(
          rocksdb::ReadOptions(), checkpoints ? db.checkpoints : db.idempotency));
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        if (!visit(view(it->key()), view(it->value()))) break;
      }
      if (!it->status().ok()) return storage_error(it->status(), "listing records");
      return Status::Ok();
    });
  }

  Result<VerifyReport> verify() const override {
    auto r = verify_impl();
    if (r.ok() && !r->ok)
      note_corruption("verify: position " + std::to_string(r->first_bad_position) + ": " +
                      r->problem);
    return watched(std::move(r));
  }

  Result<VerifyReport> verify_impl() const {
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
      SnapshotGuard snap(db.db, opts_.mode != OpenMode::secondary);
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

  Status writable() const {
    if (opts_.mode == OpenMode::read_write) return Status::Ok();
    return invalid("the event store is open read-only", "store_read_only");
  }

  // After a failed write: no more writes through that instance (RocksDB 7.8 asserts when a
  // file writer that saw an error is used again). Called with write_mu_ held.
  Status failed_locked(std::string what) {
    if (!failed_) {
      failed_ = true;
      backoff_ = std::chrono::milliseconds(100);
      next_attempt_ = std::chrono::steady_clock::now() + backoff_;
    }
    failure_ = what;
    return Error::make(Code::unavailable, std::move(what), "storage_unavailable");
  }

  // When a write failed earlier and the next attempt is due: close the failed instance once
  // readers let go of it (only one instance may hold the directory's LOCK), reopen the
  // directory (WAL recovery: the failed write is at most a torn tail), and re-read the tail,
  // which differs from memory only if the failed batch reached the WAL after all (the write
  // landed, the sync failed). Attempts are spaced out (100 ms doubling to 1 s).
  Status reopen_if_failed_locked() {
    if (!failed_) return Status::Ok();
    const auto now = std::chrono::steady_clock::now();
    if (now < next_attempt_) {
      return Error::make(Code::unavailable,
                         "event store storage failed (" + failure_ + "); reopening shortly",
                         "storage_unavailable");
    }
    backoff_ = std::min<std::chrono::milliseconds>(backoff_ * 2, std::chrono::seconds(1));
    next_attempt_ = now + backoff_;
    std::shared_ptr<Db> current;
    {
      std::lock_guard<std::mutex> lk(db_mu_);
      current = std::move(db_);
      if (current) closed_reason_ = failure_;
    }
    if (current) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (current.use_count() > 1 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      if (current.use_count() > 1) {
        std::lock_guard<std::mutex> lk(db_mu_);
        db_ = std::move(current);
        return Error::make(Code::unavailable,
                           "event store storage failed (" + failure_ +
                               ") and readers still hold it; not reopened yet",
                           "storage_unavailable");
      }
      current.reset();  // closes the failed instance
    }
    RocksOptions reopen = opts_;
    reopen.accept_data_loss = false;  // a loss found now was not the one accepted at start
    WalReport report;
    bool accepted = false;
    auto reopened = open_checked(dir_, reopen, storage_, cache_, report, accepted);
    if (!reopened) {
      if (reopened.error().reason == "wal_corrupt") note_corruption(reopened.error().message);
      std::lock_guard<std::mutex> lk(db_mu_);
      closed_reason_ = reopened.error().message;
      return Error::make(Code::unavailable,
                         "event store storage has not recovered: " + reopened.error().message,
                         "storage_unavailable");
    }
    current = std::move(reopened).value();
    auto tail = load_tail(*current);
    if (!tail) return tail.error();
    {
      std::lock_guard<std::mutex> lk(db_mu_);
      db_ = current;
    }
    if (report.damaged) {
      storage_->warn("reopened after a storage failure; " + report.describe());
    }
    if (tail->position != last_position() || tail->hash != last_hash_) {
      last_hash_ = tail->hash;
      publish_position(tail->position);
      drop_version_cache();
    }
    failed_ = false;
    storage_->warn("storage recovered: appends go through again (last position " +
                   std::to_string(tail->position) + ")");
    return Status::Ok();
  }

  // Latches the first corruption a read ran into (corruption(), /readyz).
  void note_corruption(const std::string& what) const {
    {
      std::lock_guard<std::mutex> lk(corrupt_mu_);
      if (!corruption_.empty()) return;
      corruption_ = what.empty() ? "corruption" : what;
    }
    storage_->warn("CORRUPTION: " + corruption_);
  }
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

}  // namespace

Result<std::unique_ptr<EventStore>> open_rocksdb(const std::string& dir,
                                                  const RocksOptions& opts) {
  return guarded("open_rocksdb", [&]() -> Result<std::unique_ptr<EventStore>> {
    if (dir.empty()) return invalid("event store directory is empty");
    const bool writer = opts.mode == OpenMode::read_write;
    if (writer && opts.create_if_missing) {
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);
      if (ec) {
        return Error::make(Code::unavailable,
                           "cannot create event store directory " + dir + ": " + ec.message(),
                           "storage_unavailable");
      }
    }
    if (!writer && !std::filesystem::exists(std::filesystem::path(dir) / "CURRENT")) {
      return Error::make(Code::not_found, "no event store at " + dir, "store_not_found");
    }
    if (writer) tighten_tree(dir);
    auto storage = make_storage(opts);
    auto cache = rocksdb::NewLRUCache(opts.block_cache_bytes);
    WalReport report;
    bool accepted = false;
    auto db = open_checked(dir, opts, storage, cache, report, accepted);
    if (!db) return db.error();
    auto store = std::make_unique<RocksEventStore>(dir, opts, storage, std::move(cache),
                                                   std::move(db).value());
    if (Status st = store->init(); !st) return st.error();
    if (report.damaged) {
      report.kept_position = store->last_position();
      report.lost_events = report.last_position_after > report.kept_position
                               ? report.last_position_after - report.kept_position
                               : 0;
    }
    if (writer && report.damaged) {
      if (accepted) {
        const std::string line =
            "DATA LOSS ACCEPTED: opened past damage in the write-ahead "
            "log, as the caller allowed: " +
            report.describe();
        storage->warn(line);
        auto prev = store->get_checkpoint(kDataLossCheckpoint);
        std::string record = prev.ok() && prev->has_value() ? **prev : std::string();
        record += utc_now() + " " + line + "\n";
        if (Status st = store->put_checkpoint(kDataLossCheckpoint, record); !st) {
          return Error::make(Code::unavailable,
                             "cannot record the accepted data loss: " + st.error().message,
                             "storage_unavailable");
        }
      } else {
        storage->warn("dropped a torn tail: " + report.describe());
      }
    }
    if (opts.wal_report != nullptr) *opts.wal_report = report;
    return std::unique_ptr<EventStore>(std::move(store));
  });
}

Result<WalReport> inspect_wal(const std::string& dir, const RocksOptions& opts) {
  return guarded("inspect_wal", [&]() -> Result<WalReport> {
    if (!std::filesystem::exists(std::filesystem::path(dir) / "CURRENT")) {
      return Error::make(Code::not_found, "no event store at " + dir, "store_not_found");
    }
    return inspect(dir, opts, make_storage(opts));
  });
}

bool rocksdb_locked(const std::string& dir) {
  const std::string lock = dir + "/LOCK";
  int fd = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 0;
  const bool held = ::fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
  ::close(fd);
  return held;
}

std::string WalReport::describe() const {
  auto n = [](uint64_t v) { return std::to_string(v); };
  if (!damaged) {
    return "the write-ahead log reads back completely (" + n(files) + " files, " + n(bytes) +
           " bytes, " + n(records) + " records)";
  }
  std::string s;
  if (file.empty()) {
    s = "RocksDB reported corruption in the write-ahead log (" + problem + ")";
  } else {
    s = file + ": " + problem + " at byte offset " + n(offset) + " of " +
        n(offset + dropped_bytes) + "; recovery drops the " + n(dropped_bytes) +
        " bytes from there on";
    if (later_bytes > 0) s += " and the " + n(later_bytes) + " bytes of later WAL files";
  }
  if (lost_events > 0) {
    s += ", which hold " + n(records_after) + " intact records: " + n(lost_events) +
         " acknowledged events, positions " + n(kept_position + 1) + " to " +
         n(last_position_after) + " (the log is intact up to position " + n(kept_position) + ")";
  } else if (records_after > 0) {
    s += "; the " + n(records_after) +
         " intact records after it hold no event the log does not keep (up to position " +
         n(kept_position) + ")";
  } else if (!file.empty()) {
    s += "; nothing intact follows it: a torn tail, the last write cut short (the log keeps "
         "every event up to position " +
         n(kept_position) + ")";
  }
  return s;
}

}  // namespace atrium::eventstore

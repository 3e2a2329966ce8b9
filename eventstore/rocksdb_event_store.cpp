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
//
// This file holds opening (the WAL walk, recovery modes, permissions) and reopening after a
// storage failure; the append path, the reads and verification are in rocksdb_append.cpp,
// rocksdb_read.cpp and rocksdb_verify.cpp (shared internals: rocksdb_internal.h).
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
#include "eventstore/rocksdb_internal.h"

namespace atrium::eventstore {
namespace rocks_detail {
namespace {

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

}  // namespace

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

namespace {

rocksdb::ColumnFamilyOptions cf_options(const std::shared_ptr<rocksdb::Cache>& cache, bool bloom) {
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

}  // namespace

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

namespace {

constexpr auto kTolerateTail = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
constexpr auto kPointInTime = rocksdb::WALRecoveryMode::kPointInTimeRecovery;

}  // namespace

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

Status RocksEventStore::init() {
  auto tail = load_tail(*db_);
  if (!tail) return tail.error();
  last_hash_ = tail->hash;
  position_.publish(tail->position);
  return Status::Ok();
}

Status RocksEventStore::recover_storage() {
  if (opts_.mode != OpenMode::read_write) return Status::Ok();
  std::lock_guard<std::mutex> wl(write_mu_);
  return reopen_if_failed_locked();
}

Status RocksEventStore::failed_locked(std::string what) {
  if (!failed_) {
    failed_ = true;
    backoff_ = std::chrono::milliseconds(100);
    next_attempt_ = std::chrono::steady_clock::now() + backoff_;
  }
  failure_ = what;
  return Error::make(Code::unavailable, std::move(what), "storage_unavailable");
}

Status RocksEventStore::reopen_if_failed_locked() {
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

}  // namespace rocks_detail

using namespace rocks_detail;

Result<std::unique_ptr<EventStore>> open_rocksdb(const std::string& dir, const RocksOptions& opts) {
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

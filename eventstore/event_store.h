// The event store: an append-only, hash-chained log of opaque events with a global,
// gap-free position (starting at 1) and per-stream versions (starting at 1).
// It knows bytes and positions, not the domain: `data` is an opaque string.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace rocksdb {
class Env;
}  // namespace rocksdb

namespace atrium::eventstore {

// Expected version of a stream for optimistic concurrency (EventStoreDB style).
struct ExpectedVersion {
  enum class Kind { any, no_stream, stream_exists, exact };
  Kind kind = Kind::any;
  uint64_t version = 0;  // only for exact

  static ExpectedVersion Any() { return {Kind::any, 0}; }
  static ExpectedVersion NoStream() { return {Kind::no_stream, 0}; }
  static ExpectedVersion StreamExists() { return {Kind::stream_exists, 0}; }
  static ExpectedVersion Exact(uint64_t v) { return {Kind::exact, v}; }
};

// An event to append. recorded_at_ms is chosen by the caller (time is injected).
struct NewEvent {
  std::string type;
  uint32_t schema_version = 1;
  std::string data;  // opaque bytes (JSON in practice)
  std::string actor;
  std::string correlation_id;
  std::string causation_id;
  std::string idempotency_key;
  int64_t recorded_at_ms = 0;
};

struct StreamWrite {
  std::string stream;
  ExpectedVersion expected = ExpectedVersion::Any();
  std::vector<NewEvent> events;
};

// Opaque record stored under an idempotency key in the same atomic batch as the events.
struct IdempotencyRecord {
  std::string key;
  std::string value;
};

struct AppendRequest {
  std::vector<StreamWrite> writes;  // applied in order; positions follow that order
  std::vector<IdempotencyRecord> idempotency;
  // Optional checkpoint written atomically with the batch (name -> bytes).
  std::vector<std::pair<std::string, std::string>> checkpoints;
};

using Hash = std::array<uint8_t, 32>;

struct RecordedEvent {
  uint64_t position = 0;
  std::string stream;
  uint64_t stream_version = 0;
  std::string type;
  uint32_t schema_version = 1;
  int64_t recorded_at_ms = 0;
  std::string actor;
  std::string correlation_id;
  std::string causation_id;
  std::string idempotency_key;
  std::string data;
  Hash hash{};  // SHA-256(previous hash || canonical bytes of this event)
};

struct AppendResult {
  uint64_t first_position = 0;  // 0 when the request held no events
  uint64_t last_position = 0;
};

struct VerifyReport {
  uint64_t events_checked = 0;
  bool ok = true;
  uint64_t first_bad_position = 0;  // set when !ok
  std::string problem;              // what broke at first_bad_position
};

// Visitor for scans: return false to stop.
using EventVisitor = std::function<bool(const RecordedEvent&)>;
// Visitor for idempotency records and checkpoints (key, value): return false to stop.
using RecordVisitor = std::function<bool(std::string_view, std::string_view)>;

class EventStore {
 public:
  virtual ~EventStore() = default;

  // Appends every write of `req` atomically (all or nothing) and durably (synced) before
  // returning. Errors: conflict when a stream's expected version does not hold (nothing
  // written); invalid_argument for an empty stream name or type; unavailable when the
  // storage fails (nothing written, the store stays usable once storage recovers).
  virtual Result<AppendResult> append(const AppendRequest& req) = 0;

  // Calls `visit` for every event with position > after, in order, until it returns false
  // or `max_events` were visited (0 = no limit). Returns the number visited.
  virtual Result<uint64_t> scan(uint64_t after, uint64_t max_events,
                                const EventVisitor& visit) const = 0;

  // Events of one stream with version > after_version, in order, at most `limit`
  // (0 = no limit, as for scan).
  virtual Result<std::vector<RecordedEvent>> read_stream(std::string_view stream,
                                                         uint64_t after_version,
                                                         size_t limit) const = 0;

  // Current version of a stream; 0 when the stream does not exist.
  virtual Result<uint64_t> stream_version(std::string_view stream) const = 0;

  // Highest position appended; 0 for an empty log.
  virtual uint64_t last_position() const = 0;

  // Blocks until last_position() > after or the timeout passes; returns last_position().
  // This is the in-process subscription primitive: readers wake on new appends.
  virtual uint64_t wait_for(uint64_t after, std::chrono::milliseconds timeout) const = 0;

  // The value stored under an idempotency key, if any.
  virtual Result<std::optional<std::string>> get_idempotency(std::string_view key) const = 0;

  // Named checkpoints (e.g. a projection snapshot), written by append() or put_checkpoint().
  virtual Result<std::optional<std::string>> get_checkpoint(std::string_view name) const = 0;
  virtual Status put_checkpoint(std::string_view name, std::string_view value) = 0;

  // Walks the whole log, recomputing the hash chain and checking positions are gap-free
  // and the stream index agrees; reports the first break.
  virtual Result<VerifyReport> verify() const = 0;

  // After a storage failure (a failed append or checkpoint write): brings the store back
  // when storage allows (the RocksDB store reopens itself, attempts spaced out up to 1 s);
  // Ok once appends can go through again. Cheap when nothing failed.
  virtual Status recover_storage() { return Status::Ok(); }

  // The first corruption a read (scan, read_stream, verify, ...) ran into; empty while none
  // was seen. Once set it stays set: the store's content is not what was written.
  virtual std::string corruption() const { return {}; }

  // Every idempotency record (checkpoints = false) or checkpoint (true), in key order, for
  // `atriumd migrate`. failed_precondition for a store that cannot list them.
  virtual Status scan_records(bool checkpoints, const RecordVisitor& visit) const {
    (void)checkpoints;
    (void)visit;
    return Error::make(Code::failed_precondition, "this store cannot list its records");
  }
};

// What a read-only walk of a RocksDB store's write-ahead log found. The first damaged
// record (one that does not read back) and what follows it tell a torn tail, a last write
// cut short that nobody was told succeeded, from damage in the middle of the log, after
// which acknowledged writes follow that recovery would drop.
struct WalReport {
  uint64_t files = 0;    // WAL files read
  uint64_t bytes = 0;    // their total size
  uint64_t records = 0;  // intact records before any damage
  bool damaged = false;
  std::string file;            // the WAL file holding the first damaged record
  uint64_t offset = 0;         // its byte offset in that file
  std::string problem;         // "checksum mismatch", "incomplete record at the end ...", ...
  uint64_t dropped_bytes = 0;  // bytes of that file from the damage to its end
  uint64_t later_bytes = 0;    // bytes of the WAL files after it
  uint64_t records_after = 0;  // intact records after the damage
  uint64_t last_position_before = 0;  // last event position in the WAL before the damage
  uint64_t first_position_after = 0;  // event positions in the intact records after it
  uint64_t last_position_after = 0;
  uint64_t kept_position = 0;  // the log's last position once recovery drops the damage
  uint64_t lost_events = 0;    // acknowledged events that dropping the damage loses

  bool data_loss() const { return damaged && lost_events > 0; }
  bool torn_tail() const { return damaged && lost_events == 0; }
  std::string describe() const;  // one paragraph naming the file, offset, bytes and events
};

// Checkpoint where the RocksDB store records every data loss accepted at open.
inline constexpr const char* kDataLossCheckpoint = "store.data_loss";

enum class OpenMode {
  read_write,  // the one writer; takes the directory's lock
  read_only,   // RocksDB read-only instance: never writes a byte to the directory
  secondary,   // RocksDB secondary instance: reads alongside a running writer, never writes
};

struct RocksOptions {
  bool sync = true;            // false only for benchmarks that say so
  bool create_if_missing = true;
  size_t block_cache_bytes = 64u << 20;
  // Optional RocksDB environment (not owned; must outlive the store). Null = the default.
  // Lets tests inject storage faults through a rocksdb::FileSystemWrapper.
  rocksdb::Env* env = nullptr;
  OpenMode mode = OpenMode::read_write;
  // Open even when the WAL is damaged in the middle, dropping the acknowledged events after
  // the damage (point-in-time recovery). The loss is warned about and recorded in the
  // kDataLossCheckpoint checkpoint. Without it such a store is refused (storage_corrupt).
  bool accept_data_loss = false;
  // Where warnings go (a torn tail dropped, data loss accepted, RocksDB's own warnings and
  // errors). Null: stderr.
  std::function<void(const std::string&)> warn;
  // When set, receives what the WAL walk at open found.
  WalReport* wal_report = nullptr;
};

// Opens (or creates) a RocksDB-backed store at `dir`. Fails loudly (unavailable/internal
// with RocksDB's message) on corruption instead of serving half a log. The WAL is walked
// first: a torn tail (nothing acknowledged after the damage) is dropped with a warning;
// damage followed by acknowledged events refuses the open (reason wal_corrupt, the message
// says what would be lost) unless accept_data_loss. Files are created 0600 and directories
// 0700 whatever the umask, and existing ones are tightened to that.
Result<std::unique_ptr<EventStore>> open_rocksdb(const std::string& dir,
                                                  const RocksOptions& opts = {});

// Walks the WAL of the store at `dir` without changing anything; when it is damaged, also
// opens the store read-only (or as a secondary, per opts.mode) to learn what recovery keeps.
Result<WalReport> inspect_wal(const std::string& dir, const RocksOptions& opts = {});

// True while a process holds the store's lock (a daemon runs on it). Changes nothing.
bool rocksdb_locked(const std::string& dir);

// A volatile store with the same contract, for tests.
std::unique_ptr<EventStore> make_in_memory();

// Canonical bytes of an event, the input to its hash (with the previous hash).
std::string canonical_bytes(const RecordedEvent& e);
Hash chain_hash(const Hash& previous, const RecordedEvent& e);
std::string to_hex(const Hash& h);

}  // namespace atrium::eventstore

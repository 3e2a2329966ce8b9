// A log several brokers share (PostgreSQL): the EventStore contract plus what one leader and
// its followers need. Exactly one broker writes at a time; it holds a lease in the log's head
// row, timed by the database's clock, with a term that every append checks. Followers read.
//
// The head row holds (term, leader, leader URL, lease end, position, last hash). Every append
// updates it in the same transaction as its events, WHERE term = <the writer's term> AND
// position = <what the writer last wrote>: the row lock serialises commits, so positions are
// gap-free and in commit order by construction, and an append by a broker whose term has
// passed writes nothing (failed_precondition, reason "fenced").
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "eventstore/event_store.h"

namespace atrium::eventstore {

// The head row as the database sees it now.
struct Head {
  uint64_t term = 0;
  std::string leader_id;           // empty: no leader (never led, or released)
  std::string leader_url;          // the leader's advertised URL
  int64_t lease_remaining_ms = 0;  // <= 0: expired
  bool leader_alive = false;       // the leader's election session is still connected
  uint64_t position = 0;
  Hash last_hash{};
};

struct Candidate {
  std::string member_id;  // unique per broker process
  std::string url;        // advertised URL for forwarded writes
  std::chrono::milliseconds ttl{10000};
};

// What one broker says about itself (GET /v1/cluster).
struct MemberReport {
  std::string member_id;
  std::string url;
  std::string role;  // "leader" or "follower"
  uint64_t term = 0;
  uint64_t applied = 0;  // last position folded into its views
};

struct MemberRow {
  MemberReport report;
  int64_t seen_ms_ago = 0;  // by the database's clock
};

struct Lease {
  uint64_t term = 0;
  uint64_t position = 0;  // the log's last position when the lease was taken
};

class SharedLog : public EventStore {
 public:
  // ---- leadership (all timed by the database's clock) -------------------------------------
  // The head row. unavailable when the database cannot be reached.
  virtual Result<Head> head() = 0;
  // Takes the lease when it has expired, was released, or its holder's election session is
  // gone (the holder died: its connection closed). Increments the term. nullopt while another
  // broker holds a live lease. Waits for an in-flight append of the old leader (row lock).
  virtual Result<std::optional<Lease>> try_acquire(const Candidate& c) = 0;
  // Extends the lease by c.ttl from the database's now. false: the term has passed (another
  // broker took over); the caller must stop leading at once.
  virtual Result<bool> renew(uint64_t term, const Candidate& c) = 0;
  // Gives the lease up (graceful stop): a follower can take over without waiting for it.
  virtual Status release(uint64_t term, const std::string& member_id) = 0;
  // True when `term` is still the current term held by member_id with a live lease: the last
  // check before a side effect outside the log (a libvirt call).
  virtual Result<bool> confirm(uint64_t term, const std::string& member_id) = 0;

  // ---- writing ------------------------------------------------------------------------------
  // Appends carry this term from now on; 0 (the initial value) refuses every append with
  // failed_precondition "not_leader". Reloads the position and hash the writer continues
  // from; failed_precondition "fenced" when `term` is no longer the head row's term.
  virtual Status set_writer_term(uint64_t term) = 0;
  virtual uint64_t writer_term() const = 0;
  // Copies events verbatim (positions, versions, hashes) after the last position, for
  // `atriumd migrate`. They must continue the positions and the hash chain
  // (failed_precondition otherwise, nothing written); needs the writer term like append().
  virtual Result<uint64_t> import(const std::vector<RecordedEvent>& events) = 0;
  // Copies idempotency records (checkpoints = false) or checkpoints verbatim (migrate).
  virtual Status import_records(const std::vector<std::pair<std::string, std::string>>& records,
                                bool checkpoints) = 0;

  // ---- members (GET /v1/cluster) ---------------------------------------------------------
  // Upserts this broker's row, stamped with the database's now.
  virtual Status report_member(const MemberReport& m) = 0;
  // Members seen within the last hour (older rows are deleted), ordered by id.
  virtual Result<std::vector<MemberRow>> members() = 0;

  // ---- settings every broker must share ---------------------------------------------------
  // Stores `value` under `name` unless a value is there already; returns the stored one (the
  // first broker's). E.g. the check value of secret.key: a broker with another key refuses
  // to start.
  virtual Result<std::string> claim_setting(const std::string& name, const std::string& value) = 0;
};

struct PostgresOptions {
  // How often a follower polls the head row when no notification came (the safety net under
  // LISTEN/NOTIFY; the only way on a standby, where LISTEN is refused).
  std::chrono::milliseconds poll_interval{500};
  size_t max_read_connections = 8;
  // Statement timeout of the election connection: a lease call never blocks longer.
  std::chrono::milliseconds election_timeout{3000};
  std::function<void(const std::string&)> warn;  // null: stderr
};

// Connects to PostgreSQL (a libpq connection string or URL; several hosts with
// target_session_attrs=read-write follow a promoted standby), creates the schema in the
// connection's current schema if missing, and starts the log watcher (LISTEN + poll).
// unavailable when the database cannot be reached.
Result<std::unique_ptr<SharedLog>> open_postgres(const std::string& conninfo,
                                                 const PostgresOptions& opts = {});

// The connection string with its password replaced by ***.
std::string redact_conninfo(const std::string& conninfo);

}  // namespace atrium::eventstore

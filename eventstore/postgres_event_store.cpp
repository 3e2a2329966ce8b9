// The PostgreSQL store (eventstore/shared_log.h): the EventStore contract on tables of one
// database, shared by several brokers of which exactly one (the term holder) appends.
//
// Tables (in the connection's current schema):
//   atrium_head         one row: term, leader, lease end (database clock), position, last hash
//   atrium_events       position, stream, stream_version, term, body (canonical bytes + hash,
//                       the same encoding as the RocksDB store's values)
//   atrium_idempotency  key -> value
//   atrium_checkpoints  name -> value
// An append is one call of atrium_append(), one transaction: it updates the head row WHERE
// term = <mine> AND position = <expected> first (0 rows: fenced, nothing written), then
// inserts the events, idempotency records and checkpoints, and notifies atrium_log. The head
// row lock serialises appends, so positions are gap-free and in commit order.
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "eventstore/internal.h"
#include "eventstore/pg_conn.h"
#include "eventstore/shared_log.h"

namespace atrium::eventstore {
namespace {

using pg::Conn;
using pg::Params;
using pg::Res;

// Created once; the advisory lock serialises brokers that start at the same time.
const char* const kSchema = R"SQL(
BEGIN;
SELECT pg_advisory_xact_lock(7022363516244656129);
CREATE TABLE IF NOT EXISTS atrium_head (
  id int PRIMARY KEY CHECK (id = 1),
  term bigint NOT NULL DEFAULT 0,
  leader_id text NOT NULL DEFAULT '',
  leader_url text NOT NULL DEFAULT '',
  lease_until timestamptz NOT NULL DEFAULT 'epoch',
  leader_pid int NOT NULL DEFAULT 0,
  leader_backend_start timestamptz,
  position bigint NOT NULL DEFAULT 0,
  last_hash bytea NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000',
  schema_version int NOT NULL DEFAULT 1
);
INSERT INTO atrium_head (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS atrium_events (
  position bigint PRIMARY KEY,
  stream bytea NOT NULL,
  stream_version bigint NOT NULL,
  term bigint NOT NULL,
  body bytea NOT NULL,
  UNIQUE (stream, stream_version)
);
CREATE TABLE IF NOT EXISTS atrium_idempotency (key bytea PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE IF NOT EXISTS atrium_checkpoints (name bytea PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE IF NOT EXISTS atrium_cluster (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS atrium_members (
  member_id text PRIMARY KEY,
  url text NOT NULL,
  role text NOT NULL,
  term bigint NOT NULL,
  applied bigint NOT NULL,
  seen_at timestamptz NOT NULL
);
CREATE OR REPLACE FUNCTION atrium_append(p_term bigint, p_expected bigint, p_last bigint,
    p_hash bytea, p_streams bytea[], p_versions bigint[], p_bodies bytea[],
    p_idem_keys bytea[], p_idem_values bytea[], p_ck_names bytea[], p_ck_values bytea[])
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  UPDATE atrium_head SET position = p_last, last_hash = p_hash
    WHERE id = 1 AND term = p_term AND position = p_expected;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'fenced: term % at position % no longer holds the log', p_term, p_expected
      USING ERRCODE = 'AT001';
  END IF;
  INSERT INTO atrium_events (position, stream, stream_version, term, body)
    SELECT p_expected + t.o, t.s, t.v, p_term, t.b
    FROM unnest(p_streams, p_versions, p_bodies) WITH ORDINALITY AS t(s, v, b, o);
  INSERT INTO atrium_idempotency (key, value)
    SELECT * FROM unnest(p_idem_keys, p_idem_values)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
  INSERT INTO atrium_checkpoints (name, value)
    SELECT * FROM unnest(p_ck_names, p_ck_values)
    ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value;
  IF p_last > p_expected THEN
    PERFORM pg_notify('atrium_log', p_last::text);
  END IF;
END
$fn$;
COMMIT;
)SQL";

using detail::guarded;
using detail::StringHash;

Hash to_hash(std::string_view b) {
  Hash h{};
  if (b.size() == h.size()) std::copy(b.begin(), b.end(), h.begin());
  return h;
}

std::string_view hash_bytes(const Hash& h) {
  return {reinterpret_cast<const char*>(h.data()), h.size()};
}

Error fenced_error(uint64_t term) {
  return Error::make(
      Code::failed_precondition,
      "this broker's term " + std::to_string(term) + " has passed: another broker leads the log",
      "fenced");
}

// Last-wins deduplication of (key, value) pairs, keeping the order of first appearance.
std::vector<std::pair<std::string_view, std::string_view>> last_wins(
    const std::vector<std::pair<std::string_view, std::string_view>>& in) {
  std::unordered_map<std::string_view, size_t> at;
  std::vector<std::pair<std::string_view, std::string_view>> out;
  for (const auto& [k, v] : in) {
    auto [it, fresh] = at.emplace(k, out.size());
    if (fresh) {
      out.emplace_back(k, v);
    } else {
      out[it->second].second = v;
    }
  }
  return out;
}

// A few connections for readers, handed out one at a time.
class Pool {
 public:
  Pool(std::string conninfo, size_t max) : conninfo_(std::move(conninfo)), max_(max) {}

  class Lease {
   public:
    Lease(Pool& p, std::unique_ptr<Conn> c) : p_(p), c_(std::move(c)) {}
    ~Lease() { p_.give_back(std::move(c_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Conn& operator*() { return *c_; }
    Conn* operator->() { return c_.get(); }

   private:
    Pool& p_;
    std::unique_ptr<Conn> c_;
  };

  Lease take() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return !idle_.empty() || open_ < max_; });
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return Lease(*this, std::move(c));
    }
    ++open_;
    return Lease(*this, std::make_unique<Conn>(conninfo_));
  }

 private:
  void give_back(std::unique_ptr<Conn> c) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      idle_.push_back(std::move(c));
    }
    cv_.notify_one();
  }
  std::string conninfo_;
  size_t max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Conn>> idle_;
  size_t open_ = 0;
};

class PgStore final : public SharedLog {
 public:
  PgStore(std::string conninfo, PostgresOptions opts)
      : conninfo_(std::move(conninfo)),
        opts_(std::move(opts)),
        writer_(conninfo_),
        election_(conninfo_,
                  "SET statement_timeout = " + std::to_string(opts_.election_timeout.count())),
        readers_(conninfo_, std::max<size_t>(1, opts_.max_read_connections)) {}

  ~PgStore() override {
    stop_ = true;
    if (wake_[1] >= 0) (void)::write(wake_[1], "x", 1);
    if (watcher_.joinable()) watcher_.join();
    for (int fd : wake_) {
      if (fd >= 0) ::close(fd);
    }
  }

  Status open() {
    if (Status s = writer_.run(kSchema); !s) return s;
    auto h = writer_.exec("SELECT position FROM atrium_head WHERE id = 1");
    if (!h.ok()) return h.error();
    publish(static_cast<uint64_t>(h->i64(0, 0)));
    if (::pipe(wake_) != 0) return Error::make(Code::internal, "pipe() failed");
    watcher_ = std::thread([this] { watch(); });
    return Status::Ok();
  }

  // ---- EventStore ------------------------------------------------------------------------

  Result<AppendResult> append(const AppendRequest& req) override {
    return guarded("append", [&]() -> Result<AppendResult> {
      if (Status s = detail::validate_request(req); !s) return s.error();
      std::lock_guard<std::mutex> lk(writer_mu_);
      if (term_ == 0) {
        return Error::make(Code::failed_precondition,
                           "this broker does not lead the log; it cannot append", "not_leader");
      }
      if (fenced_) return fenced_error(term_);
      if (stale_) {
        if (Status s = reload_locked(); !s) return s.error();
      }
      // Current versions of the streams this request names (cached while the term holds:
      // nobody else appends meanwhile).
      std::vector<std::string_view> unknown;
      for (const auto& w : req.writes) {
        if (versions_.find(w.stream) == versions_.end() &&
            std::find(unknown.begin(), unknown.end(), w.stream) == unknown.end()) {
          unknown.push_back(w.stream);
        }
      }
      if (!unknown.empty()) {
        Params p;
        p.bytes_array(unknown);
        auto r = writer_.exec(
            "SELECT s, (SELECT coalesce(max(stream_version), 0) FROM atrium_events e "
            "WHERE e.stream = s) FROM unnest($1::bytea[]) AS s",
            p);
        if (!r.ok()) return failed(r.error());
        if (versions_.size() > 100000) versions_.clear();
        for (int i = 0; i < r->rows(); ++i) {
          versions_[std::string(r->bytes(i, 0))] = static_cast<uint64_t>(r->i64(i, 1));
        }
      }
      std::unordered_map<std::string_view, uint64_t> next;
      for (const auto& w : req.writes) {
        auto it = next.find(w.stream);
        uint64_t current = it != next.end() ? it->second : versions_.find(w.stream)->second;
        if (Status s = detail::check_expected(w.stream, w.expected, current); !s) {
          return s.error();
        }
        next[w.stream] = current + w.events.size();
      }

      std::vector<std::string> bodies;
      std::vector<std::string_view> streams;
      std::vector<int64_t> versions;
      std::unordered_map<std::string_view, uint64_t> version;
      Hash hash = hash_;
      uint64_t pos = pos_;
      RecordedEvent e;
      std::string canonical;
      for (const auto& w : req.writes) {
        auto vit = version.find(w.stream);
        uint64_t v = vit != version.end() ? vit->second : versions_.find(w.stream)->second;
        for (const NewEvent& ne : w.events) {
          hash = detail::record_new_event(ne, w.stream, ++pos, ++v, hash, e, canonical);
          bodies.emplace_back();
          detail::encode_stored(e, bodies.back());
          streams.push_back(w.stream);
          versions.push_back(static_cast<int64_t>(v));
        }
        version[w.stream] = v;
      }
      std::vector<std::pair<std::string_view, std::string_view>> idem_in, ck_in;
      for (const auto& r : req.idempotency) idem_in.emplace_back(r.key, r.value);
      for (const auto& [n, v] : req.checkpoints) ck_in.emplace_back(n, v);
      auto idem = last_wins(idem_in);
      auto ck = last_wins(ck_in);
      std::vector<std::string_view> body_views(bodies.begin(), bodies.end());
      std::vector<std::string_view> ik, iv, cn, cv;
      for (const auto& [k, v] : idem) ik.push_back(k), iv.push_back(v);
      for (const auto& [k, v] : ck) cn.push_back(k), cv.push_back(v);

      if (Status s = call_append(pos, hash, streams, versions, body_views, ik, iv, cn, cv); !s) {
        return s.error();
      }
      const uint64_t first = pos_ + 1;
      pos_ = pos;
      hash_ = hash;
      for (const auto& [s, v] : version) versions_[std::string(s)] = v;
      publish(pos_);
      if (pos < first) return AppendResult{};
      return AppendResult{first, pos};
    });
  }

  Result<uint64_t> scan(uint64_t after, uint64_t max_events,
                        const EventVisitor& visit) const override {
    return guarded("scan", [&]() -> Result<uint64_t> {
      constexpr int64_t kChunk = 500;
      uint64_t visited = 0;
      uint64_t next = after;
      std::vector<RecordedEvent> chunk;
      for (;;) {
        int64_t want = kChunk;
        if (max_events != 0)
          want = std::min<int64_t>(want, static_cast<int64_t>(max_events - visited));
        if (want <= 0) return visited;
        Params p;
        p.i64(static_cast<int64_t>(next)).i64(want);
        Result<Res> r = Error::make(Code::internal, "unreached");
        {
          auto c = readers_.take();
          r = read_exec(
              *c,
              "SELECT position, body FROM atrium_events WHERE position > $1 ORDER BY position "
              "LIMIT $2",
              p);
        }
        if (!r.ok()) return r.error();
        if (r->rows() == 0) return visited;
        chunk.resize(static_cast<size_t>(r->rows()));
        for (int i = 0; i < r->rows(); ++i) {
          if (Status s = decode(r->bytes(i, 1), static_cast<uint64_t>(r->i64(i, 0)), chunk[i]);
              !s) {
            return s.error();
          }
        }
        for (const auto& e : chunk) {
          ++visited;
          next = e.position;
          if (!visit(e)) return visited;
        }
      }
    });
  }

  Result<std::vector<RecordedEvent>> read_stream(std::string_view stream, uint64_t after_version,
                                                 size_t limit) const override {
    return guarded("read_stream", [&]() -> Result<std::vector<RecordedEvent>> {
      Params p;
      p.bytes(stream).i64(static_cast<int64_t>(after_version));
      if (limit == 0) {
        p.null();
      } else {
        p.i64(static_cast<int64_t>(limit));
      }
      Result<Res> r = Error::make(Code::internal, "unreached");
      {
        auto c = readers_.take();
        r = read_exec(*c,
                      "SELECT position, body FROM atrium_events WHERE stream = $1::bytea AND "
                      "stream_version > $2 ORDER BY stream_version LIMIT $3::int8",
                      p);
      }
      if (!r.ok()) return r.error();
      std::vector<RecordedEvent> out(static_cast<size_t>(r->rows()));
      for (int i = 0; i < r->rows(); ++i) {
        if (Status s = decode(r->bytes(i, 1), static_cast<uint64_t>(r->i64(i, 0)), out[i]); !s) {
          return s.error();
        }
      }
      return out;
    });
  }

  Result<uint64_t> stream_version(std::string_view stream) const override {
    return guarded("stream_version", [&]() -> Result<uint64_t> {
      Params p;
      p.bytes(stream);
      auto c = readers_.take();
      auto r = read_exec(
          *c, "SELECT coalesce(max(stream_version), 0) FROM atrium_events WHERE stream = $1::bytea",
          p);
      if (!r.ok()) return r.error();
      return static_cast<uint64_t>(r->i64(0, 0));
    });
  }

  uint64_t last_position() const override { return position_.get(); }

  uint64_t wait_for(uint64_t after, std::chrono::milliseconds timeout) const override {
    return position_.wait_for(after, timeout);
  }

  Result<std::optional<std::string>> get_idempotency(std::string_view key) const override {
    return guarded("get_idempotency", [&] {
      return lookup("SELECT value FROM atrium_idempotency WHERE key = $1::bytea", key);
    });
  }

  Result<std::optional<std::string>> get_checkpoint(std::string_view name) const override {
    return guarded("get_checkpoint", [&] {
      return lookup("SELECT value FROM atrium_checkpoints WHERE name = $1::bytea", name);
    });
  }

  // Checkpoints are snapshots of state any broker can rebuild from the log: written without
  // the term (a follower may keep one too), never read as the truth.
  Status put_checkpoint(std::string_view name, std::string_view value) override {
    return guarded("put_checkpoint", [&]() -> Status {
      if (name.empty()) return invalid("checkpoint name is empty", "empty_checkpoint_name");
      Params p;
      p.bytes(name).bytes(value);
      auto c = readers_.take();
      auto r =
          read_exec(*c,
                    "INSERT INTO atrium_checkpoints (name, value) VALUES ($1::bytea, $2::bytea) "
                    "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    p);
      if (!r.ok()) return r.error();
      return Status::Ok();
    });
  }

  Status scan_records(bool checkpoints, const RecordVisitor& visit) const override {
    return guarded("scan_records", [&]() -> Status {
      const std::string sql =
          checkpoints ? "SELECT name, value FROM atrium_checkpoints WHERE name > $1::bytea "
                        "ORDER BY name LIMIT 500"
                      : "SELECT key, value FROM atrium_idempotency WHERE key > $1::bytea "
                        "ORDER BY key LIMIT 500";
      std::string after;
      for (;;) {
        Params p;
        p.bytes(after);
        Result<Res> r = Error::make(Code::internal, "unreached");
        {
          auto c = readers_.take();
          r = read_exec(*c, sql, p);
        }
        if (!r.ok()) return r.error();
        if (r->rows() == 0) return Status::Ok();
        for (int i = 0; i < r->rows(); ++i) {
          if (!visit(r->bytes(i, 0), r->bytes(i, 1))) return Status::Ok();
        }
        after = std::string(r->bytes(r->rows() - 1, 0));
      }
    });
  }

  Result<VerifyReport> verify() const override {
    return guarded("verify", [&]() -> Result<VerifyReport> {
      VerifyReport rep;
      Hash prev{};
      std::unordered_map<std::string, uint64_t> stream_last;
      uint64_t expected = 1;
      auto bad = [&](uint64_t at, std::string problem) {
        rep.ok = false;
        rep.first_bad_position = at;
        rep.problem = std::move(problem);
        return rep;
      };
      for (;;) {
        Params p;
        p.i64(static_cast<int64_t>(expected - 1));
        Result<Res> r = Error::make(Code::internal, "unreached");
        {
          auto c = readers_.take();
          r = read_exec(*c,
                        "SELECT position, stream, stream_version, body FROM atrium_events "
                        "WHERE position > $1 ORDER BY position LIMIT 1000",
                        p);
        }
        if (!r.ok()) return r.error();
        if (r->rows() == 0) break;
        for (int i = 0; i < r->rows(); ++i) {
          const uint64_t at = static_cast<uint64_t>(r->i64(i, 0));
          if (at != expected) {
            return bad(expected, "position gap: expected " + std::to_string(expected) + ", found " +
                                     std::to_string(at));
          }
          RecordedEvent e;
          if (!detail::decode_stored(r->bytes(i, 3), e)) {
            return bad(at, "undecodable event body");
          }
          if (e.position != at || e.stream != r->bytes(i, 1) ||
              e.stream_version != static_cast<uint64_t>(r->i64(i, 2))) {
            return bad(at, "the row's position, stream or version differs from its body");
          }
          if (Hash h = chain_hash(prev, e); h != e.hash) {
            return bad(at, "hash mismatch: stored " + to_hex(e.hash) + ", recomputed " + to_hex(h));
          }
          uint64_t& last = stream_last[e.stream];
          if (e.stream_version != last + 1) {
            return bad(at, "stream '" + e.stream + "' version " + std::to_string(e.stream_version) +
                               " follows version " + std::to_string(last));
          }
          last = e.stream_version;
          prev = e.hash;
          ++rep.events_checked;
          ++expected;
        }
      }
      // The head row must name the last event and its hash.
      auto c = readers_.take();
      auto h = read_exec(*c, "SELECT position, last_hash FROM atrium_head WHERE id = 1");
      if (!h.ok()) return h.error();
      if (h->rows() != 1) return bad(expected, "the head row is missing");
      if (static_cast<uint64_t>(h->i64(0, 0)) != expected - 1) {
        return bad(expected, "the head row says position " + std::to_string(h->i64(0, 0)) +
                                 ", the log ends at " + std::to_string(expected - 1));
      }
      if (to_hash(h->bytes(0, 1)) != prev) {
        return bad(expected - 1, "the head row's last hash differs from the last event's");
      }
      return rep;
    });
  }

  Status recover_storage() override {
    return guarded("recover_storage", [&]() -> Status {
      std::lock_guard<std::mutex> lk(writer_mu_);
      if (term_ == 0) return Status::Ok();
      if (fenced_) return fenced_error(term_);
      if (!stale_) return Status::Ok();
      return reload_locked();
    });
  }

  std::string corruption() const override {
    std::lock_guard<std::mutex> lk(corruption_mu_);
    return corruption_;
  }

  // ---- SharedLog -------------------------------------------------------------------------

  Result<Head> head() override {
    return guarded("head", [&]() -> Result<Head> {
      std::lock_guard<std::mutex> lk(election_mu_);
      auto r = election_.exec(
          "SELECT term, leader_id, leader_url, "
          "(extract(epoch FROM (lease_until - now())) * 1000)::int8, "
          "EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = h.leader_pid AND "
          "a.backend_start = h.leader_backend_start), position, last_hash "
          "FROM atrium_head h WHERE id = 1");
      if (!r.ok()) return r.error();
      Head h;
      h.term = static_cast<uint64_t>(r->i64(0, 0));
      h.leader_id = std::string(r->bytes(0, 1));
      h.leader_url = std::string(r->bytes(0, 2));
      h.lease_remaining_ms = r->i64(0, 3);
      h.leader_alive = !h.leader_id.empty() && r->boolean(0, 4);
      h.position = static_cast<uint64_t>(r->i64(0, 5));
      h.last_hash = to_hash(r->bytes(0, 6));
      return h;
    });
  }

  Result<std::optional<Lease>> try_acquire(const Candidate& c) override {
    return guarded("try_acquire", [&]() -> Result<std::optional<Lease>> {
      std::lock_guard<std::mutex> lk(election_mu_);
      Params p;
      p.bytes(c.member_id).bytes(c.url).i64(c.ttl.count());
      auto r = election_.exec(
          "UPDATE atrium_head h SET term = term + 1, leader_id = $1::text, leader_url = $2::text, "
          "lease_until = now() + $3 * interval '1 millisecond', leader_pid = pg_backend_pid(), "
          "leader_backend_start = (SELECT backend_start FROM pg_stat_activity "
          "WHERE pid = pg_backend_pid()) "
          "WHERE id = 1 AND (leader_id = '' OR lease_until <= now() OR NOT EXISTS "
          "(SELECT 1 FROM pg_stat_activity a WHERE a.pid = h.leader_pid AND "
          "a.backend_start = h.leader_backend_start)) "
          "RETURNING term, position",
          p);
      if (!r.ok()) return r.error();
      if (r->rows() == 0) return std::optional<Lease>();
      Lease l;
      l.term = static_cast<uint64_t>(r->i64(0, 0));
      l.position = static_cast<uint64_t>(r->i64(0, 1));
      return std::optional<Lease>(l);
    });
  }

  Result<bool> renew(uint64_t term, const Candidate& c) override {
    return guarded("renew", [&]() -> Result<bool> {
      std::lock_guard<std::mutex> lk(election_mu_);
      Params p;
      p.i64(static_cast<int64_t>(term)).bytes(c.member_id).i64(c.ttl.count());
      auto r = election_.exec(
          "UPDATE atrium_head SET lease_until = now() + $3 * interval '1 millisecond', "
          "leader_pid = pg_backend_pid(), leader_backend_start = (SELECT backend_start FROM "
          "pg_stat_activity WHERE pid = pg_backend_pid()) "
          "WHERE id = 1 AND term = $1 AND leader_id = $2::text RETURNING 1",
          p);
      if (!r.ok()) return r.error();
      return r->rows() == 1;
    });
  }

  Status release(uint64_t term, const std::string& member_id) override {
    return guarded("release", [&]() -> Status {
      std::lock_guard<std::mutex> lk(election_mu_);
      Params p;
      p.i64(static_cast<int64_t>(term)).bytes(member_id);
      auto r = election_.exec(
          "UPDATE atrium_head SET leader_id = '', lease_until = 'epoch', leader_pid = 0 "
          "WHERE id = 1 AND term = $1 AND leader_id = $2::text",
          p);
      if (!r.ok()) return r.error();
      return Status::Ok();
    });
  }

  Result<bool> confirm(uint64_t term, const std::string& member_id) override {
    return guarded("confirm", [&]() -> Result<bool> {
      std::lock_guard<std::mutex> lk(election_mu_);
      Params p;
      p.i64(static_cast<int64_t>(term)).bytes(member_id);
      auto r = election_.exec(
          "SELECT term = $1 AND leader_id = $2::text AND lease_until > now() FROM atrium_head "
          "WHERE id = 1",
          p);
      if (!r.ok()) return r.error();
      return r->rows() == 1 && r->boolean(0, 0);
    });
  }

  Status set_writer_term(uint64_t term) override {
    return guarded("set_writer_term", [&]() -> Status {
      std::lock_guard<std::mutex> lk(writer_mu_);
      term_ = term;
      fenced_ = false;
      versions_.clear();
      if (term == 0) return Status::Ok();
      return reload_locked();
    });
  }

  uint64_t writer_term() const override {
    std::lock_guard<std::mutex> lk(writer_mu_);
    return fenced_ ? 0 : term_;
  }

  Result<uint64_t> import(const std::vector<RecordedEvent>& events) override {
    return guarded("import", [&]() -> Result<uint64_t> {
      std::lock_guard<std::mutex> lk(writer_mu_);
      if (Status s = writable_locked(); !s) return s.error();
      Hash hash = hash_;
      std::vector<std::string> bodies;
      std::vector<std::string_view> streams;
      std::vector<int64_t> versions;
      for (size_t i = 0; i < events.size(); ++i) {
        const RecordedEvent& e = events[i];
        if (e.position != pos_ + 1 + i) {
          return Error::make(Code::failed_precondition,
                             "import: event at position " + std::to_string(e.position) +
                                 " does not continue the log at " + std::to_string(pos_ + i),
                             "position_gap");
        }
        if (chain_hash(hash, e) != e.hash) {
          return Error::make(Code::failed_precondition,
                             "import: the hash of the event at position " +
                                 std::to_string(e.position) + " does not continue the chain",
                             "hash_mismatch");
        }
        hash = e.hash;
        bodies.emplace_back();
        detail::encode_stored(e, bodies.back());
        streams.push_back(e.stream);
        versions.push_back(static_cast<int64_t>(e.stream_version));
      }
      const uint64_t last = pos_ + events.size();
      std::vector<std::string_view> views(bodies.begin(), bodies.end());
      if (Status s = call_append(last, hash, streams, versions, views, {}, {}, {}, {}); !s) {
        return s.error();
      }
      pos_ = last;
      hash_ = hash;
      versions_.clear();
      publish(pos_);
      return static_cast<uint64_t>(events.size());
    });
  }

  Status import_records(const std::vector<std::pair<std::string, std::string>>& records,
                        bool checkpoints) override {
    return guarded("import_records", [&]() -> Status {
      std::lock_guard<std::mutex> lk(writer_mu_);
      if (Status s = writable_locked(); !s) return s;
      std::vector<std::string_view> k, v;
      for (const auto& [a, b] : records) k.push_back(a), v.push_back(b);
      if (checkpoints) return call_append(pos_, hash_, {}, {}, {}, {}, {}, k, v);
      return call_append(pos_, hash_, {}, {}, {}, k, v, {}, {});
    });
  }

  Status report_member(const MemberReport& m) override {
    return guarded("report_member", [&]() -> Status {
      Params p;
      p.bytes(m.member_id)
          .bytes(m.url)
          .bytes(m.role)
          .i64(static_cast<int64_t>(m.term))
          .i64(static_cast<int64_t>(m.applied));
      auto c = readers_.take();
      auto r =
          read_exec(*c,
                    "INSERT INTO atrium_members (member_id, url, role, term, applied, seen_at) "
                    "VALUES ($1::text, $2::text, $3::text, $4, $5, now()) "
                    "ON CONFLICT (member_id) DO UPDATE SET url = EXCLUDED.url, role = "
                    "EXCLUDED.role, term = EXCLUDED.term, applied = EXCLUDED.applied, "
                    "seen_at = EXCLUDED.seen_at",
                    p);
      if (!r.ok()) return r.error();
      return Status::Ok();
    });
  }

  Result<std::string> claim_setting(const std::string& name, const std::string& value) override {
    return guarded("claim_setting", [&]() -> Result<std::string> {
      Params p;
      p.bytes(name).bytes(value);
      auto c = readers_.take();
      auto i = read_exec(*c,
                         "INSERT INTO atrium_cluster (name, value) VALUES ($1::text, $2::text) "
                         "ON CONFLICT (name) DO NOTHING",
                         p);
      if (!i.ok()) return i.error();
      Params q;
      q.bytes(name);
      auto r = read_exec(*c, "SELECT value FROM atrium_cluster WHERE name = $1::text", q);
      if (!r.ok()) return r.error();
      if (r->rows() != 1) return Error::make(Code::internal, "cluster setting " + name + " vanished");
      return std::string(r->bytes(0, 0));
    });
  }

  Result<std::vector<MemberRow>> members() override {
    return guarded("members", [&]() -> Result<std::vector<MemberRow>> {
      auto c = readers_.take();
      auto d =
          read_exec(*c, "DELETE FROM atrium_members WHERE seen_at < now() - interval '1 hour'");
      if (!d.ok()) return d.error();
      auto r = read_exec(*c,
                         "SELECT member_id, url, role, term, applied, "
                         "(extract(epoch FROM (now() - seen_at)) * 1000)::int8 "
                         "FROM atrium_members ORDER BY member_id");
      if (!r.ok()) return r.error();
      std::vector<MemberRow> out(static_cast<size_t>(r->rows()));
      for (int i = 0; i < r->rows(); ++i) {
        out[i].report.member_id = std::string(r->bytes(i, 0));
        out[i].report.url = std::string(r->bytes(i, 1));
        out[i].report.role = std::string(r->bytes(i, 2));
        out[i].report.term = static_cast<uint64_t>(r->i64(i, 3));
        out[i].report.applied = static_cast<uint64_t>(r->i64(i, 4));
        out[i].seen_ms_ago = r->i64(i, 5);
      }
      return out;
    });
  }

 private:
  Status writable_locked() {
    if (term_ == 0) {
      return Error::make(Code::failed_precondition,
                         "this broker does not lead the log; it cannot append", "not_leader");
    }
    if (fenced_) return fenced_error(term_);
    if (stale_) return reload_locked();
    return Status::Ok();
  }

  // One atrium_append() call continuing from pos_ (writer_mu_ held).
  Status call_append(uint64_t last, const Hash& hash, const std::vector<std::string_view>& streams,
                     const std::vector<int64_t>& versions,
                     const std::vector<std::string_view>& bodies,
                     const std::vector<std::string_view>& ik,
                     const std::vector<std::string_view>& iv,
                     const std::vector<std::string_view>& cn,
                     const std::vector<std::string_view>& cv) {
    Params p;
    p.i64(static_cast<int64_t>(term_))
        .i64(static_cast<int64_t>(pos_))
        .i64(static_cast<int64_t>(last))
        .bytes(hash_bytes(hash))
        .bytes_array(streams)
        .i64_array(versions)
        .bytes_array(bodies)
        .bytes_array(ik)
        .bytes_array(iv)
        .bytes_array(cn)
        .bytes_array(cv);
    auto r = writer_.exec(
        "SELECT atrium_append($1, $2, $3, $4::bytea, $5::bytea[], $6::int8[], $7::bytea[], "
        "$8::bytea[], $9::bytea[], $10::bytea[], $11::bytea[])",
        p);
    if (!r.ok()) return failed(r.error());
    return Status::Ok();
  }

  // Reads the head row again (after a failed append whose outcome is unknown, or a new
  // term): the position and hash to continue from, or fenced when the term has passed.
  Status reload_locked() {
    stale_ = true;
    versions_.clear();
    // A read: safe to try again once when the connection turns out broken. A follower's
    // writer connection is idle from open() until it takes the lease, and after a database
    // failover that is how it finds out.
    auto r = read_exec(writer_, "SELECT term, position, last_hash FROM atrium_head WHERE id = 1");
    if (!r.ok()) return r.error();
    if (r->rows() != 1) return Error::make(Code::internal, "the head row is missing");
    if (static_cast<uint64_t>(r->i64(0, 0)) != term_) {
      fenced_ = true;
      return fenced_error(term_);
    }
    pos_ = static_cast<uint64_t>(r->i64(0, 1));
    hash_ = to_hash(r->bytes(0, 2));
    stale_ = false;
    publish(pos_);
    return Status::Ok();
  }

  // An append that failed: fenced (the term passed: stop writing for good), or an outcome
  // we cannot know (connection lost at commit): read the head row again before the next.
  Error failed(Error e) {
    stale_ = true;
    versions_.clear();
    if (e.reason == pg::kFenced) {
      fenced_ = true;
      return fenced_error(term_);
    }
    if (e.code != Code::conflict && e.code != Code::invalid_argument) {
      e.code = Code::unavailable;
      if (e.reason.empty() || e.reason.size() == 5) e.reason = "storage_unavailable";
    }
    return e;
  }

  Status decode(std::string_view body, uint64_t position, RecordedEvent& e) const {
    if (detail::decode_stored(body, e) && e.position == position) return Status::Ok();
    std::string what = "event at position " + std::to_string(position) + " does not decode";
    {
      std::lock_guard<std::mutex> lk(corruption_mu_);
      if (corruption_.empty()) corruption_ = what;
    }
    return Error::make(Code::internal, "storage corrupt: " + what, "storage_corrupt");
  }

  Result<std::optional<std::string>> lookup(const char* sql, std::string_view key) const {
    Params p;
    p.bytes(key);
    auto c = readers_.take();
    auto r = read_exec(*c, sql, p);
    if (!r.ok()) return r.error();
    if (r->rows() == 0) return std::optional<std::string>();
    return std::optional<std::string>(std::string(r->bytes(0, 0)));
  }

  // A read on a pooled connection: one that broke while idle (a database restart, a
  // promoted standby) is made again and the read tried once more.
  static Result<Res> read_exec(Conn& c, const std::string& sql, const Params& p = Params()) {
    const bool was_connected = c.connected();
    auto r = c.exec(sql, p);
    if (!r.ok() && was_connected && !c.connected() && r.error().code == Code::unavailable) {
      r = c.exec(sql, p);
    }
    return r;
  }

  void publish(uint64_t pos) {
    std::lock_guard<std::mutex> lk(publish_mu_);
    if (pos > position_.get()) position_.publish(pos);
  }

  void warn(const std::string& line) {
    if (opts_.warn) {
      opts_.warn(line);
    } else {
      std::fprintf(stderr, "atriumd: event store: %s\n", line.c_str());
    }
  }

  // Follows the head row: LISTEN atrium_log wakes it at once, a poll every poll_interval
  // catches what a lost notification (or a standby, where LISTEN is refused) would miss.
  void watch() {
    Conn c(conninfo_);
    bool listening = false;
    bool warned = false;
    bool query = true;  // read the head row this round (a poll, not a notification)
    while (!stop_) {
      if (!c.connected()) {
        listening = false;
        if (Status s = c.ensure(); !s) {
          if (!warned) warn("log watcher: " + s.error().message + "; retrying");
          warned = true;
          sleep_or_wake(opts_.poll_interval);
          continue;
        }
        warned = false;
        listening = c.run("LISTEN atrium_log").ok();
        query = true;
      }
      if (query) {
        auto r = c.exec("SELECT position FROM atrium_head WHERE id = 1");
        if (r.ok() && r->rows() == 1) publish(static_cast<uint64_t>(r->i64(0, 0)));
      }
      query = true;
      if (!listening) {
        sleep_or_wake(opts_.poll_interval);
        continue;
      }
      pollfd fds[2] = {{PQsocket(c.raw()), POLLIN, 0}, {wake_[0], POLLIN, 0}};
      int n = ::poll(fds, 2, static_cast<int>(opts_.poll_interval.count()));
      if (n <= 0 || (fds[1].revents & POLLIN) != 0) continue;
      if (PQconsumeInput(c.raw()) == 0) {
        c.reset();
        continue;
      }
      while (PGnotify* note = PQnotifies(c.raw())) {
        publish(std::strtoull(note->extra, nullptr, 10));
        PQfreemem(note);
        query = false;
      }
    }
  }

  void sleep_or_wake(std::chrono::milliseconds d) {
    pollfd fd{wake_[0], POLLIN, 0};
    (void)::poll(&fd, 1, static_cast<int>(d.count()));
  }

  const std::string conninfo_;
  const PostgresOptions opts_;

  mutable std::mutex writer_mu_;
  Conn writer_;
  uint64_t term_ = 0;
  bool fenced_ = false;
  bool stale_ = true;
  uint64_t pos_ = 0;
  Hash hash_{};
  std::unordered_map<std::string, uint64_t, StringHash, std::equal_to<>> versions_;

  std::mutex election_mu_;
  Conn election_;

  mutable Pool readers_;

  mutable std::mutex corruption_mu_;
  mutable std::string corruption_;

  std::mutex publish_mu_;
  detail::PositionSignal position_;

  std::atomic<bool> stop_{false};
  int wake_[2] = {-1, -1};
  std::thread watcher_;
};

}  // namespace

Result<std::unique_ptr<SharedLog>> open_postgres(const std::string& conninfo,
                                                 const PostgresOptions& opts) {
  auto store = std::make_unique<PgStore>(conninfo, opts);
  if (Status s = store->open(); !s) {
    Error e = s.error();
    e.message = "PostgreSQL store " + pg::redact(conninfo) + ": " + e.message;
    if (e.code != Code::unavailable) e.code = Code::unavailable;
    return e;
  }
  return std::unique_ptr<SharedLog>(std::move(store));
}

std::string redact_conninfo(const std::string& conninfo) {
  return pg::redact(conninfo);
}

}  // namespace atrium::eventstore

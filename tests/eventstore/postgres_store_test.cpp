// The PostgreSQL store beyond the contract suite (tests/eventstore/event_store_contract_test.cpp
// runs that on it): fencing by term, the lease and its holder's session, followers woken by
// LISTEN/NOTIFY, reopening, and a database restart. On a real PostgreSQL the tests start.
#include <doctest/doctest.h>

#include <chrono>
#include <thread>

#include "eventstore/shared_log.h"
#include "support/child_daemon.h"
#include "support/pg_server.h"

using namespace std::chrono_literals;
using atrium::Code;
using namespace atrium::eventstore;
using atrium::testing::PgServer;
using atrium::testing::shared_pg;

namespace {

AppendRequest one(const std::string& stream, const std::string& data,
                  ExpectedVersion ev = ExpectedVersion::Any()) {
  AppendRequest r;
  StreamWrite w;
  w.stream = stream;
  w.expected = ev;
  NewEvent e;
  e.type = "Thing";
  e.data = data;
  e.recorded_at_ms = 1'700'000'000'000;
  w.events.push_back(e);
  r.writes.push_back(w);
  return r;
}

std::unique_ptr<SharedLog> open_log(const std::string& conninfo, PostgresOptions o = {}) {
  auto r = open_postgres(conninfo, o);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return std::move(r).value();
}

Candidate cand(const std::string& id, std::chrono::milliseconds ttl = 60s) {
  return {id, "http://127.0.0.1:1/" + id, ttl};
}

uint64_t lead(SharedLog& log, const Candidate& c) {
  auto l = log.try_acquire(c);
  REQUIRE_MESSAGE(l.ok(), (l.ok() ? "" : l.error().message));
  REQUIRE(l->has_value());
  REQUIRE(log.set_writer_term((*l)->term).ok());
  return (*l)->term;
}

}  // namespace

TEST_CASE("postgres: an append with an old term writes nothing (fencing)") {
  PgServer* pg = shared_pg();
  if (pg == nullptr) return;
  const std::string ci = pg->fresh_schema();
  auto a = open_log(ci);
  auto b = open_log(ci);

  // Without a term nobody appends.
  auto refused = a->append(one("s", "x"));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().reason == "not_leader");

  const uint64_t ta = lead(*a, cand("a", 300ms));
  REQUIRE(a->append(one("s", "a1")).ok());
  REQUIRE(a->append(one("s", "a2")).ok());
  CHECK(*a->confirm(ta, "a"));

  // a's lease is live and its session connected: b cannot take over.
  auto early = b->try_acquire(cand("b"));
  REQUIRE(early.ok());
  CHECK_FALSE(early->has_value());

  // Once a's lease has expired (a is "paused": it does not renew), b takes the next term.
  std::this_thread::sleep_for(400ms);
  const uint64_t tb = lead(*b, cand("b"));
  CHECK(tb == ta + 1);
  CHECK_FALSE(*a->confirm(ta, "a"));
  CHECK_FALSE(*a->renew(ta, cand("a")));

  // a wakes up and appends with its old term: fenced, nothing written.
  auto head_before = b->head();
  REQUIRE(head_before.ok());
  auto stale = a->append(one("s", "a3"));
  REQUIRE_FALSE(stale.ok());
  CHECK(stale.error().code == Code::failed_precondition);
  CHECK(stale.error().reason == "fenced");
  CHECK(a->writer_term() == 0);
  auto head_after = b->head();
  REQUIRE(head_after.ok());
  CHECK(head_after->position == 2);
  CHECK(head_after->term == tb);
  CHECK(head_after->last_hash == head_before->last_hash);
  CHECK(b->read_stream("s", 0, 0)->size() == 2);
  // It stays fenced, even after storage "recovers".
  CHECK_FALSE(a->recover_storage().ok());
  CHECK_FALSE(a->append(one("s", "a4")).ok());

  // b continues the same chain.
  auto r = b->append(one("s", "b1", ExpectedVersion::Exact(2)));
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->first_position == 3);
  auto v = b->verify();
  REQUIRE(v.ok());
  CHECK_MESSAGE(v->ok, v->problem);
  CHECK(v->events_checked == 3);
  auto events = b->read_stream("s", 0, 0);
  REQUIRE(events->size() == 3);
  CHECK((*events)[2].data == "b1");
}

TEST_CASE("postgres: a leader whose session is gone is replaced at once; release hands over") {
  PgServer* pg = shared_pg();
  if (pg == nullptr) return;
  const std::string ci = pg->fresh_schema();
  auto b = open_log(ci);
  uint64_t ta = 0;
  {
    auto a = open_log(ci);
    ta = lead(*a, cand("a", 60s));  // a long lease
    REQUIRE(a->append(one("s", "a1")).ok());
    auto h = b->head();
    REQUIRE(h.ok());
    CHECK(h->leader_id == "a");
    CHECK(h->leader_url == "http://127.0.0.1:1/a");
    CHECK(h->leader_alive);
    CHECK(h->lease_remaining_ms > 50'000);
    CHECK_FALSE(b->try_acquire(cand("b"))->has_value());
  }  // a dies: its connections close
  // The lease has ~60 s left, but its holder's session is gone: taken within a moment.
  bool taken = false;
  for (int i = 0; i < 100 && !taken; ++i) {
    auto l = b->try_acquire(cand("b"));
    REQUIRE(l.ok());
    if (l->has_value()) {
      taken = true;
      CHECK((*l)->term == ta + 1);
      CHECK((*l)->position == 1);
      REQUIRE(b->set_writer_term((*l)->term).ok());
    } else {
      std::this_thread::sleep_for(20ms);
    }
  }
  REQUIRE(taken);
  REQUIRE(b->append(one("s", "b1")).ok());
  // A graceful stop releases the lease: the next one takes over without waiting.
  REQUIRE(b->release(ta + 1, "b").ok());
  auto c = open_log(ci);
  const uint64_t tc = lead(*c, cand("c"));
  CHECK(tc == ta + 2);
  REQUIRE(c->append(one("s", "c1")).ok());
  CHECK(c->last_position() == 3);
}

TEST_CASE("postgres: a follower wakes on NOTIFY, long before its poll, and reads the events") {
  PgServer* pg = shared_pg();
  if (pg == nullptr) return;
  const std::string ci = pg->fresh_schema();
  PostgresOptions slow_poll;
  slow_poll.poll_interval = 30s;  // only the notification can wake it in time
  auto leader = open_log(ci);
  auto follower = open_log(ci, slow_poll);
  lead(*leader, cand("l"));
  std::this_thread::sleep_for(200ms);  // the follower's LISTEN is in place
  REQUIRE(leader->append(one("s", "1")).ok());
  auto t0 = std::chrono::steady_clock::now();
  CHECK(follower->wait_for(0, 10s) == 1);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  std::vector<std::string> seen;
  REQUIRE(follower
              ->scan(0, 0,
                     [&](const RecordedEvent& e) {
                       seen.push_back(e.data);
                       return true;
                     })
              .ok());
  CHECK(seen == std::vector<std::string>{"1"});
  // A follower cannot append.
  auto r = follower->append(one("s", "2"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().reason == "not_leader");
}

TEST_CASE("postgres: reopening keeps the log; a database restart costs appends, not the store") {
  PgServer* pg = shared_pg();
  if (pg == nullptr) return;
  // A server of its own: this test restarts it.
  PgServer own;
  REQUIRE_MESSAGE(own.ok(), own.why());
  const std::string ci = own.conninfo();
  {
    auto a = open_log(ci);
    lead(*a, cand("a"));
    auto req = one("s", "1");
    req.idempotency.push_back({"k", "v"});
    req.checkpoints.emplace_back("cp", "snap");
    REQUIRE(a->append(req).ok());
    REQUIRE(a->release(a->writer_term(), "a").ok());
  }
  auto a = open_log(ci);
  CHECK(a->last_position() == 1);
  CHECK(*a->get_idempotency("k") == std::optional<std::string>("v"));
  CHECK(*a->get_checkpoint("cp") == std::optional<std::string>("snap"));
  lead(*a, cand("a2"));
  REQUIRE(a->append(one("s", "2")).ok());

  own.stop("immediate");
  auto down = a->append(one("s", "3"));
  REQUIRE_FALSE(down.ok());
  CHECK(down.error().code == Code::unavailable);
  CHECK_FALSE(a->recover_storage().ok());
  REQUIRE(own.start());
  // Back: the connection is made again, the head row read again, appends continue.
  bool back = false;
  for (int i = 0; i < 100 && !back; ++i) {
    back = a->recover_storage().ok();
    if (!back) std::this_thread::sleep_for(50ms);
  }
  REQUIRE(back);
  auto r = a->append(one("s", "3"));
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->first_position == 3);
  auto v = a->verify();
  REQUIRE(v.ok());
  CHECK_MESSAGE(v->ok, v->problem);
  CHECK(v->events_checked == 3);
}

TEST_CASE("postgres: a synchronous standby promoted after the primary dies keeps every append") {
  if (shared_pg() == nullptr) return;  // the binaries are absent (said once)
  PgServer primary;
  REQUIRE_MESSAGE(primary.ok(), primary.why());
  atrium::testing::TempDir sdir;
  const uint16_t sport = atrium::testing::child::free_port();
  const std::string script = std::string(ATRIUM_SOURCE_DIR) + "/tools/pg_test.sh";
  REQUIRE(atrium::testing::run_command(script + " standby " + primary.dir() + " " +
                                       std::to_string(primary.port()) + " " + sdir.str() + " " +
                                       std::to_string(sport) + " > /dev/null 2>&1") == 0);
  struct StopStandby {
    std::string cmd;
    ~StopStandby() { atrium::testing::run_command(cmd); }
  } stop_standby{script + " stop " + sdir.str() + " immediate > /dev/null 2>&1"};
  // Both hosts; libpq takes the one that accepts writes.
  const std::string ci = "host=127.0.0.1,127.0.0.1 port=" + std::to_string(primary.port()) + "," +
                         std::to_string(sport) +
                         " user=postgres dbname=postgres target_session_attrs=read-write";
  auto log = open_log(ci);
  lead(*log, cand("a"));
  constexpr int kAcked = 200;
  for (int i = 0; i < kAcked; ++i) {
    auto r = log->append(one("s", std::to_string(i)));
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  }
  // The primary dies; the standby is promoted.
  primary.stop("immediate");
  REQUIRE(atrium::testing::run_command(script + " promote " + sdir.str() + " > /dev/null 2>&1") ==
          0);
  // The first append finds the connection broken (unavailable: its outcome unknown to the
  // caller); recovery reconnects to the promoted standby and reads the head row again.
  atrium::Result<AppendResult> after = atrium::Error::make(Code::unavailable, "not tried");
  for (int i = 0; i < 200 && !after.ok(); ++i) {
    after = log->append(one("s", "after"));
    if (!after.ok()) {
      CHECK(after.error().code == Code::unavailable);
      (void)log->recover_storage();
      std::this_thread::sleep_for(50ms);
    }
  }
  REQUIRE_MESSAGE(after.ok(), (after.ok() ? "" : after.error().message));
  auto v = log->verify();
  REQUIRE_MESSAGE(v.ok(), (v.ok() ? "" : v.error().message));
  CHECK_MESSAGE(v->ok, v->problem);
  CHECK(after->first_position == v->events_checked);
  auto events = log->read_stream("s", 0, 0);
  REQUIRE(events.ok());
  REQUIRE(events->size() >= kAcked + 1);
  for (int i = 0; i < kAcked; ++i) CHECK((*events)[i].data == std::to_string(i));  // none lost
  CHECK(events->back().data == "after");
}

// A follower's writer connection sits idle from open() on; after a database failover (here:
// its server-side sessions terminated, as when the primary dies and a standby is promoted)
// it is broken without libpq knowing. Taking the lease must still let it write at once:
// before the fix set_writer_term() failed on that dead connection, the broker kept a lease
// it could not use, and nobody led for a whole TTL.
TEST_CASE("postgres: a follower whose connections broke while idle takes the lease and writes") {
  PgServer* pg = shared_pg();
  if (pg == nullptr) return;
  const std::string app = "atrium_idle_" + std::to_string(::getpid());
  const std::string ci = pg->fresh_schema() + " application_name=" + app;
  auto log = open_log(ci);
  // Every session of this store dies on the server side (the client does not notice yet).
  REQUIRE(pg->psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                   "application_name = '" +
                   app + "'") == 0);
  REQUIRE(atrium::testing::child::eventually(
      [&] {
        return pg->query("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + app +
                         "'") == "0";
      },
      5s));
  auto l = log->try_acquire(cand("f"));
  REQUIRE_MESSAGE(l.ok(), (l.ok() ? "" : l.error().message));
  REQUIRE(l->has_value());
  auto st = log->set_writer_term((*l)->term);
  CHECK_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  auto a = log->append(one("s", "after"));
  CHECK_MESSAGE(a.ok(), (a.ok() ? "" : a.error().message));
}

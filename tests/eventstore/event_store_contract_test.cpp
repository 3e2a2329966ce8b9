// The event store contract: one suite run over the three implementations (in-memory, RocksDB
// and PostgreSQL, on a throwaway server the tests start): gap-free positions and stream
// versions, expected-version conflicts, idempotency records and checkpoints, scan and
// read_stream paging, wait_for, concurrent readers; and the hash chain's canonical bytes.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include "event_store_fixture.h"
#include "eventstore/event_store.h"
#include "eventstore/shared_log.h"
#include "support/pg_server.h"
#include "support/test_support.h"

using namespace std::chrono_literals;
using atrium::Code;
using atrium::testing::PgServer;
using atrium::testing::shared_pg;
using atrium::testing::TempDir;
using namespace atrium::eventstore;
using namespace atrium::eventstore::testing;

// ---- fixtures: the contract suite runs over each ------------------------------------------
// In an anonymous namespace: doctest names each template case after its type
// ("...<{anonymous}::RocksStore>"), so a named namespace would rename the cases.

namespace {

struct MemoryStore {
  std::unique_ptr<EventStore> store = make_in_memory();
};

struct RocksStore {
  TempDir dir;
  std::unique_ptr<EventStore> store;
  RocksStore() {
    auto r = open_rocksdb(dir.str());
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    store = std::move(r).value();
  }
};

// A fresh schema on the test process's PostgreSQL, holding the term (the one writer).
struct PgStore {
  std::unique_ptr<SharedLog> log;
  EventStore* store = nullptr;
  PgStore() {
    PgServer* pg = shared_pg();
    if (pg == nullptr) return;
    auto r = open_postgres(pg->fresh_schema());
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    log = std::move(r).value();
    auto lease = log->try_acquire({"contract", "http://127.0.0.1:1", 60s});
    REQUIRE(lease.ok());
    REQUIRE(lease->has_value());
    REQUIRE(log->set_writer_term((*lease)->term).ok());
    store = log.get();
  }
};

}  // namespace

TEST_CASE_TEMPLATE("event store contract: appends get gap-free positions and stream versions", F,
                   MemoryStore, RocksStore, PgStore) {
  F f;
  if (!f.store) return;  // PostgreSQL binaries absent (said once)
  EventStore& s = *f.store;
  CHECK(s.last_position() == 0);
  CHECK(*s.stream_version("a") == 0);
  CHECK(scan_all(s).empty());
  require_verified(s, 0);

  auto r1 = s.append(request(write_of("a", ExpectedVersion::NoStream(), 1, 1)));
  REQUIRE(r1.ok());
  CHECK(r1->first_position == 1);
  CHECK(r1->last_position == 1);

  AppendRequest batch;
  batch.writes.push_back(write_of("b", ExpectedVersion::Any(), 1, 2));
  batch.writes.push_back(write_of("a", ExpectedVersion::Exact(1), 2, 1));
  batch.writes.push_back(write_of("c", ExpectedVersion::NoStream(), 1, 3));
  batch.writes.push_back(write_of("a", ExpectedVersion::Exact(2), 3, 1));  // sees the write above
  // Binary data (NUL bytes) survives.
  batch.writes.back().events.back().data = std::string("bin\0ary\xff", 8);
  auto r2 = s.append(batch);
  REQUIRE_MESSAGE(r2.ok(), (r2.ok() ? "" : r2.error().message));
  CHECK(r2->first_position == 2);
  CHECK(r2->last_position == 8);
  CHECK(s.last_position() == 8);

  auto all = scan_all(s);
  REQUIRE(all.size() == 8);
  const std::vector<std::pair<std::string, uint64_t>> want = {
      {"a", 1}, {"b", 1}, {"b", 2}, {"a", 2}, {"c", 1}, {"c", 2}, {"c", 3}, {"a", 3}};
  Hash prev{};
  for (size_t i = 0; i < all.size(); ++i) {
    const RecordedEvent& e = all[i];
    CAPTURE(i);
    CHECK(e.position == i + 1);
    CHECK(e.stream == want[i].first);
    CHECK(e.stream_version == want[i].second);
    CHECK(e.type == "Thing");
    CHECK(e.schema_version == 2);
    CHECK(e.recorded_at_ms == 1'700'000'000'123);
    CHECK(e.actor == "alice");
    CHECK(e.correlation_id == "corr-1");
    CHECK(e.causation_id == "cause-1");
    if (i + 1 < all.size()) CHECK(e.data == payload(e.stream, e.stream_version));
    CHECK(e.hash == chain_hash(prev, e));
    prev = e.hash;
  }
  CHECK(all.back().data == std::string("bin\0ary\xff", 8));
  CHECK(*s.stream_version("a") == 3);
  CHECK(*s.stream_version("b") == 2);
  CHECK(*s.stream_version("c") == 3);
  CHECK(*s.stream_version("nope") == 0);

  // A request without events writes nothing and reports position 0.
  auto r3 = s.append(AppendRequest{});
  REQUIRE(r3.ok());
  CHECK(r3->first_position == 0);
  CHECK(r3->last_position == 0);
  CHECK(s.last_position() == 8);
  require_verified(s, 8);
}

TEST_CASE("hash chain: canonical bytes cover every field and the chain starts from zeros") {
  RecordedEvent e;
  e.position = 1;
  e.stream = "s";
  e.stream_version = 1;
  e.type = "T";
  e.data = "{}";
  const std::string base = canonical_bytes(e);
  CHECK(canonical_bytes(e) == base);  // deterministic
  auto differs = [&](auto mutate) {
    RecordedEvent m = e;
    mutate(m);
    return canonical_bytes(m) != base && chain_hash(Hash{}, m) != chain_hash(Hash{}, e);
  };
  CHECK(differs([](RecordedEvent& m) { m.position = 2; }));
  CHECK(differs([](RecordedEvent& m) { m.stream = "t"; }));
  CHECK(differs([](RecordedEvent& m) { m.stream_version = 2; }));
  CHECK(differs([](RecordedEvent& m) { m.type = "U"; }));
  CHECK(differs([](RecordedEvent& m) { m.schema_version = 3; }));
  CHECK(differs([](RecordedEvent& m) { m.recorded_at_ms = -1; }));
  CHECK(differs([](RecordedEvent& m) { m.actor = "a"; }));
  CHECK(differs([](RecordedEvent& m) { m.correlation_id = "c"; }));
  CHECK(differs([](RecordedEvent& m) { m.causation_id = "c"; }));
  CHECK(differs([](RecordedEvent& m) { m.idempotency_key = "k"; }));
  CHECK(differs([](RecordedEvent& m) { m.data = "{ }"; }));
  // Length prefixes: moving a byte between adjacent fields changes the bytes.
  CHECK(differs([](RecordedEvent& m) {
    m.stream = "sT";
    m.type = "";
  }));
  // The hash is not part of the canonical bytes.
  RecordedEvent h = e;
  h.hash[0] = 1;
  CHECK(canonical_bytes(h) == base);
  // A different previous hash gives a different hash; hex is 64 lowercase digits.
  Hash other{};
  other[31] = 1;
  CHECK(chain_hash(other, e) != chain_hash(Hash{}, e));
  const std::string hex = to_hex(chain_hash(Hash{}, e));
  CHECK(hex.size() == 64);
  CHECK(hex.find_first_not_of("0123456789abcdef") == std::string::npos);
  Hash known{};
  known[0] = 0xab;
  known[31] = 0x0f;
  CHECK(to_hex(known).substr(0, 2) == "ab");
  CHECK(to_hex(known).substr(62) == "0f");
}

TEST_CASE_TEMPLATE("event store contract: wrong expected versions conflict and write nothing", F,
                   MemoryStore, RocksStore, PgStore) {
  F f;
  if (!f.store) return;  // PostgreSQL binaries absent (said once)
  EventStore& s = *f.store;
  REQUIRE(s.append(request(write_of("s", ExpectedVersion::Any(), 1, 2))).ok());
  REQUIRE(s.last_position() == 2);

  auto expect_conflict = [&](AppendRequest req, const std::string& what) {
    CAPTURE(what);
    auto r = s.append(req);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Code::conflict);
    CHECK(r.error().message.find('\'') != std::string::npos);  // names the stream
    CHECK(s.last_position() == 2);
    CHECK(*s.stream_version("s") == 2);
    CHECK(*s.stream_version("fresh") == 0);
    CHECK(s.read_stream("fresh", 0, 0)->empty());
    CHECK(scan_all(s).size() == 2);
    CHECK_FALSE(s.get_idempotency("idem-conflict")->has_value());
    CHECK_FALSE(s.get_checkpoint("cp-conflict")->has_value());
  };
  auto with_side_effects = [](AppendRequest req) {
    req.idempotency.push_back({"idem-conflict", "v"});
    req.checkpoints.emplace_back("cp-conflict", "v");
    return req;
  };

  expect_conflict(with_side_effects(request(write_of("s", ExpectedVersion::NoStream(), 3, 1))),
                  "no_stream on an existing stream");
  expect_conflict(
      with_side_effects(request(write_of("fresh", ExpectedVersion::StreamExists(), 1, 1))),
      "stream_exists on a missing stream");
  expect_conflict(with_side_effects(request(write_of("s", ExpectedVersion::Exact(1), 2, 1))),
                  "exact behind");
  expect_conflict(with_side_effects(request(write_of("s", ExpectedVersion::Exact(5), 6, 1))),
                  "exact ahead");
  expect_conflict(with_side_effects(request(write_of("fresh", ExpectedVersion::Exact(1), 2, 1))),
                  "exact on a missing stream");
  {
    // The first write would succeed alone; the second fails: all or nothing.
    AppendRequest req;
    req.writes.push_back(write_of("fresh", ExpectedVersion::NoStream(), 1, 2));
    req.writes.push_back(write_of("s", ExpectedVersion::Exact(7), 8, 1));
    expect_conflict(with_side_effects(req), "second write of a batch");
  }
  {
    // Expectations see earlier writes of the same request.
    AppendRequest req;
    req.writes.push_back(write_of("fresh", ExpectedVersion::NoStream(), 1, 1));
    req.writes.push_back(write_of("fresh", ExpectedVersion::NoStream(), 2, 1));
    expect_conflict(with_side_effects(req), "no_stream twice in one request");
  }

  // Invalid input is rejected the same way.
  {
    auto r = s.append(request(write_of("", ExpectedVersion::Any(), 1, 1)));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Code::invalid_argument);
    auto req = request(write_of("fresh", ExpectedVersion::Any(), 1, 1));
    req.writes[0].events[0].type.clear();
    auto r2 = s.append(req);
    REQUIRE_FALSE(r2.ok());
    CHECK(r2.error().code == Code::invalid_argument);
    CHECK(s.last_position() == 2);
    CHECK(*s.stream_version("fresh") == 0);
  }

  // Each kind succeeds when it holds.
  CHECK(s.append(request(write_of("s", ExpectedVersion::Exact(2), 3, 1))).ok());
  CHECK(s.append(request(write_of("s", ExpectedVersion::StreamExists(), 4, 1))).ok());
  CHECK(s.append(request(write_of("fresh", ExpectedVersion::Exact(0), 1, 1))).ok());
  CHECK(s.append(request(write_of("fresh2", ExpectedVersion::NoStream(), 1, 1))).ok());
  CHECK(s.append(request(write_of("s", ExpectedVersion::Any(), 5, 1))).ok());
  CHECK(s.last_position() == 7);
  CHECK(*s.stream_version("s") == 5);
  CHECK(*s.stream_version("fresh") == 1);
  require_verified(s, 7);
}

TEST_CASE_TEMPLATE("event store contract: idempotency records and checkpoints", F, MemoryStore,
                   RocksStore, PgStore) {
  F f;
  if (!f.store) return;  // PostgreSQL binaries absent (said once)
  EventStore& s = *f.store;
  CHECK_FALSE(s.get_idempotency("k1")->has_value());
  CHECK_FALSE(s.get_checkpoint("proj")->has_value());

  auto req = request(write_of("s", ExpectedVersion::Any(), 1, 2));
  req.idempotency.push_back({"k1", "response-1"});
  req.idempotency.push_back({"k2", std::string("bin\0", 4)});
  req.checkpoints.emplace_back("proj", "snapshot@2");
  auto r = s.append(req);
  REQUIRE(r.ok());
  CHECK(*s.get_idempotency("k1") == std::optional<std::string>("response-1"));
  CHECK(*s.get_idempotency("k2") == std::optional<std::string>(std::string("bin\0", 4)));
  CHECK(*s.get_checkpoint("proj") == std::optional<std::string>("snapshot@2"));
  CHECK_FALSE(s.get_idempotency("k3")->has_value());

  // A checkpoint alone (no events) is written and reports no positions.
  AppendRequest only_cp;
  only_cp.checkpoints.emplace_back("proj", "snapshot@2b");
  auto r2 = s.append(only_cp);
  REQUIRE(r2.ok());
  CHECK(r2->first_position == 0);
  CHECK(*s.get_checkpoint("proj") == std::optional<std::string>("snapshot@2b"));
  CHECK(s.last_position() == 2);

  REQUIRE(s.put_checkpoint("proj", "snapshot@3").ok());
  CHECK(*s.get_checkpoint("proj") == std::optional<std::string>("snapshot@3"));
  auto bad = s.put_checkpoint("", "x");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == Code::invalid_argument);
}

TEST_CASE_TEMPLATE("event store contract: scan honours after, max and early stop", F, MemoryStore,
                   RocksStore, PgStore) {
  F f;
  if (!f.store) return;  // PostgreSQL binaries absent (said once)
  EventStore& s = *f.store;
  for (uint64_t v = 1; v <= 10; ++v) {
    REQUIRE(
        s.append(request(write_of(v % 2 ? "odd" : "even", ExpectedVersion::Any(), (v + 1) / 2, 1)))
            .ok());
  }
  CHECK(scan_all(s).size() == 10);
  auto tail = scan_all(s, 3);
  REQUIRE(tail.size() == 7);
  CHECK(tail.front().position == 4);
  CHECK(tail.back().position == 10);
  auto page = scan_all(s, 3, 4);
  REQUIRE(page.size() == 4);
  CHECK(page.front().position == 4);
  CHECK(page.back().position == 7);
  CHECK(scan_all(s, 10).empty());
  CHECK(scan_all(s, 1000).empty());

  std::vector<uint64_t> seen;
  auto stopped = s.scan(0, 0, [&](const RecordedEvent& e) {
    seen.push_back(e.position);
    return seen.size() < 2;
  });
  REQUIRE(stopped.ok());
  CHECK(*stopped == 2);
  CHECK(seen == std::vector<uint64_t>{1, 2});
}

TEST_CASE_TEMPLATE("event store contract: read_stream pages through one stream", F, MemoryStore,
                   RocksStore, PgStore) {
  F f;
  if (!f.store) return;  // PostgreSQL binaries absent (said once)
  EventStore& s = *f.store;
  for (uint64_t v = 1; v <= 25; ++v) {
    AppendRequest req;
    req.writes.push_back(write_of("p", ExpectedVersion::Exact(v - 1), v, 1));
    req.writes.push_back(write_of("p-other", ExpectedVersion::Any(), v, 1));  // shares a prefix
    REQUIRE(s.append(req).ok());
  }
  std::vector<uint64_t> versions;
  uint64_t after = 0;
  size_t pages = 0;
  for (;;) {
    auto page = s.read_stream("p", after, 10);
    REQUIRE(page.ok());
    if (page->empty()) break;
    ++pages;
    CHECK(page->size() <= 10);
    for (const auto& e : *page) {
      CHECK(e.stream == "p");
      CHECK(e.data == payload("p", e.stream_version));
      CHECK(e.position == 2 * e.stream_version - 1);
      versions.push_back(e.stream_version);
    }
    after = page->back().stream_version;
  }
  CHECK(pages == 3);
  REQUIRE(versions.size() == 25);
  for (size_t i = 0; i < versions.size(); ++i) CHECK(versions[i] == i + 1);
  CHECK(s.read_stream("p", 0, 0)->size() == 25);  // 0 = no limit
  CHECK(s.read_stream("p", 25, 10)->empty());
  CHECK(s.read_stream("p", 1000, 10)->empty());
  CHECK(s.read_stream("missing", 0, 10)->empty());
  CHECK(s.read_stream("", 0, 10)->empty());
}

TEST_CASE_TEMPLATE("event store contract: wait_for wakes on append and times out otherwise", F,
                   MemoryStore, RocksStore, PgStore) {
  F f;
  if (!f.store) return;  // PostgreSQL binaries absent (said once)
  EventStore& s = *f.store;
  REQUIRE(s.append(request(write_of("w", ExpectedVersion::Any(), 1, 1))).ok());
  CHECK(s.wait_for(0, 10s) == 1);  // already past: immediate

  auto t0 = std::chrono::steady_clock::now();
  CHECK(s.wait_for(1, 60ms) == 1);
  CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);

  std::atomic<uint64_t> woke_with{0};
  std::chrono::steady_clock::duration waited{};
  std::thread waiter([&] {
    auto start = std::chrono::steady_clock::now();
    woke_with = s.wait_for(1, 20s);
    waited = std::chrono::steady_clock::now() - start;
  });
  std::this_thread::sleep_for(50ms);
  REQUIRE(s.append(request(write_of("w", ExpectedVersion::Any(), 2, 1))).ok());
  waiter.join();
  CHECK(woke_with == 2);
  CHECK(waited < 10s);
}

TEST_CASE_TEMPLATE("event store contract: concurrent readers never see torn appends", F,
                   MemoryStore, RocksStore, PgStore) {
  F f;
  if (!f.store) return;  // PostgreSQL binaries absent (said once)
  EventStore& s = *f.store;
  const std::vector<std::string> streams = {"s0", "s1", "s2", "s3"};
  constexpr int kAppends = 300;
  std::atomic<bool> done{false};
  std::mutex problems_mu;
  std::vector<std::string> problems;
  auto problem = [&](std::string p) {
    std::lock_guard<std::mutex> lk(problems_mu);
    if (problems.size() < 20) problems.push_back(std::move(p));
  };

  std::vector<std::thread> readers;
  std::atomic<uint64_t> reader_rounds{0};
  for (int t = 0; t < 6; ++t) {
    readers.emplace_back([&, t] {
      std::map<std::string, uint64_t> last_seen_version;
      uint64_t tail = 0;  // thread 0 follows the log with wait_for
      while (!done.load()) {
        const uint64_t lp = s.last_position();
        if (t == 0) {
          s.wait_for(tail, 20ms);
          auto r = s.scan(tail, 0, [&](const RecordedEvent& e) {
            if (e.position != tail + 1) problem("follower gap at " + std::to_string(e.position));
            tail = e.position;
            return true;
          });
          if (!r.ok()) problem("follower scan: " + r.error().message);
          continue;
        }
        uint64_t expected = 1;
        auto r = s.scan(0, 0, [&](const RecordedEvent& e) {
          if (e.position != expected) problem("scan gap at " + std::to_string(e.position));
          if (e.data != payload(e.stream, e.stream_version)) {
            problem("torn event at " + std::to_string(e.position));
          }
          ++expected;
          return true;
        });
        if (!r.ok()) {
          problem("scan: " + r.error().message);
        } else if (*r < lp) {
          problem("scan saw " + std::to_string(*r) + " events, last_position was " +
                  std::to_string(lp));
        }
        const std::string& stream = streams[(t + reader_rounds) % streams.size()];
        auto v = s.stream_version(stream);
        if (!v.ok()) {
          problem("stream_version: " + v.error().message);
        } else {
          if (*v < last_seen_version[stream]) problem("stream version went backwards");
          last_seen_version[stream] = *v;
          auto events = s.read_stream(stream, 0, 0);
          if (!events.ok()) {
            problem("read_stream: " + events.error().message);
          } else {
            if (events->size() < *v) problem("read_stream shorter than stream_version");
            for (size_t i = 0; i < events->size(); ++i) {
              const auto& e = (*events)[i];
              if (e.stream_version != i + 1 || e.data != payload(stream, i + 1)) {
                problem("read_stream torn at version " + std::to_string(i + 1));
              }
            }
          }
        }
        ++reader_rounds;
      }
    });
  }

  std::map<std::string, uint64_t> versions;
  uint64_t total = 0;
  for (int i = 0; i < kAppends; ++i) {
    AppendRequest req;
    const int writes = 1 + i % 3;
    for (int w = 0; w < writes; ++w) {
      const std::string& stream = streams[(i + w) % streams.size()];
      const size_t n = 1 + (i + w) % 2;
      req.writes.push_back(
          write_of(stream, ExpectedVersion::Exact(versions[stream]), versions[stream] + 1, n));
      versions[stream] += n;
      total += n;
    }
    auto r = s.append(req);
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  }
  // On a loaded machine the appends can finish before any reader ran: give them a round.
  for (int i = 0; i < 1000 && reader_rounds.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  done = true;
  for (auto& t : readers) t.join();
  for (const auto& p : problems) FAIL_CHECK(p);
  CHECK(problems.empty());
  CHECK(reader_rounds > 0);
  CHECK(s.last_position() == total);
  for (const auto& [stream, v] : versions) CHECK(*s.stream_version(stream) == v);
  require_verified(s, total);
}

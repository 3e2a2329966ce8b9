// Event store: one contract suite run over the three implementations (in-memory, RocksDB and
// PostgreSQL, on a throwaway server the tests start),
// then RocksDB-only durability tests: reopen, tampering, SST corruption, torn WAL tail and
// storage failure through an injected RocksDB FileSystem.
#include "eventstore/event_store.h"

#include <doctest/doctest.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "eventstore/shared_log.h"
#include "support/pg_server.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using atrium::Code;
using atrium::testing::TempDir;
using atrium::testing::PgServer;
using atrium::testing::shared_pg;
using namespace atrium::eventstore;

namespace {

std::string payload(std::string_view stream, uint64_t version) {
  return "{\"stream\":\"" + std::string(stream) + "\",\"version\":" + std::to_string(version) +
         ",\"pad\":\"" + std::string(40, 'x') + "\"}";
}

NewEvent make_event(std::string type, std::string data, std::string idem = {}) {
  NewEvent e;
  e.type = std::move(type);
  e.data = std::move(data);
  e.actor = "alice";
  e.correlation_id = "corr-1";
  e.causation_id = "cause-1";
  e.idempotency_key = std::move(idem);
  e.schema_version = 2;
  e.recorded_at_ms = 1'700'000'000'123;
  return e;
}

// One write of `n` events to `stream`, whose versions will be first_version...
StreamWrite write_of(std::string stream, ExpectedVersion expected, uint64_t first_version,
                     size_t n) {
  StreamWrite w;
  w.stream = std::move(stream);
  w.expected = expected;
  for (size_t i = 0; i < n; ++i) {
    w.events.push_back(make_event("Thing", payload(w.stream, first_version + i)));
  }
  return w;
}

AppendRequest request(StreamWrite w) {
  AppendRequest r;
  r.writes.push_back(std::move(w));
  return r;
}

std::vector<RecordedEvent> scan_all(const EventStore& s, uint64_t after = 0,
                                    uint64_t max = 0) {
  std::vector<RecordedEvent> out;
  auto r = s.scan(after, max, [&](const RecordedEvent& e) {
    out.push_back(e);
    return true;
  });
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(*r == out.size());
  return out;
}

void require_verified(const EventStore& s, uint64_t events) {
  auto v = s.verify();
  REQUIRE_MESSAGE(v.ok(), (v.ok() ? "" : v.error().message));
  CHECK_MESSAGE(v->ok, v->problem);
  CHECK(v->events_checked == events);
}

// ---- fixtures: the contract suite runs over each ------------------------------------------

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

TEST_CASE_TEMPLATE("event store contract: appends get gap-free positions and stream versions",
                   F, MemoryStore, RocksStore, PgStore) {
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
  CHECK(differs([](RecordedEvent& m) { m.stream = "sT"; m.type = ""; }));
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

TEST_CASE_TEMPLATE("event store contract: scan honours after, max and early stop", F,
                   MemoryStore, RocksStore, PgStore) {
  F f;
  if (!f.store) return;  // PostgreSQL binaries absent (said once)
  EventStore& s = *f.store;
  for (uint64_t v = 1; v <= 10; ++v) {
    REQUIRE(s.append(request(write_of(v % 2 ? "odd" : "even", ExpectedVersion::Any(),
                                      (v + 1) / 2, 1)))
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

// ---- RocksDB only ------------------------------------------------------------------------

namespace {

std::unique_ptr<EventStore> open_store(const std::string& dir, RocksOptions opts = {}) {
  auto r = open_rocksdb(dir, opts);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return std::move(r).value();
}

// The raw database with every column family, to tamper with it behind the store's back.
struct RawDb {
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;

  explicit RawDb(const std::string& dir) {
    std::vector<std::string> names;
    REQUIRE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), dir, &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const auto& n : names) cfs.emplace_back(n, rocksdb::ColumnFamilyOptions());
    auto s = rocksdb::DB::Open(rocksdb::DBOptions(), dir, cfs, &handles, &db);
    REQUIRE_MESSAGE(s.ok(), s.ToString());
  }
  ~RawDb() {
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
    delete db;
  }
  rocksdb::ColumnFamilyHandle* cf(const std::string& name) {
    for (auto* h : handles) {
      if (h->GetName() == name) return h;
    }
    FAIL("no column family " << name);
    return nullptr;
  }
};

std::string be_key(uint64_t v) {
  std::string k(8, '\0');
  for (int i = 7; i >= 0; --i) {
    k[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  return k;
}

// Files of `dir` whose name ends with `ext`, largest first.
std::vector<fs::path> files_with(const std::string& dir, const std::string& ext) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ext) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end(),
            [](const fs::path& a, const fs::path& b) { return fs::file_size(a) > fs::file_size(b); });
  return out;
}

void append_events(EventStore& s, const std::string& stream, size_t batches, size_t per_batch) {
  auto v = s.stream_version(stream);
  REQUIRE(v.ok());
  uint64_t version = *v;
  for (size_t b = 0; b < batches; ++b) {
    auto r = s.append(request(write_of(stream, ExpectedVersion::Exact(version), version + 1,
                                       per_batch)));
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    version += per_batch;
  }
}

}  // namespace

TEST_CASE("rocksdb: reopening keeps positions, versions, records and continues the chain") {
  TempDir dir;
  Hash last_hash{};
  {
    auto s = open_store(dir.str());
    append_events(*s, "a", 3, 2);
    append_events(*s, "b", 2, 1);
    auto req = request(write_of("a", ExpectedVersion::Exact(6), 7, 1));
    req.idempotency.push_back({"idem", "resp"});
    req.checkpoints.emplace_back("proj", "snap");
    REQUIRE(s->append(req).ok());
    REQUIRE(s->last_position() == 9);
    last_hash = scan_all(*s).back().hash;
  }
  auto s = open_store(dir.str());
  CHECK(s->last_position() == 9);
  CHECK(*s->stream_version("a") == 7);
  CHECK(*s->stream_version("b") == 2);
  CHECK(*s->get_idempotency("idem") == std::optional<std::string>("resp"));
  CHECK(*s->get_checkpoint("proj") == std::optional<std::string>("snap"));
  require_verified(*s, 9);

  auto conflict = s->append(request(write_of("a", ExpectedVersion::Exact(6), 7, 1)));
  REQUIRE_FALSE(conflict.ok());
  CHECK(conflict.error().code == Code::conflict);
  auto r = s->append(request(write_of("a", ExpectedVersion::Exact(7), 8, 1)));
  REQUIRE(r.ok());
  CHECK(r->first_position == 10);
  auto tail = scan_all(*s, 9);
  REQUIRE(tail.size() == 1);
  CHECK(tail[0].hash == chain_hash(last_hash, tail[0]));
  require_verified(*s, 10);
}

TEST_CASE("rocksdb: verify reports the first tampered or missing event") {
  TempDir dir;
  {
    auto s = open_store(dir.str());
    append_events(*s, "t", 20, 1);
  }
  SUBCASE("data bytes overwritten") {
    {
      RawDb raw(dir.str());
      std::string value;
      REQUIRE(raw.db->Get(rocksdb::ReadOptions(), raw.cf("events"), be_key(7), &value).ok());
      const std::string needle = payload("t", 7);
      const size_t at = value.find(needle);
      REQUIRE(at != std::string::npos);
      value[at + needle.size() - 3] = 'y';  // same length, one byte changed
      REQUIRE(raw.db->Put(rocksdb::WriteOptions(), raw.cf("events"), be_key(7), value).ok());
    }
    auto s = open_store(dir.str());
    auto v = s->verify();
    REQUIRE(v.ok());
    CHECK_FALSE(v->ok);
    CHECK(v->first_bad_position == 7);
    CHECK(v->events_checked == 6);
    CHECK(v->problem.find("hash") != std::string::npos);
  }
  SUBCASE("an event deleted from the middle") {
    {
      RawDb raw(dir.str());
      REQUIRE(raw.db->Delete(rocksdb::WriteOptions(), raw.cf("events"), be_key(12)).ok());
    }
    auto s = open_store(dir.str());
    auto v = s->verify();
    REQUIRE(v.ok());
    CHECK_FALSE(v->ok);
    CHECK(v->first_bad_position == 12);
    CHECK(v->problem.find("gap") != std::string::npos);
    auto scanned = s->scan(0, 0, [](const RecordedEvent&) { return true; });
    REQUIRE_FALSE(scanned.ok());  // a scan never silently skips the hole
    CHECK(scanned.error().code == Code::internal);
  }
  SUBCASE("stream index pointing elsewhere") {
    {
      RawDb raw(dir.str());
      std::string key = std::string("t") + '\0' + be_key(4);
      REQUIRE(raw.db->Put(rocksdb::WriteOptions(), raw.cf("streams"), key, be_key(5)).ok());
    }
    auto s = open_store(dir.str());
    auto v = s->verify();
    REQUIRE(v.ok());
    CHECK_FALSE(v->ok);
    CHECK(v->first_bad_position == 4);
    CHECK(v->problem.find("index") != std::string::npos);
  }
}

TEST_CASE("rocksdb: a corrupted SST data block opens, then scan and verify fail loudly") {
  TempDir dir;
  constexpr uint64_t kEvents = 3000;
  {
    auto s = open_store(dir.str());
    append_events(*s, "big", kEvents / 100, 100);
  }
  {
    // Move everything out of the WAL into SST files.
    RawDb raw(dir.str());
    REQUIRE(raw.db->Flush(rocksdb::FlushOptions(), raw.handles).ok());
    for (auto* h : raw.handles) {
      REQUIRE(raw.db->CompactRange(rocksdb::CompactRangeOptions(), h, nullptr, nullptr).ok());
    }
  }
  auto ssts = files_with(dir.str(), ".sst");
  REQUIRE_FALSE(ssts.empty());
  const fs::path victim = ssts.front();  // the largest: the events column family
  const auto size = fs::file_size(victim);
  REQUIRE(size > 64 * 1024);
  {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    REQUIRE(f.good());
    const auto mid = static_cast<std::streamoff>(size / 2);
    std::string bytes(64, '\0');
    f.seekg(mid);
    f.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    for (auto& c : bytes) c = static_cast<char>(~c);
    f.seekp(mid);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(f.good());
  }

  // RocksDB 7.8 opens it: Open reads each SST's footer, index and properties, not its data
  // blocks, so the damage is found when a read reaches it. What matters is that it is found.
  auto opened = open_rocksdb(dir.str());
  REQUIRE_MESSAGE(opened.ok(), (opened.ok() ? "" : opened.error().message));
  auto& s = *opened.value();
  CHECK(s.last_position() == kEvents);  // the tail is intact; the middle is not

  uint64_t visited = 0;
  auto scanned = s.scan(0, 0, [&](const RecordedEvent&) {
    ++visited;
    return true;
  });
  REQUIRE_FALSE(scanned.ok());  // never a short, "successful" replay
  CHECK(scanned.error().code == Code::internal);
  CHECK(scanned.error().message.find("Corruption") != std::string::npos);
  CHECK(visited < kEvents);

  auto v = s.verify();
  REQUIRE(v.ok());
  CHECK_FALSE(v->ok);
  CHECK(v->first_bad_position == v->events_checked + 1);
  CHECK(v->first_bad_position > 1);
  CHECK(v->first_bad_position <= kEvents);
  CHECK(v->problem.find("Corruption") != std::string::npos);
}

TEST_CASE("rocksdb: a torn WAL tail reopens to a consistent prefix and appends continue") {
  constexpr uint64_t kEvents = 40;
  for (const uint64_t cut : {uint64_t{7}, uint64_t{0}}) {  // 0 = cut half the WAL
    CAPTURE(cut);
    TempDir dir;
    {
      auto s = open_store(dir.str());
      append_events(*s, "w", kEvents, 1);
    }
    auto logs = files_with(dir.str(), ".log");
    REQUIRE_FALSE(logs.empty());
    const fs::path wal = logs.front();
    const auto size = fs::file_size(wal);
    REQUIRE(size > 1000);
    fs::resize_file(wal, cut == 0 ? size / 2 : size - cut);

    uint64_t recovered = 0;
    {
      auto s = open_store(dir.str());
      recovered = s->last_position();
      CAPTURE(recovered);
      CHECK(recovered < kEvents);
      if (cut != 0) CHECK(recovered == kEvents - 1);  // only the torn record is lost
      CHECK(recovered > 0);
      auto all = scan_all(*s);
      CHECK(all.size() == recovered);
      CHECK(*s->stream_version("w") == recovered);
      require_verified(*s, recovered);
      auto r = s->append(request(write_of("w", ExpectedVersion::Exact(recovered), recovered + 1, 2)));
      REQUIRE(r.ok());
      CHECK(r->first_position == recovered + 1);
      require_verified(*s, recovered + 2);
    }
    auto s = open_store(dir.str());
    CHECK(s->last_position() == recovered + 2);
    require_verified(*s, recovered + 2);
  }
}

namespace {

// A RocksDB FileSystem whose writes and syncs fail while `failing` is set.
class FlakyFs;

class FlakyFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FlakyFile(std::unique_ptr<rocksdb::FSWritableFile> f, const std::atomic<bool>* failing)
      : FSWritableFileOwnerWrapper(std::move(f)), failing_(failing) {}
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           rocksdb::IODebugContext* d) override {
    if (failing_->load()) return rocksdb::IOStatus::IOError("injected write failure");
    return FSWritableFileOwnerWrapper::Append(data, o, d);
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           const rocksdb::DataVerificationInfo& info,
                           rocksdb::IODebugContext* d) override {
    if (failing_->load()) return rocksdb::IOStatus::IOError("injected write failure");
    return FSWritableFileOwnerWrapper::Append(data, o, info, d);
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    if (failing_->load()) return rocksdb::IOStatus::IOError("injected sync failure");
    return FSWritableFileOwnerWrapper::Sync(o, d);
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    if (failing_->load()) return rocksdb::IOStatus::IOError("injected sync failure");
    return FSWritableFileOwnerWrapper::Fsync(o, d);
  }

 private:
  const std::atomic<bool>* failing_;
};

class FlakyFs : public rocksdb::FileSystemWrapper {
 public:
  FlakyFs() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}
  const char* Name() const override { return "FlakyFs"; }
  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* d) override {
    if (failing.load()) return rocksdb::IOStatus::IOError("injected create failure: " + f);
    auto s = target()->NewWritableFile(f, o, r, d);
    if (s.ok()) *r = std::make_unique<FlakyFile>(std::move(*r), &failing);
    return s;
  }
  std::atomic<bool> failing{false};
};

}  // namespace

TEST_CASE("rocksdb: a failing disk makes append unavailable, writes nothing, and recovers") {
  TempDir dir;
  auto flaky = std::make_shared<FlakyFs>();
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(flaky);
  RocksOptions opts;
  opts.env = env.get();
  {
    auto s = open_store(dir.str(), opts);
    append_events(*s, "d", 3, 1);

    flaky->failing = true;
    auto req = request(write_of("d", ExpectedVersion::Exact(3), 4, 2));
    req.idempotency.push_back({"lost", "v"});
    auto failed = s->append(req);
    REQUIRE_FALSE(failed.ok());
    CHECK(failed.error().code == Code::unavailable);
    CHECK(failed.error().message.find("injected") != std::string::npos);
    CHECK(s->last_position() == 3);
    CHECK(*s->stream_version("d") == 3);
    CHECK_FALSE(s->get_idempotency("lost")->has_value());
    CHECK(scan_all(*s).size() == 3);

    // Still failing: still unavailable, still nothing written.
    auto again = s->append(req);
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code == Code::unavailable);
    CHECK(s->last_position() == 3);

    // Storage recovers: the store reopens itself (attempts spaced out, at most 1 s apart)
    // and the same request goes through at the next position.
    flaky->failing = false;
    auto ok = s->append(req);
    for (int i = 0; i < 300 && !ok.ok(); ++i) {
      CHECK(ok.error().code == Code::unavailable);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      ok = s->append(req);
    }
    REQUIRE_MESSAGE(ok.ok(), (ok.ok() ? "" : ok.error().message));
    CHECK(ok->first_position == 4);
    CHECK(ok->last_position == 5);
    CHECK(*s->get_idempotency("lost") == std::optional<std::string>("v"));
    append_events(*s, "d", 1, 1);
    require_verified(*s, 6);
  }
  auto s = open_store(dir.str(), opts);
  CHECK(s->last_position() == 6);
  CHECK(*s->stream_version("d") == 6);
  require_verified(*s, 6);
}

// ---- issue 10: full disk, WAL damage, file modes ------------------------------------------

namespace {

// Appends `n` single-event batches to `stream` (one WAL record each) and closes the store
// without a flush: everything stays in the WAL, as after a SIGKILL.
void wal_only_log(const std::string& dir, const std::string& stream, size_t n) {
  auto s = open_store(dir);
  append_events(*s, stream, n, 1);
}

void flip_byte(const fs::path& file, uint64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(f.good());
  char c = 0;
  f.seekg(static_cast<std::streamoff>(offset));
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
  REQUIRE(f.good());
}

struct Warnings {
  std::mutex mu;
  std::vector<std::string> lines;
  std::function<void(const std::string&)> sink() {
    return [this](const std::string& l) {
      std::lock_guard lk(mu);
      lines.push_back(l);
    };
  }
  bool any(const std::string& needle) {
    std::lock_guard lk(mu);
    for (const auto& l : lines) {
      if (l.find(needle) != std::string::npos) return true;
    }
    return false;
  }
};

}  // namespace

TEST_CASE("10.6: a flipped byte mid-WAL refuses the open, naming what would be lost") {
  constexpr uint64_t kEvents = 400;
  TempDir dir;
  wal_only_log(dir.str(), "w", kEvents);
  auto logs = files_with(dir.str(), ".log");
  REQUIRE(logs.size() == 1);
  const fs::path wal = logs.front();
  const uint64_t size = fs::file_size(wal);
  REQUIRE(size > 40000);
  flip_byte(wal, size / 2);

  // Read-only looks (inspect, a read-only open, verify) change nothing, and say what is lost.
  const auto before = atrium::testing::file_contents(dir.str());
  {
    auto rep = inspect_wal(dir.str());
    REQUIRE_MESSAGE(rep.ok(), (rep.ok() ? "" : rep.error().message));
    CHECK(rep->damaged);
    CHECK(rep->data_loss());
    CHECK(rep->file == wal.string());
    CHECK(rep->offset <= size / 2);
    CHECK(rep->offset + rep->dropped_bytes == size);
    CHECK(rep->kept_position < kEvents);
    CHECK(rep->kept_position > 0);
    CHECK(rep->last_position_after == kEvents);
    CHECK(rep->lost_events == kEvents - rep->kept_position);
    MESSAGE(rep->describe());

    RocksOptions ro;
    ro.mode = OpenMode::read_only;
    ro.create_if_missing = false;
    WalReport seen;
    ro.wal_report = &seen;
    auto reader = open_rocksdb(dir.str(), ro);
    REQUIRE_MESSAGE(reader.ok(), (reader.ok() ? "" : reader.error().message));
    CHECK(seen.data_loss());
    CHECK((*reader)->last_position() == rep->kept_position);
    require_verified(**reader, rep->kept_position);
    CHECK_FALSE((*reader)->append(request(write_of("w", ExpectedVersion::Any(), 1, 1))).ok());
  }
  CHECK(atrium::testing::file_contents(dir.str()) == before);

  // The writer refuses, and says where and what.
  auto refused = open_rocksdb(dir.str());
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().reason == "wal_corrupt");
  const std::string& msg = refused.error().message;
  CAPTURE(msg);
  CHECK(msg.find(wal.filename().string()) != std::string::npos);
  CHECK(msg.find("byte offset") != std::string::npos);
  CHECK(msg.find("acknowledged events") != std::string::npos);
  CHECK(msg.find(std::to_string(kEvents)) != std::string::npos);
  CHECK(atrium::testing::file_contents(dir.str()) == before);  // refusing changed nothing

  // Accepted explicitly: opens to the intact prefix, warns, and records the loss.
  Warnings w;
  RocksOptions accept;
  accept.accept_data_loss = true;
  accept.warn = w.sink();
  uint64_t kept = 0;
  {
    auto s = open_store(dir.str(), accept);
    kept = s->last_position();
    CHECK(kept > 0);
    CHECK(kept < kEvents);
    require_verified(*s, kept);
    CHECK(w.any("DATA LOSS ACCEPTED"));
    auto record = s->get_checkpoint(kDataLossCheckpoint);
    REQUIRE(record.ok());
    REQUIRE(record->has_value());
    CHECK((*record)->find(wal.filename().string()) != std::string::npos);
    auto r = s->append(request(write_of("w", ExpectedVersion::Exact(kept), kept + 1, 1)));
    REQUIRE(r.ok());
    CHECK(r->first_position == kept + 1);
  }
  auto s = open_store(dir.str());  // no flag needed any more: the damage is gone
  CHECK(s->last_position() == kept + 1);
  require_verified(*s, kept + 1);
}

TEST_CASE("10.6: a torn tail or a bad last record opens to the prefix with a warning") {
  constexpr uint64_t kEvents = 60;
  for (const bool truncate : {true, false}) {
    CAPTURE(truncate);
    TempDir dir;
    wal_only_log(dir.str(), "t", kEvents);
    const fs::path wal = files_with(dir.str(), ".log").front();
    const auto size = fs::file_size(wal);
    if (truncate) {
      fs::resize_file(wal, size - 9);  // the last record loses its end
    } else {
      flip_byte(wal, size - 5);  // the last record's bytes, not its length
    }
    Warnings w;
    RocksOptions o;
    o.warn = w.sink();
    WalReport rep;
    o.wal_report = &rep;
    auto s = open_store(dir.str(), o);
    CHECK(s->last_position() == kEvents - 1);
    CHECK(rep.torn_tail());
    CHECK(w.any("torn tail"));
    require_verified(*s, kEvents - 1);
  }
}

TEST_CASE("10.6: a read that hits corruption is remembered (corruption() for /readyz)") {
  TempDir dir;
  {
    auto s = open_store(dir.str());
    append_events(*s, "c", 30, 100);
  }
  {
    RawDb raw(dir.str());
    REQUIRE(raw.db->Flush(rocksdb::FlushOptions(), raw.handles).ok());
  }
  const fs::path victim = files_with(dir.str(), ".sst").front();
  const auto size = fs::file_size(victim);
  for (uint64_t off = size / 3; off < size / 3 + 64; ++off) flip_byte(victim, off);
  auto s = open_store(dir.str());
  CHECK(s->corruption().empty());
  auto scanned = s->scan(0, 0, [](const RecordedEvent&) { return true; });
  REQUIRE_FALSE(scanned.ok());
  CHECK_FALSE(s->corruption().empty());
}

TEST_CASE("10.7: store files are 0600 and directories 0700 whatever the umask") {
  TempDir root;
  const std::string dir = root.str() + "/nested/events";
  const mode_t old = ::umask(022);
  auto check_tree = [&](const char* when) {
    CAPTURE(when);
    size_t files = 0;
    struct stat st {};
    REQUIRE(::stat(dir.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0700);
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
      REQUIRE(::lstat(e.path().c_str(), &st) == 0);
      CAPTURE(e.path().string());
      CHECK((st.st_mode & 07777) == (S_ISDIR(st.st_mode) ? 0700 : 0600));
      files += S_ISDIR(st.st_mode) ? 0 : 1;
    }
    CHECK(files >= 6);  // CURRENT, IDENTITY, LOCK, MANIFEST, OPTIONS, WAL, ...
  };
  {
    auto s = open_store(dir);
    append_events(*s, "p", 5, 2);
    REQUIRE(s->put_checkpoint("snapshot", std::string(1000, 's')).ok());
  }
  check_tree("after writes");
  {
    RawDb raw(dir);  // plain RocksDB: its own modes (0644 under umask 022), a LOG file
    REQUIRE(raw.db->Flush(rocksdb::FlushOptions(), raw.handles).ok());
  }
  fs::permissions(dir, fs::perms(0755));  // as an older version left them
  {
    auto s = open_store(dir);  // tightens what is there; what it creates is private
    append_events(*s, "p", 5, 2);
  }
  ::umask(old);
  check_tree("after a restart");
  CHECK(files_with(dir, ".sst").size() > 0);
}

TEST_CASE("10.5: a full disk makes appends unavailable and they come back, every round") {
  atrium::testing::TmpfsMount mnt("8m");
  if (!mnt.ok()) {
    MESSAGE("skipped: " << mnt.why());
    return;
  }
  int rounds = 8;  // ATRIUM_FULL_DISK_ROUNDS for many more
  if (const char* r = std::getenv("ATRIUM_FULL_DISK_ROUNDS")) rounds = std::atoi(r);
  const std::string dir = mnt.str() + "/events";
  const std::string filler = mnt.str() + "/filler";
  Warnings w;
  RocksOptions o;
  o.warn = w.sink();
  std::map<uint64_t, std::string> acked;  // position -> data
  std::mutex mu;
  {
    auto s = open_store(dir, o);
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> ok{0}, failed{0};
    std::atomic<int64_t> budget{0};
    std::vector<std::thread> writers;
    struct Joiner {  // also when a REQUIRE below throws
      std::atomic<bool>& stop;
      std::vector<std::thread>& threads;
      ~Joiner() {
        stop = true;
        for (auto& th : threads) {
          if (th.joinable()) th.join();
        }
      }
    } joiner{stop, writers};
    for (int t = 0; t < 4; ++t) {
      writers.emplace_back([&, t] {
        for (uint64_t i = 0; !stop; ++i) {
          // Each success costs disk; the budget keeps rounds from filling it with data.
          if (budget.fetch_sub(1) <= 0) {
            budget.fetch_add(1);
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            continue;
          }
          const std::string stream = "s" + std::to_string(t);
          StreamWrite sw;
          sw.stream = stream;
          sw.events.push_back(
              make_event("T", "{\"t\":" + std::to_string(t) + ",\"i\":" + std::to_string(i) + "}"));
          auto r = s->append(request(std::move(sw)));
          if (r.ok()) {
            std::lock_guard lk(mu);
            acked[r->first_position] =
                "{\"t\":" + std::to_string(t) + ",\"i\":" + std::to_string(i) + "}";
            ++ok;
          } else {
            budget.fetch_add(1);
            CHECK(r.error().code == Code::unavailable);
            ++failed;
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
          }
        }
      });
    }
    auto wait_for = [&](std::atomic<uint64_t>& counter, uint64_t past, const char* what) {
      for (int i = 0; i < 2000 && counter.load() <= past; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      if (counter.load() > past) return true;
      std::lock_guard lk(w.mu);
      MESSAGE(what << "; last warnings: "
                   << (w.lines.empty() ? std::string("none") : w.lines.back()));
      return false;
    };
    for (int round = 0; round < rounds; ++round) {
      CAPTURE(round);
      budget = 20;
      REQUIRE(wait_for(ok, ok.load() + 19, "appends go through"));
      atrium::testing::fill_until_full(filler);
      budget = 1'000'000;  // failures give their unit back
      REQUIRE(wait_for(failed, failed.load() + 5, "appends fail while the disk is full"));
      budget = 0;
      fs::remove(filler);
      budget = 10;
      REQUIRE(wait_for(ok, ok.load() + 5, "appends go through again once space returns"));
    }
    stop = true;
    for (auto& th : writers) th.join();
    MESSAGE(rounds << " rounds: " << ok.load() << " appends acknowledged, " << failed.load()
                   << " refused while full");
    require_verified(*s, s->last_position());
  }
  auto s = open_store(dir);
  CHECK(s->last_position() >= acked.size());
  std::map<uint64_t, std::string> present;
  REQUIRE(s->scan(0, 0, [&](const RecordedEvent& e) {
             present[e.position] = e.data;
             return true;
           }).ok());
  size_t missing = 0;
  for (const auto& [pos, data] : acked) missing += present.count(pos) == 0 || present[pos] != data;
  CHECK(missing == 0);
  require_verified(*s, s->last_position());
}

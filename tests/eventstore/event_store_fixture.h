// Helpers of the event store tests (tests/eventstore/event_store_*_test.cpp): events and
// append requests, scan and verify checks, and RocksDB helpers to open a store, append, tamper
// with the raw database and collect warnings. The three stores the contract suite runs over
// are in event_store_contract_test.cpp.
#pragma once

#include <doctest/doctest.h>
#include <rocksdb/db.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "eventstore/event_store.h"
#include "support/test_support.h"

namespace atrium::eventstore::testing {

inline std::string payload(std::string_view stream, uint64_t version) {
  return "{\"stream\":\"" + std::string(stream) + "\",\"version\":" + std::to_string(version) +
         ",\"pad\":\"" + std::string(40, 'x') + "\"}";
}

inline NewEvent make_event(std::string type, std::string data, std::string idem = {}) {
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
inline StreamWrite write_of(std::string stream, ExpectedVersion expected, uint64_t first_version,
                            size_t n) {
  StreamWrite w;
  w.stream = std::move(stream);
  w.expected = expected;
  for (size_t i = 0; i < n; ++i) {
    w.events.push_back(make_event("Thing", payload(w.stream, first_version + i)));
  }
  return w;
}

inline AppendRequest request(StreamWrite w) {
  AppendRequest r;
  r.writes.push_back(std::move(w));
  return r;
}

inline std::vector<RecordedEvent> scan_all(const EventStore& s, uint64_t after = 0,
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

inline void require_verified(const EventStore& s, uint64_t events) {
  auto v = s.verify();
  REQUIRE_MESSAGE(v.ok(), (v.ok() ? "" : v.error().message));
  CHECK_MESSAGE(v->ok, v->problem);
  CHECK(v->events_checked == events);
}

// ---- RocksDB ------------------------------------------------------------------------------

inline std::unique_ptr<EventStore> open_store(const std::string& dir, RocksOptions opts = {}) {
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

// Files of `dir` whose name ends with `ext`, largest first.
inline std::vector<std::filesystem::path> files_with(const std::string& dir,
                                                     const std::string& ext) {
  namespace fs = std::filesystem;
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ext) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end(), [](const fs::path& a, const fs::path& b) {
    return fs::file_size(a) > fs::file_size(b);
  });
  return out;
}

inline void append_events(EventStore& s, const std::string& stream, size_t batches,
                          size_t per_batch) {
  auto v = s.stream_version(stream);
  REQUIRE(v.ok());
  uint64_t version = *v;
  for (size_t b = 0; b < batches; ++b) {
    auto r = s.append(
        request(write_of(stream, ExpectedVersion::Exact(version), version + 1, per_batch)));
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    version += per_batch;
  }
}

// Collects the store's warnings (RocksOptions::warn), for checks that one was given.
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

}  // namespace atrium::eventstore::testing

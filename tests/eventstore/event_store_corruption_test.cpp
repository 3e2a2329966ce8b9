// The RocksDB store and damaged bytes: verify names the first tampered or missing event, a
// corrupted SST block fails scan and verify loudly, a torn WAL tail or bad last record opens
// to the prefix, a flipped byte mid-WAL refuses the open (issue 10.6), and a read that hits
// corruption is remembered for /readyz.
#include <doctest/doctest.h>
#include <rocksdb/db.h>

#include <filesystem>
#include <fstream>

#include "event_store_fixture.h"
#include "eventstore/event_store.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using atrium::Code;
using atrium::testing::TempDir;
using namespace atrium::eventstore;
using namespace atrium::eventstore::testing;

namespace {

std::string be_key(uint64_t v) {
  std::string k(8, '\0');
  for (int i = 7; i >= 0; --i) {
    k[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  return k;
}

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

}  // namespace

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
      auto r =
          s->append(request(write_of("w", ExpectedVersion::Exact(recovered), recovered + 1, 2)));
      REQUIRE(r.ok());
      CHECK(r->first_position == recovered + 1);
      require_verified(*s, recovered + 2);
    }
    auto s = open_store(dir.str());
    CHECK(s->last_position() == recovered + 2);
    require_verified(*s, recovered + 2);
  }
}

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

// Snapshots: start-up from a snapshot plus the events after it gives exactly the state a
// full replay gives; an unreadable snapshot falls back to a full replay.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "domain/hosts.h"
#include "domain/users.h"
#include "pipeline/pipeline.h"
#include "support/test_support.h"

using namespace atrium;
using domain::Json;
using domain::State;

namespace {

template <typename C>
pipeline::Command cmd(const char* name, C c) {
  pipeline::Command out;
  out.name = name;
  out.decide = [c](const State& s, const domain::Context& ctx) { return domain::decide(s, c, ctx); };
  out.meta.actor = "test";
  return out;
}

void fill(pipeline::Pipeline& p, int from, int to) {
  for (int i = from; i < to; ++i) {
    std::string id = "u" + std::to_string(i);
    REQUIRE(p.execute(cmd("CreateUser", domain::CreateUser{id, id, {"user"}, "h"})).ok());
    REQUIRE(p.execute(cmd("IssueToken", domain::IssueToken{id, id + std::string(64 - id.size(), '0'), 9'999'999'999'999})).ok());
  }
}

Json live(projections::Views& v) {
  return v.read([](const State& s) { return domain::state_to_json(s); });
}

}  // namespace

TEST_CASE("restart from a snapshot plus the tail equals a full replay") {
  testing::TempDir dir;
  Json before;
  uint64_t snap_pos = 0;
  {
    auto store = eventstore::open_rocksdb(dir.str());
    REQUIRE(store.ok());
    projections::Views views;
    pipeline::Metrics m;
    pipeline::PipelineOptions no_auto;
    no_auto.snapshot_every = 0;  // only the explicit snapshot below
    pipeline::Pipeline p(**store, views, m, pipeline::system_now_ms, no_auto);
    REQUIRE(p.start().ok());
    fill(p, 0, 5);
    REQUIRE(p.execute(cmd("AddHost", domain::AddHost{"h1", "op1", "kvm-1", "test:///default", "", {}})).ok());
    REQUIRE(p.execute(cmd("RecordHostConnected", domain::RecordHostConnected{"h1", 1, Json{{"cpus", 8}}})).ok());
    REQUIRE(p.execute(cmd("RecordDomainsObserved",
                          domain::RecordDomainsObserved{"h1", 1, {{"vm-a", "uuid-a", "running", 5901}, {"vm-b", "uuid-b", "shut_off", -1}}})).ok());
    REQUIRE(p.write_snapshot().ok());
    snap_pos = p.snapshot_position();
    CHECK(snap_pos == (*store)->last_position());
    fill(p, 5, 8);  // the tail after the snapshot
    before = live(views);
    p.stop();
  }
  auto store = eventstore::open_rocksdb(dir.str());
  REQUIRE(store.ok());
  projections::Views views;
  pipeline::Metrics m;
  pipeline::Pipeline p(**store, views, m);
  REQUIRE(p.start().ok());
  CHECK(p.snapshot_position() == snap_pos);  // the snapshot was used
  CHECK(live(views) == before);
  State full;
  REQUIRE(projections::replay(**store, full).ok());
  CHECK(domain::state_to_json(full) == before);
  // The writer state came from the snapshot too: deciding still sees earlier entities.
  auto dup = p.execute(cmd("CreateUser", domain::CreateUser{"x", "u1", {"user"}, ""}));
  REQUIRE_FALSE(dup.ok());
  CHECK(dup.error().reason == "user_name_taken");
}

TEST_CASE("stop() writes a final snapshot that the next start uses") {
  testing::TempDir dir;
  uint64_t last = 0;
  {
    auto store = eventstore::open_rocksdb(dir.str());
    REQUIRE(store.ok());
    projections::Views views;
    pipeline::Metrics m;
    pipeline::Pipeline p(**store, views, m);
    REQUIRE(p.start().ok());
    fill(p, 0, 4);
    p.stop();
    last = (*store)->last_position();
    CHECK(p.snapshot_position() == last);
  }
  auto store = eventstore::open_rocksdb(dir.str());
  REQUIRE(store.ok());
  projections::Views views;
  pipeline::Metrics m;
  pipeline::Pipeline p(**store, views, m);
  REQUIRE(p.start().ok());
  CHECK(p.snapshot_position() == last);
  CHECK(views.position() == last);
}

TEST_CASE("a corrupt snapshot is ignored and the log is replayed in full") {
  testing::TempDir dir;
  Json before;
  {
    auto store = eventstore::open_rocksdb(dir.str());
    REQUIRE(store.ok());
    projections::Views views;
    pipeline::Metrics m;
    pipeline::Pipeline p(**store, views, m);
    REQUIRE(p.start().ok());
    fill(p, 0, 3);
    before = live(views);
    p.stop();
    REQUIRE((*store)->put_checkpoint("snapshot", "definitely not CBOR").ok());
  }
  auto store = eventstore::open_rocksdb(dir.str());
  REQUIRE(store.ok());
  projections::Views views;
  pipeline::Metrics m;
  pipeline::Pipeline p(**store, views, m);
  REQUIRE(p.start().ok());
  CHECK(p.snapshot_position() == 0);
  CHECK(live(views) == before);
}

// Found by fuzz/snapshot.cpp: CBOR that is not a map (or whose "format" is not a number) made
// Json::value() throw out of Pipeline::start(), so the daemon could not start at all.
TEST_CASE("fuzz: a snapshot that is CBOR but not a snapshot map is ignored, not thrown") {
  for (const Json& bad : {Json::array({1, 2}), Json("snapshot"), Json{{"format", "1"}},
                          Json{{"format", 1.5}, {"state", 1}}, Json{{"format", 1}, {"state", 7}}}) {
    CAPTURE(bad.dump());
    std::vector<uint8_t> cbor = Json::to_cbor(bad);
    std::string bytes(cbor.begin(), cbor.end());
    CHECK_FALSE(pipeline::decode_snapshot(bytes).ok());
    testing::TempDir dir;
    Json before;
    {
      auto store = eventstore::open_rocksdb(dir.str());
      REQUIRE(store.ok());
      projections::Views views;
      pipeline::Metrics m;
      pipeline::PipelineOptions no_auto;
      no_auto.snapshot_every = 0;
      pipeline::Pipeline p(**store, views, m, pipeline::system_now_ms, no_auto);
      REQUIRE(p.start().ok());
      fill(p, 0, 2);
      before = live(views);
      p.stop();
      REQUIRE((*store)->put_checkpoint("snapshot", bytes).ok());
    }
    auto store = eventstore::open_rocksdb(dir.str());
    REQUIRE(store.ok());
    projections::Views views;
    pipeline::Metrics m;
    pipeline::Pipeline p(**store, views, m);
    REQUIRE(p.start().ok());
    CHECK(p.snapshot_position() == 0);
    CHECK(live(views) == before);
  }
}

// Found by fuzz_snapshot (fuzz/regressions/snapshot/): a CBOR array header claiming 10^19
// elements made from_cbor throw out_of_range although exceptions were disabled.
TEST_CASE("fuzz: a snapshot with an impossible CBOR length is refused, not thrown") {
  // {"format": 1, "state": [ <array of 0x989898989898989898 elements> ]}
  std::string bytes = "\xa2\x66" "format" "\x01\x65" "state" "\x9b\x98\x98\x98\x98\x98\x98\x98\x98";
  auto st = pipeline::decode_snapshot(bytes);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.find("not CBOR") != std::string::npos);
}

// Found by fuzz_snapshot after 8 minutes (fuzz/regressions/snapshot/): the CBOR reader
// recurses once per nesting level, so thousands of nested arrays overflowed the stack (ASan:
// stack-overflow) before any check ran; a corrupt snapshot killed the daemon at start.
TEST_CASE("fuzz: a snapshot nested deeper than any state is refused before it overflows the stack") {
  std::string deep = "\xa2\x66" "format" "\x01\x65" "state";
  deep += std::string(200000, '\x81') + "\x01";  // [[[...[1]...]]]
  auto st = pipeline::decode_snapshot(deep);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.find("deeper than") != std::string::npos);
  // A real snapshot is far from the limit.
  domain::State s;
  s.position = 7;
  CHECK(pipeline::decode_snapshot(pipeline::encode_snapshot(s)).ok());
}

// Found by fuzz_snapshot in CI (fuzz/regressions/snapshot/float-into-integer-field): a float
// such as 7.8e90 in an integer field was static_cast by nlohmann's get<uint64_t>() (undefined
// behaviour, UBSan: "outside the range of representable values"). It is refused instead; an
// integral float that fits still reads.
TEST_CASE("fuzz: a snapshot with a float too large for an integer field is refused") {
  domain::State s;
  s.position = 7;
  s.stream_versions["user-a"] = 3;
  Json j = domain::state_to_json(s);
  j["position"] = 7.77778e+90;
  auto st = domain::state_from_json(j);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.find("out of range") != std::string::npos);
  j["position"] = 7.0;
  j["stream_versions"]["user-a"] = -1.5;
  st = domain::state_from_json(j);
  REQUIRE_FALSE(st.ok());
  j["stream_versions"]["user-a"] = 3.0;
  st = domain::state_from_json(j);
  REQUIRE(st.ok());
  CHECK(st->position == 7);
  CHECK(st->stream_versions.at("user-a") == 3);
  CHECK(domain::int_of<int32_t>(Json(-2147483648.0)) == INT32_MIN);
  CHECK_THROWS_AS(domain::int_of<int32_t>(Json(2147483648.0)), std::out_of_range);
  CHECK_THROWS_AS(domain::int_of<uint64_t>(Json(std::nan(""))), std::out_of_range);
}

TEST_CASE("state_from_json inverts state_to_json for users and hosts") {
  State s;
  uint64_t pos = 0;
  domain::Context ctx{1000, "t"};
  auto apply = [&](const Result<domain::Events>& r) {
    REQUIRE(r.ok());
    for (const auto& e : *r) domain::evolve(s, e, {++pos, s.version_of(e.stream) + 1, 1000});
  };
  apply(domain::decide(s, domain::CreateUser{"a", "admin", {"admin"}, "h"}, ctx));
  apply(domain::decide(s, domain::IssueToken{"a", std::string(64, 'b'), 5000}, ctx));
  apply(domain::decide(s, domain::AddHost{"h1", "op1", "kvm", "test:///default", "", {}}, ctx));
  apply(domain::decide(s, domain::RecordHostConnected{"h1", 1, Json{{"cpus", 4}}}, ctx));
  apply(domain::decide(s, domain::RecordDomainsObserved{"h1", 1, {{"d1", "u-1", "running", 5900}}}, ctx));
  Json j = domain::state_to_json(s);
  auto back = domain::state_from_json(j);
  REQUIRE(back.ok());
  CHECK(domain::state_to_json(*back) == j);
  CHECK_FALSE(domain::state_from_json(Json{{"position", 1}}).ok());
}

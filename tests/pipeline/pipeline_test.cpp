// The single-writer pipeline: group commit, ordering, every caller answered, bounded queue,
// storage failures answered with unavailable and no half state.
#include <doctest/doctest.h>

#include <atomic>
#include <future>
#include <set>
#include <thread>

#include "domain/users.h"
#include "pipeline/pipeline.h"

using namespace atrium;
using domain::State;

namespace {

// Wraps a store and fails appends on demand, like a full disk.
class FlakyStore : public eventstore::EventStore {
 public:
  explicit FlakyStore(std::unique_ptr<eventstore::EventStore> inner) : inner_(std::move(inner)) {}
  std::atomic<bool> fail{false};
  std::atomic<int> delay_ms{0};
  std::atomic<int> appends{0};

  Result<eventstore::AppendResult> append(const eventstore::AppendRequest& r) override {
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms.load()));
    appends++;
    if (fail) return Error::make(Code::unavailable, "No space left on device");
    return inner_->append(r);
  }
  Result<uint64_t> scan(uint64_t a, uint64_t m, const eventstore::EventVisitor& v) const override {
    return inner_->scan(a, m, v);
  }
  Result<std::vector<eventstore::RecordedEvent>> read_stream(std::string_view s, uint64_t a,
                                                             size_t l) const override {
    return inner_->read_stream(s, a, l);
  }
  Result<uint64_t> stream_version(std::string_view s) const override {
    return inner_->stream_version(s);
  }
  uint64_t last_position() const override { return inner_->last_position(); }
  uint64_t wait_for(uint64_t a, std::chrono::milliseconds t) const override {
    return inner_->wait_for(a, t);
  }
  Result<std::optional<std::string>> get_idempotency(std::string_view k) const override {
    return inner_->get_idempotency(k);
  }
  Result<std::optional<std::string>> get_checkpoint(std::string_view n) const override {
    return inner_->get_checkpoint(n);
  }
  Status put_checkpoint(std::string_view n, std::string_view v) override {
    return inner_->put_checkpoint(n, v);
  }
  Result<eventstore::VerifyReport> verify() const override { return inner_->verify(); }

 private:
  std::unique_ptr<eventstore::EventStore> inner_;
};

pipeline::Command create_user(const std::string& id, const std::string& name) {
  pipeline::Command c;
  c.name = "CreateUser";
  domain::CreateUser cu{id, name, {"user"}, ""};
  c.decide = [cu](const State& s, const domain::Context& ctx) { return domain::decide(s, cu, ctx); };
  c.render = [id](const State& s) { return domain::user_to_json(*s.users.find(id)); };
  c.meta.actor = "test";
  return c;
}

struct Fixture {
  FlakyStore store{eventstore::make_in_memory()};
  projections::Views views;
  pipeline::Metrics metrics;
  pipeline::Pipeline pipe{store, views, metrics, [] { return int64_t{1700000000000}; }};
  Fixture() { REQUIRE(pipe.start().ok()); }
};

}  // namespace

TEST_CASE("many threads: every caller answered, batches grouped, positions gap-free") {
  Fixture f;
  f.store.delay_ms = 2;  // a slow disk makes commands pile up behind each write
  constexpr int kThreads = 32, kEach = 20;
  std::vector<std::future<std::vector<uint64_t>>> futs;
  for (int t = 0; t < kThreads; ++t) {
    futs.push_back(std::async(std::launch::async, [&, t] {
      std::vector<uint64_t> positions;
      for (int i = 0; i < kEach; ++i) {
        auto id = std::to_string(t) + "-" + std::to_string(i);
        auto r = f.pipe.execute(create_user(id, "n" + id));
        REQUIRE(r.ok());
        CHECK(r->body["id"] == id);
        positions.push_back(r->first_position);
      }
      return positions;
    }));
  }
  std::set<uint64_t> all;
  for (auto& fu : futs) {
    auto ps = fu.get();
    for (size_t i = 1; i < ps.size(); ++i) CHECK(ps[i] > ps[i - 1]);  // per-caller order kept
    all.insert(ps.begin(), ps.end());
  }
  CHECK(all.size() == kThreads * kEach);
  CHECK(*all.begin() == 1);
  CHECK(*all.rbegin() == kThreads * kEach);  // gap-free
  CHECK(f.store.appends.load() < kThreads * kEach / 4);  // group commit happened
  CHECK(f.views.read([](const State& s) { return s.users.by_id.size(); }) == kThreads * kEach);
}

TEST_CASE("a refused command writes nothing and does not disturb its batch neighbours") {
  Fixture f;
  REQUIRE(f.pipe.execute(create_user("a", "same")).ok());
  auto fut1 = f.pipe.submit(create_user("b", "same"));   // duplicate name: refused
  auto fut2 = f.pipe.submit(create_user("c", "other"));  // fine
  auto r1 = fut1.get();
  auto r2 = fut2.get();
  REQUIRE_FALSE(r1.ok());
  CHECK(r1.error().code == Code::already_exists);
  REQUIRE(r2.ok());
  CHECK(f.store.last_position() == 2);
}

TEST_CASE("commands in one batch see each other's effects (one writer decides)") {
  Fixture f;
  f.store.delay_ms = 20;
  auto slow = f.pipe.submit(create_user("x0", "x0"));  // occupies the writer
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto a = f.pipe.submit(create_user("x1", "dup"));
  auto b = f.pipe.submit(create_user("x2", "dup"));
  CHECK(slow.get().ok());
  auto ra = a.get();
  auto rb = b.get();
  CHECK(ra.ok());
  REQUIRE_FALSE(rb.ok());
  CHECK(rb.error().reason == "user_name_taken");
}

TEST_CASE("storage failure: callers get unavailable, nothing half applied, recovery works") {
  Fixture f;
  REQUIRE(f.pipe.execute(create_user("ok1", "ok1")).ok());
  f.store.fail = true;
  auto r = f.pipe.execute(create_user("lost", "lost"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Code::unavailable);
  // Neither the writer state nor the views kept the failed user.
  CHECK(f.views.read([](const State& s) { return s.users.find("lost") == nullptr; }));
  f.store.fail = false;
  auto again = f.pipe.execute(create_user("lost", "lost"));  // same name is free again
  REQUIRE(again.ok());
  CHECK(again->first_position == 2);  // no gap left by the failed batch
  CHECK(f.store.verify()->ok);
}

TEST_CASE("a full queue answers unavailable at once instead of growing") {
  FlakyStore store{eventstore::make_in_memory()};
  projections::Views views;
  pipeline::Metrics metrics;
  pipeline::PipelineOptions opts;
  opts.queue_capacity = 4;
  opts.max_batch = 1;
  pipeline::Pipeline pipe{store, views, metrics, pipeline::system_now_ms, opts};
  REQUIRE(pipe.start().ok());
  store.delay_ms = 50;
  std::vector<std::future<Result<pipeline::Outcome>>> fs;
  for (int i = 0; i < 20; ++i) fs.push_back(pipe.submit(create_user("q" + std::to_string(i), "q" + std::to_string(i))));
  int ok = 0, full = 0;
  for (auto& fu : fs) {
    auto r = fu.get();
    if (r.ok()) ++ok;
    else if (r.error().reason == "queue_full") ++full;
  }
  CHECK(ok + full == 20);
  CHECK(full > 0);
  CHECK(ok >= 4);
  CHECK(store.last_position() == static_cast<uint64_t>(ok));
}

TEST_CASE("stop() drains the queue: every submitted command is answered") {
  Fixture f;
  f.store.delay_ms = 5;
  std::vector<std::future<Result<pipeline::Outcome>>> fs;
  for (int i = 0; i < 50; ++i) fs.push_back(f.pipe.submit(create_user("s" + std::to_string(i), "s" + std::to_string(i))));
  f.pipe.stop();
  int ok = 0;
  for (auto& fu : fs) ok += fu.get().ok();
  CHECK(ok == 50);
  auto late = f.pipe.execute(create_user("late", "late"));
  REQUIRE_FALSE(late.ok());
  CHECK(late.error().code == Code::unavailable);
}

TEST_CASE("idempotency: replay within a batch and across batches; other body refused") {
  Fixture f;
  auto with_key = [](pipeline::Command c, const std::string& fp) {
    c.meta.idempotency_key = "key";
    c.meta.fingerprint = fp;
    return c;
  };
  auto a = f.pipe.submit(with_key(create_user("i1", "i1"), "fp1"));
  auto b = f.pipe.submit(with_key(create_user("i1", "i1"), "fp1"));
  auto ra = a.get();
  auto rb = b.get();
  REQUIRE(ra.ok());
  REQUIRE(rb.ok());
  CHECK(rb->body == ra->body);
  CHECK(f.store.last_position() == 1);
  auto rc = f.pipe.execute(with_key(create_user("i2", "i2"), "fp2"));
  REQUIRE_FALSE(rc.ok());
  CHECK(rc.error().code == Code::unprocessable);
}

TEST_CASE("rebuilding from the log gives exactly the live views") {
  Fixture f;
  for (int i = 0; i < 30; ++i) REQUIRE(f.pipe.execute(create_user("r" + std::to_string(i), "r" + std::to_string(i))).ok());
  State rebuilt;
  REQUIRE(projections::replay(f.store, rebuilt).ok());
  auto live = f.views.read([](const State& s) { return domain::state_to_json(s); });
  CHECK(domain::state_to_json(rebuilt) == live);
}

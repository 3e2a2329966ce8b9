// Side effects carry the leader's term (issue 12): a power request made while the leader
// fails over is carried out on libvirt exactly once. Two brokers in this process share one
// PostgreSQL log and one libvirt host (test:///default, whose state every connection of a
// process shares). The leader is held right before its libvirt calls (the reconciler's test
// seam: a broker paused at the worst moment), loses its lease (its election session is
// terminated, as when a paused broker's connection times out), the follower takes over and
// starts the VM; then the old leader wakes up and goes on with the pass it had planned. Its
// call must not reach libvirt: the append that begins the operation is fenced, and the call
// itself is refused by the term check (adapters/fenced_hypervisor.h).
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <mutex>

#include "adapters/forwarding_hypervisor.h"
#include "adapters/libvirt_hypervisor.h"
#include "api/daemon.h"
#include "support/pg_server.h"
#include "support/pool_fixture.h"
#include "support/test_support.h"

using namespace std::chrono_literals;
using atrium::Result;
using atrium::Status;
using atrium::adapters::Hypervisor;
using atrium::adapters::HypervisorConnection;
using atrium::testing::poll;
using atrium::testing::shared_pg;
using atrium::testing::TestBroker;
using nlohmann::json;

namespace {

// Counts the start calls that reach libvirt, from every broker of this process.
struct Calls {
  std::atomic<int> start{0};
};

class CountingConnection final : public atrium::adapters::ForwardingConnection {
 public:
  CountingConnection(std::unique_ptr<HypervisorConnection> in, std::shared_ptr<Calls> calls)
      : ForwardingConnection(std::move(in)), calls_(std::move(calls)) {}
  Status start(std::string_view n) override {
    calls_->start++;
    return ForwardingConnection::start(n);
  }

 private:
  std::shared_ptr<Calls> calls_;
};

std::shared_ptr<Hypervisor> counting_hypervisor(std::shared_ptr<Calls> calls) {
  auto wrap = [calls](std::unique_ptr<HypervisorConnection> c) {
    return std::make_unique<CountingConnection>(std::move(c), calls);
  };
  return std::make_shared<atrium::adapters::WrappingHypervisor<decltype(wrap)>>(
      std::make_shared<atrium::adapters::LibvirtHypervisor>(), std::move(wrap));
}

// Holds the reconciler pass that reaches the seam while armed, until released.
struct Pause {
  std::mutex mu;
  std::condition_variable cv;
  bool armed = false, held = false, released = false, passed = false;

  void at_seam() {
    std::unique_lock l(mu);
    if (!armed) return;
    armed = false;
    held = true;
    cv.notify_all();
    cv.wait(l, [&] { return released; });
    passed = true;
    cv.notify_all();
  }
  template <typename P>
  bool wait(P pred, std::chrono::milliseconds limit) {
    std::unique_lock l(mu);
    return cv.wait_for(l, limit, [&] { return pred(); });
  }
  void release() {
    std::lock_guard l(mu);
    released = true;
    cv.notify_all();
  }
};

template <typename F>
bool eventually(F f, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return f();
}

json vm_named(TestBroker& b, const std::string& host, const std::string& name) {
  auto r = b.call("GET", "/v1/vms?host_id=" + host);
  REQUIRE(r.status == 200);
  const json page = r.json();
  for (const auto& v : page["items"]) {
    if (v["name"] == name) return v;
  }
  return {};
}

}  // namespace

TEST_CASE("12: a power request during failover is carried out on libvirt exactly once") {
  atrium::testing::PgServer* pg = shared_pg();
  if (pg == nullptr) return;
  const std::string db = "fence" + std::to_string(::getpid());
  REQUIRE(pg->psql("CREATE DATABASE " + db) == 0);
  const std::string url = "postgresql://postgres@127.0.0.1:" + std::to_string(pg->port()) + "/" + db;

  auto calls = std::make_shared<Calls>();
  auto pause = std::make_shared<Pause>();
  auto configure = [&](const std::string& member, bool seam) {
    return [&, member, seam](atrium::api::DaemonConfig& cfg) {
      atrium::testing::fast_workers(cfg);
      cfg.store = url;
      // One secret.key for the cluster (atriumd refuses a broker with another).
      std::ofstream(cfg.data_dir + "/secret.key", std::ios::binary) << std::string(32, 'f');
      ::chmod((cfg.data_dir + "/secret.key").c_str(), 0600);
      cfg.member_id = member;
      cfg.lease_ttl = 3000ms;
      cfg.pool_worker = false;
      cfg.agent_monitor = false;
      cfg.hypervisor = counting_hypervisor(calls);
      if (seam) cfg.hosts.before_side_effects = [pause](const std::string&) { pause->at_seam(); };
    };
  };
  TestBroker a(configure("a", true));
  REQUIRE(eventually([&] { return a.daemon().leadership()->leading(); }, 10s));
  // The new leader bootstraps the admin token after it took the lease.
  REQUIRE(eventually([&] { return a.call("GET", "/v1/hosts").status == 200; }, 10s));
  TestBroker b(configure("b", false));
  REQUIRE(eventually([&] { return b.call("GET", "/readyz", nullptr, "").status == 200; }, 10s));
  // Whatever happens below, the held pass goes on before the brokers stop.
  struct Release {
    std::shared_ptr<Pause> p;
    ~Release() { p->release(); }
  } release_at_exit{pause};

  auto r = a.call("POST", "/v1/hosts", {{"name", "shared"}, {"uri", "test:///default"}});
  REQUIRE_MESSAGE(r.status == 202, r.body);
  const std::string host = r.json()["host_id"];
  poll(a, "/v1/hosts/" + host, [](const json& j) { return j["state"] == "up"; });
  json vm = poll(a, "/v1/vms?host_id=" + host, [](const json& j) { return !j["items"].empty(); });
  REQUIRE(!vm_named(a, host, "test").is_null());
  const std::string vm_id = vm_named(a, host, "test")["id"];

  // The VM off first (no seam armed yet).
  r = a.call("POST", "/v1/vms/" + vm_id + "/power", {{"action", "destroy"}});
  REQUIRE_MESSAGE(r.status == 202, r.body);
  poll(a, "/v1/operations/" + r.json()["id"].get<std::string>(),
       [](const json& j) { return j["state"] == "succeeded"; });
  const int starts_before = calls->start.load();

  // The power request; the leader's reconciler plans the start and is held there.
  {
    std::lock_guard l(pause->mu);
    pause->armed = true;
  }
  r = a.call("POST", "/v1/vms/" + vm_id + "/power", {{"action", "start"}});
  REQUIRE_MESSAGE(r.status == 202, r.body);
  const std::string op = r.json()["id"];
  REQUIRE(pause->wait([&] { return pause->held; }, 10s));

  // Its lease ends while it is held: its election session goes away; b takes over.
  const std::string killed = pg->query("SELECT pg_terminate_backend(leader_pid) FROM atrium_head", db);
  CHECK(killed == "t");
  REQUIRE(eventually([&] { return b.daemon().leadership()->leading(); }, 10s));
  json done = poll(b, "/v1/operations/" + op, [](const json& j) { return j["state"] == "succeeded"; });
  CHECK(vm_named(b, host, "test")["observed_state"] == "running");
  CHECK(calls->start.load() == starts_before + 1);

  // The old leader wakes up and goes on with the pass it planned: nothing reaches libvirt.
  pause->release();
  REQUIRE(pause->wait([&] { return pause->passed; }, 10s));
  REQUIRE(eventually([&] { return !a.daemon().leadership()->leading(); }, 10s));
  std::this_thread::sleep_for(500ms);  // any call it would still make has been made by now
  CHECK(calls->start.load() == starts_before + 1);
  CHECK(b.daemon().leadership()->leading());
  CHECK(vm_named(b, host, "test")["observed_state"] == "running");
  // One start and one success in the log for the operation.
  auto events = b.call("GET", "/v1/operations/" + op);
  CHECK(events.json()["state"] == "succeeded");
}

// The host reconciler against libvirt's test driver, through the real pipeline and views.
//
// About test:/// URIs: the test driver keeps its state inside one connection (every open starts
// from the URI's initial state: test:///default has one running domain "test"; the fixture
// tests/adapters/fixtures/host.xml has desk-running (SPICE 5901), desk-off and desk-paused).
// So a change "behind the broker's back" cannot come from a second connection: the tests make
// it through the reconciler's own connection with HostManager::with_connection(), i.e. a libvirt
// call the broker's pipeline knows nothing about, which the reconciler then has to observe (by
// its lifecycle event and the periodic relist). A lost connection is simulated the same way
// (simulate_connection_lost), since test:/// has no transport to break; a reconnect starts
// from the fixture's initial state again.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "adapters/host_reconciler.h"
#include "adapters/libvirt_hypervisor.h"
#include "domain/hosts.h"
#include "eventstore/event_store.h"
#include "support/test_support.h"

using namespace atrium;
using namespace atrium::adapters;
using namespace std::chrono_literals;
using domain::State;

namespace {

const std::string kFixtureUri =
    std::string("test://") + ATRIUM_SOURCE_DIR + "/tests/adapters/fixtures/host.xml";

HostManagerOptions fast_options() {
  HostManagerOptions o;
  o.resync_interval = 300ms;
  o.poll_interval = 20ms;
  o.backoff_initial = 100ms;
  o.backoff_max = 400ms;
  o.connect_timeout = 1500ms;
  o.call_timeout = 5s;
  o.shutdown_timeout = 1s;
  o.uri_policy.allow_test = true;  // test:/// hosts and fixture files
  o.uri_policy.allow_tcp = true;   // an unreachable qemu+tcp host below
  return o;
}

template <typename C>
pipeline::Command command(const char* name, C c) {
  pipeline::Command cmd;
  cmd.name = name;
  cmd.meta.actor = "test";
  cmd.decide = [c](const State& s, const domain::Context& ctx) { return domain::decide(s, c, ctx); };
  return cmd;
}

// A hypervisor whose connect() to slow:// URIs hangs for a while (a dead host).
class SlowHypervisor : public Hypervisor {
 public:
  explicit SlowHypervisor(std::shared_ptr<Hypervisor> inner) : inner_(std::move(inner)) {}
  Result<std::unique_ptr<HypervisorConnection>> connect(const ConnectOptions& o) override {
    if (o.uri.rfind("slow://", 0) == 0) {
      std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(o.timeout, 3s));
      return Error::make(Code::unavailable, "connect to " + o.uri + " timed out");
    }
    return inner_->connect(o);
  }

 private:
  std::shared_ptr<Hypervisor> inner_;
};

struct Broker {
  std::unique_ptr<eventstore::EventStore> store = eventstore::make_in_memory();
  projections::Views views;
  pipeline::Metrics metrics;
  std::unique_ptr<pipeline::Pipeline> pipeline;
  HostMetrics host_metrics{*metrics.registry};
  std::shared_ptr<Hypervisor> hv;
  HostManagerOptions opts;
  std::unique_ptr<HostManager> manager;

  explicit Broker(HostManagerOptions o = fast_options(), bool start_manager = true) : opts(o) {
    LibvirtOptions lo;
    lo.observer = host_metrics.observer();
    hv = std::make_shared<SlowHypervisor>(std::make_shared<LibvirtHypervisor>(lo));
    start_pipeline();
    if (start_manager) start_hosts();
  }
  ~Broker() {
    if (manager) manager->stop();
    pipeline->stop();
  }
  void start_pipeline() {
    pipeline = std::make_unique<pipeline::Pipeline>(*store, views, metrics);
    REQUIRE(pipeline->start().ok());
  }
  void start_hosts() {
    manager = std::make_unique<HostManager>(*pipeline, views, hv, opts, pipeline::system_now_ms,
                                            &host_metrics);
    manager->start();
  }
  // Daemon restart: manager and pipeline stop; new ones rebuild from the log.
  void restart() {
    manager->stop();
    manager.reset();
    pipeline->stop();
    views.reset(State{});
    start_pipeline();
    start_hosts();
  }

  template <typename C>
  Result<pipeline::Outcome> run(const char* name, C c) {
    return pipeline->execute(command(name, c));
  }
  std::string add_host(const std::string& name, const std::string& uri, domain::PortRange ports = {}) {
    std::string id = "h-" + name;
    auto r = run("AddHost", domain::AddHost{id, "op-" + id, name, uri, "", ports});
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    return id;
  }
  template <typename F>
  bool wait_for(F pred, std::chrono::milliseconds timeout = 10s) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (views.read([&](const State& s) { return pred(s); })) return true;
      std::this_thread::sleep_for(10ms);
    }
    return views.read([&](const State& s) { return pred(s); });
  }
  std::string host_state(const std::string& id) {
    return views.read([&](const State& s) { return s.hosts.host(id) ? s.hosts.host(id)->state : ""; });
  }
  domain::Vm vm(const std::string& host_id, const std::string& name) {
    return views.read([&](const State& s) {
      for (const auto* v : s.hosts.vms_of(host_id)) {
        if (v->name == name) return *v;
      }
      return domain::Vm{};
    });
  }
  domain::Operation op(const std::string& id) {
    return views.read([&](const State& s) {
      return s.hosts.operation(id) ? *s.hosts.operation(id) : domain::Operation{};
    });
  }
  std::vector<std::string> stream_types(const std::string& stream) {
    auto es = store->read_stream(stream, 0, 10000);
    REQUIRE(es.ok());
    std::vector<std::string> out;
    for (const auto& e : *es) out.push_back(e.type);
    return out;
  }
  std::string power(const std::string& vm_id, const std::string& action) {
    static int n = 0;
    std::string op = "p" + std::to_string(++n) + "-" + action;
    auto r = run("RequestVmPower", domain::RequestVmPower{vm_id, op, action, std::nullopt});
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    return op;
  }
  bool op_done(const std::string& id, const std::string& state = "succeeded") {
    return wait_for([&](const State& s) {
      const auto* o = s.hosts.operation(id);
      return o != nullptr && o->state == state;
    });
  }
};

bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

TEST_CASE("test:///default: the host comes up with capabilities and its domain is imported as unmanaged") {
  Broker b;
  std::string h = b.add_host("default", "test:///default");
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.host(h)->state == "up"; }));
  CHECK(b.op("op-" + h).state == "succeeded");
  auto caps = b.views.read([&](const State& s) { return s.hosts.host(h)->capabilities; });
  CHECK(caps["hypervisor"] == "TEST");
  CHECK(caps["cpus"].get<unsigned>() > 0);
  CHECK(caps["memory_kib"].get<uint64_t>() > 0);
  CHECK(!caps["libvirt_version"].get<std::string>().empty());
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vms_of(h).size() == 1; }));
  domain::Vm v = b.vm(h, "test");
  CHECK(v.observed == "running");
  CHECK(!v.managed());
  CHECK(v.desired == "none");
  CHECK(b.views.read([&](const State& s) { return s.hosts.host(h)->epoch; }) == 1);
  // The connect operation lists the events it produced.
  CHECK(b.op("op-" + h).events.size() >= 3);
}

TEST_CASE("fixture host: capabilities, storage pools, networks, every domain imported with its state and port") {
  Broker b;
  std::string h = b.add_host("fixture", kFixtureUri);
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vms_of(h).size() == 3; }));
  auto caps = b.views.read([&](const State& s) { return s.hosts.host(h)->capabilities; });
  CHECK(caps["cpus"] == 8);
  CHECK(caps["memory_kib"] == 16777216);
  CHECK(caps["storage_pools"] == domain::Json::array({"vdi-images"}));
  CHECK(caps["networks"] == domain::Json::array({"vdi-net"}));
  CHECK(b.vm(h, "desk-running").observed == "running");
  CHECK(b.vm(h, "desk-running").display_port == 5901);
  CHECK(b.vm(h, "desk-off").observed == "shut_off");
  CHECK(b.vm(h, "desk-paused").observed == "paused");
}

TEST_CASE("power cycles go through the pipeline and converge; a second pass does nothing") {
  Broker b;
  std::string h = b.add_host("fixture", kFixtureUri);
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vms_of(h).size() == 3; }));
  std::string off = b.vm(h, "desk-off").id;

  std::string op = b.power(off, "start");
  REQUIRE(b.op_done(op));
  CHECK(b.vm(h, "desk-off").observed == "running");
  CHECK(b.op(op).events.size() >= 4);  // started, requested, running, succeeded

  op = b.power(off, "reboot");
  REQUIRE(b.op_done(op));
  op = b.power(off, "shutdown");
  REQUIRE(b.op_done(op));
  CHECK(b.vm(h, "desk-off").observed == "shut_off");
  CHECK(b.vm(h, "desk-off").desired == "shut_off");
  op = b.power(off, "start");
  REQUIRE(b.op_done(op));
  op = b.power(off, "destroy");
  REQUIRE(b.op_done(op));
  CHECK(b.vm(h, "desk-off").observed == "shut_off");
  CHECK(!b.vm(h, "desk-off").drift);

  // Converged: several resync periods later the log has not moved.
  std::this_thread::sleep_for(200ms);
  uint64_t pos = b.store->last_position();
  std::this_thread::sleep_for(1000ms);  // > 3 resync periods
  CHECK(b.store->last_position() == pos);
}

TEST_CASE("an operation that libvirt refuses fails with libvirt's message and restores the desired state") {
  Broker b;
  std::string h = b.add_host("fixture", kFixtureUri);
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vms_of(h).size() == 3; }));
  std::string paused = b.vm(h, "desk-paused").id;
  // A paused domain cannot be started; the test driver says so.
  std::string op = b.power(paused, "start");
  REQUIRE(b.op_done(op, "failed"));
  CHECK(!b.op(op).error.empty());
  MESSAGE("libvirt said: " << b.op(op).error);
  CHECK(b.vm(h, "desk-paused").desired == "none");
}

TEST_CASE("changes behind the broker's back are observed; drift is recorded and corrected per policy") {
  Broker b;
  std::string h = b.add_host("fixture", kFixtureUri);
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vms_of(h).size() == 3; }));
  domain::Vm running = b.vm(h, "desk-running");
  domain::Vm off = b.vm(h, "desk-off");

  // Unmanaged VM with a desired state: the drift is recorded and given up (policy).
  std::string op = b.power(running.id, "start");
  REQUIRE(b.op_done(op));
  REQUIRE(b.manager->with_connection(h, [](HypervisorConnection& c) { return c.destroy("desk-running"); }).ok());
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vm(running.id)->observed == "shut_off"; }));
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vm(running.id)->desired == "none"; }));
  auto types = b.stream_types("vm-" + running.id);
  CHECK(contains(types, "VmDriftDetected"));
  CHECK(contains(types, "VmDriftResolved"));
  CHECK(b.vm(h, "desk-running").observed == "shut_off");  // left alone

  // Managed VM (adopted by a pool): the drift is corrected.
  REQUIRE(b.run("AdoptVm", domain::AdoptVm{off.id, "pool-1"}).ok());
  op = b.power(off.id, "start");
  REQUIRE(b.op_done(op));
  REQUIRE(b.manager->with_connection(h, [](HypervisorConnection& c) { return c.destroy("desk-off"); }).ok());
  REQUIRE(b.wait_for([&](const State&) { return contains(b.stream_types("vm-" + off.id), "VmDriftResolved"); }));
  REQUIRE(b.wait_for([&](const State& s) {
    const auto* v = s.hosts.vm(off.id);
    return v->observed == "running" && !v->drift;
  }));
  auto es = b.store->read_stream("vm-" + off.id, 0, 1000);
  REQUIRE(es.ok());
  std::vector<std::string> tail;
  std::string resolution;
  for (const auto& e : *es) {
    tail.push_back(e.type);
    if (e.type == "VmDriftResolved") resolution = domain::Json::parse(e.data)["resolution"];
  }
  CHECK(contains(tail, "VmDriftDetected"));
  CHECK(resolution == "corrected");
  // The observed shut_off was recorded before the correction (history is not overwritten).
  bool saw_off = false;
  for (const auto& e : *es) {
    auto d = domain::Json::parse(e.data);
    if (e.type == "VmObserved" && d["observed"] == "shut_off") saw_off = true;
  }
  CHECK(saw_off);
}

TEST_CASE("maintenance: no starts, stops still work, activate returns the host") {
  Broker b;
  std::string h = b.add_host("fixture", kFixtureUri);
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vms_of(h).size() == 3; }));
  REQUIRE(b.run("EnterMaintenance", domain::EnterMaintenance{h, std::nullopt}).ok());
  CHECK(b.host_state(h) == "maintenance");
  auto refused = b.run("RequestVmPower", domain::RequestVmPower{b.vm(h, "desk-off").id, "m1", "start", {}});
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().reason == "host_in_maintenance");
  std::string op = b.power(b.vm(h, "desk-running").id, "destroy");
  REQUIRE(b.op_done(op));
  REQUIRE(b.run("ActivateHost", domain::ActivateHost{h, std::nullopt}).ok());
  CHECK(b.host_state(h) == "up");
  op = b.power(b.vm(h, "desk-off").id, "start");
  REQUIRE(b.op_done(op));
}

TEST_CASE("display ports: a full range refuses allocations; a stopped VM's port returns") {
  Broker b;
  std::string h = b.add_host("fixture", kFixtureUri, {5901, 5901});
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vms_of(h).size() == 3; }));
  CHECK(b.views.read([&](const State& s) { return s.hosts.ports_free(h); }) == 0);
  std::string off = b.vm(h, "desk-off").id;
  auto r = b.run("AllocateDisplayPort", domain::AllocateDisplayPort{off});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().reason == "display_ports_exhausted");
  std::string op = b.power(b.vm(h, "desk-running").id, "destroy");
  REQUIRE(b.op_done(op));
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.ports_free(h) == 1; }));
  REQUIRE(b.run("AllocateDisplayPort", domain::AllocateDisplayPort{off}).ok());
  CHECK(b.vm(h, "desk-off").allocated_port == 5901);
}

TEST_CASE("an unreachable host fails its operation with libvirt's message after the connect timeout") {
  Broker b;
  auto t0 = std::chrono::steady_clock::now();
  std::string h = b.add_host("dead", "qemu+tcp://127.0.0.1:1/system");
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.host(h)->state == "alert"; }, 15s));
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took >= 1400ms);  // not before the connect timeout
  domain::Operation op = b.op("op-" + h);
  CHECK(op.state == "failed");
  MESSAGE("libvirt said: " << op.error);
  CHECK(op.error.find("127.0.0.1") != std::string::npos);
  // Several attempts were made, with backoff.
  auto types = b.stream_types("host-" + h);
  CHECK(std::count(types.begin(), types.end(), "HostConnectAttemptFailed") >= 3);
  CHECK(types.back() == "HostFailed");
  // Alert: the worker stops trying.
  REQUIRE(b.wait_for([&](const State&) { return b.manager->worker_count() == 0; }, 3s));
}

TEST_CASE("a dead host does not block the others") {
  HostManagerOptions o = fast_options();
  o.call_timeout = 3s;
  o.connect_timeout = 60s;
  o.uri_policy.exempt_uri = "slow://nowhere";  // SlowHypervisor's fake driver
  Broker b(o);
  std::string dead = b.add_host("dead", "slow://nowhere");
  std::this_thread::sleep_for(50ms);  // the dead host's worker is inside connect()
  auto t0 = std::chrono::steady_clock::now();
  std::string good = b.add_host("good", "test:///default");
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.host(good)->state == "up"; }, 2s));
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  CHECK(b.host_state(dead) == "connecting");
}

TEST_CASE("a lost connection: disconnected with unknown VMs, then reconnected with a new epoch") {
  Broker b;
  std::string h = b.add_host("fixture", kFixtureUri);
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vms_of(h).size() == 3; }));
  // Change something first: after the reconnect the test driver starts from the fixture again
  // and the broker must observe that as well.
  std::string op = b.power(b.vm(h, "desk-off").id, "start");
  REQUIRE(b.op_done(op));
  b.manager->simulate_connection_lost(h);
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.host(h)->epoch == 2 && s.hosts.host(h)->state == "up"; }));
  auto types = b.stream_types("host-" + h);
  CHECK(contains(types, "HostDisconnected"));
  CHECK(std::count(types.begin(), types.end(), "HostConnected") == 2);
  // desk-off is shut off again on the fresh connection, desired running: drift, given up
  // (unmanaged) after being recorded.
  REQUIRE(b.wait_for([&](const State& s) {
    const auto* v = s.hosts.vm(b.vm(h, "desk-off").id);
    return v->observed == "shut_off" && v->desired == "none";
  }));
}

TEST_CASE("restart: a pending operation is resumed, a running reboot is failed, never forgotten") {
  Broker b;
  std::string h = b.add_host("fixture", kFixtureUri);
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vms_of(h).size() == 3; }));
  std::string off = b.vm(h, "desk-off").id;
  std::string running = b.vm(h, "desk-running").id;
  // The daemon goes down with work queued: stop the reconciler, then queue operations.
  b.manager->stop();
  std::string start_op = b.power(off, "start");
  std::string reboot_op = b.power(running, "reboot");
  uint64_t epoch = b.views.read([&](const State& s) { return s.hosts.host(h)->epoch; });
  REQUIRE(b.run("BeginOperations", domain::BeginOperations{h, epoch, {reboot_op}}).ok());
  CHECK(b.op(start_op).state == "pending");
  CHECK(b.op(reboot_op).state == "running");

  b.restart();
  REQUIRE(b.op_done(start_op));
  CHECK(b.vm(h, "desk-off").observed == "running");
  domain::Operation rb = b.op(reboot_op);
  CHECK(rb.state == "failed");
  CHECK(rb.error.find("restart") != std::string::npos);
  CHECK(b.views.read([&](const State& s) { return s.hosts.host(h)->epoch; }) == epoch + 1);
}

TEST_CASE("metrics: hosts by state, VMs by state, libvirt calls, ports free") {
  Broker b;
  std::string h = b.add_host("fixture", kFixtureUri);
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.vms_of(h).size() == 3; }));
  b.host_metrics.refresh(b.views);
  std::string text = b.metrics.serialize();
  CHECK(text.find("atrium_hosts{state=\"up\"} 1") != std::string::npos);
  CHECK(text.find("atrium_vms{desired=\"none\",observed=\"running\"} 1") != std::string::npos);
  CHECK(text.find("atrium_display_ports_free{host=\"" + h + "\",host_name=\"fixture\"} 200") !=
        std::string::npos);
  CHECK(text.find("atrium_libvirt_call_duration_seconds_count{call=\"virConnectListAllDomains\"}") !=
        std::string::npos);
  CHECK(text.find("atrium_reconcile_duration_seconds_count") != std::string::npos);
}

// 10.4: hosts already in the log (added before the URI check existed) are checked again
// before every connect; a refused one goes to alert without libvirt opening its URI.
TEST_CASE("10.4: a host in the log with a command URI goes to alert and its command never runs") {
  atrium::testing::TempDir dir;
  std::string marker = dir.str() + "/ran";
  std::string script = dir.str() + "/x.sh";
  {
    std::ofstream(script) << "#!/bin/sh\ntouch " << marker << "\n";
  }
  std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  HostManagerOptions o = fast_options();
  o.uri_policy.allow_test = false;
  Broker b(o, /*start_manager=*/false);
  std::string ext = b.add_host("ext", "qemu+ext:///system?command=" + script);
  std::string file = b.add_host("file", kFixtureUri);  // test hosts no longer allowed
  b.start_hosts();
  REQUIRE(b.wait_for([&](const State& s) {
    return s.hosts.host(ext)->state == "alert" && s.hosts.host(file)->state == "alert";
  }));
  CHECK(b.op("op-" + ext).state == "failed");
  CHECK(b.op("op-" + ext).error.find("qemu+ext") != std::string::npos);
  CHECK(b.views.read([&](const State& s) { return s.hosts.host(file)->reason; })
            .find("--allow-test-hosts") != std::string::npos);
  // One refused attempt each, then nothing: no retries, no worker.
  REQUIRE(b.wait_for([&](const State&) { return b.manager->worker_count() == 0; }, 3s));
  auto types = b.stream_types("host-" + ext);
  CHECK(std::count(types.begin(), types.end(), "HostConnectAttemptFailed") == 1);
  CHECK_FALSE(std::filesystem::exists(marker));
  // Activating checks again, and refuses again.
  REQUIRE(b.run("ActivateHost", domain::ActivateHost{ext, std::nullopt}).ok());
  REQUIRE(b.wait_for([&](const State& s) { return s.hosts.host(ext)->state == "alert"; }));
  CHECK_FALSE(std::filesystem::exists(marker));
}

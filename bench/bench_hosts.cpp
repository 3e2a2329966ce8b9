// Host reconciler benchmark on libvirt's test driver: a generated test:/// host with N domains
// (default 2,000, all shut off), a RocksDB log (synced) in /tmp, the real pipeline and views.
//
// Prints: time to import every domain (AddHost -> all N VMs in the views); time to converge N
// power changes (N RequestVmPower start -> all N operations succeeded and observed running);
// the reconcile CPU cost of one host at steady state (getrusage of the whole process over a few
// resync periods, per resync), and the reconcile pass duration.
//
// usage: bench_hosts [domains=2000] [resync_ms=1000] [steady_periods=5]
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "adapters/host_reconciler.h"
#include "adapters/libvirt_hypervisor.h"
#include "bench/bench_util.h"
#include "domain/hosts.h"
#include "eventstore/event_store.h"

using namespace atrium;
using namespace std::chrono_literals;
using domain::State;
using bench::since;
using bench::SteadyClock;

namespace {

std::string write_host_xml(const std::string& path, int n) {
  std::ofstream f(path);
  f << "<node>\n<cpu><nodes>1</nodes><sockets>2</sockets><cores>16</cores><threads>2</threads>"
       "<active>64</active><mhz>2400</mhz><model>x86_64</model></cpu>\n<memory>268435456</memory>\n";
  char uuid[64];
  for (int i = 0; i < n; ++i) {
    std::snprintf(uuid, sizeof uuid, "5e1f0000-0000-4000-8000-%012d", i);
    f << "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
      << "<name>bench-" << i << "</name><uuid>" << uuid << "</uuid>"
      << "<memory unit='KiB'>1048576</memory><vcpu>1</vcpu>"
      << "<os><type arch='x86_64'>hvm</type></os>"
      << "<devices><graphics type='spice' autoport='yes' listen='127.0.0.1'/></devices>"
      << "<test:runstate>5</test:runstate></domain>\n";
  }
  f << "</node>\n";
  return path;
}

double cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

template <typename F>
bool wait_for(projections::Views& views, F pred, std::chrono::seconds limit) {
  auto end = SteadyClock::now() + limit;
  while (SteadyClock::now() < end) {
    if (views.read([&](const State& s) { return pred(s); })) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

double histogram_mean(prometheus::Histogram* h) {
  auto m = h->Collect().histogram;
  return m.sample_count == 0 ? 0 : m.sample_sum / static_cast<double>(m.sample_count);
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 2000;
  int resync_ms = argc > 2 ? std::atoi(argv[2]) : 1000;
  int periods = argc > 3 ? std::atoi(argv[3]) : 5;
  std::string base = "/tmp/atrium-bench-hosts-" + std::to_string(::getpid());
  std::filesystem::create_directories(base);
  std::string xml = write_host_xml(base + "/host.xml", n);

  auto store = eventstore::open_rocksdb(base + "/events", {});
  if (!store.ok()) {
    std::fprintf(stderr, "store: %s\n", store.error().message.c_str());
    return 1;
  }
  projections::Views views;
  pipeline::Metrics metrics;
  pipeline::Pipeline pipe(**store, views, metrics);
  if (!pipe.start().ok()) return 1;
  adapters::HostMetrics hm(*metrics.registry);
  adapters::LibvirtOptions lo;
  lo.observer = hm.observer();
  auto hv = std::make_shared<adapters::LibvirtHypervisor>(lo);
  adapters::HostManagerOptions opts;
  opts.resync_interval = std::chrono::milliseconds(resync_ms);
  opts.poll_interval = 20ms;
  opts.call_timeout = 60s;
  opts.uri_policy.allow_test = true;  // a generated test:/// host
  adapters::HostManager manager(pipe, views, hv, opts, pipeline::system_now_ms, &hm);
  manager.start();

  auto run = [&](const char* name, auto c) {
    pipeline::Command cmd = pipeline::decide_command(name, c);
    cmd.meta.actor = "bench";
    return pipe.submit(std::move(cmd));
  };

  std::printf("bench_hosts: %d domains on test://%s, resync %d ms\n", n, xml.c_str(), resync_ms);
  // 1. Import.
  auto t0 = SteadyClock::now();
  auto added = run("AddHost", domain::AddHost{"bench", "op-bench", "bench", "test://" + xml, "", {}}).get();
  if (!added.ok()) return 1;
  if (!wait_for(views, [&](const State& s) { return s.hosts.vms_of("bench").size() == static_cast<size_t>(n); }, 600s)) {
    std::fprintf(stderr, "import did not finish\n");
    return 1;
  }
  double import_s = since(t0);
  std::printf("import: %d domains in %.3f s (%.0f domains/s)\n", n, import_s, n / import_s);

  // 2. Converge N power changes.
  std::vector<std::string> ids = views.read([](const State& s) {
    std::vector<std::string> out;
    for (const auto* v : s.hosts.vms_of("bench")) out.push_back(v->id);
    return out;
  });
  t0 = SteadyClock::now();
  std::vector<std::future<Result<pipeline::Outcome>>> fs;
  for (size_t i = 0; i < ids.size(); ++i) {
    fs.push_back(run("RequestVmPower", domain::RequestVmPower{ids[i], "pw-" + std::to_string(i), "start", {}}));
  }
  for (auto& f : fs) {
    if (!f.get().ok()) return 1;
  }
  double requested_s = since(t0);
  if (!wait_for(views, [&](const State& s) {
        for (size_t i = 0; i < ids.size(); ++i) {
          const auto* o = s.hosts.operation("pw-" + std::to_string(i));
          if (o == nullptr || o->state != "succeeded") return false;
        }
        return true;
      }, 600s)) {
    std::fprintf(stderr, "power changes did not converge\n");
    return 1;
  }
  double converge_s = since(t0);
  std::printf("converge: %zu start operations recorded in %.3f s, all succeeded (observed running) after %.3f s (%.0f ops/s)\n",
              ids.size(), requested_s, converge_s, static_cast<double>(ids.size()) / converge_s);

  // 3. Steady state: nothing to do but resync.
  std::this_thread::sleep_for(std::chrono::milliseconds(resync_ms));
  uint64_t pos0 = pipe.last_position();
  double passes0 = static_cast<double>(hm.reconcile_duration->Collect().histogram.sample_count);
  double c0 = cpu_seconds();
  auto w0 = SteadyClock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(resync_ms * periods));
  double cpu = cpu_seconds() - c0;
  double wall = since(w0);
  double passes = static_cast<double>(hm.reconcile_duration->Collect().histogram.sample_count) - passes0;
  std::printf("steady state: %.3f CPU s over %.2f s wall (%d resync periods): %.1f%% of one core, "
              "%.1f ms CPU per resync of %d domains; %.0f reconcile passes; %llu events appended "
              "(second pass does nothing)\n",
              cpu, wall, periods, 100 * cpu / wall, 1000 * cpu / periods, n, passes,
              static_cast<unsigned long long>(pipe.last_position() - pos0));
  std::printf("reconcile pass mean duration over the run: %.2f ms\n",
              1000 * histogram_mean(hm.reconcile_duration));
  manager.stop();
  pipe.stop();
  std::filesystem::remove_all(base);
  return 0;
}

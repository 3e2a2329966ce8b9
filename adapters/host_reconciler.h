// The host reconciler: one worker thread per hypervisor host that connects through the
// Hypervisor interface, records what it observes as commands through the pipeline, and moves
// each VM's observed power state toward the desired one (level-based: it acts on the
// difference it sees in the views, never on an individual event, so a second pass over a
// converged host does nothing).
//
// Threads: HostManager::start() runs one scan thread that starts a worker for every host in
// state connecting, up, disconnected or maintenance, joins the workers of hosts that left those
// states, and wakes the workers when the views move. A worker owns its host's connection; a slow
// or dead host blocks only its own worker (every libvirt call is bounded by the adapter's
// timeout). Wake-ups (lifecycle events, views changed, connection lost) are coalesced flags, so
// no queue grows however many events a host sends.
//
// Per worker, in a loop:
//  - not connected: connect (keepalive on), read capabilities, subscribe to lifecycle events
//    (each one asks for a relist), display client events (graphics events: kept in memory per
//    VM, see display_wave(); a VM's display gaining its first authenticated client or losing
//    its last one is recorded as RecordDisplayClients) and the close callback; record HostConnected with epoch =
//    the host's epoch + 1. On failure record the attempt and retry with exponential backoff;
//    once connect_timeout has passed since the host entered connecting/disconnected, record the
//    final failure (host -> alert, operation failed with libvirt's message) and stop.
//  - connection lost (close callback, or a call that finds it dead): record HostDisconnected
//    for this epoch and reconnect.
//  - relist (after a lifecycle event, after acting, or every resync_interval): list every
//    domain and record RecordDomainsObserved (the decider records only changes, drift, and
//    completions).
//  - reconcile: for each VM with an active power operation: complete it if the observation
//    already satisfies it, else mark it running and act (start, shutdown then destroy after
//    shutdown_timeout, destroy, reboot); for each VM with recorded drift: correct it if policy
//    allows (managed VMs; unmanaged ones only with correct_unmanaged), else record the drift as
//    given up; corrections that keep failing are given up after max_correction_attempts.
//    Maintenance hosts get no starts.
//
// Restart: start() fails operations that cannot be resumed (a reboot already running: whether
// it happened is unknown; operations on VMs that no longer exist); every other pending or
// running operation is resumed by the level-based loop, since it is in the views.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "adapters/hypervisor.h"
#include "adapters/libvirt_hypervisor.h"
#include "domain/host_uri.h"
#include "domain/pools.h"
#include "pipeline/pipeline.h"
#include "projections/views.h"

namespace atrium::adapters {

struct HostManagerOptions {
  std::chrono::milliseconds resync_interval{30000};   // full relist of each host
  std::chrono::milliseconds connect_timeout{300000};  // then the host goes to alert
  std::chrono::milliseconds call_timeout{30000};      // each libvirt call and each connect
  std::chrono::milliseconds backoff_initial{1000};    // reconnect backoff, doubling
  std::chrono::milliseconds backoff_max{60000};
  std::chrono::milliseconds shutdown_timeout{60000};  // graceful shutdown, then destroy
  std::chrono::milliseconds poll_interval{50};        // scan thread: views and host set
  int keepalive_interval_s = 5;
  unsigned keepalive_count = 3;
  bool correct_unmanaged = false;  // policy: also correct drift of VMs no pool manages
  int max_correction_attempts = 3;
  // Checked again before every connect: a host in the log whose URI is no longer allowed
  // goes to alert without being opened.
  domain::HostUriPolicy uri_policy;
  // Test seam: called (with the host id) by a pass that planned libvirt calls, before it
  // records or makes them. Tests block here to stand for a broker paused at the worst moment
  // (tests/api/ha_fencing_test.cpp). Null in atriumd.
  std::function<void(const std::string&)> before_side_effects;
};

// Prometheus families of hosts, VMs and libvirt calls, registered on the shared registry.
struct HostMetrics {
  explicit HostMetrics(prometheus::Registry& registry);

  prometheus::Family<prometheus::Gauge>* hosts = nullptr;          // {state}
  prometheus::Family<prometheus::Gauge>* vms = nullptr;            // {desired, observed}
  prometheus::Histogram* reconcile_duration = nullptr;             // one worker pass
  prometheus::Family<prometheus::Histogram>* libvirt_duration = nullptr;  // {call}
  prometheus::Family<prometheus::Counter>* libvirt_errors = nullptr;      // {call}
  prometheus::Family<prometheus::Gauge>* ports_free = nullptr;            // {host, host_name}

  // For LibvirtOptions::observer.
  LibvirtCallObserver observer();
  // Recomputes the gauges from the views (on scrape).
  void refresh(const projections::Views& views);

 private:
  std::mutex mu_;
  std::map<std::string, prometheus::Histogram*> call_hist_;
  std::map<std::string, prometheus::Counter*> call_err_;
  std::map<std::pair<std::string, std::string>, prometheus::Gauge*> vm_gauges_;
  std::map<std::pair<std::string, std::string>, prometheus::Gauge*> port_gauges_;  // id, name
};

class HostManager {
 public:
  HostManager(pipeline::Pipeline& pipeline, projections::Views& views,
              std::shared_ptr<Hypervisor> hypervisor, HostManagerOptions options = {},
              pipeline::Clock clock = pipeline::system_now_ms, HostMetrics* metrics = nullptr);
  ~HostManager();
  HostManager(const HostManager&) = delete;
  HostManager& operator=(const HostManager&) = delete;

  // Fails operations that cannot be resumed, then starts the scan thread (which starts the
  // workers). Idempotent.
  void start();
  // Stops every worker (closing its connection) and the scan thread. Must run before the
  // pipeline stops. Idempotent.
  void stop();

  size_t worker_count() const;

  // The display clients of a VM as the graphics events of its host showed them since this
  // broker started (in memory: liveness, not history); nullopt when no display event was ever
  // seen for it (the test driver sends none; a broker restart forgets clients connected before).
  std::optional<domain::DisplayWave> display_wave(const std::string& vm_id) const;
  // For tests: feed a display event as if the host's connection had delivered it.
  void inject_display_event(const std::string& host_id, const DisplayClientEvent& ev);

  // ---- test hooks -----------------------------------------------------------------------
  // Runs `fn` on the worker's open connection to the host, e.g. to change a domain behind
  // the broker's back on a test:/// host (whose state exists only inside that one
  // connection). unavailable when the worker has no open connection.
  Status with_connection(const std::string& host_id,
                         const std::function<Status(HypervisorConnection&)>& fn);
  // Makes the worker behave as if libvirt had reported its connection closed (reason
  // "simulated"): test:/// connections cannot be lost for real.
  void simulate_connection_lost(const std::string& host_id);

 private:
  struct Worker;
  // Per VM: its display connections by client endpoint (true once authenticated).
  struct DisplayTrack {
    std::string host_id;
    std::map<std::string, bool> channels;
    std::string client_address;  // the client of the first authenticated channel
    int64_t wave_started_ms = 0;
    int64_t last_event_ms = 0;
    bool reported_connected = false;  // what RecordDisplayClients last said
  };
  void on_display_event(const std::string& host_id, const DisplayClientEvent& ev);
  // The domain stopped: its display clients are gone (QEMU sends no disconnects then).
  void on_display_stopped(const std::string& host_id, const std::string& uuid);
  // Tells the host's worker that a VM's display connectedness changed.
  void wake_display(const std::string& host_id);
  // Records the VMs of the host whose display connectedness changed (worker thread).
  void report_display(const std::string& host_id, uint64_t epoch);
  void scan_loop();
  void scan_once();
  void run_worker(const std::shared_ptr<Worker>& w);
  void recover_operations();

  pipeline::Pipeline& pipeline_;
  projections::Views& views_;
  std::shared_ptr<Hypervisor> hypervisor_;
  HostManagerOptions opts_;
  pipeline::Clock clock_;
  HostMetrics* metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool running_ = false;
  bool stopping_ = false;
  std::thread scanner_;
  std::map<std::string, std::shared_ptr<Worker>> workers_;

  mutable std::mutex display_mu_;
  std::map<std::string, DisplayTrack> display_;  // by vm id
};

}  // namespace atrium::adapters

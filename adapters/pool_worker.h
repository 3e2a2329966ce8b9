// The pool worker, VM manager and session monitor of desktop pools (domain/pools.h).
//
// One thread, level-based: every pass reads the views and, per pool, acts on the plan of
// domain::plan_spares() (provision members from the template on the chosen host, power on
// standby spares, remove idle members on shrink or deletion, finish a deletion), completes
// members being removed or refreshed once their VM is off, and carries out
// domain::power_actions() (deactivate silent or VM-less sessions, end sessions past their grace
// with the pool's power policy, shut idle members down). Every step is a command through the
// pipeline, so it is recorded and decided against the current state: a decision the worker
// made on an older view is simply refused (e.g. a member that got a session meanwhile).
//
// Libvirt actions (define, undefine, set_display_password) run on the host reconciler's own
// connection (HostManager::with_connection); power changes are desired states that the host
// reconciler drives. A template with base_volume gives each member a qcow2 overlay volume
// (named after the member, in template.storage_pool) backed by the base: created at
// provisioning, recreated empty on refresh, deleted with the member. After a template update
// (PATCH template), plan_spares() names free members on the old version: they are refreshed
// the same way (rolling, a few at a time), redefined from the new template.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "adapters/host_reconciler.h"
#include "domain/pools.h"
#include "pipeline/liveness.h"
#include "pipeline/pipeline.h"
#include "projections/views.h"

namespace atrium::adapters {

struct PoolWorkerOptions {
  std::chrono::milliseconds interval{250};            // one pass
  std::chrono::milliseconds client_timeout{90000};    // monitor: silent clients
  std::chrono::milliseconds provision_timeout{60000}; // define -> observed on the host
  std::chrono::milliseconds ticket_ttl{120000};       // one-time display password
  std::chrono::milliseconds launch_wait{60000};       // bounded wait for a VM to run
  // Listen address of members' SPICE displays; empty: the template's stands.
  std::string spice_listen;
  // After a session ends, how long its display clients may take to drop once the password was
  // rotated with connected='disconnect'; then the VM is powered off instead.
  std::chrono::milliseconds display_reset_timeout{10000};
};

// What a client needs to connect to a desktop.
struct DisplayGrant {
  std::string host;  // host address for clients
  int port = -1;     // with tls: the TLS port (the only one)
  bool tls = false;
  std::string ca_cert;       // PEM of the host's SPICE CA (tls)
  std::string host_subject;  // the host certificate's subject (tls)
  std::string ticket;
  int64_t expires_at_ms = 0;
  bool ticket_applied = false;
  std::string note;
};

class PoolWorker {
 public:
  PoolWorker(pipeline::Pipeline& pipeline, projections::Views& views, HostManager* hosts,
             PoolWorkerOptions options = {}, pipeline::Clock clock = pipeline::system_now_ms);
  ~PoolWorker();
  PoolWorker(const PoolWorker&) = delete;
  PoolWorker& operator=(const PoolWorker&) = delete;

  // The liveness table whose client reports the session monitor reads (api::Api's); none:
  // only what the log says (connect/disconnect events).
  void set_liveness(const pipeline::Liveness* live) { liveness_ = live; }
  void start();  // idempotent
  void stop();   // idempotent; before the host manager and the pipeline stop

  // For a launch: makes the session's VM run (allocating its display port and defining its
  // SPICE display with a fresh ticket if it must be started), waits (bounded) until it runs,
  // sets a one-time display password that expires after ticket_ttl, records the ticket's
  // expiry and whether the hypervisor accepted it, and returns the connection details.
  // unavailable when the VM does not run in time or its host has no connection.
  Result<DisplayGrant> prepare_display(const std::string& session_id);

  // For a launch refused with no_vm_ready (capacity left, nothing free): provisions one member
  // of the pool now, within max_size, and waits (bounded by launch_wait) until it is ready, so
  // that pools with min_ready 0 grow on demand. Ok when a member became ready (another launch
  // may still take it first); the refusal (e.g. pool_full) or libvirt's error otherwise.
  Status provision_for_launch(const std::string& pool_id);

  // The persistent definition of domain `name` on host `host_id`, for a pool template that
  // names an existing domain. not_found when the host has no such domain; unavailable when the
  // host is not connected.
  Result<std::string> export_domain_xml(const std::string& host_id, const std::string& name);

  // Ends a session whose launch failed after it was created (no desktop could be started).
  void end_failed_launch(const std::string& session_id, const std::string& reason);

  std::chrono::milliseconds launch_wait() const { return opts_.launch_wait; }

  // Asks libvirt on a connected host of the pool whether a member defined from `t` is a valid
  // domain: a throwaway domain (atrium-validate-<random>, never started) is defined from the
  // member XML and undefined at once. invalid_argument with libvirt's message (reason
  // invalid_template) when libvirt refuses it; unavailable (template_host_unavailable) when no
  // host of the pool is connected.
  Status validate_template(const std::vector<std::string>& host_ids, const domain::PoolTemplate& t);

  // One pass of the loop (tests drive it directly).
  void run_once();

 private:
  void loop();
  Status submit(pipeline::Command c);
  // Powers a member on unless it is on or on its way; when it must start, first allocates its
  // display port and defines it with `ticket` as display password (*defined_with_ticket).
  Status ensure_running(const std::string& vm_id, const std::string& ticket, int64_t expires_ms,
                        bool* defined_with_ticket);
  // Defines the member's domain from the pool template. A member with an overlay disk gets its
  // overlay volume (created over template.base_volume in template.storage_pool if missing);
  // `fresh_disk` recreates it empty first (provisioning, refresh).
  // *template_version (if given) says which pool template version the definition came from.
  Status define_member(const std::string& vm_id, int port, const std::string& password,
                       int64_t expires_ms, bool fresh_disk, int* template_version = nullptr);
  // Proposes, defines and (if the host has observed it) records a new member; its vm id.
  Result<std::string> provision(const std::string& pool_id);
  // Records a defined member as provisioned once its host has observed it; true when done.
  bool finish_provisioning(const std::string& vm_id);
  void finish_removal(const std::string& vm_id);
  void finish_refresh(const std::string& vm_id);
  // Rotates the one-time ticket of sessions whose client's display channels have all
  // authenticated (graphics events), keeping that client connected.
  void retire_tickets(int64_t now);
  // Drops every display client of members whose session ended or was deactivated, and records
  // the reset once no client is left (or the VM is off); powers the VM off when clients do not
  // drop in time or the password cannot be changed while clients are connected.
  void reset_display(const std::string& vm_id, int64_t now);

  pipeline::Pipeline& pipeline_;
  projections::Views& views_;
  HostManager* hosts_;
  PoolWorkerOptions opts_;
  pipeline::Clock clock_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool running_ = false;
  bool stopping_ = false;
  std::thread thread_;
  std::mutex pass_mu_;  // one pass at a time
  std::map<std::string, int64_t> provisioning_since_;  // vm id -> when defined (worker only)
  std::map<std::string, int64_t> pool_backoff_until_;   // pool id -> next provisioning try
  struct ResetProgress {
    int64_t since = 0;         // first attempt
    bool rotated = false;      // password rotated with connected='disconnect'
    bool powered_off = false;  // fallback: destroy requested
  };
  std::map<std::string, ResetProgress> reset_progress_;  // vm id -> display reset (worker)
  // Display password changes of one broker, one at a time: a launch's fresh ticket and the
  // worker's resets and retirements never interleave (a reset never kills a newer ticket).
  std::mutex display_mu_;
  const pipeline::Liveness* liveness_ = nullptr;
};

}  // namespace atrium::adapters

// Hypervisor hosts, the VMs on them, and long-running operations (DOMAIN.md sections 1-3, 5).
//
// Streams: "host-<id>", "vm-<id>", "operation-<id>".
//
// Host life: AddHost -> HostAdded (connecting) + OperationStarted(connect_host). The host
// reconciler (adapters/host_reconciler.h) reports what it sees as commands: a connection with
// a new epoch -> HostConnected (up; the connect operation succeeds); failed attempts ->
// HostConnectAttemptFailed, the last one (connect timeout) -> HostFailed (alert) and
// OperationFailed with libvirt's message; a lost connection -> HostDisconnected. An admin
// moves a host into maintenance (no VM starts there) and activates it again; RemoveHost ends it.
//
// Epochs: each (re)connection of a host has an epoch one higher than the last. Every
// observation and action result carries the epoch it was made under; the decider discards
// (no events, no error) results from any other epoch, so a late answer of a dead connection
// can never overwrite what the current one saw.
//
// VMs: domains found on a host are imported as unmanaged (VmImported, desired "none"). A VM
// gets a desired power state from RequestVmPower (VmPowerRequested + OperationStarted).
// Observations (RecordDomainsObserved) record changes only (VmObserved). An observed state
// that differs from the desired one while no operation is driving the VM is drift: it is
// recorded (VmDriftDetected), and so is its end (VmDriftResolved: corrected when observed equal
// to the desired state again, given_up with a reason, after which the broker stops asserting a
// power state: desired "none").
//
// Display ports: each host hands out ports from its range. A port is in use when it is
// allocated to a VM (AllocateDisplayPort) or observed as the live display port of a running VM
// on that host. Allocation takes the lowest free port; none free -> failed_precondition
// "display_ports_exhausted". An allocation is released (DisplayPortReleased) when its VM is
// observed stopped or disappears, or its host is removed.
//
// Views show the VMs of a host that is not connected (connecting, disconnected, alert) with
// observed state "unknown": computed when rendering, the recorded history is not rewritten.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "domain/event.h"

namespace atrium::domain {

inline constexpr int kDefaultFirstDisplayPort = 5500;
inline constexpr int kDefaultLastDisplayPort = 5699;

struct PortRange {
  int first = kDefaultFirstDisplayPort;
  int last = kDefaultLastDisplayPort;
  int size() const { return last - first + 1; }
  bool contains(int p) const { return p >= first && p <= last; }
};

struct Host {
  std::string id;
  std::string name;
  std::string uri;
  std::string address;  // what clients connect to for displays
  PortRange ports;
  // SPICE over TLS (the host's libvirt has spice_tls = 1): the CA that signed the host's SPICE
  // certificate (PEM) and that certificate's subject; desktops on this host then listen on a
  // TLS port only and the .vv lets the client verify the host. Empty: plain SPICE.
  std::string spice_ca_cert;
  std::string spice_host_subject;
  bool spice_tls() const { return !spice_ca_cert.empty(); }
  std::string state;    // connecting|up|disconnected|alert|maintenance|removed
  std::string reason;   // why the last transition happened
  bool connected = false;  // an open connection of `epoch` exists (also in maintenance)
  uint64_t epoch = 0;
  Json capabilities = Json::object();
  std::string last_error;
  uint32_t failed_attempts = 0;  // since the last successful connection
  std::string connect_operation;  // the pending connect_host operation, if any
  int64_t state_since_ms = 0;
  int64_t created_at_ms = 0;
  int64_t updated_at_ms = 0;
  uint64_t version = 0;
};

struct Vm {
  std::string id;
  std::string host_id;
  std::string name;
  std::string uuid;
  std::string pool_id;  // empty = unmanaged
  bool managed() const { return !pool_id.empty(); }
  std::string desired = "none";     // running|shut_off|none
  std::string observed = "unknown";  // running|shut_off|paused|crashed|missing|... as recorded
  int display_port = -1;             // live (or fixed) port from the domain XML; -1 none
  int allocated_port = -1;           // reserved by AllocateDisplayPort; -1 none
  bool drift = false;
  std::string drift_reason;
  std::string operation;  // the vm_power operation driving this VM, if active
  int64_t created_at_ms = 0;
  int64_t updated_at_ms = 0;
  uint64_t version = 0;
};

struct Operation {
  std::string id;
  std::string kind;    // connect_host|vm_power
  std::string target;  // host id or vm id
  std::string host_id;
  std::string action;  // vm_power: start|shutdown|reboot|destroy
  std::string previous_desired;  // vm_power: desired state before the request
  std::string state;   // pending|running|succeeded|failed|cancelled
  std::string error;
  std::vector<uint64_t> events;  // positions of the events that carry this operation's id
  int64_t created_at_ms = 0;
  int64_t updated_at_ms = 0;
  uint64_t version = 0;
  bool active() const { return state == "pending" || state == "running"; }
};

struct HostsState {
  std::unordered_map<std::string, Host> hosts;
  std::unordered_map<std::string, Vm> vms;
  std::unordered_map<std::string, Operation> operations;
  // host id -> uuid -> vm id
  std::unordered_map<std::string, std::unordered_map<std::string, std::string>> vm_by_uuid;

  const Host* host(const std::string& id) const;
  const Vm* vm(const std::string& id) const;
  const Operation* operation(const std::string& id) const;
  // Ports in use on a host: port -> vm id (allocations and live ports of running VMs).
  std::map<int, std::string> ports_in_use(const std::string& host_id) const;
  int ports_free(const std::string& host_id) const;
  // The VMs of one host, ordered by id.
  std::vector<const Vm*> vms_of(const std::string& host_id) const;
};

// ---- commands ---------------------------------------------------------------------------
struct AddHost {
  std::string id;
  std::string operation_id;
  std::string name;
  std::string uri;
  std::string address;  // empty: the URI's host name, else 127.0.0.1
  PortRange ports;
  std::string spice_ca_cert = {};  // SPICE TLS (both or neither), see Host
  std::string spice_host_subject = {};
};

struct RecordHostConnected {
  std::string host_id;
  uint64_t epoch = 0;  // must be higher than the host's epoch, else ignored
  Json capabilities = Json::object();
};

struct RecordHostConnectFailed {
  std::string host_id;
  std::string error;  // libvirt's own message
  bool final = false;  // the connect timeout has passed: alert, fail the operation
  // The broker may not open the host's URI (domain/host_uri.h): alert at once, even in
  // maintenance, and fail the operation; `error` says why.
  bool refused = false;
};

struct RecordHostDisconnected {
  std::string host_id;
  uint64_t epoch = 0;
  std::string reason;
};

struct EnterMaintenance {
  std::string host_id;
  std::optional<uint64_t> expected_version;
};

struct ActivateHost {
  std::string host_id;
  std::optional<uint64_t> expected_version;
};

struct RemoveHost {
  std::string host_id;
  std::optional<uint64_t> expected_version;
};

struct ObservedDomain {
  std::string name;
  std::string uuid;
  std::string state;  // adapters' DomainState text: running, shut_off, paused, ...
  int display_port = -1;
};

// Domains the broker defines for a moment only, to have libvirt check a pool template
// (adapters/pool_worker.h validate_template): never imported as VMs.
inline constexpr const char* kValidationDomainPrefix = "atrium-validate-";

struct RecordDomainsObserved {
  std::string host_id;
  uint64_t epoch = 0;
  std::vector<ObservedDomain> domains;  // every domain of the host
};

struct RequestVmPower {
  std::string vm_id;
  std::string operation_id;
  std::string action;  // start|shutdown|reboot|destroy
  std::optional<uint64_t> expected_version;
};

// The reconciler is about to act on these operations (pending -> running): the host's
// connect operation while it is not connected, VM operations on the current epoch's connection.
struct BeginOperations {
  std::string host_id;
  uint64_t epoch = 0;
  std::vector<std::string> operation_ids;
};

// The outcome of one libvirt action. A failure fails the VM's operation with the message
// (and restores the desired state from before the request). A success completes a reboot; a
// start/shutdown/destroy completes when the observation shows the desired state.
struct RecordVmActionResult {
  std::string vm_id;
  uint64_t epoch = 0;
  std::string operation_id;  // empty for a drift correction
  std::string action;
  bool ok = true;
  std::string error;
};

struct RecordDriftResolved {
  std::string vm_id;
  uint64_t epoch = 0;
  std::string resolution;  // corrected|given_up
  std::string reason;
};

struct CancelOperation {
  std::string operation_id;
  std::string reason;  // optional
};

// For pools (issue 5): a pool takes over an imported VM.
struct AdoptVm {
  std::string vm_id;
  std::string pool_id;
};

struct AllocateDisplayPort {
  std::string vm_id;
};

// An admin forgets a VM the broker should no longer list: one observed missing (its domain is
// gone), or an unmanaged one (a later relist imports it again if its domain still exists).
// A pool's VM that still exists is refused (vm_managed: the pool removes its own VMs), and so
// is one with a live desktop session (vm_in_use).
struct ForgetVm {
  std::string vm_id;
  std::optional<uint64_t> expected_version;
};

// An operation that cannot be resumed (e.g. after a restart) ends as failed.
struct FailOperation {
  std::string operation_id;
  std::string error;
};

struct State;
Result<Events> decide(const State& s, const AddHost& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordHostConnected& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordHostConnectFailed& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordHostDisconnected& c, const Context& ctx);
Result<Events> decide(const State& s, const EnterMaintenance& c, const Context& ctx);
Result<Events> decide(const State& s, const ActivateHost& c, const Context& ctx);
Result<Events> decide(const State& s, const RemoveHost& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordDomainsObserved& c, const Context& ctx);
Result<Events> decide(const State& s, const RequestVmPower& c, const Context& ctx);
Result<Events> decide(const State& s, const BeginOperations& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordVmActionResult& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordDriftResolved& c, const Context& ctx);
Result<Events> decide(const State& s, const CancelOperation& c, const Context& ctx);
Result<Events> decide(const State& s, const AdoptVm& c, const Context& ctx);
Result<Events> decide(const State& s, const AllocateDisplayPort& c, const Context& ctx);
Result<Events> decide(const State& s, const FailOperation& c, const Context& ctx);
Result<Events> decide(const State& s, const ForgetVm& c, const Context& ctx);

// Fold helpers other modules' events use (pools: a removed member, a deleted pool).
// Forgets the VM: gone from the views (its operations stay as history).
void forget_vm(HostsState& hs, const std::string& vm_id);
// VMs still naming `pool_id`: forgotten when observed missing, else unmanaged (desired none).
void release_pool_vms(HostsState& hs, const std::string& pool_id);

std::string host_stream(const std::string& id);
std::string vm_stream(const std::string& id);
std::string operation_stream(const std::string& id);
// The stable id of the VM with `uuid` on `host_id` (pure: a hash of both).
std::string vm_id_for(const std::string& host_id, const std::string& uuid);
// The default client address for a libvirt URI: its host part, else 127.0.0.1.
std::string address_from_uri(const std::string& uri);

// Views. A VM on a host that is not connected shows observed "unknown".
Json host_to_json(const HostsState& hs, const Host& h);
Json vm_to_json(const HostsState& hs, const Vm& v);
Json operation_to_json(const Operation& o);
// The state to show for a VM (observed, or "unknown" while its host is not connected).
std::string shown_observed(const HostsState& hs, const Vm& v);

}  // namespace atrium::domain

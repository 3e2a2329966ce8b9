// The broker's view of a hypervisor host: a small abstract interface, implemented over libvirt
// by adapters/libvirt_hypervisor.h and by fakes in tests. Depends only on common/result.h.
//
// Conventions for every method below:
//  - Errors are values (Result/Status); nothing throws out of an implementation.
//  - A hypervisor's own error keeps the hypervisor's message verbatim in Error::message and a
//    machine-readable Error::reason (e.g. "libvirt_no_domain"). Codes:
//      not_found            the named domain (or object) does not exist
//      failed_precondition  the object is in the wrong state for the operation, or the driver
//                           does not support the operation
//      invalid_argument     the XML or an argument was rejected
//      already_exists       a domain with that name/uuid exists already
//      permission_denied    the hypervisor refused access
//      unavailable          the host could not be reached, the connection is closed or lost,
//                           a call timed out, the call queue is full, or the hypervisor failed
//  - No call blocks longer than the connection's timeout (ConnectOptions::timeout); a call that
//    takes longer returns Code::unavailable while the hypervisor call itself may still finish
//    later in the background.
//  - A HypervisorConnection may be used from several threads at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace atrium::adapters {

// The run state of a domain (libvirt's virDomainState).
enum class DomainState {
  running,
  blocked,        // running but blocked on a resource
  paused,         // paused by an administrator or by the hypervisor (e.g. an I/O error)
  shutting_down,  // a graceful shutdown is in progress
  shut_off,
  crashed,
  suspended,      // suspended by guest power management (S3/S4)
  unknown,
};

// "running", "blocked", "paused", "shutting_down", "shut_off", "crashed", "suspended", "unknown".
inline const char* to_string(DomainState s) {
  switch (s) {
    case DomainState::running: return "running";
    case DomainState::blocked: return "blocked";
    case DomainState::paused: return "paused";
    case DomainState::shutting_down: return "shutting_down";
    case DomainState::shut_off: return "shut_off";
    case DomainState::crashed: return "crashed";
    case DomainState::suspended: return "suspended";
    case DomainState::unknown: return "unknown";
  }
  return "unknown";
}

struct HostCapabilities {
  std::string cpu_model;           // host CPU model if the driver names one, else its arch/model string
  unsigned cpus = 0;               // active logical CPUs
  std::uint64_t memory_kib = 0;    // host memory
  std::string hypervisor;          // driver type, e.g. "QEMU", "TEST"
  std::string hypervisor_version;  // "major.minor.release" of the hypervisor, e.g. "7.2.0"
  std::string libvirt_version;     // "major.minor.release" of the management library
  std::string hostname;
  std::vector<std::string> storage_pools;  // names; empty if the host has none or no storage driver
  std::vector<std::string> networks;       // names; empty if the host has none or no network driver
};

struct DomainInfo {
  std::string name;
  std::string uuid;  // canonical lowercase text form
  DomainState state = DomainState::unknown;
  // The port of the first <graphics type='spice'> (else 'vnc') element of the domain's current
  // XML (its TLS port when it has only that): the live port of a running domain, or the fixed
  // port of a shut-off one. -1 when the
  // domain has no such display or the port is not allocated yet (autoport while shut off).
  int display_port = -1;
  std::uint64_t memory_kib = 0;  // configured maximum memory (<memory>)
  unsigned vcpus = 0;
  bool persistent = false;  // defined (survives shutdown) rather than transient
};

// A domain lifecycle event, as delivered by the hypervisor.
struct DomainEvent {
  std::string name;
  std::string uuid;
  DomainState state = DomainState::unknown;  // the state the event leaves the domain in
  // What happened: "defined", "undefined", "started", "suspended", "resumed", "stopped",
  // "shutdown" (a guest shutdown sequence progressed), "pmsuspended", "crashed".
  std::string reason;
  // The detail of `reason`, e.g. "booted" (started), "destroyed" / "shutdown" / "crashed"
  // (stopped), "added" / "updated" (defined), "removed" (undefined); "unknown" if not known.
  std::string detail;
};

// Called for each lifecycle event of any domain on the connection.
using DomainEventCallback = std::function<void(const DomainEvent&)>;

// A display client event (libvirt's VIR_DOMAIN_EVENT_ID_GRAPHICS): a SPICE or VNC client's
// connection to a domain's display. SPICE clients open several connections (channels: main,
// display, inputs, cursor, ...), each authenticated with the same password and each reported on
// its own; a VNC client has one.
struct DisplayClientEvent {
  std::string name;  // domain
  std::string uuid;
  // "connect": the TCP connection is accepted (not yet authenticated); "initialize": it
  // authenticated and is set up; "disconnect": it closed (also after a failed authentication).
  std::string phase;
  std::string family;          // "ipv4", "ipv6", "unix"
  std::string local_address;   // the display's side
  std::string local_service;   // its port
  std::string remote_address;  // the client's side
  std::string remote_service;  // the client's port
  std::string auth_scheme;     // e.g. "spice", "vnc", "none"
};
using DisplayEventCallback = std::function<void(const DisplayClientEvent&)>;

// What a display password change does to clients already connected with the old password
// (libvirt's <graphics connected='...'>).
enum class ConnectedClients {
  hypervisor_default,  // whatever the hypervisor does by default
  keep,                // they stay connected (the old password only stops new connections)
  disconnect,          // they are disconnected at once
};
// Called once when the connection is lost (not when close() is called); the argument says why:
// "error", "eof", "keepalive" or "client".
using ConnectionClosedCallback = std::function<void(std::string reason)>;

// One open connection to a hypervisor host. Destroying it closes it.
class HypervisorConnection {
 public:
  virtual ~HypervisorConnection() = default;

  // Facts about the host: CPU, memory, versions, hostname, storage pool and network names.
  virtual Result<HostCapabilities> capabilities() = 0;

  // Every domain, running or not. A domain that disappears while the list is being read is
  // left out rather than failing the whole list.
  virtual Result<std::vector<DomainInfo>> list_domains() = 0;

  // The domain with this name; not_found if there is none.
  virtual Result<DomainInfo> lookup(std::string_view name) = 0;

  // The persistent (inactive) definition of the domain as the hypervisor's domain XML, e.g. to
  // use an existing domain as a desktop pool template. not_found if there is no such domain.
  // Secrets (display passwords) are not included.
  virtual Result<std::string> domain_xml(std::string_view name) = 0;

  // Defines (persistently) a domain from the hypervisor's domain XML, or updates the
  // definition of the domain with the same name and uuid. Does not start it. Returns the
  // domain as now defined. invalid_argument for XML the hypervisor rejects, already_exists or
  // failed/unavailable (with the hypervisor's message) for a name clash.
  virtual Result<DomainInfo> define(std::string_view xml) = 0;

  // Boots a defined, shut-off domain. failed_precondition if it is already running.
  virtual Status start(std::string_view name) = 0;

  // Asks the guest to shut down (ACPI power button); returns once the request is sent. The
  // domain reaches shut_off later, reported by a "stopped" event, or never if the guest ignores
  // the request (use destroy()). failed_precondition if it is not running.
  virtual Status shutdown(std::string_view name) = 0;

  // Powers the domain off at once (like pulling the plug). failed_precondition if not running.
  virtual Status destroy(std::string_view name) = 0;

  // Asks the guest to reboot (ACPI). failed_precondition if it is not running.
  virtual Status reboot(std::string_view name) = 0;

  // Removes the persistent definition (with managed save images and snapshot metadata). A
  // running domain keeps running as a transient domain until it stops.
  virtual Status undefine(std::string_view name) = 0;

  // Sets the password of the domain's display (the first spice, else vnc, <graphics>) on the
  // running domain, valid until `expires_at` (Unix seconds, UTC); expires_at <= 0 means no
  // expiry. `clients` says what happens to display clients already connected.
  // not_found for an unknown domain, failed_precondition if it has no spice/vnc display, is not
  // running, or the driver cannot change the password (with the hypervisor's own message).
  // Note: QEMU can only change a SPICE password if the domain was started with one (otherwise
  // SPICE runs with ticketing disabled and QEMU answers "Could not set password").
  virtual Status set_display_password(std::string_view name, std::string_view password,
                                      std::int64_t expires_at, ConnectedClients clients) = 0;

  // Storage volumes (copy-on-write overlay disks of desktop pools). Paths are the volumes'
  // target paths as the hypervisor reports them (e.g. "/var/lib/libvirt/images/x.qcow2").
  //
  // Creates in storage pool `pool` a qcow2 volume `name` whose backing store is the volume at
  // `base_path` (which must be a volume the hypervisor knows, i.e. in one of its storage pools:
  // its capacity and format (qcow2 or raw; raw if it reports none) are read from it). The new
  // volume has the base's capacity and holds only the writes made to it. Returns the new
  // volume's path. not_found for an unknown pool or base volume, already_exists if the pool has
  // a volume with that name (libvirt's test driver reports that as a generic failure:
  // unavailable "operation failed: storage vol already exists"), failed_precondition if the pool is inactive or the driver cannot
  // create volumes (hypervisor's message kept in every case).
  virtual Result<std::string> create_overlay_volume(std::string_view pool, std::string_view name,
                                                    std::string_view base_path) = 0;

  // The path of volume `name` in storage pool `pool`; not_found if the pool or the volume does
  // not exist.
  virtual Result<std::string> volume_path(std::string_view pool, std::string_view name) = 0;

  // Deletes the volume at `path` (its data and its entry in the pool). not_found if no pool of
  // the hypervisor has a volume with that path.
  virtual Status delete_volume(std::string_view path) = 0;

  // Installs the callbacks for domain lifecycle events, for losing the connection and (when the
  // driver has them: QEMU, not the test driver) for display client events; a later call replaces
  // all three. Any may be empty; a driver without display events is not an error. Callbacks run on the hypervisor library's event
  // thread, one at a time: they must return quickly and must not call back into this
  // connection synchronously (hand work to another thread). After close() returns, no callback
  // runs any more.
  virtual Status subscribe(DomainEventCallback on_event, ConnectionClosedCallback on_closed,
                           DisplayEventCallback on_display = {}) = 0;

  // Whether the connection is open and its transport still up (a cheap local check; a dead peer
  // is noticed by keepalive after interval * count seconds).
  virtual bool is_alive() = 0;

  // Stops callbacks and closes the connection. Calls made afterwards, and calls still queued,
  // return unavailable. Idempotent. Returns unavailable if calls in progress did not finish
  // within the timeout (the connection is then abandoned, not freed).
  virtual Status close() = 0;
};

struct ConnectOptions {
  std::string uri;  // e.g. "qemu:///system", "qemu+ssh://host/system", "test:///default"
  // Keepalive for remote transports: a probe every `keepalive_interval_s` seconds, the
  // connection is declared dead after `keepalive_count` unanswered probes. <= 0 disables it.
  // Ignored by drivers that have no transport (test:///, local in-process drivers).
  int keepalive_interval_s = 5;
  unsigned keepalive_count = 3;
  // Upper bound for opening the connection and for each call on it.
  std::chrono::milliseconds timeout{30000};
};

// Opens connections to hypervisor hosts.
class Hypervisor {
 public:
  virtual ~Hypervisor() = default;

  // Opens a connection. unavailable (with the hypervisor's message) if the host cannot be
  // reached or the URI is not usable; invalid_argument for an empty URI.
  virtual Result<std::unique_ptr<HypervisorConnection>> connect(const ConnectOptions& options) = 0;
};

}  // namespace atrium::adapters

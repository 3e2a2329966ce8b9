// Helpers for the end-to-end tests on a real libvirtd + QEMU (qemu:///system): opening the
// connection or skipping, a guard that removes what a test leaves on the host (also what an
// earlier, killed run of it left), temporary dir storage pools, shell and virsh, a SPICE client
// for the link handshake and ticket authentication, and polling the broker's HTTP API.
//
// Names. Each test file has a family prefix ("atrium-e2e-", "atrium-hosts-e2e-",
// "atrium-pool-e2e-") and names every libvirt domain and storage pool it makes
// <family><pid>-...; the pid tells a leftover of a dead run from the objects of a run that is
// still going (ctest -j, or another checkout testing on the same libvirtd). Families must not
// be prefixes of one another's names.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "adapters/libvirt_hypervisor.h"
#include "support/test_support.h"

namespace atrium::api {
struct DaemonConfig;
}

namespace atrium::testing {

// ---- connection ---------------------------------------------------------------------------

// An open qemu:///system with its capabilities. The hypervisor outlives the connection.
struct QemuSystem {
  std::unique_ptr<adapters::LibvirtHypervisor> hv;
  std::unique_ptr<adapters::LibvirtConnection> conn;
  adapters::HostCapabilities caps;
};

// Opens qemu:///system. Without a reachable daemon, or when it is not a QEMU driver, prints
// "SKIPPED: <why>" and returns null: the test then returns without checking anything. A
// reachable daemon whose capabilities cannot be read fails the test (REQUIRE).
std::unique_ptr<QemuSystem> open_qemu_system_or_skip();

// Whether /dev/kvm can be opened; the domain type to put in test XML accordingly.
bool kvm_usable();
std::string domain_type();  // "kvm" or "qemu"

// ---- shell --------------------------------------------------------------------------------

// Runs `cmd` with /bin/sh and returns stdout and stderr together, trailing blanks and newlines
// removed.
std::string shell(const std::string& cmd);
// Whether `name` is a command on PATH.
bool have_command(const std::string& name);
// `virsh -c qemu:///system <args>`.
std::string virsh(const std::string& args);
// `qemu-img info -U <path>` (-U: the image may be open by a running QEMU).
std::string qemu_img_info(const std::string& path);
// Polls `virsh domstate name` until it says `want` or `limit` passes; `last` gets what it said.
bool wait_domstate(const std::string& name, const std::string& want, std::chrono::seconds limit,
                   std::string* last);

// ---- domain events ------------------------------------------------------------------------

// Records the lifecycle events a connection delivers (subscribe with callback()); must outlive
// that connection.
class DomainEvents {
 public:
  adapters::DomainEventCallback callback();
  // How many events were recorded so far: a position to wait from.
  std::size_t mark();
  // Waits until an event of domain `name` with `reason` (and `detail` unless empty) was recorded
  // at or after position `from`; its position, or nullopt after `timeout`.
  std::optional<std::size_t> wait(const std::string& name, const std::string& reason,
                                  const std::string& detail, std::chrono::milliseconds timeout,
                                  std::size_t from = 0);
  // "reason/detail" of the events of `name` from position `from`, for failure messages.
  std::string trail(const std::string& name, std::size_t from = 0);

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<adapters::DomainEvent> events_;
};

// ---- cleanup ------------------------------------------------------------------------------

// Removes the domains (destroyed, then undefined) and storage pools (destroyed, undefined, and
// their target directory removed when it is one of ours: its name starts with the family) named
// <family><pid>-...: at construction those of this process and of processes that are gone or
// are no atrium_tests (leftovers of a killed run), at destruction those of this process, so a
// failed check leaves nothing behind. Objects of a live atrium_tests process are left alone, and
// so are names without a pid after the family.
class E2eGuard {
 public:
  E2eGuard(adapters::LibvirtConnection& conn, std::string family);
  ~E2eGuard();
  E2eGuard(const E2eGuard&) = delete;
  E2eGuard& operator=(const E2eGuard&) = delete;

  // <family><pid>-: the start of every name this run may use.
  const std::string& prefix() const { return prefix_; }
  // Names removed at construction (leftovers of earlier runs), for the test log.
  const std::vector<std::string>& stale() const { return stale_; }

 private:
  void sweep(bool include_stale);
  adapters::LibvirtConnection& conn_;
  std::string family_;
  std::string prefix_;
  std::vector<std::string> stale_;
};

// A transient dir storage pool over a fresh directory /tmp/<name>-XXXXXX (mode 0755, so the QEMU
// user can reach the volumes). Destroying the object destroys the pool and removes the
// directory with everything in it.
class TempDirPool {
 public:
  // Creates the pool; an error says why it could not.
  static Result<std::unique_ptr<TempDirPool>> create(adapters::LibvirtConnection& conn,
                                                     const std::string& name);
  ~TempDirPool();
  TempDirPool(const TempDirPool&) = delete;
  TempDirPool& operator=(const TempDirPool&) = delete;

  const std::string& name() const { return name_; }
  const std::string& dir() const { return dir_; }
  // Creates an empty volume of `bytes` in `format` ("qcow2", "raw"); returns its path.
  Result<std::string> create_volume(const std::string& volume, std::uint64_t bytes,
                                    const std::string& format);
  // The volume names libvirt lists in the pool (after a refresh of the pool).
  Result<std::vector<std::string>> volumes();

 private:
  TempDirPool(adapters::LibvirtConnection& conn, std::string name, std::string dir)
      : conn_(conn), name_(std::move(name)), dir_(std::move(dir)) {}
  adapters::LibvirtConnection& conn_;
  std::string name_;
  std::string dir_;
  bool created_ = false;  // the pool is ours to destroy
};

// ---- SPICE --------------------------------------------------------------------------------

// One SPICE main-channel link on 127.0.0.1:port, and optionally the legacy ticket
// authentication (what a client without the auth-selection capability does).
struct SpiceLink {
  bool connected = false;   // the TCP connection was accepted
  std::string magic;        // of the server's SpiceLinkHeader: "REDQ"
  std::uint32_t major = 0;  // its protocol version
  std::uint32_t minor = 0;
  std::int64_t link_error = -1;   // SpiceLinkReply.error (0 = SPICE_LINK_ERR_OK)
  std::int64_t auth_result = -1;  // after the encrypted ticket (0 = OK, 7 = permission denied)
  bool no_openssl = false;        // the ticket could not be encrypted: no `openssl` command
  std::string note;               // why something was not read
};
constexpr std::int64_t kSpiceLinkErrPermissionDenied = 7;

// Sends the link header and an 18-byte SpiceLinkMess for the main channel and reads the link
// reply; with a ticket, encrypts it with the server's RSA key from the reply (RSA-OAEP with
// SHA-1, via the `openssl` command) and reads the authentication result.
SpiceLink spice_link(int port, const std::optional<std::string>& ticket = std::nullopt);

// Checks (doctest CHECKs) that `ticket` authenticates on the SPICE server at `port` and that
// `wrong` is denied. Without the `openssl` command only the link reply is checked, with a
// message saying so.
void check_spice_ticket(int port, const std::string& ticket, const std::string& wrong);

// ---- broker -------------------------------------------------------------------------------

// Broker settings for the QEMU end-to-end tests: second-scale reconciler and pool-worker passes,
// a 3 s shutdown timeout (diskless guests ignore ACPI), SPICE on 127.0.0.1.
void fast_qemu_broker(api::DaemonConfig& cfg);

// Adds qemu:///system through the API with display ports first..last (each test file has its
// own range, so that ctest can run them at once) and `extra` fields (e.g. spice_tls), waits until
// it is up; the host as the API shows it.
nlohmann::json add_qemu_host(TestBroker& b, int first, int last, const nlohmann::json& extra = nlohmann::json::object());

// The broker's event log, one line per event (the last `max` of them), for failure reports.
std::string event_log(TestBroker& b, std::size_t max = 120);

}  // namespace atrium::testing

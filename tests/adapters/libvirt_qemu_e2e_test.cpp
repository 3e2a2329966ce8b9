// Optional end-to-end test of the libvirt adapter against a real libvirtd + QEMU at
// qemu:///system. Start one with tools/start_libvirtd.sh (as root). Without a reachable daemon
// the test prints why and passes without checking anything.
//
// It defines a diskless 64 MiB domain named atrium-e2e-<pid>-<time> with a SPICE display on
// 127.0.0.1:5599, starts it, checks its state and port, speaks the SPICE link handshake to the
// port (the initial password authenticates), changes the display password (the new one
// authenticates, the old one not), destroys and undefines it. The second case makes an overlay
// volume in a temporary dir storage pool. Domains and storage pools named atrium-e2e-<pid>-* are
// removed at the end, also when a check fails, and so are leftovers of an earlier killed run
// (see tests/support/qemu_e2e.h).
#include <doctest/doctest.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <string>

#include "adapters/libvirt_hypervisor.h"
#include "support/qemu_e2e.h"

using namespace atrium;
using namespace atrium::adapters;
using namespace atrium::testing;
using namespace std::chrono_literals;

namespace {

constexpr const char* kFamily = "atrium-e2e-";
constexpr int kSpicePort = 5599;

}  // namespace

TEST_CASE("qemu:///system end to end: define, start, SPICE port, password, destroy, undefine") {
  DomainEvents events;  // outlives the connection that delivers to it
  auto q = open_qemu_system_or_skip();
  if (!q) return;
  HypervisorConnection& conn = *q->conn;
  const HostCapabilities* caps = &q->caps;
  MESSAGE("QEMU " << caps->hypervisor_version << ", libvirt " << caps->libvirt_version << ", host "
                  << caps->hostname << ", " << caps->cpus << " CPUs, cpu model " << caps->cpu_model);
  CHECK(caps->cpus > 0);
  CHECK(caps->memory_kib > 0);

  E2eGuard guard(*q->conn, kFamily);
  REQUIRE(conn.subscribe(events.callback(), nullptr).ok());

  const std::string name = guard.prefix() + std::to_string(std::time(nullptr));
  const std::string type = domain_type();
  // The display starts with a password so that SPICE ticketing is on: QEMU refuses to set a
  // password later on a SPICE server started without one.
  const std::string xml =
      "<domain type='" + type + "'>"
      "<name>" + name + "</name>"
      "<memory unit='MiB'>64</memory>"
      "<vcpu>1</vcpu>"
      "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
      "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
      "<devices>"
      "<graphics type='spice' port='" + std::to_string(kSpicePort) + "' autoport='no' listen='127.0.0.1' passwd='initial-secret'/>"
      "<video><model type='qxl'/></video>"
      "</devices>"
      "</domain>";
  auto def = conn.define(xml);
  REQUIRE_MESSAGE(def.ok(), (def.ok() ? "" : def.error().message));
  CHECK(def->state == DomainState::shut_off);
  CHECK(def->display_port == kSpicePort);
  CHECK(def->memory_kib == 65536);

  Status started = conn.start(name);
  REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().message));
  CHECK(events.wait(name, "started", "booted", 10s).has_value());

  auto doms = conn.list_domains();
  REQUIRE(doms.ok());
  const DomainInfo* mine = nullptr;
  for (const auto& d : *doms) {
    if (d.name == name) mine = &d;
  }
  REQUIRE(mine != nullptr);
  CHECK(mine->state == DomainState::running);
  CHECK(mine->display_port == kSpicePort);
  CHECK(mine->persistent);

  SpiceLink reply = spice_link(kSpicePort);
  CHECK_MESSAGE(reply.connected, "SPICE port " << kSpicePort << " refused the connection");
  REQUIRE_MESSAGE(reply.link_error >= 0, reply.note);  // a whole link reply was read
  CHECK(reply.magic == "REDQ");
  CHECK(reply.major == 2);
  CHECK(reply.link_error == 0);  // SPICE_LINK_ERR_OK
  check_spice_ticket(kSpicePort, "initial-secret", "n3w-secret");

  Status pw = conn.set_display_password(name, "n3w-secret", std::time(nullptr) + 600, ConnectedClients::hypervisor_default);
  CHECK_MESSAGE(pw.ok(), (pw.ok() ? "" : pw.error().message));
  if (pw.ok()) check_spice_ticket(kSpicePort, "n3w-secret", "initial-secret");

  Status twice = conn.start(name);
  REQUIRE_FALSE(twice.ok());
  CHECK(twice.error().code == Code::failed_precondition);
  CHECK(twice.error().reason == "domain_already_running");

  REQUIRE(conn.destroy(name).ok());
  CHECK(events.wait(name, "stopped", "destroyed", 10s).has_value());
  auto after = conn.lookup(name);
  REQUIRE(after.ok());
  CHECK(after->state == DomainState::shut_off);

  REQUIRE(conn.undefine(name).ok());
  CHECK(events.wait(name, "undefined", "", 10s).has_value());
  auto gone = conn.lookup(name);
  REQUIRE_FALSE(gone.ok());
  CHECK(gone.error().code == Code::not_found);
  MESSAGE("QEMU's not-found message: " << gone.error().message);
}

// Overlay volumes on a real dir pool: a transient pool atrium-e2e-<pid>-ovl in a temp dir, a
// 16 MiB qcow2 base, an overlay through the adapter, checked with qemu-img when installed.
TEST_CASE("qemu:///system end to end: overlay volume over a base volume in a dir pool") {
  auto q = open_qemu_system_or_skip();
  if (!q) return;
  LibvirtConnection& conn = *q->conn;
  E2eGuard guard(conn, kFamily);
  auto made = TempDirPool::create(conn, guard.prefix() + "ovl");
  REQUIRE_MESSAGE(made.ok(), (made.ok() ? "" : made.error().message));
  TempDirPool& dir_pool = **made;
  const std::string pool = dir_pool.name(), dir = dir_pool.dir();
  // The base through raw libvirt (the adapter only makes overlays).
  auto based = dir_pool.create_volume("base.qcow2", 16 << 20, "qcow2");
  REQUIRE_MESSAGE(based.ok(), (based.ok() ? "" : based.error().message));
  const std::string base = dir + "/base.qcow2";
  CHECK(*based == base);

  auto path = conn.create_overlay_volume(pool, "desk-1.qcow2", base);
  REQUIRE_MESSAGE(path.ok(), (path.ok() ? "" : path.error().message));
  CHECK(*path == dir + "/desk-1.qcow2");
  CHECK(std::filesystem::exists(*path));
  auto found = conn.volume_path(pool, "desk-1.qcow2");
  REQUIRE(found.ok());
  CHECK(*found == *path);

  if (have_command("qemu-img")) {
    std::string out = qemu_img_info(*path);
    CHECK_MESSAGE(out.find("backing file: " + base) != std::string::npos, out);
    CHECK_MESSAGE(out.find("file format: qcow2") != std::string::npos, out);
    CHECK_MESSAGE(out.find("virtual size: 16 MiB") != std::string::npos, out);
  } else {
    MESSAGE("qemu-img not installed: backing file not checked");
  }

  REQUIRE(conn.delete_volume(*path).ok());
  CHECK_FALSE(std::filesystem::exists(*path));
  CHECK(conn.volume_path(pool, "desk-1.qcow2").error().code == Code::not_found);
  CHECK(conn.delete_volume(base).ok());
}

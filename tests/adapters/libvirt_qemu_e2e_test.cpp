// Optional end-to-end test of the libvirt adapter against a real libvirtd + QEMU at
// qemu:///system. Start one with tools/start_libvirtd.sh (as root). Without a reachable daemon
// the test prints why and passes without checking anything.
//
// It defines a diskless 64 MiB domain named atrium-e2e-<pid>-<time> with a SPICE display on
// 127.0.0.1:5599, starts it, checks its state and port, speaks the first SPICE link message to
// the port, changes the display password, destroys and undefines it. Every domain named
// atrium-e2e-* is destroyed and undefined at the end, also when a check fails.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "adapters/libvirt_hypervisor.h"

using namespace atrium;
using namespace atrium::adapters;
using namespace std::chrono_literals;

namespace {

constexpr const char* kPrefix = "atrium-e2e-";
constexpr int kSpicePort = 5599;

// Destroys and undefines every domain whose name starts with kPrefix, now and when it dies.
class E2eDomainsGuard {
 public:
  explicit E2eDomainsGuard(HypervisorConnection& conn) : conn_(conn) { sweep(); }
  ~E2eDomainsGuard() { sweep(); }
  E2eDomainsGuard(const E2eDomainsGuard&) = delete;
  E2eDomainsGuard& operator=(const E2eDomainsGuard&) = delete;

  void sweep() {
    auto doms = conn_.list_domains();
    if (!doms) return;
    for (const auto& d : *doms) {
      if (d.name.rfind(kPrefix, 0) != 0) continue;
      if (d.state != DomainState::shut_off) (void)conn_.destroy(d.name);
      (void)conn_.undefine(d.name);
    }
  }

 private:
  HypervisorConnection& conn_;
};

class Events {
 public:
  DomainEventCallback callback() {
    return [this](const DomainEvent& e) {
      {
        std::lock_guard lock(m_);
        events_.push_back(e);
      }
      cv_.notify_all();
    };
  }
  bool wait(const std::string& name, const std::string& reason, const std::string& detail,
            std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_);
    return cv_.wait_for(lock, timeout, [&] {
      for (const auto& e : events_) {
        if (e.name == name && e.reason == reason && (detail.empty() || e.detail == detail)) return true;
      }
      return false;
    });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<DomainEvent> events_;
};

bool kvm_usable() {
  int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

void put_u32(std::vector<unsigned char>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));  // little endian
}

// Connects to 127.0.0.1:port, sends a SPICE link header + link message for the main channel,
// and returns the first bytes of the reply ("" if nothing could be read). `connected` says
// whether the TCP connection was accepted.
std::string spice_link_reply(int port, bool& connected) {
  connected = false;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return {};
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return {};
  }
  connected = true;
  // SpiceLinkHeader: magic "REDQ", major 2, minor 2, size of what follows.
  // SpiceLinkMess (18 bytes, packed): connection_id u32, channel_type u8 (1 = main),
  // channel_id u8, num_common_caps u32, num_channel_caps u32, caps_offset u32.
  std::vector<unsigned char> msg = {'R', 'E', 'D', 'Q'};
  put_u32(msg, 2);
  put_u32(msg, 2);
  put_u32(msg, 18);
  put_u32(msg, 0);   // connection_id: new session
  msg.push_back(1);  // main channel
  msg.push_back(0);  // channel id
  put_u32(msg, 0);   // no common caps
  put_u32(msg, 0);   // no channel caps
  put_u32(msg, 18);  // caps would follow the message
  std::string reply;
  if (::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(msg.size())) {
    char buf[20];
    std::size_t got = 0;
    while (got < sizeof buf) {
      ssize_t n = ::recv(fd, buf + got, sizeof buf - got, 0);
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    reply.assign(buf, got);
  }
  ::close(fd);
  return reply;
}

std::uint32_t get_u32(const std::string& s, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[at + static_cast<std::size_t>(i)]);
  return v;
}

}  // namespace

TEST_CASE("qemu:///system end to end: define, start, SPICE port, password, destroy, undefine") {
  LibvirtHypervisor hv;
  ConnectOptions opts;
  opts.uri = "qemu:///system";
  opts.timeout = 30s;
  auto connected = hv.connect(opts);
  if (!connected) {
    MESSAGE("SKIPPED: cannot connect to qemu:///system (" << connected.error().message
                                                         << "); run tools/start_libvirtd.sh as root to enable this test");
    return;
  }
  HypervisorConnection& conn = *connected.value();
  auto caps = conn.capabilities();
  REQUIRE_MESSAGE(caps.ok(), (caps.ok() ? "" : caps.error().message));
  if (caps->hypervisor != "QEMU") {
    MESSAGE("SKIPPED: qemu:///system answered with hypervisor " << caps->hypervisor);
    return;
  }
  MESSAGE("QEMU " << caps->hypervisor_version << ", libvirt " << caps->libvirt_version << ", host "
                  << caps->hostname << ", " << caps->cpus << " CPUs, cpu model " << caps->cpu_model);
  CHECK(caps->cpus > 0);
  CHECK(caps->memory_kib > 0);

  E2eDomainsGuard guard(conn);
  Events events;
  REQUIRE(conn.subscribe(events.callback(), nullptr).ok());

  const std::string name = std::string(kPrefix) + std::to_string(::getpid()) + "-" + std::to_string(std::time(nullptr));
  const std::string type = kvm_usable() ? "kvm" : "qemu";
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
  CHECK(events.wait(name, "started", "booted", 10s));

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

  bool accepted = false;
  std::string reply = spice_link_reply(kSpicePort, accepted);
  CHECK_MESSAGE(accepted, "SPICE port " << kSpicePort << " refused the connection");
  REQUIRE(reply.size() >= 20);
  CHECK(reply.substr(0, 4) == "REDQ");
  CHECK(get_u32(reply, 4) == 2);   // major version
  CHECK(get_u32(reply, 16) == 0);  // SpiceLinkReply.error: SPICE_LINK_ERR_OK

  Status pw = conn.set_display_password(name, "n3w-secret", std::time(nullptr) + 600);
  CHECK_MESSAGE(pw.ok(), (pw.ok() ? "" : pw.error().message));

  Status twice = conn.start(name);
  REQUIRE_FALSE(twice.ok());
  CHECK(twice.error().code == Code::failed_precondition);
  CHECK(twice.error().reason == "domain_already_running");

  REQUIRE(conn.destroy(name).ok());
  CHECK(events.wait(name, "stopped", "destroyed", 10s));
  auto after = conn.lookup(name);
  REQUIRE(after.ok());
  CHECK(after->state == DomainState::shut_off);

  REQUIRE(conn.undefine(name).ok());
  CHECK(events.wait(name, "undefined", "", 10s));
  auto gone = conn.lookup(name);
  REQUIRE_FALSE(gone.ok());
  CHECK(gone.error().code == Code::not_found);
  MESSAGE("QEMU's not-found message: " << gone.error().message);
}

// Overlay volumes on a real dir pool: a transient pool atrium-e2e-ovl-<pid> in a temp dir, a
// 16 MiB qcow2 base, an overlay through the adapter, checked with qemu-img when installed.
TEST_CASE("qemu:///system end to end: overlay volume over a base volume in a dir pool") {
  LibvirtHypervisor hv;
  ConnectOptions opts;
  opts.uri = "qemu:///system";
  opts.timeout = 30s;
  auto connected = hv.connect_libvirt(opts);
  if (!connected) {
    MESSAGE("SKIPPED: cannot connect to qemu:///system (" << connected.error().message << ")");
    return;
  }
  LibvirtConnection& conn = *connected.value();
  char tmpl[] = "/tmp/atrium-e2e-ovl-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  std::filesystem::permissions(dir, std::filesystem::perms(0755));
  const std::string pool = "atrium-e2e-ovl-" + std::to_string(getpid());
  // Raw libvirt for the pool and the base (the adapter only makes overlays).
  auto raw = [&](const char* what, std::function<Status(virConnectPtr)> fn) -> Status {
    Result<int> r = conn.call<int>(what, [fn = std::move(fn)](virConnectPtr c) -> Result<int> {
      Status st = fn(c);
      if (!st.ok()) return st.error();
      return 0;
    });
    if (!r.ok()) return r.error();
    return Status::Ok();
  };
  struct Cleanup {
    std::function<void()> fn;
    ~Cleanup() { fn(); }
  } cleanup{[&] {
    (void)raw("cleanup", [&](virConnectPtr c) -> Status {
      if (virStoragePoolPtr p = virStoragePoolLookupByName(c, pool.c_str())) {
        virStoragePoolDestroy(p);  // transient: gone after destroy
        virStoragePoolFree(p);
      }
      return Status::Ok();
    });
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }};
  Status made = raw("create pool and base", [&](virConnectPtr c) -> Status {
    std::string pxml = "<pool type='dir'><name>" + pool + "</name><target><path>" + dir + "</path></target></pool>";
    virStoragePoolPtr p = virStoragePoolCreateXML(c, pxml.c_str(), 0);
    if (p == nullptr) return libvirt_error("virStoragePoolCreateXML");
    virStorageVolPtr v = virStorageVolCreateXML(
        p, "<volume><name>base.qcow2</name><capacity unit='bytes'>16777216</capacity>"
           "<target><format type='qcow2'/></target></volume>", 0);
    Status st = v == nullptr ? Status(libvirt_error("virStorageVolCreateXML")) : Status::Ok();
    if (v != nullptr) virStorageVolFree(v);
    virStoragePoolFree(p);
    return st;
  });
  REQUIRE_MESSAGE(made.ok(), (made.ok() ? "" : made.error().message));
  const std::string base = dir + "/base.qcow2";

  auto path = conn.create_overlay_volume(pool, "desk-1.qcow2", base);
  REQUIRE_MESSAGE(path.ok(), (path.ok() ? "" : path.error().message));
  CHECK(*path == dir + "/desk-1.qcow2");
  CHECK(std::filesystem::exists(*path));
  auto found = conn.volume_path(pool, "desk-1.qcow2");
  REQUIRE(found.ok());
  CHECK(*found == *path);

  if (std::system("command -v qemu-img >/dev/null 2>&1") == 0) {
    std::string cmd = "qemu-img info -U '" + *path + "' 2>&1";
    std::string out;
    if (FILE* f = popen(cmd.c_str(), "r")) {
      char buf[512];
      while (std::fgets(buf, sizeof buf, f) != nullptr) out += buf;
      pclose(f);
    }
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

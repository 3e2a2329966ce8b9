// End to end on a real libvirtd + QEMU (qemu:///system), through the broker's HTTP API and its
// host reconciler. Start the daemon with tools/start_libvirtd.sh (as root); without a reachable
// qemu:///system the test prints why and passes without checking anything.
//
// The test defines a diskless 64 MiB domain atrium-hosts-e2e-<pid>-<time> with SPICE on port
// 5697 (inside the default display range 5500-5699) and an initial password, directly through
// libvirt; the broker imports it as an unmanaged VM. Then, through the API: power on, check with
// `virsh domstate`, speak SPICE to the port, shut down (the guest has no OS and ignores ACPI, so
// the reconciler destroys it after the shutdown timeout), power on again, `virsh destroy` it
// behind the broker's back and watch the broker record the observation and the drift. Every
// domain named atrium-hosts-e2e-* is destroyed and undefined at the end, also on failure.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>
#include <thread>

#include "adapters/libvirt_hypervisor.h"
#include "api/daemon.h"
#include "support/test_support.h"

using namespace atrium;
using namespace atrium::adapters;
using atrium::testing::TestBroker;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr const char* kPrefix = "atrium-hosts-e2e-";
constexpr int kSpicePort = 5697;

class DomainsGuard {
 public:
  explicit DomainsGuard(HypervisorConnection& conn) : conn_(conn) { sweep(); }
  ~DomainsGuard() { sweep(); }
  DomainsGuard(const DomainsGuard&) = delete;
  DomainsGuard& operator=(const DomainsGuard&) = delete;
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

bool kvm_usable() {
  int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

std::string shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
  ::pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string virsh_domstate(const std::string& name) {
  return shell("virsh -c qemu:///system domstate " + name);
}

// Sends a SPICE link header for the main channel and returns the first reply bytes.
std::string spice_hello(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return {};
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return {};
  }
  // "REDQ", major 2, minor 2, size 18, then SpiceLinkMess: connection 0, channel main (1),
  // id 0, no caps, caps offset 18. Integers little endian.
  const unsigned char msg[] = {'R', 'E', 'D', 'Q', 2, 0, 0, 0, 2, 0, 0, 0, 18, 0, 0, 0,
                               0,   0,   0,   0,   1, 0, 0, 0, 0, 0, 0, 0, 0,  0, 0, 0, 18, 0, 0, 0};
  std::string reply;
  if (::send(fd, msg, sizeof msg, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof msg)) {
    char buf[16];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) reply.assign(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return reply;
}

template <typename F>
json poll(TestBroker& b, const std::string& path, F pred, std::chrono::seconds limit = 30s) {
  json last;
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    auto r = b.call("GET", path);
    last = r.json();
    if (r.status == 200 && pred(last)) return last;
    std::this_thread::sleep_for(50ms);
  }
  FAIL("condition not reached on " << path << ": " << last.dump());
  return last;
}

}  // namespace

TEST_CASE("qemu:///system through the broker: import, power on/off via the API, SPICE, drift behind its back") {
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
  if (!caps.ok() || caps->hypervisor != "QEMU") {
    MESSAGE("SKIPPED: qemu:///system is not a usable QEMU driver");
    return;
  }
  DomainsGuard guard(conn);
  const std::string name = std::string(kPrefix) + std::to_string(::getpid()) + "-" +
                           std::to_string(std::time(nullptr));
  const std::string type = kvm_usable() ? "kvm" : "qemu";
  const std::string xml =
      "<domain type='" + type + "'><name>" + name + "</name>"
      "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
      "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
      "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
      "<devices><graphics type='spice' port='" + std::to_string(kSpicePort) +
      "' autoport='no' listen='127.0.0.1' passwd='initial-secret'/>"
      "<video><model type='qxl'/></video></devices></domain>";
  auto def = conn.define(xml);
  REQUIRE_MESSAGE(def.ok(), (def.ok() ? "" : def.error().message));

  TestBroker b([](api::DaemonConfig& cfg) {
    cfg.hosts.resync_interval = 1s;
    cfg.hosts.poll_interval = 20ms;
    cfg.hosts.shutdown_timeout = 3s;  // the diskless guest ignores ACPI: destroy after 3 s
    cfg.hosts.connect_timeout = 30s;
  });
  auto add = b.call("POST", "/v1/hosts", {{"name", "local-qemu"}, {"uri", "qemu:///system"}});
  REQUIRE(add.status == 202);
  std::string host_id = add.json()["host_id"];
  json op = poll(b, add.header("location"), [](const json& j) { return j["state"] != "pending"; });
  REQUIRE_MESSAGE(op["state"] == "succeeded", op.dump());
  json host = b.call("GET", "/v1/hosts/" + host_id).json();
  CHECK(host["state"] == "up");
  CHECK(host["capabilities"]["hypervisor"] == "QEMU");
  MESSAGE("host capabilities: " << host["capabilities"].dump());

  // Imported as unmanaged, shut off, with its fixed SPICE port.
  json vm;
  poll(b, "/v1/vms?host_id=" + host_id + "&limit=1000", [&](const json& j) {
    for (const auto& v : j["items"]) {
      if (v["name"] == name) vm = v;
    }
    return !vm.is_null();
  });
  CHECK(vm["managed"] == false);
  CHECK(vm["observed_state"] == "shut_off");
  std::string vm_path = "/v1/vms/" + vm["id"].get<std::string>();

  // Power on through the API; virsh agrees.
  auto p = b.call("POST", vm_path + "/power", {{"action", "start"}});
  REQUIRE(p.status == 202);
  op = poll(b, p.header("location"), [](const json& j) { return j["state"] != "pending" && j["state"] != "running"; });
  REQUIRE_MESSAGE(op["state"] == "succeeded", op.dump());
  CHECK(virsh_domstate(name) == "running");
  vm = poll(b, vm_path, [](const json& j) { return j["display_port"] == kSpicePort; });
  CHECK(vm["observed_state"] == "running");
  CHECK(vm["host_address"] == "127.0.0.1");
  std::string hello = spice_hello(kSpicePort);
  REQUIRE(hello.size() >= 4);
  CHECK(hello.substr(0, 4) == "REDQ");

  // Power off through the API: shutdown, then destroy after the timeout.
  p = b.call("POST", vm_path + "/power", {{"action", "shutdown"}});
  REQUIRE(p.status == 202);
  op = poll(b, p.header("location"), [](const json& j) { return j["state"] != "pending" && j["state"] != "running"; });
  CHECK_MESSAGE(op["state"] == "succeeded", op.dump());
  CHECK(virsh_domstate(name) == "shut off");

  // On again, then destroyed behind the broker's back.
  p = b.call("POST", vm_path + "/power", {{"action", "start"}});
  REQUIRE(p.status == 202);
  op = poll(b, p.header("location"), [](const json& j) { return j["state"] == "succeeded" || j["state"] == "failed"; });
  REQUIRE(op["state"] == "succeeded");
  CHECK(virsh_domstate(name) == "running");
  std::string out = shell("virsh -c qemu:///system destroy " + name);
  MESSAGE("virsh destroy: " << out);
  vm = poll(b, vm_path, [](const json& j) { return j["observed_state"] == "shut_off"; });
  auto events = poll(b, "/v1/streams/vm-" + vm["id"].get<std::string>() + "?limit=1000", [](const json& j) {
    for (const auto& e : j["items"]) {
      if (e["type"] == "VmDriftResolved") return true;
    }
    return false;
  });
  bool drift = false, resolved = false;
  for (const auto& e : events["items"]) {
    if (e["type"] == "VmDriftDetected") drift = drift || e["data"]["observed"] == "shut_off";
    if (e["type"] == "VmDriftResolved") resolved = true;
  }
  CHECK(drift);
  CHECK(resolved);  // given up: the VM is unmanaged and policy leaves it alone
  CHECK(virsh_domstate(name) == "shut off");  // and indeed it was not started again
}

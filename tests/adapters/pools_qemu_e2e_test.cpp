// End to end for desktop pools on a real libvirtd + QEMU (qemu:///system), through the broker's
// HTTP API, its pool worker and its host reconciler. Start the daemon with
// tools/start_libvirtd.sh (as root); without a reachable qemu:///system the test prints why and
// passes without checking anything.
//
// Through the API: add host qemu:///system with display ports 5620-5639 (clear of 5599 and
// 5697, which the other QEMU e2e tests use), create a floating pool of two diskless 64 MiB
// standby VMs (min_ready 0, min_standby 2, max_size 2, power_policy shutdown_on_logoff) from a
// template domain XML, entitle a user and wait until both are defined on the host. Launch as the
// user: the VM is defined with its allocated SPICE port and the ticket as passwd, then started.
// Checked for real:
//   - the launch answer and its .vv connection file agree (host, port, ticket);
//   - `virsh domstate` says running, `virsh domdisplay --include-password` and
//     `virsh dumpxml --security-info` show the port and the ticket as passwd;
//   - SPICE: the link handshake answers "REDQ", and the ticket really authenticates: the
//     server's RSA public key from the link reply encrypts the ticket (RSA-OAEP via the
//     `openssl` command, as SPICE clients do) and the server answers SPICE_LINK_ERR_OK (0); a
//     wrong ticket gets SPICE_LINK_ERR_PERMISSION_DENIED (7). Without the `openssl` command
//     only the "REDQ" reply and the virsh views of the password are checked.
//   - a second launch reconnects (200, same session and VM) and sets a fresh ticket on the
//     running VM (virDomainUpdateDeviceFlags): the new ticket authenticates, the old one not.
// Then logoff (DELETE /v1/sessions/{id}): the policy shuts the VM down; the diskless guest
// ignores ACPI, so the reconciler destroys it after its (here 3 s) shutdown timeout; `virsh
// domstate` must say "shut off" within 60 s. Finally the pool is deleted and its domains must be
// gone from the host. Every domain named atrium-pool-e2e-<pid>-* is destroyed and undefined at
// the end, also on failure. (The prefix is not atrium-e2e-*: libvirt_qemu_e2e_test sweeps that
// one, and ctest may run both at once.) On a failed check the broker's event log is printed.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>

#include "adapters/libvirt_hypervisor.h"
#include "api/daemon.h"
#include "support/test_support.h"

using namespace atrium;
using namespace atrium::adapters;
using atrium::testing::TempDir;
using atrium::testing::TestBroker;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr int kFirstPort = 5620;
constexpr int kLastPort = 5639;

// Destroys and undefines every domain whose name starts with the prefix, now and when it dies.
class DomainsGuard {
 public:
  DomainsGuard(HypervisorConnection& conn, std::string prefix) : conn_(conn), prefix_(std::move(prefix)) {
    sweep();
  }
  ~DomainsGuard() { sweep(); }
  DomainsGuard(const DomainsGuard&) = delete;
  DomainsGuard& operator=(const DomainsGuard&) = delete;
  void sweep() {
    auto doms = conn_.list_domains();
    if (!doms) return;
    for (const auto& d : *doms) {
      if (d.name.rfind(prefix_, 0) != 0) continue;
      if (d.state != DomainState::shut_off) (void)conn_.destroy(d.name);
      (void)conn_.undefine(d.name);
    }
  }

 private:
  HypervisorConnection& conn_;
  std::string prefix_;
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

std::string virsh(const std::string& args) { return shell("virsh -c qemu:///system " + args); }

uint32_t le32(const unsigned char* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

bool recv_all(int fd, unsigned char* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, buf + got, n - got, 0);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

// One SPICE main-channel link on 127.0.0.1:port, and optionally the legacy ticket auth.
struct SpiceResult {
  std::string magic;          // of the server's link reply: "REDQ"
  int64_t link_error = -1;    // SpiceLinkReply.error (0 = OK)
  int64_t auth_result = -1;   // after sending the encrypted ticket (0 = OK, 7 = permission denied)
  std::string note;           // why auth was not tried
};

SpiceResult spice_link(int port, const std::string* ticket) {
  SpiceResult res;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return res;
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    res.note = "connect failed";
    ::close(fd);
    return res;
  }
  // SpiceLinkHeader {"REDQ", major 2, minor 2, size 18} + SpiceLinkMess {connection 0, channel
  // main (1), id 0, no common or channel caps, caps offset 18}; little endian. Without the
  // auth-selection capability the server expects the legacy ticket right after its reply.
  // SpiceLinkMess is packed: u32 connection_id, u8 channel_type, u8 channel_id, u32
  // num_common_caps, u32 num_channel_caps, u32 caps_offset = 18 bytes. (The 20-byte body the
  // other QEMU e2e tests send gets "REDQ" back too, but its 2 extra bytes would be read as the
  // start of the encrypted ticket.)
  const unsigned char msg[] = {'R', 'E', 'D', 'Q', 2, 0, 0, 0, 2, 0, 0, 0, 18, 0, 0, 0,
                               0,   0,   0,   0,   1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 18, 0, 0, 0};
  unsigned char head[16];
  if (::send(fd, msg, sizeof msg, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof msg) || !recv_all(fd, head, 16)) {
    res.note = "no link reply";
    ::close(fd);
    return res;
  }
  res.magic.assign(reinterpret_cast<char*>(head), 4);
  uint32_t size = le32(head + 12);
  // SpiceLinkReply: error (4), pub_key (SPICE_TICKET_PUBKEY_BYTES = 162, DER
  // SubjectPublicKeyInfo of a 1024-bit RSA key), caps counts and offset, caps.
  std::string body(size, '\0');
  if (size < 4 + 162 || size > 4096 ||
      !recv_all(fd, reinterpret_cast<unsigned char*>(body.data()), size)) {
    res.note = "short link reply";
    ::close(fd);
    return res;
  }
  res.link_error = le32(reinterpret_cast<const unsigned char*>(body.data()));
  if (ticket == nullptr || res.link_error != 0) {
    ::close(fd);
    return res;
  }
  if (shell("command -v openssl").empty()) {
    res.note = "no openssl command to encrypt the ticket";
    ::close(fd);
    return res;
  }
  // The ticket, NUL terminated, RSA-OAEP (SHA-1) encrypted with the server's key: 128 bytes.
  TempDir tmp;
  std::string key = tmp.str() + "/key.der", in = tmp.str() + "/ticket", out = tmp.str() + "/enc";
  std::ofstream(key, std::ios::binary).write(body.data() + 4, 162);
  std::ofstream(in, std::ios::binary).write(ticket->c_str(), static_cast<std::streamsize>(ticket->size() + 1));
  std::string o = shell("openssl pkeyutl -encrypt -pubin -keyform DER -inkey " + key +
                        " -pkeyopt rsa_padding_mode:oaep -in " + in + " -out " + out);
  std::ifstream f(out, std::ios::binary);
  std::string enc((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (enc.size() != 128) {
    res.note = "openssl could not encrypt the ticket: " + o;
    ::close(fd);
    return res;
  }
  unsigned char result[4];
  if (::send(fd, enc.data(), enc.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(enc.size()) && recv_all(fd, result, 4)) {
    res.auth_result = le32(result);
  } else {
    res.note = "no auth result";
  }
  ::close(fd);
  return res;
}

// The broker's event log, one line per event (the last `max` of them), for failure reports.
std::string event_log(TestBroker& b, size_t max = 120) {
  auto r = b.call("GET", "/v1/events?limit=1000");
  json j = r.json();
  if (r.status != 200 || !j.contains("items")) return "GET /v1/events: " + std::to_string(r.status) + " " + r.body;
  std::vector<std::string> lines;
  for (const auto& e : j["items"]) {
    std::string d = e["data"].dump();
    if (d.size() > 400) d = d.substr(0, 400) + "...";
    lines.push_back(std::to_string(e["position"].get<uint64_t>()) + " " + e["type"].get<std::string>() + " " +
                    e["stream"].get<std::string>() + " " + d);
  }
  std::string out;
  for (size_t i = lines.size() > max ? lines.size() - max : 0; i < lines.size(); ++i) out += lines[i] + "\n";
  return out;
}

template <typename F>
json poll(TestBroker& b, const std::string& path, F pred, std::chrono::seconds limit = 60s) {
  json last;
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    auto r = b.call("GET", path);
    last = r.json();
    if (r.status == 200 && pred(last)) return last;
    std::this_thread::sleep_for(100ms);
  }
  FAIL("condition not reached on " << path << ": " << last.dump());
  return last;
}

bool wait_domstate(const std::string& name, const std::string& want, std::chrono::seconds limit,
                   std::string* last) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    *last = virsh("domstate " + name);
    if (*last == want) return true;
    std::this_thread::sleep_for(200ms);
  }
  return false;
}

void check_vv(const json& launch) {
  std::string vv = launch["connection_file"];
  std::string host = launch["host"], ticket = launch["ticket"];
  int port = launch["port"];
  CHECK(vv.rfind("[virt-viewer]\n", 0) == 0);
  CHECK(vv.find("type=spice\n") != std::string::npos);
  CHECK(vv.find("host=" + host + "\n") != std::string::npos);
  CHECK(vv.find("port=" + std::to_string(port) + "\n") != std::string::npos);
  CHECK(vv.find("password=" + ticket + "\n") != std::string::npos);
  CHECK(vv.find("delete-this-file=1\n") != std::string::npos);
}

}  // namespace

TEST_CASE("desktop pool on qemu:///system: provision, launch with a SPICE ticket, logoff powers off, delete") {
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
  // The pool name is the prefix of its VMs' names (domain name = pool name + "-" + 8 hex).
  const std::string pool_name = "atrium-pool-e2e-" + std::to_string(::getpid());
  DomainsGuard guard(conn, pool_name + "-");
  const std::string type = kvm_usable() ? "kvm" : "qemu";
  // Name and uuid are replaced per member; the graphics element is replaced by the broker's
  // SPICE display (port, passwd, listen = PoolWorkerOptions::spice_listen, set to 127.0.0.1).
  const std::string tmpl =
      "<domain type='" + type + "'><name>" + pool_name + "-template</name>"
      "<uuid>22222222-2222-4222-8222-222222222222</uuid>"
      "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
      "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
      "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
      "<devices><graphics type='spice' autoport='yes' listen='127.0.0.1'/>"
      "<video><model type='qxl'/></video></devices></domain>";

  TestBroker b([](api::DaemonConfig& cfg) {
    cfg.hosts.resync_interval = 1s;
    cfg.hosts.poll_interval = 20ms;
    cfg.hosts.shutdown_timeout = 3s;  // the diskless guest ignores ACPI: destroy after 3 s
    cfg.hosts.connect_timeout = 30s;
    cfg.pools.interval = 100ms;
    cfg.pools.spice_listen = "127.0.0.1";
  });
  // Printed with any failed check only (doctest evaluates INFO lazily); MESSAGE would print it
  // too, so the launch answers go into INFO as well.
  INFO("broker event log (last events):\n" << event_log(b));

  auto add = b.call("POST", "/v1/hosts", {{"name", "local-qemu"}, {"uri", "qemu:///system"},
                                          {"display_ports", {{"first", kFirstPort}, {"last", kLastPort}}}});
  REQUIRE_MESSAGE(add.status == 202, add.body);
  std::string host_id = add.json()["host_id"];
  json host = poll(b, "/v1/hosts/" + host_id, [](const json& j) { return j["state"] == "up"; });
  CHECK(host["address"] == "127.0.0.1");

  auto created = b.call("POST", "/v1/pools",
                        {{"name", pool_name},
                         {"kind", "floating"},
                         {"template", {{"domain_xml", tmpl}}},
                         {"host_ids", {host_id}},
                         {"min_ready", 0},
                         {"min_standby", 2},
                         {"max_size", 2},
                         {"power_policy", "shutdown_on_logoff"}});
  REQUIRE_MESSAGE(created.status == 201, created.body);
  std::string pool = created.json()["id"];
  auto [uid, tok] = b.user("pool-e2e-ann");
  REQUIRE(b.call("POST", "/v1/pools/" + pool + "/entitlements", {{"user_id", uid}}).status == 201);

  // Both members provisioned: defined shut off on the host (standby), names from the pool.
  json p = poll(b, "/v1/pools/" + pool, [](const json& j) { return j["size"]["standby"] == 2; }, 90s);
  CHECK(p["size"]["total"] == 2);
  json members = b.call("GET", "/v1/pools/" + pool + "/vms").json()["items"];
  REQUIRE(members.size() == 2);
  for (const auto& m : members) {
    std::string n = m["name"];
    CHECK(n.rfind(pool_name + "-", 0) == 0);
    CHECK(m["state"] == "ready");
    CHECK(virsh("domstate " + n) == "shut off");
  }

  // Launch: a standby VM is defined with its allocated port and the ticket, then started.
  auto l1 = b.call("POST", "/v1/launches", {{"pool_id", pool}}, tok);
  REQUIRE_MESSAGE(l1.status == 201, l1.body);
  json launch = l1.json();
  INFO("launch: " << [&] { json c = launch; c.erase("connection_file"); return c.dump(); }());
  std::string sid = launch["session_id"], vm_id = launch["vm_id"], ticket = launch["ticket"];
  int port = launch["port"];
  CHECK(launch["protocol"] == "spice");
  CHECK(launch["host"] == "127.0.0.1");
  CHECK(port >= kFirstPort);
  CHECK(port <= kLastPort);
  CHECK(ticket.size() == 24);
  CHECK(launch["ticket_applied"] == true);
  check_vv(launch);
  std::string name;
  for (const auto& m : members) {
    if (m["vm_id"] == vm_id) name = m["name"];
  }
  REQUIRE(!name.empty());
  CHECK(virsh("domstate " + name) == "running");
  // libvirt's view of the display: the allocated port and the ticket as passwd.
  std::string display = virsh("domdisplay --include-password " + name);
  CHECK_MESSAGE(display.find(":" + std::to_string(port)) != std::string::npos, display);
  CHECK_MESSAGE(display.find(ticket) != std::string::npos, display);
  std::string xml = virsh("dumpxml --security-info " + name);
  CHECK_MESSAGE(xml.find("port='" + std::to_string(port) + "'") != std::string::npos, xml);
  CHECK_MESSAGE(xml.find("passwd='" + ticket + "'") != std::string::npos, xml);
  CHECK_MESSAGE(xml.find("passwdValidTo=") != std::string::npos, xml);

  // SPICE on the port: the link reply, then the ticket authenticates and a wrong one does not.
  const std::string wrong = "wrong-ticket-000000000000";
  SpiceResult ok = spice_link(port, &ticket);
  CHECK(ok.magic == "REDQ");
  CHECK(ok.link_error == 0);
  if (ok.auth_result < 0 && ok.note.find("openssl") != std::string::npos) {
    MESSAGE("SPICE ticket auth not checked: " << ok.note);
  } else {
    CHECK_MESSAGE(ok.auth_result == 0, ok.note);
    SpiceResult bad = spice_link(port, &wrong);
    CHECK_MESSAGE(bad.auth_result == 7, bad.note);  // SPICE_LINK_ERR_PERMISSION_DENIED
  }

  // A second launch reconnects and sets a fresh ticket on the running VM.
  auto l2 = b.call("POST", "/v1/launches", {{"pool_id", pool}}, tok);
  REQUIRE_MESSAGE(l2.status == 200, l2.body);
  json again = l2.json();
  INFO("reconnect: " << [&] { json c = again; c.erase("connection_file"); return c.dump(); }());
  CHECK(again["session_id"] == sid);
  CHECK(again["vm_id"] == vm_id);
  CHECK(again["reconnected"] == true);
  CHECK(again["port"] == port);
  std::string ticket2 = again["ticket"];
  CHECK(ticket2 != ticket);
  check_vv(again);
  CHECK_MESSAGE(again["ticket_applied"] == true, again.value("ticket_note", ""));
  if (again["ticket_applied"] == true) {
    xml = virsh("dumpxml --security-info " + name);
    CHECK_MESSAGE(xml.find("passwd='" + ticket2 + "'") != std::string::npos, xml);
    SpiceResult ok2 = spice_link(port, &ticket2);
    if (ok2.auth_result >= 0 || ok2.note.find("openssl") == std::string::npos) {
      CHECK_MESSAGE(ok2.auth_result == 0, ok2.note);
      SpiceResult old = spice_link(port, &ticket);
      CHECK_MESSAGE(old.auth_result == 7, old.note);
    }
  }

  // Logoff: the session ends, the floating VM is freed and, by policy, powered off (shutdown,
  // ignored by the diskless guest, then destroy after the reconciler's shutdown timeout).
  auto off = b.call("DELETE", "/v1/sessions/" + sid, nullptr, tok);
  CHECK_MESSAGE(off.status == 204, off.body);
  json s = b.call("GET", "/v1/sessions/" + sid, nullptr, tok).json();
  CHECK(s["state"] == "ended");
  CHECK(s["end_reason"] == "logoff");
  std::string last;
  bool stopped = wait_domstate(name, "shut off", 60s, &last);
  CHECK_MESSAGE(stopped, "virsh domstate " << name << " still says '" << last << "' 60 s after logoff");
  json vm = poll(b, "/v1/vms/" + vm_id, [](const json& j) { return j["observed_state"] == "shut_off"; });
  CHECK(vm["desired_state"] == "shut_off");
  json freed = poll(b, "/v1/pools/" + pool, [](const json& j) { return j["size"]["standby"] == 2; });
  CHECK(freed["size"]["in_use"] == 0);
  for (const auto& m : b.call("GET", "/v1/pools/" + pool + "/vms").json()["items"]) {
    CHECK(m["assigned_user_id"].is_null());
    CHECK(virsh("domstate " + m["name"].get<std::string>()) == "shut off");  // nothing restarted it
  }

  // Delete the pool: its members are removed from the host, then the pool is gone.
  auto del = b.call("DELETE", "/v1/pools/" + pool);
  CHECK(del.status == 202);
  bool gone = false;
  for (int i = 0; i < 600 && !gone; ++i) {
    gone = b.call("GET", "/v1/pools/" + pool).status == 404;
    if (!gone) std::this_thread::sleep_for(100ms);
  }
  CHECK_MESSAGE(gone, "pool still there 60 s after DELETE: " << b.call("GET", "/v1/pools/" + pool).body);
  std::string left = virsh("list --all --name");
  for (const auto& m : members) {
    CHECK_MESSAGE(left.find(m["name"].get<std::string>()) == std::string::npos, left);
  }
}

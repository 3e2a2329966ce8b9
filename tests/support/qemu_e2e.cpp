#include "support/qemu_e2e.h"

#include "api/daemon.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <system_error>
#include <vector>

namespace atrium::testing {

using adapters::DomainState;
using adapters::LibvirtConnection;
using namespace std::chrono_literals;

// ---- connection ---------------------------------------------------------------------------

std::unique_ptr<QemuSystem> open_qemu_system_or_skip() {
  auto q = std::make_unique<QemuSystem>();
  q->hv = std::make_unique<adapters::LibvirtHypervisor>();
  adapters::ConnectOptions opts;
  opts.uri = "qemu:///system";
  opts.timeout = 30s;
  auto connected = q->hv->connect_libvirt(opts);
  if (!connected) {
    MESSAGE("SKIPPED: cannot connect to qemu:///system ("
            << connected.error().message
            << "); run tools/start_libvirtd.sh as root to enable this test");
    return nullptr;
  }
  q->conn = std::move(*connected);
  auto caps = q->conn->capabilities();
  REQUIRE_MESSAGE(caps.ok(), "qemu:///system is reachable but its capabilities are not: "
                                 << (caps.ok() ? "" : caps.error().message));
  if (caps->hypervisor != "QEMU") {
    MESSAGE("SKIPPED: qemu:///system answered with hypervisor " << caps->hypervisor);
    return nullptr;
  }
  q->caps = *caps;
  return q;
}

bool kvm_usable() {
  int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

std::string domain_type() {
  return kvm_usable() ? "kvm" : "qemu";
}

// ---- shell --------------------------------------------------------------------------------

std::string shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
  ::pclose(p);
  while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
  return out;
}

bool have_command(const std::string& name) {
  return run_command("command -v '" + name + "' >/dev/null 2>&1") == 0;
}

std::string virsh(const std::string& args) {
  return shell("virsh -c qemu:///system " + args);
}

std::string qemu_img_info(const std::string& path) {
  return shell("qemu-img info -U '" + path + "'");
}

bool wait_domstate(const std::string& name, const std::string& want, std::chrono::seconds limit,
                   std::string* last) {
  auto end = std::chrono::steady_clock::now() + limit;
  for (;;) {
    *last = virsh("domstate " + name);
    if (*last == want) return true;
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(200ms);
  }
}

// ---- domain events ------------------------------------------------------------------------

adapters::DomainEventCallback DomainEvents::callback() {
  return [this](const adapters::DomainEvent& e) {
    {
      std::lock_guard lock(m_);
      events_.push_back(e);
    }
    cv_.notify_all();
  };
}

std::size_t DomainEvents::mark() {
  std::lock_guard lock(m_);
  return events_.size();
}

std::optional<std::size_t> DomainEvents::wait(const std::string& name, const std::string& reason,
                                              const std::string& detail,
                                              std::chrono::milliseconds timeout, std::size_t from) {
  std::unique_lock lock(m_);
  std::optional<std::size_t> at;
  cv_.wait_for(lock, timeout, [&] {
    for (std::size_t i = from; i < events_.size(); ++i) {
      const auto& e = events_[i];
      if (e.name == name && e.reason == reason && (detail.empty() || e.detail == detail)) {
        at = i;
        return true;
      }
    }
    return false;
  });
  return at;
}

std::string DomainEvents::trail(const std::string& name, std::size_t from) {
  std::lock_guard lock(m_);
  std::string out;
  for (std::size_t i = from; i < events_.size(); ++i) {
    if (events_[i].name != name) continue;
    out += (out.empty() ? "" : " ") + std::to_string(i) + ":" + events_[i].reason + "/" +
           events_[i].detail;
  }
  return out.empty() ? "(none)" : out;
}

// ---- cleanup ------------------------------------------------------------------------------

namespace {

// The pid in <family><pid>[-...], if the name has that form.
std::optional<long> name_pid(const std::string& name, const std::string& family) {
  if (name.rfind(family, 0) != 0) return std::nullopt;
  size_t i = family.size(), j = i;
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j])) && j - i < 9) ++j;
  if (j == i || (j < name.size() && name[j] != '-')) return std::nullopt;
  return std::stol(name.substr(i, j - i));
}

// Whether pid is a running atrium_tests (then its objects are not leftovers).
bool live_test_process(long pid) {
  if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno != EPERM) return false;
  std::ifstream f("/proc/" + std::to_string(pid) + "/comm");
  std::string comm;
  if (!std::getline(f, comm)) return true;  // cannot tell: leave its objects alone
  return comm == "atrium_tests";
}

struct StoragePoolRef {
  std::string name;
  std::string path;  // target directory
  bool active = false;
  bool persistent = false;
};

std::string target_path(const std::string& xml) {
  auto t = xml.find("<target>");
  if (t == std::string::npos) return {};
  auto b = xml.find("<path>", t);
  auto e = xml.find("</path>", t);
  if (b == std::string::npos || e == std::string::npos || e < b) return {};
  return xml.substr(b + 6, e - b - 6);
}

Result<std::vector<StoragePoolRef>> list_storage_pools(LibvirtConnection& conn) {
  return conn.call<std::vector<StoragePoolRef>>(
      "virConnectListAllStoragePools", [](virConnectPtr c) -> Result<std::vector<StoragePoolRef>> {
        virStoragePoolPtr* pools = nullptr;
        int n = virConnectListAllStoragePools(c, &pools, 0);
        if (n < 0) return adapters::libvirt_error("virConnectListAllStoragePools");
        std::vector<StoragePoolRef> out;
        for (int i = 0; i < n; ++i) {
          StoragePoolRef r;
          if (const char* name = virStoragePoolGetName(pools[i])) r.name = name;
          r.active = virStoragePoolIsActive(pools[i]) == 1;
          r.persistent = virStoragePoolIsPersistent(pools[i]) == 1;
          if (char* xml = virStoragePoolGetXMLDesc(pools[i], 0)) {
            r.path = target_path(xml);
            std::free(xml);
          }
          out.push_back(std::move(r));
          virStoragePoolFree(pools[i]);
        }
        std::free(pools);
        return out;
      });
}

// Destroys (if active) and undefines (if persistent) the storage pool `name`.
Status remove_storage_pool(LibvirtConnection& conn, const std::string& name) {
  Result<int> r = conn.call<int>("virStoragePoolDestroy", [name](virConnectPtr c) -> Result<int> {
    virStoragePoolPtr p = virStoragePoolLookupByName(c, name.c_str());
    if (p == nullptr) return 0;  // already gone
    Status st = Status::Ok();
    if (virStoragePoolIsActive(p) == 1 && virStoragePoolDestroy(p) != 0) {
      st = adapters::libvirt_error("virStoragePoolDestroy");
    }
    // A transient pool is gone after destroy; a persistent one stays defined.
    if (st.ok() && virStoragePoolIsPersistent(p) == 1 && virStoragePoolUndefine(p) != 0) {
      st = adapters::libvirt_error("virStoragePoolUndefine");
    }
    virStoragePoolFree(p);
    if (!st.ok()) return st.error();
    return 0;
  });
  if (!r.ok()) return r.error();
  return Status::Ok();
}

}  // namespace

E2eGuard::E2eGuard(LibvirtConnection& conn, std::string family)
    : conn_(conn), family_(std::move(family)), prefix_(family_ + std::to_string(::getpid()) + "-") {
  sweep(true);
  if (!stale_.empty()) {
    std::string names;
    for (const auto& n : stale_) names += " " + n;
    MESSAGE("removed leftovers of an earlier run:" << names);
  }
}

E2eGuard::~E2eGuard() {
  sweep(false);
}

void E2eGuard::sweep(bool include_stale) {
  const long self = ::getpid();
  auto ours = [&](const std::string& name) {
    auto pid = name_pid(name, family_);
    if (!pid) return false;
    if (*pid == self) return true;
    if (!include_stale || live_test_process(*pid)) return false;
    stale_.push_back(name);
    return true;
  };
  // Domains first: they may use volumes of the storage pools.
  if (auto doms = conn_.list_domains(); doms.ok()) {
    for (const auto& d : *doms) {
      if (!ours(d.name)) continue;
      if (d.state != DomainState::shut_off) (void)conn_.destroy(d.name);
      (void)conn_.undefine(d.name);  // fails for a transient domain, gone after destroy
    }
  }
  if (auto pools = list_storage_pools(conn_); pools.ok()) {
    for (const auto& p : *pools) {
      if (!ours(p.name)) continue;
      (void)remove_storage_pool(conn_, p.name);
      std::filesystem::path dir(p.path);
      if (!p.path.empty() && dir.filename().string().rfind(family_, 0) == 0) {
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
      }
    }
  }
}

Result<std::unique_ptr<TempDirPool>> TempDirPool::create(LibvirtConnection& conn,
                                                         const std::string& name) {
  std::string tmpl = (std::filesystem::temp_directory_path() / (name + "-XXXXXX")).string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return Error::make(Code::internal, "mkdtemp " + tmpl + " failed");
  }
  std::error_code ec;
  std::filesystem::permissions(tmpl, std::filesystem::perms(0755), ec);
  std::unique_ptr<TempDirPool> pool(new TempDirPool(conn, name, tmpl));  // removes the dir
  std::string xml =
      "<pool type='dir'><name>" + name + "</name><target><path>" + tmpl + "</path></target></pool>";
  Result<int> r = conn.call<int>("virStoragePoolCreateXML", [xml](virConnectPtr c) -> Result<int> {
    virStoragePoolPtr p = virStoragePoolCreateXML(c, xml.c_str(), 0);
    if (p == nullptr) return adapters::libvirt_error("virStoragePoolCreateXML");
    virStoragePoolFree(p);
    return 0;
  });
  if (!r.ok()) return r.error();
  pool->created_ = true;
  return pool;
}

TempDirPool::~TempDirPool() {
  if (created_) {
    Status st = remove_storage_pool(conn_, name_);
    if (!st.ok()) MESSAGE("storage pool " << name_ << " not removed: " << st.error().message);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

Result<std::string> TempDirPool::create_volume(const std::string& volume, std::uint64_t bytes,
                                               const std::string& format) {
  std::string xml = "<volume><name>" + volume + "</name><capacity unit='bytes'>" +
                    std::to_string(bytes) + "</capacity><target><format type='" + format +
                    "'/></target></volume>";
  return conn_.call<std::string>(
      "virStorageVolCreateXML", [pool = name_, xml](virConnectPtr c) -> Result<std::string> {
        virStoragePoolPtr p = virStoragePoolLookupByName(c, pool.c_str());
        if (p == nullptr) return adapters::libvirt_error("virStoragePoolLookupByName");
        virStorageVolPtr v = virStorageVolCreateXML(p, xml.c_str(), 0);
        Result<std::string> out = std::string();
        if (v == nullptr) {
          out = adapters::libvirt_error("virStorageVolCreateXML");
        } else if (char* path = virStorageVolGetPath(v)) {
          out = std::string(path);
          std::free(path);
        } else {
          out = adapters::libvirt_error("virStorageVolGetPath");
        }
        if (v != nullptr) virStorageVolFree(v);
        virStoragePoolFree(p);
        return out;
      });
}

Result<std::vector<std::string>> TempDirPool::volumes() {
  return conn_.call<std::vector<std::string>>(
      "virStoragePoolListAllVolumes",
      [pool = name_](virConnectPtr c) -> Result<std::vector<std::string>> {
        virStoragePoolPtr p = virStoragePoolLookupByName(c, pool.c_str());
        if (p == nullptr) return adapters::libvirt_error("virStoragePoolLookupByName");
        Result<std::vector<std::string>> out = std::vector<std::string>();
        virStorageVolPtr* vols = nullptr;
        int n = -1;
        if (virStoragePoolRefresh(p, 0) != 0) {
          out = adapters::libvirt_error("virStoragePoolRefresh");
        } else if ((n = virStoragePoolListAllVolumes(p, &vols, 0)) < 0) {
          out = adapters::libvirt_error("virStoragePoolListAllVolumes");
        }
        for (int i = 0; i < n; ++i) {
          if (const char* name = virStorageVolGetName(vols[i])) out->push_back(name);
          virStorageVolFree(vols[i]);
        }
        std::free(vols);
        virStoragePoolFree(p);
        return out;
      });
}

// ---- SPICE --------------------------------------------------------------------------------

namespace {

void put_le32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint32_t le32(const char* p) {
  auto b = [&](int i) { return static_cast<std::uint32_t>(static_cast<unsigned char>(p[i])); };
  return b(0) | b(1) << 8 | b(2) << 16 | b(3) << 24;
}

bool recv_all(int fd, char* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, buf + got, n - got, 0);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

// SPICE_TICKET_PUBKEY_BYTES: the DER SubjectPublicKeyInfo of the server's 1024-bit RSA key.
constexpr size_t kPubKeyBytes = 162;
constexpr size_t kEncryptedTicketBytes = 128;

// The ticket, NUL terminated, RSA-OAEP (SHA-1) encrypted with the DER public key; empty with
// `note` set when it could not be.
std::string encrypt_ticket(const std::string& der_key, const std::string& ticket,
                           std::string& note) {
  TempDir tmp;
  const std::string key = tmp.str() + "/key.der", in = tmp.str() + "/ticket",
                    out = tmp.str() + "/ticket.enc";
  std::ofstream(key, std::ios::binary)
      .write(der_key.data(), static_cast<std::streamsize>(der_key.size()));
  std::ofstream(in, std::ios::binary)
      .write(ticket.c_str(), static_cast<std::streamsize>(ticket.size() + 1));
  std::string said = shell("openssl pkeyutl -encrypt -pubin -keyform DER -inkey " + key +
                           " -pkeyopt rsa_padding_mode:oaep -in " + in + " -out " + out);
  std::ifstream f(out, std::ios::binary);
  std::string enc((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (enc.size() != kEncryptedTicketBytes) {
    note = "openssl could not encrypt the ticket: " + said;
    return {};
  }
  return enc;
}

}  // namespace

SpiceLink spice_link(int port, const std::optional<std::string>& ticket) {
  SpiceLink res;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    res.note = "socket failed";
    return res;
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    res.note = "connect to port " + std::to_string(port) + " refused";
    return res;
  }
  res.connected = true;
  // SpiceLinkMess, packed, little endian: connection_id u32 (0: a new session), channel_type u8
  // (1: main), channel_id u8, num_common_caps u32, num_channel_caps u32, caps_offset u32 (where
  // caps would start, = the size of the message): 18 bytes. With no auth-selection capability
  // the server expects the legacy encrypted ticket right after its reply, so the message must
  // be exactly as long as its header says: extra bytes would be read as the ticket's start.
  std::string mess;
  put_le32(mess, 0);
  mess.push_back(1);
  mess.push_back(0);
  put_le32(mess, 0);
  put_le32(mess, 0);
  put_le32(mess, 18);
  // SpiceLinkHeader: magic "REDQ", major 2, minor 2, size of the message.
  std::string msg = "REDQ";
  put_le32(msg, 2);
  put_le32(msg, 2);
  put_le32(msg, static_cast<std::uint32_t>(mess.size()));
  msg += mess;
  char head[16];
  if (!send_all(fd, msg) || !recv_all(fd, head, sizeof head)) {
    res.note = "no link reply header";
    return res;
  }
  res.magic.assign(head, 4);
  res.major = le32(head + 4);
  res.minor = le32(head + 8);
  const std::uint32_t size = le32(head + 12);
  // SpiceLinkReply: error u32, pub_key, num_common_caps, num_channel_caps, caps_offset, caps.
  if (size < 4 + kPubKeyBytes || size > 4096) {
    res.note = "link reply of " + std::to_string(size) + " bytes";
    return res;
  }
  std::string body(size, '\0');
  if (!recv_all(fd, body.data(), size)) {
    res.note = "short link reply";
    return res;
  }
  res.link_error = le32(body.data());
  if (!ticket || res.link_error != 0) return res;
  if (!have_command("openssl")) {
    res.no_openssl = true;
    res.note = "no openssl command to encrypt the ticket";
    return res;
  }
  std::string enc = encrypt_ticket(body.substr(4, kPubKeyBytes), *ticket, res.note);
  if (enc.empty()) return res;
  char result[4];
  if (send_all(fd, enc) && recv_all(fd, result, sizeof result)) {
    res.auth_result = le32(result);
  } else {
    res.note = "no authentication result";
  }
  return res;
}

void check_spice_ticket(int port, const std::string& ticket, const std::string& wrong) {
  SpiceLink ok = spice_link(port, ticket);
  CHECK_MESSAGE(ok.magic == "REDQ", "SPICE on port " << port << ": " << ok.note);
  CHECK(ok.link_error == 0);
  if (ok.no_openssl) {
    MESSAGE("SPICE ticket authentication not checked: " << ok.note);
    return;
  }
  CHECK_MESSAGE(ok.auth_result == 0, "ticket " << ticket << " on port " << port << ": " << ok.note);
  SpiceLink bad = spice_link(port, wrong);
  CHECK_MESSAGE(bad.auth_result == kSpiceLinkErrPermissionDenied,
                "ticket " << wrong << " on port " << port << ": " << bad.note);
}

// ---- broker -------------------------------------------------------------------------------

std::string event_log(TestBroker& b, std::size_t max) {
  auto r = b.call("GET", "/v1/events?limit=1000");
  nlohmann::json j = r.json();
  if (r.status != 200 || !j.contains("items")) {
    return "GET /v1/events: " + std::to_string(r.status) + " " + r.body;
  }
  std::vector<std::string> lines;
  for (const auto& e : j["items"]) {
    std::string d = e["data"].dump();
    if (d.size() > 400) d = d.substr(0, 400) + "...";
    lines.push_back(std::to_string(e["position"].get<std::uint64_t>()) + " " +
                    e["type"].get<std::string>() + " " + e["stream"].get<std::string>() + " " + d);
  }
  std::string out;
  for (size_t i = lines.size() > max ? lines.size() - max : 0; i < lines.size(); ++i) {
    out += lines[i] + "\n";
  }
  return out;
}

void fast_qemu_broker(api::DaemonConfig& cfg) {
  using namespace std::chrono_literals;
  cfg.hosts.resync_interval = 1s;
  cfg.hosts.poll_interval = 20ms;
  cfg.hosts.shutdown_timeout = 3s;
  cfg.hosts.connect_timeout = 30s;
  cfg.pools.interval = 100ms;
  cfg.pools.spice_listen = "127.0.0.1";
}

nlohmann::json add_qemu_host(TestBroker& b, int first, int last, const nlohmann::json& extra) {
  nlohmann::json body{{"name", "local-qemu"}, {"uri", "qemu:///system"},
                      {"display_ports", {{"first", first}, {"last", last}}}};
  for (auto& [k, v] : extra.items()) body[k] = v;
  auto add = b.call("POST", "/v1/hosts", body);
  REQUIRE_MESSAGE(add.status == 202, add.body);
  std::string host_id = add.json()["host_id"];
  return poll(b, "/v1/hosts/" + host_id, [](const nlohmann::json& j) { return j["state"] == "up"; });
}

}  // namespace atrium::testing

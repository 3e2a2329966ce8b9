#include "support/test_support.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <system_error>

namespace atrium::testing {

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "atrium-test-XXXXXX").string();
  char* p = ::mkdtemp(tmpl.data());
  if (p == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

TmpfsMount::TmpfsMount(const std::string& size) {
  const std::string opts = "size=" + size + ",mode=0700";
  if (::mount("tmpfs", dir_.str().c_str(), "tmpfs", 0, opts.c_str()) == 0) {
    mounted_ = true;
  } else {
    why_ = std::string("cannot mount a tmpfs (") + std::strerror(errno) + "; needs root)";
  }
}

TmpfsMount::~TmpfsMount() {
  if (mounted_) ::umount2(dir_.str().c_str(), MNT_DETACH);
}

size_t fill_until_full(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return 0;
  std::string zeros(64 * 1024, '\0');
  size_t total = 0;
  for (size_t chunk = zeros.size(); chunk > 0;) {
    ssize_t n = ::write(fd, zeros.data(), chunk);
    if (n > 0) {
      total += static_cast<size_t>(n);
    } else {
      chunk /= 2;  // the last pages: smaller writes until not even one byte fits
    }
  }
  ::close(fd);
  return total;
}

std::map<std::string, std::string> file_contents(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    out[e.path().string()] =
        std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  return out;
}

}  // namespace atrium::testing

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "api/daemon.h"

namespace atrium::testing {

namespace {

int connect_loopback(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Reads until EOF, or until a complete response (by Content-Length) has arrived.
std::string read_response(int fd, int timeout_ms) {
  std::string buf;
  char tmp[65536];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) break;
    ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) break;
    buf.append(tmp, static_cast<size_t>(n));
    auto hend = buf.find("\r\n\r\n");
    if (hend != std::string::npos) {
      std::string head = buf.substr(0, hend);
      for (auto& c : head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      auto cl = head.find("content-length:");
      if (cl != std::string::npos) {
        size_t len = std::strtoul(head.c_str() + cl + 15, nullptr, 10);
        if (buf.size() >= hend + 4 + len) break;
      }
    }
  }
  return buf;
}

HttpReply parse_reply(const std::string& raw) {
  HttpReply r;
  auto hend = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.", 0) != 0 || hend == std::string::npos) return r;
  r.status = std::atoi(raw.c_str() + 9);
  size_t pos = raw.find("\r\n") + 2;
  while (pos < hend) {
    size_t eol = raw.find("\r\n", pos);
    std::string line = raw.substr(pos, eol - pos);
    auto colon = line.find(':');
    if (colon != std::string::npos) {
      std::string k = line.substr(0, colon);
      for (auto& c : k) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      std::string v = line.substr(colon + 1);
      while (!v.empty() && v.front() == ' ') v.erase(0, 1);
      r.headers[k] = v;
    }
    pos = eol + 2;
  }
  r.body = raw.substr(hend + 4);
  return r;
}

}  // namespace

bool send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// Sends a request as curl does: an answer that arrives while the body is still going out (a
// 413 after the head) stops the upload, and is read. false: the connection failed with no
// answer waiting.
bool send_watching_for_answer(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    pollfd p{fd, POLLIN | POLLOUT, 0};
    if (::poll(&p, 1, 5000) <= 0) return false;
    if ((p.revents & POLLIN) != 0) return true;  // an early answer (or EOF): read it
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

namespace {
HttpReply request_on(int fd, const std::string& method, const std::string& path,
                     const std::string& body,
                     const std::vector<std::pair<std::string, std::string>>& headers,
                     int timeout_ms);
}  // namespace

HttpReply http(uint16_t port, const std::string& method, const std::string& path,
               const std::string& body,
               const std::vector<std::pair<std::string, std::string>>& headers, int timeout_ms) {
  return request_on(connect_loopback(port), method, path, body, headers, timeout_ms);
}

HttpReply http_from(const std::string& source, uint16_t port, const std::string& method,
                    const std::string& path, const std::string& body,
                    const std::vector<std::pair<std::string, std::string>>& headers,
                    int timeout_ms) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in from{};
  from.sin_family = AF_INET;
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::inet_pton(AF_INET, source.c_str(), &from.sin_addr) != 1 ||
      ::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    if (fd >= 0) ::close(fd);
    return {};
  }
  return request_on(fd, method, path, body, headers, timeout_ms);
}

namespace {
HttpReply request_on(int fd, const std::string& method, const std::string& path,
                     const std::string& body,
                     const std::vector<std::pair<std::string, std::string>>& headers,
                     int timeout_ms) {
  if (fd < 0) return {};
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  bool has_ct = false;
  for (const auto& [k, v] : headers) {
    req += k + ": " + v + "\r\n";
    if (strcasecmp(k.c_str(), "content-type") == 0) has_ct = true;
  }
  if (!body.empty() && !has_ct) req += "Content-Type: application/json\r\n";
  req += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  HttpReply r;
  if (send_watching_for_answer(fd, req)) r = parse_reply(read_response(fd, timeout_ms));
  ::close(fd);
  return r;
}
}  // namespace

std::string http_raw(uint16_t port, const std::string& bytes, int timeout_ms) {
  int fd = connect_loopback(port);
  if (fd < 0) return {};
  std::string out;
  if (send_all(fd, bytes)) out = read_response(fd, timeout_ms);
  ::close(fd);
  return out;
}

RawConnection::RawConnection(uint16_t port) : fd_(connect_loopback(port)) {}

RawConnection::~RawConnection() {
  close();
}

void RawConnection::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool RawConnection::send(const std::string& bytes) {
  return fd_ >= 0 && send_all(fd_, bytes);
}

HttpReply RawConnection::read_reply(int timeout_ms) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char tmp[65536];
  for (;;) {
    auto hend = buf_.find("\r\n\r\n");
    if (hend != std::string::npos) {
      std::string head = buf_.substr(0, hend);
      for (auto& c : head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      size_t len = 0;
      auto cl = head.find("content-length:");
      if (cl != std::string::npos) len = std::strtoul(head.c_str() + cl + 15, nullptr, 10);
      if (buf_.size() >= hend + 4 + len) {
        HttpReply r = parse_reply(buf_.substr(0, hend + 4 + len));
        buf_.erase(0, hend + 4 + len);
        return r;
      }
    }
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    end - std::chrono::steady_clock::now())
                                    .count());
    if (fd_ < 0 || left <= 0) return {};
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, left) <= 0) return {};
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) return {};
    buf_.append(tmp, static_cast<size_t>(n));
  }
}

bool RawConnection::closed_within(int timeout_ms) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char tmp[65536];
  while (fd_ >= 0) {
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    end - std::chrono::steady_clock::now())
                                    .count());
    if (left <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, left) <= 0) return false;
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) return true;
  }
  return true;
}

TestBroker::TestBroker(const std::string& data_dir) {
  if (data_dir.empty()) {
    own_dir_ = std::make_unique<TempDir>();
    dir_ = own_dir_->str();
  } else {
    dir_ = data_dir;
  }
  start();
}

TestBroker::TestBroker(std::function<void(api::DaemonConfig&)> configure)
    : configure_(std::move(configure)) {
  own_dir_ = std::make_unique<TempDir>();
  dir_ = own_dir_->str();
  start();
}

TestBroker::~TestBroker() { daemon_.reset(); }

void TestBroker::start() {
  api::DaemonConfig cfg;
  cfg.data_dir = dir_;
  cfg.api.port = 0;
  cfg.api.threads = 8;
  cfg.api.access_log = false;
  cfg.api.sse_wait = std::chrono::milliseconds(1500);
  cfg.bootstrap_token = kAdminToken;
  cfg.default_host_uri.clear();  // tests add the hosts they need
  cfg.host_uris.allow_test = true;  // test:/// hosts and fixture files
  if (configure_) configure_(cfg);
  auto offset = clock_offset_;
  auto d = api::Daemon::start(cfg, [offset] { return pipeline::system_now_ms() + offset->load(); });
  if (!d.ok()) throw std::runtime_error("broker did not start: " + d.error().message);
  daemon_ = std::move(*d);
}

void TestBroker::restart() {
  daemon_.reset();
  start();
}

uint16_t TestBroker::port() const { return daemon_->port(); }

HttpReply TestBroker::call(const std::string& method, const std::string& path,
                           const nlohmann::json& body, const std::string& token,
                           std::vector<std::pair<std::string, std::string>> headers) {
  if (!token.empty()) headers.emplace_back("Authorization", "Bearer " + token);
  return http(port(), method, path, body.is_null() ? "" : body.dump(), headers);
}

std::pair<std::string, std::string> TestBroker::user(const std::string& name,
                                                     const std::vector<std::string>& roles) {
  auto r = call("POST", "/v1/users",
                {{"name", name}, {"password", "password-" + name}, {"roles", roles}});
  if (r.status != 201) throw std::runtime_error("user create failed: " + r.body);
  auto login = call("POST", "/v1/auth/login", {{"name", name}, {"password", "password-" + name}}, "");
  if (login.status != 200) throw std::runtime_error("login failed: " + login.body);
  return {r.json()["id"].get<std::string>(), login.json()["token"].get<std::string>()};
}

int run_command(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace atrium::testing

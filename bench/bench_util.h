// Helpers shared by the benchmarks: elapsed time, resident memory, and a minimal HTTP/1.1
// client over a fresh loopback connection per request or a kept-alive one (KeepAlive; the
// broker under test listens there).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace atrium::bench {

using SteadyClock = std::chrono::steady_clock;

// Seconds since t0.
inline double since(SteadyClock::time_point t0) {
  return std::chrono::duration<double>(SteadyClock::now() - t0).count();
}

// A loopback TCP port free at the time of the call (for a broker started by the benchmark).
inline uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// The p-quantile (0..1) of v by nearest rank, 0 for an empty v.
inline double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// This process's resident set (VmRSS) in KiB, 0 if unknown.
inline long rss_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return 0;
}

// {status, body}; status 0 when the connection or the reply failed.
inline std::pair<int, std::string> http(uint16_t port, const std::string& method, const std::string& path,
                                 const std::string& token, const std::string& body = "") {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return {0, ""};
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                    "Authorization: Bearer " + token + "\r\nContent-Type: application/json\r\n"
                    "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  for (size_t off = 0; off < req.size();) {
    ssize_t n = ::send(fd, req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  std::string resp;
  char buf[8192];
  size_t want = std::string::npos;  // total bytes once the headers are in
  while (resp.size() < want) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    resp.append(buf, static_cast<size_t>(n));
    auto h = resp.find("\r\n\r\n");
    if (want == std::string::npos && h != std::string::npos) {
      std::string head = resp.substr(0, h);
      for (char& c : head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      auto cl = head.find("content-length:");
      want = h + 4 + (cl == std::string::npos ? 0 : std::strtoull(head.c_str() + cl + 15, nullptr, 10));
    }
  }
  ::close(fd);
  if (resp.size() < 12) return {0, ""};
  int status = std::atoi(resp.c_str() + 9);
  auto p = resp.find("\r\n\r\n");
  return {status, p == std::string::npos ? "" : resp.substr(p + 4)};
}

}  // namespace atrium::bench

namespace atrium::bench {

// One persistent (keep-alive) HTTP/1.1 connection to a loopback port; it reconnects on the
// next request after a failure. Replies need a Content-Length (atriumd always sends one).
class KeepAlive {
 public:
  explicit KeepAlive(uint16_t port = 0, int timeout_ms = 5000)
      : port_(port), timeout_ms_(timeout_ms) {}
  ~KeepAlive() { close(); }
  KeepAlive(const KeepAlive&) = delete;
  KeepAlive& operator=(const KeepAlive&) = delete;

  // Talk to another port from now on (the old connection is dropped).
  void retarget(uint16_t port) {
    if (port != port_) close();
    port_ = port;
  }
  uint16_t port() const { return port_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // {status, body}; status 0 when the connection or the reply failed.
  std::pair<int, std::string> request(const std::string& method, const std::string& path,
                                      const std::string& token, const std::string& body = "") {
    for (int attempt = 0; attempt < 2; ++attempt) {
      const bool fresh = fd_ < 0;
      if (fresh && !connect()) return {0, ""};
      auto r = once(method, path, token, body);
      if (r.first != 0) return r;
      close();
      if (fresh) break;  // a stale kept-alive connection is retried once on a new one
    }
    return {0, ""};
  }

 private:
  bool connect() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{timeout_ms_ / 1000, (timeout_ms_ % 1000) * 1000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port_);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      close();
      return false;
    }
    return true;
  }

  std::pair<int, std::string> once(const std::string& method, const std::string& path,
                                   const std::string& token, const std::string& body) {
    std::string req = method + " " + path +
                      " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
                      "Authorization: Bearer " +
                      token + "\r\nContent-Type: application/json\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n" + body;
    for (size_t off = 0; off < req.size();) {
      ssize_t n = ::send(fd_, req.data() + off, req.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return {0, ""};
      off += static_cast<size_t>(n);
    }
    std::string resp;
    char buf[16384];
    size_t want = std::string::npos;
    size_t head_end = 0;
    bool close_after = false;
    while (resp.size() < want) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return {0, ""};
      resp.append(buf, static_cast<size_t>(n));
      if (want == std::string::npos) {
        auto h = resp.find("\r\n\r\n");
        if (h == std::string::npos) continue;
        std::string head = resp.substr(0, h);
        for (char& c : head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        auto cl = head.find("content-length:");
        head_end = h + 4;
        want = head_end +
               (cl == std::string::npos ? 0 : std::strtoull(head.c_str() + cl + 15, nullptr, 10));
        close_after = head.find("connection: close") != std::string::npos;
      }
    }
    if (resp.size() < 12) return {0, ""};
    if (close_after) close();
    return {std::atoi(resp.c_str() + 9), resp.substr(head_end, want - head_end)};
  }

  uint16_t port_;
  int timeout_ms_;
  int fd_ = -1;
};

}  // namespace atrium::bench

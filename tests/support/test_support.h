// Helpers shared by tests: temporary directories, a tiny HTTP client, and a way to run the
// real daemon as a child process on a loopback port.
#pragma once

#include <filesystem>
#include <map>
#include <string>

namespace atrium::testing {

// A fresh directory under /tmp, removed (recursively) when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// A small tmpfs mounted on a fresh directory, unmounted (lazily) when the object dies.
// Mounting needs root (CAP_SYS_ADMIN): check ok() and skip with why() otherwise.
class TmpfsMount {
 public:
  explicit TmpfsMount(const std::string& size = "8m");
  ~TmpfsMount();
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  bool ok() const { return mounted_; }
  const std::string& why() const { return why_; }
  std::string str() const { return dir_.str(); }

 private:
  TempDir dir_;
  bool mounted_ = false;
  std::string why_;
};

// Writes zeros to `path` until the file system is full (ENOSPC); returns the bytes written.
size_t fill_until_full(const std::string& path);

// Every regular file under `dir` with its bytes (for "nothing changed" checks).
std::map<std::string, std::string> file_contents(const std::string& dir);

}  // namespace atrium::testing

#include <atomic>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include <chrono>
#include <doctest/doctest.h>
#include <functional>
#include <thread>

namespace atrium::api {
class Daemon;
struct DaemonConfig;
}

namespace atrium::testing {

struct HttpReply {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  nlohmann::json json() const { return nlohmann::json::parse(body, nullptr, false); }
  std::string header(const std::string& lower) const {
    auto it = headers.find(lower);
    return it == headers.end() ? "" : it->second;
  }
};

// A minimal HTTP/1.1 client over a fresh loopback connection per request.
// status 0 means the connection failed or the reply could not be parsed.
HttpReply http(uint16_t port, const std::string& method, const std::string& path,
               const std::string& body = "",
               const std::vector<std::pair<std::string, std::string>>& headers = {},
               int timeout_ms = 30000);
// The same from another loopback source address (e.g. "127.0.0.2": a second client).
HttpReply http_from(const std::string& source, uint16_t port, const std::string& method,
                    const std::string& path, const std::string& body = "",
                    const std::vector<std::pair<std::string, std::string>>& headers = {},
                    int timeout_ms = 30000);

// Writes all of `s` to the socket (no SIGPIPE); false when the peer went away.
bool send_all(int fd, const std::string& s);

// Sends raw bytes and returns whatever the server answered (for malformed-request tests).
std::string http_raw(uint16_t port, const std::string& bytes, int timeout_ms = 10000);

// One client connection kept open across requests (keep-alive, pipelining, attack tests).
class RawConnection {
 public:
  explicit RawConnection(uint16_t port);  // to 127.0.0.1:port; ok() is false when it failed
  ~RawConnection();
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;
  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  bool send(const std::string& bytes);
  // Reads one response (its head and a Content-Length body); status 0 on EOF or timeout.
  HttpReply read_reply(int timeout_ms = 5000);
  // True when the server closed the connection (EOF or reset) within timeout_ms, once any
  // answer still buffered is read.
  bool closed_within(int timeout_ms);
  void close();

 private:
  int fd_ = -1;
  std::string buf_;
};

// The real broker (store, pipeline, API, Pistache) in this process on 127.0.0.1:<any port>,
// with a known admin token.
class TestBroker {
 public:
  static constexpr const char* kAdminToken = "atr_test_admin_token_0123456789abcdef";
  explicit TestBroker(const std::string& data_dir = "");
  // With a configuration hook applied before start (TLS, limits, ...).
  explicit TestBroker(std::function<void(api::DaemonConfig&)> configure);
  ~TestBroker();

  uint16_t port() const;
  api::Daemon& daemon() { return *daemon_; }
  const std::string& data_dir() const { return dir_; }
  void restart();  // stop and start again on the same data dir
  // Moves the broker's clock (tokens expire, load reports go stale).
  void advance_clock_ms(int64_t ms) { *clock_offset_ += ms; }

  HttpReply call(const std::string& method, const std::string& path,
                 const nlohmann::json& body = nullptr, const std::string& token = kAdminToken,
                 std::vector<std::pair<std::string, std::string>> headers = {});
  // Creates a user with a password and returns {id, token}.
  std::pair<std::string, std::string> user(const std::string& name,
                                           const std::vector<std::string>& roles = {"user"});

 private:
  void start();
  std::unique_ptr<TempDir> own_dir_;
  std::string dir_;
  std::unique_ptr<api::Daemon> daemon_;
  std::function<void(api::DaemonConfig&)> configure_;
  std::shared_ptr<std::atomic<int64_t>> clock_offset_ = std::make_shared<std::atomic<int64_t>>(0);
};

// GETs `path` (admin token) until it answers 200 with a body for which `pred` holds, and returns
// that body; FAILs (with the last body) after `limit`.
template <typename F>
nlohmann::json poll(TestBroker& b, const std::string& path, F pred,
                    std::chrono::milliseconds limit = std::chrono::seconds(60)) {
  nlohmann::json last;
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    auto r = b.call("GET", path);
    last = r.json();
    if (r.status == 200 && pred(last)) return last;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  FAIL("condition not reached on " << path << " within " << limit.count()
                                   << " ms: " << last.dump());
  return last;
}

// Runs a program and returns its exit code (stdout/stderr to the given file if set).
int run_command(const std::string& cmd);

}  // namespace atrium::testing

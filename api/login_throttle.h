// Login throttling, in memory: failed logins are counted per user name and per source address
// in fixed windows; once a key reaches its limit, every login for it is refused (429) until
// its window ends, whatever the password. Only the engaging of a throttle is worth an audit
// event, once per window and key (and at most max_records_per_window of them in all).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace atrium::api {

struct LoginThrottleConfig {
  int64_t window_ms = 60'000;
  uint32_t failures_per_user = 10;
  uint32_t failures_per_address = 50;
  size_t max_keys = 100'000;              // per table; the oldest are dropped beyond
  uint32_t max_records_per_window = 100;  // LoginThrottled events per window, all keys
};

class LoginThrottle {
 public:
  explicit LoginThrottle(LoginThrottleConfig cfg) : cfg_(cfg) {}

  // Milliseconds until a login for `name` from `address` may be tried; 0 = now.
  int64_t blocked_for(const std::string& name, const std::string& address, int64_t now_ms);

  struct Engaged {
    std::string scope;  // "user" or "address"
    std::string key;
    uint32_t failures = 0;
    int64_t until_ms = 0;
  };
  // Counts a failed login; returns the throttles this failure engaged that should be recorded
  // (each key once per window, within max_records_per_window).
  std::vector<Engaged> failed(const std::string& name, const std::string& address, int64_t now_ms);
  // A successful login clears the name's failures (not the address's).
  void succeeded(const std::string& name);

 private:
  struct Entry {
    int64_t window_start_ms = 0;
    uint32_t failures = 0;
  };
  using Table = std::unordered_map<std::string, Entry>;
  int64_t blocked(Table& t, const std::string& key, uint32_t limit, int64_t now_ms) const;
  bool count(Table& t, const std::string& key, uint32_t limit, int64_t now_ms, Entry& out);
  void make_room(Table& t, int64_t now_ms);

  LoginThrottleConfig cfg_;
  std::mutex mu_;
  Table users_;
  Table addresses_;
  int64_t records_window_start_ms_ = 0;
  uint32_t records_in_window_ = 0;
};

}  // namespace atrium::api

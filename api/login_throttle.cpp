#include "api/login_throttle.h"

namespace atrium::api {

int64_t LoginThrottle::blocked(Table& t, const std::string& key, uint32_t limit,
                               int64_t now_ms) const {
  auto it = t.find(key);
  if (it == t.end()) return 0;
  int64_t end = it->second.window_start_ms + cfg_.window_ms;
  if (now_ms >= end || now_ms < it->second.window_start_ms) {
    t.erase(it);
    return 0;
  }
  return it->second.failures >= limit ? end - now_ms : 0;
}

void LoginThrottle::make_room(Table& t, int64_t now_ms) {
  if (t.size() < cfg_.max_keys) return;
  for (auto it = t.begin(); it != t.end();) {
    it = now_ms >= it->second.window_start_ms + cfg_.window_ms ? t.erase(it) : std::next(it);
  }
  if (t.size() >= cfg_.max_keys) t.erase(t.begin());
}

// True when this failure brings the key to its limit (the throttle engages now).
bool LoginThrottle::count(Table& t, const std::string& key, uint32_t limit, int64_t now_ms,
                          Entry& out) {
  auto it = t.find(key);
  if (it != t.end() && (now_ms >= it->second.window_start_ms + cfg_.window_ms ||
                        now_ms < it->second.window_start_ms)) {
    t.erase(it);
    it = t.end();
  }
  if (it == t.end()) {
    make_room(t, now_ms);
    it = t.emplace(key, Entry{now_ms, 0}).first;
  }
  Entry& e = it->second;
  if (e.failures < UINT32_MAX) ++e.failures;
  out = e;
  return e.failures == limit;
}

int64_t LoginThrottle::blocked_for(const std::string& name, const std::string& address,
                                   int64_t now_ms) {
  std::lock_guard l(mu_);
  int64_t by_name = blocked(users_, name, cfg_.failures_per_user, now_ms);
  int64_t by_address =
      address.empty() ? 0 : blocked(addresses_, address, cfg_.failures_per_address, now_ms);
  return std::max(by_name, by_address);
}

std::vector<LoginThrottle::Engaged> LoginThrottle::failed(const std::string& name,
                                                          const std::string& address,
                                                          int64_t now_ms) {
  std::lock_guard l(mu_);
  std::vector<Engaged> out;
  auto note = [&](const char* scope, const std::string& key, const Entry& e) {
    if (now_ms >= records_window_start_ms_ + cfg_.window_ms || now_ms < records_window_start_ms_) {
      records_window_start_ms_ = now_ms;
      records_in_window_ = 0;
    }
    if (records_in_window_ >= cfg_.max_records_per_window) return;
    ++records_in_window_;
    out.push_back({scope, key, e.failures, e.window_start_ms + cfg_.window_ms});
  };
  Entry e;
  if (count(users_, name, cfg_.failures_per_user, now_ms, e)) note("user", name, e);
  if (!address.empty() && count(addresses_, address, cfg_.failures_per_address, now_ms, e)) {
    note("address", address, e);
  }
  return out;
}

void LoginThrottle::succeeded(const std::string& name) {
  std::lock_guard l(mu_);
  users_.erase(name);
}

}  // namespace atrium::api

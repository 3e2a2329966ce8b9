#include "api/access_log.h"

namespace atrium::api {

std::string log_escape(std::string_view s) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      out += "\\x";
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

AccessLog::AccessLog(bool enabled, FILE* out) : enabled_(enabled), out_(out) {
  if (enabled_) thread_ = std::thread([this] { run(); });
}

AccessLog::~AccessLog() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void AccessLog::write(std::string line) {
  if (!enabled_) return;
  {
    std::lock_guard l(mu_);
    if (buf_.size() > (size_t{8} << 20)) return;  // the sink is stuck: drop, never block
    buf_ += line;
    buf_ += '\n';
  }
  cv_.notify_one();
}

void AccessLog::run() {
  std::string out;
  for (;;) {
    {
      std::unique_lock l(mu_);
      cv_.wait_for(l, std::chrono::milliseconds(100), [&] { return stop_ || !buf_.empty(); });
      out.swap(buf_);
      if (out.empty() && stop_) return;
    }
    if (!out.empty()) {
      fwrite(out.data(), 1, out.size(), out_);
      fflush(out_);
      out.clear();
    }
  }
}

}  // namespace atrium::api

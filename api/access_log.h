// One line per request, buffered and written by a background thread so that logging does
// not serialise request threads on stderr.
#pragma once

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

namespace atrium::api {

// A field for a log line: bytes outside printable ASCII (controls, DEL, and every byte of a
// multi-byte character, so no terminal escape or bidi override survives), `"` and `\` are
// written as \xNN; the rest as is. A line can then neither forge another line nor paint.
std::string log_escape(std::string_view s);

class AccessLog {
 public:
  explicit AccessLog(bool enabled, FILE* out = stderr);
  ~AccessLog();
  void write(std::string line);  // line without the trailing newline

 private:
  void run();
  bool enabled_;
  FILE* out_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string buf_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace atrium::api

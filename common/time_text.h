// ISO 8601 text of a UTC instant, e.g. "2026-11-22T04:37:41Z" (or without the "Z", the form
// libvirt's passwdValidTo takes). Empty when the instant is out of range.
#pragma once

#include <cstdint>
#include <ctime>
#include <string>

namespace atrium {

inline std::string utc_iso8601(int64_t unix_ms, bool zulu = true) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  if (gmtime_r(&t, &tm) == nullptr) return "";
  char buf[40];
  std::strftime(buf, sizeof buf, zulu ? "%Y-%m-%dT%H:%M:%SZ" : "%Y-%m-%dT%H:%M:%S", &tm);
  return buf;
}

}  // namespace atrium

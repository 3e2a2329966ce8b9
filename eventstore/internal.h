// Internals shared by the event store implementations (not part of the public API):
// the canonical/stored event encoding and the append validation rules.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include "common/result.h"
#include "eventstore/event_store.h"

namespace atrium::eventstore::detail {

// Never let an exception (bad_alloc, a throwing visitor) escape the store: runs `f` and turns
// what it throws into an internal error naming `what`.
template <typename F>
auto guarded(const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::exception& ex) {
    return Error::make(Code::internal, std::string(what) + ": " + ex.what(), "internal");
  } catch (...) {
    return Error::make(Code::internal, std::string(what) + ": unknown exception", "internal");
  }
}

// Transparent hash: maps keyed by std::string looked up with a std::string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Canonical bytes format tag (first byte); bump if the encoding ever changes.
inline constexpr uint8_t kCanonicalFormat = 1;

inline void put_be64(char* out, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(v & 0xffu);
    v >>= 8;
  }
}

inline uint64_t get_be64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

// An 8-byte big-endian key, so that byte order equals numeric order.
struct BeKey {
  char bytes[8];
  explicit BeKey(uint64_t v) { put_be64(bytes, v); }
  std::string_view view() const { return {bytes, sizeof bytes}; }
};

// Writes canonical_bytes(e) into `out` (cleared first, capacity reused).
void encode_canonical(const RecordedEvent& e, std::string& out);

// Stored value of an event: canonical bytes followed by the 32-byte hash.
void encode_stored(const RecordedEvent& e, std::string& out);

// Decodes a stored value into `e`, reusing its string capacity. Strict: returns false on
// a short, over-long or otherwise malformed value.
bool decode_stored(std::string_view value, RecordedEvent& e);

// SHA-256(previous || canonical).
Hash chain_hash_bytes(const Hash& previous, std::string_view canonical);

// The append path of every store: fills `e` as `ne` recorded at `position` as version `version`
// of `stream`, writes its canonical bytes into `canonical` (cleared first, capacity reused) and
// chains its hash onto `previous`; that hash is stored in e.hash and returned.
Hash record_new_event(const NewEvent& ne, std::string_view stream, uint64_t position,
                      uint64_t version, const Hash& previous, RecordedEvent& e,
                      std::string& canonical);

// Validates the shape of a request (names, types, sizes). Does not look at versions.
Status validate_request(const AppendRequest& req);

// Conflict error when `expected` does not hold for a stream currently at `current`.
Status check_expected(std::string_view stream, const ExpectedVersion& expected,
                      uint64_t current);

// Walks the WAL files (NNNNNN.log) of a RocksDB directory without changing them and fills
// every field of WalReport except kept_position and lost_events (eventstore/wal_inspect.cpp).
Result<WalReport> scan_wal_files(const std::string& dir);

// The last appended position, and waiting for a newer one (EventStore::last_position and
// wait_for of both stores).
class PositionSignal {
 public:
  uint64_t get() const { return last_.load(std::memory_order_acquire); }

  // Sets the position and wakes every waiter.
  void publish(uint64_t pos) noexcept {
    {
      std::lock_guard<std::mutex> lk(mu_);
      last_.store(pos, std::memory_order_release);
    }
    cv_.notify_all();
  }

  // Returns as soon as the position is past `after`, or after `timeout`: the position then.
  uint64_t wait_for(uint64_t after, std::chrono::milliseconds timeout) const {
    uint64_t now = get();
    if (now > after || timeout.count() <= 0) return now;
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait_for(lk, timeout, [&] { return get() > after; });
    return get();
  }

 private:
  std::atomic<uint64_t> last_{0};
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
};

}  // namespace atrium::eventstore::detail

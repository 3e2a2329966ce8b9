// Canonical event bytes and the SHA-256 hash chain (libsodium).
//
// Canonical bytes, all integers big-endian, strings as u32 length + bytes:
//   u8  format (= 1)
//   u64 position | str stream | u64 stream_version | str type | u32 schema_version |
//   i64 recorded_at_ms (two's complement) | str actor | str correlation_id |
//   str causation_id | str idempotency_key | str data
// Every field except the hash is covered; the length prefixes make the encoding
// unambiguous, so two different events never share canonical bytes.
#include <sodium.h>

#include <mutex>

#include "eventstore/event_store.h"
#include "eventstore/internal.h"

namespace atrium::eventstore {
namespace detail {
namespace {

void init_sodium() {
  static std::once_flag once;
  // sodium_init() only picks implementations here; SHA-256 works either way.
  std::call_once(once, [] {
    if (sodium_init() < 0) {
      // Nothing to report through: SHA-256 has no state that needs the init to succeed.
    }
  });
}

inline void put_u32(std::string& out, uint32_t v) {
  char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
               static_cast<char>(v >> 8), static_cast<char>(v)};
  out.append(b, 4);
}

inline void put_u64(std::string& out, uint64_t v) {
  char b[8];
  put_be64(b, v);
  out.append(b, 8);
}

inline void put_str(std::string& out, const std::string& s) {
  // validate_request() rejects fields longer than UINT32_MAX before they get here.
  put_u32(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}

class Reader {
 public:
  Reader(const char* p, const char* end) : p_(p), end_(end) {}
  bool u8(uint8_t& v) {
    if (end_ - p_ < 1) return false;
    v = static_cast<uint8_t>(*p_++);
    return true;
  }
  bool u32(uint32_t& v) {
    if (end_ - p_ < 4) return false;
    v = (uint32_t{static_cast<uint8_t>(p_[0])} << 24) |
        (uint32_t{static_cast<uint8_t>(p_[1])} << 16) |
        (uint32_t{static_cast<uint8_t>(p_[2])} << 8) | uint32_t{static_cast<uint8_t>(p_[3])};
    p_ += 4;
    return true;
  }
  bool u64(uint64_t& v) {
    if (end_ - p_ < 8) return false;
    v = get_be64(p_);
    p_ += 8;
    return true;
  }
  bool str(std::string& s) {
    uint32_t n = 0;
    if (!u32(n) || static_cast<uint64_t>(end_ - p_) < n) return false;
    s.assign(p_, n);
    p_ += n;
    return true;
  }
  bool at_end() const { return p_ == end_; }

 private:
  const char* p_;
  const char* end_;
};

}  // namespace

void encode_canonical(const RecordedEvent& e, std::string& out) {
  out.clear();
  out.reserve(1 + 8 + 8 + 4 + 8 + 7 * 4 + e.stream.size() + e.type.size() + e.actor.size() +
              e.correlation_id.size() + e.causation_id.size() + e.idempotency_key.size() +
              e.data.size() + 32);
  out.push_back(static_cast<char>(kCanonicalFormat));
  put_u64(out, e.position);
  put_str(out, e.stream);
  put_u64(out, e.stream_version);
  put_str(out, e.type);
  put_u32(out, e.schema_version);
  put_u64(out, static_cast<uint64_t>(e.recorded_at_ms));
  put_str(out, e.actor);
  put_str(out, e.correlation_id);
  put_str(out, e.causation_id);
  put_str(out, e.idempotency_key);
  put_str(out, e.data);
}

void encode_stored(const RecordedEvent& e, std::string& out) {
  encode_canonical(e, out);
  out.append(reinterpret_cast<const char*>(e.hash.data()), e.hash.size());
}

bool decode_stored(std::string_view value, RecordedEvent& e) {
  constexpr size_t kHash = sizeof(Hash);
  if (value.size() < kHash + 1) return false;
  const char* body_end = value.data() + value.size() - kHash;
  Reader r(value.data(), body_end);
  uint8_t format = 0;
  uint64_t recorded = 0;
  if (!r.u8(format) || format != kCanonicalFormat) return false;
  if (!r.u64(e.position) || !r.str(e.stream) || !r.u64(e.stream_version) || !r.str(e.type) ||
      !r.u32(e.schema_version) || !r.u64(recorded) || !r.str(e.actor) ||
      !r.str(e.correlation_id) || !r.str(e.causation_id) || !r.str(e.idempotency_key) ||
      !r.str(e.data) || !r.at_end()) {
    return false;
  }
  e.recorded_at_ms = static_cast<int64_t>(recorded);
  std::memcpy(e.hash.data(), body_end, kHash);
  return true;
}

Hash chain_hash_bytes(const Hash& previous, std::string_view canonical) {
  init_sodium();
  crypto_hash_sha256_state st;
  crypto_hash_sha256_init(&st);
  crypto_hash_sha256_update(&st, previous.data(), previous.size());
  crypto_hash_sha256_update(&st, reinterpret_cast<const unsigned char*>(canonical.data()),
                            canonical.size());
  Hash out{};
  crypto_hash_sha256_final(&st, out.data());
  return out;
}

Hash record_new_event(const NewEvent& ne, std::string_view stream, uint64_t position,
                      uint64_t version, const Hash& previous, RecordedEvent& e,
                      std::string& canonical) {
  e.position = position;
  e.stream = stream;
  e.stream_version = version;
  e.type = ne.type;
  e.schema_version = ne.schema_version;
  e.recorded_at_ms = ne.recorded_at_ms;
  e.actor = ne.actor;
  e.correlation_id = ne.correlation_id;
  e.causation_id = ne.causation_id;
  e.idempotency_key = ne.idempotency_key;
  e.data = ne.data;
  encode_canonical(e, canonical);
  e.hash = chain_hash_bytes(previous, canonical);
  return e.hash;
}

}  // namespace detail

std::string canonical_bytes(const RecordedEvent& e) {
  std::string out;
  detail::encode_canonical(e, out);
  return out;
}

Hash chain_hash(const Hash& previous, const RecordedEvent& e) {
  std::string bytes;
  detail::encode_canonical(e, bytes);
  return detail::chain_hash_bytes(previous, bytes);
}

std::string to_hex(const Hash& h) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(h.size() * 2, '0');
  for (size_t i = 0; i < h.size(); ++i) {
    out[2 * i] = kDigits[h[i] >> 4];
    out[2 * i + 1] = kDigits[h[i] & 0x0f];
  }
  return out;
}

}  // namespace atrium::eventstore

#include "api/crypto.h"

#include <sodium.h>

#include <condition_variable>
#include <mutex>

namespace atrium::api {

namespace {
constexpr int kHashConcurrency = 2;
constexpr unsigned long long kOpsLimit = 2;             // argon2id t=2
constexpr size_t kMemLimit = size_t{19} * 1024 * 1024;  // m=19 MiB (OWASP baseline)

class Gate {
 public:
  void enter() {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return inside_ < kHashConcurrency; });
    ++inside_;
  }
  void leave() {
    {
      std::lock_guard l(mu_);
      --inside_;
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int inside_ = 0;
};

Gate& gate() {
  static Gate g;
  return g;
}

struct GateGuard {
  GateGuard() { gate().enter(); }
  ~GateGuard() { gate().leave(); }
};

std::string to_hex(const unsigned char* p, size_t n) {
  std::string out(n * 2, '\0');
  sodium_bin2hex(out.data(), out.size() + 1, p, n);
  return out;
}
}  // namespace

bool crypto_init() {
  static const bool ok = sodium_init() >= 0;
  return ok;
}

std::string sha256_hex(std::string_view data) {
  unsigned char h[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(h, reinterpret_cast<const unsigned char*>(data.data()), data.size());
  return to_hex(h, sizeof h);
}

std::string random_hex(size_t bytes) {
  std::string raw(bytes, '\0');
  randombytes_buf(raw.data(), raw.size());
  return to_hex(reinterpret_cast<const unsigned char*>(raw.data()), raw.size());
}

std::string new_token() { return "atr_" + random_hex(32); }

std::string new_id() {
  unsigned char b[16];
  randombytes_buf(b, sizeof b);
  b[6] = (b[6] & 0x0F) | 0x40;
  b[8] = (b[8] & 0x3F) | 0x80;
  std::string h = to_hex(b, sizeof b);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
         "-" + h.substr(20);
}

Result<std::string> hash_password(std::string_view password) {
  char out[crypto_pwhash_STRBYTES];
  GateGuard g;
  if (crypto_pwhash_str(out, password.data(), password.size(), kOpsLimit, kMemLimit) != 0) {
    return Error::make(Code::unavailable, "out of memory while hashing the password");
  }
  return std::string(out);
}

bool verify_password(const std::string& hash, std::string_view password) {
  if (hash.empty()) return false;
  GateGuard g;
  return crypto_pwhash_str_verify(hash.c_str(), password.data(), password.size()) == 0;
}

}  // namespace atrium::api

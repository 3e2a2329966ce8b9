#include "api/crypto.h"

#include <sodium.h>

#include <algorithm>
#include <cstring>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace atrium::api {

namespace {
constexpr unsigned long long kOpsLimit = 2;             // argon2id t=2
constexpr size_t kMemLimit = size_t{19} * 1024 * 1024;  // m=19 MiB (OWASP baseline)

// A counting semaphore with a bounded queue: at most kdf_slots() hashes at once, at most
// kWaitersPerSlot * slots callers waiting, each at most kMaxWait. A caller beyond that is told
// "busy" at once, so a storm of logins holds a few HTTP workers, never all of them.
constexpr int kWaitersPerSlot = 2;
constexpr auto kMaxWait = std::chrono::milliseconds(1000);

class Gate {
 public:
  bool enter() {
    std::unique_lock l(mu_);
    if (inside_ >= kdf_slots() && waiting_ >= kWaitersPerSlot * kdf_slots()) return false;
    ++waiting_;
    bool ok = cv_.wait_for(l, kMaxWait, [&] { return inside_ < kdf_slots(); });
    --waiting_;
    if (!ok) return false;
    ++inside_;
    return true;
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
  int waiting_ = 0;
};

Gate& gate() {
  static Gate g;
  return g;
}

struct GateGuard {
  GateGuard() : entered(gate().enter()) {}
  ~GateGuard() {
    if (entered) gate().leave();
  }
  const bool entered;
};

std::string to_hex(const unsigned char* p, size_t n) {
  std::string out(n * 2, '\0');
  sodium_bin2hex(out.data(), out.size() + 1, p, n);
  return out;
}
}  // namespace

int kdf_slots() {
  static const int n = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) - 1);
  return n;
}

bool crypto_init() {
  static const bool ok = sodium_init() >= 0;
  return ok;
}

std::string sha256_hex(std::string_view data) {
  unsigned char h[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(h, reinterpret_cast<const unsigned char*>(data.data()), data.size());
  return to_hex(h, sizeof h);
}

std::string hmac_sha256_hex(std::string_view key, std::string_view data) {
  // The key is hashed to the 32 bytes HMAC-SHA-256 takes in libsodium's fixed-key API.
  unsigned char k[crypto_auth_hmacsha256_KEYBYTES];
  crypto_hash_sha256(k, reinterpret_cast<const unsigned char*>(key.data()), key.size());
  unsigned char mac[crypto_auth_hmacsha256_BYTES];
  crypto_auth_hmacsha256(mac, reinterpret_cast<const unsigned char*>(data.data()), data.size(), k);
  sodium_memzero(k, sizeof k);
  return to_hex(mac, sizeof mac);
}

bool equal_secrets(std::string_view a, std::string_view b) {
  return a.size() == b.size() && sodium_memcmp(a.data(), b.data(), a.size()) == 0;  // constant time
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
  if (!g.entered) {
    return Error::make(Code::unavailable, "password hashing is busy; retry shortly",
                       "password_hashing_busy");
  }
  if (crypto_pwhash_str(out, password.data(), password.size(), kOpsLimit, kMemLimit) != 0) {
    return Error::make(Code::unavailable, "out of memory while hashing the password");
  }
  return std::string(out);
}

PasswordCheck check_password(const std::string& hash, std::string_view password) {
  if (hash.empty()) return PasswordCheck::mismatch;
  GateGuard g;
  if (!g.entered) return PasswordCheck::busy;
  return crypto_pwhash_str_verify(hash.c_str(), password.data(), password.size()) == 0
             ? PasswordCheck::match
             : PasswordCheck::mismatch;
}

const std::string& dummy_password_hash() {
  static const std::string h = [] {
    char out[crypto_pwhash_STRBYTES];
    const std::string pw = random_hex(16);
    if (crypto_pwhash_str(out, pw.data(), pw.size(), kOpsLimit, kMemLimit) != 0)
      return std::string();
    return std::string(out);
  }();
  return h;
}

}  // namespace atrium::api

#include <fcntl.h>
#include <unistd.h>

namespace atrium::api {

std::string seal_secret(const std::string& key, std::string_view plain) {
  std::string box(crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + plain.size(), '\0');
  auto* out = reinterpret_cast<unsigned char*>(box.data());
  randombytes_buf(out, crypto_secretbox_NONCEBYTES);
  crypto_secretbox_easy(out + crypto_secretbox_NONCEBYTES,
                        reinterpret_cast<const unsigned char*>(plain.data()), plain.size(), out,
                        reinterpret_cast<const unsigned char*>(key.data()));
  std::string b64(sodium_base64_ENCODED_LEN(box.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(b64.data(), b64.size(), out, box.size(), sodium_base64_VARIANT_ORIGINAL);
  b64.resize(std::strlen(b64.c_str()));
  return b64;
}

Result<std::string> open_secret(const std::string& key, const std::string& sealed) {
  std::string box(sealed.size(), '\0');
  size_t len = 0;
  if (key.size() != kSecretKeyBytes ||
      sodium_base642bin(reinterpret_cast<unsigned char*>(box.data()), box.size(), sealed.data(),
                        sealed.size(), nullptr, &len, nullptr,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      len < crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES) {
    return invalid("the sealed secret is malformed", "secret_unreadable");
  }
  const auto* in = reinterpret_cast<const unsigned char*>(box.data());
  std::string plain(len - crypto_secretbox_NONCEBYTES - crypto_secretbox_MACBYTES, '\0');
  if (crypto_secretbox_open_easy(reinterpret_cast<unsigned char*>(plain.data()),
                                 in + crypto_secretbox_NONCEBYTES, len - crypto_secretbox_NONCEBYTES,
                                 in, reinterpret_cast<const unsigned char*>(key.data())) != 0) {
    return invalid("the sealed secret does not open with this key", "secret_unreadable");
  }
  return plain;
}

Result<std::string> load_or_create_secret_key(const std::string& path) {
  std::string key(kSecretKeyBytes, '\0');
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t n = ::read(fd, key.data(), key.size());
    ::close(fd);
    if (n != static_cast<ssize_t>(key.size())) {
      return Error::make(Code::invalid_argument, path + " is not a " +
                                                     std::to_string(kSecretKeyBytes) + "-byte key");
    }
    return key;
  }
  randombytes_buf(key.data(), key.size());
  fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 || ::write(fd, key.data(), key.size()) != static_cast<ssize_t>(key.size()) ||
      ::fsync(fd) != 0) {
    if (fd >= 0) ::close(fd);
    return Error::make(Code::unavailable, "cannot write " + path);
  }
  ::close(fd);
  return key;
}

}  // namespace atrium::api

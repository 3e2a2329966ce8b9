// Secrets: random tokens and ids, SHA-256 of tokens, argon2id password hashes (libsodium).
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace atrium::api {

// Initialises libsodium once; returns false if it can't (the daemon must not start then).
bool crypto_init();

std::string sha256_hex(std::string_view data);
std::string random_hex(size_t bytes);
// HMAC-SHA-256 of `data` under `key` (any length: hashed to 32 bytes first), in hex; and a
// comparison of two such strings in constant time.
std::string hmac_sha256_hex(std::string_view key, std::string_view data);
bool equal_secrets(std::string_view a, std::string_view b);
std::string new_token();  // "atr_" + 64 hex chars (256 random bits)
std::string new_id();     // RFC 4122 version 4 UUID

// argon2id (t=2, m=19 MiB). At most kdf_slots() hashes run at once (the cores less one, at
// least one), so a login storm can neither exhaust memory nor take every core, and only a few
// callers wait (at most a second): the others are told busy at once rather than parking every
// HTTP worker behind the KDF.
int kdf_slots();

// unavailable ("password_hashing_busy") when the KDF is saturated.
Result<std::string> hash_password(std::string_view password);

enum class PasswordCheck { match, mismatch, busy };
// An empty hash never matches (without running the KDF: callers that must not reveal that
// pass dummy_password_hash() instead).
PasswordCheck check_password(const std::string& hash, std::string_view password);

// A hash of a random password with the same parameters as real ones: checking against it
// costs what a real check costs, so unknown users and users without a password take as long
// as a wrong password.
const std::string& dummy_password_hash();

}  // namespace atrium::api

namespace atrium::api {

// Secrets the broker must use again later (a directory's bind password): sealed with
// libsodium's secretbox (XSalsa20-Poly1305) under a 32-byte key kept outside the log
// (<data-dir>/secret.key, 0600), as base64 of nonce || ciphertext.
inline constexpr size_t kSecretKeyBytes = 32;
std::string seal_secret(const std::string& key, std::string_view plain);
// invalid_argument when the sealed text was not sealed under this key (or was altered).
Result<std::string> open_secret(const std::string& key, const std::string& sealed);
// Reads the key file, or creates it (0600, random) when it does not exist.
Result<std::string> load_or_create_secret_key(const std::string& path);

}  // namespace atrium::api

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
std::string new_token();  // "atr_" + 64 hex chars (256 random bits)
std::string new_id();     // RFC 4122 version 4 UUID

// argon2id with at most `kHashConcurrency` hashes at once, so a login storm cannot exhaust
// memory (each hash takes kMemLimit bytes).
Result<std::string> hash_password(std::string_view password);
bool verify_password(const std::string& hash, std::string_view password);

}  // namespace atrium::api

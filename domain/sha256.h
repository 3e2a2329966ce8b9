// SHA-256 (FIPS 180-4), pure and dependency-free, so that the domain can derive stable ids
// (e.g. application ids) without linking a crypto library.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace atrium::domain {

using Sha256Digest = std::array<uint8_t, 32>;

// The 32-byte digest of `data`.
Sha256Digest sha256(std::string_view data);

// The digest as 64 lowercase hex characters.
std::string sha256_hex(std::string_view data);

}  // namespace atrium::domain

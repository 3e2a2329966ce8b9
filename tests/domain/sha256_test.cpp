// SHA-256 against the FIPS 180-4 / NIST test vectors and lengths around the padding
// boundaries (55/56 bytes: one or two final blocks; 63/64/65: block edges).
#include "domain/sha256.h"

#include <doctest/doctest.h>

#include <string>

using atrium::domain::sha256;
using atrium::domain::sha256_hex;

TEST_CASE("sha256: NIST vectors") {
  struct Row {
    std::string input;
    const char* hex;
  };
  const Row rows[] = {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
      {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
       "lmnopqrsmnopqrstnopqrstu",
       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
      {std::string(1000000, 'a'),
       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.input.size());
    CHECK(sha256_hex(r.input) == r.hex);
  }
}

TEST_CASE("sha256: lengths around the padding boundaries") {
  struct Row {
    size_t len;
    const char* hex;
  };
  const Row rows[] = {
      {55, "d5e285683cd4efc02d021a5c62014694958901005d6f71e89e0989fac77e4072"},
      {56, "04c26261370ee7541549d16dee320c723e3fd14671e66a099afe0a377c16888e"},
      {63, "75220b47218278e656f2013bb8f0c455a25eaf01e86c64924e9d48d89776d6f2"},
      {64, "7ce100971f64e7001e8fe5a51973ecdfe1ced42befe7ee8d5fd6219506b5393c"},
      {65, "9537c5fdf120482f7d58d25e9ed583f52c02b4e304ea814db1633ad565aed7e9"},
      {119, "000b48d4edf0fa7bee3c6236ecd2785baa5db4eeb8bb54341b029e0d9fa5fb0c"},
      {120, "13f05a0b594787f5ecd315edc96141bd3243203d1b7d4f0836f37308b276ba98"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.len);
    CHECK(sha256_hex(std::string(r.len, 'x')) == r.hex);
  }
}

TEST_CASE("sha256: embedded NUL bytes are hashed, not treated as terminators") {
  std::string with_nul("Notepad\0C:\\Windows\\notepad.exe", 30);
  REQUIRE(with_nul.size() == 30);
  CHECK(sha256_hex(with_nul) ==
        "e618a07d0bea8c02c6104d8e7eb050777fa130f80f470220f53b54eacc8796b1");
  CHECK(sha256_hex(with_nul) != sha256_hex("Notepad"));
}

TEST_CASE("sha256: raw digest matches the hex form") {
  auto d = sha256("abc");
  CHECK(d[0] == 0xba);
  CHECK(d[1] == 0x78);
  CHECK(d[31] == 0xad);
}

// Every committed fuzz input, replayed through its harness in the normal build: the seed and
// grown corpora (fuzz/corpus/<target>/) and each input that once crashed a target
// (fuzz/regressions/<target>/, kept with the fix). A harness reports a broken invariant as a
// fuzz::Violation; anything else escaping is a crash.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz/harness.h"

namespace {

namespace fs = std::filesystem;
using Harness = int (*)(const uint8_t*, size_t);

size_t replay(const std::string& target, Harness h) {
  size_t n = 0;
  for (const char* kind : {"corpus", "regressions"}) {
    fs::path dir = fs::path(ATRIUM_SOURCE_DIR) / "fuzz" / kind / target;
    if (!fs::is_directory(dir)) continue;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.is_regular_file()) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      CAPTURE(f.string());
      try {
        h(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      } catch (const atrium::fuzz::Violation& v) {
        FAIL_CHECK("invariant violated: " << v.what);
      }
      ++n;
    }
  }
  return n;
}

}  // namespace

TEST_CASE("fuzz corpus: json_body") {
  CHECK(replay("json_body", atrium::fuzz::json_body) > 0);
}
TEST_CASE("fuzz corpus: event_envelope") {
  CHECK(replay("event_envelope", atrium::fuzz::event_envelope) > 0);
}
TEST_CASE("fuzz corpus: snapshot") {
  CHECK(replay("snapshot", atrium::fuzz::snapshot) > 0);
}
TEST_CASE("fuzz corpus: deciders") {
  CHECK(replay("deciders", atrium::fuzz::deciders) > 0);
}
TEST_CASE("fuzz corpus: http") {
  CHECK(replay("http", atrium::fuzz::http) > 0);
}

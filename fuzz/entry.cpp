// The libFuzzer entry point of one harness, chosen by ATRIUM_FUZZ_TARGET at compile time
// (fuzz/CMakeLists.txt builds one executable per harness).
#include <cstdio>
#include <cstdlib>

#include "fuzz/harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    return atrium::fuzz::ATRIUM_FUZZ_TARGET(data, size);
  } catch (const atrium::fuzz::Violation& v) {
    std::fprintf(stderr, "INVARIANT VIOLATED: %s\n", v.what.c_str());
    std::abort();
  }
}

#include "support/test_support.h"

#include <cstdlib>
#include <stdexcept>
#include <system_error>

namespace atrium::testing {

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "atrium-test-XXXXXX").string();
  char* p = ::mkdtemp(tmpl.data());
  if (p == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace atrium::testing

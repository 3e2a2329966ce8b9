// Helpers shared by tests: temporary directories, a tiny HTTP client, and a way to run the
// real daemon as a child process on a loopback port.
#pragma once

#include <filesystem>
#include <string>

namespace atrium::testing {

// A fresh directory under /tmp, removed (recursively) when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace atrium::testing

// Points this process's stderr (the broker's log) at a file while alive; text() restores it
// and returns what was written.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "support/test_support.h"

namespace atrium::testing {

class StderrCapture {
 public:
  StderrCapture() : path_(dir_.str() + "/stderr") {
    std::fflush(stderr);
    saved_ = ::dup(2);
    FILE* f = std::fopen(path_.c_str(), "w");
    if (f != nullptr) {
      ::dup2(::fileno(f), 2);
      std::fclose(f);
    }
  }
  ~StderrCapture() { restore(); }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;
  std::string text() {
    restore();
    std::ifstream in(path_);
    std::stringstream b;
    b << in.rdbuf();
    return b.str();
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
  }
  TempDir dir_;
  std::string path_;
  int saved_ = -1;
};

// How often `what` occurs in `text`.
inline size_t occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

}  // namespace atrium::testing

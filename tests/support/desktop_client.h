// The stock SPICE client users have, for end-to-end tests: virt-viewer's remote-viewer on a
// virtual X screen (Xvfb), with its debug log, and what the host sees of it (established TCP
// connections to a display port, a screenshot of the screen). See ../shared/spec/CLIENTS.md.
#pragma once

#include <memory>
#include <string>

#include "support/test_support.h"

namespace atrium::testing {

// An Xvfb server on a free display number, stopped when the object dies.
class VirtualScreen {
 public:
  // Starts Xvfb; without Xvfb or remote-viewer installed, says why in *why and returns null.
  static std::unique_ptr<VirtualScreen> start(std::string* why);
  ~VirtualScreen();
  VirtualScreen(const VirtualScreen&) = delete;
  VirtualScreen& operator=(const VirtualScreen&) = delete;

  const std::string& display() const { return display_; }  // ":N"
  // `import -window root` into `png`; false when ImageMagick's import is missing or fails.
  bool screenshot(const std::string& png) const;
  // How many distinct colours a picture has (`convert png -format %k info:`); -1 on error.
  static int colours(const std::string& png);

 private:
  VirtualScreen(std::string display, int pid) : display_(std::move(display)), pid_(pid) {}
  std::string display_;
  int pid_;
};

// remote-viewer --debug on a copy of a .vv file (the client deletes the file it opens:
// delete-this-file=1). Killed when the object dies.
class RemoteViewer {
 public:
  RemoteViewer(const VirtualScreen& screen, const std::string& vv, const std::string& dir,
               const std::string& name);
  ~RemoteViewer();
  RemoteViewer(const RemoteViewer&) = delete;
  RemoteViewer& operator=(const RemoteViewer&) = delete;

  bool running() const;
  std::string log() const;
  // Whether the debug log contains `text`, waiting up to `ms`.
  bool wait_log(const std::string& text, int ms) const;
  // Waits up to `ms` for the process to exit by itself.
  bool wait_exit(int ms) const;
  void kill();

 private:
  std::string log_path_;
  int pid_ = -1;
};

// Established TCP connections to 127.0.0.1:port (the clients' side), counted with `ss`.
int established_to(int port);

}  // namespace atrium::testing

#include "support/desktop_client.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "support/qemu_e2e.h"

namespace atrium::testing {

namespace {

int start_background(const std::string& cmd) {
  std::string out = shell("(" + cmd + ") > /dev/null 2>&1 & echo $!");
  try {
    return std::stoi(out);
  } catch (...) {
    return -1;
  }
}

bool alive(int pid) {
  return pid > 0 && ::kill(pid, 0) == 0;
}

void stop(int pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  for (int i = 0; i < 50 && alive(pid); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (alive(pid)) ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, WNOHANG);
}

}  // namespace

std::unique_ptr<VirtualScreen> VirtualScreen::start(std::string* why) {
  for (const char* tool : {"Xvfb", "remote-viewer"}) {
    if (!have_command(tool)) {
      *why = std::string("no ") + tool + " (Debian packages xvfb and virt-viewer)";
      return nullptr;
    }
  }
  for (int n = 100 + static_cast<int>(::getpid() % 100); n < 400; n += 7) {
    if (std::filesystem::exists("/tmp/.X" + std::to_string(n) + "-lock")) continue;
    std::string display = ":" + std::to_string(n);
    int pid = start_background("exec Xvfb " + display + " -screen 0 1024x768x24 -nolisten tcp");
    for (int i = 0; i < 100; ++i) {
      if (std::filesystem::exists("/tmp/.X11-unix/X" + std::to_string(n))) {
        return std::unique_ptr<VirtualScreen>(new VirtualScreen(display, pid));
      }
      if (!alive(pid)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    stop(pid);
  }
  *why = "Xvfb did not start";
  return nullptr;
}

VirtualScreen::~VirtualScreen() {
  stop(pid_);
}

bool VirtualScreen::screenshot(const std::string& png) const {
  if (!have_command("import")) return false;
  return run_command("DISPLAY=" + display_ + " import -window root " + png + " > /dev/null 2>&1") ==
         0;
}

int VirtualScreen::colours(const std::string& png) {
  std::string out = shell("convert " + png + " -format %k info:");
  try {
    return std::stoi(out);
  } catch (...) {
    return -1;
  }
}

RemoteViewer::RemoteViewer(const VirtualScreen& screen, const std::string& vv,
                           const std::string& dir, const std::string& name) {
  std::string file = dir + "/" + name + ".vv";
  std::ofstream(file) << vv;
  log_path_ = dir + "/" + name + ".log";
  pid_ = start_background("DISPLAY=" + screen.display() +
                          " exec remote-viewer --debug --spice-debug " + file + " > " + log_path_ +
                          " 2>&1");
}

RemoteViewer::~RemoteViewer() {
  kill();
}

bool RemoteViewer::running() const {
  return alive(pid_);
}

std::string RemoteViewer::log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool RemoteViewer::wait_log(const std::string& text, int ms) const {
  for (int waited = 0; waited <= ms; waited += 50) {
    if (log().find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

bool RemoteViewer::wait_exit(int ms) const {
  for (int waited = 0; waited <= ms; waited += 50) {
    if (!running()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

void RemoteViewer::kill() {
  stop(pid_);
  pid_ = -1;
}

int established_to(int port) {
  std::string out =
      shell("ss -Htn state established '( dport = :" + std::to_string(port) + " )' | wc -l");
  try {
    return std::stoi(out);
  } catch (...) {
    return -1;
  }
}

}  // namespace atrium::testing

// A real OpenLDAP slapd for the directory tests and the benchmark: tools/ldap_test_server.sh
// generates its config, data and test CA in a temporary directory and starts it on two free
// loopback ports (ldap:// with StartTLS, ldaps://). stop() and start() again simulate the
// directory going down and coming back; the destructor stops it. ok() is false (and why()
// says why) when slapd is not installed: the tests then skip with that message.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "support/child_daemon.h"
#include "support/test_support.h"

namespace atrium::testing {

class Slapd {
 public:
  static constexpr const char* kBase = "dc=atrium,dc=test";
  static constexpr const char* kServiceDn = "cn=svc,ou=service,dc=atrium,dc=test";
  static constexpr const char* kServicePassword = "svc-pw-123";

  explicit Slapd(int nested = 5) : nested_(nested) {
    if (::access("/usr/sbin/slapd", X_OK) != 0) {
      why_ = "slapd is not installed (apt-get install slapd ldap-utils)";
      return;
    }
    port_ = child::free_port();
    sport_ = child::free_port();
    start();
  }
  ~Slapd() { stop(); }
  Slapd(const Slapd&) = delete;
  Slapd& operator=(const Slapd&) = delete;

  bool ok() const { return running_; }
  const std::string& why() const { return why_; }
  std::string ldap_url() const { return "ldap://127.0.0.1:" + std::to_string(port_); }
  std::string ldaps_url() const { return "ldaps://127.0.0.1:" + std::to_string(sport_); }
  std::string ca_file() const { return dir_.str() + "/ca.pem"; }
  std::string dir() const { return dir_.str(); }

  bool start() {
    std::string cmd = std::string(ATRIUM_SOURCE_DIR) + "/tools/ldap_test_server.sh " + dir_.str() +
                      " " + std::to_string(port_) + " " + std::to_string(sport_) + " " +
                      std::to_string(nested_);
    running_ = std::system(cmd.c_str()) == 0;
    if (!running_) why_ = "tools/ldap_test_server.sh failed; see " + dir_.str() + "/slapd.log";
    return running_;
  }

  void stop() {
    if (!running_) return;
    running_ = false;
    std::ifstream in(dir_.str() + "/slapd.pid");
    pid_t pid = 0;
    if (!(in >> pid) || pid <= 0) return;
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 200 && ::kill(pid, 0) == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  // Runs an ldap-utils command (ldapmodify, ldapmodrdn, ...) as the directory's root.
  int modify(const std::string& tool, const std::string& args_or_ldif, bool ldif = true) const {
    std::string cmd = "LDAPTLS_CACERT=" + ca_file() + " " + tool + " -x -H " + ldaps_url() +
                      " -D cn=admin," + kBase + " -w admin-pw-123 ";
    if (ldif) {
      std::string f = dir_.str() + "/change.ldif";
      std::ofstream(f) << args_or_ldif;
      cmd += "-f " + f;
    } else {
      cmd += args_or_ldif;
    }
    return std::system((cmd + " >/dev/null 2>&1").c_str());
  }

 private:
  TempDir dir_;
  int nested_;
  uint16_t port_ = 0;
  uint16_t sport_ = 0;
  bool running_ = false;
  std::string why_;
};

}  // namespace atrium::testing

// The agent's run loop: enroll (first start), register with a broker chosen as seed 001 says,
// heartbeat with load and sessions, apply the desired configuration (server agents: the
// remote-app and remote-user lists, into a local state file; VM agents: the pool's policy),
// report the inventory (desktop entries, watched with inotify, and what the lists hold), and
// start over with another broker when the one in use stops answering. Foreground; one log
// line per event on stderr; SIGTERM (stop_fd readable) ends it cleanly.
#pragma once

#include <atomic>
#include <string>

#include "agent/core.h"

namespace atrium::agent {

class Agent {
 public:
  // stop_fd: becomes readable when the agent must stop (the self-pipe of the signal handler).
  Agent(Config cfg, int stop_fd);
  // 0 on a clean stop (or --once success), 1 when --once could not register and report,
  // 2 when the agent cannot work (no credential and no enrollment token).
  int run();

 private:
  struct Impl;
  Config cfg_;
  int stop_fd_;
};

// The machine id the agent enrolls with: SMBIOS system UUID (/sys/class/dmi/id/product_uuid,
// which libvirt sets to the domain UUID), else /etc/machine-id.
std::string default_machine_id();

}  // namespace atrium::agent

// The whole decision state: every module's state, folded from the log by evolve().
// The single writer keeps one instance to decide; projections keep another to answer reads.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

#include "domain/agents.h"
#include "domain/appcloud.h"
#include "domain/directories.h"
#include "domain/event.h"
#include "domain/hosts.h"
#include "domain/pools.h"
#include "domain/totp.h"
#include "domain/users.h"

namespace atrium::domain {

struct State {
  uint64_t position = 0;  // last applied global position
  std::unordered_map<std::string, uint64_t> stream_versions;
  UsersState users;
  AppCloudState appcloud;
  HostsState hosts;
  PoolsState pools;
  DirectoriesState directories;
  TotpState totp;
  AgentsState agents;

  uint64_t version_of(const std::string& stream) const {
    auto it = stream_versions.find(stream);
    return it == stream_versions.end() ? 0 : it->second;
  }
};

// Folds one event into the state. Unknown event types are ignored (forward compatibility:
// an older binary replaying a newer log keeps what it understands).
void evolve(State& s, const Event& e, const Applied& at);

// Checks an If-Match expectation against a stream's current version.
Status check_expected(const State& s, const std::string& stream,
                      const std::optional<uint64_t>& expected);

// A canonical JSON dump of the state, for replay-equality tests and debugging.
Json state_to_json(const State& s);

// Inverse of state_to_json, for snapshots. An error (never a partial state) when the JSON
// is not a snapshot this binary can read.
Result<State> state_from_json(const Json& j);

}  // namespace atrium::domain

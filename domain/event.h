// Domain events and the decide/evolve conventions shared by every module.
//
//   decide(state, command, ctx) -> Result<Events>   (pure: no I/O, time comes in ctx)
//   evolve(state, event)        -> state            (pure fold, used live and on replay)
//
// A command that would change nothing yields no events. Event type tags are stored forever:
// never rename one; change a shape by bumping `schema` and teaching evolve the old one.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"

namespace atrium::domain {

using Json = nlohmann::json;

struct Event {
  std::string stream;   // entity stream, e.g. "user-<id>"
  std::string type;     // past tense, e.g. "UserCreated"
  uint32_t schema = 1;  // shape version of `data`
  Json data;
};

using Events = std::vector<Event>;

// Facts a decider may use that do not come from state: the clock and who acts.
struct Context {
  int64_t now_ms = 0;
  std::string actor;  // user id, "system" or an agent id
};

// Position metadata of an applied event, for views that show history.
struct Applied {
  uint64_t position = 0;
  uint64_t stream_version = 0;
  int64_t recorded_at_ms = 0;
};

}  // namespace atrium::domain

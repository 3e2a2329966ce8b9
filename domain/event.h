// Domain events and the decide/evolve conventions shared by every module.
//
//   decide(state, command, ctx) -> Result<Events>   (pure: no I/O, time comes in ctx)
//   evolve(state, event)        -> state            (pure fold, used live and on replay)
//
// A command that would change nothing yields no events. Event type tags are stored forever:
// never rename one; change a shape by bumping `schema` and teaching evolve the old one.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common/result.h"

namespace atrium::domain {

using Json = nlohmann::json;

// An integer field read back from stored JSON (snapshots, event data). nlohmann's
// get<integer>() static_casts a float, which is undefined behaviour when the value does not
// fit (the snapshot fuzzer fed 7.8e90 to a uint64_t field); this throws std::out_of_range
// instead, which every codec already turns into a refused input. Non-floats read as get<T>().
template <typename T>
T int_of(const Json& j) {
  static_assert(std::is_integral_v<T>);
  if (j.is_number_float()) {
    const double d = j.get<double>();
    const double lo = static_cast<double>(std::numeric_limits<T>::min());
    const double hi = std::ldexp(1.0, std::numeric_limits<T>::digits);  // max + 1, exact
    if (!(d >= lo && d < hi)) throw std::out_of_range("a number out of range for its field");
  }
  return j.get<T>();
}

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

// "Given these events, when this command, then these events or this error": the harness of the
// hosts and pools decider tests. Each decided batch is folded in as the pipeline would, and
// check_replay() shows that the log rebuilds the same state (also through the snapshot codec).
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "domain/state.h"

namespace atrium::domain::testing {

struct Given {
  State s;
  uint64_t pos = 0;
  Context ctx{1000, "test"};
  std::vector<std::pair<Event, Applied>> log;

  Given& apply(const Events& es) {
    for (const auto& e : es) {
      Applied at{++pos, s.version_of(e.stream) + 1, ctx.now_ms};
      evolve(s, e, at);
      log.push_back({e, at});
    }
    return *this;
  }
  template <typename C>
  Events ok(const C& c) {
    auto r = decide(s, c, ctx);
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    Events es = *r;
    apply(es);
    return es;
  }
  template <typename C>
  Error err(const C& c) {
    auto r = decide(s, c, ctx);
    REQUIRE_FALSE(r.ok());
    return r.error();
  }
  void check_replay() {
    State r;
    for (const auto& [e, at] : log) evolve(r, e, at);
    CHECK(state_to_json(r) == state_to_json(s));
    auto back = state_from_json(state_to_json(s));
    REQUIRE(back.ok());
    CHECK(state_to_json(*back) == state_to_json(s));
  }
};

inline std::vector<std::string> types(const Events& es) {
  std::vector<std::string> out;
  for (const auto& e : es) out.push_back(e.type);
  return out;
}

using V = std::vector<std::string>;

}  // namespace atrium::domain::testing

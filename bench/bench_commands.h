// Commands the pipeline benchmarks submit (bench_core, bench_ha): one CreateUser each, so a
// run measures the pipeline and the store, not a module's rules.
#pragma once

#include <string>

#include "domain/state.h"
#include "domain/users.h"
#include "pipeline/pipeline.h"

namespace atrium::bench {

inline pipeline::Command create_user(const std::string& id) {
  pipeline::Command c;
  c.name = "CreateUser";
  domain::CreateUser cu{id, "user-" + id, {"user"}, ""};
  c.decide = [cu](const domain::State& s, const domain::Context& ctx) {
    return domain::decide(s, cu, ctx);
  };
  c.meta.actor = "bench";
  return c;
}

}  // namespace atrium::bench

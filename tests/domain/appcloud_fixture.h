// Test harness for the application-cloud deciders: "given (the events of) these commands,
// when this command, then these events or this error". Shared by appcloud_test.cpp and
// placement_test.cpp.
#pragma once

#include <doctest/doctest.h>

#include <optional>
#include <type_traits>
#include <string>
#include <variant>
#include <vector>

#include "domain/appcloud.h"
#include "domain/placement.h"
#include "domain/state.h"
#include "domain/users.h"

namespace atrium::domain::testing {

// A load report as brokers before issue 11 recorded it (ServerLoadReported on
// server-load-<id>): the broker no longer appends these (load is liveness now), but old logs
// hold them and must keep folding. reported_at_ms = 0 means now.
struct ReportServerLoad {
  std::string server_id;
  double cpu_load = 0;
  double memory_load = 0;
  uint32_t sessions = 0;
  int64_t reported_at_ms = 0;
};
inline Result<Events> legacy_load_events(const State& s, const ReportServerLoad& c,
                                         const Context& ctx) {
  if (s.appcloud.server(c.server_id) == nullptr) return not_found("server " + c.server_id);
  if (auto st = validate_load(LoadReport{c.cpu_load, c.memory_load, c.sessions, 0, 0}); !st) {
    return st.error();
  }
  int64_t at = c.reported_at_ms > 0 ? c.reported_at_ms : ctx.now_ms;
  return Events{{server_load_stream(c.server_id), "ServerLoadReported", 1,
                 Json{{"server_id", c.server_id},
                      {"cpu_load", c.cpu_load},
                      {"memory_load", c.memory_load},
                      {"sessions", c.sessions},
                      {"reported_at_ms", at}}}};
}

using Cmd = std::variant<CreateUser, UpdateUser, CreateCluster, UpdateCluster, DeleteCluster,
                         CreateServer, UpdateServer, DeleteServer, AddServerApplication,
                         RemoveServerApplication, JoinCluster, LeaveCluster, Publish, Unpublish,
                         Authorize, Unauthorize, ReportServerLoad, ReportServerInventory,
                         LaunchApplication, EndApplicationSession>;

inline constexpr int64_t kNow = 10'000'000;  // the test clock, ms

// ---- command builders -------------------------------------------------------------------
inline std::string exe(const std::string& app) { return "C:\\Apps\\" + app + ".exe"; }
// The id of a test application named `name` (see app_on()).
inline std::string app(const std::string& name) { return application_id(name, exe(name)); }

inline Cmd user(const std::string& id) { return CreateUser{id, "user-" + id, {"user"}, ""}; }
inline Cmd cluster(const std::string& id, ClusterPlacement p = {}) {
  return CreateCluster{id, "cluster " + id, "", p};
}
inline Cmd server(const std::string& id, bool service = true) {
  return CreateServer{id, "server " + id, id + ".example.org", "windows", "2019", 4, 8192,
                      service};
}
inline Cmd app_on(const std::string& server_id, const std::string& name) {
  return AddServerApplication{server_id, name, exe(name), name + " application",
                              "/usr/share/applications/" + name + ".desktop"};
}
inline Cmd join(const std::string& server_id, const std::string& cluster_id) {
  return JoinCluster{server_id, cluster_id, std::nullopt};
}
inline Cmd publish(const std::string& id, const std::string& app_name, Scope scope,
                   const std::string& target) {
  return Publish{id, app(app_name), scope, target};
}
inline Cmd authorize(const std::string& id, const std::string& user_id,
                     const std::string& app_name, Scope scope, const std::string& target) {
  return Authorize{id, user_id, app(app_name), scope, target};
}
inline Cmd load(const std::string& server_id, double cpu, double mem, uint32_t sessions,
                int64_t age_ms = 0) {
  return ReportServerLoad{server_id, cpu, mem, sessions, kNow - age_ms};
}

// ---- the world --------------------------------------------------------------------------
struct Logged {
  Event event;
  Applied at;
};

struct World {
  State s;
  Context ctx{kNow, "admin"};
  std::vector<Logged> log;

  Result<Events> decide(const Cmd& c) const {
    return std::visit(
        [&](const auto& x) -> Result<Events> {
          if constexpr (std::is_same_v<std::decay_t<decltype(x)>, ReportServerLoad>) {
            return legacy_load_events(s, x, ctx);
          } else {
            return domain::decide(s, x, ctx);
          }
        },
        c);
  }

  void apply(const Events& es) {
    for (const Event& e : es) {
      Applied at{s.position + 1, s.version_of(e.stream) + 1, ctx.now_ms};
      evolve(s, e, at);
      log.push_back({e, at});
    }
  }

  // Decides and applies each command; every one must succeed.
  World& given(const std::vector<Cmd>& cmds) {
    for (const Cmd& c : cmds) {
      auto r = decide(c);
      if (!r.ok()) FAIL("given command refused: " << r.error().reason << ": "
                                                   << r.error().message);
      apply(*r);
    }
    return *this;
  }

  // The state rebuilt from the log as the store would hand it back (data serialized and
  // parsed again), for replay-equality checks.
  State replayed() const {
    State fresh;
    for (const auto& l : log) {
      Event e = l.event;
      e.data = Json::parse(e.data.dump());
      evolve(fresh, e, l.at);
    }
    return fresh;
  }
};

// ---- expectations -----------------------------------------------------------------------
struct Then {
  std::vector<std::string> events;  // "Type stream", in order
  Json data = nullptr;              // a subset of the last event's data
  std::optional<Code> code;         // set: an error is expected
  std::string reason;
};

inline Then events(std::vector<std::string> e, Json data = nullptr) {
  return Then{std::move(e), std::move(data), std::nullopt, ""};
}
inline Then error(Code c, std::string reason) { return Then{{}, nullptr, c, std::move(reason)}; }

inline void check_subset(const Json& actual, const Json& expected) {
  for (auto it = expected.begin(); it != expected.end(); ++it) {
    const std::string& key = it.key();
    CAPTURE(key);
    REQUIRE(actual.contains(key));
    CHECK(actual[key] == it.value());
  }
}

// Runs `when` on the world and checks the outcome; on success applies the events and checks
// that replaying the whole log gives the same state.
inline void expect(World& w, const Cmd& when, const Then& then) {
  auto r = w.decide(when);
  if (then.code) {
    REQUIRE_MESSAGE(!r.ok(), "expected error " << then.reason);
    CHECK(r.error().code == *then.code);
    CHECK(r.error().reason == then.reason);
    CHECK(!r.error().message.empty());
    return;
  }
  REQUIRE_MESSAGE(r.ok(), "unexpected error " << r.error().reason << ": " << r.error().message);
  std::vector<std::string> got;
  for (const Event& e : *r) got.push_back(e.type + " " + e.stream);
  CHECK(got == then.events);
  if (!then.data.is_null()) {
    REQUIRE(!r->empty());
    check_subset(r->back().data, then.data);
  }
  w.apply(*r);
  CHECK(state_to_json(w.replayed()) == state_to_json(w.s));
}

struct Row {
  const char* name;
  std::vector<Cmd> given;
  Cmd when;
  Then then;
};

inline void run_table(const std::vector<Row>& rows) {
  for (const Row& row : rows) {
    SUBCASE(row.name) {
      World w;
      w.given(row.given);
      expect(w, row.when, row.then);
    }
  }
}

// Concatenates command lists (a common prefix and a row's own).
inline std::vector<Cmd> operator+(std::vector<Cmd> a, const std::vector<Cmd>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace atrium::domain::testing

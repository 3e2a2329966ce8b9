// Users and tokens: given events, when command, then events or error.
#include "domain/users.h"

#include <doctest/doctest.h>

#include "domain/state.h"
#include "domain/user_names.h"

using namespace atrium;
using namespace atrium::domain;

namespace {

struct Given {
  State s;
  uint64_t pos = 0;
  Context ctx{1000, "test"};
  Given& apply(const Events& es) {
    for (const auto& e : es) {
      evolve(s, e, {++pos, s.version_of(e.stream) + 1, ctx.now_ms});
    }
    return *this;
  }
  template <typename C>
  Given& ok(const C& c) {
    auto r = decide(s, c, ctx);
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    return apply(*r);
  }
};

}  // namespace

TEST_CASE("CreateUser: table of refusals") {
  Given g;
  g.ok(CreateUser{"u1", "alice", {"admin"}, "h"});
  struct Row {
    const char* what;
    CreateUser cmd;
    Code code;
    const char* reason;
  };
  std::vector<Row> rows = {
      {"duplicate id", {"u1", "other", {"user"}, ""}, Code::already_exists, "user_exists"},
      {"duplicate name", {"u2", "alice", {"user"}, ""}, Code::already_exists, "user_name_taken"},
      {"empty name", {"u3", "", {"user"}, ""}, Code::invalid_argument, "invalid_name"},
      {"control char", {"u3", "a\nb", {"user"}, ""}, Code::invalid_argument, "invalid_name"},
      {"long name", {"u3", std::string(129, 'x'), {"user"}, ""}, Code::invalid_argument, "invalid_name"},
      {"no role", {"u3", "bob", {}, ""}, Code::invalid_argument, "invalid_roles"},
      {"unknown role", {"u3", "bob", {"root"}, ""}, Code::invalid_argument, "invalid_roles"},
  };
  for (const auto& row : rows) {
    CAPTURE(row.what);
    auto r = decide(g.s, row.cmd, g.ctx);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == row.code);
    CHECK(r.error().reason == row.reason);
  }
  auto ok = decide(g.s, CreateUser{"u3", "bob", {"user"}, "h2"}, g.ctx);
  REQUIRE(ok.ok());
  REQUIRE(ok->size() == 1);
  CHECK((*ok)[0].type == "UserCreated");
  CHECK((*ok)[0].stream == "user-u3");
}

TEST_CASE("UpdateUser: changes, no-op yields no events, If-Match, last admin protected") {
  Given g;
  g.ok(CreateUser{"a", "admin", {"admin"}, "h"}).ok(CreateUser{"b", "bob", {"user"}, "h"});
  auto same = decide(g.s, UpdateUser{"b", std::nullopt, std::set<std::string>{"user"}, {}, false}, g.ctx);
  REQUIRE(same.ok());
  CHECK(same->empty());

  auto stale = decide(g.s, UpdateUser{"b", 5, std::set<std::string>{"agent"}, {}, {}}, g.ctx);
  REQUIRE_FALSE(stale.ok());
  CHECK(stale.error().code == Code::version_mismatch);

  g.ok(UpdateUser{"b", 1, std::set<std::string>{"user", "admin"}, {}, {}});
  CHECK(g.s.users.find("b")->version == 2);
  CHECK(g.s.users.enabled_admins == 2);
  g.ok(UpdateUser{"a", std::nullopt, {}, {}, true});  // one admin left: b
  CHECK(g.s.users.enabled_admins == 1);
  auto last = decide(g.s, UpdateUser{"b", std::nullopt, std::set<std::string>{"user"}, {}, {}}, g.ctx);
  REQUIRE_FALSE(last.ok());
  CHECK(last.error().reason == "last_admin");
  auto del = decide(g.s, DeleteUser{"b", std::nullopt}, g.ctx);
  REQUIRE_FALSE(del.ok());
  CHECK(del.error().reason == "last_admin");
  auto missing = decide(g.s, UpdateUser{"zz", std::nullopt, {}, {}, true}, g.ctx);
  CHECK(missing.error().code == Code::not_found);
}

TEST_CASE("tokens: authenticate until expiry, revocation, disable, password change, delete") {
  Given g;
  g.ok(CreateUser{"a", "admin", {"admin"}, "h"}).ok(CreateUser{"u", "user", {"user"}, "h"});
  std::string t1(64, '1'), t2(64, '2'), t3(64, '3');
  g.ok(IssueToken{"u", t1, 5000});
  CHECK(g.s.users.authenticate(t1, 4999) != nullptr);
  CHECK(g.s.users.authenticate(t1, 5000) == nullptr);  // expired at its instant
  CHECK(g.s.users.authenticate(t2, 1000) == nullptr);  // unknown

  CHECK_FALSE(decide(g.s, IssueToken{"u", "short", 5000}, g.ctx).ok());
  CHECK_FALSE(decide(g.s, IssueToken{"u", t2, 999}, g.ctx).ok());  // already expired
  CHECK(decide(g.s, IssueToken{"u", t1, 5000}, g.ctx).error().code == Code::already_exists);

  g.ok(RevokeToken{t1});
  CHECK(g.s.users.authenticate(t1, 1000) == nullptr);
  auto again = decide(g.s, RevokeToken{t1}, g.ctx);
  REQUIRE(again.ok());
  CHECK(again->empty());  // revoking twice changes nothing

  g.ok(IssueToken{"u", t2, 9000});
  g.ok(UpdateUser{"u", std::nullopt, {}, {}, true});
  CHECK(g.s.users.authenticate(t2, 1000) == nullptr);
  CHECK_FALSE(decide(g.s, IssueToken{"u", t3, 9000}, g.ctx).ok());  // disabled: no login
  g.ok(UpdateUser{"u", std::nullopt, {}, {}, false});
  CHECK(g.s.users.authenticate(t2, 1000) == nullptr);  // disabling ended it for good
  std::string t4(64, 'd');
  g.ok(IssueToken{"u", t4, 9000});
  CHECK(g.s.users.authenticate(t4, 1000) != nullptr);
  g.ok(UpdateUser{"u", std::nullopt, {}, std::string("newhash"), {}});
  CHECK(g.s.users.authenticate(t4, 1000) == nullptr);  // password change ends sessions

  g.ok(IssueToken{"u", t3, 9000});
  g.ok(DeleteUser{"u", std::nullopt});
  CHECK(g.s.users.authenticate(t3, 1000) == nullptr);
  CHECK(g.s.users.tokens.count(t3) == 0);
  CHECK(g.s.users.find_by_name("user") == nullptr);
}

TEST_CASE("replay of the same events gives the same state") {
  Given g;
  g.ok(CreateUser{"a", "admin", {"admin"}, "h"}).ok(CreateUser{"u", "user", {"user"}, "h"});
  g.ok(IssueToken{"u", std::string(64, 'f'), 5000}).ok(UpdateUser{"u", 1, std::set<std::string>{"agent"}, {}, {}});
  // Re-fold the decided events recorded so far into a fresh state.
  Given h;
  h.ok(CreateUser{"a", "admin", {"admin"}, "h"}).ok(CreateUser{"u", "user", {"user"}, "h"});
  h.ok(IssueToken{"u", std::string(64, 'f'), 5000}).ok(UpdateUser{"u", 1, std::set<std::string>{"agent"}, {}, {}});
  CHECK(state_to_json(g.s) == state_to_json(h.s));
}

TEST_CASE("user names: NFKC, one script, no invisibles; confusable names are refused") {
  CHECK(*normalize_user_name("\xef\xbd\x81\xef\xbd\x84\xef\xbd\x8d\xef\xbd\x89\xef\xbd\x8e") ==
        "admin");
  CHECK(validate_user_name("name", "jean.dupont").ok());
  CHECK(validate_user_name("name", "\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd").ok());  // иван
  CHECK(validate_user_name("name", "\xe5\xbc\xa0\xe4\xbc\x9f").ok());          // 张伟
  CHECK(validate_user_name("name", "tanaka\xe5\xa4\xaa\xe9\x83\x8e").ok());    // Latin + Han
  for (const char* bad :
       {"",
        "\xd0\xb0"
        "dmin",
        "a\xe2\x80\x8b"
        "b",
        "\xe2\x80\xae"
        "x",
        "a b", "_x", "x\xef\xbd\x81" /* not NFKC */, "a1\xd9\xa3" /* mixed digits */}) {
    CAPTURE(bad);
    auto st = validate_user_name("name", bad);
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().reason == "invalid_name");
  }
  CHECK(user_name_skeleton("roman") == user_name_skeleton("rornan"));
  CHECK(user_name_skeleton("coco") == user_name_skeleton("\xd1\x81\xd0\xbe\xd1\x81\xd0\xbe"));
  CHECK(user_name_skeleton("user10") != user_name_skeleton("user01"));

  Given g;
  g.ok(CreateUser{"a", "roman", {"user"}, "h"});
  auto conf = decide(g.s, CreateUser{"b", "rornan", {"user"}, "h"}, g.ctx);
  REQUIRE_FALSE(conf.ok());
  CHECK(conf.error().reason == "user_name_confusable");
  g.ok(DeleteUser{"a", std::nullopt});  // the name and its look-alikes are free again
  g.ok(CreateUser{"b", "rornan", {"user"}, "h"});
}

TEST_CASE("agent bindings need the role agent and an existing server") {
  Given g;
  auto no_server = decide(g.s, CreateUser{"a", "agent1", {"agent"}, "", "srv-x"}, g.ctx);
  REQUIRE_FALSE(no_server.ok());
  CHECK(no_server.error().code == Code::not_found);
  auto not_agent = decide(g.s, CreateUser{"a", "agent1", {"user"}, "", "srv-x"}, g.ctx);
  REQUIRE_FALSE(not_agent.ok());
  CHECK(not_agent.error().reason == "agent_binding_needs_agent_role");
}

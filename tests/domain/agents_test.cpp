// Agents (issue 11, domain/agents.h): enrollment, the registration state machine (unknown,
// enrolled, soft, hard, unregistered, revoked), the monitor's pure planner with its start-up
// grace, VM agents as a desktop-session signal, server agents' inventory, and placement
// skipping servers whose agent is not hard-registered. Given events, when command, then events
// or error; every log replays to the same state (also through the snapshot codec).
#include "domain/agents.h"

#include <doctest/doctest.h>

#include "domain/appcloud.h"
#include "domain/placement.h"
#include "domain/sha256.h"
#include "domain/state.h"
#include "given.h"
#include "pools_fixture.h"

using namespace atrium;
using namespace atrium::domain;
using namespace atrium::domain::testing;

namespace {

std::string h(const std::string& secret) {
  return sha256_hex(secret);
}

CreateServer server_cmd(const std::string& id) {
  return CreateServer{id, "server-" + id, id + ".example.org", "linux", "12", 4, 8192, true};
}

CreateEnrollmentToken token_cmd(const std::string& id, const std::string& secret,
                                const std::string& kind, const std::string& server = "",
                                const std::string& vm = "", const std::string& pool = "",
                                uint32_t uses = 1) {
  return CreateEnrollmentToken{id, h(secret), kind, server, vm, pool, uses, 1000 + 86'400'000};
}

EnrollAgent enroll_cmd(const std::string& id, const std::string& token,
                       const std::string& credential, const std::string& machine) {
  return EnrollAgent{id, h(token), h(credential), "host-" + id, "linux", "1.0", machine};
}

AgentTiming timing(int64_t started_at = 0) {
  return AgentTiming{30'000, 3, started_at};
}

}  // namespace

TEST_CASE(
    "11: the registration state machine: unknown, enrolled, soft, hard, unregistered, revoked") {
  Given g;
  g.ok(server_cmd("s1"));
  // unknown: no token, no agent.
  CHECK(g.err(enroll_cmd("a1", "tok", "cred", "m1")).reason == "enrollment_token_invalid");
  CHECK(g.err(RegisterAgent{"a1"}).reason == "agent_not_found");

  // enrolled (a token bound later, kind server).
  g.ok(token_cmd("t1", "tok", "server"));
  auto en = g.ok(enroll_cmd("a1", "tok", "cred", "m1"));
  CHECK(types(en) == V{"AgentEnrolled"});
  CHECK(en[0].stream == "agent-a1");
  CHECK(en[0].data.count("credential_hash") == 1);
  const Agent* a = g.s.agents.find("a1");
  REQUIRE(a != nullptr);
  CHECK(a->registration == "enrolled");
  CHECK(g.s.agents.by_credential_hash(h("cred")) == a);
  CHECK(g.s.agents.token("t1")->used == 1);
  // The token was for one use.
  CHECK(g.err(enroll_cmd("a2", "tok", "cred2", "m2")).reason == "enrollment_token_invalid");

  // soft: registered, bound to nothing brokered.
  CHECK(types(g.ok(RegisterAgent{"a1"})) == V{"AgentRegistered"});
  CHECK(g.s.agents.find("a1")->registration == "soft");
  CHECK(g.ok(RegisterAgent{"a1"}).empty());  // a repeat records nothing
  CHECK(agent_config(g.s, *g.s.agents.find("a1")) == Json{{"kind", "server"}});

  // hard: the admin binds it to a server of the catalog, with no request from the agent.
  auto bound = g.ok(BindAgent{"a1", "s1", "", "admin"});
  CHECK(types(bound) == V{"AgentBound", "AgentRegistrationChanged"});
  CHECK(bound[1].data["registration"] == "hard");
  CHECK(effective_registration(g.s, *g.s.agents.find("a1")) == "hard");
  CHECK(agent_config(g.s, *g.s.agents.find("a1"))["server_id"] == "s1");

  // unregistered: silent past interval x grace (the monitor's planner says so).
  int64_t registered_at = g.s.agents.find("a1")->registered_at_ms;
  auto none = [](const std::string&) { return int64_t{0}; };
  CHECK(agent_actions(g.s, none, registered_at + 90'000, timing()).empty());
  auto acts = agent_actions(g.s, none, registered_at + 90'001, timing());
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].kind == "unregister");
  CHECK(types(g.ok(UnregisterAgent{"a1", "missed_heartbeats", 0, acts[0].deadline_ms})) ==
        V{"AgentUnregistered"});
  CHECK(effective_registration(g.s, *g.s.agents.find("a1")) == "unregistered");
  CHECK(g.ok(UnregisterAgent{"a1", "missed_heartbeats", 0, 0}).empty());  // once
  // ... and its next heartbeat registers it again, without an admin.
  auto back = g.ok(RegisterAgent{"a1", "heartbeat", 5000});
  CHECK(back[0].data["registration"] == "hard");
  CHECK(back[0].data["cause"] == "heartbeat");

  // revoked: terminal; its credential answers "revoked".
  CHECK(types(g.ok(RevokeAgent{"a1", "admin"})) == V{"AgentRevoked"});
  CHECK(g.s.agents.by_credential_hash(h("cred"))->revoked());
  CHECK(g.s.agents.of_server("s1") == nullptr);
  CHECK(g.err(RegisterAgent{"a1"}).reason == "agent_revoked");
  CHECK(g.err(BindAgent{"a1", "s1", "", "admin"}).reason == "agent_revoked");
  CHECK(g.ok(RevokeAgent{"a1", "admin"}).empty());
  g.check_replay();
}

TEST_CASE(
    "11: a broker that just started waits one full grace period before declaring anyone missing") {
  Given g;
  g.ok(server_cmd("s1"));
  g.ok(token_cmd("t1", "tok", "", "s1"));
  g.ok(enroll_cmd("a1", "tok", "cred", "m1"));
  g.ok(RegisterAgent{"a1"});
  auto none = [](const std::string&) { return int64_t{0}; };
  // Restarted at 10,000,000: the liveness table is empty, yet nobody is missing for 90 s.
  int64_t start = 10'000'000;
  CHECK(agent_actions(g.s, none, start + 89'000, timing(start)).empty());
  CHECK(agent_actions(g.s, none, start + 91'000, timing(start)).size() == 1);
  // A heartbeat since the start keeps it.
  auto fresh = [&](const std::string&) { return start + 60'000; };
  CHECK(agent_actions(g.s, fresh, start + 120'000, timing(start)).empty());
}

TEST_CASE(
    "11: tokens: bindings, uses, expiry, revocation; the same machine re-enrolls the same agent") {
  Given g;
  g.ok(server_cmd("s1"));
  CHECK(g.err(token_cmd("t0", "x", "", "nope")).reason == "server_not_found");
  CHECK(g.err(token_cmd("t0", "x", "")).reason == "invalid_enrollment_token");
  CHECK(g.err(token_cmd("t0", "x", "vm", "s1")).reason == "invalid_enrollment_token");
  CHECK(g.err(token_cmd("t0", "x", "server", "s1", "vm1")).reason == "invalid_enrollment_token");
  g.ok(token_cmd("t1", "tok", "", "s1", "", "", 2));
  g.ok(enroll_cmd("a1", "tok", "cred1", "m1"));
  CHECK(g.s.agents.find("a1")->server_id == "s1");
  // Enrolling again from the same machine: the same agent, a new credential; the old one is dead.
  auto re = g.ok(enroll_cmd("a-new", "tok", "cred2", "m1"));
  CHECK(re[0].data["id"] == "a1");
  CHECK(re[0].data["re_enrolled"] == true);
  CHECK(g.s.agents.by_credential_hash(h("cred1")) == nullptr);
  CHECK(g.s.agents.by_credential_hash(h("cred2"))->id == "a1");
  CHECK(g.s.agents.find("a1")->registration == "enrolled");
  // Another machine for the same server: one agent per server.
  g.ok(token_cmd("t2", "tok2", "", "s1"));
  CHECK(g.err(enroll_cmd("a2", "tok2", "cred3", "m2")).reason == "server_has_agent");
  // Expired and revoked tokens enroll nobody.
  g.ok(token_cmd("t3", "tok3", "server"));
  g.ctx.now_ms += 86'400'001;
  CHECK(g.err(enroll_cmd("a3", "tok3", "cred4", "m3")).reason == "enrollment_token_invalid");
  g.ctx.now_ms -= 86'400'001;
  CHECK(types(g.ok(RevokeEnrollmentToken{"t3"})) == V{"EnrollmentTokenRevoked"});
  CHECK(g.err(enroll_cmd("a3", "tok3", "cred4", "m3")).reason == "enrollment_token_invalid");
  g.check_replay();
}

TEST_CASE("11: a deleted server leaves its agent soft, and the monitor records it") {
  Given g;
  g.ok(server_cmd("s1"));
  g.ok(token_cmd("t1", "tok", "", "s1"));
  g.ok(enroll_cmd("a1", "tok", "cred", "m1"));
  CHECK(g.ok(RegisterAgent{"a1"})[0].data["registration"] == "hard");
  g.ok(DeleteServer{"s1", std::nullopt});
  const Agent& a = *g.s.agents.find("a1");
  CHECK(a.server_id.empty());
  CHECK(effective_registration(g.s, a) == "soft");
  auto acts = agent_actions(
      g.s, [](const std::string&) { return int64_t{1000}; }, 2000, timing());
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].kind == "sync_registration");
  auto ch = g.ok(SyncAgentRegistration{"a1"});
  CHECK(types(ch) == V{"AgentRegistrationChanged"});
  CHECK(ch[0].data["registration"] == "soft");
  CHECK(g.ok(SyncAgentRegistration{"a1"}).empty());
  g.check_replay();
}

TEST_CASE(
    "11: a golden-image VM agent binds to its VM by UUID; the pool makes it hard and gives "
    "policy") {
  Given g = base("floating", 2);
  std::string vm = provision(g, "p", "running");
  std::string uuid = g.s.hosts.vm(vm)->uuid;
  // An agent from a pool token whose machine id is not a VM yet: enrolled unbound (soft).
  g.ok(token_cmd("t1", "tok", "", "", "", "p", 10));
  g.ok(enroll_cmd("a0", "tok", "cred0", "99999999-0000-4000-8000-000000000000"));
  g.ok(RegisterAgent{"a0"});
  CHECK(g.s.agents.find("a0")->registration == "soft");
  // The member's own agent: bound to it by its SMBIOS UUID (case does not matter).
  std::string upper = uuid;
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  g.ok(enroll_cmd("a1", "tok", "cred1", upper));
  CHECK(g.s.agents.find("a1")->vm_id == vm);
  CHECK(g.ok(RegisterAgent{"a1"})[0].data["registration"] == "hard");
  Json cfg = agent_config(g.s, *g.s.agents.find("a1"));
  CHECK(cfg["pool_id"] == "p");
  CHECK(cfg["policy"]["clipboard"] == true);
  CHECK(cfg["policy"]["folder_redirection"] == false);
  // A policy change is a new configuration version.
  std::string v1 = config_version(cfg);
  UpdatePool up = upd("p");
  up.policy = PoolPolicy{false, false, true, 600};
  g.ok(up);
  Json cfg2 = agent_config(g.s, *g.s.agents.find("a1"));
  CHECK(cfg2["policy"]["idle_timeout_s"] == 600);
  CHECK(config_version(cfg2) != v1);
  g.check_replay();
}

TEST_CASE(
    "11: the VM agent is a desktop-session signal; an unregistered agent deactivates the session") {
  Given g = base("floating", 2);
  std::string vm = provision(g, "p", "running");
  g.ok(RequestVmPower{vm, "op-start", "start", std::nullopt});
  g.ok(token_cmd("t1", "tok", "", "", vm));
  g.ok(enroll_cmd("a1", "tok", "cred", "m1"));
  g.ok(RegisterAgent{"a1"});
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  g.ok(RecordSessionTicket{"s1", g.ctx.now_ms + 120000, true, ""});
  RecordAgentSessions nobody{"a1", {}};
  RecordAgentSessions alice{"a1", {{"alice", "active"}}};
  RecordAgentSessions bob{"a1", {{"bob", "active"}}};
  // Before the user logs in the agent says nothing; someone else's login is not hers.
  CHECK_FALSE(agent_sessions_change(g.s, nobody));
  CHECK_FALSE(agent_sessions_change(g.s, bob));
  auto in = g.ok(alice);
  CHECK(types(in) == V{"DesktopSessionConnected"});
  CHECK(in[0].data["source"] == "agent");
  CHECK(g.s.pools.session("s1")->agent_present);
  CHECK(g.ok(alice).empty());  // a repeat is nothing
  auto out = g.ok(nobody);
  CHECK(types(out) == V{"DesktopSessionDisconnected"});
  CHECK(out[0].data["reason"] == "agent_logged_out");
  CHECK(g.s.pools.member(vm)->display_reset.empty());  // like a closed display: grace first
  g.ok(alice);
  // The agent watches the session: the client timeout does not apply while it is registered...
  int64_t later = g.ctx.now_ms + 10 * 60'000;
  for (const auto& act : power_actions(g.s, later, 90'000)) CHECK(act.id != "s1");
  // ... and once it is unregistered the session is deactivated (agent_silent).
  g.ok(UnregisterAgent{"a1", "missed_heartbeats", 0, 0});
  auto acts = power_actions(g.s, later, 90'000);
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].kind == "deactivate_session");
  CHECK(acts[0].reason == "agent_silent");
  g.check_replay();
}

TEST_CASE(
    "11: once the VM agent has spoken, the session follows it, not the display or the client") {
  Given g = base("floating", 2);
  std::string vm = provision(g, "p", "running");
  g.ok(RequestVmPower{vm, "op-start", "start", std::nullopt});
  g.ok(token_cmd("t1", "tok", "", "", vm));
  g.ok(enroll_cmd("a1", "tok", "cred", "m1"));
  g.ok(RegisterAgent{"a1"});
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  g.ok(RecordSessionTicket{"s1", g.ctx.now_ms + 120000, true, ""});
  uint64_t epoch = g.s.hosts.host(g.s.hosts.vm(vm)->host_id)->epoch;
  // Before the agent says anything the display is in charge.
  CHECK(types(g.ok(RecordDisplayClients{vm, epoch, true, "192.0.2.7"})) ==
        V{"DesktopSessionConnected"});
  // The user logs in inside the desktop: the agent's view, no change of state.
  CHECK(types(g.ok(RecordAgentSessions{"a1", {{"alice", "active"}}})) ==
        V{"DesktopSessionAgentSeen"});
  // The viewer closes but the user is still logged in: the agent says connected.
  CHECK(g.ok(RecordDisplayClients{vm, epoch, false, ""}).empty());
  CHECK(g.ok(ReportSession{"s1", "disconnected"}).empty());
  CHECK(g.s.pools.session("s1")->state == "connected");
  // The user logs out: disconnected, and neither a display nor a client flips it back.
  CHECK(types(g.ok(RecordAgentSessions{"a1", {}})) == V{"DesktopSessionDisconnected"});
  CHECK(g.ok(RecordDisplayClients{vm, epoch, true, "192.0.2.7"}).empty());
  CHECK(g.ok(ReportSession{"s1", "connected"}).empty());
  CHECK(g.s.pools.session("s1")->state == "disconnected");
  CHECK(types(g.ok(RecordAgentSessions{"a1", {{"alice", "active"}}})) ==
        V{"DesktopSessionConnected"});
  // A display-signalled session whose agent went silent is deactivated (agent_silent), not
  // left to a display that may be gone with the VM's network.
  g.ok(UnregisterAgent{"a1", "missed_heartbeats", 0, 0});
  auto acts = power_actions(g.s, g.ctx.now_ms + 60'000, 90'000);
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].reason == "agent_silent");
  // Unregistered, the agent is no longer in charge: the display speaks again.
  CHECK(types(g.ok(RecordDisplayClients{vm, epoch, false, ""})) == V{"DesktopSessionDisconnected"});
  g.check_replay();
}

TEST_CASE(
    "11: client reports are liveness: the monitor reads them from memory, and a restart waits") {
  Given g = base("floating", 2);
  std::string vm = provision(g, "p", "running");
  g.ok(RequestVmPower{vm, "op-start", "start", std::nullopt});
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  g.ok(RecordSessionTicket{"s1", g.ctx.now_ms + 120000, true, ""});
  g.ok(ReportSession{"s1", "connected"});
  // A report that changes nothing appends nothing (no DesktopSessionHeartbeat any more).
  g.ctx.now_ms += 10'000;
  CHECK(g.ok(ReportSession{"s1", "connected"}).empty());
  int64_t at = g.ctx.now_ms + 100'000;
  CHECK(power_actions(g.s, at, 90'000).size() == 1);  // nothing in memory: silent
  SessionLiveness live;
  live.client_seen = [&](const std::string&) { return at - 30'000; };
  CHECK(power_actions(g.s, at, 90'000, live).empty());
  // A broker that started 30 s ago knows no report yet: not silent before the timeout.
  SessionLiveness restarted;
  restarted.started_at_ms = at - 30'000;
  CHECK(power_actions(g.s, at, 90'000, restarted).empty());
  g.check_replay();
}

TEST_CASE("11: a server agent's inventory adds and removes what it found, and the lists heal") {
  Given g;
  g.ok(CreateUser{"u1", "user-one", {"user"}, ""});
  g.ok(server_cmd("s1"));
  g.ok(AddServerApplication{"s1", "Calc", "/usr/bin/calc", "", "", "admin"});  // by hand
  g.ok(token_cmd("t1", "tok", "", "s1"));
  g.ok(enroll_cmd("a1", "tok", "cred", "m1"));
  g.ok(RegisterAgent{"a1"});
  RecordAgentInventory inv{
      "a1",
      {{"Editor", "/usr/bin/editor", "Edits", "/usr/share/applications/e.desktop"},
       {"Viewer", "/usr/bin/viewer", "", ""}},
      {},
      {}};
  auto es = g.ok(inv);
  CHECK(types(es) == V{"ApplicationRegistered", "ServerApplicationAdded", "ApplicationRegistered",
                       "ServerApplicationAdded", "ServerInventoryReported"});
  CHECK(es[1].data["source"] == "agent");
  CHECK_FALSE(agent_inventory_changes(g.s, inv));
  CHECK(g.ok(inv).empty());
  // Viewer's desktop entry went away: removed; Calc (by hand) stays.
  inv.applications.pop_back();
  auto rm = g.ok(inv);
  CHECK(types(rm) == V{"ServerApplicationRemoved"});
  const Server& s = *g.s.appcloud.server("s1");
  CHECK(s.has(application_id("Calc", "/usr/bin/calc")));
  CHECK_FALSE(s.has(application_id("Viewer", "/usr/bin/viewer")));
  // Published and authorized: the desired lists differ from what the agent holds...
  std::string editor = application_id("Editor", "/usr/bin/editor");
  g.ok(Publish{"p1", editor, Scope::server, "s1"});
  g.ok(Authorize{"z1", "u1", editor, Scope::server, "s1"});
  CHECK_FALSE(g.s.appcloud.sync_status("s1")->in_sync);
  Json cfg = agent_config(g.s, *g.s.agents.find("a1"));
  REQUIRE(cfg["remote_apps"].size() == 1);
  CHECK(cfg["remote_apps"][0]["id"] == editor);
  CHECK(cfg["remote_users"][0]["name"] == "user-one");
  // ... until the agent applies them and says so.
  inv.remote_apps = {editor};
  inv.remote_users = {"u1"};
  CHECK(types(g.ok(inv)) == V{"ServerInventoryReported"});
  CHECK(g.s.appcloud.sync_status("s1")->in_sync);
  // An agent bound to no server cannot report an inventory.
  g.ok(token_cmd("t2", "tok2", "server"));
  g.ok(enroll_cmd("a2", "tok2", "cred2", "m2"));
  CHECK(g.err(RecordAgentInventory{"a2", {}, {}, {}}).reason == "agent_not_bound");
  g.check_replay();
}

TEST_CASE(
    "11: placement skips servers whose agent is not hard-registered and records the live load") {
  Given g;
  g.ok(CreateUser{"u1", "user-one", {"user"}, ""});
  g.ok(CreateCluster{"c1", "cluster", "", ClusterPlacement{}});
  for (std::string id : {"s1", "s2", "s3"}) {
    g.ok(server_cmd(id));
    g.ok(AddServerApplication{id, "Word", "/usr/bin/word", "", "", "admin"});
    g.ok(JoinCluster{id, "c1", std::nullopt});
  }
  std::string word = application_id("Word", "/usr/bin/word");
  g.ok(Publish{"p1", word, Scope::cluster, "c1"});
  g.ok(Authorize{"z1", "u1", word, Scope::cluster, "c1"});
  // s1 has a hard agent, s2 an agent that went silent, s3 no agent (reported by hand).
  g.ok(token_cmd("t1", "tok1", "", "s1"));
  g.ok(enroll_cmd("a1", "tok1", "cred1", "m1"));
  g.ok(RegisterAgent{"a1"});
  g.ok(token_cmd("t2", "tok2", "", "s2"));
  g.ok(enroll_cmd("a2", "tok2", "cred2", "m2"));
  g.ok(RegisterAgent{"a2"});
  g.ok(UnregisterAgent{"a2", "missed_heartbeats", 0, 0});
  std::map<std::string, LoadReport> live{{"s1", {0.5, 0.5, 2, g.ctx.now_ms, g.pos}},
                                         {"s2", {0.0, 0.0, 0, g.ctx.now_ms, g.pos}},
                                         {"s3", {0.9, 0.9, 9, g.ctx.now_ms - 1000, g.pos}}};
  LaunchApplication l{"x1", "u1", word, PlacementConfig{},
                      [&](const std::string& id) -> std::optional<LoadReport> {
                        auto it = live.find(id);
                        if (it == live.end()) return std::nullopt;
                        return it->second;
                      }};
  auto es = g.ok(l);
  const Json& d = es[0].data["decision"];
  CHECK(es[0].data["server_id"] == "s1");  // s2 is the least loaded, but its agent is silent
  REQUIRE(d["excluded"].size() == 1);
  CHECK(d["excluded"][0]["server_id"] == "s2");
  CHECK(d["excluded"][0]["reason"] == "agent_unregistered");
  REQUIRE(d["candidates"].size() == 2);
  CHECK(d["candidates"][1]["server_id"] == "s3");
  CHECK(d["candidates"][1]["cpu_load"] == 0.9);
  CHECK(d["candidates"][1]["reported_at_ms"] == g.ctx.now_ms - 1000);
  // The live figures are in the decision: the replay (without any liveness) shows the same.
  g.check_replay();
  CHECK(g.s.appcloud.session("x1")->decision["candidates"][0]["cpu_load"] == 0.5);
  // The launch counts on top of s1's reported sessions until its next report.
  CHECK(g.s.appcloud.launches_after("s1", live["s1"].since_position) == 1);
}

TEST_CASE(
    "11: logs from before agents keep folding (load reports, heartbeats, bound agent users)") {
  Given g;
  g.ok(server_cmd("s1"));
  g.apply({{"user-ag", "UserCreated", 1,
            Json{{"id", "ag"},
                 {"name", "agent-1"},
                 {"roles", {"agent"}},
                 {"password_hash", ""},
                 {"agent_server_id", "s1"}}}});
  g.apply({{"server-load-s1", "ServerLoadReported", 1,
            Json{{"server_id", "s1"},
                 {"cpu_load", 0.2},
                 {"memory_load", 0.3},
                 {"sessions", 1},
                 {"reported_at_ms", 900}}}});
  CHECK(g.s.users.find("ag")->agent_server_id == "s1");
  REQUIRE(g.s.appcloud.server("s1")->load);
  CHECK(g.s.appcloud.server("s1")->load->since_position == g.pos);
  g.check_replay();
}

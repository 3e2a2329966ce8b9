// Agents: enrollment, soft and hard registration, binding and revocation (DOMAIN.md section 4,
// seed 001: a VDA registering with its Delivery Controllers; seeds 000 and 003 for what VM and
// application-server agents report). Pure: no I/O; time comes in Context, liveness (the last
// heartbeat, load figures) comes in as plain values from the broker's in-memory liveness table
// (pipeline/liveness.h), never from the log.
//
// Streams and events (type tags are stored forever):
//   enrollment-token-<id>  EnrollmentTokenCreated, EnrollmentTokenRevoked
//   agent-<id>             AgentEnrolled, AgentRegistered, AgentRegistrationChanged,
//                          AgentUnregistered, AgentBound, AgentRevoked
// Desktop sessions get their agent signal on their own streams (domain/pools.h):
//   desktop-session-<id>   DesktopSessionConnected / DesktopSessionDisconnected with source
//                          "agent", DesktopSessionAgentSeen (the agent's view changed, the
//                          session's state did not)
// Application servers get their inventory on theirs (domain/appcloud.h):
//   ServerApplicationAdded / ServerApplicationRemoved with source "agent",
//   ServerInventoryReported (only when what the server holds changed).
//
// Tokens and credentials are random 256-bit secrets; only their SHA-256 (hex) is stored.
//
// Registration (Agent::registration is what the log recorded):
//   unknown       no agent has the credential (not a state: nothing recorded)
//   enrolled      a credential was issued (POST /v1/agents/enroll); not registered yet
//   soft          registered, but nothing can be brokered to it: a server agent bound to no
//                 server of the catalog, a VM agent on no VM or on a VM that is in no pool
//   hard          registered and part of something brokered
//   unregistered  it missed its heartbeats past interval x grace (AgentUnregistered, with the
//                 reason); its next heartbeat registers it again, without an admin
//   revoked       an admin revoked it (terminal; its credential is dead)
// Soft and hard are also a function of the catalog (belongs()): effective_registration() is
// what the broker acts on, at once, when an admin binds an agent or its VM joins a pool; the
// agent monitor then records the change (AgentRegistrationChanged) so the log says when.
//
// Refusal reasons (codes in brackets): invalid_enrollment_token, invalid_agent [400];
// enrollment_token_invalid [401]; agent_revoked [403]; server_not_found, vm_not_found,
// pool_not_found, agent_not_found [404]; server_has_agent, vm_has_agent, agent_kind_mismatch,
// agent_not_bound, not_registered [409].
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "domain/event.h"

namespace atrium::domain {

inline constexpr const char* kAgentServer = "server";
inline constexpr const char* kAgentVm = "vm";

struct EnrollmentToken {
  std::string id;
  std::string token_hash;  // SHA-256 hex of the secret
  std::string kind;        // server|vm
  // At most one binding: a server, a VM, or a pool (any VM of it: golden images); none:
  // the agent is bound later (by an admin, or a VM agent by its VM's UUID).
  std::string server_id;
  std::string vm_id;
  std::string pool_id;
  uint32_t uses = 1;
  uint32_t used = 0;
  int64_t expires_at_ms = 0;
  bool revoked = false;
  int64_t created_at_ms = 0;
  uint64_t version = 0;

  // Why the token cannot enroll at now_ms ("" when it can).
  std::string unusable(int64_t now_ms) const;
};

struct Agent {
  std::string id;
  std::string kind;  // server|vm
  std::string hostname;
  std::string os;
  std::string agent_version;
  // Identifies the machine: for a VM agent its SMBIOS system UUID (= the libvirt domain UUID,
  // which binds it to its VM), else /etc/machine-id. Enrolling again with the same kind and
  // machine id re-enrolls the same agent (new credential; the old one stops working).
  std::string machine_id;
  std::string credential_hash;
  std::string token_id;
  std::string server_id;  // binding (server agents)
  std::string vm_id;      // binding (VM agents)
  std::string pool_id;    // a pool token's pool: the agent may only be bound to a VM of it
  std::string registration = "enrolled";  // as recorded: enrolled|soft|hard|unregistered|revoked
  std::string reason;                     // of the last registration change
  int64_t enrolled_at_ms = 0;
  int64_t registered_at_ms = 0;      // last AgentRegistered
  int64_t changed_at_ms = 0;         // last registration change of any kind
  int64_t last_heartbeat_at_ms = 0;  // as of its last recorded registration change (the live
                                     // figure is in the liveness table)
  uint64_t version = 0;

  bool revoked() const { return registration == "revoked"; }
  bool registered() const { return registration == "soft" || registration == "hard"; }
};

struct AgentsState {
  std::map<std::string, Agent> agents;
  std::map<std::string, EnrollmentToken> tokens;

  // Derived indexes (kept by evolve, rebuilt by reindex()); never in the JSON.
  std::unordered_map<std::string, std::string> by_credential;  // hash -> agent id
  std::unordered_map<std::string, std::string> token_by_hash;  // hash -> token id
  std::unordered_map<std::string, std::string> by_server;      // server id -> agent id
  std::unordered_map<std::string, std::string> by_vm;          // vm id -> agent id
  std::unordered_map<std::string, std::string> by_machine;     // kind|machine id -> agent id
  void reindex();

  const Agent* find(const std::string& id) const;
  const Agent* by_credential_hash(const std::string& hash) const;
  // The live (not revoked) agent bound to a server / a VM, or nullptr.
  const Agent* of_server(const std::string& server_id) const;
  const Agent* of_vm(const std::string& vm_id) const;
  const EnrollmentToken* token(const std::string& id) const;
};

struct State;

// ---- registration as the broker acts on it ------------------------------------------------
// Whether the agent is part of something brokered: a server agent bound to a server of the
// catalog; a VM agent bound to a VM that is a member of a pool.
bool belongs(const State& s, const Agent& a);
// enrolled|soft|hard|unregistered|revoked: the recorded registration, with soft and hard
// following the catalog at once.
std::string effective_registration(const State& s, const Agent& a);

// The desired configuration pushed to the agent (pure): for a server agent bound to a server,
// {kind, server_id, remote_app_service, remote_apps: [{id, name, executable_path}],
// remote_users: [{id, name}]}; for a VM agent on a pool's VM, {kind, vm_id, pool_id, policy:
// {clipboard, usb_redirection, folder_redirection, idle_timeout_s}}; otherwise {kind}.
Json agent_config(const State& s, const Agent& a);
// The first 16 hex characters of SHA-256 of the configuration's canonical JSON.
std::string config_version(const Json& config);

// ---- commands ---------------------------------------------------------------------------
// kind is server|vm; with server_id (kind server), vm_id or pool_id (kind vm) the token is
// bound; kind may be left empty when a binding gives it. uses 1..100000.
struct CreateEnrollmentToken {
  std::string id;
  std::string token_hash;
  std::string kind;
  std::string server_id;
  std::string vm_id;
  std::string pool_id;
  uint32_t uses = 1;
  int64_t expires_at_ms = 0;
};

struct RevokeEnrollmentToken {
  std::string id;
};

// Exchanges an enrollment token (by hash) for an agent credential (by hash).
struct EnrollAgent {
  std::string agent_id;  // used for a new agent; a re-enrollment keeps the existing id
  std::string token_hash;
  std::string credential_hash;
  std::string hostname;
  std::string os;
  std::string agent_version;
  std::string machine_id;
};

// The agent asks to register (or, unregistered, its heartbeat does: cause "heartbeat").
// Recorded only when its registration changes (enrolled/unregistered -> soft|hard).
struct RegisterAgent {
  std::string agent_id;
  std::string cause = "register";
  int64_t heartbeat_at_ms = 0;
};

// The monitor saw no heartbeat since last_heartbeat_at_ms, past interval x grace.
struct UnregisterAgent {
  std::string agent_id;
  std::string reason = "missed_heartbeats";
  int64_t last_heartbeat_at_ms = 0;
  int64_t deadline_ms = 0;  // the moment it became missing (for the record)
};

// Records that soft/hard changed with the catalog (server added or deleted, VM added to or
// removed from a pool). Nothing when the recorded value is already the effective one.
struct SyncAgentRegistration {
  std::string agent_id;
};

// An admin binds an agent to a server (server agent) or a VM (VM agent); the monitor binds an
// unbound VM agent to the VM whose UUID is its machine id (cause "vm_uuid").
struct BindAgent {
  std::string agent_id;
  std::string server_id;
  std::string vm_id;
  std::string cause = "admin";
};

struct RevokeAgent {
  std::string agent_id;
  std::string reason = "admin";
};

// A VM agent's view of who is logged in inside the desktop, from its heartbeat: each entry a
// user name and its state (active|connected count as logged in; anything else, or absence,
// as logged out). Decides the desktop-session events of the agent signal (see pools.h).
struct AgentSessionReport {
  std::string user;
  std::string state;
};
struct RecordAgentSessions {
  std::string agent_id;
  std::vector<AgentSessionReport> sessions;
};

// What an application server's agent found and holds: the applications of its desktop
// entries (or start menu), and its actual remote-app (application ids) and remote-user (user
// ids) lists. Applications the agent found before and no longer reports are removed from the
// server (only those it found: applications added by hand stay).
struct AgentApplication {
  std::string name;
  std::string executable_path;
  std::string description;
  std::string desktop_file;
};
struct RecordAgentInventory {
  std::string agent_id;
  std::vector<AgentApplication> applications;
  std::set<std::string> remote_apps;
  std::set<std::string> remote_users;
};

Result<Events> decide(const State& s, const CreateEnrollmentToken& c, const Context& ctx);
Result<Events> decide(const State& s, const RevokeEnrollmentToken& c, const Context& ctx);
Result<Events> decide(const State& s, const EnrollAgent& c, const Context& ctx);
Result<Events> decide(const State& s, const RegisterAgent& c, const Context& ctx);
Result<Events> decide(const State& s, const UnregisterAgent& c, const Context& ctx);
Result<Events> decide(const State& s, const SyncAgentRegistration& c, const Context& ctx);
Result<Events> decide(const State& s, const BindAgent& c, const Context& ctx);
Result<Events> decide(const State& s, const RevokeAgent& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordAgentSessions& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordAgentInventory& c, const Context& ctx);

// True when RecordAgentSessions would record something (the API asks before it submits, so
// an unchanged view costs no trip through the writer).
bool agent_sessions_change(const State& s, const RecordAgentSessions& c);
// True when RecordAgentInventory would record something.
bool agent_inventory_changes(const State& s, const RecordAgentInventory& c);

// ---- the monitor (pure) -----------------------------------------------------------------
struct AgentTiming {
  int64_t heartbeat_ms = 30'000;
  int64_t grace_factor = 3;
  // The broker started (or became leader) then: nobody is missing before started_at_ms plus
  // one full grace period, so a restart does not unregister the fleet.
  int64_t started_at_ms = 0;
  int64_t grace_ms() const { return heartbeat_ms * grace_factor; }
};
// The last heartbeat (or registration) of an agent in the liveness table, 0 when none.
using LastHeartbeat = std::function<int64_t(const std::string& agent_id)>;

struct AgentAction {
  std::string kind;  // unregister|sync_registration|bind_vm
  std::string agent_id;
  std::string vm_id;                 // bind_vm
  int64_t last_heartbeat_at_ms = 0;  // unregister
  int64_t deadline_ms = 0;           // unregister
};
// What the monitor should record at now_ms, ordered by agent id.
std::vector<AgentAction> agent_actions(const State& s, const LastHeartbeat& last, int64_t now_ms,
                                       const AgentTiming& t);

// ---- views ------------------------------------------------------------------------------
std::string agent_stream(const std::string& id);
std::string enrollment_token_stream(const std::string& id);
// The admin's view (never the credential hash).
Json agent_to_json(const State& s, const Agent& a);
Json enrollment_token_to_json(const EnrollmentToken& t);  // never the token hash

}  // namespace atrium::domain

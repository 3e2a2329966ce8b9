// Desktop pools, entitlements, assignments and desktop sessions (DOMAIN.md sections 2-3,
// issue 5). Pure: no I/O; time comes in Context.
//
// Streams:
//   pool-<id>             PoolCreated, PoolUpdated, PoolDeletionRequested, PoolDeleted,
//                         PoolEntitlementAdded, PoolEntitlementRemoved,
//                         PoolVmProvisionStarted, PoolVmProvisioned, PoolVmProvisionFailed,
//                         PoolVmRemovalStarted, PoolVmRemoved, PoolVmRefreshStarted,
//                         PoolVmRefreshed, DesktopAssigned, DesktopUnassigned
//   desktop-session-<id>  DesktopSessionCreated, DesktopSessionTicketIssued,
//                         DesktopSessionTicketRetired, DesktopSessionConnected,
//                         DesktopSessionHeartbeat, DesktopSessionDisconnected,
//                         DesktopSessionEnded
//   (pool-<id> also: PoolVmDisplayReset)
//   user-messages-<user>  AdminMessageSent, ClientCommandSent   (admin channels)
// ("session-<id>" belongs to application launches, domain/appcloud.h.)
//
// Members: a pool's VMs are its members. The pool worker proposes a new member with
// ProvisionPoolVm (the decider checks max_size and picks the host: up, not in maintenance,
// most free memory, then most free display ports); it defines the domain on that host and
// records the outcome. The VM itself lives in the hosts module (VmImported, then VmAdopted
// with the pool id); the member record keeps what the pool needs (name, uuid, mac, overlay).
//
// Assignment rules (decided in the single writer, so two launches can never get one VM):
//   - dedicated: a user's first launch assigns a free member and the assignment is kept
//     across sessions; floating: the launch assigns a free member for that session only.
//   - a member is free when it is provisioned, not being removed or refreshed, unassigned,
//     has no live session, its host is up, its display was reset after the last session
//     (every client of the previous user dropped) and no power change is pending towards
//     shut_off (a launch never gets a VM that is shutting down); running free members are
//     preferred. A member that is only waiting for its reset or shutdown is "releasing": a
//     launch that could only get such a member is refused with desktop_releasing (transient:
//     the API waits for it within the launch wait).
// Display signal: the host reconciler watches libvirt's graphics events and reports when a
// VM's display gains its first authenticated client or loses its last one
// (RecordDisplayClients); a live session on that VM then becomes connected or disconnected
// (source "display", with the client address). Sessions with that signal are never
// deactivated by the client timeout; it acts only for sessions without one.
//   - refusals (409, reason): not_entitled, pool_deleting, pool_full (every member busy and
//     max_size reached), no_vm_ready (capacity left but nothing provisioned yet: retry),
//     no_host_up (free members exist only on hosts that are not up),
//     display_ports_exhausted (a free member must be started but its host has no port),
//     session_connected (reconnect policy disconnected_only and the session is connected).
//   - nothing is half assigned: a refused launch records nothing.
// Cascades: removing an entitlement ends that user's sessions and assignments in the pool
// (recorded as events); deleting a user or losing a VM (observed missing, host removed) ends
// them in the same fold (evolve), so no stale user-to-VM assignment survives.
// Power policy (pure, power_actions()): keep_on, shutdown_on_logoff, shutdown_when_idle
// (idle_timeout_s without a live session), refresh_on_logoff (floating: back to the clean
// overlay). A disconnected session is ended after the pool's grace_s, then the policy acts.
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

// A pool's template. Either given as domain XML, or named: an existing domain on host_id whose
// persistent definition the API exports from the host at pool creation (the pool keeps that
// copy, so later edits of the domain do not change the pool). The first writable disk (device
// disk, not <readonly/>/<shareable/>) is the one each member gets a copy-on-write overlay of:
// its file is the base volume unless base_volume is given. A template with more than one
// writable disk is refused (the others would be shared by every member), and so is a named
// template whose own disk is the base while that domain runs (overlays over a disk that is
// still being written would be corrupt).
struct PoolTemplate {
  std::string domain_xml;   // a libvirt domain XML (for a named template: the exported copy)
  std::string domain_name;  // an existing domain on host_id (empty: XML template)
  std::string host_id;
  std::string base_volume;     // path of the base disk volume (qcow2 or raw); empty: diskless
  std::string storage_pool;    // libvirt storage pool for overlays (default "default")
  uint64_t memory_kib = 0;     // from the XML, for host choice
};

// Desktop policy pushed to the VM agents of a pool's members (seed 000: device and folder
// redirection): clipboard and USB redirection, folder redirection, and the idle time after
// which the agent locks the desktop (0: never). Carried in PoolCreated/PoolUpdated "policy".
struct PoolPolicy {
  bool clipboard = true;
  bool usb_redirection = true;
  bool folder_redirection = false;
  int64_t idle_timeout_s = 0;
};
Json pool_policy_to_json(const PoolPolicy& p);
// Absent fields keep the defaults; invalid_argument (invalid_pool) on a wrong shape.
Result<PoolPolicy> pool_policy_from_json(const Json& j);

struct Pool {
  std::string id;
  std::string name;
  std::string kind;  // dedicated|floating
  PoolTemplate tmpl;
  std::vector<std::string> host_ids;
  int min_ready = 0;
  int min_standby = 0;
  int max_size = 1;
  std::string power_policy = "keep_on";  // keep_on|shutdown_on_logoff|shutdown_when_idle|refresh_on_logoff
  int64_t idle_timeout_s = 3600;
  std::string reconnect = "always";  // always|disconnected_only
  int64_t grace_s = 300;
  PoolPolicy policy;
  bool deleting = false;
  int template_version = 1;  // +1 on each template update (PATCH template)
  std::set<std::string> entitled;
  std::set<std::string> entitled_groups;  // directory groups, "<cn>@<directory>"
  int64_t created_at_ms = 0;
  int64_t updated_at_ms = 0;
  uint64_t version = 0;
};

struct PoolMember {
  std::string vm_id;  // = vm_id_for(host_id, uuid)
  std::string pool_id;
  std::string host_id;
  std::string name;
  std::string uuid;
  std::string mac;
  std::string overlay;  // overlay volume name; empty: diskless
  uint64_t memory_kib = 0;
  std::string state;    // provisioning|ready|failed|removing|refreshing
  std::string error;
  int template_version = 1;  // the pool template version it was defined from
  std::string assigned_user;   // empty: unassigned
  std::string session_id;      // the live session on it, if any
  int64_t last_session_end_ms = 0;  // for shutdown_when_idle
  int64_t since_ms = 0;
  // Why the display must be reset (password rotated with connected='disconnect', so every
  // client of the last session is dropped and its ticket is dead) before the member is free
  // again; empty: nothing pending. Set when a session on it ends or is deactivated, cleared by
  // PoolVmDisplayReset (or a new ticket for the same session).
  std::string display_reset;
};

struct DesktopSession {
  std::string id;
  std::string pool_id;
  std::string user_id;
  std::string vm_id;
  std::string host_id;
  std::string state;  // created|connected|disconnected|ended
  std::string end_reason;
  int64_t ticket_expires_at_ms = 0;
  bool ticket_applied = false;  // set on the hypervisor (false: the driver could not)
  std::string ticket_note;
  int64_t last_seen_ms = 0;     // last client report (or creation)
  int64_t disconnected_at_ms = 0;
  int64_t ticket_issued_at_ms = 0;
  // The one-time ticket was retired (password rotated with connected='keep') once the
  // client's display channels had authenticated: the .vv cannot be used again.
  bool ticket_retired = false;
  // The display itself reports this session's clients (graphics events): the client timeout
  // does not apply. client_address: the remote address of the display client.
  bool display_signal = false;
  std::string client_address;
  // The VM's agent reports who is logged in inside the desktop (source "agent"):
  // agent_signal once it said anything about this session, agent_present its last view.
  bool agent_signal = false;
  bool agent_present = false;
  // Client-reported state flips in the current minute (rate limit).
  int64_t flip_window_start_ms = 0;
  int flips_in_window = 0;
  int64_t created_at_ms = 0;
  int64_t updated_at_ms = 0;
  uint64_t version = 0;
  bool live() const { return state != "ended"; }
};

struct UserNotice {
  uint64_t position = 0;
  std::string user_id;
  std::string kind;  // message|command
  Json data;
  int64_t at_ms = 0;
};

struct PoolsState {
  std::unordered_map<std::string, Pool> pools;
  std::unordered_map<std::string, PoolMember> members;           // by vm id
  std::unordered_map<std::string, DesktopSession> sessions;      // by id
  std::map<std::string, std::set<std::string>> live_by_user;     // user -> live session ids
  std::vector<UserNotice> notices;  // admin channel messages (bounded, newest last)

  const Pool* pool(const std::string& id) const;
  const PoolMember* member(const std::string& vm_id) const;
  const DesktopSession* session(const std::string& id) const;
  std::vector<const PoolMember*> members_of(const std::string& pool_id) const;  // by vm id
  // The user's live session in a pool, if any.
  const DesktopSession* live_session(const std::string& pool_id, const std::string& user_id) const;
  // The member assigned to a user in a pool, if any.
  const PoolMember* assigned(const std::string& pool_id, const std::string& user_id) const;
};

// ---- commands ---------------------------------------------------------------------------
struct CreatePool {
  std::string id;
  std::string name;
  std::string kind;
  PoolTemplate tmpl;
  std::vector<std::string> host_ids;
  int min_ready = 0;
  int min_standby = 0;
  int max_size = 1;
  std::string power_policy = "keep_on";
  int64_t idle_timeout_s = 3600;
  std::string reconnect = "always";
  int64_t grace_s = 300;
  PoolPolicy policy = {};
};

struct UpdatePool {
  std::string id;
  std::optional<uint64_t> expected_version;
  std::optional<std::string> name;
  std::optional<std::vector<std::string>> host_ids;
  std::optional<int> min_ready, min_standby, max_size;
  std::optional<std::string> power_policy;
  std::optional<int64_t> idle_timeout_s;
  std::optional<std::string> reconnect;
  std::optional<int64_t> grace_s;
  std::optional<PoolPolicy> policy = {};
  // A new template: a new template version. It must keep the pool's disk layout (a base volume
  // or none, and the same storage pool); free members are refreshed to it, at most
  // max(1, max_size / 5) at a time, busy ones once they are free (assigned members of dedicated
  // pools keep their disk until unassigned).
  std::optional<PoolTemplate> tmpl;
};

// Marks the pool deleting (no launches, the worker removes idle members); the pool is
// deleted by FinishPoolDeletion once it has no members. Live sessions are never cut.
struct DeletePool {
  std::string id;
  std::optional<uint64_t> expected_version;
};
struct FinishPoolDeletion {
  std::string id;
};

// Exactly one of user_id and group (a directory group, "<cn>@<directory>"). Removing a group
// entitlement ends the sessions and dedicated assignments of every member of the group that
// is not entitled otherwise (itself or through another group).
struct AddEntitlement {
  std::string pool_id;
  std::string user_id;
  std::string group = {};
};
struct RemoveEntitlement {
  std::string pool_id;
  std::string user_id;
  std::string group = {};
};

// Pool worker steps.
struct ProvisionPoolVm {
  std::string pool_id;
  std::string name;  // new domain name
  std::string uuid;  // new uuid
  std::string mac;   // new MAC
  bool with_overlay = false;
};
struct RecordPoolVmProvisioned {  // after the domain is defined and imported
  std::string vm_id;
  bool ok = true;
  std::string error;
};
struct RemovePoolVm {  // start removing an idle member (shrink, pool deletion)
  std::string vm_id;
  std::string reason;
};
struct RecordPoolVmRemoved {
  std::string vm_id;
  bool ok = true;
  std::string error;
};
struct RecordPoolVmRefreshed {
  std::string vm_id;
  bool ok = true;
  std::string error;
  int template_version = 0;  // the version it was redefined from (0: the pool's current)
};
// Refresh a free member to the pool's current template (rolling template update).
struct RefreshPoolVm {
  std::string vm_id;
  std::string reason;
  std::string operation_id;  // for powering it off first
};

struct LaunchDesktop {
  std::string session_id;  // for a new session
  std::string user_id;
  std::string pool_id;
};

// The worker applied (or could not apply) a one-time display ticket.
struct RecordSessionTicket {
  std::string session_id;
  int64_t expires_at_ms = 0;
  bool applied = false;
  std::string note;
};

// The client reports its display connection: connected|disconnected (also a heartbeat).
struct ReportSession {
  std::string session_id;
  std::string state;
};

// The host reconciler saw a VM's display gain its first authenticated client
// (connected = true) or lose its last one, on the host connection of `epoch`.
struct RecordDisplayClients {
  std::string vm_id;
  uint64_t epoch = 0;
  bool connected = false;
  std::string client_address;
};

// The worker rotated (or could not rotate) the session's display password after its client's
// channels had authenticated, retiring the one-time ticket.
struct RetireSessionTicket {
  std::string session_id;
  bool applied = false;
  std::string note;
};

// The worker reset a member's display after a session (password rotated, clients dropped; or
// nothing to reset because the VM is off).
struct RecordDisplayReset {
  std::string vm_id;
  bool ok = true;
  std::string note;
};

// Client reports that flip a session between connected and disconnected: at most this many
// per session and minute (more: 429 too_many_state_changes).
inline constexpr int kMaxSessionFlipsPerMinute = 10;

// Monitor and VM manager: a session whose client went silent, or whose VM stopped.
struct DeactivateSession {
  std::string session_id;
  std::string reason;
};

// Logoff (DELETE /v1/sessions/{id}), grace expiry, admin: ends the session and applies the
// pool's power policy.
struct EndDesktopSession {
  std::string session_id;
  std::string reason;  // logoff|grace_expired|vm_lost|...
  std::string power_operation_id;  // used if the policy powers the VM off
};

// Idle timeout etc.: power a free member off (shutdown_when_idle) or on (spares).
struct SetMemberPower {
  std::string vm_id;
  std::string action;  // start|shutdown
  std::string operation_id;
};

struct SendUserMessage {
  std::string user_id;
  std::string kind;  // message|command
  std::string text;  // message text, or command: logoff|reconnect
};

struct State;
Result<Events> decide(const State& s, const CreatePool& c, const Context& ctx);
Result<Events> decide(const State& s, const UpdatePool& c, const Context& ctx);
Result<Events> decide(const State& s, const DeletePool& c, const Context& ctx);
Result<Events> decide(const State& s, const FinishPoolDeletion& c, const Context& ctx);
// The user is entitled to the pool, by name or through one of its directory groups.
bool entitled(const State& s, const Pool& p, const std::string& user_id);
// The events that end what `user_id` had in pools it is entitled to only through a group it
// is no longer in, once its groups are `groups` (its session, its dedicated assignment).
void pool_entitlement_loss_events(const State& s, const std::string& user_id,
                                  const std::set<std::string>& groups, const Context& ctx,
                                  Events& out);
Result<Events> decide(const State& s, const AddEntitlement& c, const Context& ctx);
Result<Events> decide(const State& s, const RemoveEntitlement& c, const Context& ctx);
Result<Events> decide(const State& s, const ProvisionPoolVm& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordPoolVmProvisioned& c, const Context& ctx);
Result<Events> decide(const State& s, const RemovePoolVm& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordPoolVmRemoved& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordPoolVmRefreshed& c, const Context& ctx);
Result<Events> decide(const State& s, const RefreshPoolVm& c, const Context& ctx);
Result<Events> decide(const State& s, const LaunchDesktop& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordSessionTicket& c, const Context& ctx);
Result<Events> decide(const State& s, const ReportSession& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordDisplayClients& c, const Context& ctx);
Result<Events> decide(const State& s, const RetireSessionTicket& c, const Context& ctx);
Result<Events> decide(const State& s, const RecordDisplayReset& c, const Context& ctx);
Result<Events> decide(const State& s, const DeactivateSession& c, const Context& ctx);
Result<Events> decide(const State& s, const EndDesktopSession& c, const Context& ctx);
Result<Events> decide(const State& s, const SetMemberPower& c, const Context& ctx);
Result<Events> decide(const State& s, const SendUserMessage& c, const Context& ctx);

// ---- pure rules used by the worker and the deciders --------------------------------------
// The host for a new member of `pool`: up, not in maintenance, fewest ... ; or an error
// with reason no_host_up / display_ports_exhausted.
Result<std::string> choose_host(const State& s, const Pool& pool);

// Is this member free for a launch (see the header comment)?
bool member_free(const State& s, const PoolMember& m);
// Is it only waiting for its display reset or a pending shutdown before it is free again?
bool member_releasing(const State& s, const PoolMember& m);

// The display channels of a client, as the host reconciler tracks them in memory from
// graphics events (liveness, not history).
struct DisplayWave {
  int connecting = 0;               // connections accepted, not yet authenticated
  int initialized = 0;              // authenticated connections (SPICE channels, a VNC client)
  int64_t wave_started_ms = 0;      // when the first of them authenticated (0 -> 1)
  int64_t last_event_ms = 0;        // the latest connect/initialize/disconnect
};
// How long the display must be quiet (nothing connecting, no new channel) before the client's
// channels count as all open, and how long a client with only one channel is given.
inline constexpr int64_t kDisplaySettleMs = 1000;
inline constexpr int64_t kDisplaySingleChannelMs = 10000;
// Have the client's display channels all authenticated, so that the one-time ticket can be
// retired without cutting a channel still opening? A SPICE client authenticates its main
// channel, receives the channel list and then opens the others (display, inputs, cursor, ...)
// at once: the wave is complete when at least two channels authenticated, none is still
// authenticating, and no event came for kDisplaySettleMs (a lone channel: after
// kDisplaySingleChannelMs).
bool display_wave_complete(const DisplayWave& w, int64_t now_ms);

struct SparePlan {
  int provision = 0;                 // new members to provision now
  std::vector<std::string> start;    // free standby members to power on
  std::vector<std::string> remove;   // idle members to remove (shrink / deletion)
  std::vector<std::string> refresh;  // free members on an older template version (rolling)
  bool finish_deletion = false;      // a deleting pool with no member left
};
// What the worker should do for `pool` to keep min_ready running and min_standby powered-off
// free members within max_size, and to shrink or delete safely.
SparePlan plan_spares(const State& s, const Pool& pool);

struct PowerAction {
  std::string kind;  // end_session|deactivate_session|shutdown_vm
  std::string id;    // session id or vm id
  std::string reason;
};
// Policy and monitor decisions at `now_ms`: sessions silent for longer than
// client_timeout_ms are deactivated; disconnected sessions past the pool's grace are ended;
// sessions whose VM is observed not running are deactivated (vm_<state>), except a session
// whose launch is still under way (created, no ticket yet, younger than client_timeout_ms):
// its VM may be the one being powered on; free running
// members of shutdown_when_idle pools idle past idle_timeout_s are shut down.
//
// Signals of a session combine by their changes: each source records a transition only when
// its own view changes (display: first client in, last client out; agent: the user logged in
// or out inside the desktop; client: its report), and the latest transition wins. Silence is
// judged by the source in charge: a session with a display signal is never timed out; one on a
// VM with a registered agent is watched by the agent (deactivated, agent_silent, once the agent
// is unregistered for missed heartbeats); any other by its client's reports (client_timeout).
// Client reports are liveness, kept in memory: `live` gives the last one of a session (0: none)
// and the moment the broker started (nobody is silent before started_at_ms + the timeout).
struct SessionLiveness {
  std::function<int64_t(const std::string& session_id)> client_seen;
  int64_t started_at_ms = 0;
};
std::vector<PowerAction> power_actions(const State& s, int64_t now_ms, int64_t client_timeout_ms,
                                       const SessionLiveness& live = {});

std::string pool_stream(const std::string& id);
std::string desktop_session_stream(const std::string& id);

Json pool_to_json(const State& s, const Pool& p);
Json member_to_json(const State& s, const PoolMember& m);
Json desktop_session_to_json(const DesktopSession& d);

// The libvirt domain XML of a member, from the pool's template XML: a new name, UUID and MAC,
// the overlay disk when given, and one SPICE display (port or, with spice_tls, TLS port;
// initial password) listening where the template's display did unless spice_listen is set.
// Pure text transformation; invalid_argument when the template is not a domain XML.
struct MemberXmlParams {
  std::string name, uuid, mac;
  std::string overlay_path;  // replaces the first disk's source; empty: no change
  int spice_port = -1;       // -1: autoport
  std::string spice_password;
  std::string spice_listen;          // empty: the template's listen address stands
  std::string password_valid_to;     // ISO 8601 UTC, optional
  bool spice_tls = false;            // the port is a TLS port (tlsPort, defaultMode='secure')
};
Result<std::string> member_domain_xml(const std::string& template_xml, const MemberXmlParams& p);
// The listen address of a template's first <graphics> (attribute or <listen type='address'>);
// empty when it names none.
std::string template_display_listen(const std::string& xml);
// The writable disks of a template (device disk, neither <readonly/> nor <shareable/>), and the
// source file of the first one (empty when it has none or its source is not a file).
struct TemplateDisks {
  int writable = 0;
  std::string first_file;
};
TemplateDisks template_disks(const std::string& xml);

Json template_to_json(const PoolTemplate& t);
PoolTemplate template_from_json(const Json& j);

// <memory> of a domain XML in KiB, 0 when absent.
uint64_t domain_memory_kib(const std::string& xml);

}  // namespace atrium::domain

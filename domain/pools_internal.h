// Rules and event builders shared by the pools module's files (pools.cpp, pools_lifecycle.cpp,
// pools_members.cpp, pools_entitlements.cpp, pools_views.cpp, desktop_sessions.cpp,
// pools_xml.cpp, pools_codec.cpp). Internal to domain/: nothing outside it includes this.
#pragma once

#include <initializer_list>
#include <string>

#include "domain/pools.h"

namespace atrium::domain {
struct Host;
namespace pools_detail {

std::string messages_stream(const std::string& user);
bool running_like(const std::string& observed);
// The host is up and connected.
bool host_up(const State& s, const std::string& host_id);
// The member's VM runs, or is on its way to running.
bool powered_on(const State& s, const PoolMember& m);
// A power change towards shut_off (shutdown, destroy) or a reboot is pending on its VM.
bool shutdown_pending(const State& s, const PoolMember& m);
// Starting the member needs a display port allocated first.
bool needs_port(const State& s, const PoolMember& m);
uint64_t host_memory_kib(const Host& h);

Event pool_event(const std::string& id, const char* type, Json data);
Event session_event(const std::string& id, const char* type, Json data);
Error pool_not_found(const std::string& id);
Error field_error(const std::string& field, const std::string& msg,
                  const std::string& reason = "invalid_pool");
bool one_of(const std::string& v, std::initializer_list<const char*> options);
// Appends the events of a successful decision (a refusal adds nothing).
void append(Events& out, Result<Events> r);
// Starts refreshing a member: back to the pool's current template and a fresh overlay, powered
// off first (the worker redefines it once it is off).
void refresh_events(const State& s, const Pool& p, const PoolMember& m, const std::string& reason,
                    const std::string& op_id, const Context& ctx, Events& out);
// Ends a live session: the session event, the floating assignment, the power policy.
void end_session_events(const State& s, const DesktopSession& d, const std::string& reason,
                        const std::string& op_id, const Context& ctx, Events& out);

}  // namespace pools_detail
}  // namespace atrium::domain

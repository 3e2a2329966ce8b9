// Internal to domain/: each module registers the evolve handler of each event type it owns.
#pragma once

#include <string>
#include <unordered_map>

#include "domain/state.h"

namespace atrium::domain {

using EvolveFn = void (*)(State&, const Event&, const Applied&);
using EvolveTable = std::unordered_map<std::string, EvolveFn>;

void register_users(EvolveTable& t);
Json users_to_json(const UsersState& s);
Status users_from_json(UsersState& s, const Json& j);
void register_appcloud(EvolveTable& t);
// Application sessions (domain/app_sessions.cpp): launched, ended.
void register_app_sessions(EvolveTable& t);
// Inverse of session_to_json, for snapshots; throws (nlohmann::json) on a wrong shape.
AppSession app_session_from_json(const Json& j);
Json appcloud_to_json(const AppCloudState& s);
// Inverse of appcloud_to_json (derived fields are recomputed), for snapshots.
Status appcloud_from_json(AppCloudState& s, const Json& j);
void register_hosts(EvolveTable& t);
Json hosts_to_json(const HostsState& s);
Status hosts_from_json(HostsState& s, const Json& j);
void register_pools(EvolveTable& t);
// Pools also fold other modules' events (user deleted, VM gone) after their own handler.
void pools_after_evolve(State& s, const Event& e, const Applied& at);
Json pools_to_json(const PoolsState& s);
Status pools_from_json(PoolsState& s, const Json& j);
void register_directories(EvolveTable& t);
Json directories_to_json(const DirectoriesState& s);
Status directories_from_json(DirectoriesState& s, const Json& j);
void register_totp(EvolveTable& t);
Json totp_to_json(const TotpState& s);
Status totp_from_json(TotpState& s, const Json& j);
void register_agents(EvolveTable& t);
// Agents also fold other modules' events (a deleted server unbinds its agent).
void agents_after_evolve(State& s, const Event& e);
Json agents_to_json(const AgentsState& s);
Status agents_from_json(AgentsState& s, const Json& j);

}  // namespace atrium::domain

// Pool entitlements of users and directory groups: who is entitled, adding and removing an
// entitlement, and ending the sessions and assignments of users who lose one (domain/pools.h).
#include "domain/directories.h"
#include "domain/pools.h"
#include "domain/pools_internal.h"
#include "domain/state.h"
#include "domain/users.h"

namespace atrium::domain {

using namespace pools_detail;

bool entitled(const State& s, const Pool& p, const std::string& user_id) {
  if (p.entitled.count(user_id) != 0) return true;
  if (p.entitled_groups.empty()) return false;
  const User* u = s.users.find(user_id);
  if (u == nullptr) return false;
  for (const auto& g : u->groups) {
    if (p.entitled_groups.count(g) != 0) return true;
  }
  return false;
}

namespace {
// Ends the user's session and dedicated assignment in the pool (the entitlement is gone).
void end_entitlement_events(const State& s, const Pool& p, const std::string& user_id,
                            const std::string& why, const Context& ctx, Events& out) {
  if (const DesktopSession* d = s.pools.live_session(p.id, user_id)) {
    end_session_events(s, *d, "entitlement_removed", "", ctx, out);
  }
  if (const PoolMember* m = s.pools.assigned(p.id, user_id); m && p.kind == "dedicated") {
    out.push_back(pool_event(p.id, "DesktopUnassigned",
                             Json{{"vm_id", m->vm_id}, {"user_id", user_id}, {"reason", why}}));
  }
}
}  // namespace

void pool_entitlement_loss_events(const State& s, const std::string& user_id,
                                  const std::set<std::string>& groups, const Context& ctx,
                                  Events& out) {
  for (const auto& [id, p] : s.pools.pools) {
    if (!entitled(s, p, user_id) || p.entitled.count(user_id) != 0) continue;
    bool still = false;
    for (const auto& g : groups) still = still || p.entitled_groups.count(g) != 0;
    if (!still) end_entitlement_events(s, p, user_id, "left group", ctx, out);
  }
}

Result<Events> decide(const State& s, const AddEntitlement& c, const Context&) {
  const Pool* p = s.pools.pool(c.pool_id);
  if (p == nullptr) return pool_not_found(c.pool_id);
  if (p->deleting) return refused("pool_deleting", "pool " + p->name + " is being deleted");
  if (!c.group.empty()) {
    if (auto st = validate_group(s, c.group); !st) return st.error();
    if (p->entitled_groups.count(c.group) != 0) return Events{};
    return Events{pool_event(c.pool_id, "PoolEntitlementAdded", Json{{"group", c.group}})};
  }
  if (s.users.find(c.user_id) == nullptr) {
    return Error{Code::invalid_argument,
                 "user " + c.user_id + " does not exist",
                 "unknown_user",
                 {{"user_id", "no such user"}}};
  }
  if (p->entitled.count(c.user_id) != 0) return Events{};
  return Events{pool_event(c.pool_id, "PoolEntitlementAdded", Json{{"user_id", c.user_id}})};
}

Result<Events> decide(const State& s, const RemoveEntitlement& c, const Context& ctx) {
  const Pool* p = s.pools.pool(c.pool_id);
  if (p == nullptr) return pool_not_found(c.pool_id);
  Events out;
  if (!c.group.empty()) {
    if (p->entitled_groups.count(c.group) == 0) {
      return not_found("group " + c.group + " is not entitled to pool " + p->name);
    }
    Pool without = *p;
    without.entitled_groups.erase(c.group);
    for (const auto& [uid, u] : s.users.by_id) {
      if (u.groups.count(c.group) != 0 && !entitled(s, without, uid)) {
        end_entitlement_events(s, *p, uid, "entitlement removed", ctx, out);
      }
    }
    out.push_back(pool_event(c.pool_id, "PoolEntitlementRemoved", Json{{"group", c.group}}));
    return out;
  }
  if (p->entitled.count(c.user_id) == 0) {
    return not_found("user " + c.user_id + " is not entitled to pool " + p->name);
  }
  Pool without = *p;
  without.entitled.erase(c.user_id);
  if (!entitled(s, without, c.user_id)) {
    end_entitlement_events(s, *p, c.user_id, "entitlement removed", ctx, out);
  }
  out.push_back(pool_event(c.pool_id, "PoolEntitlementRemoved", Json{{"user_id", c.user_id}}));
  return out;
}

}  // namespace atrium::domain

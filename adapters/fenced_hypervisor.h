// Side effects that carry the leader's term (issue 12). With several brokers on one log, only
// the leader may change a host: a broker that was paused past its lease (SIGSTOP, a long GC-like
// stall, a frozen VM) can wake up with a reconcile pass already planned from views that are no
// longer true. Its appends are fenced by the head row; its libvirt calls are fenced here.
//
// fence_side_effects() wraps a Hypervisor so that every call that changes a host (define,
// start, shutdown, destroy, reboot, undefine, set_display_password, create_overlay_volume,
// delete_volume) first asks `gate`. The gate of atriumd on a shared log checks in the
// database that this broker's term is still the current one and its lease is live (one round
// trip, SharedLog::confirm); a refusal comes back as the call's error and libvirt is not
// called. Reads (capabilities, list, lookup, XML, volume paths), subscriptions and close pass
// through: a follower may look, only the leader may act.
//
// What remains is the window between the gate's answer and libvirt acting on the call: a
// broker paused exactly there, for longer than the rest of its lease, still makes that one
// call. Host epochs cover the same race for observations.
#pragma once

#include <functional>
#include <memory>

#include "adapters/hypervisor.h"

namespace atrium::adapters {

// Ok: the call may go to the host. An error: it is refused with that error.
using SideEffectGate = std::function<Status()>;

std::shared_ptr<Hypervisor> fence_side_effects(std::shared_ptr<Hypervisor> inner, SideEffectGate gate);

}  // namespace atrium::adapters

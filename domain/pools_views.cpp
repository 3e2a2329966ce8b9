// JSON views of the pools module: pools with their sizes, members, the pool policy (with its
// parser) and desktop sessions (domain/pools.h).
#include "domain/hosts.h"
#include "domain/pools.h"
#include "domain/pools_internal.h"
#include "domain/state.h"

namespace atrium::domain {

using namespace pools_detail;

Json pool_to_json(const State& s, const Pool& p) {
  int ready = 0, standby = 0, in_use = 0, provisioning = 0, total = 0, outdated = 0;
  for (const PoolMember* m : s.pools.members_of(p.id)) {
    ++total;
    if (m->template_version < p.template_version) ++outdated;
    if (m->state == "provisioning") ++provisioning;
    if (!m->session_id.empty()) ++in_use;
    if (member_free(s, *m)) (powered_on(s, *m) ? ready : standby)++;
  }
  Json t = template_to_json(p.tmpl);
  return Json{{"id", p.id},
              {"name", p.name},
              {"kind", p.kind},
              {"template", t},
              {"host_ids", p.host_ids},
              {"min_ready", p.min_ready},
              {"min_standby", p.min_standby},
              {"max_size", p.max_size},
              {"power_policy", p.power_policy},
              {"idle_timeout_s", p.idle_timeout_s},
              {"reconnect", p.reconnect},
              {"grace_s", p.grace_s},
              {"policy", pool_policy_to_json(p.policy)},
              {"state", p.deleting ? "deleting" : "active"},
              {"entitled_users", p.entitled},
              {"entitled_groups", p.entitled_groups},
              {"size", Json{{"total", total},
                            {"ready", ready},
                            {"standby", standby},
                            {"in_use", in_use},
                            {"provisioning", provisioning},
                            {"outdated", outdated}}},
              {"template_version", p.template_version},
              {"created_at_ms", p.created_at_ms},
              {"updated_at_ms", p.updated_at_ms},
              {"version", p.version}};
}

Json member_to_json(const State& s, const PoolMember& m) {
  Json j{{"vm_id", m.vm_id},
         {"pool_id", m.pool_id},
         {"host_id", m.host_id},
         {"name", m.name},
         {"uuid", m.uuid},
         {"mac", m.mac},
         {"overlay", m.overlay},
         {"state", m.state},
         {"memory_kib", m.memory_kib},
         {"free", member_free(s, m)},
         {"template_version", m.template_version}};
  j["assigned_user_id"] = m.assigned_user.empty() ? Json(nullptr) : Json(m.assigned_user);
  j["session_id"] = m.session_id.empty() ? Json(nullptr) : Json(m.session_id);
  j["error"] = m.error.empty() ? Json(nullptr) : Json(m.error);
  j["releasing"] = member_releasing(s, m);
  j["display_reset_pending"] = m.display_reset.empty() ? Json(nullptr) : Json(m.display_reset);
  if (const Vm* v = s.hosts.vm(m.vm_id)) {
    j["desired_state"] = v->desired;
    j["observed_state"] = shown_observed(s.hosts, *v);
  }
  return j;
}

Json pool_policy_to_json(const PoolPolicy& p) {
  return Json{{"clipboard", p.clipboard},
              {"usb_redirection", p.usb_redirection},
              {"folder_redirection", p.folder_redirection},
              {"idle_timeout_s", p.idle_timeout_s}};
}

Result<PoolPolicy> pool_policy_from_json(const Json& j) {
  PoolPolicy p;
  if (!j.is_object()) return field_error("policy", "must be an object");
  for (auto [key, dst] :
       {std::pair{"clipboard", &p.clipboard}, std::pair{"usb_redirection", &p.usb_redirection},
        std::pair{"folder_redirection", &p.folder_redirection}}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_boolean()) return field_error(std::string("policy.") + key, "must be a boolean");
    *dst = j[key].get<bool>();
  }
  if (j.contains("idle_timeout_s")) {
    const Json& v = j["idle_timeout_s"];
    if (!v.is_number_integer() || int_of<int64_t>(v) < 0 || int_of<int64_t>(v) > 30LL * 24 * 3600) {
      return field_error("policy.idle_timeout_s", "must be an integer from 0 to 2592000");
    }
    p.idle_timeout_s = int_of<int64_t>(v);
  }
  for (const auto& [k, v] : j.items()) {
    if (k != "clipboard" && k != "usb_redirection" && k != "folder_redirection" &&
        k != "idle_timeout_s") {
      return field_error("policy." + k, "is not a policy field");
    }
  }
  return p;
}

Json desktop_session_to_json(const DesktopSession& d) {
  Json j{{"id", d.id},
         {"kind", "desktop"},
         {"pool_id", d.pool_id},
         {"user_id", d.user_id},
         {"vm_id", d.vm_id},
         {"host_id", d.host_id},
         {"state", d.state},
         {"ticket_expires_at_ms", d.ticket_expires_at_ms},
         {"ticket_applied", d.ticket_applied},
         {"ticket_retired", d.ticket_retired},
         {"display_signal", d.display_signal},
         {"agent_signal", d.agent_signal},
         {"agent_present", d.agent_present},
         {"last_seen_ms", d.last_seen_ms},
         {"created_at_ms", d.created_at_ms},
         {"updated_at_ms", d.updated_at_ms},
         {"version", d.version}};
  j["end_reason"] = d.end_reason.empty() ? Json(nullptr) : Json(d.end_reason);
  j["ticket_note"] = d.ticket_note.empty() ? Json(nullptr) : Json(d.ticket_note);
  j["client_address"] = d.client_address.empty() ? Json(nullptr) : Json(d.client_address);
  return j;
}

}  // namespace atrium::domain

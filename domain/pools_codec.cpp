// The snapshot codec of the pools module (domain/evolve_table.h).
#include "domain/pools.h"

#include <map>

#include "domain/pools_internal.h"
#include "domain/state.h"

namespace atrium::domain {

using namespace pools_detail;

// ---- snapshot codec ---------------------------------------------------------------------
Json pools_to_json(const PoolsState& s) {
  std::map<std::string, Json> pools, members, sessions;
  for (const auto& [id, p] : s.pools) {
    pools[id] = Json{{"id", p.id}, {"name", p.name}, {"kind", p.kind},
                     {"template", template_to_json(p.tmpl)},
                     {"host_ids", p.host_ids}, {"min_ready", p.min_ready}, {"min_standby", p.min_standby},
                     {"max_size", p.max_size}, {"power_policy", p.power_policy},
                     {"idle_timeout_s", p.idle_timeout_s}, {"reconnect", p.reconnect},
                     {"grace_s", p.grace_s}, {"policy", pool_policy_to_json(p.policy)},
                     {"deleting", p.deleting}, {"entitled", p.entitled},
                     {"entitled_groups", p.entitled_groups},
                     {"template_version", p.template_version},
                     {"created_at_ms", p.created_at_ms}, {"updated_at_ms", p.updated_at_ms},
                     {"version", p.version}};
  }
  for (const auto& [id, m] : s.members) {
    members[id] = Json{{"vm_id", m.vm_id}, {"pool_id", m.pool_id}, {"host_id", m.host_id},
                       {"name", m.name}, {"uuid", m.uuid}, {"mac", m.mac}, {"overlay", m.overlay},
                       {"memory_kib", m.memory_kib}, {"state", m.state}, {"error", m.error},
                       {"assigned_user", m.assigned_user}, {"session_id", m.session_id},
                       {"last_session_end_ms", m.last_session_end_ms}, {"since_ms", m.since_ms},
                       {"template_version", m.template_version}, {"display_reset", m.display_reset}};
  }
  for (const auto& [id, d] : s.sessions) {
    Json j = desktop_session_to_json(d);
    j["disconnected_at_ms"] = d.disconnected_at_ms;
    j["end_reason"] = d.end_reason;
    j["ticket_note"] = d.ticket_note;
    j["ticket_issued_at_ms"] = d.ticket_issued_at_ms;
    j["flip_window_start_ms"] = d.flip_window_start_ms;
    j["flips_in_window"] = d.flips_in_window;
    sessions[id] = j;
  }
  Json notices = Json::array();
  for (const auto& n : s.notices) {
    notices.push_back(Json{{"position", n.position}, {"user_id", n.user_id}, {"kind", n.kind},
                           {"data", n.data}, {"at_ms", n.at_ms}});
  }
  return Json{{"pools", pools}, {"members", members}, {"sessions", sessions}, {"notices", notices}};
}

Status pools_from_json(PoolsState& s, const Json& j) {
  s = PoolsState{};
  for (const auto& [id, pj] : j.at("pools").items()) {
    Pool p;
    p.id = pj.at("id").get<std::string>();
    p.name = pj.at("name").get<std::string>();
    p.kind = pj.at("kind").get<std::string>();
    p.tmpl = template_from_json(pj.at("template"));
    p.host_ids = pj.at("host_ids").get<std::vector<std::string>>();
    p.min_ready = int_of<int>(pj.at("min_ready"));
    p.min_standby = int_of<int>(pj.at("min_standby"));
    p.max_size = int_of<int>(pj.at("max_size"));
    p.power_policy = pj.at("power_policy").get<std::string>();
    p.idle_timeout_s = int_of<int64_t>(pj.at("idle_timeout_s"));
    p.reconnect = pj.at("reconnect").get<std::string>();
    p.grace_s = int_of<int64_t>(pj.at("grace_s"));
    if (pj.contains("policy")) {  // absent in older snapshots
      auto pol = pool_policy_from_json(pj["policy"]);
      if (!pol.ok()) return pol.error();
      p.policy = *pol;
    }
    p.deleting = pj.at("deleting").get<bool>();
    p.template_version = pj.value("template_version", 1);  // absent in older snapshots
    p.entitled = pj.at("entitled").get<std::set<std::string>>();
    if (pj.contains("entitled_groups")) {
      p.entitled_groups = pj["entitled_groups"].get<std::set<std::string>>();
    }
    p.created_at_ms = int_of<int64_t>(pj.at("created_at_ms"));
    p.updated_at_ms = int_of<int64_t>(pj.at("updated_at_ms"));
    p.version = int_of<uint64_t>(pj.at("version"));
    s.pools[id] = std::move(p);
  }
  for (const auto& [id, mj] : j.at("members").items()) {
    PoolMember m;
    m.vm_id = mj.at("vm_id").get<std::string>();
    m.pool_id = mj.at("pool_id").get<std::string>();
    m.host_id = mj.at("host_id").get<std::string>();
    m.name = mj.at("name").get<std::string>();
    m.uuid = mj.at("uuid").get<std::string>();
    m.mac = mj.at("mac").get<std::string>();
    m.overlay = mj.at("overlay").get<std::string>();
    m.memory_kib = int_of<uint64_t>(mj.at("memory_kib"));
    m.state = mj.at("state").get<std::string>();
    m.error = mj.at("error").get<std::string>();
    m.assigned_user = mj.at("assigned_user").get<std::string>();
    m.session_id = mj.at("session_id").get<std::string>();
    m.last_session_end_ms = int_of<int64_t>(mj.at("last_session_end_ms"));
    m.since_ms = int_of<int64_t>(mj.at("since_ms"));
    m.template_version = mj.value("template_version", 1);
    m.display_reset = mj.value("display_reset", "");
    s.members[id] = std::move(m);
  }
  for (const auto& [id, dj] : j.at("sessions").items()) {
    DesktopSession d;
    d.id = dj.at("id").get<std::string>();
    d.pool_id = dj.at("pool_id").get<std::string>();
    d.user_id = dj.at("user_id").get<std::string>();
    d.vm_id = dj.at("vm_id").get<std::string>();
    d.host_id = dj.at("host_id").get<std::string>();
    d.state = dj.at("state").get<std::string>();
    d.end_reason = dj.at("end_reason").get<std::string>();
    d.ticket_expires_at_ms = int_of<int64_t>(dj.at("ticket_expires_at_ms"));
    d.ticket_applied = dj.at("ticket_applied").get<bool>();
    d.ticket_note = dj.at("ticket_note").get<std::string>();
    d.last_seen_ms = int_of<int64_t>(dj.at("last_seen_ms"));
    d.disconnected_at_ms = int_of<int64_t>(dj.at("disconnected_at_ms"));
    d.created_at_ms = int_of<int64_t>(dj.at("created_at_ms"));
    d.updated_at_ms = int_of<int64_t>(dj.at("updated_at_ms"));
    d.version = int_of<uint64_t>(dj.at("version"));
    d.ticket_issued_at_ms = dj.value("ticket_issued_at_ms", int64_t{0});
    d.ticket_retired = dj.value("ticket_retired", false);
    d.display_signal = dj.value("display_signal", false);
    d.agent_signal = dj.value("agent_signal", false);
    d.agent_present = dj.value("agent_present", false);
    if (auto it = dj.find("client_address"); it != dj.end() && it->is_string()) {
      d.client_address = it->get<std::string>();
    }
    d.flip_window_start_ms = dj.value("flip_window_start_ms", int64_t{0});
    d.flips_in_window = dj.value("flips_in_window", 0);
    if (d.live()) s.live_by_user[d.user_id].insert(d.id);
    s.sessions[id] = std::move(d);
  }
  for (const auto& nj : j.at("notices")) {
    UserNotice n;
    n.position = int_of<uint64_t>(nj.at("position"));
    n.user_id = nj.at("user_id").get<std::string>();
    n.kind = nj.at("kind").get<std::string>();
    n.data = nj.at("data");
    n.at_ms = int_of<int64_t>(nj.at("at_ms"));
    s.notices.push_back(std::move(n));
  }
  return Status::Ok();
}

}  // namespace atrium::domain

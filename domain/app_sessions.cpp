// Application sessions ("session-<id>" streams): the launch decision (decided in
// domain/placement.cpp) and the logoff that ends the session. Split from appcloud.cpp, whose
// appcloud_*.cpp siblings keep the catalog (clusters, servers, applications, publications,
// authorizations).
#include <string>

#include "domain/appcloud.h"
#include "domain/evolve_table.h"
#include "domain/state.h"

namespace atrium::domain {

Json session_to_json(const AppSession& s) {
  return Json{{"id", s.id},
              {"user_id", s.user_id},
              {"application_id", s.application_id},
              {"server_id", s.server_id},
              {"state", s.state},
              {"decided_at_ms", s.decided_at_ms},
              {"decided_position", s.decided_position},
              {"ended_at_ms", s.ended_at_ms == 0 ? Json(nullptr) : Json(s.ended_at_ms)},
              {"end_reason", s.end_reason.empty() ? Json(nullptr) : Json(s.end_reason)},
              {"decision", s.decision},
              {"version", s.version}};
}

AppSession app_session_from_json(const Json& j) {
  AppSession a;
  a.id = j.at("id").get<std::string>();
  a.user_id = j.at("user_id").get<std::string>();
  a.application_id = j.at("application_id").get<std::string>();
  a.server_id = j.at("server_id").get<std::string>();
  a.state = j.at("state").get<std::string>();
  if (a.state != "active" && a.state != "ended") {
    throw std::invalid_argument("session state " + a.state);
  }
  a.decided_at_ms = int_of<int64_t>(j.at("decided_at_ms"));
  a.decided_position = int_of<uint64_t>(j.at("decided_position"));
  if (!j.at("ended_at_ms").is_null()) a.ended_at_ms = int_of<int64_t>(j["ended_at_ms"]);
  if (!j.at("end_reason").is_null()) a.end_reason = j["end_reason"].get<std::string>();
  a.decision = j.at("decision");
  a.version = int_of<uint64_t>(j.at("version"));
  return a;
}

Result<Events> decide(const State& s, const EndApplicationSession& c, const Context& ctx) {
  const AppSession* a = s.appcloud.session(c.session_id);
  // Another user's session does not exist for the caller (404, not 403).
  if (a == nullptr || (!c.as_admin && a->user_id != c.actor_id)) {
    return Error::make(Code::not_found, "session " + c.session_id + " not found", "not_found");
  }
  if (!a->active()) return Events{};
  if (c.reason.empty() || c.reason.size() > 64) {
    return Error::make(Code::invalid_argument, "the end reason must be 1 to 64 characters",
                       "invalid_reason");
  }
  return Events{{session_stream(a->id), "ApplicationSessionEnded", 1,
                 Json{{"session_id", a->id},
                      {"user_id", a->user_id},
                      {"server_id", a->server_id},
                      {"reason", c.reason},
                      {"ended_at_ms", ctx.now_ms}}}};
}

namespace {

Server* server_named(State& s, const std::string& id) {
  auto it = s.appcloud.servers.find(id);
  return it == s.appcloud.servers.end() ? nullptr : &it->second;
}

void on_launch_decided(State& s, const Event& e, const Applied& at) {
  AppSession a;
  a.id = e.data.at("session_id").get<std::string>();
  a.user_id = e.data.at("user_id").get<std::string>();
  a.application_id = e.data.at("application_id").get<std::string>();
  a.server_id = e.data.at("server_id").get<std::string>();
  a.decided_at_ms = e.data.value("decided_at_ms", int64_t{0});
  a.decided_position = at.position;
  a.decision = e.data.value("decision", Json::object());
  a.version = at.stream_version;
  if (Server* v = server_named(s, a.server_id)) v->launches_since_report++;
  s.appcloud.index.active_launches[a.server_id].insert(a.decided_position);
  if (a.decision.contains("advance")) {
    for (const auto& key : a.decision["advance"]) s.appcloud.round_robin[key.get<std::string>()]++;
  }
  s.appcloud.sessions[a.id] = std::move(a);
}

void on_session_ended(State& s, const Event& e, const Applied& at) {
  auto it = s.appcloud.sessions.find(e.data.at("session_id").get<std::string>());
  if (it == s.appcloud.sessions.end()) return;
  AppSession& a = it->second;
  a.state = "ended";
  a.ended_at_ms = e.data.value("ended_at_ms", at.recorded_at_ms);
  a.end_reason = e.data.value("reason", "logoff");
  a.version = at.stream_version;
  // A launch decided after the server's last load report is still counted on top of the
  // reported sessions; once ended it no longer runs there.
  if (auto al = s.appcloud.index.active_launches.find(a.server_id);
      al != s.appcloud.index.active_launches.end()) {
    al->second.erase(a.decided_position);
    if (al->second.empty()) s.appcloud.index.active_launches.erase(al);
  }
  Server* v = server_named(s, a.server_id);
  if (v != nullptr && a.decided_position > v->load_position && v->launches_since_report > 0) {
    v->launches_since_report--;
  }
}

}  // namespace

void register_app_sessions(EvolveTable& t) {
  t["ApplicationLaunchDecided"] = on_launch_decided;
  t["ApplicationSessionEnded"] = on_session_ended;
}

}  // namespace atrium::domain

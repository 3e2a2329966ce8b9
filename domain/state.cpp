#include "domain/state.h"

#include "domain/evolve_table.h"

namespace atrium::domain {

namespace {
const EvolveTable& table() {
  static const EvolveTable t = [] {
    EvolveTable t;
    register_users(t);
    register_appcloud(t);
    register_app_sessions(t);
    register_hosts(t);
    register_pools(t);
    register_directories(t);
    register_totp(t);
    register_agents(t);
    return t;
  }();
  return t;
}
}  // namespace

void evolve(State& s, const Event& e, const Applied& at) {
  s.position = at.position;
  s.stream_versions[e.stream] = at.stream_version;
  auto it = table().find(e.type);
  if (it != table().end()) it->second(s, e, at);
  pools_after_evolve(s, e, at);
  agents_after_evolve(s, e);
}

Status check_expected(const State& s, const std::string& stream,
                      const std::optional<uint64_t>& expected) {
  if (!expected) return Status::Ok();
  uint64_t v = s.version_of(stream);
  if (v != *expected) {
    return Error::make(Code::version_mismatch,
                       "If-Match expected version " + std::to_string(*expected) +
                           " but the current version is " + std::to_string(v),
                       "version_mismatch");
  }
  return Status::Ok();
}

Json state_to_json(const State& s) {
  Json j;
  j["position"] = s.position;
  Json versions = Json::object();
  for (const auto& [k, v] : s.stream_versions) versions[k] = v;
  j["stream_versions"] = versions;
  j["users"] = users_to_json(s.users);
  j["appcloud"] = appcloud_to_json(s.appcloud);
  j["hosts"] = hosts_to_json(s.hosts);
  j["pools"] = pools_to_json(s.pools);
  j["directories"] = directories_to_json(s.directories);
  j["totp"] = totp_to_json(s.totp);
  j["agents"] = agents_to_json(s.agents);
  return j;
}

Result<State> state_from_json(const Json& j) {
  try {
    State s;
    s.position = int_of<uint64_t>(j.at("position"));
    for (const auto& [k, v] : j.at("stream_versions").items()) {
      s.stream_versions[k] = int_of<uint64_t>(v);
    }
    if (auto st = users_from_json(s.users, j.at("users")); !st) return st.error();
    if (auto st = hosts_from_json(s.hosts, j.at("hosts")); !st) return st.error();
    if (j.contains("pools")) {
      if (auto st = pools_from_json(s.pools, j.at("pools")); !st) return st.error();
    }
    if (j.contains("totp")) {
      if (auto st = totp_from_json(s.totp, j.at("totp")); !st) return st.error();
    }
    if (j.contains("directories")) {
      if (auto st = directories_from_json(s.directories, j.at("directories")); !st) return st.error();
    }
    if (auto st = appcloud_from_json(s.appcloud, j.at("appcloud")); !st) return st.error();
    if (j.contains("agents")) {  // absent in snapshots from before issue 11
      if (auto st = agents_from_json(s.agents, j.at("agents")); !st) return st.error();
    }
    return s;
  } catch (const std::exception& ex) {
    return Error::make(Code::invalid_argument, std::string("snapshot unreadable: ") + ex.what());
  }
}

}  // namespace atrium::domain

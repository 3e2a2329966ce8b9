#include "api/broker_metrics.h"

#include "domain/pools.h"
#include "domain/state.h"

namespace atrium::api {

namespace {
// Known from the start, so that an alert on "no ready VM" or "sessions connected" has a
// series (at 0) before the first pool or launch.
constexpr std::pair<const char*, const char*> kSessionStates[] = {
    {"desktop", "created"}, {"desktop", "connected"},  {"desktop", "disconnected"},
    {"desktop", "ended"},   {"application", "active"}, {"application", "ended"}};
}  // namespace

BrokerMetrics::BrokerMetrics(prometheus::Registry& r) {
  pool_vms_ = &prometheus::BuildGauge()
                   .Name("atrium_pool_vms")
                   .Help(
                       "VMs of each desktop pool by state (total, ready, standby, in_use, "
                       "provisioning, outdated; as the pool's size: states overlap)")
                   .Register(r);
  sessions_ = &prometheus::BuildGauge()
                   .Name("atrium_sessions")
                   .Help("Sessions by kind (desktop, application) and state")
                   .Register(r);
  for (const auto& [kind, state] : kSessionStates) {
    session_gauges_[{kind, state}] = &sessions_->Add({{"kind", kind}, {"state", state}});
  }
}

void BrokerMetrics::refresh(const projections::Views& views) {
  using PoolKey = std::tuple<std::string, std::string, std::string>;  // id, name, state
  struct Snap {
    std::map<PoolKey, double> pools;
    std::map<std::pair<std::string, std::string>, double> sessions;
  };
  Snap snap = views.read([](const domain::State& s) {
    Snap out;
    for (const auto& [id, p] : s.pools.pools) {
      domain::Json j = domain::pool_to_json(s, p);
      for (const auto& [state, n] : j["size"].items()) {
        if (n.is_number()) out.pools[{id, p.name, state}] = n.get<double>();
      }
    }
    for (const auto& [id, d] : s.pools.sessions) out.sessions[{"desktop", d.state}]++;
    for (const auto& [id, a] : s.appcloud.sessions) out.sessions[{"application", a.state}]++;
    return out;
  });
  std::lock_guard lock(mu_);
  for (auto it = pool_gauges_.begin(); it != pool_gauges_.end();) {
    if (snap.pools.count(it->first) == 0) {
      pool_vms_->Remove(it->second);
      it = pool_gauges_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [key, n] : snap.pools) {
    auto it = pool_gauges_.find(key);
    if (it == pool_gauges_.end()) {
      const auto& [id, name, state] = key;
      it = pool_gauges_
               .emplace(key, &pool_vms_->Add({{"pool", id}, {"pool_name", name}, {"state", state}}))
               .first;
    }
    it->second->Set(n);
  }
  for (auto& [key, g] : session_gauges_) g->Set(0);
  for (const auto& [key, n] : snap.sessions) {
    auto it = session_gauges_.find(key);
    if (it == session_gauges_.end()) {
      it = session_gauges_
               .emplace(key, &sessions_->Add({{"kind", key.first}, {"state", key.second}}))
               .first;
    }
    it->second->Set(n);
  }
}

}  // namespace atrium::api

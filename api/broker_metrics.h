// Gauges of what operators watch in the broker's views, computed on each scrape: pool VMs by
// state (the `size` fields of a pool) and sessions by kind and state. Labels stay bounded:
// pools are admin-made, states are the domain's; no user ids.
#pragma once

#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "projections/views.h"

namespace atrium::api {

class BrokerMetrics {
 public:
  explicit BrokerMetrics(prometheus::Registry& registry);

  // Recomputes the gauges from the views (a Metrics collector, run before each scrape).
  // Series of pools that are gone, or were renamed, are removed.
  void refresh(const projections::Views& views);

 private:
  prometheus::Family<prometheus::Gauge>* pool_vms_;  // {pool, pool_name, state}
  prometheus::Family<prometheus::Gauge>* sessions_;  // {kind, state}
  std::mutex mu_;
  std::map<std::tuple<std::string, std::string, std::string>, prometheus::Gauge*> pool_gauges_;
  std::map<std::pair<std::string, std::string>, prometheus::Gauge*> session_gauges_;
};

}  // namespace atrium::api

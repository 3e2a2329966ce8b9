// Prometheus metrics shared by the layers; one instance, built by main and injected.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <functional>
#include <memory>
#include <mutex>
#include <vector>
#include <string>

namespace atrium::pipeline {

struct Metrics {
  Metrics();

  std::shared_ptr<prometheus::Registry> registry;
  const uint64_t serial;  // unique per instance in this process, for caches keyed on it

  // Event store and pipeline.
  prometheus::Counter* events_appended = nullptr;
  prometheus::Histogram* append_batch_events = nullptr;
  prometheus::Histogram* append_batch_commands = nullptr;
  prometheus::Histogram* synced_write_seconds = nullptr;
  prometheus::Gauge* last_position = nullptr;
  prometheus::Gauge* queue_depth = nullptr;
  prometheus::Gauge* projection_lag = nullptr;
  prometheus::Family<prometheus::Counter>* commands = nullptr;  // {command, result}
  prometheus::Counter* append_failures = nullptr;

  // HTTP.
  prometheus::Family<prometheus::Counter>* http_requests = nullptr;  // {route, method, status}
  prometheus::Family<prometheus::Histogram>* http_duration = nullptr;  // {route, method}

  // Process.
  prometheus::Gauge* resident_memory = nullptr;
  prometheus::Gauge* open_fds = nullptr;

  // Registers a function run before each scrape (e.g. gauges computed from the views).
  void add_collector(std::function<void()> f);

  // Refreshes gauges that are read on scrape (process memory, fds).
  void refresh_process();
  std::string serialize();

 private:
  std::mutex collectors_mu_;
  std::vector<std::function<void()>> collectors_;
};

}  // namespace atrium::pipeline

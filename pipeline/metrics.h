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

  // Launches (POST /v1/launches) by kind (desktop, application), outcome (created,
  // reconnected, refused, failed) and reason (the refusal's, "none" for a session).
  prometheus::Family<prometheus::Counter>* launches = nullptr;           // {kind, outcome, reason}
  prometheus::Family<prometheus::Histogram>* launch_duration = nullptr;  // {kind, outcome}
  void record_launch(const std::string& kind, const std::string& outcome, const std::string& reason,
                     double seconds);

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

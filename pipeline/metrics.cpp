#include "pipeline/metrics.h"

#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <prometheus/text_serializer.h>

namespace atrium::pipeline {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

namespace {
prometheus::Histogram::BucketBoundaries seconds_buckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
          1, 2.5, 5, 10};
}
prometheus::Histogram::BucketBoundaries size_buckets() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
}
}  // namespace

static std::atomic<uint64_t> next_serial{1};

Metrics::Metrics() : registry(std::make_shared<prometheus::Registry>()), serial(next_serial++) {
  auto& r = *registry;
  events_appended = &BuildCounter()
                         .Name("atrium_events_appended_total")
                         .Help("Events durably appended to the log")
                         .Register(r)
                         .Add({});
  append_batch_events = &BuildHistogram()
                             .Name("atrium_append_batch_events")
                             .Help("Events per synced append (group commit size)")
                             .Register(r)
                             .Add({}, size_buckets());
  append_batch_commands = &BuildHistogram()
                               .Name("atrium_append_batch_commands")
                               .Help("Commands decided per writer batch")
                               .Register(r)
                               .Add({}, size_buckets());
  synced_write_seconds = &BuildHistogram()
                              .Name("atrium_synced_write_duration_seconds")
                              .Help("Duration of one synced RocksDB WriteBatch")
                              .Register(r)
                              .Add({}, seconds_buckets());
  last_position = &BuildGauge()
                       .Name("atrium_log_last_position")
                       .Help("Global position of the last durable event")
                       .Register(r)
                       .Add({});
  queue_depth = &BuildGauge()
                     .Name("atrium_command_queue_depth")
                     .Help("Commands waiting for the writer")
                     .Register(r)
                     .Add({});
  projection_lag = &BuildGauge()
                        .Name("atrium_projection_lag_events")
                        .Help("Durable events not yet applied to the read views")
                        .Register(r)
                        .Add({});
  commands = &BuildCounter()
                  .Name("atrium_commands_total")
                  .Help("Commands handled by the writer, by command and result")
                  .Register(r);
  append_failures = &BuildCounter()
                         .Name("atrium_append_failures_total")
                         .Help("Synced appends that failed (storage errors)")
                         .Register(r)
                         .Add({});
  http_requests = &BuildCounter()
                       .Name("atrium_http_requests_total")
                       .Help("HTTP requests by route template, method and status")
                       .Register(r);
  http_duration = &BuildHistogram()
                       .Name("atrium_http_request_duration_seconds")
                       .Help("HTTP request duration by route template and method")
                       .Register(r);
  launches =
      &BuildCounter()
           .Name("atrium_launches_total")
           .Help("Launches by kind, outcome (created, reconnected, refused, failed) and reason")
           .Register(r);
  launch_duration = &BuildHistogram()
                         .Name("atrium_launch_duration_seconds")
                         .Help("Time to answer a launch (with any VM start), by kind and outcome")
                         .Register(r);
  resident_memory = &BuildGauge()
                         .Name("atrium_process_resident_memory_bytes")
                         .Help("Resident set size of the daemon")
                         .Register(r)
                         .Add({});
  open_fds = &BuildGauge()
                  .Name("atrium_process_open_fds")
                  .Help("Open file descriptors of the daemon")
                  .Register(r)
                  .Add({});
}

void Metrics::refresh_process() {
  std::ifstream statm("/proc/self/statm");
  long pages_total = 0, pages_resident = 0;
  if (statm >> pages_total >> pages_resident) {
    resident_memory->Set(static_cast<double>(pages_resident) *
                         static_cast<double>(::sysconf(_SC_PAGESIZE)));
  }
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (struct dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
    open_fds->Set(n - 1);  // minus the directory stream itself
  }
}

void Metrics::record_launch(const std::string& kind, const std::string& outcome,
                            const std::string& reason, double seconds) {
  launches->Add({{"kind", kind}, {"outcome", outcome}, {"reason", reason}}).Increment();
  launch_duration
      ->Add({{"kind", kind}, {"outcome", outcome}},
            prometheus::Histogram::BucketBoundaries{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                    2.5, 5, 10, 30, 60, 120})
      .Observe(seconds);
}

void Metrics::add_collector(std::function<void()> f) {
  std::lock_guard lock(collectors_mu_);
  collectors_.push_back(std::move(f));
}

std::string Metrics::serialize() {
  refresh_process();
  {
    std::lock_guard lock(collectors_mu_);
    for (auto& f : collectors_) f();
  }
  return prometheus::TextSerializer().Serialize(registry->Collect());
}

}  // namespace atrium::pipeline

#include "api/leadership.h"

#include <cstdio>

namespace atrium::api {

using Clock = std::chrono::steady_clock;

Leadership::Leadership(eventstore::SharedLog& log, pipeline::Pipeline& pipeline,
                       LeadershipOptions opts, std::function<void()> on_lead,
                       std::function<void()> on_step_down)
    : log_(log),
      pipeline_(pipeline),
      opts_(std::move(opts)),
      on_lead_(std::move(on_lead)),
      on_step_down_(std::move(on_step_down)) {}

Leadership::~Leadership() {
  stop();
}

void Leadership::start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { loop(); });
}

void Leadership::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (leading_.load()) {
    const uint64_t t = term_.load();
    step_down("stopping");
    if (auto st = log_.release(t, opts_.member_id); !st) {
      std::fprintf(stderr, "atriumd: releasing the lease failed: %s\n", st.error().message.c_str());
    }
  }
}

bool Leadership::wait(std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  return !cv_.wait_for(lock, d, [&] { return stopping_; });
}

// Takes the lease when it is free; true when this broker now leads.
bool Leadership::campaign() {
  const auto sent = Clock::now();
  auto lease = log_.try_acquire({opts_.member_id, opts_.url, opts_.ttl});
  if (!lease.ok() || !lease->has_value()) return false;
  const uint64_t term = (*lease)->term;
  if (auto st = log_.set_writer_term(term); !st) {
    std::fprintf(stderr, "atriumd: took term %llu but cannot write with it: %s\n",
                 static_cast<unsigned long long>(term), st.error().message.c_str());
    // Give it back rather than sit on a lease nobody can use until it expires; the next
    // campaign (this broker's or another's) takes a new term through the head row.
    (void)log_.release(term, opts_.member_id);
    return false;
  }
  deadline_ = sent + opts_.ttl;
  term_ = term;
  pipeline_.set_leading(true);  // it folds the tail before it decides any command
  leading_ = true;
  std::fprintf(stderr, "atriumd: leading the shared log (term %llu, position %llu)\n",
               static_cast<unsigned long long>(term),
               static_cast<unsigned long long>((*lease)->position));
  if (on_lead_) on_lead_();
  return true;
}

void Leadership::step_down(const std::string& why) {
  if (!leading_.exchange(false)) return;
  // Refuse commands first, then stop every side effect, then drop the term.
  pipeline_.set_leading(false);
  if (on_step_down_) on_step_down_();
  (void)log_.set_writer_term(0);
  std::fprintf(stderr, "atriumd: stepped down from term %llu: %s; following\n",
               static_cast<unsigned long long>(term_.load()), why.c_str());
}

void Leadership::report() {
  const auto now = Clock::now();
  if (now - reported_ < std::chrono::seconds(1)) return;
  reported_ = now;
  eventstore::MemberReport m;
  m.member_id = opts_.member_id;
  m.url = opts_.url;
  m.role = leading_.load() ? "leader" : "follower";
  m.term = leading_.load() ? term_.load() : 0;
  m.applied = opts_.applied ? opts_.applied() : 0;
  (void)log_.report_member(m);  // best effort: only GET /v1/cluster reads it
}

void Leadership::loop() {
  const auto renew_every = opts_.ttl / 3;
  // Step down once 4/5 of the TTL passed since the last renewal was sent: the database
  // counts the lease from when it received that renewal, so ours ends first.
  const auto margin = opts_.ttl / 5;
  auto next_renew = Clock::now();
  for (;;) {
    report();
    if (!leading_.load()) {
      if (campaign()) {
        next_renew = Clock::now() + renew_every;
        continue;
      }
      if (!wait(opts_.campaign_every)) return;
      continue;
    }
    if (log_.writer_term() == 0) {  // an append was fenced
      step_down("an append was fenced: another broker took the log");
      continue;
    }
    const auto now = Clock::now();
    if (now >= deadline_ - margin) {
      step_down("the lease could not be renewed in time");
      continue;
    }
    if (now >= next_renew) {
      const auto sent = Clock::now();
      auto r = log_.renew(term_.load(), {opts_.member_id, opts_.url, opts_.ttl});
      if (r.ok() && *r) {
        deadline_ = sent + opts_.ttl;
        next_renew = sent + renew_every;
      } else if (r.ok()) {
        step_down("the term has passed");
        continue;
      } else {
        next_renew = Clock::now() + std::chrono::milliseconds(200);  // retry soon
      }
    }
    if (!wait(std::chrono::milliseconds(100))) return;
  }
}

}  // namespace atrium::api

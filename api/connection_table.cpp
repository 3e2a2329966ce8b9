#include "api/connection_table.h"

namespace atrium::api {

void ConnectionTable::set_limits(Limits limits) {
  std::lock_guard l(mu_);
  limits_ = limits;
}

ConnectionTable::Limits ConnectionTable::limits() const {
  std::lock_guard l(mu_);
  return limits_;
}

void ConnectionTable::unlink(Conn& c) {
  if (!c.linked_) return;
  order_.erase(c.all_it_);
  addresses_[c.address_].order.erase(c.addr_it_);
  c.linked_ = false;
}

void ConnectionTable::link(Conn& c, bool front) {
  if (c.linked_ || c.evicting_ || !c.admitted_) return;
  Address& a = addresses_[c.address_];
  if (front) {
    c.all_it_ = order_.insert(order_.begin(), &c);
    c.addr_it_ = a.order.insert(a.order.begin(), &c);
  } else {
    c.all_it_ = order_.insert(order_.end(), &c);
    c.addr_it_ = a.order.insert(a.order.end(), &c);
  }
  c.linked_ = true;
}

bool ConnectionTable::admit(Conn& c) {
  std::lock_guard l(mu_);
  Address& a = addresses_[c.address_];
  bool over_address = a.count >= limits_.max_per_address;
  bool over_total = open_ >= limits_.max_total;
  if (over_address || over_total) {
    std::list<Conn*>& order = over_address ? a.order : order_;
    if (order.empty() || pending_evictions_ >= limits_.max_pending_evictions) {
      ++refused_;
      if (a.count == 0) addresses_.erase(c.address_);
      return false;
    }
    Conn* victim = order.front();
    unlink(*victim);
    victim->evicting_ = true;
    ++pending_evictions_;
    ++evicted_;
    evict_(*victim);
  }
  c.admitted_ = true;
  ++open_;
  ++a.count;
  link(c, false);
  return true;
}

void ConnectionTable::busy(Conn& c) {
  std::lock_guard l(mu_);
  unlink(c);
}

void ConnectionTable::idle(Conn& c) {
  std::lock_guard l(mu_);
  link(c, false);
}

void ConnectionTable::closing(Conn& c) {
  std::lock_guard l(mu_);
  unlink(c);
  link(c, true);
}

void ConnectionTable::remove(Conn& c) {
  std::lock_guard l(mu_);
  if (!c.admitted_) return;
  unlink(c);
  if (c.evicting_) --pending_evictions_;
  --open_;
  auto it = addresses_.find(c.address_);
  if (it != addresses_.end() && --it->second.count == 0) addresses_.erase(it);
  c.admitted_ = false;
}

ConnectionTable::Stats ConnectionTable::stats() const {
  std::lock_guard l(mu_);
  return Stats{open_, evicted_, refused_};
}

}  // namespace atrium::api

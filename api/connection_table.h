// The open HTTP connections, for the connection caps (issue 10.1): a global cap (derived from
// RLIMIT_NOFILE by the server) and a per-address cap. At a cap the connection that has been
// idle longest (no request in progress; connections being closed come first) is evicted to
// make room, else the new connection is refused. Shared by every transport thread: all state
// is behind one mutex, every operation is O(1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>

namespace atrium::api {

class ConnectionTable {
 public:
  struct Limits {
    size_t max_total = 1024;
    size_t max_per_address = 512;
    // Victims asked to close but not gone yet count as open; beyond this many, new
    // connections are refused instead, so the descriptors in use stay bounded.
    size_t max_pending_evictions = 64;
  };

  // One connection. The transport embeds it in its per-connection state; the table only links
  // it (the fields below are guarded by the table's mutex).
  class Conn {
   public:
    explicit Conn(std::string address) : address_(std::move(address)) {}
    Conn(const Conn&) = delete;
    Conn& operator=(const Conn&) = delete;
    const std::string& address() const { return address_; }

   private:
    friend class ConnectionTable;
    std::string address_;
    bool admitted_ = false;
    bool linked_ = false;    // in the eviction order (idle, or closing)
    bool evicting_ = false;  // chosen as a victim; waiting for its transport to close it
    std::list<Conn*>::iterator all_it_;
    std::list<Conn*>::iterator addr_it_;
  };

  struct Stats {
    size_t open = 0;  // admitted and not removed (victims included until they are gone)
    uint64_t evicted = 0;
    uint64_t refused = 0;
  };

  // `evict` is called with the table locked, for a victim that is still open: it must only
  // ask the victim's transport to close it (shutdown(2)), never call back into the table.
  ConnectionTable(Limits limits, std::function<void(Conn&)> evict)
      : limits_(limits), evict_(std::move(evict)) {}

  void set_limits(Limits limits);
  Limits limits() const;

  // A new connection. true: admitted (possibly after evicting another one); it starts
  // evictable, as the youngest idle connection. false: refused, and not counted.
  bool admit(Conn& c);
  // A request started on c: not evictable until it is answered.
  void busy(Conn& c);
  // c answered and waits for the next request: evictable, as the youngest.
  void idle(Conn& c);
  // c is being closed: first in the eviction order.
  void closing(Conn& c);
  // c is gone (its transport closed it). Safe for a connection that was never admitted.
  void remove(Conn& c);

  Stats stats() const;

 private:
  struct Address {
    size_t count = 0;
    std::list<Conn*> order;  // evictable connections of this address, oldest first
  };
  void unlink(Conn& c);
  void link(Conn& c, bool front);

  mutable std::mutex mu_;
  Limits limits_;
  std::function<void(Conn&)> evict_;
  std::list<Conn*> order_;  // evictable connections, oldest first
  std::unordered_map<std::string, Address> addresses_;
  size_t open_ = 0;
  size_t pending_evictions_ = 0;
  uint64_t evicted_ = 0;
  uint64_t refused_ = 0;
};

}  // namespace atrium::api

// The connection caps and their eviction order (api/connection_table.h), without sockets.
#include "api/connection_table.h"

#include <doctest/doctest.h>

#include <memory>
#include <thread>
#include <vector>

using atrium::api::ConnectionTable;

namespace {

struct Fixture {
  std::vector<ConnectionTable::Conn*> evicted;
  ConnectionTable table;
  explicit Fixture(ConnectionTable::Limits l)
      : table(l, [this](ConnectionTable::Conn& c) { evicted.push_back(&c); }) {}
};

}  // namespace

TEST_CASE("at the global cap the longest idle connection is evicted, else refused") {
  Fixture f({3, 100, 64});
  ConnectionTable::Conn a("1.1.1.1"), b("2.2.2.2"), c("3.3.3.3"), d("4.4.4.4"), e("5.5.5.5");
  REQUIRE(f.table.admit(a));
  REQUIRE(f.table.admit(b));
  REQUIRE(f.table.admit(c));
  f.table.busy(a);
  f.table.idle(a);  // a answered last: b is now the longest idle
  REQUIRE(f.table.admit(d));
  REQUIRE(f.evicted.size() == 1);
  CHECK(f.evicted[0] == &b);
  f.table.remove(b);  // its transport closed it
  CHECK(f.table.stats().open == 3);
  f.table.busy(a);
  f.table.busy(c);
  f.table.busy(d);
  CHECK_FALSE(f.table.admit(e));  // everything busy: refused, not counted
  CHECK(f.table.stats().open == 3);
  CHECK(f.table.stats().refused == 1);
  f.table.remove(e);  // harmless for a refused one
  CHECK(f.table.stats().open == 3);
}

TEST_CASE("connections being closed are evicted first") {
  Fixture f({2, 100, 64});
  ConnectionTable::Conn a("1.1.1.1"), b("2.2.2.2"), c("3.3.3.3");
  REQUIRE(f.table.admit(a));
  REQUIRE(f.table.admit(b));
  f.table.closing(b);
  REQUIRE(f.table.admit(c));
  REQUIRE(f.evicted.size() == 1);
  CHECK(f.evicted[0] == &b);
}

TEST_CASE("the per-address cap evicts within that address only") {
  Fixture f({100, 2, 64});
  ConnectionTable::Conn a1("10.0.0.1"), other("10.0.0.2"), a2("10.0.0.1"), a3("10.0.0.1");
  REQUIRE(f.table.admit(a1));
  REQUIRE(f.table.admit(other));  // older idle than a2, but another address
  REQUIRE(f.table.admit(a2));
  REQUIRE(f.table.admit(a3));
  REQUIRE(f.evicted.size() == 1);
  CHECK(f.evicted[0] == &a1);
  f.table.remove(a1);
  f.table.busy(a2);
  f.table.busy(a3);
  ConnectionTable::Conn a4("10.0.0.1");
  CHECK_FALSE(f.table.admit(a4));
  ConnectionTable::Conn b2("10.0.0.2");
  CHECK(f.table.admit(b2));
}

TEST_CASE("pending evictions are bounded: beyond them newcomers are refused") {
  Fixture f({2, 100, 1});
  ConnectionTable::Conn a("1.1.1.1"), b("2.2.2.2"), c("3.3.3.3"), d("4.4.4.4");
  REQUIRE(f.table.admit(a));
  REQUIRE(f.table.admit(b));
  REQUIRE(f.table.admit(c));  // evicts a, which has not gone yet
  CHECK_FALSE(f.table.admit(d));
  f.table.remove(a);
  CHECK(f.table.admit(d));  // evicts b
  CHECK(f.evicted.size() == 2);
}

TEST_CASE("a victim that answers a last request does not become evictable again") {
  Fixture f({1, 100, 64});
  ConnectionTable::Conn a("1.1.1.1"), b("2.2.2.2"), c("3.3.3.3");
  REQUIRE(f.table.admit(a));
  REQUIRE(f.table.admit(b));  // evicts a
  f.table.busy(a);
  f.table.idle(a);
  f.table.remove(b);
  CHECK_FALSE(f.table.admit(c));  // a still counts until it is gone, and is no victim again
  CHECK(f.evicted.size() == 1);
  f.table.remove(a);
  CHECK(f.table.admit(c));
}

TEST_CASE("many threads admitting, idling and removing keep the counts right") {
  Fixture f({64, 1000, 1000});
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        auto c = std::make_unique<ConnectionTable::Conn>("10.0.0." + std::to_string(t));
        if (f.table.admit(*c)) {
          f.table.busy(*c);
          f.table.idle(*c);
        }
        f.table.remove(*c);
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK(f.table.stats().open == 0);
}

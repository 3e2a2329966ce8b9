// Several real atriumd on one PostgreSQL log (the throwaway server of support/pg_server.h), for
// the cluster tests: a fresh database each, the brokers started with the same flags (and the
// same secret.key, as the README asks of a cluster), the leader found by GET /v1/cluster.
#pragma once

#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "support/child_daemon.h"
#include "support/pg_server.h"

namespace atrium::testing {

inline constexpr const char* kClusterSecret = "test-cluster-secret-0123456789abcdef0123";

struct ClusterBroker {
  TempDir dir;
  child::Child c;
  std::string log;
  std::string url() const { return "http://127.0.0.1:" + std::to_string(c.port); }
};

struct PgCluster {
  PgServer* pg = nullptr;
  std::string db, store;
  std::vector<std::unique_ptr<ClusterBroker>> brokers;

  // pg == nullptr when PostgreSQL is not installed (the test returns). With `secret`, the
  // brokers share kClusterSecret through ATRIUM_CLUSTER_SECRET (the environment fallback).
  PgCluster(size_t n, std::vector<std::string> extra, bool secret = true) {
    pg = shared_pg();
    if (pg == nullptr) return;
    if (secret) ::setenv("ATRIUM_CLUSTER_SECRET", kClusterSecret, 1);
    static int k = 0;
    db = "hac" + std::to_string(::getpid()) + "_" + std::to_string(++k);
    REQUIRE(pg->psql("CREATE DATABASE " + db) == 0);
    store = "postgresql://postgres@127.0.0.1:" + std::to_string(pg->port()) + "/" + db;
    std::vector<std::string> flags = child::kQuiet;
    flags.push_back("--store=" + store);
    flags.push_back("--lease-ttl-s=2");
    flags.insert(flags.end(), extra.begin(), extra.end());
    const std::string key(32, 'k');  // one secret.key for every broker of the cluster
    for (size_t i = 0; i < n; ++i) {
      auto b = std::make_unique<ClusterBroker>();
      std::ofstream(b->dir.str() + "/secret.key", std::ios::binary) << key;
      b->log = b->dir.str() + "/stderr";
      b->c = child::spawn_with(b->dir.str(), {flags, b->log, true, -1});
      brokers.push_back(std::move(b));
    }
    ::unsetenv("ATRIUM_CLUSTER_SECRET");
  }
  ~PgCluster() {
    for (auto& b : brokers) kill(*b);
  }
  static void kill(ClusterBroker& b) {
    if (b.c.pid <= 0) return;
    ::kill(b.c.pid, SIGCONT);
    ::kill(b.c.pid, SIGKILL);
    child::wait_exit(b.c.pid);
    b.c.pid = -1;
  }
  ClusterBroker& operator[](size_t i) { return *brokers[i]; }

  // The index of the broker that leads, by GET /v1/cluster on the live ones; -1 if none.
  int leader(std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      for (auto& asked : brokers) {
        if (asked->c.pid < 0) continue;
        auto r = http(asked->c.port, "GET", "/v1/cluster", "", child::auth(), 3000);
        if (r.status != 200 || r.json()["leader"].is_null()) continue;
        const std::string url = r.json()["leader"]["url"];
        for (size_t i = 0; i < brokers.size(); ++i) {
          if (brokers[i]->c.pid > 0 && url == brokers[i]->url()) return static_cast<int>(i);
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }
};

}  // namespace atrium::testing

// The kill loop: concurrent writers over HTTP against the real atriumd, SIGKILL at random
// moments (and now and then during start-up), restart, and check that every acknowledged
// write is there, positions are gap-free and the hash chain verifies. 50 rounds in CI;
// ATRIUM_KILL_ROUNDS=1000 for the long run (README, Tests), ATRIUM_KILL_SEED to replay one.
#include <doctest/doctest.h>

#include <random>
#include <set>
#include <string>

#include "support/child_daemon.h"
#include "support/test_support.h"

using atrium::testing::TempDir;
using namespace atrium::testing::child;

TEST_CASE(
    "kill loop: SIGKILL at random moments; every acknowledged write survives, gap-free, chained") {
  const int rounds = env_int("ATRIUM_KILL_ROUNDS", 50);
  const unsigned seed =
      static_cast<unsigned>(env_int("ATRIUM_KILL_SEED", static_cast<int>(std::random_device{}())));
  const int verify_every = std::max(1, env_int("ATRIUM_KILL_VERIFY_EVERY", 1));
  MESSAGE("kill loop: " << rounds << " rounds, seed " << seed
                        << " (ATRIUM_KILL_ROUNDS, ATRIUM_KILL_SEED)");
  std::mt19937 rng(seed);
  TempDir dir, logs;
  const std::string err = logs.str() + "/stderr.txt";
  std::set<std::string> pending;  // acknowledged, not yet seen after a restart
  uint64_t verified = 0;          // positions 1..verified were seen, in order
  std::string verified_hash;      // the chain hash at `verified`
  uint64_t acked_total = 0, startup_kills = 0, verifies = 0;

  // After a restart: the prefix is unchanged (same chain hash at `verified`), positions
  // continue gap-free, and every write acknowledged before the kill is there.
  auto check = [&](uint16_t port) {
    auto events = events_after(port, verified > 0 ? verified - 1 : 0);
    if (verified > 0) {
      REQUIRE_MESSAGE(!events.empty(), "position " << verified << " is gone");
      REQUIRE(events.front()["position"].get<uint64_t>() == verified);
      REQUIRE_MESSAGE(events.front()["hash"].get<std::string>() == verified_hash,
                      "the log before position " << verified << " changed");
      events.erase(events.begin());
    }
    for (const auto& e : events) {
      REQUIRE(e["position"].get<uint64_t>() == verified + 1);
      ++verified;
      verified_hash = e["hash"].get<std::string>();
      if (e["type"] == "UserCreated") pending.erase(e["data"]["name"].get<std::string>());
    }
    REQUIRE_MESSAGE(pending.empty(), pending.size() << " acknowledged writes missing, e.g. "
                                                  << (pending.empty() ? "" : *pending.begin()));
    pending.clear();
  };

  for (int round = 0; round < rounds; ++round) {
    CAPTURE(round);
    if (round % 10 == 9) {
      // Killed while starting: opening the store, replaying, bootstrapping.
      Child early = spawn_with(dir.str(), {kQuiet, err, false, -1});
      std::this_thread::sleep_for(
          std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 60)(rng)));
      ::kill(early.pid, SIGKILL);
      wait_exit(early.pid);
      ++startup_kills;
    }
    Child c = spawn_with(dir.str(), {kQuiet, err, true, -1});
    check(c.port);
    Writers w;
    w.start(c.port, "k" + std::to_string(round), 8, true);
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::uniform_int_distribution<int>(20, 400)(rng)));
    ::kill(c.pid, SIGKILL);
    w.join();
    CHECK(wait_exit(c.pid) == -SIGKILL);
    CHECK(w.unavailable == 0);
    pending.insert(w.acked.begin(), w.acked.end());
    acked_total += w.acked.size();
    if (round % verify_every == 0) {
      auto v = run("verify --data-dir=" + dir.str(), logs.str() + "/verify.txt");
      REQUIRE_MESSAGE(v.rc == 0, v.out);
      ++verifies;
    }
  }
  Child c = spawn_with(dir.str(), {kQuiet, err, true, -1});
  check(c.port);
  ::kill(c.pid, SIGTERM);
  CHECK(wait_exit(c.pid) == 0);
  auto v = run("verify --data-dir=" + dir.str(), logs.str() + "/verify.txt");
  CHECK_MESSAGE(v.rc == 0, v.out);
  MESSAGE("kill loop done: " << rounds << " SIGKILLs under 8 writers (+" << startup_kills
                             << " while starting), " << acked_total << " acknowledged writes, "
                             << verified << " events, all present, gap-free; verify ok "
                             << verifies + 1 << " times");
}

// The leader's side of relayed heartbeats (api/liveness_relay.h) and the peer signatures that
// carry them (api/forwarder.h), without servers.
#include "api/liveness_relay.h"

#include <doctest/doctest.h>

#include "api/forwarder.h"

using atrium::api::apply_relayed_beats;
using atrium::api::peer_sign;
using atrium::api::peer_verify;
using atrium::pipeline::AgentBeat;
using atrium::pipeline::Liveness;

TEST_CASE("12: relayed beats are dated by the leader's clock minus their age, newest wins") {
  Liveness live(0);
  const int64_t now = 1'000'000;
  auto n = apply_relayed_beats(
      R"({"beats":[{"agent_id":"a","age_ms":400,"cpu_load":0.3,"memory_load":0.4,"sessions":2,
                   "server_id":"s1","position":7},
                  {"agent_id":"b","age_ms":99999},
                  {"agent_id":"c","age_ms":-5}]})",
      live, now, 90'000);
  REQUIRE(n.ok());
  CHECK(*n == 1);  // b is past the grace, c is from the future: dropped
  CHECK(live.last_beat_ms("a") == now - 400);
  CHECK(live.agent("a")->cpu_load == 0.3);
  CHECK(live.agent("a")->heartbeat);
  CHECK(live.last_beat_ms("b") == 0);
  REQUIRE(live.load("s1"));
  CHECK(live.load("s1")->sessions == 2);
  CHECK(live.load("s1")->since_position == 7);
  // A beat the leader heard directly since is not overwritten by an older relayed one.
  live.agent_beat("a", AgentBeat{now + 50, 0.9, 0.9, 0, 0, "", true});
  CHECK(*apply_relayed_beats(R"({"beats":[{"agent_id":"a","age_ms":0}]})", live, now, 90'000) == 0);
  CHECK(live.agent("a")->cpu_load == 0.9);
  // Malformed batches are refused as a whole.
  for (const char* bad : {"", "[]", R"({"beats":{}})", R"({"beats":[{"age_ms":1}]})",
                          R"({"beats":[{"agent_id":"x","age_ms":"1"}]})"}) {
    CAPTURE(bad);
    auto r = apply_relayed_beats(bad, live, now, 90'000);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().reason == "invalid_body");
  }
}

TEST_CASE("12: a peer signature holds for its purpose, payload, secret and a minute only") {
  const std::string secret = "s3cret-of-the-cluster-0123456789abcdef";
  const int64_t t = 1'800'000'000;
  const std::string sig = peer_sign(secret, "liveness", "body", t);
  CHECK(peer_verify(secret, sig, "liveness", "body", t));
  CHECK(peer_verify(secret, sig, "liveness", "body", t + 60));
  CHECK_FALSE(peer_verify(secret, sig, "liveness", "body", t + 61));
  CHECK_FALSE(peer_verify(secret, sig, "liveness", "body", t - 61));
  CHECK_FALSE(peer_verify(secret, sig, "forward", "body", t));
  CHECK_FALSE(peer_verify(secret, sig, "liveness", "body2", t));
  CHECK_FALSE(peer_verify(secret + "x", sig, "liveness", "body", t));
  CHECK_FALSE(peer_verify("", peer_sign("", "liveness", "body", t), "liveness", "body", t));
  for (const char* bad : {"", ".", "abc", "1800000000.", ".deadbeef", "x1800000000.00",
                          "18000000000000000000000.00"}) {
    CAPTURE(bad);
    CHECK_FALSE(peer_verify(secret, bad, "liveness", "body", t));
  }
}

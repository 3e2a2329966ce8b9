// Attacks on the brokers of one shared log (issue 12): the client address a follower forwards
// with a login, and the heartbeats it relays, are trusted only when signed with the cluster
// secret; anyone else's copy of those headers is ignored. Real atriumd on a real PostgreSQL
// (tools/pg_test.sh); clients on other loopback addresses (127.0.0.2, ...) so that the
// address a throttle sees tells who it is.
#include <doctest/doctest.h>

#include <ctime>

#include "api/forwarder.h"
#include "support/pg_cluster.h"

using atrium::testing::ClusterBroker;
using atrium::testing::http_from;
using atrium::testing::HttpReply;
using atrium::testing::kClusterSecret;
using atrium::testing::PgCluster;
using atrium::testing::child::auth;
using nlohmann::json;

namespace {

const std::vector<std::string> kFlags = {"--login-failures-per-address=5",
                                         "--login-failures-per-user=1000"};

HttpReply wrong_login(const std::string& from, ClusterBroker& b, int i,
                      std::vector<std::pair<std::string, std::string>> h = {}) {
  h.emplace_back("X-Request-Id", "attack-" + from + "-" + std::to_string(i));
  return http_from(from, b.c.port, "POST", "/v1/auth/login",
                   json{{"name", "nobody-" + std::to_string(i)}, {"password", "wrong"}}.dump(), h,
                   10000);
}

std::string reason(const HttpReply& r) {
  auto j = r.json();
  return j.is_object() ? j.value("reason", "") : "";
}

}  // namespace

// ---- 12.1: the follower's address takes the blame for forwarded logins -----------------------
TEST_CASE("12.1: wrong passwords through a follower are throttled by the client's own address") {
  PgCluster cl(2, kFlags);
  if (cl.pg == nullptr) return;
  const int leader = cl.leader();
  REQUIRE(leader >= 0);
  ClusterBroker& l = cl[leader];
  ClusterBroker& f = cl[1 - leader];
  // 127.0.0.2: three wrong passwords through the follower, two at the leader: five in all,
  // one throttle, so the sixth is refused wherever it arrives.
  for (int i = 0; i < 3; ++i) CHECK(wrong_login("127.0.0.2", f, i).status == 401);
  for (int i = 3; i < 5; ++i) CHECK(wrong_login("127.0.0.2", l, i).status == 401);
  auto at_leader = wrong_login("127.0.0.2", l, 5);
  CHECK(at_leader.status == 429);
  CHECK(reason(at_leader) == "login_throttled");
  auto at_follower = wrong_login("127.0.0.2", f, 6);
  CHECK(at_follower.status == 429);
  CHECK(reason(at_follower) == "login_throttled");
  // The follower's own address (127.0.0.1, from which it forwards) was not blamed: another
  // client there is not throttled.
  CHECK(wrong_login("127.0.0.1", l, 7).status == 401);
  CHECK(wrong_login("127.0.0.1", f, 8).status == 401);
}

// ---- 12.2: a forged client address ------------------------------------------------------------
TEST_CASE("12.2: a client address header not signed by a cluster peer is ignored") {
  PgCluster cl(2, kFlags);
  if (cl.pg == nullptr) return;
  const int leader = cl.leader();
  REQUIRE(leader >= 0);
  ClusterBroker& l = cl[leader];
  ClusterBroker& f = cl[1 - leader];
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  using atrium::api::forward_payload;
  using atrium::api::peer_sign;
  // 127.0.0.3 claims another address each time: unsigned, signed with another secret, signed
  // for another request, signed too long ago. Each failure still counts against 127.0.0.3.
  const std::string wrong_secret = "another-cluster-secret-0123456789abcdef";
  std::vector<std::string> forged = {
      "",
      peer_sign(wrong_secret, "forward",
                forward_payload("10.0.0.1", "attack-127.0.0.3-1", "POST", "/v1/auth/login"), now),
      peer_sign(kClusterSecret, "forward",
                forward_payload("10.0.0.2", "attack-127.0.0.3-2", "POST", "/v1/users"), now),
      peer_sign(kClusterSecret, "forward",
                forward_payload("10.0.0.3", "attack-127.0.0.3-3", "POST", "/v1/auth/login"),
                now - 600),
      "garbage"};
  for (int i = 0; i < 5; ++i) {
    std::vector<std::pair<std::string, std::string>> h = {
        {"X-Atrium-Client-Address", "10.0.0." + std::to_string(i)}};
    if (!forged[static_cast<size_t>(i)].empty()) {
      h.emplace_back("X-Atrium-Peer-Auth", forged[static_cast<size_t>(i)]);
    }
    CHECK(wrong_login("127.0.0.3", l, i, h).status == 401);
  }
  CHECK(reason(wrong_login("127.0.0.3", l, 5)) == "login_throttled");
  // Through the follower, a client's own copy of the header is dropped there: the follower
  // signs the address it saw.
  for (int i = 0; i < 5; ++i) {
    CHECK(wrong_login("127.0.0.4", f, i, {{"X-Atrium-Client-Address", "10.0.1.1"}}).status == 401);
  }
  CHECK(reason(wrong_login("127.0.0.4", l, 5)) == "login_throttled");
  // Relayed heartbeats need the secret too.
  const std::string batch = R"({"beats":[{"agent_id":"x","age_ms":0}]})";
  auto unsigned_relay = http_from("127.0.0.5", l.c.port, "POST", "/v1/cluster/liveness", batch);
  CHECK(unsigned_relay.status == 401);
  CHECK(reason(unsigned_relay) == "peer_unauthenticated");
  auto forged_relay =
      http_from("127.0.0.5", l.c.port, "POST", "/v1/cluster/liveness", batch,
                {{"X-Atrium-Peer-Auth", peer_sign(wrong_secret, "liveness", batch, now)}});
  CHECK(forged_relay.status == 401);
  auto signed_relay =
      http_from("127.0.0.5", l.c.port, "POST", "/v1/cluster/liveness", batch,
                {{"X-Atrium-Peer-Auth", peer_sign(kClusterSecret, "liveness", batch, now)}});
  CHECK(signed_relay.status == 200);
  // And with the payload changed after signing.
  auto moved =
      http_from("127.0.0.5", l.c.port, "POST", "/v1/cluster/liveness",
                R"({"beats":[{"agent_id":"y","age_ms":0}]})",
                {{"X-Atrium-Peer-Auth", peer_sign(kClusterSecret, "liveness", batch, now)}});
  CHECK(moved.status == 401);
}

// GET /v1/cluster (admin): the brokers sharing this log, its leader and term, and how far
// each broker's views are behind the log's head. POST /v1/cluster/liveness: the leader takes
// the agent heartbeats a follower relays (api/liveness_relay.h), signed with the cluster
// secret.
#include <ctime>

#include "api/api.h"
#include "api/forwarder.h"
#include "api/leadership.h"
#include "api/liveness_relay.h"

namespace atrium::api {

void register_cluster_routes(Api& api, eventstore::SharedLog* log,
                             std::function<const Leadership*()> leadership) {
  api.router().add("GET", "/v1/cluster", Access::Admin(), [&api, log, leadership](HttpRequest&) {
    const uint64_t applied = api.views().position();
    if (log == nullptr) {
      // The embedded store: one broker, always the leader.
      const uint64_t head = api.store().last_position();
      return HttpResponse::json(
          200, Json{{"store", "rocksdb"},
                    {"term", 0},
                    {"position", head},
                    {"leader", nullptr},
                    {"members", Json::array({Json{{"member_id", "local"},
                                                  {"url", nullptr},
                                                  {"role", "leader"},
                                                  {"term", 0},
                                                  {"applied", applied},
                                                  {"lag", head - std::min(head, applied)},
                                                  {"seen_ms_ago", 0},
                                                  {"self", true}}})}});
    }
    auto head = log->head();
    if (!head.ok()) return problem(head.error());
    auto members = log->members();
    if (!members.ok()) return problem(members.error());
    const Leadership* l = leadership();
    const std::string self = l != nullptr ? l->options().member_id : "";
    Json list = Json::array();
    for (const auto& m : *members) {
      const bool is_self = m.report.member_id == self;
      const uint64_t a = is_self ? applied : m.report.applied;
      list.push_back(Json{{"member_id", m.report.member_id},
                          {"url", m.report.url},
                          {"role", m.report.member_id == head->leader_id ? "leader" : "follower"},
                          {"term", m.report.term},
                          {"applied", a},
                          {"lag", head->position - std::min(head->position, a)},
                          {"seen_ms_ago", is_self ? 0 : m.seen_ms_ago},
                          {"self", is_self}});
    }
    Json leader = nullptr;
    if (!head->leader_id.empty() && head->lease_remaining_ms > 0) {
      leader = Json{{"member_id", head->leader_id},
                    {"url", head->leader_url},
                    {"lease_remaining_ms", head->lease_remaining_ms}};
    }
    return HttpResponse::json(200, Json{{"store", "postgresql"},
                                        {"term", head->term},
                                        {"position", head->position},
                                        {"leader", leader},
                                        {"members", list}});
  });

  // Peers only: not access-logged one line each (a batch a second per follower), handled
  // where it arrives (never forwarded: a follower that gets it is not the one to keep it).
  Access peer = Access::Public();
  peer.agent = true;
  peer.local = true;
  api.router().add("POST", "/v1/cluster/liveness", peer, [&api, log](HttpRequest& req) {
    if (log == nullptr) {
      return problem(Error::make(Code::not_found, "this broker has the embedded store: no cluster",
                                 "no_cluster"));
    }
    auto sig = req.header(kPeerAuthHeader);
    if (!sig || !peer_verify(api.config().cluster_secret, *sig, "liveness", req.body,
                             static_cast<int64_t>(std::time(nullptr)))) {
      return problem(Error::make(Code::unauthenticated,
                                 "only a broker of this cluster (same --cluster-secret) may relay "
                                 "heartbeats",
                                 "peer_unauthenticated"));
    }
    if (!api.pipeline().leading()) {
      return problem(
          Error::make(Code::unavailable, "this broker does not lead the shared log", "not_leader"));
    }
    const int64_t max_age =
        api.config().agent_heartbeat_ms * std::max<int64_t>(1, api.config().agent_grace_factor);
    auto n = apply_relayed_beats(req.body, api.liveness(), api.now_ms(), max_age);
    if (!n.ok()) return problem(n.error());
    return HttpResponse::json(200, Json{{"applied", *n}});
  });
}

}  // namespace atrium::api

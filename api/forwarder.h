// Forwards a write that reached a follower of a shared log to the leader (its advertised
// URL in the head row), with the caller's Authorization, request id, Idempotency-Key and
// body, and relays the answer. libcurl, one handle per calling thread (keep-alive to the
// leader).
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include "api/http_types.h"

namespace atrium::api {

inline constexpr const char* kForwardedHeader = "x-atrium-forwarded";
// The caller's address as the follower saw it, and the signature that makes the leader trust
// it: "<unix seconds>.<hex HMAC-SHA-256>" under the cluster secret (--cluster-secret) of
// "<purpose>\n<seconds>\n<payload>". Without a valid signature both are ignored.
inline constexpr const char* kClientAddressHeader = "x-atrium-client-address";
inline constexpr const char* kPeerAuthHeader = "x-atrium-peer-auth";
// How far a signature's time may be from the verifier's clock (brokers keep NTP time).
inline constexpr int64_t kPeerAuthSkewS = 60;

std::string peer_sign(const std::string& secret, const std::string& purpose,
                      const std::string& payload, int64_t now_s);
bool peer_verify(const std::string& secret, const std::string& header, const std::string& purpose,
                 const std::string& payload, int64_t now_s);
// What a forwarded request's signature covers: the client address, the request id, the
// method and the path (so that it cannot be moved to another request).
std::string forward_payload(const std::string& client_address, const std::string& request_id,
                            const std::string& method, const std::string& path);

// The leader's URL and whether that is this broker; nullopt when no leader is known.
using LeaderLookup = std::function<std::optional<std::string>()>;

// Sends `req` to `base_url` + its path and query; nullopt when the leader could not be
// reached or answered nothing (the caller answers 503 not_leader).
// With a cluster secret, the caller's address (req.remote_address) goes along, signed.
std::optional<HttpResponse> forward_request(const std::string& base_url, const HttpRequest& req,
                                            std::chrono::milliseconds timeout,
                                            const std::string& cluster_secret = "");

// A broker-to-broker POST of `body` (JSON) to `base_url` + `path`, signed for `purpose`.
std::optional<HttpResponse> post_to_peer(const std::string& base_url, const std::string& path,
                                         const std::string& body, const std::string& purpose,
                                         const std::string& cluster_secret,
                                         std::chrono::milliseconds timeout);

// curl_global_init, once (before any thread forwards).
void forwarder_init();

}  // namespace atrium::api

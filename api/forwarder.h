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

// The leader's URL and whether that is this broker; nullopt when no leader is known.
using LeaderLookup = std::function<std::optional<std::string>()>;

// Sends `req` to `base_url` + its path and query; nullopt when the leader could not be
// reached or answered nothing (the caller answers 503 not_leader).
std::optional<HttpResponse> forward_request(const std::string& base_url, const HttpRequest& req,
                                            std::chrono::milliseconds timeout);

// curl_global_init, once (before any thread forwards).
void forwarder_init();

}  // namespace atrium::api

// The Pistache transport: accepts connections, frames requests itself (api/http_framing.h)
// before Pistache's parser sees them, turns Pistache requests into HttpRequest, calls
// Api::handle on the worker thread, and writes the answer from that same thread (PITFALLS.md:
// replying from another thread corrupts Pistache's write queue).
//
// Connections (RFC 9112 section 9): HTTP/1.1 connections persist unless the client sends
// `Connection: close` (HTTP/1.0 ones only with `Connection: keep-alive`) or the broker drains;
// a connection answered with `Connection: close` is shut down as soon as the answer is
// written. Idle persistent connections close after ApiConfig::keepalive_timeout. Open
// connections are capped per address and in total (api/connection_table.h).
#pragma once

#include <memory>

#include "api/api.h"

namespace Pistache::Tcp {
class Listener;
}

namespace atrium::api {

struct TransportShared;

class HttpServer {
 public:
  explicit HttpServer(Api& api);
  ~HttpServer();

  // Binds and starts serving on worker threads. unavailable when the address is in use.
  Status start();
  uint16_t port() const;

  // The connection caps in force (known after start): the total is
  // ApiConfig::max_connections, lowered to what RLIMIT_NOFILE leaves after a reserve.
  size_t max_connections() const;
  size_t max_connections_per_ip() const;
  // Connections open now.
  size_t open_connections() const;

  // Stops accepting and closes connections. Call after Api::begin_drain + wait_idle.
  void shutdown();

 private:
  Api& api_;
  std::shared_ptr<TransportShared> shared_;
  std::unique_ptr<Pistache::Tcp::Listener> listener_;
  bool running_ = false;
};

}  // namespace atrium::api

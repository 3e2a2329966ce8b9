// The Pistache transport: accepts connections, turns Pistache requests into HttpRequest,
// calls Api::handle on the worker thread, and writes the answer from that same thread
// (PITFALLS.md: replying from another thread corrupts Pistache's write queue).
#pragma once

#include <memory>

#include "api/api.h"

namespace Pistache::Http {
class Endpoint;
}

namespace atrium::api {

class HttpServer {
 public:
  explicit HttpServer(Api& api);
  ~HttpServer();

  // Binds and starts serving on worker threads. unavailable when the address is in use.
  Status start();
  uint16_t port() const;

  // Stops accepting and closes connections. Call after Api::begin_drain + wait_idle.
  void shutdown();

 private:
  Api& api_;
  std::unique_ptr<Pistache::Http::Endpoint> endpoint_;
  bool running_ = false;
};

}  // namespace atrium::api

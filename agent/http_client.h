// A small HTTP client over libcurl (Debian's libcurl4-openssl-dev): JSON POSTs to a broker with
// a bearer credential, connection reuse (keep-alive), connect and request timeouts, TLS
// verification (the system's CAs, or --ca-file). Not thread-safe: one per thread.
#pragma once

#include <cstdint>
#include <string>

namespace atrium::agent {

struct HttpResult {
  // The broker did not answer (connection refused, timeout, DNS, reset): try another one.
  bool down = false;
  std::string error;  // curl's message when down
  long status = 0;
  std::string body;
  int64_t retry_after_ms = 0;  // from Retry-After (seconds), 0 when absent
};

class HttpClient {
 public:
  HttpClient(int64_t timeout_ms, std::string ca_file);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  HttpResult post(const std::string& url, const std::string& json_body, const std::string& bearer);

 private:
  void* curl_;  // CURL*
  int64_t timeout_ms_;
  std::string ca_file_;
};

// curl_global_init once per process (before threads).
void http_global_init();

}  // namespace atrium::agent

#include "agent/http_client.h"

#include <curl/curl.h>
#include <strings.h>

#include <cstdlib>

namespace atrium::agent {

namespace {

size_t on_body(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

size_t on_header(char* data, size_t size, size_t n, void* user) {
  size_t len = size * n;
  std::string line(data, len);
  if (line.size() > 12 && strncasecmp(line.c_str(), "retry-after:", 12) == 0) {
    long s = std::strtol(line.c_str() + 12, nullptr, 10);
    if (s > 0) *static_cast<int64_t*>(user) = static_cast<int64_t>(s) * 1000;
  }
  return len;
}

}  // namespace

void http_global_init() {
  curl_global_init(CURL_GLOBAL_DEFAULT);
}

HttpClient::HttpClient(int64_t timeout_ms, std::string ca_file)
    : curl_(curl_easy_init()), timeout_ms_(timeout_ms), ca_file_(std::move(ca_file)) {}

HttpClient::~HttpClient() {
  curl_easy_cleanup(static_cast<CURL*>(curl_));
}

HttpResult HttpClient::post(const std::string& url, const std::string& json_body,
                            const std::string& bearer) {
  HttpResult r;
  CURL* c = static_cast<CURL*>(curl_);
  if (c == nullptr) {
    r.down = true;
    r.error = "curl_easy_init failed";
    return r;
  }
  curl_easy_reset(c);  // keeps the connection cache: the next request reuses the connection
  struct curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Content-Type: application/json");
  std::string auth = "Authorization: Bearer " + bearer;
  if (!bearer.empty()) headers = curl_slist_append(headers, auth.c_str());
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, json_body.c_str());
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(json_body.size()));
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(std::min<int64_t>(timeout_ms_, 3000)));
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms_));
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "atrium-agent/1");
  if (!ca_file_.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, ca_file_.c_str());
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.retry_after_ms);
  CURLcode rc = curl_easy_perform(c);
  curl_slist_free_all(headers);
  if (rc != CURLE_OK) {
    r.down = true;
    r.error = curl_easy_strerror(rc);
    return r;
  }
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  // A broker that answers 5xx (draining, starting, store failing) counts as down for now.
  if (r.status >= 500) {
    r.down = true;
    r.error = "HTTP " + std::to_string(r.status);
  }
  return r;
}

}  // namespace atrium::agent

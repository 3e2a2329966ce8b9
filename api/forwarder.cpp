#include "api/forwarder.h"

#include <curl/curl.h>

#include <cctype>
#include <charconv>
#include <ctime>
#include <mutex>

#include "api/crypto.h"

namespace atrium::api {
namespace {

struct Handle {
  CURL* h = curl_easy_init();
  ~Handle() {
    if (h != nullptr) curl_easy_cleanup(h);
  }
};

size_t on_body(char* p, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(p, size * n);
  return size * n;
}

struct Reply {
  HttpResponse r;
};

size_t on_header(char* p, size_t size, size_t n, void* out) {
  auto& resp = static_cast<Reply*>(out)->r;
  std::string line(p, size * n);
  auto colon = line.find(':');
  if (colon == std::string::npos) return size * n;
  std::string name = line.substr(0, colon);
  std::string value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.erase(0, 1);
  while (!value.empty() && (value.back() == '\r' || value.back() == '\n')) value.pop_back();
  std::string lower;
  for (char c : name) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "content-type") {
    resp.content_type = value;
  } else if (lower == "etag" || lower == "x-atrium-position" || lower == "idempotent-replayed" ||
             lower == "retry-after" || lower == "location" || lower == "www-authenticate" ||
             lower == "cache-control" || lower == "allow" || lower == "x-atrium-as-of") {
    resp.with_header(name, value);
  }
  return size * n;
}

std::string escape(CURL* h, const std::string& s) {
  char* e = curl_easy_escape(h, s.data(), static_cast<int>(s.size()));
  std::string out = e != nullptr ? e : "";
  curl_free(e);
  return out;
}

std::optional<HttpResponse> perform(CURL* h, const std::string& url, const std::string& method,
                                    const std::string& body, bool send_body, curl_slist* headers,
                                    std::chrono::milliseconds timeout) {
  Reply reply;
  reply.r.content_type.clear();
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (send_body) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &reply.r.body);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &reply);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
  CURLcode rc = curl_easy_perform(h);
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(headers);
  if (rc != CURLE_OK || status == 0) return std::nullopt;
  reply.r.status = static_cast<int>(status);
  return reply.r;
}

}  // namespace

std::string peer_sign(const std::string& secret, const std::string& purpose,
                      const std::string& payload, int64_t now_s) {
  const std::string ts = std::to_string(now_s);
  return ts + "." + hmac_sha256_hex(secret, purpose + "\n" + ts + "\n" + payload);
}

bool peer_verify(const std::string& secret, const std::string& header, const std::string& purpose,
                 const std::string& payload, int64_t now_s) {
  if (secret.empty()) return false;
  const auto dot = header.find('.');
  if (dot == std::string::npos || dot == 0 || dot > 20) return false;
  int64_t ts = 0;
  auto [p, ec] = std::from_chars(header.data(), header.data() + dot, ts);
  if (ec != std::errc() || p != header.data() + dot) return false;
  if (ts < now_s - kPeerAuthSkewS || ts > now_s + kPeerAuthSkewS) return false;
  const std::string want =
      hmac_sha256_hex(secret, purpose + "\n" + header.substr(0, dot) + "\n" + payload);
  return equal_secrets(header.substr(dot + 1), want);
}

std::string forward_payload(const std::string& client_address, const std::string& request_id,
                            const std::string& method, const std::string& path) {
  return client_address + "\n" + request_id + "\n" + method + " " + path;
}

void forwarder_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::optional<HttpResponse> forward_request(const std::string& base_url, const HttpRequest& req,
                                            std::chrono::milliseconds timeout,
                                            const std::string& cluster_secret) {
  thread_local Handle handle;
  CURL* h = handle.h;
  if (h == nullptr) return std::nullopt;
  curl_easy_reset(h);
  std::string url = base_url;
  while (!url.empty() && url.back() == '/') url.pop_back();
  url += req.path;
  char sep = '?';
  for (const auto& [k, v] : req.query) {
    url += sep + escape(h, k) + "=" + escape(h, v);
    sep = '&';
  }
  curl_slist* headers = nullptr;
  auto add = [&](const std::string& line) { headers = curl_slist_append(headers, line.c_str()); };
  for (const char* name : {"authorization", "idempotency-key", "content-type", "if-match"}) {
    if (auto v = req.header(name)) add(std::string(name) + ": " + *v);
  }
  add("x-request-id: " + req.request_id);
  add(std::string(kForwardedHeader) + ": 1");
  if (!cluster_secret.empty() && !req.remote_address.empty()) {
    add(std::string(kClientAddressHeader) + ": " + req.remote_address);
    add(std::string(kPeerAuthHeader) + ": " +
        peer_sign(cluster_secret, "forward",
                  forward_payload(req.remote_address, req.request_id, req.method, req.path),
                  static_cast<int64_t>(std::time(nullptr))));
  }
  add("Expect:");  // no 100-continue round trip
  const bool send_body =
      !req.body.empty() || req.method == "POST" || req.method == "PUT" || req.method == "PATCH";
  return perform(h, url, req.method, req.body, send_body, headers, timeout);
}

std::optional<HttpResponse> post_to_peer(const std::string& base_url, const std::string& path,
                                         const std::string& body, const std::string& purpose,
                                         const std::string& cluster_secret,
                                         std::chrono::milliseconds timeout) {
  thread_local Handle handle;
  CURL* h = handle.h;
  if (h == nullptr) return std::nullopt;
  curl_easy_reset(h);
  std::string url = base_url;
  while (!url.empty() && url.back() == '/') url.pop_back();
  url += path;
  curl_slist* headers = nullptr;
  auto add = [&](const std::string& line) { headers = curl_slist_append(headers, line.c_str()); };
  add("content-type: application/json");
  add(std::string(kForwardedHeader) + ": 1");
  add(std::string(kPeerAuthHeader) + ": " +
      peer_sign(cluster_secret, purpose, body, static_cast<int64_t>(std::time(nullptr))));
  add("Expect:");
  return perform(h, url, "POST", body, true, headers, timeout);
}

}  // namespace atrium::api

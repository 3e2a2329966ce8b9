#include "api/forwarder.h"

#include <curl/curl.h>

#include <cctype>
#include <mutex>

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
             lower == "retry-after" || lower == "location" || lower == "www-authenticate") {
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

}  // namespace

void forwarder_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::optional<HttpResponse> forward_request(const std::string& base_url, const HttpRequest& req,
                                            std::chrono::milliseconds timeout) {
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
  add("Expect:");  // no 100-continue round trip
  Reply reply;
  reply.r.content_type.clear();
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  if (!req.body.empty() || req.method == "POST" || req.method == "PUT" || req.method == "PATCH") {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, req.body.data());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, static_cast<long>(req.body.size()));
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

}  // namespace atrium::api

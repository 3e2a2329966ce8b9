#include "api/http_types.h"

#include <algorithm>

namespace atrium::api {

HttpResponse HttpResponse::json(int status, const Json& body) {
  HttpResponse r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, Json::error_handler_t::replace);
  return r;
}

int http_status(Code c) {
  switch (c) {
    case Code::ok: return 200;
    case Code::invalid_argument: return 400;
    case Code::unauthenticated: return 401;
    case Code::permission_denied: return 403;
    case Code::not_found: return 404;
    case Code::already_exists: return 409;
    case Code::failed_precondition: return 409;
    case Code::conflict: return 409;
    case Code::version_mismatch: return 412;
    case Code::too_large: return 413;
    case Code::unprocessable: return 422;
    case Code::too_many_requests: return 429;
    case Code::unavailable: return 503;
    case Code::internal: return 500;
  }
  return 500;
}

static const char* title_of(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
  }
}

HttpResponse problem(const Error& e, const std::string& instance) {
  int status = http_status(e.code);
  std::string reason = e.reason.empty() ? code_name(e.code) : e.reason;
  Json j{{"type", "https://atrium.dev/problems/" + reason},
         {"title", title_of(status)},
         {"status", status},
         {"detail", e.message},
         {"code", code_name(e.code)},
         {"reason", reason}};
  if (!instance.empty()) j["instance"] = instance;
  if (!e.fields.empty()) {
    Json errs = Json::array();
    for (const auto& f : e.fields) errs.push_back({{"field", f.field}, {"message", f.message}});
    j["errors"] = errs;
  }
  HttpResponse r = HttpResponse::json(status, j);
  r.content_type = "application/problem+json";
  if (status == 503) r.with_header("Retry-After", "1");
  if (status == 429) r.with_header("Retry-After", "10");  // e.g. too_many_state_changes
  if (status == 401) r.with_header("WWW-Authenticate", "Bearer realm=\"atrium\"");
  return r;
}

HttpResponse problem(Code c, const std::string& detail, const std::string& reason) {
  return problem(Error::make(c, detail, reason));
}

HttpResponse too_many_requests(const std::string& detail, const std::string& reason,
                               int64_t retry_after_ms) {
  int64_t secs = std::max<int64_t>(1, (retry_after_ms + 999) / 1000);
  Json j{{"type", "https://atrium.dev/problems/" + reason},
         {"title", title_of(429)},
         {"status", 429},
         {"detail", detail},
         {"code", "rate_limited"},
         {"reason", reason}};
  HttpResponse r = HttpResponse::json(429, j);
  r.content_type = "application/problem+json";
  r.with_header("Retry-After", std::to_string(secs));
  return r;
}

}  // namespace atrium::api

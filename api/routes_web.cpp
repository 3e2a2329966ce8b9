// The web portal (/) and the admin console (/admin): static files of web/public, embedded at
// build time (api/web_assets.h) or read from --web-dir while developing. The pages call only
// the documented API with a bearer token they hold in memory (README, "Web portal").
#include <fstream>
#include <map>
#include <sstream>

#include "api/api.h"
#include "api/crypto.h"
#include "api/web_assets.h"

namespace atrium::api {

namespace {

// No inline script or style, no eval, nothing from elsewhere: the pages load their own
// modules and stylesheet and talk to this origin only.
constexpr const char* kCsp =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'";

// vendor-<module>-<version>-<hash>.js (web/tools/vendor.mjs): the name changes with the
// content, so browsers may keep it for a year.
bool immutable(std::string_view name) {
  return name.rfind("vendor-", 0) == 0;
}

struct File {
  std::string body;
  std::string etag;
};

std::optional<File> read_file(const std::string& web_dir, const std::string& name) {
  if (web_dir.empty()) {
    static const std::map<std::string_view, const WebAsset*> index = [] {
      std::map<std::string_view, const WebAsset*> m;
      for (const auto& a : embedded_web_assets()) m[a.name] = &a;
      return m;
    }();
    auto it = index.find(name);
    if (it == index.end()) return std::nullopt;
    return File{std::string(it->second->data), std::string(it->second->sha256.substr(0, 20))};
  }
  std::ifstream in(web_dir + "/" + name, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  File f{ss.str(), ""};
  f.etag = sha256_hex(f.body).substr(0, 20);
  return f;
}

HttpResponse serve(const Api& api, const HttpRequest& req, const std::string& name) {
  auto mime = valid_web_name(name) ? web_mime_type(name) : std::nullopt;
  auto file = mime ? read_file(api.config().web_dir, name) : std::nullopt;
  if (!file) return problem(not_found("no file " + name.substr(0, 64) + " in the web portal"));
  HttpResponse r;
  std::string etag = "\"" + file->etag + "\"";
  auto inm = req.header("if-none-match");
  if (inm && (inm->find(etag) != std::string::npos || *inm == "*")) {
    r.status = 304;
    r.content_type.clear();
  } else {
    r.body = std::move(file->body);
    r.content_type = *mime;
  }
  r.with_header("ETag", etag);
  r.with_header("Cache-Control",
                immutable(name) ? "public, max-age=31536000, immutable" : "no-cache");
  r.with_header("Content-Security-Policy", kCsp);
  r.with_header("X-Content-Type-Options", "nosniff");
  r.with_header("Referrer-Policy", "no-referrer");
  r.with_header("Cross-Origin-Opener-Policy", "same-origin");
  r.with_header("X-Frame-Options", "DENY");
  return r;
}

}  // namespace

std::optional<std::string> web_mime_type(std::string_view name) {
  static const std::map<std::string_view, const char*> kTypes{
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".ico", "image/x-icon"},
      {".txt", "text/plain; charset=utf-8"},
      {".woff2", "font/woff2"},
  };
  auto dot = name.rfind('.');
  if (dot == std::string_view::npos) return std::nullopt;
  auto it = kTypes.find(name.substr(dot));
  if (it == kTypes.end()) return std::nullopt;
  return std::string(it->second);
}

bool valid_web_name(std::string_view name) {
  if (name.empty() || name.size() > 128 || name.front() == '.') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return web_mime_type(name).has_value();
}

void register_web_routes(Api& api) {
  Router& r = api.router();
  // Both pages are the same document: it starts the portal or the console by its path, so a
  // signed-in tab moves between them without a reload (the token lives in the tab's memory).
  for (const char* page : {"/", "/admin"}) {
    r.add("GET", page, Access::Public(),
          [&api](HttpRequest& req) { return serve(api, req, "index.html"); });
  }
  r.add("GET", "/web/{file}", Access::Public(),
        [&api](HttpRequest& req) { return serve(api, req, req.param("file")); });
}

}  // namespace atrium::api

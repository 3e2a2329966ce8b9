// The web portal's files over real HTTP: the embedded copy (tools/embed_web.cmake) and
// --web-dir, with their content types, cache validators and security headers.
#include <doctest/doctest.h>

#include <fstream>

#include "api/crypto.h"
#include "api/daemon.h"
#include "api/web_assets.h"
#include "support/test_support.h"

using atrium::testing::http;
using atrium::testing::TempDir;
using atrium::testing::TestBroker;

namespace {

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void check_security_headers(const atrium::testing::HttpReply& r) {
  std::string csp = r.header("content-security-policy");
  CHECK(csp.find("default-src 'none'") != std::string::npos);
  CHECK(csp.find("script-src 'self';") != std::string::npos);
  CHECK(csp.find("style-src 'self';") != std::string::npos);
  CHECK(csp.find("frame-ancestors 'none'") != std::string::npos);
  CHECK(csp.find("unsafe") == std::string::npos);
  CHECK(r.header("x-content-type-options") == "nosniff");
  CHECK(r.header("x-frame-options") == "DENY");
  CHECK(r.header("referrer-policy") == "no-referrer");
}

}  // namespace

TEST_CASE("13: the embedded web files are web/public as built, each with its hash") {
  const std::string dir = std::string(ATRIUM_SOURCE_DIR) + "/web/public";
  const auto& assets = atrium::api::embedded_web_assets();
  REQUIRE(assets.size() >= 10);
  bool index = false;
  for (const auto& a : assets) {
    INFO(a.name);
    CHECK(atrium::api::valid_web_name(std::string(a.name)));
    CHECK(std::string(a.data) == read(dir + "/" + std::string(a.name)));
    CHECK(std::string(a.sha256) == atrium::api::sha256_hex(a.data));
    index = index || a.name == "index.html";
  }
  CHECK(index);
}

TEST_CASE("13: / and /admin serve the page; every file has its type, an ETag and the CSP") {
  TestBroker b;
  for (const char* page : {"/", "/admin"}) {
    auto r = http(b.port(), "GET", page);
    INFO(page);
    REQUIRE(r.status == 200);
    CHECK(r.header("content-type") == "text/html; charset=utf-8");
    CHECK(r.header("cache-control") == "no-cache");
    CHECK(r.body.find("<script type=\"module\" src=\"/web/main.js\"></script>") !=
          std::string::npos);
    check_security_headers(r);
    // A matching If-None-Match is 304 with no body; a stale one gets the page again.
    std::string etag = r.header("etag");
    REQUIRE(etag.size() == 22);
    auto same = http(b.port(), "GET", page, "", {{"If-None-Match", etag}});
    CHECK(same.status == 304);
    CHECK(same.body.empty());
    CHECK(same.header("etag") == etag);
    CHECK(http(b.port(), "GET", page, "", {{"If-None-Match", "\"0123\""}}).status == 200);
  }
  const std::map<std::string, std::string> types{{".js", "text/javascript; charset=utf-8"},
                                                 {".css", "text/css; charset=utf-8"},
                                                 {".json", "application/json"},
                                                 {".svg", "image/svg+xml"},
                                                 {".html", "text/html; charset=utf-8"}};
  for (const auto& a : atrium::api::embedded_web_assets()) {
    std::string name(a.name);
    INFO(name);
    auto r = http(b.port(), "GET", "/web/" + name);
    REQUIRE(r.status == 200);
    CHECK(r.body == std::string(a.data));
    CHECK(r.header("content-type") == types.at(name.substr(name.rfind('.'))));
    CHECK(r.header("etag") == "\"" + std::string(a.sha256.substr(0, 20)) + "\"");
    check_security_headers(r);
    // Vendored Lit is named by its content: a year, immutable; the rest revalidates.
    CHECK(r.header("cache-control") ==
          (name.rfind("vendor-", 0) == 0 ? "public, max-age=31536000, immutable" : "no-cache"));
  }
}

TEST_CASE("13: the web files need no token, and the API behind them still does") {
  TestBroker b;
  CHECK(http(b.port(), "GET", "/web/main.js").status == 200);
  CHECK(http(b.port(), "GET", "/v1/users").status == 401);
}

TEST_CASE("13: names outside the web directory or of other types are 404, never a file") {
  TestBroker b;
  for (const char* path : {"/web/..%2Fopenapi.yaml", "/web/..%2F..%2Fetc%2Fpasswd",
                           "/web/.gitignore", "/web/%2Fetc%2Fpasswd", "/web/package.json.bak",
                           "/web/index", "/web/nope.js", "/web/main.js%00.png", "/web/a%5Cb.js"}) {
    INFO(path);
    auto r = http(b.port(), "GET", path);
    CHECK(r.status == 404);
    CHECK(r.header("content-type") == "application/problem+json");
    CHECK(r.json().value("reason", "") == "not_found");
  }
  // More segments than the route has: no route at all.
  CHECK(http(b.port(), "GET", "/web/x/../main.js").status == 404);
  CHECK(http(b.port(), "GET", "/web/main.js?v=2").status == 400);  // unknown query parameter
  CHECK(http(b.port(), "POST", "/web/main.js").status == 405);
}

TEST_CASE("13: --web-dir serves a directory as it is now, with the same headers") {
  TempDir dir;
  std::ofstream(dir.str() + "/index.html") << "<!doctype html><title>dev</title>";
  std::ofstream(dir.str() + "/app.js") << "export const v = 1;\n";
  TestBroker b([&](atrium::api::DaemonConfig& c) { c.api.web_dir = dir.str(); });
  auto page = http(b.port(), "GET", "/admin");
  CHECK(page.status == 200);
  CHECK(page.body == "<!doctype html><title>dev</title>");
  check_security_headers(page);
  auto js = http(b.port(), "GET", "/web/app.js");
  CHECK(js.body == "export const v = 1;\n");
  CHECK(js.header("content-type") == "text/javascript; charset=utf-8");
  std::string etag = js.header("etag");
  CHECK(http(b.port(), "GET", "/web/app.js", "", {{"If-None-Match", etag}}).status == 304);
  // An edit shows at once, with a new ETag.
  std::ofstream(dir.str() + "/app.js") << "export const v = 2;\n";
  auto edited = http(b.port(), "GET", "/web/app.js", "", {{"If-None-Match", etag}});
  CHECK(edited.status == 200);
  CHECK(edited.body == "export const v = 2;\n");
  CHECK(edited.header("etag") != etag);
  CHECK(http(b.port(), "GET", "/web/main.js").status == 404);  // not in that directory
}

// The web portal and admin console (web/public/), embedded into atriumd at build time
// (tools/embed_web.cmake generates the table), and the routes that serve them
// (api/routes_web.cpp).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace atrium::api {

struct WebAsset {
  std::string_view name;    // file name in web/public, e.g. "index.html"
  std::string_view data;    // the bytes
  std::string_view sha256;  // hex SHA-256 of the bytes, computed at build time
};

// Every file of web/public as it was when atriumd was built.
const std::vector<WebAsset>& embedded_web_assets();

// The Content-Type of a served file by its extension; nullopt for an extension the web
// routes do not serve.
std::optional<std::string> web_mime_type(std::string_view name);

// Whether a name may be served: letters, digits, '.', '_' and '-', not starting with '.',
// with a known extension (no path separators, so nothing outside the directory).
bool valid_web_name(std::string_view name);

}  // namespace atrium::api

#include "api/router.h"

namespace atrium::api {

std::string url_decode(std::string_view s, bool plus_is_space, bool* ok) {
  std::string out;
  out.reserve(s.size());
  *ok = true;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%') {
      auto hex = [](char h) -> int {
        if (h >= '0' && h <= '9') return h - '0';
        if (h >= 'a' && h <= 'f') return h - 'a' + 10;
        if (h >= 'A' && h <= 'F') return h - 'A' + 10;
        return -1;
      };
      if (i + 2 >= s.size()) {
        *ok = false;
        return {};
      }
      int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
      if (hi < 0 || lo < 0) {
        *ok = false;
        return {};
      }
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

bool split_path(const std::string& path, std::vector<std::string>& out) {
  out.clear();
  if (path.empty() || path[0] != '/') return false;
  size_t i = 1;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    std::string_view seg(path.data() + i, j - i);
    if (!seg.empty()) {
      bool ok;
      out.push_back(url_decode(seg, false, &ok));
      if (!ok) return false;
    }
    i = j + 1;
  }
  return true;
}

void Router::add(std::string method, std::string tmpl, Access access, Handler h) {
  Route r{std::move(method), tmpl, {}, std::move(access), std::move(h)};
  (void)split_path(tmpl, r.segments);
  routes_.push_back(std::move(r));
}

void Router::wrap(const std::string& method, const std::string& tmpl, Access fallback_access,
                  const std::function<Handler(Handler)>& wrap) {
  for (auto& r : routes_) {
    if (r.method == method && r.tmpl == tmpl) {
      r.handler = wrap(r.handler);
      return;
    }
  }
  add(method, tmpl, std::move(fallback_access), wrap(nullptr));
}

Router::Match Router::match(const std::string& method, const std::string& path) const {
  Match m;
  m.tmpl = "unmatched";
  std::vector<std::string> segs;
  if (!split_path(path, segs)) return m;
  for (const auto& r : routes_) {
    if (r.segments.size() != segs.size()) continue;
    std::unordered_map<std::string, std::string> params;
    bool ok = true;
    for (size_t i = 0; i < segs.size() && ok; ++i) {
      const auto& t = r.segments[i];
      if (t.size() > 2 && t.front() == '{' && t.back() == '}') {
        if (segs[i].empty() || segs[i].size() > 256) ok = false;
        params[t.substr(1, t.size() - 2)] = segs[i];
      } else if (t != segs[i]) {
        ok = false;
      }
    }
    if (!ok) continue;
    if (r.method == method) {
      m.route = &r;
      m.params = std::move(params);
      m.tmpl = r.tmpl;
      return m;
    }
    m.allowed.push_back(r.method);
    m.tmpl = r.tmpl;
  }
  return m;
}

}  // namespace atrium::api

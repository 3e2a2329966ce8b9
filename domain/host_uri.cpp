#include "domain/host_uri.h"

#include <string_view>

namespace atrium::domain {

namespace {

// libvirt reads these (remote driver, virauth.c): each runs a command or names a file on the
// broker's machine, or sends a URI for the remote side to open.
const std::set<std::string>& dangerous_params() {
  static const std::set<std::string> k{"command", "netcat",      "socket",   "keyfile",
                                       "pkipath", "known_hosts", "authfile", "name"};
  return k;
}

Error not_allowed(const std::string& why) {
  return Error{
      Code::invalid_argument, "uri not allowed: " + why, "uri_not_allowed", {{"uri", why}}};
}

Error not_a_uri(const std::string& why) {
  return Error{Code::invalid_argument,
               "uri must be a libvirt URI such as qemu:///system: " + why,
               "invalid_uri",
               {{"uri", why}}};
}

bool is_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// user names and host labels: letters, digits, '.', '_', '-', never a leading '-' (ssh would
// take "-oProxyCommand=..." for an option).
bool is_name(std::string_view s, bool dots) {
  if (s.empty() || s.size() > 253 || s[0] == '-' || s[0] == '.') return false;
  for (char c : s) {
    if (!(is_alnum(c) || c == '_' || c == '-' || (dots && c == '.'))) return false;
  }
  return true;
}

bool is_host(std::string_view h) {
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') {  // [IPv6]
    std::string_view in = h.substr(1, h.size() - 2);
    if (in.empty() || in.size() > 45) return false;
    for (char c : in) {
      bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
      if (!(hex || c == ':' || c == '.')) return false;
    }
    return true;
  }
  // Labels never start with '-' (is_name checks the first one).
  return is_name(h, true) && h.back() != '.' && h.find("..") == std::string_view::npos &&
         h.find(".-") == std::string_view::npos;
}

bool is_port(std::string_view p) {
  if (p.empty() || p.size() > 5) return false;
  long v = 0;
  for (char c : p) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  return v >= 1 && v <= 65535;
}

// [user@]host[:port]; empty is allowed (the local host).
Status check_authority(std::string_view a) {
  if (a.empty()) return Status::Ok();
  std::string_view hostport = a;
  if (auto at = a.rfind('@'); at != std::string_view::npos) {
    if (!is_name(a.substr(0, at), true)) {
      return not_allowed("the user name must be letters, digits, '.', '_' or '-' (no password)");
    }
    hostport = a.substr(at + 1);
  }
  std::string_view host = hostport, port;
  size_t close = hostport.rfind(']');
  size_t colon = hostport.rfind(':');
  if (colon != std::string_view::npos && (close == std::string_view::npos || colon > close)) {
    host = hostport.substr(0, colon);
    port = hostport.substr(colon + 1);
    if (!is_port(port)) return not_allowed("the port must be 1 to 65535");
  }
  if (!is_host(host)) {
    return not_allowed("the host must be a DNS name or an IP address (letters, digits, '.', '-')");
  }
  return Status::Ok();
}

Status check_query(std::string_view q, const HostUriPolicy& policy) {
  // libvirt splits the query on '&' and ';' and unescapes names; names here must be plain.
  size_t p = 0;
  while (p <= q.size()) {
    size_t end = q.find_first_of("&;", p);
    if (end == std::string_view::npos) end = q.size();
    std::string_view part = q.substr(p, end - p);
    std::string_view name = part.substr(0, part.find('='));
    if (name.empty()) return not_allowed("an empty query parameter");
    for (char c : name) {
      if (!((c >= 'a' && c <= 'z') || c == '_')) {
        return not_allowed("query parameter names are lower-case letters and '_'");
      }
    }
    std::string n(name);
    if (safe_host_uri_params().count(n) == 0 && policy.extra_params.count(n) == 0) {
      if (dangerous_params().count(n) != 0) {
        return not_allowed("query parameter '" + n +
                           "' runs a command or names a file for libvirt to use on the "
                           "broker's machine (--host-uri-params=" +
                           n + " allows it)");
      }
      return not_allowed("query parameter '" + n + "' is not one the broker knows to be safe " +
                         "(--host-uri-params=" + n + " allows it)");
    }
    p = end + 1;
  }
  return Status::Ok();
}

}  // namespace

const std::set<std::string>& safe_host_uri_params() {
  static const std::set<std::string> k{"auth",   "sshauth",      "mode",
                                       "proxy",  "tls_priority", "no_verify",
                                       "no_tty", "no_sanity",    "known_hosts_verify"};
  return k;
}

Status check_host_uri(const std::string& uri, const HostUriPolicy& policy) {
  if (!policy.exempt_uri.empty() && uri == policy.exempt_uri) return Status::Ok();
  if (uri.empty() || uri.size() > 1024) return not_a_uri("1 to 1024 characters");
  for (unsigned char c : uri) {
    // Printable ASCII only, and nothing libvirt's URI parser would read differently.
    if (c <= 0x20 || c >= 0x7f || c == '\\' || c == '#' || c == '"' || c == '<' || c == '>' ||
        c == '`' || c == '{' || c == '}' || c == '|' || c == '^') {
      return not_a_uri("printable ASCII without spaces, '#', '\\', quotes or brackets");
    }
  }
  size_t sep = uri.find("://");
  if (sep == std::string::npos || sep == 0) return not_a_uri("driver[+transport]://[host]/path");
  std::string scheme = uri.substr(0, sep);
  std::string_view rest = std::string_view(uri).substr(sep + 3);
  size_t slash = rest.find('/');
  size_t qmark = rest.find('?');
  if (slash == std::string_view::npos || (qmark != std::string_view::npos && qmark < slash)) {
    return not_a_uri("driver[+transport]://[host]/path");
  }
  std::string_view authority = rest.substr(0, slash);
  std::string_view path =
      rest.substr(slash, qmark == std::string_view::npos ? qmark : qmark - slash);
  bool has_query = qmark != std::string_view::npos;
  std::string_view query = has_query ? rest.substr(qmark + 1) : std::string_view();
  if (query.find('?') != std::string_view::npos) return not_a_uri("one '?' at most");

  if (scheme == "test") {
    if (!policy.allow_test) {
      return not_allowed(
          "test:/// hosts are libvirt's in-process fakes that read a local file "
          "(--allow-test-hosts allows them)");
    }
    if (!authority.empty() || has_query) {
      return not_allowed("test:/// takes no host and no query: test:///default or test:///<file>");
    }
    if (path.size() < 2 || path.find('%') != std::string_view::npos) {
      return not_allowed("test:/// takes /default or the absolute path of a host XML file");
    }
    return Status::Ok();
  }

  const std::string allowed =
      "hosts are qemu:///system, qemu+ssh://host/system or qemu+tls://host/system"
      " (qemu+tcp with --allow-tcp-hosts, test:/// with --allow-test-hosts)";
  if (scheme == "qemu+tcp" && !policy.allow_tcp) {
    return not_allowed("qemu+tcp is unencrypted and probes any port (--allow-tcp-hosts allows it)");
  }
  if (scheme != "qemu" && scheme != "qemu+ssh" && scheme != "qemu+tls" && scheme != "qemu+tcp") {
    return not_allowed("driver or transport '" + scheme + "': " + allowed);
  }
  if (path != "/system" && path != "/session") {
    return not_allowed("the path of a qemu URI is /system or /session");
  }
  if (auto st = check_authority(authority); !st) return st;
  if (has_query) {
    if (auto st = check_query(query, policy); !st) return st;
  }
  return Status::Ok();
}

}  // namespace atrium::domain

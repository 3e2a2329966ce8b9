#include "adapters/ldap_directory.h"

#include <ldap.h>
#include <sys/time.h>

#include <cstdio>
#include <vector>

namespace atrium::adapters {

namespace {

constexpr int kMaxGroupDepth = 64;   // nesting levels followed (LDAP kind)
constexpr size_t kMaxGroups = 1000;  // groups read for one user

Error unavailable(const std::string& why) {
  return Error::make(Code::unavailable, "the directory is unavailable: " + why,
                     "directory_unavailable");
}
// A failure of one URL; connect() prefixes the list of them once.
Error down(const std::string& why) {
  return Error::make(Code::unavailable, why, "directory_unavailable");
}
Error bad_credentials() {
  return Error::make(Code::unauthenticated, "wrong name or password", "bad_credentials");
}

// One LDAP handle, unbound when it goes.
struct Handle {
  LDAP* ld = nullptr;
  ~Handle() {
    if (ld != nullptr) ldap_unbind_ext_s(ld, nullptr, nullptr);
  }
};

std::string escape_filter(const std::string& raw) {
  berval in{static_cast<ber_len_t>(raw.size()), const_cast<char*>(raw.data())};
  berval out{0, nullptr};
  if (ldap_bv2escaped_filter_value(&in, &out) != 0) return {};
  std::string s(out.bv_val, out.bv_len);
  ber_memfree(out.bv_val);
  return s;
}

bool is_transport_error(int rc) {
  return rc == LDAP_SERVER_DOWN || rc == LDAP_TIMEOUT || rc == LDAP_CONNECT_ERROR ||
         rc == LDAP_UNAVAILABLE || rc == LDAP_BUSY || rc == LDAP_TIMELIMIT_EXCEEDED;
}

int simple_bind(LDAP* ld, const std::string& dn, const std::string& pw) {
  berval cred{static_cast<ber_len_t>(pw.size()), const_cast<char*>(pw.data())};
  return ldap_sasl_bind_s(ld, dn.c_str(), LDAP_SASL_SIMPLE, &cred, nullptr, nullptr, nullptr);
}

// Opens a connection to one URL with the directory's TLS settings and binds as the service
// account. The error says what failed (never the password).
Result<std::unique_ptr<Handle>> connect_one(const domain::Directory& d, const std::string& url,
                                            const std::string& bind_password) {
  auto h = std::make_unique<Handle>();
  if (ldap_initialize(&h->ld, url.c_str()) != LDAP_SUCCESS || h->ld == nullptr) {
    return down("bad URL " + url);
  }
  int v3 = LDAP_VERSION3;
  ldap_set_option(h->ld, LDAP_OPT_PROTOCOL_VERSION, &v3);
  ldap_set_option(h->ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
  timeval tv{static_cast<time_t>(d.timeout_ms / 1000),
             static_cast<suseconds_t>((d.timeout_ms % 1000) * 1000)};
  ldap_set_option(h->ld, LDAP_OPT_NETWORK_TIMEOUT, &tv);
  ldap_set_option(h->ld, LDAP_OPT_TIMEOUT, &tv);
  bool tls = url.rfind("ldaps://", 0) == 0 || d.starttls;
  if (tls) {
    int demand = LDAP_OPT_X_TLS_DEMAND;
    ldap_set_option(h->ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &demand);
    if (!d.ca_file.empty()) ldap_set_option(h->ld, LDAP_OPT_X_TLS_CACERTFILE, d.ca_file.c_str());
    int server = 0;
    if (ldap_set_option(h->ld, LDAP_OPT_X_TLS_NEWCTX, &server) != LDAP_OPT_SUCCESS) {
      return down("TLS settings refused (ca_file " + d.ca_file + ")");
    }
  }
  if (url.rfind("ldap://", 0) == 0 && d.starttls) {
    int rc = ldap_start_tls_s(h->ld, nullptr, nullptr);
    if (rc != LDAP_SUCCESS) return down(url + ": StartTLS failed: " + ldap_err2string(rc));
  }
  int rc = simple_bind(h->ld, d.bind_dn, bind_password);
  if (rc != LDAP_SUCCESS) {
    if (is_transport_error(rc)) return down(url + ": " + ldap_err2string(rc));
    // The service account itself is refused: a configuration problem, not the user's.
    return down(url + ": the service account bind failed: " + ldap_err2string(rc));
  }
  return h;
}

// Tries the URLs in order; the first that connects and binds wins.
Result<std::unique_ptr<Handle>> connect(const domain::Directory& d, const std::string& pw) {
  std::string why;
  for (const auto& url : d.urls) {
    auto h = connect_one(d, url, pw);
    if (h.ok()) return h;
    why += (why.empty() ? "" : "; ") + h.error().message;
  }
  return unavailable(why);
}

struct Found {
  int rc = LDAP_SUCCESS;
  std::vector<std::pair<std::string, std::vector<std::string>>> entries;  // dn, values of attr 0
  std::vector<std::string> ids;                                           // id attribute
  std::vector<std::string> logins;                                        // name attribute
};

std::string hex(const berval* v) {
  std::string s;
  char b[3];
  for (ber_len_t i = 0; i < v->bv_len; ++i) {
    std::snprintf(b, sizeof b, "%02x", static_cast<unsigned char>(v->bv_val[i]));
    s += b;
  }
  return s;
}

std::string first_value(LDAP* ld, LDAPMessage* e, const std::string& attr, bool binary) {
  berval** vals = ldap_get_values_len(ld, e, attr.c_str());
  if (vals == nullptr) return {};
  std::string out;
  if (vals[0] != nullptr)
    out = binary ? hex(vals[0]) : std::string(vals[0]->bv_val, vals[0]->bv_len);
  ldap_value_free_len(vals);
  return out;
}

// A subtree search; for each entry its DN, the id, the name and the cn.
Result<Found> search(LDAP* ld, const domain::Directory& d, const std::string& base,
                     const std::string& filter, int size_limit) {
  const bool binary_id = d.id_attribute == "objectGUID";
  std::vector<char*> attrs = {const_cast<char*>("cn"), const_cast<char*>(d.id_attribute.c_str()),
                              const_cast<char*>(d.name_attribute.c_str()), nullptr};
  timeval tv{static_cast<time_t>(d.timeout_ms / 1000),
             static_cast<suseconds_t>((d.timeout_ms % 1000) * 1000)};
  LDAPMessage* res = nullptr;
  int rc = ldap_search_ext_s(ld, base.c_str(), LDAP_SCOPE_SUBTREE, filter.c_str(), attrs.data(), 0,
                             nullptr, nullptr, &tv, size_limit, &res);
  Found f;
  f.rc = rc;
  if (rc != LDAP_SUCCESS && rc != LDAP_SIZELIMIT_EXCEEDED && rc != LDAP_NO_SUCH_OBJECT) {
    if (res != nullptr) ldap_msgfree(res);
    return unavailable(std::string("search failed: ") + ldap_err2string(rc));
  }
  for (LDAPMessage* e = ldap_first_entry(ld, res); e != nullptr; e = ldap_next_entry(ld, e)) {
    char* dn = ldap_get_dn(ld, e);
    std::string dns = dn != nullptr ? dn : "";
    if (dn != nullptr) ldap_memfree(dn);
    f.entries.push_back({dns, {first_value(ld, e, "cn", false)}});
    f.ids.push_back(first_value(ld, e, d.id_attribute, binary_id));
    f.logins.push_back(first_value(ld, e, d.name_attribute, false));
  }
  if (res != nullptr) ldap_msgfree(res);
  return f;
}

// The cn of every group the DN is in. Active Directory answers the nesting itself (the
// matching rule LDAP_MATCHING_RULE_IN_CHAIN); for LDAP the groups are followed level by
// level, one search per level, until no new group appears.
Result<std::set<std::string>> groups_of(LDAP* ld, const domain::Directory& d,
                                        const std::string& dn) {
  std::set<std::string> cns;
  if (d.kind == "active_directory") {
    auto f = search(
        ld, d, d.group_base,
        "(&" + d.group_filter + "(member:1.2.840.113556.1.4.1941:=" + escape_filter(dn) + "))",
        static_cast<int>(kMaxGroups));
    if (!f.ok()) return f.error();
    for (const auto& e : f->entries) cns.insert(e.second[0]);
    return cns;
  }
  std::set<std::string> seen;  // group DNs
  std::vector<std::string> frontier{dn};
  for (int depth = 0; depth < kMaxGroupDepth && !frontier.empty() && seen.size() < kMaxGroups;
       ++depth) {
    std::string any;
    for (const auto& m : frontier) any += "(member=" + escape_filter(m) + ")";
    auto f = search(ld, d, d.group_base, "(&" + d.group_filter + "(|" + any + "))",
                    static_cast<int>(kMaxGroups));
    if (!f.ok()) return f.error();
    frontier.clear();
    for (const auto& [gdn, vals] : f->entries) {
      if (seen.insert(gdn).second) {
        frontier.push_back(gdn);
        if (!vals[0].empty()) cns.insert(vals[0]);
      }
    }
  }
  return cns;
}

// The id clause of a filter: objectGUID is binary, matched byte by byte (\xx escapes).
std::string id_clause(const domain::Directory& d, const std::string& external_id) {
  if (d.id_attribute != "objectGUID") {
    return "(" + d.id_attribute + "=" + escape_filter(external_id) + ")";
  }
  std::string bytes;
  for (size_t i = 0; i + 1 < external_id.size(); i += 2) {
    bytes.push_back(static_cast<char>(std::stoi(external_id.substr(i, 2), nullptr, 16)));
  }
  return "(objectGUID=" + escape_filter(bytes) + ")";
}

class LdapDirectoryClient final : public DirectoryClient {
 public:
  LdapDirectoryClient() {
    // libldap reads its global configuration once; do it here, not in racing first calls.
    int v = 0;
    ldap_get_option(nullptr, LDAP_OPT_PROTOCOL_VERSION, &v);
  }

  Result<DirectoryEntry> sign_in(const domain::Directory& d, const std::string& bind_password,
                                 const std::string& login, const std::string& password) override {
    // An empty password would be an unauthenticated bind, which succeeds (RFC 4513 5.1.2).
    if (password.empty() || login.empty()) return bad_credentials();
    auto h = connect(d, bind_password);
    if (!h.ok()) return h.error();
    LDAP* ld = (*h)->ld;
    auto f = search(
        ld, d, d.user_base,
        "(&" + d.user_filter + "(" + d.name_attribute + "=" + escape_filter(login) + "))", 2);
    if (!f.ok()) return f.error();
    if (f->entries.size() != 1) return bad_credentials();  // none, or ambiguous
    DirectoryEntry e{f->entries[0].first, f->ids[0], f->logins[0], {}};
    if (e.external_id.empty()) {
      return unavailable("the user has no " + d.id_attribute + " attribute");
    }
    auto g = groups_of(ld, d, e.dn);
    if (!g.ok()) return g.error();
    e.groups = std::move(*g);
    int rc = simple_bind(ld, e.dn, password);  // the directory checks the password
    if (rc == LDAP_INVALID_CREDENTIALS) return bad_credentials();
    if (rc != LDAP_SUCCESS) {
      if (is_transport_error(rc)) return unavailable(std::string("bind: ") + ldap_err2string(rc));
      return bad_credentials();  // locked, expired, constraint: the user may not sign in
    }
    return e;
  }

  Result<DirectoryEntry> lookup(const domain::Directory& d, const std::string& bind_password,
                                const std::string& external_id) override {
    auto h = connect(d, bind_password);
    if (!h.ok()) return h.error();
    LDAP* ld = (*h)->ld;
    auto f = search(ld, d, d.user_base, "(&" + d.user_filter + id_clause(d, external_id) + ")", 2);
    if (!f.ok()) return f.error();
    if (f->entries.size() != 1) {
      return Error::make(Code::not_found, "the directory no longer has this user",
                         "directory_user_gone");
    }
    DirectoryEntry e{f->entries[0].first, f->ids[0], f->logins[0], {}};
    auto g = groups_of(ld, d, e.dn);
    if (!g.ok()) return g.error();
    e.groups = std::move(*g);
    return e;
  }
};

}  // namespace

std::unique_ptr<DirectoryClient> make_ldap_directory_client() {
  return std::make_unique<LdapDirectoryClient>();
}

}  // namespace atrium::adapters

// Directories: the admin routes (/v1/directories), sign-in of directory users and the recheck
// of their tokens (issue 14). The directory is asked on the calling HTTP worker through
// adapters::DirectoryClient, never on the writer thread; what it answers becomes commands.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "adapters/ldap_directory.h"
#include "api/api.h"
#include "api/crypto.h"
#include "api/json_input.h"
#include "domain/state.h"
#include "domain/user_names.h"

namespace atrium::api {

using domain::State;
using pipeline::Command;

namespace {

const Error kBadCredentials =
    Error::make(Code::unauthenticated, "wrong name or password", "bad_credentials");

// What the log says about a directory that did not answer: its name and libldap's words,
// never a password (the adapter's messages hold none).
void log_unavailable(const domain::Directory& d, const Error& e) {
  std::fprintf(stderr, "atriumd: directory %s: %s\n", d.name.c_str(), e.message.c_str());
}

HttpResponse unavailable(const domain::Directory& d) {
  return problem(Error::make(Code::unavailable,
                             "the directory " + d.name + " cannot be reached; retry later",
                             "directory_unavailable"));
}

// The URLs in the body's order (tried in turn), checked as a set of strings first.
std::optional<std::vector<std::string>> read_urls(const Json& body, BodyReader& br, bool required) {
  auto set = br.string_set("urls", required);
  if (!set) return std::nullopt;
  std::vector<std::string> urls;
  for (const auto& u : body["urls"]) urls.push_back(u.get<std::string>());
  return urls;
}

// The range is the domain's rule (invalid_directory); here only the type.
std::optional<int64_t> read_timeout(const Json& body, BodyReader& br) {
  if (!body.contains("timeout_ms") || body["timeout_ms"].is_null()) return std::nullopt;
  const Json& t = body["timeout_ms"];
  if (!t.is_number_integer()) {
    br.fail("timeout_ms", "must be an integer");
    return std::nullopt;
  }
  return t.get<int64_t>();
}

std::optional<std::map<std::string, std::set<std::string>>> read_role_map(const Json& body,
                                                                          BodyReader& br) {
  if (!body.contains("role_map") || body["role_map"].is_null()) return std::nullopt;
  const Json& m = body["role_map"];
  std::map<std::string, std::set<std::string>> out;
  bool ok = m.is_object() && m.size() <= 1000;
  for (auto it = m.begin(); ok && it != m.end(); ++it) {
    ok = it.value().is_array() && it.key().size() <= 256;
    for (const auto& role : it.value()) ok = ok && role.is_string();
    if (ok) out[it.key()] = it.value().get<std::set<std::string>>();
  }
  if (!ok) {
    br.fail("role_map", "must map group names to arrays of roles");
    return std::nullopt;
  }
  return out;
}

// The bind password sealed under the broker's key (only that form reaches a command).
Result<std::string> seal_bind_password(const Api& api, const std::string& password) {
  if (api.config().secret_key.empty()) {
    return Error::make(Code::failed_precondition,
                       "this broker has no secret key: give bind_password_file", "no_secret_key");
  }
  return seal_secret(api.config().secret_key, password);
}

}  // namespace

Result<std::string> Api::bind_password(const domain::Directory& d) const {
  if (!d.bind_password_file.empty()) {
    std::ifstream in(d.bind_password_file);
    std::string pw;
    if (!in || !std::getline(in, pw)) {
      return Error::make(Code::unavailable,
                         "cannot read bind_password_file " + d.bind_password_file,
                         "directory_misconfigured");
    }
    return pw;
  }
  auto pw = open_secret(cfg_.secret_key, d.bind_password_sealed);
  if (!pw.ok()) {
    return Error::make(Code::unavailable, "the bind password does not open with this broker's key",
                       "directory_misconfigured");
  }
  return pw;
}

HttpResponse Api::directory_sign_in(HttpRequest& req, const domain::Directory& d,
                                    const std::string& login, const std::string& password,
                                    const std::optional<std::string>& totp_code,
                                    const std::optional<std::string>& recovery_code) {
  const std::string throttle_name = login + "@" + d.name;
  if (auto refusal = login_gate(req, throttle_name)) return *refusal;
  if (!directory_) return unavailable(d);
  auto pw = bind_password(d);
  if (!pw.ok()) {
    log_unavailable(d, pw.error());
    return unavailable(d);
  }
  auto found = directory_->sign_in(d, *pw, login, password);
  if (!found.ok()) {
    if (found.error().code == Code::unauthenticated) {
      return login_failed(req, throttle_name, "", kBadCredentials);
    }
    log_unavailable(d, found.error());
    login_failures_->Add({{"reason", "directory_unavailable"}}).Increment();
    return unavailable(d);
  }
  std::set<std::string> cns = found->groups;
  cns.insert("*");  // the role_map's entry for every user of the directory
  std::set<std::string> roles = domain::roles_for_groups(d, cns);
  auto norm = domain::normalize_user_name(found->login + "@" + d.name);
  if (!norm.ok()) return login_failed(req, throttle_name, "", kBadCredentials);
  std::set<std::string> groups;
  for (const auto& g : found->groups) groups.insert(g + "@" + d.name);
  struct Known {
    std::string id;
    bool disabled = false;
    bool granted = false;  // an admin granted it roles in Atrium
  };
  Known k = views_.read([&](const State& s) {
    const domain::User* u = s.users.find_external(d.id, found->external_id);
    return u == nullptr ? Known{} : Known{u->id, u->disabled, !u->granted_roles.empty()};
  });
  // A user an admin disabled in Atrium stays out whatever the directory says; one with no
  // role (none from the role_map, none granted) is not let in.
  if (k.disabled || (roles.empty() && !k.granted)) {
    return login_failed(req, throttle_name, "", kBadCredentials);
  }
  const std::string& known = k.id;
  if (!known.empty()) {
    if (auto r = check_second_factor(req, throttle_name, known, totp_code, recovery_code))
      return *r;
  }
  login_succeeded(throttle_name);

  domain::ProvisionDirectoryUser prov{new_id(), d.id,  found->external_id, found->dn, *norm,
                                      roles,    groups};
  req.principal = Principal{"system", *norm, {}, "", "", ""};
  req.headers.erase("idempotency-key");
  Command pc = command("ProvisionDirectoryUser", prov, 200, [prov](const State& s) {
    const domain::User* u = s.users.find_external(prov.directory_id, prov.external_id);
    return Json{{"user_id", u != nullptr ? u->id : ""}};
  });
  HttpResponse pr = run(req, std::move(pc));
  if (pr.status != 200) return pr;
  std::string user_id = Json::parse(pr.body, nullptr, false).value("user_id", "");
  {
    std::lock_guard l(checked_mu_);
    checked_at_ms_[user_id] = now_ms();
  }
  return issue_login_token(req, user_id, *norm);
}

std::optional<HttpResponse> Api::recheck_directory_user(const HttpRequest& req) {
  if (!req.principal) return std::nullopt;
  const std::string& uid = req.principal->user_id;
  struct Who {
    domain::Directory d;
    std::string external_id;
    bool granted = false;  // an admin granted it roles in Atrium
  };
  auto who = views_.read([&](const State& s) -> std::optional<Who> {
    const domain::User* u = s.users.find(uid);
    if (u == nullptr || u->directory_id.empty()) return std::nullopt;
    const domain::Directory* d = s.directories.find(u->directory_id);
    return Who{d != nullptr ? *d : domain::Directory{}, u->external_id, !u->granted_roles.empty()};
  });
  if (!who) return std::nullopt;  // a local user
  int64_t now = now_ms();
  {
    std::lock_guard l(checked_mu_);
    auto it = checked_at_ms_.find(uid);
    if (it != checked_at_ms_.end() && now - it->second < cfg_.directory_recheck_ms) {
      return std::nullopt;
    }
    // Others of this user's requests pass while this one asks (one lookup, not a storm).
    checked_at_ms_[uid] = now;
  }
  auto forget = [&] {
    std::lock_guard l(checked_mu_);
    checked_at_ms_.erase(uid);
  };
  if (follower()) {
    // The recheck may write (tokens revoked, groups changed): the leader asks the directory
    // and answers the whole request; this broker answers once it applied what that wrote.
    HttpResponse r = forward(req);
    if (r.status == 503) forget();  // nobody asked: the next request tries again
    return r;
  }
  auto revoke = [&](const std::string& why) {
    domain::RevokeUserTokens cmd{uid, why};
    pipeline::Command c = command("RevokeUserTokens", cmd, 204);
    c.meta.actor = "system";
    c.meta.correlation_id = req.request_id;
    (void)pipeline_.execute(std::move(c), cfg_.command_timeout);
    forget();
    return problem(Error::make(Code::unauthenticated,
                               "the directory no longer has this user; sign in again",
                               "token_invalid"));
  };
  if (who->d.id.empty()) return revoke("directory_deleted");
  const domain::Directory& d = who->d;
  if (!directory_) return unavailable(d);
  auto pw = bind_password(d);
  auto found = pw.ok() ? directory_->lookup(d, *pw, who->external_id)
                       : Result<adapters::DirectoryEntry>(pw.error());
  if (!found.ok()) {
    if (found.error().code == Code::not_found) return revoke("directory_user_gone");
    log_unavailable(d, found.error());
    forget();  // the next request asks again
    return unavailable(d);
  }
  std::set<std::string> cns = found->groups;
  cns.insert("*");
  std::set<std::string> roles = domain::roles_for_groups(d, cns);
  auto norm = domain::normalize_user_name(found->login + "@" + d.name);
  if ((roles.empty() && !who->granted) || !norm.ok()) return revoke("directory_no_role");
  std::set<std::string> groups;
  for (const auto& g : found->groups) groups.insert(g + "@" + d.name);
  // Name, DN, roles and groups as the directory has them now (groups left end what they gave).
  domain::ProvisionDirectoryUser prov{"",    d.id,  found->external_id, found->dn, *norm,
                                      roles, groups};
  pipeline::Command c = command("ProvisionDirectoryUser", prov, 200);
  c.meta.actor = "system";
  c.meta.correlation_id = req.request_id;
  (void)pipeline_.execute(std::move(c), cfg_.command_timeout);
  return std::nullopt;
}

// ---- routes -----------------------------------------------------------------------------
// The fields of a directory a client may send (POST creates with them, PATCH changes them).
static const std::initializer_list<const char*> kDirectoryFields = {
    "name",       "kind",         "urls",         "bind_dn",    "bind_password", "bind_password_file",
    "user_base",  "user_filter",  "name_attribute", "id_attribute", "group_base", "group_filter",
    "starttls",   "ca_file",      "allow_plaintext", "default",  "timeout_ms",   "role_map"};

void register_directory_routes(Api& api) {
  Router& r = api.router();
  r.add("POST", "/v1/directories", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, kDirectoryFields);
    domain::Directory d;
    d.id = new_id();
    d.name = br.str("name", true, 64, 1).value_or("");
    d.kind = br.str("kind", false, 32, 1).value_or("ldap");
    const bool ad = d.kind == "active_directory";
    auto urls = read_urls(*body, br, true);
    d.bind_dn = br.str("bind_dn", true, 1024, 1).value_or("");
    auto password = br.str("bind_password", false, 1024, 1);
    d.bind_password_file = br.str("bind_password_file", false, 4096, 1).value_or("");
    d.user_base = br.str("user_base", true, 1024, 1).value_or("");
    d.user_filter =
        br.str("user_filter", false, 2048, 2)
            .value_or(ad ? "(&(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))"
                         : "(objectClass=inetOrgPerson)");
    d.name_attribute =
        br.str("name_attribute", false, 64, 1).value_or(ad ? "sAMAccountName" : "uid");
    d.id_attribute = br.str("id_attribute", false, 64, 1).value_or(ad ? "objectGUID" : "entryUUID");
    d.group_base = br.str("group_base", true, 1024, 1).value_or("");
    d.group_filter = br.str("group_filter", false, 2048, 2)
                         .value_or(ad ? "(objectClass=group)" : "(objectClass=groupOfNames)");
    d.starttls = br.boolean("starttls", false).value_or(false);
    d.ca_file = br.str("ca_file", false, 4096, 1).value_or("");
    d.allow_plaintext = br.boolean("allow_plaintext", false).value_or(false);
    d.is_default = br.boolean("default", false).value_or(false);
    if (auto t = read_timeout(*body, br)) d.timeout_ms = *t;
    if (auto m = read_role_map(*body, br)) d.role_map = std::move(*m);
    if (auto st = br.finish(); !st) return problem(st.error());
    d.urls = std::move(*urls);
    if (password) {
      auto sealed = seal_bind_password(api, *password);
      if (!sealed.ok()) return problem(sealed.error());
      d.bind_password_sealed = std::move(*sealed);
    }
    HttpResponse resp = api.run(
        req,
        command("CreateDirectory", domain::CreateDirectory{d}, 201, [id = d.id](const State& s) {
          return domain::directory_to_json(*s.directories.find(id));
        }));
    if (resp.status == 201) resp.with_header("Location", "/v1/directories/" + d.id);
    return resp;
  });

  r.add("GET", "/v1/directories", Access::Admin(), [&api](HttpRequest& req) {
    return api.with_state(req, [&](const State& s) {
      Json items = Json::array();
      for (const auto& [id, d] : s.directories.by_id) items.push_back(domain::directory_to_json(d));
      return HttpResponse::json(200, Json{{"items", items}, {"next_cursor", nullptr}});
    });
  });

  r.add("GET", "/v1/directories/{id}", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      return entity_response(s.directories.find(id), "directory", id, domain::directory_to_json);
    });
  });

  // Every field given changes (validated as at create); a new bind_password is sealed like
  // at create. A role_map change reaches each user at its next sign-in or recheck.
  r.add("PATCH", "/v1/directories/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, kDirectoryFields);
    domain::UpdateDirectory c;
    c.id = req.param("id");
    c.name = br.str("name", false, 64, 1);
    c.kind = br.str("kind", false, 32, 1);
    c.urls = read_urls(*body, br, false);
    c.bind_dn = br.str("bind_dn", false, 1024, 1);
    auto password = br.str("bind_password", false, 1024, 1);
    c.bind_password_file = br.str("bind_password_file", false, 4096, 1);
    c.user_base = br.str("user_base", false, 1024, 1);
    c.user_filter = br.str("user_filter", false, 2048, 2);
    c.name_attribute = br.str("name_attribute", false, 64, 1);
    c.id_attribute = br.str("id_attribute", false, 64, 1);
    c.group_base = br.str("group_base", false, 1024, 1);
    c.group_filter = br.str("group_filter", false, 2048, 2);
    c.starttls = br.boolean("starttls", false);
    c.ca_file = br.str("ca_file", false, 4096, 0);  // "" clears it
    c.allow_plaintext = br.boolean("allow_plaintext", false);
    c.is_default = br.boolean("default", false);
    c.timeout_ms = read_timeout(*body, br);
    c.role_map = read_role_map(*body, br);
    if (password && c.bind_password_file) {
      br.fail("bind_password", "give at most one of bind_password and bind_password_file");
    }
    if (auto st = br.finish(); !st) return problem(st.error());
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    c.expected_version = *expected;
    if (password) {
      auto sealed = seal_bind_password(api, *password);
      if (!sealed.ok()) return problem(sealed.error());
      c.bind_password_sealed = std::move(*sealed);
    }
    std::string id = c.id;
    return api.run(req, command("UpdateDirectory", std::move(c), 200, [id](const State& s) {
                     const domain::Directory* d = s.directories.find(id);
                     return d != nullptr ? domain::directory_to_json(*d) : Json::object();
                   }));
  });

  r.add("DELETE", "/v1/directories/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    return api.run(
        req, command("DeleteDirectory", domain::DeleteDirectory{req.param("id"), *expected}, 204));
  });
}

}  // namespace atrium::api

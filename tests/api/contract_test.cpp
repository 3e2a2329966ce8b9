// The contract cannot drift: openapi.yaml (as compiled into the daemon), the query-parameter
// table of api/query_params.cpp and the routes the daemon registers must name the same
// operations and the same query parameters; and the table's list and as_of parameters are
// really read by their handlers.
#include <doctest/doctest.h>
#include <yaml.h>

#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "api/daemon.h"
#include "api/query_params.h"
#include "support/test_support.h"

using atrium::testing::TestBroker;
using nlohmann::json;

namespace {

// libyaml's document tree as JSON (every scalar a string), enough to walk the document.
json node_to_json(yaml_document_t* doc, yaml_node_t* n) {
  if (n == nullptr) return nullptr;
  switch (n->type) {
    case YAML_SCALAR_NODE:
      return std::string(reinterpret_cast<const char*>(n->data.scalar.value),
                         n->data.scalar.length);
    case YAML_SEQUENCE_NODE: {
      json a = json::array();
      for (auto* it = n->data.sequence.items.start; it < n->data.sequence.items.top; ++it) {
        a.push_back(node_to_json(doc, yaml_document_get_node(doc, *it)));
      }
      return a;
    }
    case YAML_MAPPING_NODE: {
      json o = json::object();
      for (auto* p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; ++p) {
        json k = node_to_json(doc, yaml_document_get_node(doc, p->key));
        o[k.get<std::string>()] = node_to_json(doc, yaml_document_get_node(doc, p->value));
      }
      return o;
    }
    default:
      return nullptr;
  }
}

json parse_yaml(const std::string& text) {
  yaml_parser_t parser;
  yaml_document_t doc;
  REQUIRE(yaml_parser_initialize(&parser) == 1);
  yaml_parser_set_input_string(&parser, reinterpret_cast<const unsigned char*>(text.data()),
                               text.size());
  bool loaded = yaml_parser_load(&parser, &doc) == 1;
  std::string problem = parser.problem ? parser.problem : "";
  size_t line = parser.problem_mark.line + 1;
  yaml_parser_delete(&parser);
  REQUIRE_MESSAGE(loaded, "openapi.yaml does not parse: " << problem << " at line " << line);
  json out = node_to_json(&doc, yaml_document_get_root_node(&doc));
  yaml_document_delete(&doc);
  return out;
}

// Follows a local "$ref" ("#/components/parameters/Limit").
const json& deref(const json& root, const json& j) {
  if (!j.is_object() || !j.contains("$ref")) return j;
  std::string ref = j["$ref"];
  REQUIRE_MESSAGE(ref.rfind("#/", 0) == 0, "non-local $ref " << ref);
  return root.at(json::json_pointer(ref.substr(1)));
}

struct DocParam {
  bool required = false;
  std::string example;  // a valid value (first enum value, or "x")
};
// "GET /v1/users" -> query parameter name -> what the document says of it.
using DocOps = std::map<std::string, std::map<std::string, DocParam>>;

DocOps document_operations(const json& doc) {
  DocOps out;
  const std::set<std::string> methods{"get", "post", "put", "patch", "delete"};
  for (const auto& [path, item] : doc.at("paths").items()) {
    for (const auto& [m, op] : item.items()) {
      if (methods.count(m) == 0) continue;
      std::string method;
      for (char c : m)
        method.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
      auto& params = out[method + " " + path];
      for (const json* list : {&item, &op}) {
        if (!list->contains("parameters")) continue;
        for (const auto& raw : (*list)["parameters"]) {
          const json& p = deref(doc, raw);
          if (p.value("in", "") != "query") continue;
          DocParam d;
          d.required = p.value("required", "false") == "true";
          const json& schema = p.contains("schema") ? p["schema"] : json::object();
          d.example = schema.contains("enum") ? schema["enum"][0].get<std::string>() : "x";
          params[p.at("name").get<std::string>()] = d;
        }
      }
    }
  }
  return out;
}

std::string join(const std::set<std::string>& s) {
  std::string out;
  for (const auto& x : s) out += (out.empty() ? "" : ", ") + x;
  return out;
}

// The path with every {param} replaced by "x".
std::string sample_path(const std::string& tmpl) {
  std::string out;
  bool in = false;
  for (char c : tmpl) {
    if (c == '{') {
      in = true;
      out += 'x';
    } else if (c == '}') {
      in = false;
    } else if (!in) {
      out += c;
    }
  }
  return out;
}

}  // namespace

TEST_CASE(
    "9.8: openapi.yaml and the query-parameter table name the same operations and parameters") {
  json doc = parse_yaml(atrium::api::openapi_text());
  DocOps ops = document_operations(doc);
  std::map<std::string, std::set<std::string>> table;
  for (const auto& r : atrium::api::query_rules()) {
    std::string key = r.method + " " + r.tmpl;
    CHECK_MESSAGE(table.count(key) == 0, "the table lists " << key << " twice");
    table[key] = r.names;
  }
  for (const auto& [key, params] : ops) {
    INFO("operation " << key);
    REQUIRE_MESSAGE(table.count(key) == 1,
                    key << " is in openapi.yaml but not in api/query_params.cpp");
    std::set<std::string> documented;
    for (const auto& [n, p] : params) documented.insert(n);
    CHECK_MESSAGE(documented == table[key], key << ": openapi.yaml documents {" << join(documented)
                                                << "}, the table allows {" << join(table[key])
                                                << "}");
  }
  for (const auto& [key, names] : table) {
    CHECK_MESSAGE(ops.count(key) == 1,
                  key << " is in api/query_params.cpp but not in openapi.yaml");
  }
}

TEST_CASE("9.8: every route the daemon serves is in the table, and every table entry is a route") {
  TestBroker b;
  std::set<std::string> routes;
  for (const auto& r : b.daemon().api().router().routes()) routes.insert(r.method + " " + r.tmpl);
  std::set<std::string> table;
  for (const auto& r : atrium::api::query_rules()) table.insert(r.method + " " + r.tmpl);
  for (const auto& r : routes)
    CHECK_MESSAGE(table.count(r) == 1, r << " is served but has no table entry");
  for (const auto& t : table)
    CHECK_MESSAGE(routes.count(t) == 1, t << " is in the table but not served");
}

TEST_CASE(
    "9.8: the table's limit, cursor and as_of are read by their handlers; the rest are refused") {
  TestBroker b;
  json doc = parse_yaml(atrium::api::openapi_text());
  DocOps ops = document_operations(doc);
  for (const auto& r : atrium::api::query_rules()) {
    if (r.method != "GET") continue;
    std::string key = r.method + " " + r.tmpl;
    // The parameters the document requires, with valid values, so that the one under test is
    // the only thing wrong with the request.
    std::string base = sample_path(r.tmpl) + "?";
    for (const auto& [n, p] : ops[key]) {
      if (p.required) base += n + "=" + p.example + "&";
    }
    auto expect_invalid = [&](const std::string& query) {
      auto reply = b.call("GET", base + query);
      INFO(key << " ?" << query << " -> " << reply.status << " " << reply.body);
      CHECK(reply.status == 400);
      CHECK(reply.json().value("reason", "") == "invalid_query");
    };
    if (r.names.count("as_of")) expect_invalid("as_of=999999999");
    if (r.names.count("limit")) expect_invalid("limit=0");
    if (r.names.count("cursor")) expect_invalid("cursor=nope");
    auto unknown = b.call("GET", base + "not_a_parameter=1");
    INFO(key);
    CHECK(unknown.status == 400);
    CHECK(unknown.json().value("reason", "") == "unknown_query_parameter");
  }
}

namespace {

// Whether an answer's value is the schema's `default` (a YAML tree: scalars are strings).
bool same_value(const json& answer, const json& dflt) {
  if (dflt.is_array()) {
    if (!answer.is_array() || answer.size() != dflt.size()) return false;
    for (size_t i = 0; i < dflt.size(); ++i) {
      if (!same_value(answer[i], dflt[i])) return false;
    }
    return true;
  }
  if (dflt.is_object()) {
    if (!answer.is_object()) return false;
    for (const auto& [k, v] : dflt.items()) {
      if (!answer.contains(k) || !same_value(answer[k], v)) return false;
    }
    return true;
  }
  std::string d = dflt.get<std::string>();
  if (answer.is_string()) return answer.get<std::string>() == d;
  if (answer.is_boolean()) return (answer.get<bool>() ? "true" : "false") == d;
  if (answer.is_number()) return std::stod(d) == answer.get<double>();
  return false;
}

// Every `default` of `schema` (following $ref into nested objects) holds in `answer`, which
// is what the server made of a request that left those fields out. Returns the number of
// defaults checked.
int check_defaults(const json& doc, const json& schema_in, const json& answer,
                   const std::string& where) {
  const json& schema = deref(doc, schema_in);
  int n = 0;
  if (!schema.contains("properties")) return 0;
  for (const auto& [name, raw] : schema["properties"].items()) {
    const json& prop = deref(doc, raw);
    std::string path = where + "." + name;
    const json* dflt = raw.contains("default")    ? &raw["default"]
                       : prop.contains("default") ? &prop["default"]
                                                  : nullptr;
    if (dflt != nullptr) {
      ++n;
      CHECK_MESSAGE(answer.contains(name), path << " is not in the answer " << answer.dump());
      if (answer.contains(name)) {
        CHECK_MESSAGE(same_value(answer[name], *dflt), path << ": the schema's default is "
                                                            << dflt->dump() << ", the server made "
                                                            << answer[name].dump());
      }
    }
    bool object =
        prop.contains("properties") || (prop.contains("type") && prop["type"] == "object");
    if (object && answer.contains(name) && answer[name].is_object()) {
      n += check_defaults(doc, prop, answer[name], path);
    }
  }
  return n;
}

}  // namespace

TEST_CASE("9.8: the schemas' defaults are what the server applies to fields left out") {
  json doc = parse_yaml(atrium::api::openapi_text());
  const json& schemas = doc["components"]["schemas"];
  TestBroker b;
  int checked = 0;

  auto host = b.call("POST", "/v1/hosts", {{"name", "h"}, {"uri", "test:///default"}});
  REQUIRE_MESSAGE(host.status == 202, host.body);
  std::string host_id = host.json()["host_id"];
  checked += check_defaults(doc, schemas["AddHostRequest"],
                            b.call("GET", "/v1/hosts/" + host_id).json(), "AddHostRequest");

  const char* xml =
      "<domain type='test'><name>tmpl</name><memory unit='MiB'>64</memory><os><type>hvm</type>"
      "</os></domain>";
  auto pool = b.call("POST", "/v1/pools",
                     {{"name", "p"},
                      {"kind", "floating"},
                      {"template", {{"domain_xml", xml}}},
                      {"host_ids", {host_id}},
                      {"max_size", 1}});
  REQUIRE_MESSAGE(pool.status == 201, pool.body);
  checked += check_defaults(doc, schemas["PoolCreate"], pool.json(), "PoolCreate");

  auto cluster = b.call("POST", "/v1/clusters", {{"name", "c"}});
  REQUIRE_MESSAGE(cluster.status == 201, cluster.body);
  checked +=
      check_defaults(doc, schemas["CreateClusterRequest"], cluster.json(), "CreateClusterRequest");
  auto server =
      b.call("POST", "/v1/servers", {{"name", "s"}, {"address", "10.0.0.1"}, {"os_type", "linux"}});
  REQUIRE_MESSAGE(server.status == 201, server.body);
  checked +=
      check_defaults(doc, schemas["CreateServerRequest"], server.json(), "CreateServerRequest");
  auto application =
      b.call("POST", "/v1/servers/" + server.json()["id"].get<std::string>() + "/applications",
             {{"name", "a"}, {"executable_path", "/bin/a"}});
  REQUIRE_MESSAGE(application.status == 201, application.body);
  checked += check_defaults(doc, schemas["AddApplicationRequest"], application.json(),
                            "AddApplicationRequest");
  auto user = b.call("POST", "/v1/users", {{"name", "u"}});
  REQUIRE_MESSAGE(user.status == 201, user.body);
  checked += check_defaults(doc, schemas["CreateUserRequest"], user.json(), "CreateUserRequest");
  // grace 300, idle 3600, reconnect, power policy, min_ready, min_standby, storage pool,
  // placement policy and weights, max_sessions, ...
  CHECK(checked >= 20);
  MESSAGE("defaults checked: " << checked);
}

TEST_CASE("9.8: both launch answers carry what their schemas require") {
  json doc = parse_yaml(atrium::api::openapi_text());
  const json& schemas = doc["components"]["schemas"];
  auto require_all = [&](const char* schema, const json& answer) {
    for (const auto& name : schemas[schema]["required"]) {
      CHECK_MESSAGE(answer.contains(name.get<std::string>()),
                    schema << " requires " << name << ", the answer is " << answer.dump());
    }
    std::string tag = schemas[schema]["properties"]["protocol"].contains("const")
                          ? schemas[schema]["properties"]["protocol"]["const"].get<std::string>()
                          : schemas[schema]["properties"]["protocol"]["enum"][0].get<std::string>();
    CHECK(answer["protocol"] == tag);  // the 201's discriminator
  };
  TestBroker b([](atrium::api::DaemonConfig& c) {
    c.hosts.poll_interval = std::chrono::milliseconds(20);
    c.pools.interval = std::chrono::milliseconds(50);
  });
  auto [uid, tok] = b.user("lena");
  // A desktop on a test:/// host, provisioned on demand.
  auto added = b.call("POST", "/v1/hosts", {{"name", "h"}, {"uri", "test:///default"}});
  REQUIRE(added.status == 202);
  std::string host = added.json()["host_id"];
  atrium::testing::poll(b, "/v1/hosts/" + host, [](const json& j) { return j["state"] == "up"; });
  const char* xml =
      "<domain type='test'><name>tmpl</name><memory unit='MiB'>64</memory><os><type>hvm</type>"
      "</os></domain>";
  auto pool = b.call("POST", "/v1/pools",
                     {{"name", "p"},
                      {"kind", "floating"},
                      {"template", {{"domain_xml", xml}}},
                      {"host_ids", {host}},
                      {"max_size", 1}});
  REQUIRE_MESSAGE(pool.status == 201, pool.body);
  std::string p = pool.json()["id"];
  REQUIRE(b.call("POST", "/v1/pools/" + p + "/entitlements", {{"user_id", uid}}).status == 201);
  auto d = b.call("POST", "/v1/launches", {{"pool_id", p}}, tok);
  REQUIRE_MESSAGE(d.status == 201, d.body);
  require_all("DesktopLaunch", d.json());
  auto again = b.call("POST", "/v1/launches", {{"pool_id", p}}, tok);
  REQUIRE(again.status == 200);
  require_all("DesktopLaunch", again.json());
  // An application on a server.
  auto srv =
      b.call("POST", "/v1/servers", {{"name", "s"}, {"address", "10.0.0.2"}, {"os_type", "linux"}});
  std::string s = srv.json()["id"];
  std::string app = b.call("POST", "/v1/servers/" + s + "/applications",
                           {{"name", "a"}, {"executable_path", "/bin/a"}})
                        .json()["id"];
  REQUIRE(b.call("POST", "/v1/publications",
                 {{"application_id", app}, {"scope", "server"}, {"target_id", s}})
              .status == 201);
  REQUIRE(b.call("POST", "/v1/authorizations",
                 {{"user_id", uid}, {"application_id", app}, {"scope", "server"}, {"target_id", s}})
              .status == 201);
  REQUIRE(b.call("POST", "/v1/servers/" + s + "/report",
                 {{"cpu_load", 0.1}, {"memory_load", 0.1}, {"sessions", 0}})
              .status == 200);
  auto a = b.call("POST", "/v1/launches", {{"application_id", app}}, tok);
  REQUIRE_MESSAGE(a.status == 201, a.body);
  require_all("Launch", a.json());
  // And the sessions they made, as GET shows them.
  for (const auto& [schema, id] :
       {std::pair{"DesktopSession", d.json()["session_id"].get<std::string>()},
        std::pair{"AppSession", a.json()["session_id"].get<std::string>()}}) {
    json got = b.call("GET", "/v1/sessions/" + id, nullptr, tok).json();
    for (const auto& name : schemas[schema]["required"]) {
      CHECK_MESSAGE(got.contains(name.get<std::string>()), schema << " requires " << name);
    }
  }
}

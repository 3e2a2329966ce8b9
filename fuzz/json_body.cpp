// Request bodies: parse_object() refuses with a 400 reason or returns an object that can be
// written back and re-read unchanged and nests no deeper than the limit; BodyReader, used the
// way handlers use it, reports only well-formed field errors.
#include <algorithm>
#include <string>
#include <string_view>

#include "api/http_types.h"
#include "api/json_input.h"
#include "fuzz/harness.h"

namespace atrium::fuzz {

namespace {

size_t depth_of(const api::Json& j) {
  size_t d = 0;
  if (j.is_object() || j.is_array()) {
    for (const auto& v : j) d = std::max(d, depth_of(v));
    return d + 1;
  }
  return 0;
}

void check_problem(const Error& e) {
  if (e.code != Code::invalid_argument) fail("a body problem that is not invalid_argument");
  if (e.reason.empty() || e.message.empty()) fail("a body problem without reason or message");
  api::HttpResponse r = api::problem(e);
  if (r.status != 400) fail("a body problem that is not a 400");
  auto j = api::Json::parse(r.body, nullptr, false);
  if (j.is_discarded() || j.value("reason", "") != e.reason) fail("problem+json unreadable");
}

}  // namespace

int json_body(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  auto parsed = api::parse_object(body);
  if (!parsed.ok()) {
    check_problem(parsed.error());
    return 0;
  }
  const api::Json& j = *parsed;
  if (!j.is_object()) fail("parse_object returned a non-object");
  if (depth_of(j) > api::kMaxJsonDepth) fail("parse_object let a body nest deeper than the limit");
  std::string out;
  try {
    out = j.dump();
  } catch (const std::exception& ex) {
    fail(std::string("an accepted body cannot be written back: ") + ex.what());
  }
  auto again = api::parse_object(out);
  if (!again.ok() || *again != j) fail("an accepted body does not read back the same");

  // The readers as the handlers use them (users, hosts, pools, clusters).
  api::BodyReader br(j, {"name", "password", "roles", "uri", "address", "display_ports", "action",
                         "max_size", "cpu_load", "enabled", "placement"});
  (void)br.str("name", true, 128, 1);
  (void)br.str("password", false, 1024, 8);
  (void)br.string_set("roles", false);
  (void)br.str("uri", false, 1024, 1);
  (void)br.str("address", false, 255, 1);
  (void)br.one_of("action", false, {"start", "shutdown", "reboot", "destroy"});
  (void)br.integer("max_size", false, 1, 10000);
  (void)br.number("cpu_load", false, 0, 1);
  (void)br.boolean("enabled", false);
  if (const api::Json* dp = br.object("display_ports", false)) {
    api::BodyReader pr(*dp, {"first", "last"});
    (void)pr.integer("first", true, 1, 65535);
    (void)pr.integer("last", true, 1, 65535);
    if (auto st = pr.finish(); !st) {
      for (const auto& f : st.error().fields) br.fail("display_ports." + f.field, f.message);
    }
  }
  if (const api::Json* pl = br.object("placement", false)) {
    api::BodyReader pr(*pl, {"policy", "max_sessions"});
    (void)pr.one_of("policy", false, {"weighted", "round_robin"});
    (void)pr.integer("max_sessions", false, 0, 1000000);
    (void)pr.finish();
  }
  auto st = br.finish();
  if (!st.ok()) {
    check_problem(st.error());
    if (st.error().fields.empty()) fail("a field problem without fields");
    for (const auto& f : st.error().fields) {
      // (An empty field name is fine: {"": 1} has an unknown field called "".)
      if (f.message.empty()) fail("a field error without a message");
    }
  }
  return 0;
}

}  // namespace atrium::fuzz

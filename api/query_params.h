// The query parameters each route takes: one table for every route (method + template), so
// that Api::handle can refuse the others (400 unknown_query_parameter) before a handler runs,
// and a test can hold the table against openapi.yaml (tests/api/contract_test.cpp).
#pragma once

#include <set>
#include <string>
#include <vector>

namespace atrium::api {

struct QueryRule {
  std::string method;
  std::string tmpl;
  std::set<std::string> names;
};

// Every route's entry, in registration-independent order.
const std::vector<QueryRule>& query_rules();

// The query parameters of a route; nullptr when the table has no entry for it (the route then
// takes none: a route added without an entry fails closed, and the contract test fails).
const std::set<std::string>* allowed_query(const std::string& method, const std::string& tmpl);

}  // namespace atrium::api

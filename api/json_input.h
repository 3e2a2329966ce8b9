// Safe JSON input: size, depth and UTF-8 checked before nlohmann parses (PITFALLS.md), then
// field-by-field reading that collects every problem into one 400 with `errors`.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "api/http_types.h"

namespace atrium::api {

inline constexpr size_t kMaxJsonDepth = 32;

// True when `s` is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
bool valid_utf8(std::string_view s);

// Maximum nesting depth of arrays/objects in a JSON text (strings skipped).
size_t json_depth(std::string_view s);

// Parses a request body that must be a JSON object. invalid_argument for empty, non-UTF-8,
// too deep, malformed or non-object input.
Result<Json> parse_object(std::string_view body);

// Reads fields of a JSON object, remembering every problem; finish() reports them all,
// including fields that are not allowed (unknown fields are rejected).
class BodyReader {
 public:
  BodyReader(const Json& obj, std::initializer_list<const char*> allowed);

  std::optional<std::string> str(const char* name, bool required, size_t max_len = 1024,
                                 size_t min_len = 0);
  std::optional<int64_t> integer(const char* name, bool required, int64_t min, int64_t max);
  std::optional<double> number(const char* name, bool required, double min, double max);
  std::optional<bool> boolean(const char* name, bool required);
  std::optional<std::set<std::string>> string_set(const char* name, bool required);
  std::optional<std::string> one_of(const char* name, bool required,
                                    std::initializer_list<const char*> values);
  const Json* object(const char* name, bool required);
  bool has(const char* name) const { return obj_.contains(name); }

  void fail(const std::string& field, const std::string& message);
  Status finish() const;

 private:
  const Json& obj_;
  std::vector<FieldError> errors_;
};

}  // namespace atrium::api

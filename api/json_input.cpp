#include "api/json_input.h"

#include <algorithm>
#include <set>
#include <vector>

namespace atrium::api {

bool valid_utf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

size_t json_depth(std::string_view s) {
  size_t depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      max_depth = std::max(max_depth, ++depth);
    } else if ((c == '}' || c == ']') && depth > 0) {
      --depth;
    }
  }
  return max_depth;
}

Result<Json> parse_object(std::string_view body) {
  if (body.empty()) return invalid("the request body must be a JSON object", "body_required");
  if (!valid_utf8(body)) return invalid("the request body is not valid UTF-8", "invalid_utf8");
  if (json_depth(body) > kMaxJsonDepth) {
    return invalid("the request body nests deeper than " + std::to_string(kMaxJsonDepth) +
                       " levels",
                   "json_too_deep");
  }
  // Duplicate keys: nlohmann keeps the last value, so `"roles"` twice would let the second
  // win past a reader that checked the first. Every object, at every depth, is checked.
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  bool has_duplicate = false;
  Json::parser_callback_t cb = [&](int, Json::parse_event_t ev, Json& parsed) {
    if (ev == Json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (ev == Json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == Json::parse_event_t::key && !keys.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second && !has_duplicate) {
        has_duplicate = true;
        duplicate = k.substr(0, 64);
      }
    }
    return true;
  };
  Json j = Json::parse(body, cb, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid("the request body is not valid JSON", "malformed_json");
  if (has_duplicate) {
    return Error{Code::invalid_argument,
                 "the request body has the key '" + duplicate + "' twice in one object",
                 "duplicate_key",
                 {{duplicate, "appears more than once"}}};
  }
  if (!j.is_object()) return invalid("the request body must be a JSON object", "not_an_object");
  return j;
}

BodyReader::BodyReader(const Json& obj, std::initializer_list<const char*> allowed) : obj_(obj) {
  for (const auto& item : obj_.items()) {
    const std::string& k = item.key();  // not a structured binding: clang 14 cannot capture one
    bool ok = std::any_of(allowed.begin(), allowed.end(), [&](const char* a) { return k == a; });
    if (!ok) errors_.push_back({k, "unknown field"});
  }
}

void BodyReader::fail(const std::string& field, const std::string& message) {
  errors_.push_back({field, message});
}

static const Json* field_of(const Json& obj, const char* name) {
  auto it = obj.find(name);
  return it == obj.end() ? nullptr : &*it;
}

std::optional<std::string> BodyReader::str(const char* name, bool required, size_t max_len,
                                           size_t min_len) {
  const Json* v = field_of(obj_, name);
  if (v == nullptr || v->is_null()) {
    if (required) fail(name, "is required");
    return std::nullopt;
  }
  if (!v->is_string()) {
    fail(name, "must be a string");
    return std::nullopt;
  }
  const auto& s = v->get_ref<const std::string&>();
  if (s.size() > max_len) {
    fail(name, "must be at most " + std::to_string(max_len) + " bytes");
    return std::nullopt;
  }
  if (s.size() < min_len) {
    fail(name, "must be at least " + std::to_string(min_len) + " characters");
    return std::nullopt;
  }
  return s;
}

std::optional<int64_t> BodyReader::integer(const char* name, bool required, int64_t min,
                                           int64_t max) {
  const Json* v = field_of(obj_, name);
  if (v == nullptr || v->is_null()) {
    if (required) fail(name, "is required");
    return std::nullopt;
  }
  if (!v->is_number_integer()) {
    fail(name, "must be an integer");
    return std::nullopt;
  }
  int64_t x;
  if (v->is_number_unsigned()) {
    auto u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) {
      fail(name, "is out of range");
      return std::nullopt;
    }
    x = static_cast<int64_t>(u);
  } else {
    x = v->get<int64_t>();
  }
  if (x < min || x > max) {
    fail(name, "must be between " + std::to_string(min) + " and " + std::to_string(max));
    return std::nullopt;
  }
  return x;
}

std::optional<double> BodyReader::number(const char* name, bool required, double min,
                                         double max) {
  const Json* v = field_of(obj_, name);
  if (v == nullptr || v->is_null()) {
    if (required) fail(name, "is required");
    return std::nullopt;
  }
  if (!v->is_number()) {
    fail(name, "must be a number");
    return std::nullopt;
  }
  double x = v->get<double>();
  if (!(x >= min && x <= max)) {
    fail(name, "must be between " + std::to_string(min) + " and " + std::to_string(max));
    return std::nullopt;
  }
  return x;
}

std::optional<bool> BodyReader::boolean(const char* name, bool required) {
  const Json* v = field_of(obj_, name);
  if (v == nullptr || v->is_null()) {
    if (required) fail(name, "is required");
    return std::nullopt;
  }
  if (!v->is_boolean()) {
    fail(name, "must be true or false");
    return std::nullopt;
  }
  return v->get<bool>();
}

std::optional<std::set<std::string>> BodyReader::string_set(const char* name, bool required) {
  const Json* v = field_of(obj_, name);
  if (v == nullptr || v->is_null()) {
    if (required) fail(name, "is required");
    return std::nullopt;
  }
  if (!v->is_array() || v->size() > 64) {
    fail(name, "must be an array of at most 64 strings");
    return std::nullopt;
  }
  std::set<std::string> out;
  for (const auto& e : *v) {
    if (!e.is_string()) {
      fail(name, "must contain only strings");
      return std::nullopt;
    }
    out.insert(e.get<std::string>());
  }
  return out;
}

std::optional<std::string> BodyReader::one_of(const char* name, bool required,
                                              std::initializer_list<const char*> values) {
  auto s = str(name, required, 64);
  if (!s) return std::nullopt;
  for (const char* v : values) {
    if (*s == v) return s;
  }
  std::string allowed;
  for (const char* v : values) allowed += (allowed.empty() ? "" : ", ") + std::string(v);
  fail(name, "must be one of " + allowed);
  return std::nullopt;
}

const Json* BodyReader::object(const char* name, bool required) {
  const Json* v = field_of(obj_, name);
  if (v == nullptr || v->is_null()) {
    if (required) fail(name, "is required");
    return nullptr;
  }
  if (!v->is_object()) {
    fail(name, "must be an object");
    return nullptr;
  }
  return v;
}

Status BodyReader::finish() const {
  if (errors_.empty()) return Status::Ok();
  std::string msg = "the request body has " + std::to_string(errors_.size()) + " problem" +
                    (errors_.size() == 1 ? "" : "s") + ": ";
  for (size_t i = 0; i < errors_.size(); ++i) {
    msg += (i ? "; " : "") + errors_[i].field + " " + errors_[i].message;
  }
  return Error{Code::invalid_argument, msg, "invalid_body", errors_};
}

}  // namespace atrium::api

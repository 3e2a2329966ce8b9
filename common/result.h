// Errors as values: one small Error type and Result<T>, used across every layer.
// Library failures (RocksDB Status, libvirt -1, json exceptions) are converted where called.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace atrium {

enum class Code {
  ok = 0,
  invalid_argument,     // 400: malformed or semantically invalid input
  unauthenticated,      // 401
  permission_denied,    // 403
  not_found,            // 404
  already_exists,       // 409: duplicate
  failed_precondition,  // 409: a domain rule refuses the command
  conflict,             // 409: wrong expected stream version
  version_mismatch,     // 412: If-Match did not match
  too_large,            // 413
  unprocessable,        // 422: e.g. idempotency key reused with another body
  too_many_requests,    // 429: a rate limit (with Retry-After where the API knows it)
  unavailable,          // 503: queue full, store failing, not ready
  internal,             // 500: a bug; never for bad input
};

const char* code_name(Code c);

// A field-level problem, reported in problem+json "errors".
struct FieldError {
  std::string field;
  std::string message;
};

struct Error {
  Code code = Code::internal;
  std::string message;
  // A stable machine-readable reason, e.g. "application_not_on_server".
  std::string reason;
  std::vector<FieldError> fields;

  static Error make(Code c, std::string msg, std::string reason = {}) {
    return Error{c, std::move(msg), std::move(reason), {}};
  }
};

inline Error invalid(std::string msg, std::string reason = "invalid_argument") {
  return Error::make(Code::invalid_argument, std::move(msg), std::move(reason));
}
inline Error not_found(std::string msg) {
  return Error::make(Code::not_found, std::move(msg), "not_found");
}
inline Error refused(std::string reason, std::string msg) {
  return Error::make(Code::failed_precondition, std::move(msg), std::move(reason));
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const { assert(!ok()); return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

// Result<void> equivalent.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : err_(std::move(error)) {}  // NOLINT: implicit by design
  static Status Ok() { return Status(); }
  bool ok() const { return !err_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const { assert(!ok()); return *err_; }

 private:
  std::optional<Error> err_;
};

inline const char* code_name(Code c) {
  switch (c) {
    case Code::ok: return "ok";
    case Code::invalid_argument: return "invalid_argument";
    case Code::unauthenticated: return "unauthenticated";
    case Code::permission_denied: return "permission_denied";
    case Code::not_found: return "not_found";
    case Code::already_exists: return "already_exists";
    case Code::failed_precondition: return "failed_precondition";
    case Code::conflict: return "conflict";
    case Code::version_mismatch: return "version_mismatch";
    case Code::too_large: return "too_large";
    case Code::unprocessable: return "unprocessable";
    case Code::too_many_requests: return "rate_limited";
    case Code::unavailable: return "unavailable";
    case Code::internal: return "internal";
  }
  return "internal";
}

}  // namespace atrium

// Internals of the PostgreSQL store (not part of the public API): one libpq connection with
// errors as values, binary parameters and results, and the binary array format that lets one
// statement carry a whole batch of events.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace atrium::eventstore::pg {

// SQLSTATEs the store raises itself (atrium_append) and a few of PostgreSQL's.
inline constexpr const char* kFenced = "AT001";           // term or position moved: not the writer
inline constexpr const char* kVersionConflict = "AT002";  // a stream is not at the assumed version
inline constexpr const char* kNoPosition = "AT003";       // import: positions do not continue

// A result, cleared when it dies.
class Res {
 public:
  Res() = default;
  explicit Res(PGresult* r) : r_(r, &PQclear) {}
  PGresult* get() const { return r_.get(); }
  int rows() const { return r_ ? PQntuples(r_.get()) : 0; }
  bool null(int row, int col) const { return PQgetisnull(r_.get(), row, col) != 0; }
  std::string_view bytes(int row, int col) const {
    return {PQgetvalue(r_.get(), row, col), static_cast<size_t>(PQgetlength(r_.get(), row, col))};
  }
  // Binary-format integers (int8, int4, bool) and text-format ones (when the column is text).
  int64_t i64(int row, int col) const;
  int32_t i32(int row, int col) const;
  bool boolean(int row, int col) const { return bytes(row, col) == std::string_view("\x01", 1); }

 private:
  std::shared_ptr<PGresult> r_;
};

// Parameters of one statement, all sent in binary format.
class Params {
 public:
  Params& i64(int64_t v);
  Params& i32(int32_t v);
  Params& bytes(std::string_view v);  // bytea or text
  Params& null();
  // One-dimensional arrays (PostgreSQL's binary array format).
  Params& i64_array(const std::vector<int64_t>& v);
  Params& i32_array(const std::vector<int32_t>& v);
  Params& bytes_array(const std::vector<std::string_view>& v);  // bytea[]

  int count() const { return static_cast<int>(values_.size()); }
  const char* const* values() const { return ptrs_.data(); }
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }
  const Oid* types() const { return types_.data(); }

 private:
  Params& add(std::string bytes, Oid type, bool is_null = false);
  std::vector<std::unique_ptr<std::string>> values_;  // stable addresses
  std::vector<const char*> ptrs_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
  std::vector<Oid> types_;
};

// One connection. Not thread-safe: callers hold it alone. A statement that fails because the
// connection broke marks it broken; the next exec() reconnects first (libpq's multi-host
// strings with target_session_attrs=read-write find the new primary that way).
class Conn {
 public:
  explicit Conn(std::string conninfo, std::string setup_sql = {})
      : conninfo_(std::move(conninfo)), setup_(std::move(setup_sql)) {}
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  // Connects if needed. unavailable with libpq's message (the password never appears in it).
  Status ensure();
  // Runs one statement (binary results). Errors: unavailable when the connection failed
  // (it is then dropped), else the code mapped from the SQLSTATE; Error::reason is the
  // SQLSTATE for errors the server raised.
  Result<Res> exec(const std::string& sql, const Params& p = Params());
  // Runs statements with no parameters in text mode (schema, LISTEN, SET).
  Status run(const std::string& sql);
  // Drops the connection (the next call reconnects).
  void reset();
  bool connected() const { return c_ != nullptr && PQstatus(c_) == CONNECTION_OK; }
  PGconn* raw() { return c_; }
  // Times the connection was (re)made, for tests and logs.
  uint64_t connects() const { return connects_; }

 private:
  Result<Res> check(PGresult* r);
  std::string conninfo_;
  std::string setup_;
  PGconn* c_ = nullptr;
  uint64_t connects_ = 0;
};

// libpq's connection string without any password (for messages and logs).
std::string redact(const std::string& conninfo);

}  // namespace atrium::eventstore::pg

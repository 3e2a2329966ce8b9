// One libpq connection with errors as values (eventstore/pg_conn.h).
#include "eventstore/pg_conn.h"

#include <cstring>

#include "eventstore/internal.h"

namespace atrium::eventstore::pg {
namespace {

constexpr Oid kInt4 = 23;
constexpr Oid kInt8 = 20;
constexpr Oid kBytea = 17;

void put32(std::string& out, uint32_t v) {
  char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
               static_cast<char>(v)};
  out.append(b, 4);
}

void put64(std::string& out, uint64_t v) {
  char b[8];
  detail::put_be64(b, v);
  out.append(b, 8);
}

// The binary array header: one dimension of n elements of `type`, no NULLs, lower bound 1.
std::string array_header(Oid type, size_t n) {
  std::string out;
  if (n == 0) {
    put32(out, 0);  // no dimensions
    put32(out, 0);
    put32(out, type);
    return out;
  }
  put32(out, 1);
  put32(out, 0);
  put32(out, type);
  put32(out, static_cast<uint32_t>(n));
  put32(out, 1);
  return out;
}

Code code_of(std::string_view sqlstate) {
  if (sqlstate == kFenced) return Code::failed_precondition;
  if (sqlstate == kVersionConflict) return Code::conflict;
  if (sqlstate == kNoPosition) return Code::failed_precondition;
  if (sqlstate == "23505") return Code::already_exists;  // unique_violation
  // Class 08 (connection), 53 (resources: disk full, too many connections), 57 (operator
  // intervention: shutdown, cancel), 40 (serialization, deadlock), 25006 (read-only
  // transaction: a standby), 55P03 (lock not available): all transient.
  if (sqlstate.substr(0, 2) == "08" || sqlstate.substr(0, 2) == "53" ||
      sqlstate.substr(0, 2) == "57" || sqlstate.substr(0, 2) == "40" || sqlstate == "25006" ||
      sqlstate == "55P03" || sqlstate.substr(0, 2) == "58") {
    return Code::unavailable;
  }
  if (sqlstate.substr(0, 2) == "22") return Code::invalid_argument;
  if (sqlstate.substr(0, 2) == "XX") return Code::internal;
  return Code::internal;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

int64_t Res::i64(int row, int col) const {
  std::string_view b = bytes(row, col);
  if (PQfformat(r_.get(), col) == 0) return std::strtoll(std::string(b).c_str(), nullptr, 10);
  if (b.size() == 8) return static_cast<int64_t>(detail::get_be64(b.data()));
  if (b.size() == 4) return i32(row, col);
  return 0;
}

int32_t Res::i32(int row, int col) const {
  std::string_view b = bytes(row, col);
  if (PQfformat(r_.get(), col) == 0) return std::atoi(std::string(b).c_str());
  if (b.size() != 4) return 0;
  uint32_t v = 0;
  for (char c : b) v = (v << 8) | static_cast<uint8_t>(c);
  return static_cast<int32_t>(v);
}

Params& Params::add(std::string bytes, Oid type, bool is_null) {
  values_.push_back(std::make_unique<std::string>(std::move(bytes)));
  ptrs_.push_back(is_null ? nullptr : values_.back()->data());
  lengths_.push_back(static_cast<int>(values_.back()->size()));
  formats_.push_back(1);
  types_.push_back(type);
  return *this;
}

Params& Params::i64(int64_t v) {
  std::string b;
  put64(b, static_cast<uint64_t>(v));
  return add(std::move(b), kInt8);
}

Params& Params::i32(int32_t v) {
  std::string b;
  put32(b, static_cast<uint32_t>(v));
  return add(std::move(b), kInt4);
}

Params& Params::bytes(std::string_view v) {
  return add(std::string(v), 0);
}

Params& Params::null() {
  return add({}, 0, true);
}

Params& Params::i64_array(const std::vector<int64_t>& v) {
  std::string b = array_header(kInt8, v.size());
  b.reserve(b.size() + v.size() * 12);
  for (int64_t x : v) {
    put32(b, 8);
    put64(b, static_cast<uint64_t>(x));
  }
  return add(std::move(b), 1016);  // int8[]
}

Params& Params::i32_array(const std::vector<int32_t>& v) {
  std::string b = array_header(kInt4, v.size());
  for (int32_t x : v) {
    put32(b, 4);
    put32(b, static_cast<uint32_t>(x));
  }
  return add(std::move(b), 1007);  // int4[]
}

Params& Params::bytes_array(const std::vector<std::string_view>& v) {
  size_t total = 0;
  for (auto s : v) total += s.size() + 4;
  std::string b = array_header(kBytea, v.size());
  b.reserve(b.size() + total);
  for (auto s : v) {
    put32(b, static_cast<uint32_t>(s.size()));
    b.append(s.data(), s.size());
  }
  return add(std::move(b), 1001);  // bytea[]
}

Conn::~Conn() {
  reset();
}

void Conn::reset() {
  if (c_ != nullptr) PQfinish(c_);
  c_ = nullptr;
}

Status Conn::ensure() {
  if (c_ != nullptr && PQstatus(c_) == CONNECTION_OK) return Status::Ok();
  reset();
  // Defaults first; the caller's connection string (expanded from dbname) overrides them.
  const char* keys[] = {
      "connect_timeout",  "keepalives",       "keepalives_idle", "keepalives_interval",
      "keepalives_count", "application_name", "dbname",          nullptr};
  const char* vals[] = {"5", "1", "5", "2", "3", "atriumd", conninfo_.c_str(), nullptr};
  c_ = PQconnectdbParams(keys, vals, 1);
  if (c_ == nullptr || PQstatus(c_) != CONNECTION_OK) {
    std::string msg = c_ != nullptr ? trim(PQerrorMessage(c_)) : "out of memory";
    reset();
    return Error::make(Code::unavailable, "cannot connect to PostgreSQL: " + msg,
                       "storage_unavailable");
  }
  ++connects_;
  // Quiet: notices (e.g. "relation already exists, skipping") are not for the broker's log.
  PQsetNoticeProcessor(
      c_, [](void*, const char*) {}, nullptr);
  if (!setup_.empty()) {
    PGresult* r = PQexec(c_, setup_.c_str());
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    std::string msg = ok ? "" : trim(PQresultErrorMessage(r));
    PQclear(r);
    if (!ok) {
      reset();
      return Error::make(Code::unavailable, "PostgreSQL session setup failed: " + msg,
                         "storage_unavailable");
    }
  }
  return Status::Ok();
}

Result<Res> Conn::check(PGresult* r) {
  ExecStatusType st = r != nullptr ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return Res(r);
  std::string sqlstate;
  std::string msg;
  if (r != nullptr) {
    const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (s != nullptr) sqlstate = s;
    const char* m = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    msg = m != nullptr ? m : trim(PQresultErrorMessage(r));
    PQclear(r);
  } else {
    msg = c_ != nullptr ? trim(PQerrorMessage(c_)) : "no connection";
  }
  if (c_ == nullptr || PQstatus(c_) != CONNECTION_OK) {
    reset();
    return Error::make(Code::unavailable, "PostgreSQL connection lost: " + msg,
                       "storage_unavailable");
  }
  Code code = sqlstate.empty() ? Code::unavailable : code_of(sqlstate);
  if (code == Code::unavailable) {
    // A server shutting down or a standby: start from a fresh connection next time.
    reset();
    return Error::make(code, "PostgreSQL: " + msg + (sqlstate.empty() ? "" : " (" + sqlstate + ")"),
                       "storage_unavailable");
  }
  return Error::make(code, msg, sqlstate);
}

Result<Res> Conn::exec(const std::string& sql, const Params& p) {
  if (Status s = ensure(); !s) return s.error();
  PGresult* r =
      PQexecParams(c_, sql.c_str(), p.count(), p.types(), p.values(), p.lengths(), p.formats(), 1);
  return check(r);
}

Status Conn::run(const std::string& sql) {
  if (Status s = ensure(); !s) return s;
  auto r = check(PQexec(c_, sql.c_str()));
  if (!r.ok()) return r.error();
  return Status::Ok();
}

std::string redact(const std::string& conninfo) {
  // URL form: postgresql://user:secret@host/db -> postgresql://user:***@host/db
  std::string s = conninfo;
  auto scheme = s.find("://");
  if (scheme != std::string::npos) {
    auto at = s.find('@', scheme + 3);
    auto colon = s.find(':', scheme + 3);
    if (at != std::string::npos && colon != std::string::npos && colon < at) {
      s.replace(colon + 1, at - colon - 1, "***");
    }
    auto pw = s.find("password=");
    if (pw != std::string::npos) {
      auto end = s.find('&', pw);
      s.replace(pw + 9, (end == std::string::npos ? s.size() : end) - pw - 9, "***");
    }
    return s;
  }
  // Keyword form: password=secret
  auto pw = s.find("password");
  while (pw != std::string::npos) {
    auto eq = s.find('=', pw);
    if (eq == std::string::npos) break;
    size_t start = eq + 1;
    while (start < s.size() && s[start] == ' ') ++start;
    size_t end = start;
    if (end < s.size() && s[end] == '\'') {
      end = s.find('\'', end + 1);
      end = end == std::string::npos ? s.size() : end + 1;
    } else {
      while (end < s.size() && s[end] != ' ') ++end;
    }
    s.replace(start, end - start, "***");
    pw = s.find("password", start + 3);
  }
  return s;
}

}  // namespace atrium::eventstore::pg

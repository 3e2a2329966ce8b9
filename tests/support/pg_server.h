// A throwaway PostgreSQL for tests (tools/pg_test.sh): on 127.0.0.1, a free port, a
// temporary directory; as the unprivileged `postgres` user when the tests run as root.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "support/test_support.h"

namespace atrium::testing {

class PgServer {
 public:
  // Starts a fresh cluster; ok() false (why() says so) when it could not.
  PgServer();
  ~PgServer();
  PgServer(const PgServer&) = delete;
  PgServer& operator=(const PgServer&) = delete;

  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }
  uint16_t port() const { return port_; }
  std::string dir() const { return dir_.str(); }
  // A libpq keyword connection string to database `db` (search_path = schema when set).
  std::string conninfo(const std::string& schema = "", const std::string& db = "postgres") const;
  // Creates a new empty schema and returns a connection string that uses it: one store each.
  std::string fresh_schema();
  // Runs SQL as the superuser; the exit code of psql.
  int psql(const std::string& sql) const;
  // The unaligned output of one query (trimmed) on database `db`.
  std::string query(const std::string& sql, const std::string& db = "postgres") const;
  void stop(const std::string& mode = "fast");
  bool start();  // again, after stop()

 private:
  TempDir dir_;
  uint16_t port_ = 0;
  bool ok_ = false;
  std::string why_;
  int schemas_ = 0;
};

// True when the PostgreSQL server binaries are installed (tools/pg_test.sh check).
bool pg_binaries_present();

// One server for the whole test process, started on first use (nullptr with a MESSAGE saying
// why when the binaries are absent; a FAIL when they exist but it would not start).
PgServer* shared_pg();

}  // namespace atrium::testing

#include "support/pg_server.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include "support/child_daemon.h"

namespace atrium::testing {
namespace {

std::string script() {
  return std::string(ATRIUM_SOURCE_DIR) + "/tools/pg_test.sh";
}

}  // namespace

bool pg_binaries_present() {
  return run_command(script() + " check >/dev/null 2>&1") == 0;
}

PgServer::PgServer() {
  if (!pg_binaries_present()) {
    why_ = "PostgreSQL server binaries are absent (apt-get install postgresql)";
    return;
  }
  port_ = child::free_port();
  ok_ = start();
}

bool PgServer::start() {
  const std::string log = dir_.str() + "-start.log";
  int rc = run_command(script() + " start " + dir_.str() + " " + std::to_string(port_) + " > " +
                       log + " 2>&1");
  if (rc != 0) {
    why_ = "tools/pg_test.sh start failed (" + std::to_string(rc) + "): " + child::slurp(log) +
           child::slurp(dir_.str() + "/log");
  }
  ::unlink(log.c_str());
  ok_ = rc == 0;
  return ok_;
}

PgServer::~PgServer() {
  stop("immediate");
}

void PgServer::stop(const std::string& mode) {
  if (port_ == 0) return;
  run_command(script() + " stop " + dir_.str() + " " + mode + " >/dev/null 2>&1");
}

std::string PgServer::conninfo(const std::string& schema, const std::string& db) const {
  std::string s = "host=127.0.0.1 port=" + std::to_string(port_) + " user=postgres dbname=" + db;
  if (!schema.empty()) s += " options='-c search_path=" + schema + "'";
  return s;
}

int PgServer::psql(const std::string& sql) const {
  return run_command(script() + " psql " + dir_.str() + " " + std::to_string(port_) +
                     " -qAt -d postgres -c \"" + sql + "\" >/dev/null 2>&1");
}

std::string PgServer::query(const std::string& sql, const std::string& db) const {
  TempDir out;
  const std::string file = out.str() + "/out";
  run_command(script() + " psql " + dir_.str() + " " + std::to_string(port_) + " -qAt -d " + db +
              " -c \"" + sql + "\" > " + file + " 2>&1");
  std::string s = child::slurp(file);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string PgServer::fresh_schema() {
  const std::string name = "t" + std::to_string(::getpid()) + "_" + std::to_string(++schemas_);
  REQUIRE_MESSAGE(psql("CREATE SCHEMA " + name) == 0, "CREATE SCHEMA " << name << " failed");
  return conninfo(name);
}

PgServer* shared_pg() {
  static std::unique_ptr<PgServer> server;
  static bool tried = false;
  if (!tried) {
    tried = true;
    server = std::make_unique<PgServer>();
  }
  if (!server->ok()) {
    if (!pg_binaries_present()) {
      MESSAGE("skipped: " << server->why());
      return nullptr;
    }
    FAIL("PostgreSQL did not start: " << server->why());
  }
  return server.get();
}

}  // namespace atrium::testing

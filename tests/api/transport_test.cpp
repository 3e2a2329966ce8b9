// Transport-level behaviour: TLS, bursts of connections, Prometheus format, body limits.
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <future>

#include "api/daemon.h"
#include "support/test_support.h"

using atrium::testing::run_command;
using atrium::testing::TempDir;
using atrium::testing::TestBroker;

TEST_CASE("TLS: with --tls-cert/--tls-key the API answers over HTTPS") {
  TempDir certs;
  std::string key = certs.str() + "/key.pem", cert = certs.str() + "/cert.pem";
  int rc = run_command("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -keyout " +
                       key + " -out " + cert + " > /dev/null 2>&1");
  if (rc != 0) {
    MESSAGE("SKIPPED: openssl is not available to make a test certificate");
    return;
  }
  TestBroker b([&](atrium::api::DaemonConfig& c) {
    c.api.tls_cert = cert;
    c.api.tls_key = key;
  });
  std::string out = certs.str() + "/out.json";
  std::string cmd = "curl -s --cacert " + cert + " -o " + out + " -w '%{http_code}' https://127.0.0.1:" +
                    std::to_string(b.port()) + "/healthz > " + certs.str() + "/code.txt";
  REQUIRE(run_command(cmd) == 0);
  std::ifstream code(certs.str() + "/code.txt");
  std::string status;
  code >> status;
  CHECK(status == "200");
  // Plain HTTP to a TLS port gets no HTTP answer.
  CHECK(atrium::testing::http(b.port(), "GET", "/healthz", "", {}, 2000).status == 0);
}

TEST_CASE("a burst of 300 concurrent connections is served without errors") {
  TestBroker b;
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 300; ++i) {
    fs.push_back(std::async(std::launch::async, [&] {
      return b.call("GET", "/v1/users?limit=1").status;
    }));
  }
  int ok = 0;
  for (auto& f : fs) ok += f.get() == 200;
  CHECK(ok == 300);
}

TEST_CASE("/metrics passes promtool check metrics") {
  if (run_command("command -v promtool > /dev/null") != 0) {
    MESSAGE("SKIPPED: promtool not installed (Debian package prometheus; tools/deps.sh installs it)");
    return;
  }
  TestBroker b;
  REQUIRE(b.call("POST", "/v1/users", {{"name", "m"}}).status == 201);
  REQUIRE(b.call("GET", "/v1/nope").status == 404);
  auto m = b.call("GET", "/metrics", nullptr, "");
  REQUIRE(m.status == 200);
  TempDir d;
  std::string f = d.str() + "/metrics.txt";
  std::ofstream(f) << m.body;
  CHECK(run_command("promtool check metrics < " + f + " > " + d.str() + "/lint.txt 2>&1") == 0);
  std::ifstream lint(d.str() + "/lint.txt");
  std::string problems((std::istreambuf_iterator<char>(lint)), {});
  CHECK_MESSAGE(problems.empty(), problems);
}

TEST_CASE("body limit: just under is read, just over is 413 problem+json") {
  TestBroker b([](atrium::api::DaemonConfig& c) { c.api.max_body_bytes = 4096; });
  std::string name(100, 'n');
  std::string prefix = "{\"name\":\"" + name + "\"";
  std::string under = prefix + std::string(4096 - prefix.size() - 1, ' ') + "}";
  REQUIRE(under.size() == 4096);
  auto ok = atrium::testing::http(b.port(), "POST", "/v1/users", under,
                                  {{"Authorization", std::string("Bearer ") + TestBroker::kAdminToken}});
  CHECK(ok.status == 201);
  std::string over = under + " ";
  auto big = atrium::testing::http(b.port(), "POST", "/v1/users", over,
                                   {{"Authorization", std::string("Bearer ") + TestBroker::kAdminToken}});
  CHECK(big.status == 413);
  CHECK(big.header("content-type") == "application/problem+json");
}

// Transport-level behaviour: TLS, bursts of connections, Prometheus format, body limits,
// persistent connections (RFC 9112 section 9), closing, idle and request timeouts, framing.
// Attack-style cases (thousands of sockets, huge bodies, bad Content-Length) are in
// attack_transport_test.cpp.
#include <doctest/doctest.h>

#include <sys/resource.h>

#include <cstdio>
#include <fstream>
#include <future>
#include <thread>

#include "api/daemon.h"
#include "support/test_support.h"

using atrium::testing::RawConnection;
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

namespace {

std::string get(const std::string& path, const std::string& extra = "",
                const std::string& version = "HTTP/1.1") {
  return "GET " + path + " " + version + "\r\nHost: 127.0.0.1\r\n" + extra + "\r\n";
}

}  // namespace

TEST_CASE("keep-alive: two requests without a Connection header are answered on one connection") {
  TestBroker b;
  RawConnection c(b.port());
  REQUIRE(c.ok());
  REQUIRE(c.send(get("/healthz")));
  auto first = c.read_reply();
  CHECK(first.status == 200);
  CHECK(first.header("connection").empty());  // HTTP/1.1 persists by default (RFC 9112 9.3)
  REQUIRE(c.send(get("/v1/users?limit=1",
                     std::string("Authorization: Bearer ") + TestBroker::kAdminToken + "\r\n")));
  auto second = c.read_reply();
  CHECK(second.status == 200);
  CHECK(second.json()["items"].is_array());
  CHECK_FALSE(c.closed_within(100));
}

TEST_CASE("keep-alive: curl reuses the connection for two URLs") {
  if (run_command("command -v curl > /dev/null") != 0) {
    MESSAGE("SKIPPED: curl not installed");
    return;
  }
  TestBroker b;
  TempDir d;
  std::string url = "http://127.0.0.1:" + std::to_string(b.port()) + "/healthz";
  REQUIRE(run_command("curl -sv -o /dev/null -o /dev/null " + url + " " + url + " 2> " + d.str() +
                      "/curl.txt") == 0);
  std::ifstream in(d.str() + "/curl.txt");
  std::string log((std::istreambuf_iterator<char>(in)), {});
  CHECK_MESSAGE(log.find("Re-using existing connection") != std::string::npos, log);
  CHECK(log.find("Connection: Close") == std::string::npos);
}

TEST_CASE("Connection: close is answered with Connection: close and the socket is closed") {
  TestBroker b;
  RawConnection c(b.port());
  REQUIRE(c.send(get("/healthz", "Connection: close\r\n")));
  auto r = c.read_reply();
  CHECK(r.status == 200);
  CHECK(r.header("connection") == "close");
  CHECK(c.closed_within(1000));  // EOF right after the answer, not minutes later
}

TEST_CASE("a request pipelined after Connection: close gets no answer") {
  TestBroker b;
  RawConnection c(b.port());
  REQUIRE(c.send(get("/healthz", "Connection: close\r\n") + get("/healthz")));
  CHECK(c.read_reply().status == 200);
  CHECK(c.read_reply(1000).status == 0);
  CHECK(c.closed_within(1000));
}

TEST_CASE("HTTP/1.0 closes unless it asks for keep-alive") {
  TestBroker b;
  {
    RawConnection c(b.port());
    REQUIRE(c.send(get("/healthz", "", "HTTP/1.0")));
    auto r = c.read_reply();
    CHECK(r.status == 200);
    CHECK(r.header("connection") == "close");
    CHECK(c.closed_within(1000));
  }
  RawConnection c(b.port());
  REQUIRE(c.send(get("/healthz", "Connection: keep-alive\r\n", "HTTP/1.0")));
  auto r = c.read_reply();
  CHECK(r.status == 200);
  CHECK(r.header("connection") == "keep-alive");
  REQUIRE(c.send(get("/healthz", "Connection: keep-alive\r\n", "HTTP/1.0")));
  CHECK(c.read_reply().status == 200);
}

TEST_CASE("pipelined requests are all answered, in order") {
  TestBroker b;
  RawConnection c(b.port());
  std::string auth = std::string("Authorization: Bearer ") + TestBroker::kAdminToken + "\r\n";
  std::string body = R"({"name":"piped"})";
  REQUIRE(c.send(get("/healthz") +
                 "POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth +
                 "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body +
                 get("/v1/users?limit=10", auth) + get("/nope")));
  CHECK(c.read_reply().status == 200);
  CHECK(c.read_reply().status == 201);
  auto list = c.read_reply();
  CHECK(list.status == 200);
  CHECK(list.body.find("piped") != std::string::npos);
  CHECK(c.read_reply().status == 404);
}

TEST_CASE("while draining, answers carry Connection: close and the connection is closed") {
  TestBroker b;
  RawConnection c(b.port());
  REQUIRE(c.send(get("/healthz")));
  REQUIRE(c.read_reply().status == 200);
  b.daemon().api().begin_drain();
  REQUIRE(c.send(get("/v1/users")));
  auto r = c.read_reply();
  CHECK(r.status == 503);
  CHECK(r.header("connection") == "close");
  CHECK(c.closed_within(1000));
}

TEST_CASE("an idle persistent connection is closed after the keep-alive timeout") {
  TestBroker b([](atrium::api::DaemonConfig& c) {
    c.api.keepalive_timeout = std::chrono::milliseconds(1000);
  });
  RawConnection c(b.port());
  REQUIRE(c.send(get("/healthz")));
  REQUIRE(c.read_reply().status == 200);
  CHECK_FALSE(c.closed_within(500));
  CHECK(c.closed_within(2000));
  // A connection that never sends anything is idle too.
  RawConnection silent(b.port());
  CHECK(silent.closed_within(3000));
}

TEST_CASE("a request waiting behind a long-poll on the same worker is answered, not reset") {
  // One worker: the long-poll holds it past the keep-alive timeout, while the warmed
  // connection's next request sits unread in its socket. The idle timer used to fire first
  // when the worker came back and reset that connection without an answer.
  TestBroker b([](atrium::api::DaemonConfig& c) {
    c.api.threads = 1;
    c.api.keepalive_timeout = std::chrono::milliseconds(1000);
    c.api.sse_wait = std::chrono::milliseconds(2500);
  });
  RawConnection warm(b.port());
  REQUIRE(warm.send(get("/healthz")));
  REQUIRE(warm.read_reply().status == 200);
  RawConnection poll(b.port());
  REQUIRE(poll.send(get("/v1/events/stream?after=999999",
                        std::string("Authorization: Bearer ") + TestBroker::kAdminToken + "\r\n")));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  REQUIRE(warm.send(get("/healthz")));
  auto r = warm.read_reply(6000);
  CHECK(r.status == 200);
  CHECK(poll.read_reply(6000).status == 200);
}

TEST_CASE("a request whose head does not arrive within the header timeout gets 408 and a close") {
  TestBroker b(
      [](atrium::api::DaemonConfig& c) { c.api.header_timeout = std::chrono::milliseconds(1000); });
  RawConnection c(b.port());
  REQUIRE(c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n"));  // no empty line
  auto r = c.read_reply(3000);
  CHECK(r.status == 408);
  CHECK(r.header("content-type") == "application/problem+json");
  CHECK(r.json()["reason"] == "request_timeout");
  CHECK(c.closed_within(3000));
}

TEST_CASE("a body that stalls past the body timeout gets 408 and a close") {
  TestBroker b(
      [](atrium::api::DaemonConfig& c) { c.api.body_timeout = std::chrono::milliseconds(1000); });
  RawConnection c(b.port());
  REQUIRE(c.send("POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"na"));
  auto r = c.read_reply(3000);
  CHECK(r.status == 408);
  CHECK(c.closed_within(3000));
}

TEST_CASE("Expect: 100-continue is answered with 100 Continue before the body is sent") {
  TestBroker b;
  RawConnection c(b.port());
  std::string body = R"({"name":"cont"})";
  REQUIRE(c.send(
      "POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Authorization: Bearer " +
      std::string(TestBroker::kAdminToken) +
      "\r\nExpect: 100-continue\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n"));
  auto cont = c.read_reply(2000);
  CHECK(cont.status == 100);
  REQUIRE(c.send(body));
  CHECK(c.read_reply().status == 201);
}

TEST_CASE("a chunked body sent in pieces across reads is decoded, extensions and trailers too") {
  TestBroker b;
  RawConnection c(b.port());
  std::string body = R"({"name":"chunky"})";
  std::string head =
      "POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Authorization: Bearer " +
      std::string(TestBroker::kAdminToken) + "\r\nTransfer-Encoding: chunked\r\n\r\n";
  REQUIRE(body.size() == 17);  // chunks of 5 and 0xc bytes
  std::string wire = head + "5;ext=1\r\n" + body.substr(0, 5) + "\r\nc\r\n" + body.substr(5) +
                     "\r\n0\r\nX-Trailer: yes\r\n\r\n";
  for (char ch : wire) {  // one byte per write: every boundary is a read boundary
    REQUIRE(c.send(std::string(1, ch)));
  }
  auto r = c.read_reply();
  CHECK(r.status == 201);
  CHECK(r.json()["name"] == "chunky");
  REQUIRE(c.send(get("/healthz")));  // the framing is back in step for the next request
  CHECK(c.read_reply().status == 200);
}

TEST_CASE("header values Pistache's typed parsers reject do not turn into a 500") {
  TestBroker b;
  for (std::string h : {"Cache-Control: max-age=abc", "Host: a:99999999999", "Date: garbage",
                        "Accept: ;;;", "Content-Type: /"}) {
    RawConnection c(b.port());
    REQUIRE(c.send(get("/healthz", h + "\r\n")));
    auto r = c.read_reply();
    CHECK_MESSAGE(r.status == 200, h);
  }
}

TEST_CASE("the connection cap is derived from RLIMIT_NOFILE and leaves a reserve") {
  TestBroker b;
  rlimit rl{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &rl) == 0);
  size_t cap = b.daemon().http_server().max_connections();
  CHECK(cap > 0);
  CHECK(cap + 128 < rl.rlim_cur);
  CHECK(b.daemon().http_server().max_connections_per_ip() == 512);
}

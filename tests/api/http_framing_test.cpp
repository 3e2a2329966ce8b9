// The request framing checked before Pistache's parser (api/http_framing.h), pure.
#include "api/http_framing.h"

#include <doctest/doctest.h>

#include <vector>

using namespace atrium::api::framing;

namespace {

RequestHead ok(const std::string& head, uint64_t max = 1 << 20) {
  auto r = parse_head(head, max);
  if (auto* ref = std::get_if<Refusal>(&r)) FAIL("refused: " << ref->reason << ": " << ref->detail);
  return std::get<RequestHead>(r);
}

Refusal refused(const std::string& head, uint64_t max = 1 << 20) {
  auto r = parse_head(head, max);
  REQUIRE_MESSAGE(std::holds_alternative<Refusal>(r), head);
  return std::get<Refusal>(r);
}

}  // namespace

TEST_CASE("parse_head: request line, headers, persistence") {
  auto h = ok("GET /v1/users?limit=1 HTTP/1.1\r\nHost: x\r\nX-A:  spaced value \t\r\n\r\n");
  CHECK(h.method == "GET");
  CHECK(h.target == "/v1/users?limit=1");
  CHECK(h.path() == "/v1/users");
  CHECK(h.minor_version == 1);
  REQUIRE(h.headers.size() == 2);
  CHECK(h.headers[1].first == "x-a");
  CHECK(h.headers[1].second == "spaced value");
  CHECK(h.persistent());
  CHECK_FALSE(ok("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").persistent());
  CHECK_FALSE(ok("GET / HTTP/1.0\r\n\r\n").persistent());
  CHECK(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").persistent());
  CHECK(ok("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n").expect_continue);
}

TEST_CASE("parse_head: Content-Length") {
  CHECK(ok("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").content_length == 0u);
  CHECK(ok("POST / HTTP/1.1\r\ncontent-length:  42 \r\n\r\n").content_length == 42u);
  CHECK(ok("POST / HTTP/1.1\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n").content_length ==
        7u);
  CHECK_FALSE(ok("GET / HTTP/1.1\r\n\r\n").content_length.has_value());
  for (std::string v :
       {"-5", "abc", "+5", "0x10", "5 5", "", ",", "5, 6", "1e3", "99999999999999999999"}) {
    CHECK_MESSAGE(refused("POST / HTTP/1.1\r\nContent-Length: " + v + "\r\n\r\n").reason ==
                      "invalid_content_length",
                  v);
  }
  auto big = refused("POST / HTTP/1.1\r\nContent-Length: 1025\r\n\r\n", 1024);
  CHECK(big.status == 413);
  CHECK(ok("POST / HTTP/1.1\r\nContent-Length: 1024\r\n\r\n", 1024).content_length == 1024u);
  CHECK(refused("POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n").status == 413);
}

TEST_CASE("parse_head: Transfer-Encoding") {
  CHECK(ok("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").chunked);
  CHECK(refused("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
            .reason == "conflicting_framing");
  CHECK(refused("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").status == 501);
  CHECK(
      refused("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n")
          .status == 501);
  CHECK(refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").status == 400);
}

TEST_CASE("parse_head: malformed lines") {
  CHECK(refused("GET  / HTTP/1.1\r\n\r\n").reason == "invalid_request_line");
  CHECK(refused("GET /\r\n\r\n").reason == "invalid_request_line");
  CHECK(refused("GET / HTTP/1.1 x\r\n\r\n").reason == "invalid_request_line");
  CHECK(refused("GET /\x01 HTTP/1.1\r\n\r\n").reason == "invalid_request_target");
  CHECK(refused("GET / HTTP/2.0\r\n\r\n").status == 505);
  CHECK(refused("GET / http/1.1\r\n\r\n").status == 400);
  CHECK(refused("BREW / HTTP/1.1\r\n\r\n").status == 501);
  CHECK(refused("G(T / HTTP/1.1\r\n\r\n").status == 400);
  CHECK(refused("GET / HTTP/1.1\r\nNo colon\r\n\r\n").reason == "invalid_header");
  CHECK(refused("GET / HTTP/1.1\r\nName : v\r\n\r\n").reason == "invalid_header");
  CHECK(refused("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n").reason == "invalid_header");
  CHECK(refused("GET / HTTP/1.1\r\nA: b\rc\r\n\r\n").reason == "invalid_header");
  CHECK(refused("GET / HTTP/1.1\r\nA: b\nc: d\r\n\r\n").reason == "invalid_header");
  CHECK(refused(std::string("GET / HTTP/1.1\r\nA: b\0c\r\n\r\n", 26)).reason == "invalid_header");
  CHECK(refused("GET / HTTP/1.1\r\n: v\r\n\r\n").reason == "invalid_header");
}

TEST_CASE("find_head_end") {
  CHECK(find_head_end("GET / HTTP/1.1\r\n\r\nrest") == 18u);
  CHECK(find_head_end("GET / HTTP/1.1\r\n\r") == std::string::npos);
  std::string b = "GET / HTTP/1.1\r\nA: b\r\n";
  size_t old = b.size();
  b += "\r\n";
  CHECK(find_head_end(b, old - 3) == b.size());
}

TEST_CASE("ChunkedDecoder: any split of the input decodes the same body and stops at its end") {
  std::string wire =
      "5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nT: v\r\n\r\n";
  std::string next = "GET / HTTP/1.1\r\n\r\n";
  for (size_t step = 1; step <= wire.size() + next.size(); ++step) {
    ChunkedDecoder d(1024);
    std::string all = wire + next;
    std::string_view in(all);
    ChunkedDecoder::State s = ChunkedDecoder::State::more;
    while (s == ChunkedDecoder::State::more && !in.empty()) {
      std::string_view piece = in.substr(0, step);
      size_t before = piece.size();
      s = d.feed(piece);
      in.remove_prefix(before - piece.size());
    }
    REQUIRE(s == ChunkedDecoder::State::done);
    CHECK(d.body() == "helloabcdefghijklmnopqrstuvwxyz");
    CHECK(in == next);
  }
}

TEST_CASE("ChunkedDecoder: the limit is enforced before a chunk's data is read") {
  ChunkedDecoder d(10);
  std::string_view in = "8\r\n12345678\r\n3\r\n";
  CHECK(d.feed(in) == ChunkedDecoder::State::refused);
  CHECK(d.refusal().status == 413);
  ChunkedDecoder huge(1 << 20);
  std::string_view h = "ffffffffffffffffff\r\n";
  CHECK(huge.feed(h) == ChunkedDecoder::State::refused);
  CHECK(huge.refusal().status == 413);
  ChunkedDecoder exact(10);
  std::string_view e = "a\r\n0123456789\r\n0\r\n\r\n";
  CHECK(exact.feed(e) == ChunkedDecoder::State::done);
}

TEST_CASE("ChunkedDecoder: malformed framing is 400") {
  for (std::string bad : std::vector<std::string>{"x\r\n", "5\nhello", "5\r\nhelloXX", "-1\r\n",
                                                  "5 x\r\n", std::string(5000, ' ')}) {
    ChunkedDecoder d(1 << 20);
    std::string_view in(bad);
    CHECK_MESSAGE(d.feed(in) == ChunkedDecoder::State::refused, bad.substr(0, 20));
    CHECK(d.refusal().status == 400);
  }
}

// HTTP/1.1 request framing (RFC 9112 sections 2-7), checked on the raw bytes before
// Pistache's parser sees them. Pistache 0.0.5 trusts Content-Length (a negative or huge value
// reaches std::string::reserve), rescans its whole buffer on every read once a body is over
// its limit (CPU quadratic in the body size), mis-parses chunked bodies split across reads and
// drops pipelined requests. The transport (api/server.cpp) frames each request with these
// functions and hands Pistache only the request line and a validated length.
// Pure: no I/O, no Pistache.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace atrium::api::framing {

// Why a request is refused at the transport: an HTTP status, a stable reason and a detail
// for the problem+json answer. The connection is closed after such an answer.
struct Refusal {
  int status = 400;
  std::string reason;
  std::string detail;
};

struct RequestHead {
  std::string method;     // as sent (case-sensitive, one of Pistache's methods)
  std::string target;     // request-target as sent (path and query)
  int minor_version = 1;  // HTTP/1.<minor>: 0 or 1
  std::vector<std::pair<std::string, std::string>> headers;  // lower-case names, trimmed values
  std::optional<uint64_t> content_length;
  bool chunked = false;          // Transfer-Encoding: chunked
  bool close = false;            // Connection: close
  bool keep_alive = false;       // Connection: keep-alive
  bool expect_continue = false;  // Expect: 100-continue

  // The path part of the target (up to '?').
  std::string path() const { return target.substr(0, target.find('?')); }
  // Whether the connection may stay open after the answer (RFC 9112 section 9.3).
  bool persistent() const { return !close && (minor_version == 1 || keep_alive); }
};

// Parses a request head: the bytes up to and including the empty line ("\r\n\r\n").
// Refusals: 400 (malformed request line or header line, obs-fold, bad or conflicting
// Content-Length, Content-Length with Transfer-Encoding), 413 (Content-Length above
// max_body_bytes), 501 (unknown method, a transfer coding other than chunked), 505 (an HTTP
// version other than 1.0 and 1.1).
std::variant<RequestHead, Refusal> parse_head(std::string_view head, uint64_t max_body_bytes);

// The offset just past the head's empty line in `buf`, searching from `from` (a caller that
// appends can pass the previous size minus 3), or npos.
size_t find_head_end(std::string_view buf, size_t from = 0);

// Incremental decoder of a chunked body (RFC 9112 section 7.1). Chunk extensions are ignored,
// trailer fields are read and dropped. The body is cut at max_body_bytes: a chunk that would
// pass it is refused (413) before its data is read.
class ChunkedDecoder {
 public:
  enum class State { more, done, refused };

  explicit ChunkedDecoder(uint64_t max_body_bytes, size_t max_line_bytes = 4096)
      : max_body_(max_body_bytes), max_line_(max_line_bytes) {}

  // Consumes bytes from the front of `in` (stops right after the end of the body, so what
  // remains in `in` belongs to the next request).
  State feed(std::string_view& in);

  std::string& body() { return body_; }
  const Refusal& refusal() const { return refusal_; }

 private:
  enum class Step { size_line, data, data_crlf, trailer_line };
  State refuse(int status, std::string reason, std::string detail);

  uint64_t max_body_;
  size_t max_line_;
  Step step_ = Step::size_line;
  std::string line_;
  uint64_t chunk_left_ = 0;
  size_t trailer_bytes_ = 0;
  std::string body_;
  Refusal refusal_;
  State state_ = State::more;
};

}  // namespace atrium::api::framing

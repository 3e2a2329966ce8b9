#include "api/http_framing.h"

#include <algorithm>
#include <array>

namespace atrium::api::framing {

namespace {

bool is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

bool is_token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(),
                                   [](char c) { return is_tchar(static_cast<unsigned char>(c)); });
}

// field-value characters: HTAB, SP, VCHAR, obs-text. No CR, LF, NUL or other controls.
bool is_field_char(unsigned char c) {
  return c == '\t' || (c >= 0x20 && c != 0x7f);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Calls f on each trimmed, non-empty element of a comma-separated list.
template <typename F>
void for_each_element(std::string_view v, F&& f) {
  while (!v.empty()) {
    size_t comma = v.find(',');
    std::string_view e = trim(v.substr(0, comma));
    if (!e.empty()) f(e);
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
}

// The methods Pistache 0.0.5 knows (HTTP_METHODS in pistache/http_defs.h); it refuses others
// with a plain-text 400.
constexpr std::array<std::string_view, 9> kMethods = {"OPTIONS", "GET",    "POST",  "HEAD",   "PUT",
                                                      "PATCH",   "DELETE", "TRACE", "CONNECT"};

Refusal refusal(int status, std::string reason, std::string detail) {
  return Refusal{status, std::move(reason), std::move(detail)};
}

}  // namespace

size_t find_head_end(std::string_view buf, size_t from) {
  size_t p = buf.find("\r\n\r\n", from);
  return p == std::string_view::npos ? p : p + 4;
}

std::variant<RequestHead, Refusal> parse_head(std::string_view head, uint64_t max_body_bytes) {
  RequestHead h;
  if (head.size() < 4 || head.substr(head.size() - 4) != "\r\n\r\n") {
    return refusal(400, "invalid_request", "the request head does not end with an empty line");
  }
  head.remove_suffix(2);  // keep one CRLF: every line ends with "\r\n"

  // request-line = method SP request-target SP HTTP-version
  size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  head.remove_prefix(eol + 2);
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
    return refusal(400, "invalid_request_line",
                   "the request line must be 'METHOD target HTTP/1.1' with single spaces");
  }
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!is_token(method)) {
    return refusal(400, "invalid_request_line", "the request method is not a token");
  }
  if (std::find(kMethods.begin(), kMethods.end(), method) == kMethods.end()) {
    return refusal(501, "method_not_implemented",
                   "the method " + std::string(method) + " is not implemented");
  }
  if (target.empty() || !std::all_of(target.begin(), target.end(), [](char c) {
        auto u = static_cast<unsigned char>(c);
        return u > 0x20 && u < 0x7f;
      })) {
    return refusal(400, "invalid_request_target",
                   "the request target must be visible ASCII (percent-encode the rest)");
  }
  if (version == "HTTP/1.1") {
    h.minor_version = 1;
  } else if (version == "HTTP/1.0") {
    h.minor_version = 0;
  } else if (version.size() == 8 && version.substr(0, 5) == "HTTP/" &&
             std::isdigit(static_cast<unsigned char>(version[5])) && version[6] == '.' &&
             std::isdigit(static_cast<unsigned char>(version[7]))) {
    return refusal(505, "http_version_not_supported",
                   "only HTTP/1.1 and HTTP/1.0 are served, not " + std::string(version));
  } else {
    return refusal(400, "invalid_request_line", "the request line does not end with HTTP/1.x");
  }
  h.method = method;
  h.target = target;

  bool has_te = false;
  std::vector<std::string_view> lengths;
  std::vector<std::string> codings;
  while (!head.empty()) {
    eol = head.find("\r\n");
    line = head.substr(0, eol);
    head.remove_prefix(eol + 2);
    if (!line.empty() && (line.front() == ' ' || line.front() == '\t')) {
      return refusal(400, "invalid_header", "obsolete line folding is not accepted");
    }
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || !is_token(line.substr(0, colon))) {
      return refusal(400, "invalid_header",
                     "a header line must be 'Name: value' with a token name and no space "
                     "before the colon");
    }
    std::string_view raw_value = line.substr(colon + 1);
    if (!std::all_of(raw_value.begin(), raw_value.end(),
                     [](char c) { return is_field_char(static_cast<unsigned char>(c)); })) {
      return refusal(400, "invalid_header", "a header value contains a control character");
    }
    std::string name = lower(line.substr(0, colon));
    std::string_view value = trim(raw_value);
    if (name == "content-length") {
      size_t before = lengths.size();
      for_each_element(value, [&](std::string_view e) { lengths.push_back(e); });
      if (lengths.size() == before) lengths.push_back(value);  // empty or only commas
    } else if (name == "transfer-encoding") {
      has_te = true;
      for_each_element(value, [&](std::string_view e) { codings.push_back(lower(e)); });
    } else if (name == "connection") {
      for_each_element(value, [&](std::string_view e) {
        std::string t = lower(e);
        h.close = h.close || t == "close";
        h.keep_alive = h.keep_alive || t == "keep-alive";
      });
    } else if (name == "expect") {
      h.expect_continue = lower(value) == "100-continue";
    }
    h.headers.emplace_back(std::move(name), std::string(value));
  }

  if (has_te && !lengths.empty()) {
    return refusal(400, "conflicting_framing",
                   "a request must not carry both Content-Length and Transfer-Encoding");
  }
  if (has_te) {
    if (h.minor_version == 0) {
      return refusal(400, "invalid_transfer_encoding",
                     "Transfer-Encoding is not defined for HTTP/1.0 requests");
    }
    if (codings.size() != 1 || codings[0] != "chunked") {
      return refusal(501, "unsupported_transfer_encoding",
                     "the only transfer coding accepted is 'chunked'");
    }
    h.chunked = true;
  }
  if (!lengths.empty()) {
    uint64_t n = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      std::string_view e = lengths[i];
      // 1*DIGIT; 19 digits always fit in 64 bits.
      if (e.empty() || e.size() > 19 ||
          !std::all_of(e.begin(), e.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return refusal(400, "invalid_content_length",
                       "Content-Length must be a non-negative decimal number of at most 19 "
                       "digits, got '" +
                           std::string(e.substr(0, 32)) + "'");
      }
      uint64_t v = 0;
      for (char c : e) v = v * 10 + static_cast<uint64_t>(c - '0');
      if (i > 0 && v != n) {
        return refusal(400, "invalid_content_length",
                       "the request carries different Content-Length values");
      }
      n = v;
    }
    if (n > max_body_bytes) {
      return refusal(413, "body_too_large",
                     "the request body is " + std::to_string(n) + " bytes; the limit is " +
                         std::to_string(max_body_bytes));
    }
    h.content_length = n;
  }
  return h;
}

ChunkedDecoder::State ChunkedDecoder::refuse(int status, std::string reason, std::string detail) {
  refusal_ = Refusal{status, std::move(reason), std::move(detail)};
  state_ = State::refused;
  return state_;
}

ChunkedDecoder::State ChunkedDecoder::feed(std::string_view& in) {
  while (state_ == State::more && !in.empty()) {
    switch (step_) {
      case Step::size_line:
      case Step::trailer_line: {
        size_t nl = in.find('\n');
        size_t take = nl == std::string_view::npos ? in.size() : nl + 1;
        if (line_.size() + take > max_line_) {
          return refuse(400, "invalid_chunk", "a chunk-size or trailer line is too long");
        }
        line_.append(in.substr(0, take));
        in.remove_prefix(take);
        if (nl == std::string_view::npos) return state_;
        if (line_.size() < 2 || line_[line_.size() - 2] != '\r') {
          return refuse(400, "invalid_chunk", "chunk lines must end with CRLF");
        }
        std::string_view l(line_.data(), line_.size() - 2);
        if (step_ == Step::trailer_line) {
          if (l.empty()) {
            line_.clear();
            state_ = State::done;
            return state_;
          }
          trailer_bytes_ += line_.size();
          if (trailer_bytes_ > 4 * max_line_) {
            return refuse(400, "invalid_chunk", "the trailer section is too large");
          }
          line_.clear();
          break;
        }
        // chunk-size [ chunk-ext ]: hex digits, then optionally BWS ";" and extensions.
        size_t i = 0;
        uint64_t size = 0;
        size_t significant = 0;
        for (; i < l.size() && std::isxdigit(static_cast<unsigned char>(l[i])); ++i) {
          int d = std::isdigit(static_cast<unsigned char>(l[i]))
                      ? l[i] - '0'
                      : std::tolower(static_cast<unsigned char>(l[i])) - 'a' + 10;
          if (size != 0 || d != 0) ++significant;
          if (significant > 15) {
            return refuse(413, "body_too_large",
                          "a chunk is larger than the body limit of " + std::to_string(max_body_));
          }
          size = size * 16 + static_cast<uint64_t>(d);
        }
        std::string_view rest = l.substr(i);
        while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t'))
          rest.remove_prefix(1);
        if (i == 0 || (!rest.empty() && rest.front() != ';') ||
            !std::all_of(rest.begin(), rest.end(),
                         [](char c) { return is_field_char(static_cast<unsigned char>(c)); })) {
          return refuse(400, "invalid_chunk", "a chunk size must be hexadecimal digits");
        }
        line_.clear();
        if (size == 0) {
          step_ = Step::trailer_line;
        } else if (size > max_body_ - body_.size()) {
          return refuse(413, "body_too_large",
                        "the chunked request body exceeds the limit of " +
                            std::to_string(max_body_) + " bytes");
        } else {
          chunk_left_ = size;
          step_ = Step::data;
        }
        break;
      }
      case Step::data: {
        size_t k = static_cast<size_t>(std::min<uint64_t>(chunk_left_, in.size()));
        body_.append(in.substr(0, k));
        in.remove_prefix(k);
        chunk_left_ -= k;
        if (chunk_left_ == 0) step_ = Step::data_crlf;
        break;
      }
      case Step::data_crlf: {
        while (!in.empty() && line_.size() < 2) {
          line_.push_back(in.front());
          in.remove_prefix(1);
        }
        if (line_.size() < 2) return state_;
        if (line_ != "\r\n") return refuse(400, "invalid_chunk", "chunk data must end with CRLF");
        line_.clear();
        step_ = Step::size_line;
        break;
      }
    }
  }
  return state_;
}

}  // namespace atrium::api::framing

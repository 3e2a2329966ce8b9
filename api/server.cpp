// How the pieces fit (Pistache 0.0.5):
//   Tcp::Listener (accepts, TLS handshake)
//     -> AtriumTransport, one per worker thread: Pistache's Tcp::Transport (epoll, reads,
//        write queue) with our timers (header, body, idle, linger) and an eviction queue
//     -> Framer, the transport's handler: every byte read passes here and is framed with
//        api/http_framing.h; bad framing is answered here, with problem+json
//     -> HttpHandler: Pistache's HTTP parser, fed one validated request at a time
//     -> Api::handle, and the answer written from that same thread.
// Pistache's Http::Endpoint is not used: its transport never closes what it announces closed,
// and its Http::Handler keeps the raw bytes to itself (onInput is private).
#include "api/server.h"

#include <dirent.h>
#include <pistache/http.h>
#include <pistache/listener.h>
#include <pistache/peer.h>
#include <pistache/transport.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "api/connection_table.h"
#include "api/http_framing.h"

namespace atrium::api {

namespace Http = Pistache::Http;
namespace Tcp = Pistache::Tcp;
namespace Polling = Pistache::Polling;

// What every worker shares: the API, the limits and the connection table.
struct TransportShared {
  Api* api = nullptr;
  size_t max_head = 0;
  uint64_t max_body = 0;
  int64_t header_timeout_ms = 10000;
  int64_t body_timeout_ms = 30000;  // a whole request; also writing one answer
  int64_t keepalive_timeout_ms = 10000;
  int64_t linger_ms = 2000;  // after `Connection: close`, for the client to close its side
  // Bytes discarded while lingering before a hard close: Pistache reads a socket until it
  // would block, so a client streaming on would otherwise hold the worker thread.
  uint64_t linger_bytes = uint64_t{1} << 20;
  std::unique_ptr<ConnectionTable> table;
  std::atomic<int64_t> last_report_ms{0};
  std::atomic<uint64_t> reported{0};  // evicted + refused at the last report
};

namespace {

constexpr const char* kConnKey = "atrium.conn";

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A header with a name chosen at run time. Pistache 0.0.5 writes only typed headers of a
// response (raw ones are dropped), so every header we send goes through this class.
class DynamicHeader : public Http::Header::Header {
 public:
  DynamicHeader(std::string name, std::string value)
      : name_(std::move(name)), value_(std::move(value)) {}
  const char* name() const override { return name_.c_str(); }
  void parse(const std::string& data) override { value_ = data; }
  void write(std::ostream& os) const override { os << value_; }
#ifdef SAFE_HEADER_CAST
  uint64_t hash() const override {
    return 0;
  }
#endif

 private:
  std::string name_;
  std::string value_;
};

class AtriumTransport;

// Per-connection state, held by Pistache's Peer (as its data), so it goes when the transport
// removes the connection, whichever way (EOF, error, our timers, eviction). The table part is
// guarded by the table; the rest belongs to the connection's worker thread.
struct ConnState : ConnectionTable::Conn {
  enum class Phase { head, body, chunked, closing };

  ConnState(std::shared_ptr<TransportShared> s, AtriumTransport* t, Tcp::Peer& p)
      : Conn(p.address().host()),
        shared(std::move(s)),
        owner(t),
        fd(p.fd()),
        peer_id(p.getID()),
        last_written(now_ms()) {}
  ~ConnState() { shared->table->remove(*this); }

  std::shared_ptr<TransportShared> shared;
  AtriumTransport* owner;
  int fd;
  size_t peer_id;

  Phase phase = Phase::head;
  bool in_request = false;   // bytes of a request arrived; it is not dispatched yet
  std::string head;          // the head being read
  framing::RequestHead req;  // the request being read or handled
  uint64_t body_left = 0;
  std::optional<framing::ChunkedDecoder> chunked;
  uint64_t dispatched = 0;  // requests that reached onRequest

  // For the timers (steady clock, ms).
  int64_t request_start = 0;
  int64_t last_answer = 0;
  int64_t last_written;  // the last write done, or the accept
  int64_t closing_start = 0;
  int64_t shut_at = 0;
  int pending_writes = 0;
  uint64_t discarded = 0;  // bytes read and dropped while closing
  bool shut = false;       // our write side is shut down
  bool linger = true;      // false: removed as soon as the answer is out (refused)
  // The transport removed (and closed) the connection. The state can outlive its peer for a
  // moment (the acceptor thread may still hold the peer): never touch fd then.
  bool gone = false;
};

std::shared_ptr<ConnState> state_of(const std::shared_ptr<Tcp::Peer>& peer) {
  return std::static_pointer_cast<ConnState>(peer->tryGetData(kConnKey));
}

// The transport of one worker thread.
class AtriumTransport : public Tcp::Transport {
 public:
  AtriumTransport(std::shared_ptr<Http::Handler> http, std::shared_ptr<TransportShared> shared);
  ~AtriumTransport() override {
    if (timer_fd_ >= 0) ::close(timer_fd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  std::shared_ptr<Pistache::Aio::Handler> clone() const override {
    return std::make_shared<AtriumTransport>(
        std::static_pointer_cast<Http::Handler>(http_->clone()), shared_);
  }

  void registerPoller(Polling::Epoll& poller) override {
    Tcp::Transport::registerPoller(poller);
    timer_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    itimerspec spec{};
    spec.it_interval.tv_nsec = 250'000'000;
    spec.it_value.tv_nsec = 250'000'000;
    ::timerfd_settime(timer_fd_, 0, &spec, nullptr);
    poller.addFd(timer_fd_, Pistache::Flags<Polling::NotifyOn>(Polling::NotifyOn::Read),
                 Polling::Tag(static_cast<uint64_t>(timer_fd_)));
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    poller.addFd(wake_fd_, Pistache::Flags<Polling::NotifyOn>(Polling::NotifyOn::Read),
                 Polling::Tag(static_cast<uint64_t>(wake_fd_)));
  }

  void onReady(const Pistache::Aio::FdSet& fds) override {
    for (const auto& entry : fds) {
      uint64_t n = 0;
      if (entry.getTag() == Polling::Tag(static_cast<uint64_t>(timer_fd_))) {
        if (::read(timer_fd_, &n, sizeof n) > 0) check_timers();
      } else if (entry.getTag() == Polling::Tag(static_cast<uint64_t>(wake_fd_))) {
        if (::read(wake_fd_, &n, sizeof n) > 0) close_requested();
      }
    }
    Tcp::Transport::onReady(fds);
  }

  // From any thread (the table's eviction): close that connection. The peer id guards
  // against a descriptor closed and reused meanwhile.
  void request_close(int fd, size_t peer_id) {
    {
      std::lock_guard l(mu_);
      to_close_.emplace_back(fd, peer_id);
    }
    uint64_t one = 1;
    [[maybe_unused]] ssize_t w = ::write(wake_fd_, &one, sizeof one);
  }

  // On this transport's thread: removes (and closes) the connection if it is still there.
  void drop(int fd, size_t peer_id) {
    auto it = peers.find(fd);
    if (it == peers.end() || it->second->getID() != peer_id) return;
    std::shared_ptr<Tcp::Peer> peer = it->second;
    if (auto st = state_of(peer)) st->gone = true;
    removePeer(peer);
  }

 private:
  void close_requested() {
    std::vector<std::pair<int, size_t>> batch;
    {
      std::lock_guard l(mu_);
      batch.swap(to_close_);
    }
    for (const auto& [fd, id] : batch) drop(fd, id);
  }

  void check_timers();

  std::shared_ptr<Http::Handler> http_;
  std::shared_ptr<TransportShared> shared_;
  std::shared_ptr<class Framer> framer_;
  int timer_fd_ = -1;
  int wake_fd_ = -1;
  std::mutex mu_;
  std::vector<std::pair<int, size_t>> to_close_;
};

constexpr std::array<const char*, 9> kKnownMethods = {"OPTIONS", "GET",    "POST",  "HEAD",   "PUT",
                                                      "PATCH",   "DELETE", "TRACE", "CONNECT"};

// A problem+json answer with any status (the shared table knows only the API's statuses).
HttpResponse transport_problem(const framing::Refusal& r) {
  Code code = r.status == 413   ? Code::too_large
              : r.status == 503 ? Code::unavailable
                                : Code::invalid_argument;
  HttpResponse resp = problem(Error::make(code, r.detail, r.reason));
  if (resp.status != r.status) {
    Json j = Json::parse(resp.body, nullptr, false);
    j["status"] = r.status;
    j["title"] = Http::codeString(static_cast<Http::Code>(r.status));
    resp.body = j.dump();
    resp.status = r.status;
  }
  return resp;
}

// The bytes of a complete answer that closes the connection, written by us: Pistache lets
// only its own Http::Handler construct a ResponseWriter.
std::string serialize(const HttpResponse& resp) {
  std::string out = "HTTP/1.1 " + std::to_string(resp.status) + " " +
                    Http::codeString(static_cast<Http::Code>(resp.status)) + "\r\n";
  for (const auto& [name, value] : resp.headers) out += name + ": " + value + "\r\n";
  if (!resp.content_type.empty()) out += "Content-Type: " + resp.content_type + "\r\n";
  out += "Content-Length: " + std::to_string(resp.body.size()) + "\r\nConnection: close\r\n\r\n";
  out += resp.body;
  return out;
}

// From now on nothing more is read from the connection (input is discarded); once every
// write is out its write side is shut down (FIN after the answer) and it lingers, so that the
// client reads the answer rather than a reset, until the client closes or the linger ends.
void begin_close(ConnState& st) {
  if (st.phase == ConnState::Phase::closing) return;
  st.phase = ConnState::Phase::closing;
  st.in_request = false;
  st.closing_start = now_ms();
  st.shared->table->closing(st);
}

void written(ConnState& st) {
  if (st.gone) return;
  st.pending_writes--;
  st.last_written = now_ms();
  if (st.pending_writes > 0 || st.phase != ConnState::Phase::closing || st.shut) return;
  if (!st.linger) {
    st.owner->drop(st.fd, st.peer_id);  // st lives on only in the caller's pointer
    return;
  }
  ::shutdown(st.fd, SHUT_WR);
  st.shut = true;
  st.shut_at = st.last_written;
}

// Counts a write. Its continuation runs on the connection's worker (Pistache resolves writes
// there), where a live state means a live peer that still owns its descriptor.
void track(const std::shared_ptr<ConnState>& st, Pistache::Async::Promise<ssize_t> sent) {
  st->pending_writes++;
  std::weak_ptr<ConnState> weak = st;
  auto done = [weak] {
    if (auto s = weak.lock()) written(*s);
  };
  sent.then([done](ssize_t) { done(); }, [done](std::exception_ptr) { done(); });
}

Pistache::Async::Promise<ssize_t> send_raw(const std::shared_ptr<Tcp::Peer>& peer,
                                           const std::string& bytes) {
  return peer->send(Pistache::RawBuffer(bytes, bytes.size()));
}

class HttpHandler : public Http::Handler {
 public:
  HTTP_PROTOTYPE(HttpHandler)

  explicit HttpHandler(std::shared_ptr<TransportShared> shared) : s_(std::move(shared)) {}

  // The connection whose request Pistache is parsing (set by Framer::dispatch, same thread).
  std::shared_ptr<ConnState> current;

  void onRequest(const Http::Request& preq, Http::ResponseWriter writer) override {
    std::shared_ptr<ConnState> st = current;
    if (!st) return;  // cannot happen: only Framer::dispatch completes requests
    st->dispatched++;
    HttpRequest req;
    req.method = Http::methodString(preq.method());
    req.path = preq.resource();
    req.body = preq.body();
    req.remote_address = preq.address().host();  // login throttling per source address
    bool query_ok = true;
    for (auto it = preq.query().parameters_begin(); it != preq.query().parameters_end(); ++it) {
      bool ok1, ok2;
      std::string k = url_decode(it->first, true, &ok1);
      std::string v = url_decode(it->second, true, &ok2);
      query_ok = query_ok && ok1 && ok2;
      req.query[k] = v;
    }
    // The headers as the framing parsed them (Pistache never saw them); the first of
    // repeated names counts.
    for (const auto& [name, value] : st->req.headers) req.headers.emplace(name, value);
    HttpResponse resp =
        query_ok
            ? s_->api->handle(req)
            : problem(invalid("the query string is not valid percent-encoding", "invalid_query"));
    bool close = !st->req.persistent();
    for (const auto& [name, value] : resp.headers) {
      if (lower(name) == "connection") {  // the API closes while draining
        close = close || lower(value).find("close") != std::string::npos;
        continue;
      }
      writer.headers().add(std::make_shared<DynamicHeader>(name, value));
    }
    // Pistache adds `Connection: Close` to every answer whose request did not say
    // keep-alive; the decision is ours (RFC 9112 section 9.3).
    writer.headers().remove("Connection");
    if (close) {
      writer.headers().add(std::make_shared<DynamicHeader>("Connection", "close"));
    } else if (st->req.minor_version == 0) {
      writer.headers().add(std::make_shared<DynamicHeader>("Connection", "keep-alive"));
    }
    auto code = static_cast<Http::Code>(resp.status);
    auto sent =
        resp.content_type.empty()
            ? writer.send(code)
            : writer.send(code, resp.body, Http::Mime::MediaType::fromString(resp.content_type));
    st->last_answer = now_ms();
    if (close) {
      begin_close(*st);
    } else {
      s_->table->idle(*st);
    }
    track(st, std::move(sent));
  }

 private:
  std::shared_ptr<TransportShared> s_;
};

// The handler of an AtriumTransport: frames requests, and feeds Pistache's HTTP handler
// (through its public Tcp::Handler interface) one checked request at a time.
class Framer : public Tcp::Handler {
 public:
  Framer(AtriumTransport* transport, std::shared_ptr<HttpHandler> http,
         std::shared_ptr<TransportShared> shared)
      : transport_(transport), http_(std::move(http)), s_(std::move(shared)) {}

  // Never called: AtriumTransport::clone makes the per-worker copies.
  std::shared_ptr<Tcp::Handler> clone() const override { return nullptr; }

  void onConnection(const std::shared_ptr<Tcp::Peer>& peer) override {
    pistache()->onConnection(peer);  // its parser for this peer
    auto st = std::make_shared<ConnState>(s_, transport_, *peer);
    peer->putData(kConnKey, st);
    bool admitted = s_->table->admit(*st);
    report_pressure();
    if (!admitted) {
      st->linger = false;
      HttpRequest req;
      req.method = "-";
      req.path = "-";
      refuse(st, peer, req,
             framing::Refusal{503, "too_many_connections",
                              "the broker has too many open connections; retry shortly"});
    }
  }

  void onDisconnection(const std::shared_ptr<Tcp::Peer>& peer) override {
    if (auto st = state_of(peer)) st->gone = true;
    pistache()->onDisconnection(peer);
  }

  void onInput(const char* buffer, size_t len, const std::shared_ptr<Tcp::Peer>& peer) override {
    auto st = state_of(peer);
    if (!st) return;
    std::string_view in(buffer, len);
    while (!in.empty() && st->phase != ConnState::Phase::closing) step(st, in, peer);
    if (st->phase == ConnState::Phase::closing) {
      st->discarded += in.size();
      // Enough lingering once the answer is out: the next read sees EOF and Pistache closes
      // the connection.
      if (st->shut && st->discarded > s_->linger_bytes) ::shutdown(st->fd, SHUT_RDWR);
    }
  }

  // The worker's timer found the request incomplete past its timeout.
  void time_out(const std::shared_ptr<ConnState>& st, const std::shared_ptr<Tcp::Peer>& peer) {
    bool head = st->phase == ConnState::Phase::head;
    int64_t ms = head ? s_->header_timeout_ms : s_->body_timeout_ms;
    refuse(st, peer, request_of(*st),
           framing::Refusal{408, "request_timeout",
                            std::string(head ? "the request line and headers" : "the request") +
                                " did not arrive within " + std::to_string(ms / 1000) + " s"});
  }

 private:
  Tcp::Handler* pistache() { return http_.get(); }

  void step(const std::shared_ptr<ConnState>& st, std::string_view& in,
            const std::shared_ptr<Tcp::Peer>& peer) {
    switch (st->phase) {
      case ConnState::Phase::head:
        read_head(st, in, peer);
        return;
      case ConnState::Phase::body: {
        size_t k = static_cast<size_t>(std::min<uint64_t>(st->body_left, in.size()));
        std::string_view part = in.substr(0, k);
        in.remove_prefix(k);
        st->body_left -= k;
        if (st->body_left == 0) {
          dispatch(st, peer, part);
        } else {
          pistache()->onInput(part.data(), part.size(), peer);
        }
        return;
      }
      case ConnState::Phase::chunked: {
        auto state = st->chunked->feed(in);
        if (state == framing::ChunkedDecoder::State::refused) {
          refuse(st, peer, request_of(*st), st->chunked->refusal());
        } else if (state == framing::ChunkedDecoder::State::done) {
          // Pistache's chunk parser breaks on chunks split across reads and leaves the final
          // CRLF to the next request: it gets the body as one chunk, in one piece.
          std::string& body = st->chunked->body();
          char size[24];
          std::snprintf(size, sizeof size, "%zx\r\n", body.size());
          std::string bytes = body.empty() ? "0\r\n" : size + body + "\r\n0\r\n";
          st->chunked.reset();
          dispatch(st, peer, bytes);
        }
        return;
      }
      case ConnState::Phase::closing:
        return;
    }
  }

  void read_head(const std::shared_ptr<ConnState>& st, std::string_view& in,
                 const std::shared_ptr<Tcp::Peer>& peer) {
    if (!st->in_request) {
      // RFC 9112 section 2.2: empty lines before a request line are ignored.
      while (!in.empty() && (in.front() == '\r' || in.front() == '\n')) in.remove_prefix(1);
      if (in.empty()) return;
      st->in_request = true;
      st->request_start = now_ms();
      st->req = framing::RequestHead{};
      s_->table->busy(*st);
    }
    size_t old = st->head.size();
    size_t take = std::min(in.size(), s_->max_head - old);
    st->head.append(in.data(), take);
    size_t end = framing::find_head_end(st->head, old >= 3 ? old - 3 : 0);
    if (end == std::string::npos) {
      in.remove_prefix(take);
      if (st->head.size() >= s_->max_head) {
        refuse(st, peer, request_of(*st),
               framing::Refusal{431, "header_too_large",
                                "the request line and headers exceed " +
                                    std::to_string(s_->max_head) + " bytes"});
      }
      return;
    }
    in.remove_prefix(end - old);
    st->head.resize(end);
    auto parsed = framing::parse_head(st->head, s_->max_body);
    if (auto* r = std::get_if<framing::Refusal>(&parsed)) {
      refuse(st, peer, request_of(*st), *r);
      return;
    }
    st->req = std::move(std::get<framing::RequestHead>(parsed));
    st->head.clear();
    // Pistache sees the request line and the framing only: its typed header parsers answer
    // odd values (Host, Date, Cache-Control, Accept) with a 500 or a plain-text 4xx. The API
    // gets the headers parsed here (HttpHandler::onRequest).
    std::string mini = st->req.method + " " + st->req.target +
                       (st->req.minor_version == 1 ? " HTTP/1.1\r\n" : " HTTP/1.0\r\n");
    uint64_t length = st->req.content_length.value_or(0);
    if (st->req.chunked) {
      mini += "Transfer-Encoding: chunked\r\n\r\n";
    } else if (length > 0) {
      mini += "Content-Length: " + std::to_string(length) + "\r\n\r\n";
    } else {
      mini += "\r\n";
      dispatch(st, peer, mini);
      return;
    }
    if (st->req.expect_continue && st->req.minor_version == 1) {
      track(st, send_raw(peer, "HTTP/1.1 100 Continue\r\n\r\n"));
    }
    pistache()->onInput(mini.data(), mini.size(), peer);
    if (Http::Handler::getParser(peer)->step()->id() != Http::Private::BodyStep::Id) {
      abandon(st, peer);  // Pistache refused the request line itself, and answered
      return;
    }
    if (st->req.chunked) {
      st->chunked.emplace(s_->max_body);
      st->phase = ConnState::Phase::chunked;
    } else {
      st->body_left = length;
      st->phase = ConnState::Phase::body;
    }
  }

  // Feeds the last bytes of a request: Pistache parses it and calls onRequest.
  void dispatch(const std::shared_ptr<ConnState>& st, const std::shared_ptr<Tcp::Peer>& peer,
                std::string_view bytes) {
    uint64_t before = st->dispatched;
    http_->current = st;
    pistache()->onInput(bytes.data(), bytes.size(), peer);
    http_->current.reset();
    st->in_request = false;
    if (st->phase != ConnState::Phase::closing) st->phase = ConnState::Phase::head;
    if (st->dispatched == before) abandon(st, peer);
  }

  // Pistache answered by itself (its own error): nothing more is read from the connection,
  // which closes once that answer is out.
  void abandon(const std::shared_ptr<ConnState>& st, const std::shared_ptr<Tcp::Peer>& peer) {
    if (st->phase == ConnState::Phase::closing) return;
    begin_close(*st);
    track(st, send_raw(peer, std::string()));
  }

  // Answers with a problem+json and closes the connection; the rest of the request is not
  // read.
  void refuse(const std::shared_ptr<ConnState>& st, const std::shared_ptr<Tcp::Peer>& peer,
              HttpRequest req, const framing::Refusal& r) {
    begin_close(*st);
    HttpResponse resp = s_->api->refused(req, transport_problem(r));
    track(st, send_raw(peer, serialize(resp)));
    // Pistache writes queued answers only once it has read the socket dry; a client that
    // keeps sending would hold the answer back (and then lose it to the close).
    if (st->linger) transport_->flush();
  }

  // Method, path and headers of a request refused before it was complete, for the access log
  // and the metrics (methods outside Pistache's list count as "other": bounded labels).
  static HttpRequest request_of(const ConnState& st) {
    HttpRequest req;
    std::string line = st.head.empty() ? st.req.method + " " + st.req.target + " " : st.head;
    line = line.substr(0, std::min(line.find("\r\n"), size_t{2048}));
    size_t sp1 = line.find(' ');
    req.method = line.substr(0, sp1);
    bool known = false;
    for (const char* m : kKnownMethods) known = known || req.method == m;
    if (!known) req.method = "other";
    if (sp1 != std::string::npos) {
      std::string target = line.substr(sp1 + 1, line.find(' ', sp1 + 1) - sp1 - 1);
      req.path = target.substr(0, target.find('?'));
    }
    if (req.path.empty()) req.path = "-";
    for (const auto& [name, value] : st.req.headers) req.headers.emplace(name, value);
    return req;
  }

  // At most every 10 s, a line on stderr when the caps evicted or refused connections.
  void report_pressure() {
    auto stats = s_->table->stats();
    uint64_t total = stats.evicted + stats.refused;
    if (total == s_->reported.load()) return;
    int64_t now = now_ms();
    int64_t last = s_->last_report_ms.load();
    if (now - last < 10000 || !s_->last_report_ms.compare_exchange_strong(last, now)) return;
    s_->reported = total;
    auto limits = s_->table->limits();
    std::fprintf(stderr,
                 "atriumd: connection caps reached (%zu open; at most %zu, %zu per address): "
                 "%llu evicted, %llu refused since start\n",
                 stats.open, limits.max_total, limits.max_per_address,
                 static_cast<unsigned long long>(stats.evicted),
                 static_cast<unsigned long long>(stats.refused));
  }

  AtriumTransport* transport_;
  std::shared_ptr<HttpHandler> http_;
  std::shared_ptr<TransportShared> s_;
};

AtriumTransport::AtriumTransport(std::shared_ptr<Http::Handler> http,
                                 std::shared_ptr<TransportShared> shared)
    : Tcp::Transport(http), http_(std::move(http)), shared_(std::move(shared)) {
  // Tcp::Transport(http) associated Pistache's handler with this transport (its response
  // writers need that); reads now go to the framer first.
  framer_ = std::make_shared<Framer>(this, std::static_pointer_cast<HttpHandler>(http_), shared_);
  init(framer_);
}

void AtriumTransport::check_timers() {
  int64_t now = now_ms();
  const TransportShared& s = *shared_;
  std::vector<std::pair<std::shared_ptr<Tcp::Peer>, std::shared_ptr<ConnState>>> late;
  std::vector<std::pair<int, size_t>> expired;
  for (const auto& [fd, peer] : peers) {
    auto st = state_of(peer);
    if (!st) continue;
    int64_t deadline;
    bool answer_408 = false;
    if (st->phase == ConnState::Phase::closing) {
      deadline = st->shut ? st->shut_at + s.linger_ms : st->closing_start + s.body_timeout_ms;
    } else if (st->in_request) {
      bool head = st->phase == ConnState::Phase::head;
      deadline = st->request_start + (head ? s.header_timeout_ms : s.body_timeout_ms);
      answer_408 = true;
    } else if (st->pending_writes > 0) {
      deadline = st->last_answer + s.body_timeout_ms;
    } else {
      deadline = st->last_written + s.keepalive_timeout_ms;
      // Bytes already waiting on an idle connection are its next request, not idleness: a
      // worker held by a long-poll reads them late, and this timer may fire first then.
      int unread = 0;
      if (now >= deadline && ::ioctl(fd, FIONREAD, &unread) == 0 && unread > 0) continue;
    }
    if (now < deadline) continue;
    if (answer_408) {
      late.emplace_back(peer, st);
    } else {
      expired.emplace_back(fd, st->peer_id);
    }
  }
  for (auto& [peer, st] : late) framer_->time_out(st, peer);
  // By descriptor and id: answering the late ones may already have removed some peers.
  for (const auto& [fd, id] : expired) drop(fd, id);
}

size_t open_descriptors() {
  size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
  }
  return n;
}

}  // namespace

HttpServer::HttpServer(Api& api) : api_(api) {}
HttpServer::~HttpServer() {
  shutdown();
}

Status HttpServer::start() {
  const ApiConfig& cfg = api_.config();
  // The global cap: what RLIMIT_NOFILE leaves after the descriptors open now (store, logs),
  // Pistache's own (an epoll, two timers and four event fds per worker) and a reserve for what
  // opens later (RocksDB files, libvirt connections, refused connections in flight).
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  size_t nofile = rl.rlim_cur == RLIM_INFINITY ? size_t{1} << 20 : static_cast<size_t>(rl.rlim_cur);
  size_t used = open_descriptors() + static_cast<size_t>(cfg.threads) * 8 + 16;
  size_t reserve = std::max<size_t>(128, nofile / 10);
  size_t fit = nofile > used + reserve + 16 ? nofile - used - reserve : 16;
  ConnectionTable::Limits limits;
  limits.max_total = cfg.max_connections > 0 ? std::min(cfg.max_connections, fit) : fit;
  limits.max_per_address = std::max<size_t>(1, cfg.max_connections_per_ip);

  shared_ = std::make_shared<TransportShared>();
  shared_->api = &api_;
  shared_->max_head = cfg.max_header_bytes;
  shared_->max_body = cfg.max_body_bytes;
  shared_->header_timeout_ms = cfg.header_timeout.count();
  shared_->body_timeout_ms = cfg.body_timeout.count();
  shared_->keepalive_timeout_ms = cfg.keepalive_timeout.count();
  shared_->table = std::make_unique<ConnectionTable>(limits, [](ConnectionTable::Conn& c) {
    auto& st = static_cast<ConnState&>(c);
    st.owner->request_close(st.fd, st.peer_id);
  });
  try {
    auto http = std::make_shared<HttpHandler>(shared_);
    // The framing holds bodies to max_body_bytes and heads to max_header_bytes; Pistache
    // only ever gets what passed it.
    http->setMaxRequestSize(cfg.max_body_bytes + cfg.max_header_bytes + 1024);
    http->setMaxResponseSize(size_t{64} << 20);
    listener_ =
        std::make_unique<Tcp::Listener>(Pistache::Address(cfg.host, Pistache::Port(cfg.port)));
    listener_->init(static_cast<size_t>(cfg.threads),
                    Pistache::Flags<Tcp::Options>(Tcp::Options::ReuseAddr), "", 1024);
    auto shared = shared_;
    listener_->setTransportFactory(
        [http, shared] { return std::make_shared<AtriumTransport>(http, shared); });
    if (!cfg.tls_cert.empty()) listener_->setupSSL(cfg.tls_cert, cfg.tls_key, false, nullptr);
    listener_->bind();
    listener_->runThreaded();
    running_ = true;
  } catch (const std::exception& ex) {
    listener_.reset();
    return Error::make(
        Code::unavailable,
        "cannot listen on " + cfg.host + ":" + std::to_string(cfg.port) + ": " + ex.what(),
        "listen_failed");
  }
  return Status::Ok();
}

uint16_t HttpServer::port() const {
  return listener_ ? static_cast<uint16_t>(listener_->getPort()) : 0;
}

size_t HttpServer::max_connections() const {
  return shared_ ? shared_->table->limits().max_total : 0;
}

size_t HttpServer::max_connections_per_ip() const {
  return shared_ ? shared_->table->limits().max_per_address : 0;
}

size_t HttpServer::open_connections() const {
  return shared_ ? shared_->table->stats().open : 0;
}

void HttpServer::shutdown() {
  if (running_ && listener_) {
    listener_->shutdown();
    running_ = false;
  }
}

}  // namespace atrium::api

#include "api/server.h"

#include <pistache/endpoint.h>
#include <pistache/http.h>

#include <sstream>

namespace atrium::api {

namespace Http = Pistache::Http;

namespace {

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
  uint64_t hash() const override { return 0; }
#endif

 private:
  std::string name_;
  std::string value_;
};

class PistacheHandler : public Http::Handler {
 public:
  HTTP_PROTOTYPE(PistacheHandler)

  explicit PistacheHandler(Api* api) : api_(api) {}

  void onRequest(const Http::Request& preq, Http::ResponseWriter writer) override {
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
    // Pistache parses a few headers into typed objects; of those the API reads only
    // Authorization. Everything else arrives raw.
    if (auto h = preq.headers().tryGet("Authorization")) {
      std::ostringstream os;
      h->write(os);
      req.headers["authorization"] = os.str();
    }
    for (const auto& [name, raw] : preq.headers().rawList()) {
      req.headers[lower(name)] = raw.value();
    }
    HttpResponse resp = query_ok ? api_->handle(req)
                                 : problem(invalid("the query string is not valid percent-encoding",
                                                   "invalid_query"));
    for (const auto& [name, value] : resp.headers) {
      writer.headers().add(std::make_shared<DynamicHeader>(name, value));
    }
    auto code = static_cast<Http::Code>(resp.status);
    if (resp.content_type.empty()) {
      writer.send(code);
    } else {
      writer.send(code, resp.body, Http::Mime::MediaType::fromString(resp.content_type));
    }
  }

 private:
  Api* api_;
};

}  // namespace

HttpServer::HttpServer(Api& api) : api_(api) {}
HttpServer::~HttpServer() { shutdown(); }

Status HttpServer::start() {
  const ApiConfig& cfg = api_.config();
  try {
    Pistache::Address addr(cfg.host, Pistache::Port(cfg.port));
    endpoint_ = std::make_unique<Http::Endpoint>(addr);
    auto opts = Http::Endpoint::options()
                    .threads(cfg.threads)
                    .flags(Pistache::Tcp::Options::ReuseAddr)
                    .backlog(1024)
                    // Pistache's own limit is the outer guard (its 413 is plain text);
                    // Api enforces max_body_bytes with a problem+json 413 below it.
                    .maxRequestSize(std::max<size_t>(cfg.max_body_bytes * 8, 8u << 20))
                    .maxResponseSize(size_t{64} << 20)
                    .headerTimeout(std::chrono::seconds(10))
                    .bodyTimeout(std::chrono::seconds(30));
    endpoint_->init(opts);
    endpoint_->setHandler(Http::make_handler<PistacheHandler>(&api_));
    if (!cfg.tls_cert.empty()) endpoint_->useSSL(cfg.tls_cert, cfg.tls_key);
    endpoint_->serveThreaded();
    running_ = true;
  } catch (const std::exception& ex) {
    endpoint_.reset();
    return Error::make(Code::unavailable,
                       "cannot listen on " + cfg.host + ":" + std::to_string(cfg.port) + ": " +
                           ex.what(),
                       "listen_failed");
  }
  return Status::Ok();
}

uint16_t HttpServer::port() const {
  return endpoint_ ? static_cast<uint16_t>(endpoint_->getPort()) : 0;
}

void HttpServer::shutdown() {
  if (running_ && endpoint_) {
    endpoint_->shutdown();
    running_ = false;
  }
}

}  // namespace atrium::api

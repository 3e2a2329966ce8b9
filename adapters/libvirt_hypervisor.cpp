// libvirt implementation of the hypervisor adapter; see libvirt_hypervisor.h for the threading,
// timeout, error and metrics design. This file holds the connection itself: opening it (URI,
// keepalive), the worker threads and call queue, closing, and libvirt's errors (codes, reasons,
// message scrubbing). The other concerns are in the libvirt_*.cpp files (libvirt_internal.h).
#include "adapters/libvirt_hypervisor.h"

#include <exception>

#include "adapters/libvirt_internal.h"

namespace atrium::adapters {

using namespace libvirt_detail;

namespace {

// ---------------------------------------------------------------------------------------------
// Errors

void silent_error_handler(void* /*user_data*/, virErrorPtr /*error*/) {}

std::string error_code_name(int code) {
  switch (code) {
    case VIR_ERR_INTERNAL_ERROR:
      return "internal_error";
    case VIR_ERR_NO_MEMORY:
      return "no_memory";
    case VIR_ERR_NO_SUPPORT:
      return "no_support";
    case VIR_ERR_UNKNOWN_HOST:
      return "unknown_host";
    case VIR_ERR_NO_CONNECT:
      return "no_connect";
    case VIR_ERR_INVALID_CONN:
      return "invalid_conn";
    case VIR_ERR_INVALID_DOMAIN:
      return "invalid_domain";
    case VIR_ERR_INVALID_ARG:
      return "invalid_arg";
    case VIR_ERR_OPERATION_FAILED:
      return "operation_failed";
    case VIR_ERR_XML_ERROR:
      return "xml_error";
    case VIR_ERR_DOM_EXIST:
      return "dom_exist";
    case VIR_ERR_OPERATION_DENIED:
      return "operation_denied";
    case VIR_ERR_OPEN_FAILED:
      return "open_failed";
    case VIR_ERR_XML_DETAIL:
      return "xml_detail";
    case VIR_ERR_SYSTEM_ERROR:
      return "system_error";
    case VIR_ERR_RPC:
      return "rpc";
    case VIR_ERR_NO_DOMAIN:
      return "no_domain";
    case VIR_ERR_NO_NETWORK:
      return "no_network";
    case VIR_ERR_AUTH_FAILED:
      return "auth_failed";
    case VIR_ERR_NO_STORAGE_POOL:
      return "no_storage_pool";
    case VIR_ERR_NO_STORAGE_VOL:
      return "no_storage_vol";
    case VIR_ERR_STORAGE_VOL_EXIST:
      return "storage_vol_exist";
    case VIR_ERR_OPERATION_INVALID:
      return "operation_invalid";
    case VIR_ERR_CONFIG_UNSUPPORTED:
      return "config_unsupported";
    case VIR_ERR_OPERATION_TIMEOUT:
      return "operation_timeout";
    case VIR_ERR_ARGUMENT_UNSUPPORTED:
      return "argument_unsupported";
    case VIR_ERR_OPERATION_ABORTED:
      return "operation_aborted";
    case VIR_ERR_AUTH_CANCELLED:
      return "auth_cancelled";
    case VIR_ERR_OPERATION_UNSUPPORTED:
      return "operation_unsupported";
    case VIR_ERR_AGENT_UNRESPONSIVE:
      return "agent_unresponsive";
    case VIR_ERR_RESOURCE_BUSY:
      return "resource_busy";
    case VIR_ERR_ACCESS_DENIED:
      return "access_denied";
    case VIR_ERR_XML_INVALID_SCHEMA:
      return "xml_invalid_schema";
    case VIR_ERR_AUTH_UNAVAILABLE:
      return "auth_unavailable";
    case VIR_ERR_DEVICE_MISSING:
      return "device_missing";
    default:
      return "error_" + std::to_string(code);
  }
}

Code map_error_code(int code) {
  switch (code) {
    case VIR_ERR_NO_DOMAIN:
    case VIR_ERR_NO_NETWORK:
    case VIR_ERR_NO_STORAGE_POOL:
    case VIR_ERR_NO_STORAGE_VOL:
    case VIR_ERR_NO_NODE_DEVICE:
    case VIR_ERR_NO_INTERFACE:
    case VIR_ERR_NO_SECRET:
    case VIR_ERR_NO_NWFILTER:
    case VIR_ERR_NO_DOMAIN_SNAPSHOT:
    case VIR_ERR_NO_DOMAIN_CHECKPOINT:
    case VIR_ERR_NO_DOMAIN_METADATA:
      return Code::not_found;
    case VIR_ERR_OPERATION_INVALID:  // e.g. "domain is not running"
    case VIR_ERR_NO_SUPPORT:         // the driver lacks the function
    case VIR_ERR_OPERATION_UNSUPPORTED:
    case VIR_ERR_ARGUMENT_UNSUPPORTED:
    case VIR_ERR_RESOURCE_BUSY:
    case VIR_ERR_DEVICE_MISSING:
    case VIR_ERR_CPU_INCOMPATIBLE:
      return Code::failed_precondition;
    case VIR_ERR_INVALID_ARG:
    case VIR_ERR_XML_ERROR:
    case VIR_ERR_XML_DETAIL:
    case VIR_ERR_XML_INVALID_SCHEMA:
    case VIR_ERR_CONFIG_UNSUPPORTED:
    case VIR_ERR_INVALID_MAC:
    case VIR_ERR_OS_TYPE:
      return Code::invalid_argument;
    case VIR_ERR_DOM_EXIST:
    case VIR_ERR_NETWORK_EXIST:
    case VIR_ERR_STORAGE_VOL_EXIST:
      return Code::already_exists;
    case VIR_ERR_OPERATION_DENIED:
    case VIR_ERR_ACCESS_DENIED:
      return Code::permission_denied;
    default:
      // Connection, RPC, auth, system and hypervisor failures: the host is not usable now.
      return Code::unavailable;
  }
}

}  // namespace

void libvirt_detail::init_libvirt_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    // virInitialize makes the library safe for threaded use before anything else runs.
    virInitialize();
    // Errors are read with virGetLastError(); never let libvirt print them to stderr.
    virSetErrorFunc(nullptr, silent_error_handler);
  });
}

Error libvirt_detail::closed_error(const std::string& uri) {
  return Error::make(Code::unavailable, "connection to " + uri + " is closed", "connection_closed");
}

// ---------------------------------------------------------------------------------------------

Error libvirt_error(std::string_view call) {
  virErrorPtr e = virGetLastError();
  if (e == nullptr || e->code == VIR_ERR_OK) {
    return Error::make(Code::unavailable, std::string(call) + " failed without a libvirt error",
                       "libvirt_unknown");
  }
  std::string message = e->message != nullptr ? e->message : std::string(call) + " failed";
  return Error::make(map_error_code(e->code),
                     scrub_libvirt_message(message, e->code == VIR_ERR_XML_DETAIL),
                     "libvirt_" + error_code_name(e->code));
}

std::string scrub_libvirt_message(std::string_view message, bool xml_detail,
                                  std::string_view file) {
  std::string first(message.substr(0, message.find('\n')));
  if (file.empty()) return first;
  if (xml_detail) {
    // "<path>:<line>: <libxml2's sentence>": keep the location, and the sentence only when it
    // is one of these, which quote nothing of the document.
    static const char* const kFixed[] = {"Start tag expected, '<' not found",
                                         "Document is empty",
                                         "Extra content at the end of the document",
                                         "StartTag: invalid element name",
                                         "EndTag: '</' not found",
                                         "attributes construct error",
                                         "error parsing attribute name",
                                         "Blank needed here"};
    for (size_t i = first.find(':'); i != std::string::npos; i = first.find(':', i + 1)) {
      size_t j = i + 1;
      while (j < first.size() && first[j] >= '0' && first[j] <= '9') ++j;
      if (j == i + 1 || first.compare(j, 2, ": ") != 0) continue;
      std::string location = first.substr(0, j);
      std::string sentence = first.substr(j + 2);
      for (const char* f : kFixed) {
        if (sentence == f) return first;
      }
      return location + ": malformed XML (libxml2's detail withheld: it quotes the file)";
    }
    return "malformed XML (libxml2's detail withheld: it quotes the file)";
  }
  std::string out;
  for (size_t i = 0; i < first.size();) {
    size_t open = first.find('\'', i);
    if (open == std::string::npos) {
      out += first.substr(i);
      break;
    }
    size_t close = first.find('\'', open + 1);
    std::string inside =
        first.substr(open + 1, close == std::string::npos ? std::string::npos : close - open - 1);
    out += first.substr(i, open - i);
    out += inside == file ? "'" + inside + "'" : std::string("'...'");
    if (close == std::string::npos) break;
    i = close + 1;
  }
  return out;
}

namespace {

void worker_main(std::shared_ptr<LibvirtConnection::State> st) {
  std::unique_lock lock(st->mutex);
  for (;;) {
    st->work_cv.wait(lock, [&] { return st->stopping || !st->queue.empty(); });
    if (st->queue.empty()) break;  // stopping, nothing left
    LibvirtConnection::State::Task task = std::move(st->queue.front());
    st->queue.pop_front();
    ++st->busy;
    virConnectPtr c = st->conn;
    lock.unlock();
    try {
      task.run(c);
    } catch (const std::exception& e) {
      task.cancel(Error::make(Code::internal,
                              std::string("libvirt call ") + task.what + " threw: " + e.what()));
    } catch (...) {
      task.cancel(Error::make(Code::internal, "libvirt call " + task.what + " threw"));
    }
    task = {};  // release captures outside the lock
    lock.lock();
    --st->busy;
    st->idle_cv.notify_all();
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// LibvirtConnection

LibvirtConnection::LibvirtConnection(const ConnectOptions& options, const LibvirtOptions& lv)
    : state_(std::make_shared<State>()) {
  state_->uri = options.uri;
  state_->timeout = options.timeout;
  state_->keepalive_interval = options.keepalive_interval_s;
  state_->keepalive_count = options.keepalive_count;
  state_->observer = lv.observer;
  state_->capacity = lv.queue_capacity == 0 ? 1 : lv.queue_capacity;
  const std::size_t n = lv.workers == 0 ? 1 : lv.workers;
  workers_.reserve(n);
  for (std::size_t i = 0; i < n; ++i) workers_.emplace_back(worker_main, state_);
}

LibvirtConnection::~LibvirtConnection() {
  (void)close();
}

const std::string& LibvirtConnection::uri() const {
  return state_->uri;
}
std::chrono::milliseconds LibvirtConnection::timeout() const {
  return state_->timeout;
}

Status LibvirtConnection::enqueue(std::string_view what, std::function<void(virConnectPtr)> run,
                                  std::function<void(Error)> cancel) {
  {
    std::lock_guard lock(state_->mutex);
    if (state_->closed) {
      return Error::make(Code::unavailable, "connection to " + state_->uri + " is closed",
                         "connection_closed");
    }
    if (state_->queue.size() >= state_->capacity) {
      return Error::make(Code::unavailable,
                         "libvirt call queue for " + state_->uri + " is full (" +
                             std::to_string(state_->capacity) + " calls waiting); refusing " +
                             std::string(what),
                         "libvirt_queue_full");
    }
    state_->queue.push_back(State::Task{std::string(what), std::move(run), std::move(cancel)});
  }
  state_->work_cv.notify_one();
  return Status::Ok();
}

Error LibvirtConnection::timeout_error(std::string_view what, std::chrono::milliseconds timeout) {
  return Error::make(Code::unavailable,
                     "libvirt call " + std::string(what) + " timed out after " +
                         std::to_string(timeout.count()) + " ms",
                     "libvirt_timeout");
}

Status LibvirtConnection::call_status(std::string_view what,
                                      std::function<Status(virConnectPtr)> fn) {
  Result<Unit> r = call<Unit>(what, [fn = std::move(fn)](virConnectPtr c) -> Result<Unit> {
    Status s = fn(c);
    if (!s.ok()) return s.error();
    return Unit{};
  });
  if (!r) return r.error();
  return Status::Ok();
}

bool LibvirtConnection::is_alive() {
  virConnectPtr c = nullptr;
  {
    std::lock_guard lock(state_->mutex);
    if (state_->closed || state_->conn == nullptr) return false;
    c = state_->conn;
    ++state_->busy;  // keeps close() from freeing the connection under us
  }
  // A local check of the transport, no RPC: safe on the caller's thread.
  auto r = state_->int_call("virConnectIsAlive", [&] { return virConnectIsAlive(c); });
  {
    std::lock_guard lock(state_->mutex);
    --state_->busy;
  }
  state_->idle_cv.notify_all();
  return r.ok() && *r == 1;
}

Status LibvirtConnection::close() {
  std::lock_guard close_lock(close_mutex_);
  auto st = state_;
  std::deque<State::Task> cancelled;
  {
    std::lock_guard lock(st->mutex);
    if (st->closed && workers_.empty()) return Status::Ok();
    st->closed = true;
    cancelled.swap(st->queue);
  }
  for (auto& t : cancelled) {
    if (t.cancel) t.cancel(closed_error(st->uri));
  }
  cancelled.clear();
  st->sink->deactivate();

  const auto deadline = Clock::now() + st->timeout;
  Status result;
  bool idle = false;
  bool torn_down = false;
  {
    std::unique_lock lock(st->mutex);
    idle = st->idle_cv.wait_until(lock, deadline, [&] { return st->busy == 0; });
    if (idle && st->conn == nullptr) torn_down = true;  // never opened, or already closed
  }
  if (idle && !torn_down) {
    // No call is running: deregister and close on a worker, still bounded by the timeout.
    auto slot = std::make_shared<detail::CallSlot<Unit>>();
    {
      std::lock_guard lock(st->mutex);
      st->queue.push_back(State::Task{"virConnectClose",
                                      [st, slot](virConnectPtr c) {
                                        st->teardown(c);
                                        slot->set(Unit{});
                                      },
                                      [slot](Error e) { slot->set(std::move(e)); }});
    }
    st->work_cv.notify_one();
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left < std::chrono::milliseconds(1)) left = std::chrono::milliseconds(1);
    if (!slot->wait_for(left)) {
      idle = false;
      result = timeout_error("virConnectClose", st->timeout);
    }
  } else if (!idle) {
    result = Error::make(Code::unavailable,
                         "closing " + st->uri + ": libvirt calls still running after " +
                             std::to_string(st->timeout.count()) + " ms; connection abandoned",
                         "libvirt_timeout");
  }
  if (!idle) abandon(st);  // libvirt may still use it (and call back into the sink)
  {
    std::lock_guard lock(st->mutex);
    st->stopping = true;
  }
  st->work_cv.notify_all();
  for (auto& w : workers_) {
    if (idle) {
      w.join();
    } else {
      w.detach();  // holds the state; exits when its stuck call returns
    }
  }
  workers_.clear();
  return result;
}

// ---------------------------------------------------------------------------------------------
// LibvirtHypervisor

LibvirtHypervisor::LibvirtHypervisor(LibvirtOptions options) : options_(std::move(options)) {
  init_libvirt_once();
}

Result<std::unique_ptr<HypervisorConnection>> LibvirtHypervisor::connect(
    const ConnectOptions& options) {
  auto r = connect_libvirt(options);
  if (!r) return r.error();
  return std::unique_ptr<HypervisorConnection>(std::move(r).value());
}

Result<std::unique_ptr<LibvirtConnection>> LibvirtHypervisor::connect_libvirt(
    const ConnectOptions& options) {
  if (options.uri.empty()) {
    return invalid("a hypervisor URI is required (libvirt would pick a default one)",
                   "uri_required");
  }
  if (options.timeout.count() <= 0) return invalid("timeout must be positive", "timeout_invalid");
  // The event loop must exist before the connection is opened for events and keepalive.
  if (Status s = start_event_loop(); !s.ok()) return s.error();

  std::unique_ptr<LibvirtConnection> conn(new LibvirtConnection(options, options_));
  auto st = conn->state_;
  Result<Unit> opened = conn->call<Unit>(
      "virConnectOpen",
      [st](virConnectPtr) -> Result<Unit> {
        auto c = st->ptr_call<virConnectPtr>("virConnectOpen",
                                             [&] { return virConnectOpen(st->uri.c_str()); });
        if (!c) {
          Error e = c.error();
          e.code = Code::unavailable;  // whatever the cause, the host cannot be used
          // test:///<path> makes the test driver parse that file; its errors quote it.
          if (st->uri.rfind("test:///", 0) == 0 && st->uri != "test:///default") {
            e.message = scrub_libvirt_message(e.message, e.reason == "libvirt_xml_detail",
                                              std::string_view(st->uri).substr(7));
          }
          return e;
        }
        if (st->keepalive_interval > 0) {
          auto k = st->int_call("virConnectSetKeepAlive", [&] {
            return virConnectSetKeepAlive(*c, st->keepalive_interval, st->keepalive_count);
          });
          // Drivers without a transport (test:///, embedded) do not support keepalive.
          if (!k && k.error().reason != "libvirt_no_support") {
            Error e = k.error();
            e.code = Code::unavailable;
            virConnectClose(*c);
            return e;
          }
        }
        std::lock_guard lock(st->mutex);
        if (st->closed) {  // the caller gave up (timeout): nobody will use it
          virConnectClose(*c);
          return closed_error(st->uri);
        }
        st->conn = *c;
        return Unit{};
      },
      options.timeout);
  if (!opened) {
    if (opened.error().reason == "libvirt_timeout") {
      // The open may still be running: do not wait for it a second time.
      std::lock_guard lock(st->mutex);
      st->timeout = std::chrono::milliseconds(1);
    }
    (void)conn->close();
    return opened.error();
  }
  return conn;
}
}  // namespace atrium::adapters

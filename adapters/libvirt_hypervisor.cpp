// libvirt implementation of the hypervisor adapter; see libvirt_hypervisor.h for the threading,
// timeout, error and metrics design.
#include "adapters/libvirt_hypervisor.h"
#include "common/time_text.h"

#include <libvirt/virterror.h>

#if defined(__SANITIZE_THREAD__)
#define ATRIUM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ATRIUM_TSAN 1
#endif
#endif
#ifdef ATRIUM_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <exception>

namespace atrium::adapters {

namespace {

using Clock = std::chrono::steady_clock;

struct Unit {};

// ---------------------------------------------------------------------------------------------
// Errors

void silent_error_handler(void* /*user_data*/, virErrorPtr /*error*/) {}

void init_libvirt_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    // virInitialize makes the library safe for threaded use before anything else runs.
    virInitialize();
    // Errors are read with virGetLastError(); never let libvirt print them to stderr.
    virSetErrorFunc(nullptr, silent_error_handler);
  });
}

std::string error_code_name(int code) {
  switch (code) {
    case VIR_ERR_INTERNAL_ERROR: return "internal_error";
    case VIR_ERR_NO_MEMORY: return "no_memory";
    case VIR_ERR_NO_SUPPORT: return "no_support";
    case VIR_ERR_UNKNOWN_HOST: return "unknown_host";
    case VIR_ERR_NO_CONNECT: return "no_connect";
    case VIR_ERR_INVALID_CONN: return "invalid_conn";
    case VIR_ERR_INVALID_DOMAIN: return "invalid_domain";
    case VIR_ERR_INVALID_ARG: return "invalid_arg";
    case VIR_ERR_OPERATION_FAILED: return "operation_failed";
    case VIR_ERR_XML_ERROR: return "xml_error";
    case VIR_ERR_DOM_EXIST: return "dom_exist";
    case VIR_ERR_OPERATION_DENIED: return "operation_denied";
    case VIR_ERR_OPEN_FAILED: return "open_failed";
    case VIR_ERR_XML_DETAIL: return "xml_detail";
    case VIR_ERR_SYSTEM_ERROR: return "system_error";
    case VIR_ERR_RPC: return "rpc";
    case VIR_ERR_NO_DOMAIN: return "no_domain";
    case VIR_ERR_NO_NETWORK: return "no_network";
    case VIR_ERR_AUTH_FAILED: return "auth_failed";
    case VIR_ERR_NO_STORAGE_POOL: return "no_storage_pool";
    case VIR_ERR_NO_STORAGE_VOL: return "no_storage_vol";
    case VIR_ERR_STORAGE_VOL_EXIST: return "storage_vol_exist";
    case VIR_ERR_OPERATION_INVALID: return "operation_invalid";
    case VIR_ERR_CONFIG_UNSUPPORTED: return "config_unsupported";
    case VIR_ERR_OPERATION_TIMEOUT: return "operation_timeout";
    case VIR_ERR_ARGUMENT_UNSUPPORTED: return "argument_unsupported";
    case VIR_ERR_OPERATION_ABORTED: return "operation_aborted";
    case VIR_ERR_AUTH_CANCELLED: return "auth_cancelled";
    case VIR_ERR_OPERATION_UNSUPPORTED: return "operation_unsupported";
    case VIR_ERR_AGENT_UNRESPONSIVE: return "agent_unresponsive";
    case VIR_ERR_RESOURCE_BUSY: return "resource_busy";
    case VIR_ERR_ACCESS_DENIED: return "access_denied";
    case VIR_ERR_XML_INVALID_SCHEMA: return "xml_invalid_schema";
    case VIR_ERR_AUTH_UNAVAILABLE: return "auth_unavailable";
    case VIR_ERR_DEVICE_MISSING: return "device_missing";
    default: return "error_" + std::to_string(code);
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

// ---------------------------------------------------------------------------------------------
// XML helpers (libvirt's own output: attributes are quoted, entities escaped).

struct Attribute {
  std::string name;
  std::string value;  // raw, still escaped
  char quote = '\'';
};

struct Element {
  std::size_t begin = 0;      // '<'
  std::size_t tag_end = 0;    // one past the '>' of the start tag
  std::size_t end = 0;        // one past the end of the element
  bool self_closing = false;
  std::vector<Attribute> attributes;

  const Attribute* find(std::string_view name) const {
    for (const auto& a : attributes) {
      if (a.name == name) return &a;
    }
    return nullptr;
  }
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Parses the element whose start tag begins at xml[lt] ('<' + name).
std::optional<Element> parse_element(std::string_view xml, std::size_t lt, std::string_view name) {
  Element el;
  el.begin = lt;
  std::size_t i = lt + 1 + name.size();
  for (;;) {
    while (i < xml.size() && is_space(xml[i])) ++i;
    if (i >= xml.size()) return std::nullopt;
    if (xml[i] == '>') {
      el.tag_end = i + 1;
      break;
    }
    if (xml[i] == '/') {
      if (i + 1 >= xml.size() || xml[i + 1] != '>') return std::nullopt;
      el.self_closing = true;
      el.tag_end = i + 2;
      break;
    }
    std::size_t n0 = i;
    while (i < xml.size() && xml[i] != '=' && !is_space(xml[i]) && xml[i] != '>' && xml[i] != '/') ++i;
    Attribute a;
    a.name = std::string(xml.substr(n0, i - n0));
    while (i < xml.size() && is_space(xml[i])) ++i;
    if (i >= xml.size() || xml[i] != '=' || a.name.empty()) return std::nullopt;
    ++i;
    while (i < xml.size() && is_space(xml[i])) ++i;
    if (i >= xml.size() || (xml[i] != '\'' && xml[i] != '"')) return std::nullopt;
    a.quote = xml[i++];
    std::size_t v0 = i;
    while (i < xml.size() && xml[i] != a.quote) ++i;
    if (i >= xml.size()) return std::nullopt;
    a.value = std::string(xml.substr(v0, i - v0));
    ++i;
    el.attributes.push_back(std::move(a));
  }
  if (el.self_closing) {
    el.end = el.tag_end;
  } else {
    std::string close = "</" + std::string(name) + ">";
    std::size_t c = xml.find(close, el.tag_end);
    if (c == std::string_view::npos) return std::nullopt;
    el.end = c + close.size();
  }
  return el;
}

std::vector<Element> find_elements(std::string_view xml, std::string_view name) {
  std::vector<Element> out;
  std::string open = "<" + std::string(name);
  std::size_t pos = 0;
  while ((pos = xml.find(open, pos)) != std::string_view::npos) {
    std::size_t after = pos + open.size();
    if (after < xml.size() && (is_space(xml[after]) || xml[after] == '>' || xml[after] == '/')) {
      if (auto el = parse_element(xml, pos, name)) {
        out.push_back(std::move(*el));
        pos = out.back().end;
        continue;
      }
    }
    pos = after;
  }
  return out;
}

// The display element: the first spice <graphics>, else the first vnc one.
std::optional<Element> display_element(std::string_view xml) {
  std::vector<Element> all = find_elements(xml, "graphics");
  for (const char* type : {"spice", "vnc"}) {
    for (auto& el : all) {
      const Attribute* t = el.find("type");
      if (t != nullptr && t->value == type) return el;
    }
  }
  return std::nullopt;
}

std::string xml_escape_attribute(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&apos;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// The CPU model of <capabilities><host><cpu><model>, empty if absent.
std::string host_cpu_model(std::string_view xml) {
  std::size_t host = xml.find("<host>");
  if (host == std::string_view::npos) return {};
  std::size_t cpu = xml.find("<cpu>", host);
  std::size_t cpu_end = xml.find("</cpu>", host);
  if (cpu == std::string_view::npos || cpu_end == std::string_view::npos || cpu > cpu_end) return {};
  std::size_t m = xml.find("<model>", cpu);
  if (m == std::string_view::npos || m > cpu_end) return {};
  m += std::strlen("<model>");
  std::size_t e = xml.find("</model>", m);
  if (e == std::string_view::npos || e > cpu_end) return {};
  return std::string(xml.substr(m, e - m));
}

std::string version_string(unsigned long v) {
  return std::to_string(v / 1000000) + "." + std::to_string((v / 1000) % 1000) + "." +
         std::to_string(v % 1000);
}

DomainState map_state(int s) {
  switch (s) {
    case VIR_DOMAIN_RUNNING: return DomainState::running;
    case VIR_DOMAIN_BLOCKED: return DomainState::blocked;
    case VIR_DOMAIN_PAUSED: return DomainState::paused;
    case VIR_DOMAIN_SHUTDOWN: return DomainState::shutting_down;
    case VIR_DOMAIN_SHUTOFF: return DomainState::shut_off;
    case VIR_DOMAIN_CRASHED: return DomainState::crashed;
    case VIR_DOMAIN_PMSUSPENDED: return DomainState::suspended;
    default: return DomainState::unknown;
  }
}

const char* pick(std::initializer_list<const char*> names, int i) {
  if (i < 0 || static_cast<std::size_t>(i) >= names.size()) return "unknown";
  return names.begin()[i];
}

// Fills state, reason and detail of a lifecycle event from libvirt's event/detail numbers.
void map_lifecycle(int event, int detail, DomainEvent& ev) {
  switch (event) {
    case VIR_DOMAIN_EVENT_DEFINED:
      // A new definition is shut off; an updated one keeps whatever state it had.
      ev.state = detail == VIR_DOMAIN_EVENT_DEFINED_ADDED ? DomainState::shut_off : DomainState::unknown;
      ev.reason = "defined";
      ev.detail = pick({"added", "updated", "renamed", "from_snapshot"}, detail);
      break;
    case VIR_DOMAIN_EVENT_UNDEFINED:
      ev.state = DomainState::unknown;  // gone if it was off; transient if it still runs
      ev.reason = "undefined";
      ev.detail = pick({"removed", "renamed"}, detail);
      break;
    case VIR_DOMAIN_EVENT_STARTED:
      ev.state = DomainState::running;
      ev.reason = "started";
      ev.detail = pick({"booted", "migrated", "restored", "from_snapshot", "wakeup"}, detail);
      break;
    case VIR_DOMAIN_EVENT_SUSPENDED:
      ev.state = DomainState::paused;
      ev.reason = "suspended";
      ev.detail = pick({"paused", "migrated", "ioerror", "watchdog", "restored", "from_snapshot",
                        "api_error", "postcopy", "postcopy_failed"},
                       detail);
      break;
    case VIR_DOMAIN_EVENT_RESUMED:
      ev.state = DomainState::running;
      ev.reason = "resumed";
      ev.detail = pick({"unpaused", "migrated", "from_snapshot", "postcopy", "postcopy_failed"}, detail);
      break;
    case VIR_DOMAIN_EVENT_STOPPED:
      ev.state = DomainState::shut_off;
      ev.reason = "stopped";
      ev.detail = pick({"shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                        "from_snapshot"},
                       detail);
      break;
    case VIR_DOMAIN_EVENT_SHUTDOWN:
      ev.state = DomainState::shutting_down;
      ev.reason = "shutdown";
      ev.detail = pick({"finished", "guest", "host"}, detail);
      break;
    case VIR_DOMAIN_EVENT_PMSUSPENDED:
      ev.state = DomainState::suspended;
      ev.reason = "pmsuspended";
      ev.detail = pick({"memory", "disk"}, detail);
      break;
    case VIR_DOMAIN_EVENT_CRASHED:
      ev.state = DomainState::crashed;
      ev.reason = "crashed";
      ev.detail = pick({"panicked", "crashloaded"}, detail);
      break;
    default:
      ev.state = DomainState::unknown;
      ev.reason = "unknown";
      ev.detail = "unknown";
  }
}

const char* close_reason_name(int reason) {
  switch (reason) {
    case VIR_CONNECT_CLOSE_REASON_ERROR: return "error";
    case VIR_CONNECT_CLOSE_REASON_EOF: return "eof";
    case VIR_CONNECT_CLOSE_REASON_KEEPALIVE: return "keepalive";
    case VIR_CONNECT_CLOSE_REASON_CLIENT: return "client";
    default: return "unknown";
  }
}

// ---------------------------------------------------------------------------------------------
// The process-wide event loop.

class EventLoop {
 public:
  static EventLoop& instance() {
    static EventLoop loop;
    return loop;
  }

  Status start() {
    init_libvirt_once();
    std::lock_guard lock(mutex_);
    if (!registered_) {
      if (virEventRegisterDefaultImpl() < 0) {
        Error e = libvirt_error("virEventRegisterDefaultImpl");
        e.code = Code::unavailable;
        return e;
      }
      registered_ = true;
      // Disabled (-1) until stop() arms it to wake the loop.
      wake_timer_ = virEventAddTimeout(-1, &EventLoop::on_wake, nullptr, nullptr);
      if (wake_timer_ < 0) {
        Error e = libvirt_error("virEventAddTimeout");
        e.code = Code::unavailable;
        return e;
      }
    }
    if (!thread_.joinable()) {
      const unsigned generation = generation_.load();
      thread_ = std::thread([this, generation] { run(generation); });
    }
    return Status::Ok();
  }

  void stop() {
    std::lock_guard lock(mutex_);
    if (!thread_.joinable()) return;
    generation_.fetch_add(1);  // the running thread's generation is now stale
    if (std::this_thread::get_id() == thread_.get_id()) {
      thread_.detach();  // stop() from an event callback: the loop ends after it returns
      return;
    }
    virEventUpdateTimeout(wake_timer_, 0);  // fires at once, so the loop returns
    thread_.join();
  }

  bool running() {
    std::lock_guard lock(mutex_);
    return thread_.joinable();
  }

 private:
  EventLoop() = default;
  ~EventLoop() { stop(); }

  static void on_wake(int timer, void* /*opaque*/) { virEventUpdateTimeout(timer, -1); }

  void run(unsigned generation) {
    while (generation_.load() == generation) {
      if (virEventRunDefaultImpl() < 0) {
        // Only fails on internal errors (e.g. poll); avoid a hot loop.
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }

  std::mutex mutex_;
  bool registered_ = false;
  int wake_timer_ = -1;
  std::thread thread_;
  std::atomic<unsigned> generation_{0};
};

// ---------------------------------------------------------------------------------------------
// Event delivery to the owner's callbacks.

// libvirt hands the opaque pointers of our callbacks to its event-loop thread under GLib locks
// that ThreadSanitizer cannot see (tools/tsan.supp says why); these two mark that hand-over
// for it: released before registering, acquired first thing in each callback. No-ops in
// builds without TSan.
#ifdef ATRIUM_TSAN
void handed_to_libvirt(void* p) { __tsan_release(p); }
void received_from_libvirt(void* p) { __tsan_acquire(p); }
#else
void handed_to_libvirt(void*) {}
void received_from_libvirt(void*) {}
#endif

struct EventSink;
thread_local const EventSink* t_dispatching = nullptr;

struct EventSink {
  std::mutex mutex;
  std::condition_variable cv;
  struct Callbacks {
    DomainEventCallback on_event;
    ConnectionClosedCallback on_closed;
    DisplayEventCallback on_display;
  };
  Callbacks callbacks;
  bool active = true;
  int inflight = 0;

  void set(Callbacks c) {
    std::lock_guard lock(mutex);
    callbacks = std::move(c);
  }

  template <typename F>
  void dispatch(F&& f) noexcept {
    Callbacks cbs;
    {
      std::lock_guard lock(mutex);
      if (!active) return;
      ++inflight;
      try {
        cbs = callbacks;
      } catch (...) {
        --inflight;
        return;
      }
    }
    const EventSink* outer = t_dispatching;
    t_dispatching = this;
    try {
      f(cbs);
    } catch (...) {
      // An owner's callback must not unwind through libvirt's C frames.
    }
    t_dispatching = outer;
    {
      std::lock_guard lock(mutex);
      --inflight;
    }
    cv.notify_all();
  }

  // No callback starts after this returns, and none is still running (except the caller's own,
  // if close() is called from inside a callback).
  void deactivate() {
    std::unique_lock lock(mutex);
    active = false;
    const int self = t_dispatching == this ? 1 : 0;
    cv.wait(lock, [&] { return inflight <= self; });
  }
};

// Sinks and states of connections abandoned with libvirt calls still running: libvirt may still
// call back into them, so they live until the process ends.
std::mutex g_abandoned_mutex;
std::vector<std::shared_ptr<void>> g_abandoned;

void abandon(std::shared_ptr<void> p) {
  std::lock_guard lock(g_abandoned_mutex);
  g_abandoned.push_back(std::move(p));
}

int on_lifecycle(virConnectPtr /*conn*/, virDomainPtr dom, int event, int detail, void* opaque) {
  received_from_libvirt(opaque);
  auto* sink = static_cast<std::shared_ptr<EventSink>*>(opaque);
  try {
    DomainEvent ev;
    if (const char* n = virDomainGetName(dom)) ev.name = n;
    char uuid[VIR_UUID_STRING_BUFLEN];
    if (virDomainGetUUIDString(dom, uuid) == 0) ev.uuid = uuid;
    map_lifecycle(event, detail, ev);
    (*sink)->dispatch([&](const EventSink::Callbacks& cbs) {
      if (cbs.on_event) cbs.on_event(ev);
    });
  } catch (...) {
  }
  return 0;
}

void free_sink_ref(void* opaque) {
  received_from_libvirt(opaque);
  delete static_cast<std::shared_ptr<EventSink>*>(opaque);
}

void on_connection_closed(virConnectPtr /*conn*/, int reason, void* opaque) {
  received_from_libvirt(opaque);
  auto* sink = static_cast<EventSink*>(opaque);
  const char* why = close_reason_name(reason);
  sink->dispatch([&](const EventSink::Callbacks& cbs) {
    if (cbs.on_closed) cbs.on_closed(why);
  });
}

const char* graphics_phase_name(int phase) {
  switch (phase) {
    case VIR_DOMAIN_EVENT_GRAPHICS_CONNECT: return "connect";
    case VIR_DOMAIN_EVENT_GRAPHICS_INITIALIZE: return "initialize";
    case VIR_DOMAIN_EVENT_GRAPHICS_DISCONNECT: return "disconnect";
    default: return "unknown";
  }
}

const char* graphics_family_name(int family) {
  switch (family) {
    case VIR_DOMAIN_EVENT_GRAPHICS_ADDRESS_IPV4: return "ipv4";
    case VIR_DOMAIN_EVENT_GRAPHICS_ADDRESS_IPV6: return "ipv6";
    case VIR_DOMAIN_EVENT_GRAPHICS_ADDRESS_UNIX: return "unix";
    default: return "unknown";
  }
}

void on_graphics(virConnectPtr /*conn*/, virDomainPtr dom, int phase,
                 const virDomainEventGraphicsAddress* local, const virDomainEventGraphicsAddress* remote,
                 const char* auth_scheme, const virDomainEventGraphicsSubject* /*subject*/,
                 void* opaque) {
  auto* sink = static_cast<std::shared_ptr<EventSink>*>(opaque);
  try {
    DisplayClientEvent ev;
    if (const char* n = virDomainGetName(dom)) ev.name = n;
    char uuid[VIR_UUID_STRING_BUFLEN];
    if (virDomainGetUUIDString(dom, uuid) == 0) ev.uuid = uuid;
    ev.phase = graphics_phase_name(phase);
    if (remote != nullptr) {
      ev.family = graphics_family_name(remote->family);
      if (remote->node != nullptr) ev.remote_address = remote->node;
      if (remote->service != nullptr) ev.remote_service = remote->service;
    }
    if (local != nullptr) {
      if (local->node != nullptr) ev.local_address = local->node;
      if (local->service != nullptr) ev.local_service = local->service;
    }
    if (auth_scheme != nullptr) ev.auth_scheme = auth_scheme;
    (*sink)->dispatch([&](const EventSink::Callbacks& cbs) {
      if (cbs.on_display) cbs.on_display(ev);
    });
  } catch (...) {
  }
}

struct DomainFree {
  void operator()(virDomainPtr d) const {
    if (d != nullptr) virDomainFree(d);
  }
};
using DomainHandle = std::unique_ptr<virDomain, DomainFree>;

struct PoolFree {
  void operator()(virStoragePoolPtr p) const {
    if (p != nullptr) virStoragePoolFree(p);
  }
};
using PoolHandle = std::unique_ptr<virStoragePool, PoolFree>;

struct VolFree {
  void operator()(virStorageVolPtr v) const {
    if (v != nullptr) virStorageVolFree(v);
  }
};
using VolHandle = std::unique_ptr<virStorageVol, VolFree>;

struct CharFree {
  void operator()(char* p) const { std::free(p); }
};
using CString = std::unique_ptr<char, CharFree>;

}  // namespace

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

std::string scrub_libvirt_message(std::string_view message, bool xml_detail, std::string_view file) {
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
    std::string inside = first.substr(open + 1, close == std::string::npos ? std::string::npos
                                                                           : close - open - 1);
    out += first.substr(i, open - i);
    out += inside == file ? "'" + inside + "'" : std::string("'...'");
    if (close == std::string::npos) break;
    i = close + 1;
  }
  return out;
}

namespace detail {

int display_port_from_xml(std::string_view domain_xml) {
  std::optional<Element> el = display_element(domain_xml);
  if (!el) return -1;
  // The plain port, else (a display on a TLS port only) the TLS port.
  for (const char* name : {"port", "tlsPort"}) {
    const Attribute* port = el->find(name);
    if (port == nullptr) continue;
    int value = -1;
    const char* b = port->value.data();
    const char* e = b + port->value.size();
    auto [ptr, ec] = std::from_chars(b, e, value);
    if (ec == std::errc() && ptr == e && value > 0) return value;
  }
  return -1;
}

Result<std::string> graphics_with_password(std::string_view domain_xml, std::string_view password,
                                           std::int64_t expires_at, ConnectedClients clients) {
  std::optional<Element> el = display_element(domain_xml);
  if (!el) return refused("no_display", "the domain has no spice or vnc <graphics> device");
  std::string out = "<graphics";
  for (const auto& a : el->attributes) {
    if (a.name == "passwd" || a.name == "passwdValidTo" || a.name == "connected") continue;
    out += ' ';
    out += a.name;
    out += '=';
    out += a.quote;
    out += a.value;
    out += a.quote;
  }
  out += " passwd='" + xml_escape_attribute(password) + "'";
  if (expires_at > 0) {
    std::string valid_to = utc_iso8601(expires_at * 1000, false);
    if (valid_to.empty()) return invalid("expires_at is out of range");
    out += " passwdValidTo='" + valid_to + "'";
  }
  if (clients == ConnectedClients::keep) out += " connected='keep'";
  if (clients == ConnectedClients::disconnect) out += " connected='disconnect'";
  if (el->self_closing) {
    out += "/>";
  } else {
    out += '>';
    out += domain_xml.substr(el->tag_end, el->end - el->tag_end);
  }
  return out;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Connection state shared by the connection object, its workers and libvirt callbacks.

struct LibvirtConnection::State {
  struct Task {
    std::string what;
    std::function<void(virConnectPtr)> run;
    std::function<void(Error)> cancel;
  };

  std::string uri;
  std::chrono::milliseconds timeout{30000};
  int keepalive_interval = 5;
  unsigned keepalive_count = 3;
  LibvirtCallObserver observer;
  std::size_t capacity = 64;

  std::mutex mutex;
  std::condition_variable work_cv;  // workers: a task or stop
  std::condition_variable idle_cv;  // close(): busy dropped
  std::deque<Task> queue;
  bool closed = false;    // no new calls accepted
  bool stopping = false;  // workers exit once the queue is empty
  int busy = 0;           // tasks (and is_alive checks) using `conn` right now
  virConnectPtr conn = nullptr;

  // Event registration, guarded by register_mutex (taken on worker threads only).
  std::mutex register_mutex;
  int lifecycle_id = -1;
  int graphics_id = -1;
  bool close_registered = false;
  std::shared_ptr<EventSink> sink = std::make_shared<EventSink>();

  void observe(const char* call, Clock::time_point t0, bool ok) const noexcept {
    if (!observer) return;
    try {
      observer(call, std::chrono::duration<double>(Clock::now() - t0).count(), ok);
    } catch (...) {
    }
  }

  // Runs one libvirt call returning a pointer (NULL = failure), observing it.
  template <typename P, typename F>
  Result<P> ptr_call(const char* name, F&& f) {
    auto t0 = Clock::now();
    P p = f();
    if (p == nullptr) {
      Error e = libvirt_error(name);  // first: nothing may run libvirt before this read
      observe(name, t0, false);
      return e;
    }
    observe(name, t0, true);
    return p;
  }

  // Runs one libvirt call returning an int (< 0 = failure), observing it.
  template <typename F>
  Result<int> int_call(const char* name, F&& f) {
    auto t0 = Clock::now();
    int r = f();
    if (r < 0) {
      Error e = libvirt_error(name);
      observe(name, t0, false);
      return e;
    }
    observe(name, t0, true);
    return r;
  }

  Result<DomainHandle> lookup(virConnectPtr c, const std::string& name) {
    Result<virDomainPtr> d =
        ptr_call<virDomainPtr>("virDomainLookupByName", [&] { return virDomainLookupByName(c, name.c_str()); });
    if (!d) return d.error();
    return DomainHandle(*d);
  }

  Result<DomainInfo> describe(virDomainPtr d) {
    DomainInfo info;
    if (const char* n = virDomainGetName(d)) info.name = n;
    char uuid[VIR_UUID_STRING_BUFLEN];
    if (virDomainGetUUIDString(d, uuid) == 0) info.uuid = uuid;
    virDomainInfo di{};
    if (auto r = int_call("virDomainGetInfo", [&] { return virDomainGetInfo(d, &di); }); !r) return r.error();
    info.state = map_state(di.state);
    info.memory_kib = di.maxMem;
    info.vcpus = di.nrVirtCpu;
    auto persistent = int_call("virDomainIsPersistent", [&] { return virDomainIsPersistent(d); });
    if (!persistent) return persistent.error();
    info.persistent = *persistent == 1;
    auto xml = ptr_call<char*>("virDomainGetXMLDesc", [&] { return virDomainGetXMLDesc(d, 0); });
    if (!xml) return xml.error();
    CString owned(*xml);
    info.display_port = detail::display_port_from_xml(owned.get());
    return info;
  }

  // Deregisters callbacks and closes the libvirt connection. Runs on a worker when no other
  // call is running.
  void teardown(virConnectPtr c) {
    if (c == nullptr) return;
    {
      std::lock_guard lock(register_mutex);
      if (lifecycle_id >= 0) {
        int id = lifecycle_id;
        (void)int_call("virConnectDomainEventDeregisterAny",
                       [&] { return virConnectDomainEventDeregisterAny(c, id); });
        lifecycle_id = -1;
      }
      if (graphics_id >= 0) {
        int id = graphics_id;
        (void)int_call("virConnectDomainEventDeregisterAny",
                       [&] { return virConnectDomainEventDeregisterAny(c, id); });
        graphics_id = -1;
      }
      if (close_registered) {
        (void)int_call("virConnectUnregisterCloseCallback",
                       [&] { return virConnectUnregisterCloseCallback(c, on_connection_closed); });
        close_registered = false;
      }
    }
    (void)int_call("virConnectClose", [&] { return virConnectClose(c); });
    std::lock_guard lock(mutex);
    conn = nullptr;
  }
};

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
      task.cancel(Error::make(Code::internal, std::string("libvirt call ") + task.what + " threw: " + e.what()));
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

LibvirtConnection::~LibvirtConnection() { (void)close(); }

const std::string& LibvirtConnection::uri() const { return state_->uri; }
std::chrono::milliseconds LibvirtConnection::timeout() const { return state_->timeout; }

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

Status LibvirtConnection::call_status(std::string_view what, std::function<Status(virConnectPtr)> fn) {
  Result<Unit> r = call<Unit>(what, [fn = std::move(fn)](virConnectPtr c) -> Result<Unit> {
    Status s = fn(c);
    if (!s.ok()) return s.error();
    return Unit{};
  });
  if (!r) return r.error();
  return Status::Ok();
}

namespace {

Error closed_error(const std::string& uri) {
  return Error::make(Code::unavailable, "connection to " + uri + " is closed", "connection_closed");
}

}  // namespace

Result<HostCapabilities> LibvirtConnection::capabilities() {
  auto st = state_;
  return call<HostCapabilities>("virNodeGetInfo", [st](virConnectPtr c) -> Result<HostCapabilities> {
    if (c == nullptr) return closed_error(st->uri);
    HostCapabilities caps;
    virNodeInfo ni{};
    if (auto r = st->int_call("virNodeGetInfo", [&] { return virNodeGetInfo(c, &ni); }); !r) return r.error();
    caps.cpus = ni.cpus;
    caps.memory_kib = ni.memory;
    caps.cpu_model = std::string(ni.model, strnlen(ni.model, sizeof ni.model));

    auto type = st->ptr_call<const char*>("virConnectGetType", [&] { return virConnectGetType(c); });
    if (!type) return type.error();
    caps.hypervisor = *type;

    unsigned long v = 0;
    if (auto r = st->int_call("virConnectGetVersion", [&] { return virConnectGetVersion(c, &v); }); !r)
      return r.error();
    caps.hypervisor_version = version_string(v);
    if (auto r = st->int_call("virConnectGetLibVersion", [&] { return virConnectGetLibVersion(c, &v); }); !r)
      return r.error();
    caps.libvirt_version = version_string(v);

    auto host = st->ptr_call<char*>("virConnectGetHostname", [&] { return virConnectGetHostname(c); });
    if (!host) return host.error();
    caps.hostname = CString(*host).get();

    auto xml = st->ptr_call<char*>("virConnectGetCapabilities", [&] { return virConnectGetCapabilities(c); });
    if (!xml) return xml.error();
    if (std::string model = host_cpu_model(CString(*xml).get()); !model.empty()) caps.cpu_model = model;

    // Pools and networks: a host without the storage or network driver has none.
    virStoragePoolPtr* pools = nullptr;
    auto np = st->int_call("virConnectListAllStoragePools",
                           [&] { return virConnectListAllStoragePools(c, &pools, 0); });
    if (np) {
      for (int i = 0; i < *np; ++i) {
        if (const char* n = virStoragePoolGetName(pools[i])) caps.storage_pools.emplace_back(n);
        virStoragePoolFree(pools[i]);
      }
      std::free(pools);
    } else if (np.error().reason != "libvirt_no_support") {
      return np.error();
    }
    virNetworkPtr* nets = nullptr;
    auto nn = st->int_call("virConnectListAllNetworks", [&] { return virConnectListAllNetworks(c, &nets, 0); });
    if (nn) {
      for (int i = 0; i < *nn; ++i) {
        if (const char* n = virNetworkGetName(nets[i])) caps.networks.emplace_back(n);
        virNetworkFree(nets[i]);
      }
      std::free(nets);
    } else if (nn.error().reason != "libvirt_no_support") {
      return nn.error();
    }
    return caps;
  });
}

Result<std::vector<DomainInfo>> LibvirtConnection::list_domains() {
  auto st = state_;
  return call<std::vector<DomainInfo>>(
      "virConnectListAllDomains", [st](virConnectPtr c) -> Result<std::vector<DomainInfo>> {
        if (c == nullptr) return closed_error(st->uri);
        virDomainPtr* doms = nullptr;
        auto n = st->int_call("virConnectListAllDomains", [&] { return virConnectListAllDomains(c, &doms, 0); });
        if (!n) return n.error();
        std::vector<DomainHandle> handles;
        handles.reserve(static_cast<std::size_t>(*n));
        for (int i = 0; i < *n; ++i) handles.emplace_back(doms[i]);
        std::free(doms);
        std::vector<DomainInfo> out;
        out.reserve(handles.size());
        for (auto& d : handles) {
          Result<DomainInfo> info = st->describe(d.get());
          if (info) {
            out.push_back(std::move(*info));
          } else if (info.error().code != Code::not_found) {
            return info.error();  // a domain undefined meanwhile is skipped; anything else fails
          }
        }
        return out;
      });
}

Result<DomainInfo> LibvirtConnection::lookup(std::string_view name) {
  auto st = state_;
  return call<DomainInfo>("virDomainLookupByName",
                          [st, name = std::string(name)](virConnectPtr c) -> Result<DomainInfo> {
                            if (c == nullptr) return closed_error(st->uri);
                            auto d = st->lookup(c, name);
                            if (!d) return d.error();
                            return st->describe(d->get());
                          });
}

Result<std::string> LibvirtConnection::domain_xml(std::string_view name) {
  auto st = state_;
  return call<std::string>("virDomainGetXMLDesc",
                           [st, name = std::string(name)](virConnectPtr c) -> Result<std::string> {
                             if (c == nullptr) return closed_error(st->uri);
                             auto d = st->lookup(c, name);
                             if (!d) return d.error();
                             virDomainPtr dom = d->get();
                             auto x = st->ptr_call<char*>("virDomainGetXMLDesc", [&] {
                               return virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
                             });
                             if (!x) return x.error();
                             return std::string(CString(*x).get());
                           });
}

Result<DomainInfo> LibvirtConnection::define(std::string_view xml) {
  auto st = state_;
  return call<DomainInfo>("virDomainDefineXML",
                          [st, xml = std::string(xml)](virConnectPtr c) -> Result<DomainInfo> {
                            if (c == nullptr) return closed_error(st->uri);
                            auto d = st->ptr_call<virDomainPtr>(
                                "virDomainDefineXML", [&] { return virDomainDefineXML(c, xml.c_str()); });
                            if (!d) return d.error();
                            DomainHandle h(*d);
                            return st->describe(h.get());
                          });
}

namespace {

// What a domain operation needs; used to report a refused operation uniformly. Drivers differ:
// QEMU says VIR_ERR_OPERATION_INVALID "domain is already running", the test driver
// VIR_ERR_INTERNAL_ERROR "Domain 'x' is already running".
enum class Needs { anything, inactive, active };

// A call on one named domain: lookup, then `op` (a libvirt function returning int). If `op`
// fails and the domain's state violates `needs`, the error becomes failed_precondition
// ("domain_already_running" / "domain_not_running"), keeping libvirt's message.
template <typename Op>
std::function<Status(virConnectPtr)> domain_op(std::shared_ptr<LibvirtConnection::State> st,
                                               std::string_view name, const char* call, Needs needs,
                                               Op op) {
  return [st = std::move(st), name = std::string(name), call, needs, op](virConnectPtr c) -> Status {
    if (c == nullptr) return closed_error(st->uri);
    auto d = st->lookup(c, name);
    if (!d) return d.error();
    virDomainPtr dom = d->get();
    auto r = st->int_call(call, [&] { return op(dom); });
    if (r) return Status::Ok();
    Error e = r.error();
    if (needs != Needs::anything && e.code != Code::not_found) {
      auto active = st->int_call("virDomainIsActive", [&] { return virDomainIsActive(dom); });
      if (active && needs == Needs::inactive && *active == 1) {
        e.code = Code::failed_precondition;
        e.reason = "domain_already_running";
      } else if (active && needs == Needs::active && *active == 0) {
        e.code = Code::failed_precondition;
        e.reason = "domain_not_running";
      }
    }
    return e;
  };
}

}  // namespace

Status LibvirtConnection::start(std::string_view name) {
  return call_status("virDomainCreate",
                     domain_op(state_, name, "virDomainCreate", Needs::inactive, [](virDomainPtr d) { return virDomainCreate(d); }));
}

Status LibvirtConnection::shutdown(std::string_view name) {
  return call_status("virDomainShutdown", domain_op(state_, name, "virDomainShutdown", Needs::active,
                                                    [](virDomainPtr d) { return virDomainShutdown(d); }));
}

Status LibvirtConnection::destroy(std::string_view name) {
  return call_status("virDomainDestroy", domain_op(state_, name, "virDomainDestroy", Needs::active,
                                                   [](virDomainPtr d) { return virDomainDestroy(d); }));
}

Status LibvirtConnection::reboot(std::string_view name) {
  return call_status("virDomainReboot", domain_op(state_, name, "virDomainReboot", Needs::active,
                                                  [](virDomainPtr d) { return virDomainReboot(d, 0); }));
}

Status LibvirtConnection::undefine(std::string_view name) {
  return call_status("virDomainUndefineFlags",
                     domain_op(state_, name, "virDomainUndefineFlags", Needs::anything, [](virDomainPtr d) {
                       return virDomainUndefineFlags(
                           d, VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA);
                     }));
}

Status LibvirtConnection::set_display_password(std::string_view name, std::string_view password,
                                               std::int64_t expires_at, ConnectedClients clients) {
  auto st = state_;
  return call_status("virDomainUpdateDeviceFlags",
                     [st, name = std::string(name), password = std::string(password), expires_at,
                      clients](virConnectPtr c) -> Status {
                       if (c == nullptr) return closed_error(st->uri);
                       auto d = st->lookup(c, name);
                       if (!d) return d.error();
                       virDomainPtr dom = d->get();
                       auto xml = st->ptr_call<char*>("virDomainGetXMLDesc",
                                                      [&] { return virDomainGetXMLDesc(dom, 0); });
                       if (!xml) return xml.error();
                       CString owned(*xml);
                       auto device = detail::graphics_with_password(owned.get(), password, expires_at, clients);
                       if (!device) return device.error();
                       auto r = st->int_call("virDomainUpdateDeviceFlags", [&] {
                         return virDomainUpdateDeviceFlags(dom, device->c_str(), VIR_DOMAIN_AFFECT_LIVE);
                       });
                       if (!r) return r.error();
                       return Status::Ok();
                     });
}

namespace {

// The format type of <target><format type='...'/> in a volume's XML; empty if none.
std::string volume_target_format(std::string_view vol_xml) {
  std::size_t t = vol_xml.find("<target>");
  if (t == std::string_view::npos) return {};
  std::size_t te = vol_xml.find("</target>", t);
  std::string_view target = vol_xml.substr(t, te == std::string_view::npos ? std::string_view::npos : te - t);
  for (const auto& el : find_elements(target, "format")) {
    if (const Attribute* a = el.find("type")) return a->value;
  }
  return {};
}

}  // namespace

Result<std::string> LibvirtConnection::create_overlay_volume(std::string_view pool, std::string_view name,
                                                             std::string_view base_path) {
  auto st = state_;
  return call<std::string>(
      "virStorageVolCreateXML",
      [st, pool = std::string(pool), name = std::string(name),
       base = std::string(base_path)](virConnectPtr c) -> Result<std::string> {
        if (c == nullptr) return closed_error(st->uri);
        auto p = st->ptr_call<virStoragePoolPtr>("virStoragePoolLookupByName",
                                                 [&] { return virStoragePoolLookupByName(c, pool.c_str()); });
        if (!p) return p.error();
        PoolHandle ph(*p);
        auto b = st->ptr_call<virStorageVolPtr>("virStorageVolLookupByPath",
                                                [&] { return virStorageVolLookupByPath(c, base.c_str()); });
        if (!b) return b.error();
        VolHandle bh(*b);
        virStorageVolInfo bi{};
        if (auto r = st->int_call("virStorageVolGetInfo", [&] { return virStorageVolGetInfo(bh.get(), &bi); }); !r)
          return r.error();
        auto bx = st->ptr_call<char*>("virStorageVolGetXMLDesc",
                                      [&] { return virStorageVolGetXMLDesc(bh.get(), 0); });
        if (!bx) return bx.error();
        std::string format = volume_target_format(CString(*bx).get());
        if (format.empty()) format = "raw";
        // Storage volume XML (formatstorage): a qcow2 target backed by the base volume. No
        // allocation: a file-backed overlay starts (nearly) empty.
        std::string xml = "<volume>\n  <name>" + xml_escape_attribute(name) +
                          "</name>\n  <capacity unit='bytes'>" + std::to_string(bi.capacity) +
                          "</capacity>\n  <allocation unit='bytes'>0</allocation>\n"
                          "  <target>\n    <format type='qcow2'/>\n  </target>\n"
                          "  <backingStore>\n    <path>" + xml_escape_attribute(base) +
                          "</path>\n    <format type='" + xml_escape_attribute(format) +
                          "'/>\n  </backingStore>\n</volume>\n";
        auto v = st->ptr_call<virStorageVolPtr>("virStorageVolCreateXML",
                                                [&] { return virStorageVolCreateXML(ph.get(), xml.c_str(), 0); });
        if (!v) return v.error();
        VolHandle vh(*v);
        auto path = st->ptr_call<char*>("virStorageVolGetPath", [&] { return virStorageVolGetPath(vh.get()); });
        if (!path) return path.error();
        return std::string(CString(*path).get());
      });
}

Result<std::string> LibvirtConnection::volume_path(std::string_view pool, std::string_view name) {
  auto st = state_;
  return call<std::string>(
      "virStorageVolLookupByName",
      [st, pool = std::string(pool), name = std::string(name)](virConnectPtr c) -> Result<std::string> {
        if (c == nullptr) return closed_error(st->uri);
        auto p = st->ptr_call<virStoragePoolPtr>("virStoragePoolLookupByName",
                                                 [&] { return virStoragePoolLookupByName(c, pool.c_str()); });
        if (!p) return p.error();
        PoolHandle ph(*p);
        auto v = st->ptr_call<virStorageVolPtr>("virStorageVolLookupByName",
                                                [&] { return virStorageVolLookupByName(ph.get(), name.c_str()); });
        if (!v) return v.error();
        VolHandle vh(*v);
        auto path = st->ptr_call<char*>("virStorageVolGetPath", [&] { return virStorageVolGetPath(vh.get()); });
        if (!path) return path.error();
        return std::string(CString(*path).get());
      });
}

Status LibvirtConnection::delete_volume(std::string_view path) {
  auto st = state_;
  return call_status("virStorageVolDelete", [st, path = std::string(path)](virConnectPtr c) -> Status {
    if (c == nullptr) return closed_error(st->uri);
    auto v = st->ptr_call<virStorageVolPtr>("virStorageVolLookupByPath",
                                            [&] { return virStorageVolLookupByPath(c, path.c_str()); });
    if (!v) return v.error();
    VolHandle vh(*v);
    auto r = st->int_call("virStorageVolDelete", [&] { return virStorageVolDelete(vh.get(), 0); });
    if (!r) return r.error();
    return Status::Ok();
  });
}

Status LibvirtConnection::subscribe(DomainEventCallback on_event, ConnectionClosedCallback on_closed,
                                    DisplayEventCallback on_display) {
  auto st = state_;
  {
    std::lock_guard lock(st->mutex);
    if (st->closed) return closed_error(st->uri);
  }
  st->sink->set({std::move(on_event), std::move(on_closed), std::move(on_display)});
  return call_status("virConnectDomainEventRegisterAny", [st](virConnectPtr c) -> Status {
    if (c == nullptr) return closed_error(st->uri);
    std::lock_guard lock(st->register_mutex);
    if (st->lifecycle_id < 0) {
      auto* ref = new std::shared_ptr<EventSink>(st->sink);
      auto cb = reinterpret_cast<virConnectDomainEventGenericCallback>(
          reinterpret_cast<void (*)()>(&on_lifecycle));
      handed_to_libvirt(ref);
      auto id = st->int_call("virConnectDomainEventRegisterAny", [&] {
        return virConnectDomainEventRegisterAny(c, nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, ref,
                                                free_sink_ref);
      });
      if (!id) {
        delete ref;  // libvirt does not call the free callback when registration fails
        return id.error();
      }
      st->lifecycle_id = *id;
    }
    if (st->graphics_id < 0) {
      // Display client events; drivers without them (the test driver never emits any) still
      // accept the registration. A refusal is not an error: the broker then has no display
      // signal for this host and falls back to client reports and the client timeout.
      auto* ref = new std::shared_ptr<EventSink>(st->sink);
      auto cb = reinterpret_cast<virConnectDomainEventGenericCallback>(
          reinterpret_cast<void (*)()>(&on_graphics));
      auto id = st->int_call("virConnectDomainEventRegisterAny", [&] {
        return virConnectDomainEventRegisterAny(c, nullptr, VIR_DOMAIN_EVENT_ID_GRAPHICS, cb, ref,
                                                free_sink_ref);
      });
      if (id) {
        st->graphics_id = *id;
      } else {
        delete ref;
      }
    }
    if (!st->close_registered) {
      // The sink outlives the registration: State owns it, and teardown unregisters first.
      handed_to_libvirt(st->sink.get());
      auto r = st->int_call("virConnectRegisterCloseCallback", [&] {
        return virConnectRegisterCloseCallback(c, on_connection_closed, st->sink.get(), nullptr);
      });
      if (!r) return r.error();
      st->close_registered = true;
    }
    return Status::Ok();
  });
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
      st->queue.push_back(State::Task{
          "virConnectClose",
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

Status LibvirtHypervisor::start_event_loop() { return EventLoop::instance().start(); }
void LibvirtHypervisor::stop_event_loop() { EventLoop::instance().stop(); }
bool LibvirtHypervisor::event_loop_running() { return EventLoop::instance().running(); }

Result<std::unique_ptr<HypervisorConnection>> LibvirtHypervisor::connect(const ConnectOptions& options) {
  auto r = connect_libvirt(options);
  if (!r) return r.error();
  return std::unique_ptr<HypervisorConnection>(std::move(r).value());
}

Result<std::unique_ptr<LibvirtConnection>> LibvirtHypervisor::connect_libvirt(const ConnectOptions& options) {
  if (options.uri.empty()) {
    return invalid("a hypervisor URI is required (libvirt would pick a default one)", "uri_required");
  }
  if (options.timeout.count() <= 0) return invalid("timeout must be positive", "timeout_invalid");
  // The event loop must exist before the connection is opened for events and keepalive.
  if (Status s = start_event_loop(); !s.ok()) return s.error();

  std::unique_ptr<LibvirtConnection> conn(new LibvirtConnection(options, options_));
  auto st = conn->state_;
  Result<Unit> opened = conn->call<Unit>(
      "virConnectOpen",
      [st](virConnectPtr) -> Result<Unit> {
        auto c = st->ptr_call<virConnectPtr>("virConnectOpen", [&] { return virConnectOpen(st->uri.c_str()); });
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

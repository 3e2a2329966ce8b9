// libvirt events: the process-wide event loop, mapping lifecycle/close/graphics events, the
// sinks that deliver them to the owner's callbacks, and subscribing a connection to them.
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

#include <exception>
#include <thread>

#include "adapters/libvirt_internal.h"

namespace atrium::adapters {

using namespace libvirt_detail;

thread_local const EventSink* libvirt_detail::t_dispatching = nullptr;

namespace {

const char* pick(std::initializer_list<const char*> names, int i) {
  if (i < 0 || static_cast<std::size_t>(i) >= names.size()) return "unknown";
  return names.begin()[i];
}

// Fills state, reason and detail of a lifecycle event from libvirt's event/detail numbers.
void map_lifecycle(int event, int detail, DomainEvent& ev) {
  switch (event) {
    case VIR_DOMAIN_EVENT_DEFINED:
      // A new definition is shut off; an updated one keeps whatever state it had.
      ev.state =
          detail == VIR_DOMAIN_EVENT_DEFINED_ADDED ? DomainState::shut_off : DomainState::unknown;
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
      ev.detail =
          pick({"unpaused", "migrated", "from_snapshot", "postcopy", "postcopy_failed"}, detail);
      break;
    case VIR_DOMAIN_EVENT_STOPPED:
      ev.state = DomainState::shut_off;
      ev.reason = "stopped";
      ev.detail =
          pick({"shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from_snapshot"},
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
    case VIR_CONNECT_CLOSE_REASON_ERROR:
      return "error";
    case VIR_CONNECT_CLOSE_REASON_EOF:
      return "eof";
    case VIR_CONNECT_CLOSE_REASON_KEEPALIVE:
      return "keepalive";
    case VIR_CONNECT_CLOSE_REASON_CLIENT:
      return "client";
    default:
      return "unknown";
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
// libvirt hands the opaque pointers of our callbacks to its event-loop thread under GLib locks
// that ThreadSanitizer cannot see (tools/tsan.supp says why); these two mark that hand-over
// for it: released before registering, acquired first thing in each callback. No-ops in
// builds without TSan.
#ifdef ATRIUM_TSAN
void handed_to_libvirt(void* p) {
  __tsan_release(p);
}
void received_from_libvirt(void* p) {
  __tsan_acquire(p);
}
#else
void handed_to_libvirt(void*) {}
void received_from_libvirt(void*) {}
#endif
// call back into them, so they live until the process ends.
std::mutex g_abandoned_mutex;
std::vector<std::shared_ptr<void>> g_abandoned;

}  // namespace

void libvirt_detail::abandon(std::shared_ptr<void> p) {
  std::lock_guard lock(g_abandoned_mutex);
  g_abandoned.push_back(std::move(p));
}

namespace {

// The sink a callback's opaque refers to, as a strong reference held until the callback
// returns: a connection closed from inside its own callback (or libvirt freeing the opaque on
// close) must not destroy the sink while its dispatch is still finishing (TSan found the sink
// freed under dispatch()'s notify_all).
std::shared_ptr<EventSink> sink_of(void* opaque) {
  received_from_libvirt(opaque);
  return *static_cast<std::shared_ptr<EventSink>*>(opaque);
}

int on_lifecycle(virConnectPtr /*conn*/, virDomainPtr dom, int event, int detail, void* opaque) {
  const std::shared_ptr<EventSink> sink = sink_of(opaque);
  try {
    DomainEvent ev;
    if (const char* n = virDomainGetName(dom)) ev.name = n;
    char uuid[VIR_UUID_STRING_BUFLEN];
    if (virDomainGetUUIDString(dom, uuid) == 0) ev.uuid = uuid;
    map_lifecycle(event, detail, ev);
    sink->dispatch([&](const EventSink::Callbacks& cbs) {
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

}  // namespace

void libvirt_detail::on_connection_closed(virConnectPtr /*conn*/, int reason, void* opaque) {
  received_from_libvirt(opaque);
  auto* sink = static_cast<EventSink*>(opaque);
  const char* why = close_reason_name(reason);
  sink->dispatch([&](const EventSink::Callbacks& cbs) {
    if (cbs.on_closed) cbs.on_closed(why);
  });
}

namespace {

const char* graphics_phase_name(int phase) {
  switch (phase) {
    case VIR_DOMAIN_EVENT_GRAPHICS_CONNECT:
      return "connect";
    case VIR_DOMAIN_EVENT_GRAPHICS_INITIALIZE:
      return "initialize";
    case VIR_DOMAIN_EVENT_GRAPHICS_DISCONNECT:
      return "disconnect";
    default:
      return "unknown";
  }
}

const char* graphics_family_name(int family) {
  switch (family) {
    case VIR_DOMAIN_EVENT_GRAPHICS_ADDRESS_IPV4:
      return "ipv4";
    case VIR_DOMAIN_EVENT_GRAPHICS_ADDRESS_IPV6:
      return "ipv6";
    case VIR_DOMAIN_EVENT_GRAPHICS_ADDRESS_UNIX:
      return "unix";
    default:
      return "unknown";
  }
}

void on_graphics(virConnectPtr /*conn*/, virDomainPtr dom, int phase,
                 const virDomainEventGraphicsAddress* local,
                 const virDomainEventGraphicsAddress* remote, const char* auth_scheme,
                 const virDomainEventGraphicsSubject* /*subject*/, void* opaque) {
  const std::shared_ptr<EventSink> sink = sink_of(opaque);
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
    sink->dispatch([&](const EventSink::Callbacks& cbs) {
      if (cbs.on_display) cbs.on_display(ev);
    });
  } catch (...) {
  }
}

}  // namespace

Status LibvirtConnection::subscribe(DomainEventCallback on_event,
                                    ConnectionClosedCallback on_closed,
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
      handed_to_libvirt(ref);
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

Status LibvirtHypervisor::start_event_loop() {
  return EventLoop::instance().start();
}
void LibvirtHypervisor::stop_event_loop() {
  EventLoop::instance().stop();
}
bool LibvirtHypervisor::event_loop_running() {
  return EventLoop::instance().running();
}
}  // namespace atrium::adapters

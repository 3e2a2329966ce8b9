// Helpers shared by the libvirt adapter's files (libvirt_hypervisor.cpp: connection, workers,
// errors; libvirt_xml.cpp: reading libvirt's XML; libvirt_domains.cpp: listing, definition and
// power; libvirt_volumes.cpp: storage volumes; libvirt_display.cpp: display ports and passwords;
// libvirt_events.cpp: the event loop and event subscriptions). Internal to adapters/: nothing
// outside those files includes this.
#pragma once

#include <libvirt/virterror.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "adapters/libvirt_hypervisor.h"

namespace atrium::adapters {
namespace libvirt_detail {

using Clock = std::chrono::steady_clock;

struct Unit {};

// virInitialize and the silent error handler, once per process.
void init_libvirt_once();

// Error for a call on a connection that is closed (or never opened).
Error closed_error(const std::string& uri);

// ---------------------------------------------------------------------------------------------
// XML helpers (libvirt's own output: attributes are quoted, entities escaped).

struct Attribute {
  std::string name;
  std::string value;  // raw, still escaped
  char quote = '\'';
};

struct Element {
  std::size_t begin = 0;    // '<'
  std::size_t tag_end = 0;  // one past the '>' of the start tag
  std::size_t end = 0;      // one past the end of the element
  bool self_closing = false;
  std::vector<Attribute> attributes;

  const Attribute* find(std::string_view name) const {
    for (const auto& a : attributes) {
      if (a.name == name) return &a;
    }
    return nullptr;
  }
};

// Every <name ...> element of `xml`, in document order.
std::vector<Element> find_elements(std::string_view xml, std::string_view name);
// The display element: the first spice <graphics>, else the first vnc one.
std::optional<Element> display_element(std::string_view xml);
std::string xml_escape_attribute(std::string_view s);
// The CPU model of <capabilities><host><cpu><model>, empty if absent.
std::string host_cpu_model(std::string_view xml);

DomainState map_state(int s);

// ---------------------------------------------------------------------------------------------
// Event delivery to the owner's callbacks (libvirt_events.cpp).

struct EventSink;
extern thread_local const EventSink* t_dispatching;

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

// Keeps a sink or connection state alive until the process ends (libvirt may still call into
// it).
void abandon(std::shared_ptr<void> p);

// libvirt's close callback; its opaque is the connection's EventSink.
void on_connection_closed(virConnectPtr conn, int reason, void* opaque);

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

}  // namespace libvirt_detail

using namespace libvirt_detail;

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
    Result<virDomainPtr> d = ptr_call<virDomainPtr>(
        "virDomainLookupByName", [&] { return virDomainLookupByName(c, name.c_str()); });
    if (!d) return d.error();
    return DomainHandle(*d);
  }

  Result<DomainInfo> describe(virDomainPtr d) {
    DomainInfo info;
    if (const char* n = virDomainGetName(d)) info.name = n;
    char uuid[VIR_UUID_STRING_BUFLEN];
    if (virDomainGetUUIDString(d, uuid) == 0) info.uuid = uuid;
    virDomainInfo di{};
    if (auto r = int_call("virDomainGetInfo", [&] { return virDomainGetInfo(d, &di); }); !r)
      return r.error();
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

}  // namespace atrium::adapters

// Domains on a libvirt connection: host capabilities, listing and lookup, the domain XML and
// definition, and the lifecycle/power operations (start, shutdown, destroy, reboot, undefine).
#include <cstring>

#include "adapters/libvirt_internal.h"

namespace atrium::adapters {

using namespace libvirt_detail;

namespace {

std::string version_string(unsigned long v) {
  return std::to_string(v / 1000000) + "." + std::to_string((v / 1000) % 1000) + "." +
         std::to_string(v % 1000);
}

}  // namespace

DomainState libvirt_detail::map_state(int s) {
  switch (s) {
    case VIR_DOMAIN_RUNNING:
      return DomainState::running;
    case VIR_DOMAIN_BLOCKED:
      return DomainState::blocked;
    case VIR_DOMAIN_PAUSED:
      return DomainState::paused;
    case VIR_DOMAIN_SHUTDOWN:
      return DomainState::shutting_down;
    case VIR_DOMAIN_SHUTOFF:
      return DomainState::shut_off;
    case VIR_DOMAIN_CRASHED:
      return DomainState::crashed;
    case VIR_DOMAIN_PMSUSPENDED:
      return DomainState::suspended;
    default:
      return DomainState::unknown;
  }
}

Result<HostCapabilities> LibvirtConnection::capabilities() {
  auto st = state_;
  return call<HostCapabilities>(
      "virNodeGetInfo", [st](virConnectPtr c) -> Result<HostCapabilities> {
        if (c == nullptr) return closed_error(st->uri);
        HostCapabilities caps;
        virNodeInfo ni{};
        if (auto r = st->int_call("virNodeGetInfo", [&] { return virNodeGetInfo(c, &ni); }); !r)
          return r.error();
        caps.cpus = ni.cpus;
        caps.memory_kib = ni.memory;
        caps.cpu_model = std::string(ni.model, strnlen(ni.model, sizeof ni.model));

        auto type =
            st->ptr_call<const char*>("virConnectGetType", [&] { return virConnectGetType(c); });
        if (!type) return type.error();
        caps.hypervisor = *type;

        unsigned long v = 0;
        if (auto r =
                st->int_call("virConnectGetVersion", [&] { return virConnectGetVersion(c, &v); });
            !r)
          return r.error();
        caps.hypervisor_version = version_string(v);
        if (auto r = st->int_call("virConnectGetLibVersion",
                                  [&] { return virConnectGetLibVersion(c, &v); });
            !r)
          return r.error();
        caps.libvirt_version = version_string(v);

        auto host =
            st->ptr_call<char*>("virConnectGetHostname", [&] { return virConnectGetHostname(c); });
        if (!host) return host.error();
        caps.hostname = CString(*host).get();

        auto xml = st->ptr_call<char*>("virConnectGetCapabilities",
                                       [&] { return virConnectGetCapabilities(c); });
        if (!xml) return xml.error();
        if (std::string model = host_cpu_model(CString(*xml).get()); !model.empty())
          caps.cpu_model = model;

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
        auto nn = st->int_call("virConnectListAllNetworks",
                               [&] { return virConnectListAllNetworks(c, &nets, 0); });
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
        auto n = st->int_call("virConnectListAllDomains",
                              [&] { return virConnectListAllDomains(c, &doms, 0); });
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
  return call<DomainInfo>(
      "virDomainDefineXML", [st, xml = std::string(xml)](virConnectPtr c) -> Result<DomainInfo> {
        if (c == nullptr) return closed_error(st->uri);
        auto d = st->ptr_call<virDomainPtr>("virDomainDefineXML",
                                            [&] { return virDomainDefineXML(c, xml.c_str()); });
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
  return
      [st = std::move(st), name = std::string(name), call, needs, op](virConnectPtr c) -> Status {
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
                     domain_op(state_, name, "virDomainCreate", Needs::inactive,
                               [](virDomainPtr d) { return virDomainCreate(d); }));
}

Status LibvirtConnection::shutdown(std::string_view name) {
  return call_status("virDomainShutdown",
                     domain_op(state_, name, "virDomainShutdown", Needs::active,
                               [](virDomainPtr d) { return virDomainShutdown(d); }));
}

Status LibvirtConnection::destroy(std::string_view name) {
  return call_status("virDomainDestroy",
                     domain_op(state_, name, "virDomainDestroy", Needs::active,
                               [](virDomainPtr d) { return virDomainDestroy(d); }));
}

Status LibvirtConnection::reboot(std::string_view name) {
  return call_status("virDomainReboot",
                     domain_op(state_, name, "virDomainReboot", Needs::active,
                               [](virDomainPtr d) { return virDomainReboot(d, 0); }));
}

Status LibvirtConnection::undefine(std::string_view name) {
  return call_status(
      "virDomainUndefineFlags",
      domain_op(state_, name, "virDomainUndefineFlags", Needs::anything, [](virDomainPtr d) {
        return virDomainUndefineFlags(
            d, VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA);
      }));
}
}  // namespace atrium::adapters

#include "adapters/fenced_hypervisor.h"

#include <utility>

#include "adapters/forwarding_hypervisor.h"

namespace atrium::adapters {
namespace {

// The calls that change a host ask the gate first; reads pass through (ForwardingConnection).
class FencedConnection final : public ForwardingConnection {
 public:
  FencedConnection(std::unique_ptr<HypervisorConnection> inner, SideEffectGate gate)
      : ForwardingConnection(std::move(inner)), gate_(std::move(gate)) {}

  Result<DomainInfo> define(std::string_view xml) override {
    if (auto st = gate_(); !st) return st.error();
    return ForwardingConnection::define(xml);
  }
  Status start(std::string_view name) override {
    return gated([&] { return ForwardingConnection::start(name); });
  }
  Status shutdown(std::string_view name) override {
    return gated([&] { return ForwardingConnection::shutdown(name); });
  }
  Status destroy(std::string_view name) override {
    return gated([&] { return ForwardingConnection::destroy(name); });
  }
  Status reboot(std::string_view name) override {
    return gated([&] { return ForwardingConnection::reboot(name); });
  }
  Status undefine(std::string_view name) override {
    return gated([&] { return ForwardingConnection::undefine(name); });
  }
  Status set_display_password(std::string_view name, std::string_view password,
                              std::int64_t expires_at, ConnectedClients clients) override {
    return gated([&] {
      return ForwardingConnection::set_display_password(name, password, expires_at, clients);
    });
  }
  Result<std::string> create_overlay_volume(std::string_view pool, std::string_view name,
                                            std::string_view base_path) override {
    if (auto st = gate_(); !st) return st.error();
    return ForwardingConnection::create_overlay_volume(pool, name, base_path);
  }
  Status delete_volume(std::string_view path) override {
    return gated([&] { return ForwardingConnection::delete_volume(path); });
  }

 private:
  template <typename F>
  Status gated(F call) {
    if (auto st = gate_(); !st) return st;
    return call();
  }
  SideEffectGate gate_;
};

}  // namespace

std::shared_ptr<Hypervisor> fence_side_effects(std::shared_ptr<Hypervisor> inner,
                                               SideEffectGate gate) {
  auto wrap = [gate = std::move(gate)](std::unique_ptr<HypervisorConnection> c) {
    return std::make_unique<FencedConnection>(std::move(c), gate);
  };
  return std::make_shared<WrappingHypervisor<decltype(wrap)>>(std::move(inner), std::move(wrap));
}

}  // namespace atrium::adapters

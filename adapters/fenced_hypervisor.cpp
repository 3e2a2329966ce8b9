#include "adapters/fenced_hypervisor.h"

#include <utility>

namespace atrium::adapters {
namespace {

class FencedConnection final : public HypervisorConnection {
 public:
  FencedConnection(std::unique_ptr<HypervisorConnection> inner, SideEffectGate gate)
      : inner_(std::move(inner)), gate_(std::move(gate)) {}

  Result<HostCapabilities> capabilities() override { return inner_->capabilities(); }
  Result<std::vector<DomainInfo>> list_domains() override { return inner_->list_domains(); }
  Result<DomainInfo> lookup(std::string_view name) override { return inner_->lookup(name); }
  Result<std::string> domain_xml(std::string_view name) override { return inner_->domain_xml(name); }

  Result<DomainInfo> define(std::string_view xml) override {
    if (auto st = gate_(); !st) return st.error();
    return inner_->define(xml);
  }
  Status start(std::string_view name) override {
    if (auto st = gate_(); !st) return st;
    return inner_->start(name);
  }
  Status shutdown(std::string_view name) override {
    if (auto st = gate_(); !st) return st;
    return inner_->shutdown(name);
  }
  Status destroy(std::string_view name) override {
    if (auto st = gate_(); !st) return st;
    return inner_->destroy(name);
  }
  Status reboot(std::string_view name) override {
    if (auto st = gate_(); !st) return st;
    return inner_->reboot(name);
  }
  Status undefine(std::string_view name) override {
    if (auto st = gate_(); !st) return st;
    return inner_->undefine(name);
  }
  Status set_display_password(std::string_view name, std::string_view password, std::int64_t expires_at,
                              ConnectedClients clients) override {
    if (auto st = gate_(); !st) return st;
    return inner_->set_display_password(name, password, expires_at, clients);
  }
  Result<std::string> create_overlay_volume(std::string_view pool, std::string_view name,
                                            std::string_view base_path) override {
    if (auto st = gate_(); !st) return st.error();
    return inner_->create_overlay_volume(pool, name, base_path);
  }
  Result<std::string> volume_path(std::string_view pool, std::string_view name) override {
    return inner_->volume_path(pool, name);
  }
  Status delete_volume(std::string_view path) override {
    if (auto st = gate_(); !st) return st;
    return inner_->delete_volume(path);
  }
  Status subscribe(DomainEventCallback on_event, ConnectionClosedCallback on_closed,
                   DisplayEventCallback on_display) override {
    return inner_->subscribe(std::move(on_event), std::move(on_closed), std::move(on_display));
  }
  bool is_alive() override { return inner_->is_alive(); }
  Status close() override { return inner_->close(); }

 private:
  std::unique_ptr<HypervisorConnection> inner_;
  SideEffectGate gate_;
};

class FencedHypervisor final : public Hypervisor {
 public:
  FencedHypervisor(std::shared_ptr<Hypervisor> inner, SideEffectGate gate)
      : inner_(std::move(inner)), gate_(std::move(gate)) {}

  Result<std::unique_ptr<HypervisorConnection>> connect(const ConnectOptions& options) override {
    auto c = inner_->connect(options);
    if (!c.ok()) return c.error();
    return std::unique_ptr<HypervisorConnection>(std::make_unique<FencedConnection>(std::move(*c), gate_));
  }

 private:
  std::shared_ptr<Hypervisor> inner_;
  SideEffectGate gate_;
};

}  // namespace

std::shared_ptr<Hypervisor> fence_side_effects(std::shared_ptr<Hypervisor> inner, SideEffectGate gate) {
  return std::make_shared<FencedHypervisor>(std::move(inner), std::move(gate));
}

}  // namespace atrium::adapters

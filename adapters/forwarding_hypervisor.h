// A HypervisorConnection that passes every call to another one: the base of decorators that
// change a few calls and leave the rest alone (adapters/fenced_hypervisor.cpp, test doubles).
#pragma once

#include <memory>
#include <utility>

#include "adapters/hypervisor.h"

namespace atrium::adapters {

class ForwardingConnection : public HypervisorConnection {
 public:
  explicit ForwardingConnection(std::unique_ptr<HypervisorConnection> inner)
      : inner_(std::move(inner)) {}

  Result<HostCapabilities> capabilities() override { return inner_->capabilities(); }
  Result<std::vector<DomainInfo>> list_domains() override { return inner_->list_domains(); }
  Result<DomainInfo> lookup(std::string_view name) override { return inner_->lookup(name); }
  Result<std::string> domain_xml(std::string_view name) override {
    return inner_->domain_xml(name);
  }
  Result<DomainInfo> define(std::string_view xml) override { return inner_->define(xml); }
  Status start(std::string_view name) override { return inner_->start(name); }
  Status shutdown(std::string_view name) override { return inner_->shutdown(name); }
  Status destroy(std::string_view name) override { return inner_->destroy(name); }
  Status reboot(std::string_view name) override { return inner_->reboot(name); }
  Status undefine(std::string_view name) override { return inner_->undefine(name); }
  Status set_display_password(std::string_view name, std::string_view password,
                              std::int64_t expires_at, ConnectedClients clients) override {
    return inner_->set_display_password(name, password, expires_at, clients);
  }
  Result<std::string> create_overlay_volume(std::string_view pool, std::string_view name,
                                            std::string_view base_path) override {
    return inner_->create_overlay_volume(pool, name, base_path);
  }
  Result<std::string> volume_path(std::string_view pool, std::string_view name) override {
    return inner_->volume_path(pool, name);
  }
  Status delete_volume(std::string_view path) override { return inner_->delete_volume(path); }
  Status subscribe(DomainEventCallback on_event, ConnectionClosedCallback on_closed,
                   DisplayEventCallback on_display) override {
    return inner_->subscribe(std::move(on_event), std::move(on_closed), std::move(on_display));
  }
  bool is_alive() override { return inner_->is_alive(); }
  Status close() override { return inner_->close(); }

 private:
  std::unique_ptr<HypervisorConnection> inner_;
};

// A Hypervisor whose connections are wrapped by `wrap` (e.g. in a ForwardingConnection subclass).
template <typename Wrap>
class WrappingHypervisor final : public Hypervisor {
 public:
  WrappingHypervisor(std::shared_ptr<Hypervisor> inner, Wrap wrap)
      : inner_(std::move(inner)), wrap_(std::move(wrap)) {}
  Result<std::unique_ptr<HypervisorConnection>> connect(const ConnectOptions& options) override {
    auto c = inner_->connect(options);
    if (!c.ok()) return c.error();
    return std::unique_ptr<HypervisorConnection>(wrap_(std::move(*c)));
  }

 private:
  std::shared_ptr<Hypervisor> inner_;
  Wrap wrap_;
};

}  // namespace atrium::adapters

// The display of a domain: its port from the domain XML, and setting its password (with an
// expiry and a policy for connected clients) on the live <graphics> device.
#include <charconv>

#include "adapters/libvirt_internal.h"
#include "common/time_text.h"

namespace atrium::adapters {

using namespace libvirt_detail;

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

Status LibvirtConnection::set_display_password(std::string_view name, std::string_view password,
                                               std::int64_t expires_at, ConnectedClients clients) {
  auto st = state_;
  return call_status(
      "virDomainUpdateDeviceFlags",
      [st, name = std::string(name), password = std::string(password), expires_at,
       clients](virConnectPtr c) -> Status {
        if (c == nullptr) return closed_error(st->uri);
        auto d = st->lookup(c, name);
        if (!d) return d.error();
        virDomainPtr dom = d->get();
        auto xml =
            st->ptr_call<char*>("virDomainGetXMLDesc", [&] { return virDomainGetXMLDesc(dom, 0); });
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
}  // namespace atrium::adapters

// Pool templates as libvirt domain XML: member definitions, disks, memory (domain/pools.h).
#include "domain/pools.h"

#include <algorithm>
#include <cctype>

#include "domain/pools_internal.h"
#include "domain/state.h"

namespace atrium::domain {

using namespace pools_detail;

// ---- domain XML -------------------------------------------------------------------------
namespace {

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '\'': o += "&apos;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

// Replaces the text of the first <tag>...</tag> (or inserts it after the opening of
// `parent`). Returns false when neither exists.
bool set_element(std::string& xml, const std::string& tag, const std::string& value,
                 const std::string& parent_open_end_pos_tag) {
  std::string open = "<" + tag + ">", close = "</" + tag + ">";
  auto a = xml.find(open);
  if (a != std::string::npos) {
    auto b = xml.find(close, a);
    if (b == std::string::npos) return false;
    xml.replace(a + open.size(), b - a - open.size(), xml_escape(value));
    return true;
  }
  auto p = xml.find(parent_open_end_pos_tag);
  if (p == std::string::npos) return false;
  auto gt = xml.find('>', p);
  if (gt == std::string::npos) return false;
  xml.insert(gt + 1, "\n  " + open + xml_escape(value) + close);
  return true;
}

// Removes every element `<tag .../>` or `<tag ...>...</tag>` whose start is inside [from, to).
void erase_elements(std::string& xml, const std::string& tag, size_t from, size_t& to) {
  std::string open = "<" + tag;
  for (;;) {
    auto a = xml.find(open, from);
    if (a == std::string::npos || a >= to) return;
    char after = xml[a + open.size()];
    if (after != ' ' && after != '>' && after != '/' && after != '\n' && after != '\t') {
      from = a + 1;
      continue;
    }
    auto gt = xml.find('>', a);
    if (gt == std::string::npos) return;
    size_t end;
    if (xml[gt - 1] == '/') {
      end = gt + 1;
    } else {
      auto c = xml.find("</" + tag + ">", gt);
      if (c == std::string::npos) return;
      end = c + tag.size() + 3;
    }
    xml.erase(a, end - a);
    to -= end - a;
  }
}

// The value of attribute `name` in an opening tag, or "" when absent.
std::string attr_of(const std::string& tag, const std::string& name) {
  for (size_t at = tag.find(name + "="); at != std::string::npos; at = tag.find(name + "=", at + 1)) {
    if (at == 0 || !std::isspace(static_cast<unsigned char>(tag[at - 1]))) continue;
    size_t q = at + name.size() + 1;
    if (q >= tag.size() || (tag[q] != '\'' && tag[q] != '"')) continue;
    size_t close = tag.find(tag[q], q + 1);
    if (close == std::string::npos) return "";
    return tag.substr(q + 1, close - q - 1);
  }
  return "";
}

// The opening tag with attribute `name` set to `value` (replaced, or added).
std::string set_attr(const std::string& tag, const std::string& name, const std::string& value) {
  for (size_t at = tag.find(name + "="); at != std::string::npos; at = tag.find(name + "=", at + 1)) {
    if (at == 0 || !std::isspace(static_cast<unsigned char>(tag[at - 1]))) continue;
    size_t q = at + name.size() + 1;
    if (q >= tag.size() || (tag[q] != '\'' && tag[q] != '"')) continue;
    size_t close = tag.find(tag[q], q + 1);
    if (close == std::string::npos) break;
    return tag.substr(0, q + 1) + xml_escape(value) + tag.substr(close);
  }
  size_t name_end = tag.find_first_of(" \t\n/>", 1);
  if (name_end == std::string::npos) name_end = tag.size();
  return tag.substr(0, name_end) + " " + name + "='" + xml_escape(value) + "'" + tag.substr(name_end);
}

struct XmlDisk {
  size_t begin = 0, end = 0;  // [begin, end) of <disk ...>...</disk>
  bool writable = false;      // device disk, neither readonly nor shareable
  std::string source_file;
};

std::vector<XmlDisk> disks_of(const std::string& xml) {
  std::vector<XmlDisk> out;
  size_t from = 0;
  for (;;) {
    auto a = xml.find("<disk", from);
    if (a == std::string::npos) return out;
    char after = a + 5 < xml.size() ? xml[a + 5] : '\0';
    if (after != ' ' && after != '>' && after != '\n' && after != '\t' && after != '/') {
      from = a + 1;
      continue;
    }
    auto gt = xml.find('>', a);
    if (gt == std::string::npos) return out;
    XmlDisk d;
    d.begin = a;
    std::string open = xml.substr(a, gt - a);
    std::string body;
    if (xml[gt - 1] == '/') {
      d.end = gt + 1;
    } else {
      auto c = xml.find("</disk>", gt);
      if (c == std::string::npos) return out;
      d.end = c + 7;
      body = xml.substr(gt + 1, c - gt - 1);
    }
    std::string device = attr_of(open, "device");
    d.writable = (device.empty() || device == "disk") && body.find("<readonly") == std::string::npos &&
                 body.find("<shareable") == std::string::npos;
    if (auto src = body.find("<source"); src != std::string::npos) {
      auto sgt = body.find('>', src);
      if (sgt != std::string::npos) d.source_file = attr_of(body.substr(src, sgt - src), "file");
    }
    from = d.end;
    out.push_back(std::move(d));
  }
}

}  // namespace

TemplateDisks template_disks(const std::string& xml) {
  TemplateDisks t;
  for (const XmlDisk& d : disks_of(xml)) {
    if (!d.writable) continue;
    if (t.writable++ == 0) t.first_file = d.source_file;
  }
  return t;
}

Json template_to_json(const PoolTemplate& t) {
  Json j{{"domain_xml", t.domain_xml},
         {"base_volume", t.base_volume},
         {"storage_pool", t.storage_pool.empty() ? "default" : t.storage_pool},
         {"memory_kib", t.memory_kib}};
  if (!t.domain_name.empty()) {
    j["domain_name"] = t.domain_name;
    j["host_id"] = t.host_id;
  }
  return j;
}

PoolTemplate template_from_json(const Json& j) {
  PoolTemplate t;
  t.domain_xml = j.value("domain_xml", "");
  t.domain_name = j.value("domain_name", "");
  t.host_id = j.value("host_id", "");
  t.base_volume = j.value("base_volume", "");
  t.storage_pool = j.value("storage_pool", "default");
  t.memory_kib = j.value("memory_kib", uint64_t{0});
  return t;
}

uint64_t domain_memory_kib(const std::string& xml) {
  auto a = xml.find("<memory");
  if (a == std::string::npos) return 0;
  auto gt = xml.find('>', a);
  auto lt = xml.find('<', gt);
  if (gt == std::string::npos || lt == std::string::npos) return 0;
  std::string head = xml.substr(a, gt - a);
  uint64_t v = 0;
  for (size_t i = gt + 1; i < lt; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(xml[i]))) continue;
    v = v * 10 + static_cast<uint64_t>(xml[i] - '0');
  }
  if (head.find("unit='MiB'") != std::string::npos || head.find("unit=\"MiB\"") != std::string::npos) v *= 1024;
  if (head.find("unit='GiB'") != std::string::npos || head.find("unit=\"GiB\"") != std::string::npos) v *= 1024 * 1024;
  if (head.find("unit='bytes'") != std::string::npos || head.find("unit='b'") != std::string::npos) v /= 1024;
  return v;
}

std::string template_display_listen(const std::string& xml) {
  auto dev = xml.find("<devices");
  if (dev == std::string::npos) return {};
  auto g = xml.find("<graphics", dev);
  if (g == std::string::npos) return {};
  auto gt = xml.find('>', g);
  if (gt == std::string::npos) return {};
  std::string head = xml.substr(g, gt - g);
  std::string listen = attr_of(head, "listen");
  if (!listen.empty() || head.back() == '/') return listen;
  auto ge = xml.find("</graphics>", gt);
  if (ge == std::string::npos) return {};
  for (size_t l = xml.find("<listen", gt); l != std::string::npos && l < ge; l = xml.find("<listen", l + 1)) {
    auto le = xml.find('>', l);
    std::string tag = xml.substr(l, le - l);
    if (attr_of(tag, "type") == "address") return attr_of(tag, "address");
  }
  return {};
}

Result<std::string> member_domain_xml(const std::string& template_xml, const MemberXmlParams& p) {
  std::string xml = template_xml;
  auto dom = xml.find("<domain");
  auto end = xml.rfind("</domain>");
  if (dom == std::string::npos || end == std::string::npos) {
    return invalid("template.domain_xml is not a libvirt <domain> document", "invalid_template");
  }
  if (!set_element(xml, "name", p.name, "<domain") || !set_element(xml, "uuid", p.uuid, "<domain")) {
    return invalid("template.domain_xml has no usable <domain> element", "invalid_template");
  }
  auto dev = xml.find("<devices>");
  if (dev == std::string::npos) {
    end = xml.rfind("</domain>");
    xml.insert(end, "  <devices>\n  </devices>\n");
    dev = xml.find("<devices>");
  }
  size_t dev_end = xml.find("</devices>", dev);
  // A new MAC on the first interface; other MACs are dropped so libvirt generates them.
  size_t from = dev;
  bool first_mac = true;
  for (;;) {
    auto i = xml.find("<interface", from);
    if (i == std::string::npos || i >= dev_end) break;
    auto ie = xml.find("</interface>", i);
    if (ie == std::string::npos) break;
    size_t to = ie;
    erase_elements(xml, "mac", i, to);
    dev_end = xml.find("</devices>", dev);
    if (first_mac) {
      auto gt = xml.find('>', i);
      xml.insert(gt + 1, "\n      <mac address='" + xml_escape(p.mac) + "'/>");
      first_mac = false;
      dev_end = xml.find("</devices>", dev);
    }
    from = xml.find("</interface>", i) + 1;
  }
  // The overlay replaces the source of the first writable disk, as a qcow2 file.
  if (!p.overlay_path.empty()) {
    std::vector<XmlDisk> disks = disks_of(xml);
    auto first = std::find_if(disks.begin(), disks.end(), [](const XmlDisk& d) { return d.writable; });
    if (first == disks.end()) {
      return invalid("template has a base volume but no writable <disk> to put the overlay on",
                     "invalid_template");
    }
    size_t d = first->begin;
    size_t to = first->end;
    erase_elements(xml, "source", d, to);
    erase_elements(xml, "driver", d, to);
    erase_elements(xml, "backingStore", d, to);
    auto gt = xml.find('>', d);
    xml.replace(d, gt - d, set_attr(xml.substr(d, gt - d), "type", "file"));
    gt = xml.find('>', d);
    xml.insert(gt + 1, "\n      <driver name='qemu' type='qcow2'/>\n      <source file='" +
                           xml_escape(p.overlay_path) + "'/>");
    dev_end = xml.find("</devices>", dev);
  }
  // One SPICE display with the broker's port and password. The listen address is the
  // template's (its first <graphics>: a listen attribute or a <listen type='address'>) unless
  // the broker is configured with one; with neither, the host's default applies (libvirt's
  // spice_listen, 127.0.0.1 unless its qemu.conf says otherwise).
  std::string listen = p.spice_listen;
  if (listen.empty()) listen = template_display_listen(xml);
  size_t to = dev_end;
  erase_elements(xml, "graphics", dev, to);
  dev_end = xml.find("</devices>", dev);
  std::string g = "  <graphics type='spice'";
  if (p.spice_port > 0 && p.spice_tls) {
    // TLS only: the allocated port is the TLS port and every channel must use it.
    g += " tlsPort='" + std::to_string(p.spice_port) + "' autoport='no' defaultMode='secure'";
  } else if (p.spice_port > 0) {
    g += " port='" + std::to_string(p.spice_port) + "' autoport='no'";
  } else {
    g += " autoport='yes'";
    if (p.spice_tls) g += " defaultMode='secure'";
  }
  if (!p.spice_password.empty()) g += " passwd='" + xml_escape(p.spice_password) + "'";
  if (!p.password_valid_to.empty()) g += " passwdValidTo='" + xml_escape(p.password_valid_to) + "'";
  if (listen.empty()) {
    g += "/>\n  ";
  } else {
    g += ">\n      <listen type='address' address='" + xml_escape(listen) + "'/>\n    </graphics>\n  ";
  }
  xml.insert(dev_end, g);
  return xml;
}

}  // namespace atrium::domain

// Reading libvirt's own XML output (attributes quoted, entities escaped): a small element and
// attribute scanner, the display <graphics> element, attribute escaping and the host CPU model.
#include <cstring>

#include "adapters/libvirt_internal.h"

namespace atrium::adapters {

using namespace libvirt_detail;

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

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
    while (i < xml.size() && xml[i] != '=' && !is_space(xml[i]) && xml[i] != '>' && xml[i] != '/')
      ++i;
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

}  // namespace

std::vector<Element> libvirt_detail::find_elements(std::string_view xml, std::string_view name) {
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

std::optional<Element> libvirt_detail::display_element(std::string_view xml) {
  std::vector<Element> all = find_elements(xml, "graphics");
  for (const char* type : {"spice", "vnc"}) {
    for (auto& el : all) {
      const Attribute* t = el.find("type");
      if (t != nullptr && t->value == type) return el;
    }
  }
  return std::nullopt;
}

std::string libvirt_detail::xml_escape_attribute(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&apos;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string libvirt_detail::host_cpu_model(std::string_view xml) {
  std::size_t host = xml.find("<host>");
  if (host == std::string_view::npos) return {};
  std::size_t cpu = xml.find("<cpu>", host);
  std::size_t cpu_end = xml.find("</cpu>", host);
  if (cpu == std::string_view::npos || cpu_end == std::string_view::npos || cpu > cpu_end)
    return {};
  std::size_t m = xml.find("<model>", cpu);
  if (m == std::string_view::npos || m > cpu_end) return {};
  m += std::strlen("<model>");
  std::size_t e = xml.find("</model>", m);
  if (e == std::string_view::npos || e > cpu_end) return {};
  return std::string(xml.substr(m, e - m));
}
}  // namespace atrium::adapters

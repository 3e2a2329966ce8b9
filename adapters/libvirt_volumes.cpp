// Storage volumes on a libvirt connection: copy-on-write overlays on a base image, volume
// paths and deletion.
#include "adapters/libvirt_internal.h"

namespace atrium::adapters {

using namespace libvirt_detail;

namespace {

// The format type of <target><format type='...'/> in a volume's XML; empty if none.
std::string volume_target_format(std::string_view vol_xml) {
  std::size_t t = vol_xml.find("<target>");
  if (t == std::string_view::npos) return {};
  std::size_t te = vol_xml.find("</target>", t);
  std::string_view target =
      vol_xml.substr(t, te == std::string_view::npos ? std::string_view::npos : te - t);
  for (const auto& el : find_elements(target, "format")) {
    if (const Attribute* a = el.find("type")) return a->value;
  }
  return {};
}

}  // namespace

Result<std::string> LibvirtConnection::create_overlay_volume(std::string_view pool,
                                                             std::string_view name,
                                                             std::string_view base_path) {
  auto st = state_;
  return call<std::string>(
      "virStorageVolCreateXML",
      [st, pool = std::string(pool), name = std::string(name),
       base = std::string(base_path)](virConnectPtr c) -> Result<std::string> {
        if (c == nullptr) return closed_error(st->uri);
        auto p = st->ptr_call<virStoragePoolPtr>("virStoragePoolLookupByName", [&] {
          return virStoragePoolLookupByName(c, pool.c_str());
        });
        if (!p) return p.error();
        PoolHandle ph(*p);
        auto b = st->ptr_call<virStorageVolPtr>("virStorageVolLookupByPath", [&] {
          return virStorageVolLookupByPath(c, base.c_str());
        });
        if (!b) return b.error();
        VolHandle bh(*b);
        virStorageVolInfo bi{};
        if (auto r = st->int_call("virStorageVolGetInfo",
                                  [&] { return virStorageVolGetInfo(bh.get(), &bi); });
            !r)
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
                          "  <backingStore>\n    <path>" +
                          xml_escape_attribute(base) + "</path>\n    <format type='" +
                          xml_escape_attribute(format) + "'/>\n  </backingStore>\n</volume>\n";
        auto v = st->ptr_call<virStorageVolPtr>("virStorageVolCreateXML", [&] {
          return virStorageVolCreateXML(ph.get(), xml.c_str(), 0);
        });
        if (!v) return v.error();
        VolHandle vh(*v);
        auto path = st->ptr_call<char*>("virStorageVolGetPath",
                                        [&] { return virStorageVolGetPath(vh.get()); });
        if (!path) return path.error();
        return std::string(CString(*path).get());
      });
}

Result<std::string> LibvirtConnection::volume_path(std::string_view pool, std::string_view name) {
  auto st = state_;
  return call<std::string>(
      "virStorageVolLookupByName",
      [st, pool = std::string(pool),
       name = std::string(name)](virConnectPtr c) -> Result<std::string> {
        if (c == nullptr) return closed_error(st->uri);
        auto p = st->ptr_call<virStoragePoolPtr>("virStoragePoolLookupByName", [&] {
          return virStoragePoolLookupByName(c, pool.c_str());
        });
        if (!p) return p.error();
        PoolHandle ph(*p);
        auto v = st->ptr_call<virStorageVolPtr>("virStorageVolLookupByName", [&] {
          return virStorageVolLookupByName(ph.get(), name.c_str());
        });
        if (!v) return v.error();
        VolHandle vh(*v);
        auto path = st->ptr_call<char*>("virStorageVolGetPath",
                                        [&] { return virStorageVolGetPath(vh.get()); });
        if (!path) return path.error();
        return std::string(CString(*path).get());
      });
}

Status LibvirtConnection::delete_volume(std::string_view path) {
  auto st = state_;
  return call_status(
      "virStorageVolDelete", [st, path = std::string(path)](virConnectPtr c) -> Status {
        if (c == nullptr) return closed_error(st->uri);
        auto v = st->ptr_call<virStorageVolPtr>("virStorageVolLookupByPath", [&] {
          return virStorageVolLookupByPath(c, path.c_str());
        });
        if (!v) return v.error();
        VolHandle vh(*v);
        auto r =
            st->int_call("virStorageVolDelete", [&] { return virStorageVolDelete(vh.get(), 0); });
        if (!r) return r.error();
        return Status::Ok();
      });
}
}  // namespace atrium::adapters

// Application cloud decisions on clusters and servers: create, update and delete them, the
// applications a server holds, and the inventory a server reports (domain/appcloud.h).
#include "domain/appcloud.h"
#include "domain/appcloud_internal.h"
#include "domain/state.h"
#include "domain/users.h"

namespace atrium::domain {

using namespace appcloud_detail;

namespace {

// Free text: at most `max` bytes, no control characters except (optionally) newlines and tabs.
Status validate_text(const std::string& field, const std::string& v, size_t max, bool multiline,
                     bool required = false) {
  if (required && v.empty()) return field_error(field, "must not be empty", "invalid_" + field);
  if (v.size() > max) {
    return field_error(field, "must be at most " + std::to_string(max) + " characters",
                       "invalid_" + field);
  }
  for (unsigned char c : v) {
    bool allowed_ws = multiline && (c == '\n' || c == '\t' || c == '\r');
    if ((c < 0x20 && !allowed_ws) || c == 0x7f) {
      return field_error(field, "must not contain control characters", "invalid_" + field);
    }
  }
  return Status::Ok();
}

Status validate_address(const std::string& a) {
  if (a.empty() || a.size() > 255) {
    return field_error("address", "must be 1 to 255 characters", "invalid_address");
  }
  for (unsigned char c : a) {
    if (c <= 0x20 || c == 0x7f) {
      return field_error("address", "must not contain spaces or control characters",
                         "invalid_address");
    }
  }
  return Status::Ok();
}

Status validate_os_type(const std::string& t) {
  if (t != "windows" && t != "linux") {
    return field_error("os_type", "must be windows or linux", "invalid_os_type");
  }
  return Status::Ok();
}

const Cluster* cluster_named(const AppCloudState& s, const std::string& name) {
  auto it = s.index.cluster_by_name.find(name);
  return it == s.index.cluster_by_name.end() ? nullptr : s.cluster(it->second);
}

const Server* server_named(const AppCloudState& s, const std::string& name) {
  auto it = s.index.server_by_name.find(name);
  return it == s.index.server_by_name.end() ? nullptr : s.server(it->second);
}

}  // namespace

// ---- decide: clusters -------------------------------------------------------------------
Result<Events> decide(const State& s, const CreateCluster& c, const Context&) {
  if (auto st = validate_id("id", c.id); !st) return st.error();
  if (auto st = validate_name("name", c.name); !st) return st.error();
  if (auto st = validate_text("description", c.description, 4096, true); !st) return st.error();
  if (auto st = validate_placement(c.placement); !st) return st.error();
  const AppCloudState& ac = s.appcloud;
  if (ac.cluster(c.id) != nullptr || s.version_of(cluster_stream(c.id)) != 0) {
    return already("cluster_exists", "cluster " + c.id + " already exists");
  }
  if (cluster_named(ac, c.name) != nullptr) {
    return already("cluster_name_taken", "a cluster named '" + c.name + "' already exists");
  }
  return Events{{cluster_stream(c.id), "ClusterCreated", 1,
                 Json{{"id", c.id},
                      {"name", c.name},
                      {"description", c.description},
                      {"placement", placement_to_json(c.placement)}}}};
}

Result<Events> decide(const State& s, const UpdateCluster& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  const Cluster* cl = ac.cluster(c.id);
  if (cl == nullptr) return missing("cluster_not_found", "cluster " + c.id + " not found");
  if (auto st = check_expected(s, cluster_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  Json changes = Json::object();
  if (c.name && *c.name != cl->name) {
    if (auto st = validate_name("name", *c.name); !st) return st.error();
    if (cluster_named(ac, *c.name) != nullptr) {
      return already("cluster_name_taken", "a cluster named '" + *c.name + "' already exists");
    }
    changes["name"] = *c.name;
  }
  if (c.description && *c.description != cl->description) {
    if (auto st = validate_text("description", *c.description, 4096, true); !st) {
      return st.error();
    }
    changes["description"] = *c.description;
  }
  if (c.placement) {
    if (auto st = validate_placement(*c.placement); !st) return st.error();
    Json p = placement_to_json(*c.placement);
    if (p != placement_to_json(cl->placement)) changes["placement"] = p;
  }
  if (changes.empty()) return Events{};
  changes["id"] = c.id;
  return Events{{cluster_stream(c.id), "ClusterUpdated", 1, changes}};
}

Result<Events> decide(const State& s, const DeleteCluster& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  if (ac.cluster(c.id) == nullptr) {
    return missing("cluster_not_found", "cluster " + c.id + " not found");
  }
  if (auto st = check_expected(s, cluster_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  auto members = ac.members(c.id);
  if (!members.empty()) {
    std::vector<std::string> ids;
    ids.reserve(members.size());
    for (const Server* m : members) ids.push_back(m->id);
    return refused("cluster_not_empty",
                   "cluster " + c.id + " still has " + std::to_string(ids.size()) +
                       " server(s): " + join(ids) + "; each must leave the cluster first");
  }
  Events out;
  remove_at(ac, Scope::cluster, c.id, nullptr, "cluster_deleted", "cluster_deleted", out);
  out.push_back({cluster_stream(c.id), "ClusterDeleted", 1, Json{{"id", c.id}}});
  return out;
}

// ---- decide: servers --------------------------------------------------------------------
Result<Events> decide(const State& s, const CreateServer& c, const Context&) {
  if (auto st = validate_id("id", c.id); !st) return st.error();
  if (auto st = validate_name("name", c.name); !st) return st.error();
  if (auto st = validate_address(c.address); !st) return st.error();
  if (auto st = validate_os_type(c.os_type); !st) return st.error();
  if (auto st = validate_text("os_version", c.os_version, 128, false); !st) return st.error();
  const AppCloudState& ac = s.appcloud;
  if (ac.server(c.id) != nullptr || s.version_of(server_stream(c.id)) != 0) {
    return already("server_exists", "server " + c.id + " already exists");
  }
  if (server_named(ac, c.name) != nullptr) {
    return already("server_name_taken", "a server named '" + c.name + "' already exists");
  }
  return Events{{server_stream(c.id), "ServerCreated", 1,
                 Json{{"id", c.id},
                      {"name", c.name},
                      {"address", c.address},
                      {"os_type", c.os_type},
                      {"os_version", c.os_version},
                      {"cpus", c.cpus},
                      {"memory_mb", c.memory_mb},
                      {"remote_app_service", c.remote_app_service}}}};
}

Result<Events> decide(const State& s, const UpdateServer& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  const Server* srv = ac.server(c.id);
  if (srv == nullptr) return missing("server_not_found", "server " + c.id + " not found");
  if (auto st = check_expected(s, server_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  Json changes = Json::object();
  if (c.name && *c.name != srv->name) {
    if (auto st = validate_name("name", *c.name); !st) return st.error();
    if (server_named(ac, *c.name) != nullptr) {
      return already("server_name_taken", "a server named '" + *c.name + "' already exists");
    }
    changes["name"] = *c.name;
  }
  if (c.address && *c.address != srv->address) {
    if (auto st = validate_address(*c.address); !st) return st.error();
    changes["address"] = *c.address;
  }
  if (c.os_version && *c.os_version != srv->os_version) {
    if (auto st = validate_text("os_version", *c.os_version, 128, false); !st) {
      return st.error();
    }
    changes["os_version"] = *c.os_version;
  }
  if (c.cpus && *c.cpus != srv->cpus) changes["cpus"] = *c.cpus;
  if (c.memory_mb && *c.memory_mb != srv->memory_mb) changes["memory_mb"] = *c.memory_mb;
  if (c.remote_app_service && *c.remote_app_service != srv->remote_app_service) {
    changes["remote_app_service"] = *c.remote_app_service;
  }
  if (changes.empty()) return Events{};
  changes["id"] = c.id;
  return Events{{server_stream(c.id), "ServerUpdated", 1, changes}};
}

Result<Events> decide(const State& s, const DeleteServer& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  if (ac.server(c.id) == nullptr) {
    return missing("server_not_found", "server " + c.id + " not found");
  }
  if (auto st = check_expected(s, server_stream(c.id), c.expected_version); !st) {
    return st.error();
  }
  Events out;
  remove_at(ac, Scope::server, c.id, nullptr, "server_deleted", "server_deleted", out);
  out.push_back({server_stream(c.id), "ServerDeleted", 1, Json{{"id", c.id}}});
  return out;
}

Result<Events> decide(const State& s, const AddServerApplication& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  const Server* srv = ac.server(c.server_id);
  if (srv == nullptr) return missing("server_not_found", "server " + c.server_id + " not found");
  if (auto st = validate_name("name", c.name); !st) return st.error();
  if (auto st = validate_text("executable_path", c.executable_path, 1024, false, true); !st) {
    return st.error();
  }
  if (auto st = validate_text("description", c.description, 4096, true); !st) return st.error();
  if (auto st = validate_text("desktop_file", c.desktop_file, 1024, false); !st) {
    return st.error();
  }
  std::string id = application_id(c.name, c.executable_path);
  if (srv->has(id)) return Events{};
  Events out;
  if (ac.application(id) == nullptr) {
    out.push_back({application_stream(id), "ApplicationRegistered", 1,
                   Json{{"id", id},
                        {"name", c.name},
                        {"description", c.description},
                        {"executable_path", c.executable_path},
                        {"desktop_file", c.desktop_file}}});
  }
  Json added{{"server_id", c.server_id}, {"application_id", id}};
  if (c.source == "agent") added["source"] = "agent";
  out.push_back({server_stream(c.server_id), "ServerApplicationAdded", 1, added});
  return out;
}

Result<Events> decide(const State& s, const RemoveServerApplication& c, const Context&) {
  const AppCloudState& ac = s.appcloud;
  const Server* srv = ac.server(c.server_id);
  if (srv == nullptr) return missing("server_not_found", "server " + c.server_id + " not found");
  if (!srv->has(c.application_id)) {
    return missing("application_not_on_server",
                   "application " + c.application_id + " is not on server " + c.server_id);
  }
  Events out;
  if (srv->standalone()) {
    remove_at(ac, Scope::server, c.server_id, &c.application_id, "application_removed",
              "application_removed", out);
  }
  out.push_back({server_stream(c.server_id), "ServerApplicationRemoved", 1,
                 Json{{"server_id", c.server_id}, {"application_id", c.application_id}}});
  return out;
}

// ---- decide: reports --------------------------------------------------------------------
Result<Events> decide(const State& s, const ReportServerInventory& c, const Context& ctx) {
  const Server* srv = s.appcloud.server(c.server_id);
  if (srv == nullptr) return missing("server_not_found", "server " + c.server_id + " not found");
  for (const auto& a : c.apps) {
    if (auto st = validate_id("apps", a); !st) return st.error();
  }
  for (const auto& u : c.users) {
    if (auto st = validate_id("users", u); !st) return st.error();
  }
  int64_t at = c.reported_at_ms > 0 ? c.reported_at_ms : ctx.now_ms;
  if (srv->reported) {
    if (at < srv->reported->reported_at_ms) return Events{};
    if (srv->reported->apps == c.apps && srv->reported->users == c.users) return Events{};
  }
  return Events{{server_inventory_stream(c.server_id), "ServerInventoryReported", 1,
                 Json{{"server_id", c.server_id},
                      {"apps", c.apps},
                      {"users", c.users},
                      {"reported_at_ms", at}}}};
}

}  // namespace atrium::domain

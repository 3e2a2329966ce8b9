// Evolve for the application cloud: how each recorded event changes AppCloudState and its
// indexes (register_appcloud fills the evolve table).
#include <set>

#include "domain/appcloud.h"
#include "domain/evolve_table.h"
#include "domain/state.h"

namespace atrium::domain {

namespace {

std::string str(const Event& e, const char* key) {
  return e.data.at(key).get<std::string>();
}

Scope scope_of(const Event& e) {
  return parse_scope(e.data.value("scope", "server")).value_or(Scope::server);
}

Server* server_of(State& s, const Event& e, const char* key = "server_id") {
  auto it = s.appcloud.servers.find(str(e, key));
  return it == s.appcloud.servers.end() ? nullptr : &it->second;
}

void on_cluster_created(State& s, const Event& e, const Applied& at) {
  Cluster c;
  c.id = str(e, "id");
  c.name = str(e, "name");
  c.description = e.data.value("description", "");
  if (e.data.contains("placement")) {
    auto p = placement_from_json(e.data["placement"]);
    if (p) c.placement = *p;
  }
  c.created_at_ms = at.recorded_at_ms;
  c.updated_at_ms = at.recorded_at_ms;
  c.version = at.stream_version;
  s.appcloud.index.cluster_by_name[c.name] = c.id;
  s.appcloud.clusters[c.id] = std::move(c);
}

void on_cluster_updated(State& s, const Event& e, const Applied& at) {
  auto it = s.appcloud.clusters.find(str(e, "id"));
  if (it == s.appcloud.clusters.end()) return;
  Cluster& c = it->second;
  if (e.data.contains("name")) {
    s.appcloud.index.cluster_by_name.erase(c.name);
    c.name = str(e, "name");
    s.appcloud.index.cluster_by_name[c.name] = c.id;
  }
  if (e.data.contains("description")) c.description = str(e, "description");
  if (e.data.contains("placement")) {
    auto p = placement_from_json(e.data["placement"]);
    if (p) c.placement = *p;
  }
  c.updated_at_ms = at.recorded_at_ms;
  c.version = at.stream_version;
}

void on_cluster_deleted(State& s, const Event& e, const Applied&) {
  auto it = s.appcloud.clusters.find(str(e, "id"));
  if (it == s.appcloud.clusters.end()) return;
  s.appcloud.index.cluster_by_name.erase(it->second.name);
  s.appcloud.index.members.erase(it->first);
  s.appcloud.clusters.erase(it);
}

void on_server_created(State& s, const Event& e, const Applied& at) {
  Server v;
  v.id = str(e, "id");
  v.name = str(e, "name");
  v.address = str(e, "address");
  v.os_type = e.data.value("os_type", "");
  v.os_version = e.data.value("os_version", "");
  v.cpus = e.data.value("cpus", 0u);
  v.memory_mb = e.data.value("memory_mb", uint64_t{0});
  v.remote_app_service = e.data.value("remote_app_service", true);
  v.created_at_ms = at.recorded_at_ms;
  v.updated_at_ms = at.recorded_at_ms;
  v.version = at.stream_version;
  s.appcloud.index.server_by_name[v.name] = v.id;
  s.appcloud.servers[v.id] = std::move(v);
}

// Marks a change on the server-<id> stream.
void touch(Server& v, const Applied& at) {
  v.updated_at_ms = at.recorded_at_ms;
  v.version = at.stream_version;
}

void on_server_updated(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e, "id");
  if (v == nullptr) return;
  if (e.data.contains("name")) {
    s.appcloud.index.server_by_name.erase(v->name);
    v->name = str(e, "name");
    s.appcloud.index.server_by_name[v->name] = v->id;
  }
  if (e.data.contains("address")) v->address = str(e, "address");
  if (e.data.contains("os_version")) v->os_version = str(e, "os_version");
  if (e.data.contains("cpus")) v->cpus = int_of<uint32_t>(e.data["cpus"]);
  if (e.data.contains("memory_mb")) v->memory_mb = int_of<uint64_t>(e.data["memory_mb"]);
  if (e.data.contains("remote_app_service")) {
    v->remote_app_service = e.data["remote_app_service"].get<bool>();
  }
  touch(*v, at);
}

void on_server_deleted(State& s, const Event& e, const Applied&) {
  Server* v = server_of(s, e, "id");
  if (v == nullptr) return;
  s.appcloud.index.server_by_name.erase(v->name);
  s.appcloud.index_membership(v->id, v->cluster_id, false);
  s.appcloud.servers.erase(v->id);
}

void on_server_app_added(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  v->applications.insert(str(e, "application_id"));
  if (e.data.value("source", "") == "agent") v->agent_applications.insert(str(e, "application_id"));
  touch(*v, at);
}

void on_server_app_removed(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  v->applications.erase(str(e, "application_id"));
  v->agent_applications.erase(str(e, "application_id"));
  touch(*v, at);
}

void on_joined(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  s.appcloud.index_membership(v->id, v->cluster_id, false);
  v->cluster_id = str(e, "cluster_id");
  s.appcloud.index_membership(v->id, v->cluster_id, true);
  touch(*v, at);
}

void on_left(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  s.appcloud.index_membership(v->id, v->cluster_id, false);
  v->cluster_id.clear();
  touch(*v, at);
}

void on_load(State& s, const Event& e, const Applied& at) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  LoadReport l;
  l.cpu_load = e.data.at("cpu_load").get<double>();
  l.memory_load = e.data.at("memory_load").get<double>();
  l.sessions = int_of<uint32_t>(e.data.at("sessions"));
  l.reported_at_ms = int_of<int64_t>(e.data.at("reported_at_ms"));
  l.since_position = at.position;
  v->load = l;
  v->load_position = at.position;
  v->launches_since_report = 0;
}

void on_inventory(State& s, const Event& e, const Applied&) {
  Server* v = server_of(s, e);
  if (v == nullptr) return;
  InventoryReport r;
  r.apps = e.data.at("apps").get<std::set<std::string>>();
  r.users = e.data.at("users").get<std::set<std::string>>();
  r.reported_at_ms = int_of<int64_t>(e.data.at("reported_at_ms"));
  v->reported = std::move(r);
}

void on_app_registered(State& s, const Event& e, const Applied& at) {
  Application a;
  a.id = str(e, "id");
  a.name = str(e, "name");
  a.description = e.data.value("description", "");
  a.executable_path = str(e, "executable_path");
  a.desktop_file = e.data.value("desktop_file", "");
  a.created_at_ms = at.recorded_at_ms;
  a.version = at.stream_version;
  s.appcloud.applications[a.id] = std::move(a);
}

void on_published(State& s, const Event& e, const Applied& at) {
  Publication p;
  p.id = str(e, "id");
  p.application_id = str(e, "application_id");
  p.scope = scope_of(e);
  p.target_id = str(e, "target_id");
  p.created_at_ms = at.recorded_at_ms;
  p.version = at.stream_version;
  if (const Publication* old = s.appcloud.publication(p.id))
    s.appcloud.index_publication(*old, false);
  s.appcloud.index_publication(p, true);
  s.appcloud.publications[p.id] = std::move(p);
}

void on_unpublished(State& s, const Event& e, const Applied&) {
  auto it = s.appcloud.publications.find(str(e, "id"));
  if (it == s.appcloud.publications.end()) return;
  s.appcloud.index_publication(it->second, false);
  s.appcloud.publications.erase(it);
}

void on_authorized(State& s, const Event& e, const Applied& at) {
  Authorization a;
  a.id = str(e, "id");
  a.user_id = str(e, "user_id");
  a.application_id = str(e, "application_id");
  a.scope = scope_of(e);
  a.target_id = str(e, "target_id");
  a.created_at_ms = at.recorded_at_ms;
  a.version = at.stream_version;
  if (const Authorization* old = s.appcloud.authorization(a.id)) {
    s.appcloud.index_authorization(*old, false);
  }
  s.appcloud.index_authorization(a, true);
  s.appcloud.authorizations[a.id] = std::move(a);
}

void on_unauthorized(State& s, const Event& e, const Applied&) {
  auto it = s.appcloud.authorizations.find(str(e, "id"));
  if (it == s.appcloud.authorizations.end()) return;
  s.appcloud.index_authorization(it->second, false);
  s.appcloud.authorizations.erase(it);
}

}  // namespace

void register_appcloud(EvolveTable& t) {
  t["ClusterCreated"] = on_cluster_created;
  t["ClusterUpdated"] = on_cluster_updated;
  t["ClusterDeleted"] = on_cluster_deleted;
  t["ServerCreated"] = on_server_created;
  t["ServerUpdated"] = on_server_updated;
  t["ServerDeleted"] = on_server_deleted;
  t["ServerApplicationAdded"] = on_server_app_added;
  t["ServerApplicationRemoved"] = on_server_app_removed;
  t["ServerJoinedCluster"] = on_joined;
  t["ServerLeftCluster"] = on_left;
  t["ServerLoadReported"] = on_load;
  t["ServerInventoryReported"] = on_inventory;
  t["ApplicationRegistered"] = on_app_registered;
  t["ApplicationPublished"] = on_published;
  t["ApplicationUnpublished"] = on_unpublished;
  t["ApplicationAuthorized"] = on_authorized;
  t["ApplicationUnauthorized"] = on_unauthorized;
}

}  // namespace atrium::domain

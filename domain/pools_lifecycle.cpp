// Pool lifecycle decisions: validating a pool's settings and its template, creating,
// updating (settings and template versions) and deleting a pool (domain/pools.h).
#include "domain/hosts.h"
#include "domain/pools.h"
#include "domain/pools_internal.h"
#include "domain/state.h"
#include "domain/users.h"

namespace atrium::domain {

using namespace pools_detail;

// ---- decide: pool lifecycle ----------------------------------------------------------
namespace {

// Validates the settings a pool would have after a create or update.
Status validate_pool(const State& s, const Pool& p, const std::string& self_id) {
  if (auto st = validate_name("name", p.name); !st) return st;
  for (const auto& [id, other] : s.pools.pools) {
    if (id != self_id && other.name == p.name) {
      return Error::make(Code::already_exists, "a pool named '" + p.name + "' already exists",
                         "pool_name_taken");
    }
  }
  if (!one_of(p.kind, {"dedicated", "floating"})) {
    return field_error("kind", "must be dedicated or floating");
  }
  if (p.host_ids.empty()) return field_error("host_ids", "must name at least one host");
  std::set<std::string> seen;
  for (const auto& h : p.host_ids) {
    const Host* host = s.hosts.host(h);
    if (host == nullptr || host->state == "removed") {
      return Error{Code::invalid_argument,
                   "host " + h + " does not exist",
                   "unknown_host",
                   {{"host_ids", "host " + h + " does not exist"}}};
    }
    if (!seen.insert(h).second) return field_error("host_ids", "must not repeat a host");
  }
  if (p.min_ready < 0) return field_error("min_ready", "must be >= 0");
  if (p.min_standby < 0) return field_error("min_standby", "must be >= 0");
  if (p.max_size < 1 || p.max_size > 10000) return field_error("max_size", "must be 1 to 10000");
  if (p.min_ready + p.min_standby > p.max_size) {
    return Error{Code::invalid_argument,
                 "min_ready + min_standby must not exceed max_size",
                 "invalid_capacity",
                 {{"max_size", "must be >= min_ready + min_standby"}}};
  }
  if (!one_of(p.power_policy,
              {"keep_on", "shutdown_on_logoff", "shutdown_when_idle", "refresh_on_logoff"})) {
    return field_error(
        "power_policy",
        "must be keep_on, shutdown_on_logoff, shutdown_when_idle or refresh_on_logoff");
  }
  if (p.power_policy == "refresh_on_logoff" && p.kind != "floating") {
    return field_error("power_policy", "refresh_on_logoff is for floating pools only");
  }
  if (p.idle_timeout_s < 1) return field_error("idle_timeout_s", "must be >= 1");
  if (!one_of(p.reconnect, {"always", "disconnected_only"})) {
    return field_error("reconnect", "must be always or disconnected_only");
  }
  if (p.grace_s < 0) return field_error("grace_s", "must be >= 0");
  if (p.policy.idle_timeout_s < 0) return field_error("policy.idle_timeout_s", "must be >= 0");
  return Status::Ok();
}

Json pool_settings(const Pool& p) {
  return Json{{"name", p.name},
              {"host_ids", p.host_ids},
              {"min_ready", p.min_ready},
              {"min_standby", p.min_standby},
              {"max_size", p.max_size},
              {"power_policy", p.power_policy},
              {"idle_timeout_s", p.idle_timeout_s},
              {"reconnect", p.reconnect},
              {"grace_s", p.grace_s},
              {"policy", pool_policy_to_json(p.policy)}};
}

}  // namespace

// Checks a template (CreatePool, UpdatePool) and completes it: memory, storage pool, and the
// base volume from the template's own disk when none is given.
Result<PoolTemplate> resolve_template(const State& s, const PoolTemplate& in) {
  PoolTemplate t = in;
  if (in.domain_xml.empty()) {
    if (!in.domain_name.empty()) {
      // The API exports the named domain's definition before it submits the command.
      return Error::make(
          Code::failed_precondition,
          "the definition of template domain " + in.domain_name + " was not exported",
          "template_not_exported");
    }
    return field_error("template", "must carry domain_xml or domain_name", "invalid_template");
  }
  if (in.domain_xml.size() > 65536)
    return field_error("template.domain_xml", "must be at most 64 KiB");
  if (!in.domain_name.empty() && s.hosts.host(in.host_id) == nullptr) {
    return field_error("template.host_id", "no host " + in.host_id, "host_not_found");
  }
  t.memory_kib = domain_memory_kib(in.domain_xml);
  t.storage_pool = in.storage_pool.empty() ? "default" : in.storage_pool;
  TemplateDisks disks = template_disks(in.domain_xml);
  if (disks.writable > 1) {
    return field_error(
        "template",
        "has " + std::to_string(disks.writable) +
            " writable disks: a member gets a copy-on-write overlay of the first only, and "
            "every member would share the others (mark them <readonly/> or <shareable/>, or "
            "remove them)",
        "invalid_template");
  }
  bool base_is_template_disk = false;
  if (disks.writable == 1 && t.base_volume.empty()) {
    if (disks.first_file.empty()) {
      return field_error(
          "template.base_volume",
          "is required: the template's disk has no file source to use as the base of the "
          "members' overlays",
          "invalid_template");
    }
    t.base_volume = disks.first_file;  // members never write to the template's disk
    base_is_template_disk = true;
  } else if (disks.writable == 1 && t.base_volume == disks.first_file) {
    base_is_template_disk = true;
  }
  if (base_is_template_disk && !in.domain_name.empty()) {
    for (const Vm* v : s.hosts.vms_of(in.host_id)) {
      if (v->name == in.domain_name && v->observed != "shut_off" && v->observed != "missing" &&
          v->observed != "unknown") {
        return refused(
            "template_running",
            "template domain " + in.domain_name + " is " + v->observed +
                ": shut it down first, overlays over a disk that is still being written would "
                "be corrupt");
      }
    }
  }
  MemberXmlParams probe;
  probe.name = "probe";
  probe.uuid = "00000000-0000-4000-8000-000000000000";
  probe.mac = "52:54:00:00:00:00";
  if (!t.base_volume.empty()) probe.overlay_path = "/probe.qcow2";
  if (auto x = member_domain_xml(in.domain_xml, probe); !x.ok()) return x.error();
  return t;
}

Result<Events> decide(const State& s, const CreatePool& c, const Context&) {
  if (c.id.empty()) return invalid("pool id is required");
  if (s.pools.pool(c.id) != nullptr) {
    return Error::make(Code::already_exists, "pool " + c.id + " exists", "pool_exists");
  }
  Pool p;
  p.name = c.name;
  p.kind = c.kind;
  p.tmpl = c.tmpl;
  p.host_ids = c.host_ids;
  p.min_ready = c.min_ready;
  p.min_standby = c.min_standby;
  p.max_size = c.max_size;
  p.power_policy = c.power_policy;
  p.idle_timeout_s = c.idle_timeout_s;
  p.reconnect = c.reconnect;
  p.grace_s = c.grace_s;
  p.policy = c.policy;
  if (auto st = validate_pool(s, p, c.id); !st) return st.error();
  auto tmpl = resolve_template(s, c.tmpl);
  if (!tmpl.ok()) return tmpl.error();
  p.tmpl = std::move(*tmpl);
  Json data = pool_settings(p);
  data["id"] = c.id;
  data["kind"] = c.kind;
  data["template"] = template_to_json(p.tmpl);
  return Events{pool_event(c.id, "PoolCreated", data)};
}

Result<Events> decide(const State& s, const UpdatePool& c, const Context&) {
  const Pool* cur = s.pools.pool(c.id);
  if (cur == nullptr) return pool_not_found(c.id);
  if (auto st = check_expected(s, pool_stream(c.id), c.expected_version); !st) return st.error();
  if (cur->deleting) return refused("pool_deleting", "pool " + cur->name + " is being deleted");
  Pool p = *cur;
  if (c.name) p.name = *c.name;
  if (c.host_ids) p.host_ids = *c.host_ids;
  if (c.min_ready) p.min_ready = *c.min_ready;
  if (c.min_standby) p.min_standby = *c.min_standby;
  if (c.max_size) p.max_size = *c.max_size;
  if (c.power_policy) p.power_policy = *c.power_policy;
  if (c.idle_timeout_s) p.idle_timeout_s = *c.idle_timeout_s;
  if (c.reconnect) p.reconnect = *c.reconnect;
  if (c.grace_s) p.grace_s = *c.grace_s;
  if (c.policy) p.policy = *c.policy;
  if (auto st = validate_pool(s, p, c.id); !st) return st.error();
  Json before = pool_settings(*cur), after = pool_settings(p), changes = Json::object();
  for (auto& [k, v] : after.items()) {
    if (before[k] != v) changes[k] = v;
  }
  if (c.tmpl) {
    auto t = resolve_template(s, *c.tmpl);
    if (!t.ok()) return t.error();
    if (t->base_volume.empty() != cur->tmpl.base_volume.empty() ||
        t->storage_pool != cur->tmpl.storage_pool) {
      return refused("template_layout_changed",
                     "a template update keeps the pool's disk layout (" +
                         (cur->tmpl.base_volume.empty()
                              ? std::string("diskless")
                              : "overlays in storage pool " + cur->tmpl.storage_pool) +
                         "): create a new pool for another layout");
    }
    Json tj = template_to_json(*t);
    if (tj != template_to_json(cur->tmpl)) {
      changes["template"] = tj;
      changes["template_version"] = cur->template_version + 1;
    }
  }
  if (changes.empty()) return Events{};
  return Events{pool_event(c.id, "PoolUpdated", changes)};
}

Result<Events> decide(const State& s, const DeletePool& c, const Context&) {
  const Pool* p = s.pools.pool(c.id);
  if (p == nullptr) return pool_not_found(c.id);
  if (auto st = check_expected(s, pool_stream(c.id), c.expected_version); !st) return st.error();
  if (p->deleting) return Events{};
  Events out{pool_event(c.id, "PoolDeletionRequested", Json::object())};
  if (s.pools.members_of(c.id).empty())
    out.push_back(pool_event(c.id, "PoolDeleted", Json::object()));
  return out;
}

Result<Events> decide(const State& s, const FinishPoolDeletion& c, const Context&) {
  const Pool* p = s.pools.pool(c.id);
  if (p == nullptr || !p->deleting) return Events{};
  if (!s.pools.members_of(c.id).empty()) {
    return refused("pool_has_members", "pool " + p->name + " still has VMs");
  }
  return Events{pool_event(c.id, "PoolDeleted", Json::object())};
}

}  // namespace atrium::domain

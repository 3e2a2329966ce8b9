// Hosts, VMs and operations: translate HTTP into domain commands and views (domain/hosts.h).
#include <algorithm>

#include "api/api.h"
#include "api/crypto.h"
#include "api/json_input.h"
#include "domain/host_uri.h"
#include "domain/hosts.h"
#include "domain/state.h"

namespace atrium::api {

using domain::State;
using pipeline::Command;

namespace {

// 202 answers point at the operation to follow.
HttpResponse accepted(HttpResponse r, const std::string& op_id) {
  if (r.status == 202) r.with_header("Location", "/v1/operations/" + op_id);
  return r;
}

template <typename T, typename ToJson>
HttpResponse list_page(const Page& pg, std::vector<const T*> all, ToJson to_json) {
  size_t n = std::min(all.size(), pg.limit);
  std::partial_sort(all.begin(), all.begin() + static_cast<long>(n), all.end(),
                    [](auto* a, auto* b) { return a->id < b->id; });
  Json items = Json::array();
  for (size_t i = 0; i < n; ++i) items.push_back(to_json(*all[i]));
  Json out{{"items", items}, {"next_cursor", nullptr}};
  if (all.size() > n) out["next_cursor"] = Api::encode_cursor(all[n - 1]->id);
  return HttpResponse::json(200, out);
}

std::string query(const HttpRequest& req, const char* name) {
  auto it = req.query.find(name);
  return it == req.query.end() ? "" : it->second;
}

void register_hosts(Api& api) {
  Router& r = api.router();
  r.add("POST", "/v1/hosts", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"name", "uri", "address", "display_ports", "spice_tls"});
    auto name = br.str("name", true, 128, 1);
    auto uri = br.str("uri", true, 1024, 1);
    auto address = br.str("address", false, 255, 1);
    domain::PortRange ports;
    if (const Json* dp = br.object("display_ports", false)) {
      BodyReader pr(*dp, {"first", "last"});
      auto first = pr.integer("first", true, 1, 65535);
      auto last = pr.integer("last", true, 1, 65535);
      if (auto st = pr.finish(); !st) {
        for (const auto& f : st.error().fields) br.fail("display_ports." + f.field, f.message);
      } else {
        ports = {static_cast<int>(*first), static_cast<int>(*last)};
      }
    }
    std::string ca, subject;
    if (const Json* tls = br.object("spice_tls", false)) {
      BodyReader tr(*tls, {"ca_cert", "host_subject"});
      auto c = tr.str("ca_cert", true, 16384, 1);
      auto h = tr.str("host_subject", true, 512, 1);
      if (auto st = tr.finish(); !st) {
        for (const auto& f : st.error().fields) br.fail("spice_tls." + f.field, f.message);
      } else {
        ca = *c;
        subject = *h;
      }
    }
    if (auto st = br.finish(); !st) return problem(st.error());
    // 10.4: a libvirt URI can run commands and read files here; only allowed ones pass.
    if (auto st = domain::check_host_uri(*uri, api.config().host_uris); !st) {
      return problem(st.error());
    }
    domain::AddHost c{new_id(), new_id(), *name, *uri, address.value_or(""), ports, ca, subject};
    Command cmd = command("AddHost", c, 202);
    cmd.render = [op = c.operation_id](const State& s) {
      return domain::operation_to_json(*s.hosts.operation(op));
    };
    return accepted(api.run(req, std::move(cmd)), c.operation_id);
  });

  r.add("GET", "/v1/hosts", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    std::string state = query(req, "state");
    return api.with_state(req, [&](const State& s) {
      std::vector<const domain::Host*> all;
      for (const auto& [id, h] : s.hosts.hosts) {
        if (id <= pg->after) continue;
        if (state.empty() ? h.state == "removed" : h.state != state) continue;
        all.push_back(&h);
      }
      return list_page(*pg, std::move(all),
                       [&](const domain::Host& h) { return domain::host_to_json(s.hosts, h); });
    });
  });

  r.add("GET", "/v1/hosts/{id}", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      return entity_response(s.hosts.host(id), "host", id, [&](const domain::Host& x) {
        return domain::host_to_json(s.hosts, x);
      });
    });
  });

  r.add("DELETE", "/v1/hosts/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    return api.run(req, command("RemoveHost", domain::RemoveHost{req.param("id"), *expected}, 204));
  });

  auto host_action = [&api](const char* name, auto make) {
    return [&api, name, make](HttpRequest& req) {
      if (!req.body.empty()) {
        auto body = parse_object(req.body);
        if (!body.ok()) return problem(body.error());
        BodyReader br(*body, {});
        if (auto st = br.finish(); !st) return problem(st.error());
      }
      auto expected = api.if_match(req);
      if (!expected.ok()) return problem(expected.error());
      std::string id = req.param("id");
      Command cmd = command(name, make(id, *expected), 200);
      cmd.render = [id](const State& s) { return domain::host_to_json(s.hosts, *s.hosts.host(id)); };
      return api.run(req, std::move(cmd));
    };
  };
  r.add("POST", "/v1/hosts/{id}/maintenance", Access::Admin(),
        host_action("EnterMaintenance", [](const std::string& id, std::optional<uint64_t> v) {
          return domain::EnterMaintenance{id, v};
        }));
  r.add("POST", "/v1/hosts/{id}/activate", Access::Admin(),
        host_action("ActivateHost", [](const std::string& id, std::optional<uint64_t> v) {
          return domain::ActivateHost{id, v};
        }));
}

void register_vms(Api& api) {
  Router& r = api.router();
  r.add("GET", "/v1/vms", Access::Admin(), [&api](HttpRequest& req) {
    auto pg = api.page(req);
    if (!pg.ok()) return problem(pg.error());
    std::string host_id = query(req, "host_id"), pool_id = query(req, "pool_id"),
                state = query(req, "state");
    return api.with_state(req, [&](const State& s) {
      std::vector<const domain::Vm*> all;
      for (const auto& [id, v] : s.hosts.vms) {
        if (id <= pg->after) continue;
        if (!host_id.empty() && v.host_id != host_id) continue;
        if (!pool_id.empty() && v.pool_id != pool_id) continue;
        if (!state.empty() && domain::shown_observed(s.hosts, v) != state) continue;
        all.push_back(&v);
      }
      return list_page(*pg, std::move(all),
                       [&](const domain::Vm& v) { return domain::vm_to_json(s.hosts, v); });
    });
  });

  r.add("GET", "/v1/vms/{id}", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      return entity_response(s.hosts.vm(id), "vm", id, [&](const domain::Vm& x) {
        return domain::vm_to_json(s.hosts, x);
      });
    });
  });

  // Forgets a VM the broker should no longer list: observed missing, or unmanaged (a later
  // relist imports an unmanaged VM again while its domain exists). 204; 409 vm_managed for a
  // pool's VM that still exists, vm_in_use with a live desktop session.
  r.add("DELETE", "/v1/vms/{id}", Access::Admin(), [&api](HttpRequest& req) {
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    return api.run(req, command("ForgetVm", domain::ForgetVm{req.param("id"), *expected}, 204));
  });

  r.add("POST", "/v1/vms/{id}/power", Access::Admin(), [&api](HttpRequest& req) {
    auto body = parse_object(req.body);
    if (!body.ok()) return problem(body.error());
    BodyReader br(*body, {"action"});
    auto action = br.one_of("action", true, {"start", "shutdown", "reboot", "destroy"});
    if (auto st = br.finish(); !st) return problem(st.error());
    auto expected = api.if_match(req);
    if (!expected.ok()) return problem(expected.error());
    domain::RequestVmPower c{req.param("id"), new_id(), *action, *expected};
    Command cmd = command("RequestVmPower", c, 202);
    cmd.render = [op = c.operation_id](const State& s) {
      return domain::operation_to_json(*s.hosts.operation(op));
    };
    return accepted(api.run(req, std::move(cmd)), c.operation_id);
  });

  // Reserves a display port of the VM's host (pools use the same command); 409
  // display_ports_exhausted when the range is full.
  r.add("POST", "/v1/vms/{id}/display-port", Access::Admin(), [&api](HttpRequest& req) {
    std::string id = req.param("id");
    Command cmd = command("AllocateDisplayPort", domain::AllocateDisplayPort{id}, 200);
    cmd.render = [id](const State& s) { return domain::vm_to_json(s.hosts, *s.hosts.vm(id)); };
    return api.run(req, std::move(cmd));
  });
}

void register_operations(Api& api) {
  Router& r = api.router();
  r.add("GET", "/v1/operations/{id}", Access::Admin(), [&api](HttpRequest& req) {
    const std::string& id = req.param("id");
    return api.with_state(req, [&](const State& s) {
      return entity_response(s.hosts.operation(id), "operation", id, [&](const domain::Operation& x) {
        return domain::operation_to_json(x);
      });
    });
  });

  r.add("POST", "/v1/operations/{id}/cancel", Access::Admin(), [&api](HttpRequest& req) {
    std::optional<std::string> reason;
    if (!req.body.empty()) {
      auto body = parse_object(req.body);
      if (!body.ok()) return problem(body.error());
      BodyReader br(*body, {"reason"});
      reason = br.str("reason", false, 512, 1);
      if (auto st = br.finish(); !st) return problem(st.error());
    }
    std::string id = req.param("id");
    Command cmd = command("CancelOperation", domain::CancelOperation{id, reason.value_or("")}, 200);
    cmd.render = [id](const State& s) { return domain::operation_to_json(*s.hosts.operation(id)); };
    return api.run(req, std::move(cmd));
  });
}

}  // namespace

void register_host_routes(Api& api) {
  register_hosts(api);
  register_vms(api);
  register_operations(api);
}

}  // namespace atrium::api

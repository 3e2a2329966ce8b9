// Fixtures of the pools decider tests (pools_test.cpp, desktop_sessions_test.cpp): a host, a
// pool with entitled users, and members provisioned the way the pool worker does it.
#pragma once

#include <doctest/doctest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "domain/hosts.h"
#include "domain/pools.h"
#include "domain/state.h"
#include "domain/users.h"
#include "given.h"

namespace atrium::domain::testing {

inline const char* kXml =
    "<domain type='test'><name>tmpl</name><uuid>11111111-1111-4111-8111-111111111111</uuid>"
    "<memory unit='MiB'>512</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices>"
    "<interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>"
    "<graphics type='vnc' port='5900'/></devices></domain>";

inline UpdatePool upd(const std::string& id) {
  UpdatePool u;
  u.id = id;
  return u;
}

inline void add_host(Given& g, const std::string& id, uint64_t mem_kib, PortRange ports = {}) {
  g.ok(AddHost{id, "op-" + id, "host-" + id, "test:///default", "", ports});
  g.ok(RecordHostConnected{id, 1, Json{{"memory_kib", mem_kib}}});
}

inline CreatePool pool_cmd(const std::string& id, const std::string& kind, std::vector<std::string> hosts,
                    int min_ready = 0, int max_size = 4) {
  CreatePool c;
  c.id = id;
  c.name = "pool-" + id;
  c.kind = kind;
  c.tmpl.domain_xml = kXml;
  c.host_ids = std::move(hosts);
  c.min_ready = min_ready;
  c.max_size = max_size;
  return c;
}

inline int uuid_seq = 0;
// Provisions one member the way the worker does: propose, define (observe), record.
inline std::string provision(Given& g, const std::string& pool, const std::string& observed = "shut_off") {
  ++uuid_seq;
  char uuid[64];
  std::snprintf(uuid, sizeof uuid, "00000000-0000-4000-8000-%012d", uuid_seq);
  auto es = g.ok(ProvisionPoolVm{pool, "vm" + std::to_string(uuid_seq), uuid, "52:54:00:00:00:01", false});
  REQUIRE(types(es) == V{"PoolVmProvisionStarted"});
  std::string vm = es[0].data["vm_id"];
  std::string host = es[0].data["host_id"];
  // The host reconciler observes the new domain (keeping the others).
  RecordDomainsObserved obs{host, g.s.hosts.host(host)->epoch, {}};
  for (const Vm* v : g.s.hosts.vms_of(host)) obs.domains.push_back({v->name, v->uuid, v->observed, v->display_port});
  obs.domains.push_back({"vm" + std::to_string(uuid_seq), uuid, observed, -1});
  g.ok(obs);
  auto rec = g.ok(RecordPoolVmProvisioned{vm, true, ""});
  CHECK(types(rec) == V{"PoolVmProvisioned", "VmAdopted"});
  return vm;
}

inline void set_observed(Given& g, const std::string& vm, const std::string& state, int port = -1) {
  std::string host = g.s.hosts.vm(vm)->host_id;
  RecordDomainsObserved obs{host, g.s.hosts.host(host)->epoch, {}};
  for (const Vm* v : g.s.hosts.vms_of(host)) {
    if (v->id == vm) {
      obs.domains.push_back({v->name, v->uuid, state, port});
    } else if (v->observed != "missing") {
      obs.domains.push_back({v->name, v->uuid, v->observed, v->display_port});
    }
  }
  g.ok(obs);
}

inline Given base(const std::string& kind, int max_size = 4, PortRange ports = {}) {
  Given g;
  g.ok(CreateUser{"alice", "alice", {"user"}, ""});
  g.ok(CreateUser{"bob", "bob", {"user"}, ""});
  g.ok(CreateUser{"carol", "carol", {"user"}, ""});
  add_host(g, "h1", 8ull << 20, ports);
  g.ok(pool_cmd("p", kind, {"h1"}, 0, max_size));
  for (auto u : {"alice", "bob", "carol"}) g.ok(AddEntitlement{"p", u});
  return g;
}


}  // namespace atrium::domain::testing

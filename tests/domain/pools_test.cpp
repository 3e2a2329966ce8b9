// Desktop pools, entitlements, assignments, sessions and power policy: given events, when
// command, then events or error. Replaying the produced log must rebuild the same state.
#include <doctest/doctest.h>

#include <algorithm>

#include "domain/hosts.h"
#include "domain/pools.h"
#include "domain/state.h"
#include "domain/users.h"
#include "given.h"
#include "pools_fixture.h"

using namespace atrium;
using namespace atrium::domain;
using atrium::domain::testing::Given;
using atrium::domain::testing::types;
using atrium::domain::testing::V;
using namespace atrium::domain::testing;


TEST_CASE("pool creation validates every setting with a specific reason") {
  Given g;
  add_host(g, "h1", 1 << 20);
  struct Row {
    std::function<void(CreatePool&)> change;
    std::string reason;
  };
  std::vector<Row> rows = {
      {[](CreatePool& c) { c.kind = "shared"; }, "invalid_pool"},
      {[](CreatePool& c) { c.host_ids = {}; }, "invalid_pool"},
      {[](CreatePool& c) { c.host_ids = {"nope"}; }, "unknown_host"},
      {[](CreatePool& c) { c.host_ids = {"h1", "h1"}; }, "invalid_pool"},
      {[](CreatePool& c) { c.max_size = 0; }, "invalid_pool"},
      {[](CreatePool& c) { c.min_ready = 3; c.min_standby = 2; c.max_size = 4; }, "invalid_capacity"},
      {[](CreatePool& c) { c.power_policy = "sleep"; }, "invalid_pool"},
      {[](CreatePool& c) { c.kind = "dedicated"; c.power_policy = "refresh_on_logoff"; }, "invalid_pool"},
      {[](CreatePool& c) { c.reconnect = "never"; }, "invalid_pool"},
      {[](CreatePool& c) { c.tmpl.domain_xml = "<vm/>"; }, "invalid_template"},
      {[](CreatePool& c) { c.tmpl.domain_xml = ""; }, "invalid_template"},
      // A named template whose definition the API did not export.
      {[](CreatePool& c) { c.tmpl.domain_xml = ""; c.tmpl.domain_name = "x"; c.tmpl.host_id = "h1"; },
       "template_not_exported"},
      {[](CreatePool& c) { c.tmpl.domain_name = "x"; c.tmpl.host_id = "nope"; }, "host_not_found"},
      // Two writable disks: every member would share the second one.
      {[](CreatePool& c) {
         c.tmpl.domain_xml = std::string(kXml).replace(
             std::string(kXml).find("<interface"), 0,
             "<disk type='file' device='disk'><source file='/a.qcow2'/></disk>"
             "<disk type='file'><source file='/b.img'/></disk>");
       },
       "invalid_template"},
      // A writable disk without a file source and no base volume: nothing to put overlays on.
      {[](CreatePool& c) {
         c.tmpl.domain_xml = std::string(kXml).replace(
             std::string(kXml).find("<interface"), 0,
             "<disk type='block' device='disk'><source dev='/dev/sdz'/></disk>");
       },
       "invalid_template"},
      {[](CreatePool& c) { c.tmpl.base_volume = "/base.qcow2"; }, "invalid_template"},  // no <disk>
  };
  for (const auto& row : rows) {
    CreatePool c = pool_cmd("p", "floating", {"h1"});
    row.change(c);
    CAPTURE(row.reason);
    CHECK(g.err(c).reason == row.reason);
  }
  g.ok(pool_cmd("p", "floating", {"h1"}));
  CreatePool dup = pool_cmd("q", "floating", {"h1"});
  dup.name = "pool-p";
  CHECK(g.err(dup).reason == "pool_name_taken");
  CHECK(g.s.pools.pool("p")->tmpl.memory_kib == 512 * 1024);
  g.check_replay();
}

TEST_CASE("template disks: the first writable disk is the base of the overlays, never written by members") {
  Given g;
  add_host(g, "h1", 1 << 20);
  const std::string disks =
      "<disk type='file' device='cdrom'><source file='/iso/install.iso'/><readonly/></disk>"
      "<disk type='volume' device='disk'><driver name='qemu' type='raw'/>"
      "<source pool='default' volume='gold.img'/><target dev='vda'/></disk>"
      "<disk type='file' device='disk'><source file='/shared/data.img'/><shareable/></disk>";
  std::string xml = std::string(kXml).replace(std::string(kXml).find("<interface"), 0, disks);
  TemplateDisks d = template_disks(xml);
  CHECK(d.writable == 1);
  CHECK(d.first_file.empty());  // a volume source, not a file

  SUBCASE("a disk with a file source becomes the base volume when none is given") {
    std::string fxml = xml;
    fxml.replace(fxml.find("<disk type='volume'"), std::string("<disk type='volume'").size(), "<disk type='file'");
    fxml.replace(fxml.find("<source pool='default' volume='gold.img'/>"),
                 std::string("<source pool='default' volume='gold.img'/>").size(),
                 "<source file='/var/lib/libvirt/images/gold.img'/>");
    CHECK(template_disks(fxml).first_file == "/var/lib/libvirt/images/gold.img");
    CreatePool c = pool_cmd("p", "floating", {"h1"});
    c.tmpl.domain_xml = fxml;
    g.ok(c);
    CHECK(g.s.pools.pool("p")->tmpl.base_volume == "/var/lib/libvirt/images/gold.img");
    g.check_replay();
  }
  SUBCASE("a disk without a file source needs base_volume; the overlay goes on that disk only") {
    CreatePool c = pool_cmd("p", "floating", {"h1"});
    c.tmpl.domain_xml = xml;
    CHECK(g.err(c).reason == "invalid_template");
    c.tmpl.base_volume = "/base/gold.qcow2";
    g.ok(c);
    MemberXmlParams mp;
    mp.name = "m1";
    mp.uuid = "22222222-2222-4222-8222-222222222222";
    mp.mac = "52:54:00:01:02:03";
    mp.overlay_path = "/pool/m1.qcow2";
    auto out = member_domain_xml(xml, mp);
    REQUIRE(out.ok());
    // The cdrom and the shareable disk keep their sources; the writable disk becomes a qcow2
    // file disk on the overlay, with its target kept.
    CHECK(out->find("<source file='/iso/install.iso'/>") != std::string::npos);
    CHECK(out->find("<source file='/shared/data.img'/>") != std::string::npos);
    CHECK(out->find("gold.img") == std::string::npos);
    auto disk = out->find("<disk type='file' device='disk'>");
    REQUIRE(disk != std::string::npos);
    auto end = out->find("</disk>", disk);
    std::string one = out->substr(disk, end - disk);
    CHECK(one.find("<driver name='qemu' type='qcow2'/>") != std::string::npos);
    CHECK(one.find("<source file='/pool/m1.qcow2'/>") != std::string::npos);
    CHECK(one.find("<target dev='vda'/>") != std::string::npos);
  }
}

TEST_CASE("named template: kept with its host, refused while the domain whose disk is the base runs") {
  Given g;
  add_host(g, "h1", 1 << 20);
  std::string xml = std::string(kXml).replace(std::string(kXml).find("<interface"), 0,
                                              "<disk type='file' device='disk'><source file='/img/gold.qcow2'/></disk>");
  g.ok(RecordDomainsObserved{"h1", g.s.hosts.host("h1")->epoch,
                             {{"gold", "33333333-3333-4333-8333-333333333333", "running", 5900}}});
  CreatePool c = pool_cmd("p", "floating", {"h1"});
  c.tmpl.domain_xml = xml;  // as exported by the API
  c.tmpl.domain_name = "gold";
  c.tmpl.host_id = "h1";
  Error e = g.err(c);
  CHECK(e.reason == "template_running");
  CHECK(e.message.find("gold is running") != std::string::npos);
  // A base volume of its own makes the template's state irrelevant.
  CreatePool other = c;
  other.tmpl.base_volume = "/img/other.qcow2";
  other.id = "q";
  other.name = "pool-q";
  g.ok(other);
  g.ok(RecordDomainsObserved{"h1", g.s.hosts.host("h1")->epoch,
                             {{"gold", "33333333-3333-4333-8333-333333333333", "shut_off", -1}}});
  g.ok(c);
  const Pool* p = g.s.pools.pool("p");
  CHECK(p->tmpl.domain_name == "gold");
  CHECK(p->tmpl.host_id == "h1");
  CHECK(p->tmpl.base_volume == "/img/gold.qcow2");
  Json view = pool_to_json(g.s, *p);
  CHECK(view["template"]["domain_name"] == "gold");
  CHECK(view["template"]["base_volume"] == "/img/gold.qcow2");
  g.check_replay();
}

TEST_CASE("member XML: new name, uuid, mac, overlay disk and a spice display with a password") {
  std::string xml = std::string(kXml);
  xml.replace(xml.find("<graphics"), 0,
              "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
              "<source file='/base.img'/><target dev='vda'/></disk>");
  MemberXmlParams p;
  p.name = "desk-1";
  p.uuid = "22222222-2222-4222-8222-222222222222";
  p.mac = "52:54:00:12:34:56";
  p.overlay_path = "/pool/desk-1.qcow2";
  p.spice_port = 5511;
  p.spice_password = "s3cret";
  p.spice_listen = "127.0.0.1";
  auto out = member_domain_xml(xml, p);
  REQUIRE(out.ok());
  CHECK(out->find("<name>desk-1</name>") != std::string::npos);
  CHECK(out->find("<uuid>22222222-2222-4222-8222-222222222222</uuid>") != std::string::npos);
  CHECK(out->find("52:54:00:12:34:56") != std::string::npos);
  CHECK(out->find("52:54:00:aa:bb:cc") == std::string::npos);
  CHECK(out->find("<source file='/pool/desk-1.qcow2'/>") != std::string::npos);
  CHECK(out->find("/base.img") == std::string::npos);
  CHECK(out->find("type='qcow2'") != std::string::npos);
  CHECK(out->find("type='vnc'") == std::string::npos);
  CHECK(out->find("<graphics type='spice' port='5511' autoport='no' passwd='s3cret'") != std::string::npos);
  CHECK(domain_memory_kib(*out) == 512 * 1024);
}

TEST_CASE("host choice: only up hosts, most free memory, then free ports; reasons otherwise") {
  Given g;
  add_host(g, "h1", 4ull << 20);
  add_host(g, "h2", 8ull << 20, PortRange{5500, 5501});
  g.ok(pool_cmd("p", "floating", {"h1", "h2"}, 0, 10));
  // h2 has more memory: the first members go there until its memory or ports run out.
  CHECK(*choose_host(g.s, *g.s.pools.pool("p")) == "h2");
  g.ok(EnterMaintenance{"h2", std::nullopt});
  CHECK(*choose_host(g.s, *g.s.pools.pool("p")) == "h1");
  g.ok(EnterMaintenance{"h1", std::nullopt});
  CHECK(choose_host(g.s, *g.s.pools.pool("p")).error().reason == "no_host_up");
  CHECK(g.err(ProvisionPoolVm{"p", "n", "u-1", "m", false}).reason == "no_host_up");
  g.ok(ActivateHost{"h2", std::nullopt});
  // Spread: members count against their host's free memory.
  for (int i = 0; i < 9; ++i) provision(g, "p");
  int on_h1 = 0, on_h2 = 0;
  for (const PoolMember* m : g.s.pools.members_of("p")) (m->host_id == "h1" ? on_h1 : on_h2)++;
  CHECK(on_h1 == 0);  // h1 is still in maintenance
  CHECK(on_h2 == 9);
  g.ok(ActivateHost{"h1", std::nullopt});
  provision(g, "p");
  CHECK(g.err(ProvisionPoolVm{"p", "n", "u-x", "m", false}).reason == "pool_full");
  g.check_replay();
}

TEST_CASE("launch: floating hands out free VMs, never one VM to two users; refusal reasons") {
  Given g = base("floating", 2, PortRange{5500, 5501});
  CHECK(g.err(LaunchDesktop{"s0", "alice", "p"}).reason == "no_vm_ready");
  std::string v1 = provision(g, "p"), v2 = provision(g, "p");
  auto e1 = g.ok(LaunchDesktop{"s1", "alice", "p"});
  CHECK(types(e1) == V{"DisplayPortAllocated", "DesktopAssigned", "DesktopSessionCreated"});
  auto e2 = g.ok(LaunchDesktop{"s2", "bob", "p"});
  CHECK(g.s.pools.session("s1")->vm_id != g.s.pools.session("s2")->vm_id);
  CHECK(g.err(LaunchDesktop{"s3", "carol", "p"}).reason == "pool_full");
  // A second launch of alice reconnects: no new events, same session.
  CHECK(g.ok(LaunchDesktop{"s4", "alice", "p"}).empty());
  CHECK(g.s.pools.live_session("p", "alice")->id == "s1");
  // Logoff frees the VM for carol.
  auto end = g.ok(EndDesktopSession{"s1", "logoff", "op-1"});
  CHECK(types(end) == V{"DesktopSessionEnded", "DesktopUnassigned"});
  // Not before alice's viewer is gone: the display reset comes first (issue 9.2).
  std::string alices = g.s.pools.session("s1")->vm_id;
  CHECK(g.s.pools.member(alices)->display_reset == "session_ended: logoff");
  CHECK_FALSE(member_free(g.s, *g.s.pools.member(alices)));
  CHECK(g.err(LaunchDesktop{"s5", "carol", "p"}).reason == "desktop_releasing");
  CHECK(types(g.ok(RecordDisplayReset{alices, true, "rotated"})) == V{"PoolVmDisplayReset"});
  CHECK(g.ok(RecordDisplayReset{alices, true, "again"}).empty());  // a repeat is nothing
  g.ok(LaunchDesktop{"s5", "carol", "p"});
  CHECK(g.s.pools.session("s5")->vm_id == g.s.pools.session("s1")->vm_id);
  g.check_replay();
}

TEST_CASE("launch refusals: not entitled, no host up, ports exhausted; nothing half assigned") {
  Given g = base("floating", 3, PortRange{5500, 5500});
  g.ok(CreateUser{"dave", "dave", {"user"}, ""});
  provision(g, "p");
  provision(g, "p");
  CHECK(g.err(LaunchDesktop{"s0", "dave", "p"}).reason == "not_entitled");
  g.ok(LaunchDesktop{"s1", "alice", "p"});  // takes the only port
  uint64_t before = g.pos;
  CHECK(g.err(LaunchDesktop{"s2", "bob", "p"}).reason == "display_ports_exhausted");
  CHECK(g.pos == before);
  CHECK(g.s.pools.assigned("p", "bob") == nullptr);
  g.ok(EnterMaintenance{"h1", std::nullopt});
  CHECK(g.err(LaunchDesktop{"s3", "bob", "p"}).reason == "no_host_up");
  CHECK(g.s.pools.live_session("p", "bob") == nullptr);
}

TEST_CASE("dedicated: assigned on first launch and kept across sessions") {
  Given g = base("dedicated", 2);
  std::string v1 = provision(g, "p"), v2 = provision(g, "p");
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  std::string mine = g.s.pools.session("s1")->vm_id;
  g.ok(EndDesktopSession{"s1", "logoff", ""});
  CHECK(g.s.pools.assigned("p", "alice")->vm_id == mine);
  g.ok(LaunchDesktop{"s2", "bob", "p"});
  CHECK(g.s.pools.session("s2")->vm_id != mine);
  CHECK(g.err(LaunchDesktop{"s3", "carol", "p"}).reason == "pool_full");
  CHECK(g.err(LaunchDesktop{"s4", "alice", "p"}).reason == "desktop_releasing");
  g.ok(RecordDisplayReset{mine, true, ""});
  g.ok(LaunchDesktop{"s4", "alice", "p"});
  CHECK(g.s.pools.session("s4")->vm_id == mine);
  g.check_replay();
}

TEST_CASE("cascades: removing an entitlement, a user or a VM ends its assignments") {
  Given g = base("dedicated", 3);
  provision(g, "p");
  provision(g, "p");
  std::string v3 = provision(g, "p");
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  g.ok(LaunchDesktop{"s2", "bob", "p"});
  g.ok(LaunchDesktop{"s3", "carol", "p"});
  auto es = g.ok(RemoveEntitlement{"p", "alice"});
  CHECK(types(es) == V{"DesktopSessionEnded", "DesktopUnassigned", "PoolEntitlementRemoved"});
  CHECK(g.s.pools.assigned("p", "alice") == nullptr);
  CHECK(g.err(LaunchDesktop{"s4", "alice", "p"}).reason == "not_entitled");
  // Deleting bob ends his session and assignment in the same fold.
  g.ok(DeleteUser{"bob", std::nullopt});
  CHECK(g.s.pools.assigned("p", "bob") == nullptr);
  CHECK(g.s.pools.session("s2")->state == "ended");
  CHECK(g.s.pools.session("s2")->end_reason == "user_deleted");
  // Carol's VM disappears from its host.
  std::string cv = g.s.pools.session("s3")->vm_id;
  std::string host = g.s.hosts.vm(cv)->host_id;
  RecordDomainsObserved obs{host, 1, {}};
  for (const Vm* v : g.s.hosts.vms_of(host)) {
    if (v->id != cv) obs.domains.push_back({v->name, v->uuid, v->observed, v->display_port});
  }
  g.ok(obs);
  CHECK(g.s.pools.assigned("p", "carol") == nullptr);
  CHECK(g.s.pools.session("s3")->end_reason == "vm_lost");
  CHECK(g.s.pools.member(cv)->state == "failed");
  for (const auto& [id, m] : g.s.pools.members) CHECK(m.assigned_user.empty());
  g.check_replay();
}

TEST_CASE("spares: min_ready running and min_standby powered off, within max_size") {
  Given g = base("floating", 4);
  UpdatePool up = upd("p");
  up.min_ready = 2;
  up.min_standby = 1;
  g.ok(up);
  const Pool& p = *g.s.pools.pool("p");
  auto plan = plan_spares(g.s, p);
  CHECK(plan.provision == 3);
  std::string a = provision(g, "p"), b = provision(g, "p"), c = provision(g, "p");
  plan = plan_spares(g.s, p);
  CHECK(plan.provision == 0);
  CHECK(plan.start.size() == 2);  // two of three standby spares start; one stays off
  for (const auto& v : plan.start) g.ok(RequestVmPower{v, "op-" + v, "start", std::nullopt});
  plan = plan_spares(g.s, p);
  CHECK(plan.start.empty());
  CHECK(plan.provision == 0);
  // A launch takes one running spare: one more is started and one more provisioned
  // (standby now short), up to max_size 4.
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  plan = plan_spares(g.s, p);
  CHECK(plan.start.size() == 1);
  CHECK(plan.provision == 1);
  provision(g, "p");
  g.ok(LaunchDesktop{"s2", "bob", "p"});
  g.ok(LaunchDesktop{"s3", "carol", "p"});
  plan = plan_spares(g.s, p);
  CHECK(plan.provision == 0);  // 4 members = max_size
  // Shrink to 2 while three sessions are live: only the idle member may go.
  UpdatePool shrink = upd("p");
  shrink.min_ready = 0;
  shrink.min_standby = 0;
  shrink.max_size = 2;
  g.ok(shrink);
  plan = plan_spares(g.s, *g.s.pools.pool("p"));
  REQUIRE(plan.remove.size() == 1);
  CHECK(g.s.pools.member(plan.remove[0])->session_id.empty());
  g.ok(RemovePoolVm{plan.remove[0], "shrink"});
  std::string busy = g.s.pools.session("s1")->vm_id;
  CHECK(g.err(RemovePoolVm{busy, "shrink"}).reason == "vm_in_use");
  g.check_replay();
}

TEST_CASE("pool deletion: members without live session go first, the pool ends when empty") {
  Given g = base("dedicated", 2);
  provision(g, "p");
  provision(g, "p");
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  g.ok(LaunchDesktop{"s2", "bob", "p"});
  g.ok(EndDesktopSession{"s2", "logoff", ""});  // bob keeps his assignment, no session
  g.ok(DeletePool{"p", std::nullopt});
  CHECK(g.err(LaunchDesktop{"s3", "carol", "p"}).reason == "pool_deleting");
  auto plan = plan_spares(g.s, *g.s.pools.pool("p"));
  REQUIRE(plan.remove.size() == 1);  // alice's VM has a live session: not removed
  auto es = g.ok(RemovePoolVm{plan.remove[0], "pool deleted"});
  CHECK(types(es)[0] == "DesktopUnassigned");
  g.ok(RecordPoolVmRemoved{plan.remove[0], true, ""});
  CHECK(g.err(FinishPoolDeletion{"p"}).reason == "pool_has_members");
  g.ok(EndDesktopSession{"s1", "logoff", ""});
  plan = plan_spares(g.s, *g.s.pools.pool("p"));
  REQUIRE(plan.remove.size() == 1);
  g.ok(RemovePoolVm{plan.remove[0], "pool deleted"});
  g.ok(RecordPoolVmRemoved{plan.remove[0], true, ""});
  CHECK(plan_spares(g.s, *g.s.pools.pool("p")).finish_deletion);
  g.ok(FinishPoolDeletion{"p"});
  CHECK(g.s.pools.pool("p") == nullptr);
  g.check_replay();
}

TEST_CASE("power policy and monitor as functions of state and time") {
  struct Row {
    std::string policy;
    V after_logoff;  // event types of the logoff
  };
  std::vector<Row> rows = {
      {"keep_on", {"DesktopSessionEnded", "DesktopUnassigned"}},
      {"shutdown_on_logoff",
       {"DesktopSessionEnded", "DesktopUnassigned", "OperationStarted", "VmPowerRequested"}},
      {"refresh_on_logoff",
       {"DesktopSessionEnded", "DesktopUnassigned", "PoolVmRefreshStarted", "OperationStarted",
        "VmPowerRequested"}},
  };
  for (const auto& row : rows) {
    CAPTURE(row.policy);
    Given g = base("floating", 2);
    UpdatePool up = upd("p");
    up.power_policy = row.policy;
    g.ok(up);
    std::string v = provision(g, "p", "running");
    g.ok(LaunchDesktop{"s1", "alice", "p"});
    CHECK(types(g.ok(EndDesktopSession{"s1", "logoff", "op-x"})) == row.after_logoff);
  }
  // Monitor: a silent client is deactivated; a disconnected session ends after the grace.
  Given g = base("floating", 2);
  UpdatePool up = upd("p");
  up.grace_s = 60;
  up.power_policy = "shutdown_when_idle";
  up.idle_timeout_s = 600;
  g.ok(up);
  std::string v = provision(g, "p", "running");
  g.ok(RequestVmPower{v, "op-start", "start", std::nullopt});
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  g.ok(ReportSession{"s1", "connected"});
  CHECK(power_actions(g.s, g.ctx.now_ms + 10000, 30000).empty());
  auto acts = power_actions(g.s, g.ctx.now_ms + 31000, 30000);
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].kind == "deactivate_session");
  CHECK(acts[0].reason == "client_timeout");
  g.ctx.now_ms += 31000;
  g.ok(DeactivateSession{"s1", "client_timeout"});
  CHECK(g.s.pools.session("s1")->state == "disconnected");
  CHECK(power_actions(g.s, g.ctx.now_ms + 59000, 30000).empty());
  acts = power_actions(g.s, g.ctx.now_ms + 60000, 30000);
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].kind == "end_session");
  CHECK(acts[0].reason == "grace_expired");
  // Reconnect before the grace: back to connected.
  g.ok(ReportSession{"s1", "connected"});
  CHECK(g.s.pools.session("s1")->state == "connected");
  g.ok(EndDesktopSession{"s1", "logoff", ""});
  // Idle: a running member without a session past idle_timeout is shut down.
  CHECK(power_actions(g.s, g.ctx.now_ms + 599000, 30000).empty());
  acts = power_actions(g.s, g.ctx.now_ms + 600000, 30000);
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].kind == "shutdown_vm");
  CHECK(acts[0].id == v);
  // VM state reported by the host: a crashed VM deactivates its session.
  g.ok(RecordDisplayReset{v, true, ""});
  g.ok(LaunchDesktop{"s2", "bob", "p"});
  g.ok(RecordSessionTicket{"s2", g.ctx.now_ms + 120000, true, ""});
  set_observed(g, v, "crashed");
  acts = power_actions(g.s, g.ctx.now_ms, 30000);
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].reason == "vm_crashed");
  g.check_replay();
}

TEST_CASE("monitor leaves a launch alone while it powers the VM on, not after") {
  Given g = base("floating", 2);
  std::string v = provision(g, "p", "shut_off");  // defined, off, nobody asked to start it yet
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  REQUIRE(g.s.hosts.vm(v)->desired != "running");
  // The launch has not yet asked for power or issued the ticket: not a lost desktop.
  CHECK(power_actions(g.s, g.ctx.now_ms + 1000, 30000).empty());
  // A launch that never got its ticket is given up after the client timeout.
  auto acts = power_actions(g.s, g.ctx.now_ms + 31000, 30000);
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].kind == "deactivate_session");
  CHECK(acts[0].reason == "vm_shut_off");
  // Once the ticket is issued, a VM seen shut off and not being started is a lost desktop.
  g.ok(RecordSessionTicket{"s1", g.ctx.now_ms + 120000, true, ""});
  acts = power_actions(g.s, g.ctx.now_ms + 1000, 30000);
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].reason == "vm_shut_off");
  g.check_replay();
}

TEST_CASE("reconnect policy disconnected_only refuses a second client while connected") {
  Given g = base("floating", 2);
  UpdatePool up = upd("p");
  up.reconnect = "disconnected_only";
  g.ok(up);
  provision(g, "p");
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  CHECK(g.ok(LaunchDesktop{"s2", "alice", "p"}).empty());  // created, not yet connected
  g.ok(ReportSession{"s1", "connected"});
  CHECK(g.err(LaunchDesktop{"s3", "alice", "p"}).reason == "session_connected");
  g.ok(ReportSession{"s1", "disconnected"});
  CHECK(g.ok(LaunchDesktop{"s4", "alice", "p"}).empty());
  CHECK(g.s.pools.live_session("p", "alice")->id == "s1");
}

TEST_CASE("admin channels need a live session and a known command") {
  Given g = base("floating", 2);
  provision(g, "p");
  CHECK(g.err(SendUserMessage{"alice", "message", "hi"}).reason == "no_live_session");
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  CHECK(types(g.ok(SendUserMessage{"alice", "message", "maintenance at 18:00"})) == V{"AdminMessageSent"});
  CHECK(g.err(SendUserMessage{"alice", "command", "format-disk"}).reason == "invalid_command");
  CHECK(types(g.ok(SendUserMessage{"alice", "command", "logoff"})) == V{"ClientCommandSent"});
  CHECK(g.s.pools.notices.size() == 2);
  g.check_replay();
}

TEST_CASE("template update: a new version, free members refreshed (rolling), busy ones after their session") {
  Given g = base("dedicated", 10);
  std::vector<std::string> vms;
  for (int i = 0; i < 4; ++i) vms.push_back(provision(g, "p", "running"));
  // alice gets one (assigned, live session).
  g.ok(LaunchDesktop{"s1", "alice", "p"});
  std::string busy = g.s.pools.session("s1")->vm_id;
  CHECK(g.s.pools.pool("p")->template_version == 1);

  // Same template: nothing recorded. A layout change (diskless -> overlays): refused.
  UpdatePool same = upd("p");
  same.tmpl = PoolTemplate{};
  same.tmpl->domain_xml = kXml;
  CHECK(g.ok(same).empty());
  UpdatePool disk = upd("p");
  disk.tmpl = PoolTemplate{};
  disk.tmpl->domain_xml = std::string(kXml).replace(std::string(kXml).find("<interface"), 0,
                                                    "<disk type='file'><source file='/img/new.qcow2'/></disk>");
  CHECK(g.err(disk).reason == "template_layout_changed");
  UpdatePool bad = upd("p");
  bad.tmpl = PoolTemplate{};
  bad.tmpl->domain_xml = "<vm/>";
  CHECK(g.err(bad).reason == "invalid_template");

  // A new template (more memory): version 2.
  UpdatePool up = upd("p");
  up.tmpl = PoolTemplate{};
  up.tmpl->domain_xml = std::string(kXml).replace(std::string(kXml).find("512"), 3, "1024");
  up.min_ready = 3;  // the three free members are the running spares
  auto es = g.ok(up);
  REQUIRE(types(es) == V{"PoolUpdated"});
  CHECK(es[0].data["template_version"] == 2);
  const Pool* p = g.s.pools.pool("p");
  CHECK(p->template_version == 2);
  CHECK(p->tmpl.memory_kib == 1024 * 1024);

  // The plan refreshes free members only, at most max(1, 10 / 5) = 2 at a time; never the busy
  // (assigned, in session) one.
  SparePlan plan = plan_spares(g.s, *p);
  REQUIRE(plan.refresh.size() == 2);
  CHECK(plan.provision == 0);  // outdated members still count as spares: the pool does not grow
  CHECK(std::find(plan.refresh.begin(), plan.refresh.end(), busy) == plan.refresh.end());
  CHECK(g.err(RefreshPoolVm{busy, "template_updated", "op-b"}).reason == "vm_busy");
  std::string r1 = plan.refresh[0];
  auto started = g.ok(RefreshPoolVm{r1, "template_updated", "op-r1"});
  CHECK(types(started) == V{"PoolVmRefreshStarted", "OperationStarted", "VmPowerRequested"});
  CHECK(g.s.pools.member(r1)->state == "refreshing");
  // One refreshing: one more may start, and the refreshing one is still counted as a spare.
  SparePlan during = plan_spares(g.s, *g.s.pools.pool("p"));
  CHECK(during.refresh.size() == 1);
  CHECK(during.provision == 0);
  // Launches prefer members already on the current template... none yet: an old one is used.
  set_observed(g, r1, "shut_off");
  auto done = g.ok(RecordPoolVmRefreshed{r1, true, "", 2});
  CHECK(done[0].data["template_version"] == 2);
  CHECK(g.s.pools.member(r1)->template_version == 2);
  CHECK(g.s.pools.member(r1)->memory_kib == 1024 * 1024);
  CHECK(g.s.pools.member(r1)->state == "ready");
  // ...now bob's launch gets the refreshed member (current template) over older running ones.
  g.ok(LaunchDesktop{"s2", "bob", "p"});
  CHECK(g.s.pools.session("s2")->vm_id == r1);
  // A refresh that was defined from version 1 while version 2 appeared keeps version 1.
  std::string r2 = plan_spares(g.s, *g.s.pools.pool("p")).refresh.at(0);
  g.ok(RefreshPoolVm{r2, "template_updated", "op-r2"});
  set_observed(g, r2, "shut_off");
  g.ok(RecordPoolVmRefreshed{r2, true, "", 1});
  CHECK(g.s.pools.member(r2)->template_version == 1);
  SparePlan again = plan_spares(g.s, *g.s.pools.pool("p"));
  CHECK(std::find(again.refresh.begin(), again.refresh.end(), r2) != again.refresh.end());
  // The view counts what is still outdated.
  Json view = pool_to_json(g.s, *g.s.pools.pool("p"));
  CHECK(view["template_version"] == 2);
  CHECK(view["size"]["outdated"] == 3);  // alice's, r2, and the fourth
  g.check_replay();
}

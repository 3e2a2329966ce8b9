// Desktop sessions that follow the real client (issue 9): the display signal from graphics
// events, one-time tickets, display resets before a VM is handed to the next user, pending
// shutdowns, the flip rate limit, VMs of deleted pools. Given events, when command, then events
// or error; every log replays to the same state.
#include <doctest/doctest.h>

#include "domain/hosts.h"
#include "domain/pools.h"
#include "domain/state.h"
#include "given.h"
#include "pools_fixture.h"

using namespace atrium;
using namespace atrium::domain;
using namespace atrium::domain::testing;

namespace {

// A floating pool with one running member and alice's session on it, ticket issued.
struct Launched {
  Given g;
  std::string vm;
  uint64_t epoch = 0;
};
Launched launched(const std::string& policy = "keep_on") {
  Launched l{base("floating", 2), "", 0};
  UpdatePool up = upd("p");
  up.power_policy = policy;
  l.g.ok(up);
  l.vm = provision(l.g, "p", "running");
  l.g.ok(RequestVmPower{l.vm, "op-start", "start", std::nullopt});
  l.g.ok(LaunchDesktop{"s1", "alice", "p"});
  l.g.ok(RecordSessionTicket{"s1", l.g.ctx.now_ms + 120000, true, ""});
  l.epoch = l.g.s.hosts.host("h1")->epoch;
  return l;
}

}  // namespace

TEST_CASE("9.1: the display is the signal: graphics events connect and disconnect the session") {
  Launched l = launched();
  Given& g = l.g;
  auto c = g.ok(RecordDisplayClients{l.vm, l.epoch, true, "192.0.2.7"});
  REQUIRE(types(c) == V{"DesktopSessionConnected"});
  CHECK(c[0].data["source"] == "display");
  CHECK(c[0].data["client_address"] == "192.0.2.7");
  const DesktopSession* d = g.s.pools.session("s1");
  CHECK(d->state == "connected");
  CHECK(d->display_signal);
  CHECK(d->client_address == "192.0.2.7");
  // A repeat is nothing; a report of another (older) connection epoch is nothing.
  CHECK(g.ok(RecordDisplayClients{l.vm, l.epoch, true, "192.0.2.7"}).empty());
  CHECK(g.ok(RecordDisplayClients{l.vm, l.epoch - 1, false, ""}).empty());
  // The client timeout does not apply to a session whose display reports it: an hour of
  // silence from the client is fine while the viewer is attached.
  CHECK(power_actions(g.s, g.ctx.now_ms + 3600 * 1000, 90000).empty());
  // The viewer closes: disconnected (reason display_closed), then the grace applies.
  auto dc = g.ok(RecordDisplayClients{l.vm, l.epoch, false, ""});
  REQUIRE(types(dc) == V{"DesktopSessionDisconnected"});
  CHECK(dc[0].data["reason"] == "display_closed");
  CHECK(g.s.pools.session("s1")->state == "disconnected");
  CHECK(g.ok(RecordDisplayClients{l.vm, l.epoch, false, ""}).empty());
  auto acts = power_actions(g.s, g.ctx.now_ms + 300 * 1000, 90000);
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].kind == "end_session");
  CHECK(acts[0].reason == "grace_expired");
  // A closed display is a user's own disconnect: nothing to reset for the session itself.
  CHECK(g.s.pools.member(l.vm)->display_reset.empty());
  g.check_replay();
}

TEST_CASE("9.1: without a display signal the client timeout still deactivates a silent session") {
  Launched l = launched();
  Given& g = l.g;
  g.ok(ReportSession{"s1", "connected"});
  auto acts = power_actions(g.s, g.ctx.now_ms + 91000, 90000);
  REQUIRE(acts.size() == 1);
  CHECK(acts[0].reason == "client_timeout");
  g.ok(DeactivateSession{"s1", "client_timeout"});
  // Deactivation cuts whatever viewer may still be attached before a reconnect.
  CHECK(g.s.pools.member(l.vm)->display_reset == "deactivated: client_timeout");
  // A reconnect's new ticket is set with connected='disconnect': it is the reset.
  g.ok(RecordSessionTicket{"s1", g.ctx.now_ms + 120000, true, ""});
  CHECK(g.s.pools.member(l.vm)->display_reset.empty());
  g.check_replay();
}

TEST_CASE("9.2: logoff drops the viewer before the VM is free; a pending shutdown keeps it out") {
  Launched l = launched("shutdown_on_logoff");
  Given& g = l.g;
  std::string other = provision(g, "p", "shut_off");  // a standby spare
  auto end = g.ok(EndDesktopSession{"s1", "logoff", "op-off"});
  CHECK(types(end) == V{"DesktopSessionEnded", "DesktopUnassigned", "OperationStarted", "VmPowerRequested"});
  const PoolMember* m = g.s.pools.member(l.vm);
  CHECK(m->display_reset == "session_ended: logoff");
  CHECK(member_releasing(g.s, *m));
  // bob gets the standby spare, never alice's VM that is shutting down.
  g.ok(LaunchDesktop{"s2", "bob", "p"});
  CHECK(g.s.pools.session("s2")->vm_id == other);
  // The reset is recorded, but the shutdown is still pending: still not free.
  g.ok(RecordDisplayReset{l.vm, true, "rotated"});
  CHECK(g.s.pools.member(l.vm)->display_reset.empty());
  CHECK_FALSE(member_free(g.s, *g.s.pools.member(l.vm)));
  CHECK(g.err(LaunchDesktop{"s3", "carol", "p"}).reason == "desktop_releasing");
  // Observed shut off: free again (a standby member the launch powers on).
  set_observed(g, l.vm, "shut_off");
  CHECK(member_free(g.s, *g.s.pools.member(l.vm)));
  g.ok(LaunchDesktop{"s3", "carol", "p"});
  CHECK(g.s.pools.session("s3")->vm_id == l.vm);
  g.check_replay();
}

TEST_CASE("9.2: every way a session ends asks for a display reset") {
  for (std::string how : {"logoff", "entitlement", "user_deleted"}) {
    CAPTURE(how);
    Launched l = launched();
    Given& g = l.g;
    if (how == "logoff") g.ok(EndDesktopSession{"s1", "logoff", ""});
    if (how == "entitlement") g.ok(RemoveEntitlement{"p", "alice"});
    if (how == "user_deleted") g.ok(DeleteUser{"alice", std::nullopt});
    CHECK_FALSE(g.s.pools.session("s1")->live());
    CHECK_FALSE(g.s.pools.member(l.vm)->display_reset.empty());
    CHECK_FALSE(member_free(g.s, *g.s.pools.member(l.vm)));
    g.check_replay();
  }
}

TEST_CASE("9.3: the one-time ticket is retired once, and the wave rule finds the moment") {
  Launched l = launched();
  Given& g = l.g;
  CHECK(types(g.ok(RetireSessionTicket{"s1", true, ""})) == V{"DesktopSessionTicketRetired"});
  CHECK(g.s.pools.session("s1")->ticket_retired);
  CHECK(g.ok(RetireSessionTicket{"s1", true, ""}).empty());
  // A new ticket (reconnect) is one-time again.
  g.ok(RecordSessionTicket{"s1", g.ctx.now_ms + 120000, true, ""});
  CHECK_FALSE(g.s.pools.session("s1")->ticket_retired);
  g.check_replay();

  // remote-viewer on QEMU, as measured: main channel authenticates, then 3 more connect and
  // authenticate within ~60 ms.
  struct Row {
    DisplayWave w;
    int64_t now;
    bool complete;
  };
  std::vector<Row> rows = {
      {{0, 0, 0, 0}, 5000, false},           // nobody
      {{0, 1, 1000, 1000}, 1500, false},     // main channel only, just now
      {{2, 2, 1000, 1030}, 5000, false},     // channels still authenticating
      {{0, 4, 1000, 1060}, 1500, false},     // all in, but not quiet for long enough
      {{0, 4, 1000, 1060}, 2060, true},      // all in and quiet for 1 s
      {{0, 1, 1000, 1000}, 10999, false},    // one channel (VNC-like), waiting
      {{0, 1, 1000, 1000}, 11000, true},     // one channel, given 10 s
  };
  for (const auto& r : rows) {
    CAPTURE(r.now);
    CHECK(display_wave_complete(r.w, r.now) == r.complete);
  }
}

TEST_CASE("10.11: client reports flip a session at most 10 times a minute") {
  Launched l = launched();
  Given& g = l.g;
  for (int i = 0; i < kMaxSessionFlipsPerMinute; ++i) {
    g.ok(ReportSession{"s1", i % 2 == 0 ? "connected" : "disconnected"});
    g.ctx.now_ms += 100;
  }
  auto e = g.err(ReportSession{"s1", "connected"});
  CHECK(e.code == Code::too_many_requests);
  CHECK(e.reason == "too_many_state_changes");
  // A report that changes nothing is not a flip.
  CHECK(g.ok(ReportSession{"s1", "disconnected"}).size() <= 1);
  g.ctx.now_ms += 60000;
  CHECK(types(g.ok(ReportSession{"s1", "connected"})) == V{"DesktopSessionConnected"});
  g.check_replay();
}

TEST_CASE("9.4: VMs of removed members and deleted pools are released; missing VMs can be forgotten") {
  Given g = base("floating", 2);
  std::string a = provision(g, "p", "shut_off"), b = provision(g, "p", "running");
  // b vanishes behind the broker's back; a is removed by the pool.
  set_observed(g, b, "missing");
  CHECK(g.s.pools.member(b)->state == "failed");
  g.ok(RemovePoolVm{a, "shrink"});
  g.ok(RecordPoolVmRemoved{a, true, ""});
  CHECK(g.s.hosts.vm(a) == nullptr);  // undefined by the broker: forgotten
  g.ok(DeletePool{"p", std::nullopt});
  g.ok(RemovePoolVm{b, "pool deletion"});
  g.ok(RecordPoolVmRemoved{b, true, ""});
  g.ok(FinishPoolDeletion{"p"});
  CHECK(g.s.pools.pool("p") == nullptr);
  for (const auto& [id, v] : g.s.hosts.vms) CHECK_MESSAGE(!v.managed(), id);
  CHECK(types(g.ok(RemoveHost{"h1", std::nullopt})) == V{"HostRemoved"});
  g.check_replay();
}

TEST_CASE("9.4: ForgetVm takes missing and unmanaged VMs, never a pool's live one") {
  Given g = base("floating", 2);
  std::string a = provision(g, "p", "running"), b = provision(g, "p", "shut_off");
  CHECK(g.err(ForgetVm{a, std::nullopt}).reason == "vm_managed");
  CHECK(g.err(ForgetVm{"nope", std::nullopt}).code == Code::not_found);
  set_observed(g, b, "missing");
  CHECK(types(g.ok(ForgetVm{b, std::nullopt})) == V{"VmForgotten"});
  CHECK(g.s.hosts.vm(b) == nullptr);
  CHECK(g.s.pools.member(b) == nullptr);
  // An old log: a pool deleted while its VM was missing and still managed (before this fix)
  // replays to a released VM.
  Given old;
  add_host(old, "h1", 8ull << 20);
  old.ok(pool_cmd("q", "floating", {"h1"}));
  std::string v = provision(old, "q", "running");
  set_observed(old, v, "missing");
  // The events an older broker wrote: member removed, pool deleted, VM left behind.
  old.apply({Event{pool_stream("q"), "PoolDeleted", 1, Json::object()}});
  for (const auto& [id, vm] : old.s.hosts.vms) CHECK_FALSE(vm.managed());
  old.check_replay();
}

TEST_CASE("9.6: members keep the template's SPICE listen address unless one is configured; TLS") {
  const std::string tmpl =
      "<domain type='kvm'><name>t</name><uuid>u</uuid><memory unit='MiB'>64</memory><devices>"
      "<graphics type='spice' autoport='yes'><listen type='address' address='192.0.2.10'/>"
      "</graphics></devices></domain>";
  CHECK(template_display_listen(tmpl) == "192.0.2.10");
  CHECK(template_display_listen("<domain><devices><graphics type='spice' listen='::1'/></devices></domain>") ==
        "::1");
  CHECK(template_display_listen("<domain><devices/></domain>").empty());
  MemberXmlParams p;
  p.name = "m1";
  p.uuid = "00000000-0000-4000-8000-000000000001";
  p.mac = "52:54:00:00:00:01";
  p.spice_port = 5901;
  p.spice_password = "pw";
  auto kept = member_domain_xml(tmpl, p);
  REQUIRE(kept.ok());
  CHECK(kept->find("address='192.0.2.10'") != std::string::npos);
  CHECK(kept->find("0.0.0.0") == std::string::npos);
  CHECK(kept->find("port='5901' autoport='no'") != std::string::npos);
  p.spice_listen = "198.51.100.1";
  auto set = member_domain_xml(tmpl, p);
  REQUIRE(set.ok());
  CHECK(set->find("address='198.51.100.1'") != std::string::npos);
  CHECK(set->find("192.0.2.10") == std::string::npos);
  p.spice_listen.clear();
  p.spice_tls = true;
  auto tls = member_domain_xml(tmpl, p);
  REQUIRE(tls.ok());
  CHECK(tls->find("tlsPort='5901'") != std::string::npos);
  CHECK(tls->find("defaultMode='secure'") != std::string::npos);
  CHECK(tls->find(" port='5901'") == std::string::npos);
}

TEST_CASE("9.6: a host's SPICE TLS settings: both or neither, a PEM CA, a one-line subject") {
  Given g;
  AddHost ok{"h1", "op1", "kvm", "test:///default", "", {}, "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
             "C=XX,O=Org,CN=kvm"};
  g.ok(ok);
  CHECK(g.s.hosts.host("h1")->spice_tls());
  CHECK(host_to_json(g.s.hosts, *g.s.hosts.host("h1"))["spice_tls"]["host_subject"] == "C=XX,O=Org,CN=kvm");
  AddHost half{"h2", "op2", "kvm2", "test:///default", "", {}, "-----BEGIN CERTIFICATE-----\n", ""};
  CHECK(g.err(half).reason == "invalid_spice_tls");
  AddHost not_pem{"h3", "op3", "kvm3", "test:///default", "", {}, "hello", "CN=x"};
  CHECK(g.err(not_pem).reason == "invalid_spice_tls");
  AddHost two_lines{"h4", "op4", "kvm4", "test:///default", "", {}, "-----BEGIN CERTIFICATE-----\n", "CN=x\nCN=y"};
  CHECK(g.err(two_lines).reason == "invalid_spice_tls");
  g.check_replay();
}

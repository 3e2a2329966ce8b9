// The deciders fed random command sequences, as the single writer runs them: decide against
// the state, fold the events in (evolve), and after every command check the invariants the
// deciders exist to keep across entities:
//   users    names unique, the enabled-admin count right;
//   hosts    display port allocations unique per host and inside its range; an allocation
//            never lands on another running VM's live port;
//   pools    no VM assigned to two users (nor a user to two VMs of a pool), no two live
//            sessions on one VM (nor two of one user in a pool), sessions and members point at
//            each other, assignments and live sessions only for existing users;
//   appcloud every authorization has its publication, every publication its application and
//            target, server-scope publications only on standalone servers holding the app,
//            cluster members only of existing clusters.
// At the end the log replays to the same state and the state survives the snapshot codec.
//
// Ids come from small sets so that commands meet the same entities; names and a few fields
// are sometimes arbitrary strings so that validation is exercised too.
#include <cxxabi.h>
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <typeinfo>
#include <vector>

#include "domain/appcloud.h"
#include "domain/hosts.h"
#include "domain/placement.h"
#include "domain/pools.h"
#include "domain/state.h"
#include "domain/users.h"
#include "fuzz/harness.h"

namespace atrium::fuzz {

namespace {

using namespace domain;

const char* kTemplateXml =
    "<domain type='test'><name>tmpl</name><uuid>11111111-1111-4111-8111-111111111111</uuid>"
    "<memory unit='MiB'>512</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices>"
    "<disk type='file' device='disk'><source file='/var/lib/images/base.qcow2'/>"
    "<target dev='vda'/></disk>"
    "<interface type='network'><mac address='52:54:00:aa:bb:cc'/></interface>"
    "<graphics type='spice' autoport='yes'/></devices></domain>";

// ATRIUM_FUZZ_TRACE=1: print every command and its events (to read a crash input).
bool trace() {
  static const bool on = std::getenv("ATRIUM_FUZZ_TRACE") != nullptr;
  return on;
}

struct Run {
  explicit Run(FuzzedDataProvider& p) : in(p) {}
  FuzzedDataProvider& in;
  State s;
  uint64_t pos = 0;
  Context ctx{1'000'000, "fuzz"};
  std::vector<std::pair<Event, Applied>> log;
  int seq = 0;
  size_t last_events = 0;  // events of the last accepted command
  // The broker's liveness table as far as placement reads it: server loads stay out of the
  // log (issue 11), and launches read them through LaunchApplication.live_load.
  std::map<std::string, LoadReport> live;

  std::string pick(const std::vector<std::string>& v) {
    return v[in.ConsumeIntegralInRange<size_t>(0, v.size() - 1)];
  }
  // Mostly one of `v`, sometimes an arbitrary short string.
  std::string name(const std::vector<std::string>& v) {
    if (in.ConsumeIntegralInRange<int>(0, 15) == 0) return in.ConsumeRandomLengthString(12);
    return pick(v);
  }
  std::string user() { return pick({"a0", "u0", "u1", "u2", "u3"}); }
  std::string host() { return pick({"h0", "h1"}); }
  std::string pool() { return pick({"p0", "p1"}); }
  std::string fresh(const char* prefix) { return prefix + std::to_string(++seq); }
  std::optional<uint64_t> expected(const std::string& stream) {
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0:
        return s.version_of(stream);
      case 1:
        return in.ConsumeIntegralInRange<uint64_t>(0, 5);
      default:
        return std::nullopt;
    }
  }
  template <typename M>
  std::string existing(const M& m, const std::string& otherwise) {
    if (m.empty() || in.ConsumeIntegralInRange<int>(0, 7) == 0) return otherwise;
    auto it = m.begin();
    std::advance(it, in.ConsumeIntegralInRange<size_t>(0, m.size() - 1));
    return it->first;
  }
  // unordered_map iteration order is not stable across runs: pick by sorted key.
  template <typename M>
  std::string existing_sorted(const M& m, const std::string& otherwise) {
    std::set<std::string> keys;
    for (const auto& kv : m) keys.insert(kv.first);
    return existing(keys_map(keys), otherwise);
  }
  static std::map<std::string, int> keys_map(const std::set<std::string>& keys) {
    std::map<std::string, int> out;
    for (const auto& k : keys) out[k] = 0;
    return out;
  }
  std::string vm() { return existing_sorted(s.hosts.vms, "vm-none"); }
  std::string operation() { return existing_sorted(s.hosts.operations, fresh("op")); }
  std::string desktop_session() { return existing_sorted(s.pools.sessions, fresh("ds")); }
  std::string application() { return existing(s.appcloud.applications, "0123456789abcdef"); }
  uint64_t epoch(const std::string& h) {
    const Host* x = s.hosts.host(h);
    uint64_t e = x ? x->epoch : 0;
    switch (in.ConsumeIntegralInRange<int>(0, 5)) {
      case 0:
        return e + 1;
      case 1:
        return in.ConsumeIntegralInRange<uint64_t>(0, 4);
      default:
        return e;
    }
  }
  Scope scope() { return in.ConsumeBool() ? Scope::server : Scope::cluster; }

  template <typename C>
  bool run(const C& c) {
    Result<Events> r = Error::make(Code::internal, "not decided");
    try {
      r = decide(s, c, ctx);
    } catch (const std::exception& ex) {
      // The pipeline turns this into a 500: a decider must answer errors as values.
      fail(std::string("a decider threw: ") + ex.what());
    }
    if (trace()) {
      int st = 0;
      char* n = abi::__cxa_demangle(typeid(C).name(), nullptr, nullptr, &st);
      std::fprintf(stderr, "%s -> %s\n", n ? n : "?",
                   r.ok() ? std::to_string(r->size()).c_str() : r.error().message.c_str());
      for (const auto& e : r.ok() ? *r : Events{}) {
        std::fprintf(stderr, "    %s %s %s\n", e.stream.c_str(), e.type.c_str(),
                     e.data.dump().c_str());
      }
      std::free(n);
    }
    if (!r.ok()) {
      if (r.error().code == Code::internal) {
        fail("a decider answered internal: " + r.error().message);
      }
      return false;
    }
    last_events = r->size();
    for (const auto& e : *r) {
      Applied at{++pos, s.version_of(e.stream) + 1, ctx.now_ms};
      try {
        evolve(s, e, at);
      } catch (const std::exception& ex) {
        fail("evolve threw on an event its decider made (" + e.type + "): " + ex.what());
      }
      log.push_back({e, at});
    }
    return true;
  }

  void prelude();
  void step();
  void check() const;
  void check_allocation(const std::string& vm_id) const;
};

// A state where every module has something to work on: users, two hosts up with domains, a
// floating and a dedicated pool with provisioned members and a live session, a cluster and
// servers with published and authorized applications. Inputs start here (or from nothing).
void Run::prelude() {
  auto must = [&](const auto& c) {
    if (!run(c)) fail("a prelude command was refused");
  };
  must(CreateUser{"a0", "admin", {kRoleAdmin}, ""});
  must(CreateUser{"u0", "alice", {kRoleUser}, "argon2id$x"});
  must(CreateUser{"u1", "bob", {kRoleUser}, ""});
  must(CreateUser{"u2", "carol", {kRoleUser}, ""});
  must(CreateUser{"u3", "dave", {kRoleUser, kRoleAgent}, ""});
  must(IssueToken{"u0", std::string(64, 'a'), ctx.now_ms + 3'600'000});
  must(AddHost{"h0", "op-h0", "kvm0", "qemu:///system", "", {5500, 5507}});
  must(BeginOperations{"h0", 0, {"op-h0"}});
  must(RecordHostConnected{"h0", 1, Json{{"memory_kib", 16u << 20}, {"cpus", 16}}});
  must(RecordDomainsObserved{
      "h0", 1, {{"d0", "uu0", "running", 5500}, {"d1", "uu1", "shut_off", -1}}});
  must(AddHost{"h1", "op-h1", "kvm1", "qemu+ssh://kvm1/system", "", {5500, 5503}});
  must(RecordHostConnected{"h1", 1, Json{{"memory_kib", 8u << 20}, {"cpus", 8}}});
  CreatePool p0;
  p0.id = "p0";
  p0.name = "office";
  p0.kind = "floating";
  p0.tmpl.domain_xml = kTemplateXml;
  p0.host_ids = {"h0", "h1"};
  p0.max_size = 3;
  p0.power_policy = "refresh_on_logoff";
  must(p0);
  CreatePool p1 = p0;
  p1.id = "p1";
  p1.name = "lab";
  p1.kind = "dedicated";
  p1.host_ids = {"h0"};
  p1.max_size = 2;
  p1.power_policy = "shutdown_on_logoff";
  must(p1);
  for (const char* u : {"u0", "u1", "u2"}) must(AddEntitlement{"p0", u});
  for (const char* u : {"u0", "u3"}) must(AddEntitlement{"p1", u});
  int k = 4;
  for (const char* p : {"p0", "p0", "p1"}) {
    std::string n = std::to_string(k++);
    must(ProvisionPoolVm{p, "m" + n, "uu" + n, "52:54:00:00:00:0" + n, false});
    const Event& started = log.back().first;
    std::string h = started.data.at("host_id"), vm_id = started.data.at("vm_id");
    RecordDomainsObserved o{h, s.hosts.host(h)->epoch, {}};
    for (const Vm* v : s.hosts.vms_of(h))
      o.domains.push_back({v->name, v->uuid, v->observed, v->display_port});
    o.domains.push_back({"m" + n, "uu" + n, "shut_off", -1});
    must(o);
    must(RecordPoolVmProvisioned{vm_id, true, ""});
  }
  must(LaunchDesktop{"ds0", "u0", "p0"});
  must(CreateCluster{"c0", "farm", "", {}});
  must(CreateServer{"sv0", "ts0", "10.0.0.10", "windows", "2022", 4, 8192, true});
  must(CreateServer{"sv1", "ts1", "10.0.0.11", "windows", "2022", 4, 8192, true});
  must(CreateServer{"sv2", "ts2", "10.0.0.12", "linux", "12", 4, 8192, true});
  must(AddServerApplication{"sv0", "word", "C:\\apps\\word.exe", "", ""});
  must(AddServerApplication{"sv1", "excel", "C:\\apps\\excel.exe", "", ""});
  must(AddServerApplication{"sv2", "excel", "C:\\apps\\excel.exe", "", ""});
  must(JoinCluster{"sv1", "c0", std::nullopt});
  must(JoinCluster{"sv2", "c0", std::nullopt});
  std::string word = application_id("word", "C:\\apps\\word.exe");
  std::string excel = application_id("excel", "C:\\apps\\excel.exe");
  must(Publish{"pb0", word, Scope::server, "sv0"});
  must(Publish{"pb1", excel, Scope::cluster, "c0"});
  must(Authorize{"az0", "u0", word, Scope::server, "sv0"});
  must(Authorize{"az1", "u1", excel, Scope::cluster, "c0"});
  live["sv1"] = LoadReport{0.5, 0.25, 2, ctx.now_ms, pos};
}

void Run::step() {
  ctx.now_ms += in.ConsumeIntegralInRange<int64_t>(0, 120'000);
  ctx.actor = in.ConsumeBool() ? "a0" : user();
  switch (in.ConsumeIntegralInRange<int>(0, 52)) {
    // ---- users ----
    case 0: {
      std::set<std::string> roles;
      if (in.ConsumeBool()) roles.insert(pick({"admin", "user", "agent", "root"}));
      if (in.ConsumeBool()) roles.insert("user");
      run(CreateUser{user(), name({"alice", "bob", "carol", "dave", "admin"}), roles,
                     in.ConsumeBool() ? "argon2id$hash" : ""});
      break;
    }
    case 1: {
      UpdateUser u;
      u.id = user();
      u.expected_version = expected("user-" + u.id);
      if (in.ConsumeBool()) u.roles = std::set<std::string>{pick({"admin", "user", "agent"})};
      if (in.ConsumeBool()) u.disabled = in.ConsumeBool();
      if (in.ConsumeBool()) u.password_hash = "argon2id$other";
      run(u);
      break;
    }
    case 2:
      run(DeleteUser{user(), expected("user-" + user())});
      break;
    case 3:
      run(IssueToken{user(), std::string(64, pick({"a", "b", "c"})[0]), ctx.now_ms + 60'000});
      break;
    case 4:
      run(RevokeToken{std::string(64, pick({"a", "b", "c"})[0])});
      break;
    // ---- hosts ----
    case 5: {
      PortRange ports;
      if (in.ConsumeBool()) ports = {5500, 5500 + in.ConsumeIntegralInRange<int>(0, 3)};
      if (in.ConsumeIntegralInRange<int>(0, 9) == 0) {
        ports = {in.ConsumeIntegral<int>(), in.ConsumeIntegral<int>()};
      }
      std::string h = host();
      run(AddHost{h, "op-" + h + "-" + std::to_string(++seq), name({"kvm0", "kvm1"}),
                  pick({"test:///default", "qemu:///system", "qemu+ssh://x/system", ""}), "",
                  ports});
      break;
    }
    case 6: {
      std::string h = host();
      Json caps{{"memory_kib", in.ConsumeIntegralInRange<uint64_t>(0, 16u << 20)},
                {"cpus", in.ConsumeIntegralInRange<int>(0, 64)}};
      run(RecordHostConnected{h, epoch(h), caps});
      break;
    }
    case 7:
      run(RecordHostConnectFailed{host(), "refused", in.ConsumeBool(), in.ConsumeBool()});
      break;
    case 8: {
      std::string h = host();
      run(RecordHostDisconnected{h, epoch(h), "eof"});
      break;
    }
    case 9:
      run(EnterMaintenance{host(), expected("host-" + host())});
      break;
    case 10:
      run(ActivateHost{host(), expected("host-" + host())});
      break;
    case 11:
      run(RemoveHost{host(), expected("host-" + host())});
      break;
    case 12:
    case 13:
    case 14: {
      std::string h = host();
      RecordDomainsObserved o{h, epoch(h), {}};
      // Mostly what the host already has (so members stay), each maybe in a new state.
      std::set<std::string> seen;
      for (const Vm* v : s.hosts.vms_of(h)) {
        if (v->observed == "missing" || in.ConsumeIntegralInRange<int>(0, 9) == 0) continue;
        std::string st = in.ConsumeIntegralInRange<int>(0, 3) == 0
                             ? pick({"running", "shut_off", "paused", "crashed", "blocked"})
                             : v->observed;
        int port = v->display_port;
        if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
          port = in.ConsumeBool() ? -1 : 5500 + in.ConsumeIntegralInRange<int>(0, 3);
        }
        o.domains.push_back({v->name, v->uuid, st, port});
        seen.insert(v->uuid);
      }
      // Members being provisioned appear once their domain is defined.
      for (const auto& [vm_id, m] : s.pools.members) {
        if (m.host_id == h && s.hosts.vm(vm_id) == nullptr && !seen.count(m.uuid) &&
            in.ConsumeBool()) {
          o.domains.push_back({m.name, m.uuid, pick({"shut_off", "running"}), -1});
          seen.insert(m.uuid);
        }
      }
      int extra = in.ConsumeIntegralInRange<int>(0, 2);
      for (int i = 0; i < extra; ++i) {
        std::string k = std::to_string(in.ConsumeIntegralInRange<int>(0, 3));
        if (seen.count("uu" + k)) continue;
        seen.insert("uu" + k);
        o.domains.push_back({"d" + k, "uu" + k, pick({"running", "shut_off", "paused"}),
                             in.ConsumeBool() ? -1 : 5500 + in.ConsumeIntegralInRange<int>(0, 3)});
      }
      run(o);
      break;
    }
    case 15:
      run(RequestVmPower{vm(), fresh("op"), pick({"start", "shutdown", "reboot", "destroy", "x"}),
                         std::nullopt});
      break;
    case 16: {
      std::string h = host();
      run(BeginOperations{h, epoch(h), {operation()}});
      break;
    }
    case 17: {
      std::string v = vm();
      const Vm* x = s.hosts.vm(v);
      std::string h = x ? x->host_id : host();
      run(RecordVmActionResult{v, epoch(h), x && in.ConsumeBool() ? x->operation : "",
                               pick({"start", "shutdown", "reboot", "destroy"}), in.ConsumeBool(),
                               "libvirt said no"});
      break;
    }
    case 18: {
      std::string v = vm();
      const Vm* x = s.hosts.vm(v);
      run(RecordDriftResolved{v, epoch(x ? x->host_id : host()), pick({"corrected", "given_up"}),
                              "r"});
      break;
    }
    case 19:
      run(CancelOperation{operation(), in.ConsumeBool() ? "" : "admin"});
      break;
    case 20:
      run(AdoptVm{vm(), pool()});
      break;
    case 21:
    case 22: {
      std::string v = vm();
      // A new allocation (no events: the VM already had one, perhaps from before a live
      // port the hypervisor reported later).
      if (run(AllocateDisplayPort{v}) && last_events > 0) check_allocation(v);
      break;
    }
    case 23:
      run(FailOperation{operation(), "restart"});
      break;
    // ---- pools ----
    case 24: {
      CreatePool c;
      c.id = pool();
      c.name = name({"office", "lab"});
      c.kind = pick({"dedicated", "floating", "shared"});
      c.tmpl.domain_xml = kTemplateXml;
      if (in.ConsumeBool()) c.tmpl.base_volume = "/var/lib/images/base.qcow2";
      c.host_ids =
          in.ConsumeBool() ? std::vector<std::string>{"h0"} : std::vector<std::string>{"h0", "h1"};
      c.min_ready = in.ConsumeIntegralInRange<int>(0, 2);
      c.max_size = in.ConsumeIntegralInRange<int>(0, 4);
      c.power_policy =
          pick({"keep_on", "shutdown_on_logoff", "shutdown_when_idle", "refresh_on_logoff"});
      c.reconnect = pick({"always", "disconnected_only"});
      c.grace_s = in.ConsumeIntegralInRange<int64_t>(0, 600);
      c.idle_timeout_s = in.ConsumeIntegralInRange<int64_t>(0, 600);
      run(c);
      break;
    }
    case 25: {
      UpdatePool u;
      u.id = pool();
      u.expected_version = expected("pool-" + u.id);
      if (in.ConsumeBool()) u.max_size = in.ConsumeIntegralInRange<int>(-1, 5);
      if (in.ConsumeBool()) u.min_ready = in.ConsumeIntegralInRange<int>(0, 3);
      if (in.ConsumeBool())
        u.power_policy = pick({"keep_on", "refresh_on_logoff", "shutdown_on_logoff"});
      if (in.ConsumeBool()) u.host_ids = std::vector<std::string>{host()};
      if (in.ConsumeBool()) {
        PoolTemplate t;
        t.domain_xml = kTemplateXml;
        if (in.ConsumeBool()) t.base_volume = "/var/lib/images/base2.qcow2";
        u.tmpl = t;
      }
      run(u);
      break;
    }
    case 26:
      run(DeletePool{pool(), expected("pool-" + pool())});
      break;
    case 27:
      run(FinishPoolDeletion{pool()});
      break;
    case 28:
    case 29:
      run(AddEntitlement{pool(), user()});
      break;
    case 30:
      run(RemoveEntitlement{pool(), user()});
      break;
    case 31:
    case 32: {
      std::string k = std::to_string(4 + in.ConsumeIntegralInRange<int>(0, 5));
      run(ProvisionPoolVm{pool(), "m" + k, "uu" + k, "52:54:00:00:00:0" + k.substr(0, 1),
                          in.ConsumeBool()});
      break;
    }
    case 33:
      run(RecordPoolVmProvisioned{vm(), in.ConsumeIntegralInRange<int>(0, 3) != 0,
                                  "define failed"});
      break;
    case 34:
      run(RemovePoolVm{vm(), pick({"shrink", "pool_deleted"})});
      break;
    case 35:
      run(RecordPoolVmRemoved{vm(), in.ConsumeBool(), "undefine failed"});
      break;
    case 36:
      run(RecordPoolVmRefreshed{vm(), in.ConsumeBool(), "x", in.ConsumeIntegralInRange<int>(0, 3)});
      break;
    case 37:
      run(RefreshPoolVm{vm(), pick({"admin", "template_updated"}), fresh("op")});
      break;
    case 38:
    case 39:
    case 40:
      run(LaunchDesktop{fresh("ds"), user(), pool()});
      break;
    case 41:
      run(RecordSessionTicket{desktop_session(), ctx.now_ms + 120'000, in.ConsumeBool(), ""});
      break;
    case 42:
      run(ReportSession{desktop_session(), pick({"connected", "disconnected", "gone"})});
      break;
    case 43:
      run(DeactivateSession{desktop_session(), pick({"client_timeout", "vm_shut_off"})});
      break;
    case 44:
      run(EndDesktopSession{desktop_session(), pick({"logoff", "grace_expired"}), fresh("op")});
      break;
    case 45:
      run(SetMemberPower{vm(), pick({"start", "shutdown", "reboot"}), fresh("op")});
      break;
    case 46:
      run(SendUserMessage{user(), pick({"message", "command"}),
                          pick({"hello", "logoff", "reconnect", ""})});
      break;
    // ---- application cloud ----
    case 47: {
      std::string id = pick({"c0", "c1"});
      if (in.ConsumeBool()) {
        run(CreateCluster{id, name({"farm-a", "farm-b"}), "", {}});
      } else {
        run(DeleteCluster{id, expected("cluster-" + id)});
      }
      break;
    }
    case 48: {
      std::string id = pick({"sv0", "sv1", "sv2", "sv3"});
      switch (in.ConsumeIntegralInRange<int>(0, 3)) {
        case 0:
          run(CreateServer{id, name({"ts1", "ts2", "ts3"}), "10.0.0." + id.substr(2),
                           pick({"windows", "linux"}), "2022", 4, 8192, in.ConsumeBool()});
          break;
        case 1: {
          UpdateServer u;
          u.id = id;
          u.expected_version = expected("server-" + id);
          if (in.ConsumeBool()) u.remote_app_service = in.ConsumeBool();
          if (in.ConsumeBool()) u.name = name({"ts1", "ts9"});
          run(u);
          break;
        }
        case 2:
          run(DeleteServer{id, expected("server-" + id)});
          break;
        default:
          live[id] = LoadReport{in.ConsumeProbability<double>(), in.ConsumeProbability<double>(),
                                in.ConsumeIntegralInRange<uint32_t>(0, 50),
                                ctx.now_ms - in.ConsumeIntegralInRange<int64_t>(0, 100000), pos};
          break;
      }
      break;
    }
    case 49: {
      std::string sv = pick({"sv0", "sv1", "sv2", "sv3"});
      if (in.ConsumeIntegralInRange<int>(0, 2) != 0) {
        std::string app = pick({"word", "excel", "paint"});
        run(AddServerApplication{sv, app, "C:\\apps\\" + app + ".exe", "", ""});
      } else {
        run(RemoveServerApplication{sv, application()});
      }
      break;
    }
    case 50: {
      std::string sv = pick({"sv0", "sv1", "sv2", "sv3"});
      if (in.ConsumeBool()) {
        run(JoinCluster{sv, pick({"c0", "c1"}), expected("server-" + sv)});
      } else {
        run(LeaveCluster{sv, expected("server-" + sv)});
      }
      break;
    }
    case 51: {
      if (in.ConsumeBool()) {
        Scope sc = scope();
        run(Publish{pick({"pb0", "pb1", "pb2", "pb3", "pb4"}), application(), sc,
                    sc == Scope::server ? pick({"sv0", "sv1", "sv2", "sv3"}) : pick({"c0", "c1"})});
      } else {
        std::string id = existing(s.appcloud.publications, "pb0");
        run(Unpublish{id, expected("publication-" + id)});
      }
      break;
    }
    default: {
      switch (in.ConsumeIntegralInRange<int>(0, 3)) {
        case 0:
        case 1: {
          // Mostly an authorization that matches a publication.
          Scope sc = scope();
          std::string app = application(), target;
          if (!s.appcloud.publications.empty() && in.ConsumeBool()) {
            auto it = s.appcloud.publications.begin();
            std::advance(it,
                         in.ConsumeIntegralInRange<size_t>(0, s.appcloud.publications.size() - 1));
            const Publication& p = it->second;
            sc = p.scope;
            app = p.application_id;
            target = p.target_id;
          } else {
            target = sc == Scope::server ? pick({"sv0", "sv1", "sv2", "sv3"}) : pick({"c0", "c1"});
          }
          run(Authorize{pick({"az0", "az1", "az2", "az3", "az4", "az5"}), user(), app, sc, target});
          break;
        }
        case 2: {
          std::string id = existing(s.appcloud.authorizations, "az0");
          run(Unauthorize{id, expected("authorization-" + id)});
          break;
        }
        default: {
          LaunchApplication l{fresh("as"), user(), application(), {}};
          l.live_load = [this](const std::string& id) -> std::optional<LoadReport> {
            auto it = live.find(id);
            if (it == live.end()) return std::nullopt;
            return it->second;
          };
          run(l);
          break;
        }
      }
      break;
    }
  }
}

void Run::check_allocation(const std::string& vm_id) const {
  const Vm* v = s.hosts.vm(vm_id);
  if (v == nullptr || v->allocated_port < 0) fail("AllocateDisplayPort succeeded without a port");
  // A running VM keeps its own live port (two domains reported on one port is the
  // hypervisor's contradiction, not an allocation).
  if ((v->observed == "running" || v->observed == "blocked") &&
      v->display_port == v->allocated_port) {
    return;
  }
  for (const Vm* o : s.hosts.vms_of(v->host_id)) {
    if (o->id != v->id && (o->observed == "running" || o->observed == "blocked") &&
        o->display_port == v->allocated_port) {
      fail("display port " + std::to_string(v->allocated_port) + " allocated to " + v->id +
           " is the live port of running VM " + o->id);
    }
  }
}

void Run::check() const {
  // users
  size_t admins = 0;
  for (const auto& [id, u] : s.users.by_id) {
    auto it = s.users.id_by_name.find(u.name);
    if (it == s.users.id_by_name.end() || it->second != id)
      fail("user " + id + " missing from the name index");
    if (!u.disabled && u.has_role(kRoleAdmin)) ++admins;
  }
  if (s.users.id_by_name.size() != s.users.by_id.size())
    fail("the user name index has extra names");
  if (admins != s.users.enabled_admins) fail("enabled_admins is not the count of enabled admins");

  // hosts: allocations unique per host, inside its range
  std::map<std::pair<std::string, int>, std::string> allocated;
  for (const auto& [id, v] : s.hosts.vms) {
    if (v.allocated_port < 0) continue;
    const Host* h = s.hosts.host(v.host_id);
    if (h == nullptr) fail("VM " + id + " holds a port on an unknown host");
    if (v.allocated_port < h->ports.first || v.allocated_port > h->ports.last) {
      fail("VM " + id + " holds port " + std::to_string(v.allocated_port) +
           " outside its host's range");
    }
    auto [it, inserted] = allocated.emplace(std::make_pair(v.host_id, v.allocated_port), id);
    if (!inserted) {
      fail("display port " + std::to_string(v.allocated_port) + " on host " + v.host_id +
           " allocated to two VMs: " + it->second + " and " + id);
    }
  }

  // pools
  std::map<std::string, std::string> live_on_vm;                 // vm -> session
  std::set<std::pair<std::string, std::string>> live_pool_user;  // (pool, user)
  std::map<std::string, std::set<std::string>> by_user;
  for (const auto& [id, d] : s.pools.sessions) {
    if (!d.live()) continue;
    by_user[d.user_id].insert(id);
    if (s.users.find(d.user_id) == nullptr) fail("live session " + id + " of a deleted user");
    if (!live_pool_user.insert({d.pool_id, d.user_id}).second) {
      fail("user " + d.user_id + " has two live sessions in pool " + d.pool_id);
    }
    if (d.vm_id.empty()) continue;
    auto [it, inserted] = live_on_vm.emplace(d.vm_id, id);
    if (!inserted) fail("two live sessions on VM " + d.vm_id + ": " + it->second + " and " + id);
    const PoolMember* m = s.pools.member(d.vm_id);
    if (m == nullptr) fail("live session " + id + " on VM " + d.vm_id + " that is no member");
    if (m->session_id != id)
      fail("live session " + id + " is not the session of its member " + d.vm_id);
    if (!m->assigned_user.empty() && m->assigned_user != d.user_id) {
      fail("live session " + id + " of " + d.user_id + " on VM assigned to " + m->assigned_user);
    }
  }
  if (by_user != s.pools.live_by_user) fail("live_by_user disagrees with the live sessions");
  std::set<std::pair<std::string, std::string>> assigned;  // (pool, user)
  for (const auto& [vm_id, m] : s.pools.members) {
    if (!m.session_id.empty()) {
      const DesktopSession* d = s.pools.session(m.session_id);
      if (d == nullptr || !d->live() || d->vm_id != vm_id) {
        fail("member " + vm_id + " points at session " + m.session_id +
             " that is not its live one");
      }
    }
    if (m.assigned_user.empty()) continue;
    if (s.users.find(m.assigned_user) == nullptr)
      fail("VM " + vm_id + " assigned to a deleted user");
    const Pool* p = s.pools.pool(m.pool_id);
    if (p == nullptr) fail("member " + vm_id + " of an unknown pool");
    if (p->entitled.count(m.assigned_user) == 0) {
      fail("VM " + vm_id + " assigned to " + m.assigned_user + " who is not entitled");
    }
    if (!assigned.insert({m.pool_id, m.assigned_user}).second) {
      fail("user " + m.assigned_user + " assigned two VMs of pool " + m.pool_id);
    }
  }

  // application cloud
  const AppCloudState& ac = s.appcloud;
  std::set<std::tuple<std::string, Scope, std::string>> published;
  for (const auto& [id, p] : ac.publications) {
    published.insert({p.application_id, p.scope, p.target_id});
    if (ac.applications.count(p.application_id) == 0)
      fail("publication " + id + " of an unknown application");
    if (p.scope == Scope::server) {
      auto it = ac.servers.find(p.target_id);
      if (it == ac.servers.end()) fail("publication " + id + " on an unknown server");
      if (!it->second.cluster_id.empty())
        fail("server-scope publication " + id + " on a cluster member");
      if (it->second.applications.count(p.application_id) == 0) {
        fail("publication " + id + " on a server without the application");
      }
    } else if (ac.clusters.count(p.target_id) == 0) {
      fail("publication " + id + " on an unknown cluster");
    }
  }
  for (const auto& [id, a] : ac.authorizations) {
    if (published.count({a.application_id, a.scope, a.target_id}) == 0) {
      fail("authorization " + id + " without its publication");
    }
  }
  for (const auto& [id, sv] : ac.servers) {
    if (!sv.cluster_id.empty() && ac.clusters.count(sv.cluster_id) == 0) {
      fail("server " + id + " in unknown cluster " + sv.cluster_id);
    }
  }
}

}  // namespace

// ATRIUM_FUZZ_STATS=1: count the event types the inputs produced, printed at exit (to see
// how deep a corpus reaches).
std::map<std::string, uint64_t>* event_stats() {
  static std::map<std::string, uint64_t>* stats = [] {
    if (std::getenv("ATRIUM_FUZZ_STATS") == nullptr)
      return static_cast<std::map<std::string, uint64_t>*>(nullptr);
    static std::map<std::string, uint64_t> m;
    std::atexit([] {
      for (const auto& [type, n] : m)
        std::fprintf(stderr, "%10llu %s\n", static_cast<unsigned long long>(n), type.c_str());
    });
    return &m;
  }();
  return stats;
}

int deciders(const uint8_t* data, size_t size) {
  static FuzzedDataProvider none(nullptr, 0);
  static const Run* base = [] {
    auto* b = new Run(none);
    b->prelude();
    b->check();
    return b;
  }();
  FuzzedDataProvider in(data, size);
  Run r(in);
  if (in.ConsumeIntegralInRange<int>(0, 7) != 0) {  // mostly from the prelude's state
    r.s = base->s;
    r.pos = base->pos;
    r.ctx = base->ctx;
    r.log = base->log;
    r.seq = base->seq;
  }
  int steps = 0;
  while (in.remaining_bytes() > 0 && ++steps <= 400) {
    r.step();
    r.check();
  }
  if (auto* stats = event_stats()) {
    for (const auto& [e, at] : r.log) ++(*stats)[e.type];
  }
  // Replay of the log gives the same state; the snapshot codec is an exact inverse.
  State again;
  for (const auto& [e, at] : r.log) evolve(again, e, at);
  Json live = state_to_json(r.s);
  if (state_to_json(again) != live) fail("replaying the log does not give the live state");
  auto back = state_from_json(live);
  if (!back.ok()) fail("state_from_json refused a live state: " + back.error().message);
  if (state_to_json(*back) != live) fail("state_from_json(state_to_json(s)) differs from s");
  return 0;
}

}  // namespace atrium::fuzz

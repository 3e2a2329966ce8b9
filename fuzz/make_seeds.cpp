// Writes the generated seed inputs of fuzz/corpus/: the stored events of a scenario that
// touches every module (event_envelope: the whole log, and each event alone) and snapshots
// of its state (snapshot: CBOR, and the JSON form). Run from the build tree:
//   build-fuzz/fuzz/fuzz_make_seeds fuzz/corpus
// The other corpora (json_body, http, deciders) are written by hand or kept from fuzzing.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "domain/appcloud.h"
#include "domain/hosts.h"
#include "domain/placement.h"
#include "domain/pools.h"
#include "domain/state.h"
#include "domain/users.h"
#include "eventstore/internal.h"
#include "pipeline/pipeline.h"

using namespace atrium;
using namespace atrium::domain;

namespace {

struct Scenario {
  State s;
  Context ctx{1'700'000'000'000, "a0"};
  std::vector<eventstore::RecordedEvent> log;
  eventstore::Hash prev{};

  template <typename C>
  void run(const char* name, const C& c) {
    auto r = decide(s, c, ctx);
    if (!r.ok()) {
      std::fprintf(stderr, "make_seeds: %s refused: %s\n", name, r.error().message.c_str());
      return;
    }
    for (const auto& e : *r) {
      eventstore::RecordedEvent re;
      re.position = log.size() + 1;
      re.stream = e.stream;
      re.stream_version = s.version_of(e.stream) + 1;
      re.type = e.type;
      re.schema_version = e.schema;
      re.recorded_at_ms = ctx.now_ms;
      re.actor = ctx.actor;
      re.correlation_id = "seed";
      re.data = e.data.dump();
      re.hash = eventstore::chain_hash(prev, re);
      prev = re.hash;
      evolve(s, e, {re.position, re.stream_version, re.recorded_at_ms});
      log.push_back(re);
    }
    ctx.now_ms += 1000;
  }
};

void write(const std::filesystem::path& p, const std::string& bytes) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

std::string framed(const eventstore::RecordedEvent& e) {
  std::string v;
  eventstore::detail::encode_stored(e, v);
  std::string out(4, '\0');
  uint32_t n = static_cast<uint32_t>(v.size());
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(n >> (8 * (3 - i)));
  return out + v;
}

void snapshot_seeds(const std::filesystem::path& dir, const std::string& name, const State& s) {
  write(dir / "snapshot" / (name + ".cbor"), pipeline::encode_snapshot(s));
  Json j{{"format", 1}, {"state", state_to_json(s)}};
  write(dir / "snapshot" / (name + ".json"), "j" + j.dump());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_seeds <corpus dir>\n");
    return 2;
  }
  std::filesystem::path dir = argv[1];
  Scenario sc;
  sc.run("CreateUser", CreateUser{"a0", "admin", {kRoleAdmin}, ""});
  sc.run("CreateUser", CreateUser{"u0", "alice", {kRoleUser}, "argon2id$x"});
  sc.run("CreateUser", CreateUser{"u1", "bob", {kRoleUser}, ""});
  sc.run("IssueToken", IssueToken{"u0", std::string(64, 'a'), sc.ctx.now_ms + 3'600'000});
  sc.run("UpdateUser", UpdateUser{"u1", std::nullopt, std::nullopt, std::nullopt, true});
  snapshot_seeds(dir, "users", sc.s);

  sc.run("AddHost", AddHost{"h0", "op-h0", "kvm0", "qemu:///system", "", {5500, 5503}});
  sc.run("BeginOperations", BeginOperations{"h0", 0, {"op-h0"}});
  sc.run("RecordHostConnected",
         RecordHostConnected{"h0", 1, Json{{"memory_kib", 8u << 20}, {"cpus", 8}}});
  sc.run("RecordDomainsObserved",
         RecordDomainsObserved{
             "h0", 1, {{"d0", "uu0", "running", 5500}, {"d1", "uu1", "shut_off", -1}}});
  std::string d1 = vm_id_for("h0", "uu1");
  sc.run("RequestVmPower", RequestVmPower{d1, "op-p1", "start", std::nullopt});
  sc.run("AllocateDisplayPort", AllocateDisplayPort{d1});
  sc.run("RecordVmActionResult", RecordVmActionResult{d1, 1, "op-p1", "start", false, "no"});
  sc.run("AddHost", AddHost{"h1", "op-h1", "kvm1", "qemu+ssh://kvm1/system", "", {}});
  sc.run("RecordHostConnectFailed", RecordHostConnectFailed{"h1", "refused", true, false});
  snapshot_seeds(dir, "hosts", sc.s);

  CreatePool cp;
  cp.id = "p0";
  cp.name = "office";
  cp.kind = "floating";
  cp.tmpl.domain_xml =
      "<domain type='kvm'><name>tmpl</name><memory unit='MiB'>512</memory><devices>"
      "<interface type='network'><mac address='52:54:00:aa:bb:cc'/></interface>"
      "<graphics type='spice' autoport='yes'/></devices></domain>";
  cp.host_ids = {"h0"};
  cp.max_size = 2;
  cp.power_policy = "refresh_on_logoff";
  sc.run("CreatePool", cp);
  sc.run("AddEntitlement", AddEntitlement{"p0", "u0"});
  sc.run("ProvisionPoolVm", ProvisionPoolVm{"p0", "m4", "uu4", "52:54:00:00:00:04", false});
  sc.run("RecordDomainsObserved", RecordDomainsObserved{"h0",
                                                        1,
                                                        {{"d0", "uu0", "running", 5500},
                                                         {"d1", "uu1", "shut_off", -1},
                                                         {"m4", "uu4", "running", 5501}}});
  std::string m4 = vm_id_for("h0", "uu4");
  sc.run("RecordPoolVmProvisioned", RecordPoolVmProvisioned{m4, true, ""});
  sc.run("LaunchDesktop", LaunchDesktop{"ds1", "u0", "p0"});
  sc.run("RecordSessionTicket", RecordSessionTicket{"ds1", sc.ctx.now_ms + 120'000, true, ""});
  sc.run("ReportSession", ReportSession{"ds1", "connected"});
  sc.run("SendUserMessage", SendUserMessage{"u0", "message", "maintenance at noon"});
  sc.run("EndDesktopSession", EndDesktopSession{"ds1", "logoff", "op-r1"});
  snapshot_seeds(dir, "pools", sc.s);

  sc.run("CreateCluster", CreateCluster{"c0", "farm", "", {}});
  sc.run("CreateServer", CreateServer{"sv0", "ts0", "10.0.0.10", "windows", "2022", 4, 8192, true});
  sc.run("CreateServer", CreateServer{"sv1", "ts1", "10.0.0.11", "windows", "2022", 4, 8192, true});
  sc.run("AddServerApplication", AddServerApplication{"sv0", "word", "C:\\word.exe", "", ""});
  sc.run("AddServerApplication", AddServerApplication{"sv1", "excel", "C:\\excel.exe", "", ""});
  std::string word = application_id("word", "C:\\word.exe");
  std::string excel = application_id("excel", "C:\\excel.exe");
  sc.run("Publish", Publish{"pb0", word, Scope::server, "sv0"});
  sc.run("Authorize", Authorize{"az0", "u0", word, Scope::server, "sv0"});
  sc.run("JoinCluster", JoinCluster{"sv1", "c0", std::nullopt});
  sc.run("Publish", Publish{"pb1", excel, Scope::cluster, "c0"});
  sc.run("Authorize", Authorize{"az1", "u0", excel, Scope::cluster, "c0"});
  sc.run("ReportServerInventory", ReportServerInventory{"sv1", {excel}, {"u0"}, 0});
  sc.run("LaunchApplication", LaunchApplication{"as1", "u0", excel, {}});
  sc.run("Unauthorize", Unauthorize{"az0", std::nullopt});
  snapshot_seeds(dir, "appcloud", sc.s);

  std::string whole;
  std::map<std::string, int> per_type;
  for (const auto& e : sc.log) {
    whole += framed(e);
    if (per_type[e.type]++ == 0) write(dir / "event_envelope" / ("one_" + e.type), framed(e));
  }
  write(dir / "event_envelope" / "scenario_log", whole);
  std::printf("make_seeds: %zu events, %zu event types\n", sc.log.size(), per_type.size());
  return 0;
}

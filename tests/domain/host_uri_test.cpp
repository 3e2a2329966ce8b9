// 10.4: which libvirt URIs the broker may open (domain/host_uri.h), as a table.
#include "domain/host_uri.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using atrium::domain::check_host_uri;
using atrium::domain::HostUriPolicy;

namespace {

struct Row {
  std::string uri;
  bool ok;               // under the default policy
  std::string reason;    // when refused
  std::string mentions;  // part of the message (the flag that allows it, the part refused)
};

}  // namespace

TEST_CASE("10.4: host URIs: the default policy allows qemu local, ssh and tls, nothing else") {
  const std::vector<Row> rows = {
      {"qemu:///system", true, "", ""},
      {"qemu:///session", true, "", ""},
      {"qemu+ssh://root@kvm1.example.org/system", true, "", ""},
      {"qemu+ssh://kvm1:2222/system?sshauth=privkey&no_tty=1", true, "", ""},
      {"qemu+tls://10.0.0.5/system?no_verify=1;tls_priority=NORMAL", true, "", ""},
      {"qemu+tls://[fe80::1]:16514/system", true, "", ""},
      {"qemu://kvm2/system", true, "", ""},  // libvirt: a host without transport is TLS
      {"qemu:///system?mode=direct", true, "", ""},
      // The finding: commands, files and ports.
      {"qemu+ext:///system?command=/tmp/x.sh", false, "uri_not_allowed", "qemu+ext"},
      {"qemu:///system?command=/tmp/x.sh", false, "uri_not_allowed", "--host-uri-params=command"},
      {"qemu+ssh://h/system?netcat=/tmp/nc", false, "uri_not_allowed", "'netcat'"},
      {"qemu+ssh://h/system?keyfile=/etc/shadow", false, "uri_not_allowed", "'keyfile'"},
      {"qemu+tls://h/system?pkipath=/root", false, "uri_not_allowed", "'pkipath'"},
      {"qemu+ssh://h/system?known_hosts=/etc/shadow", false, "uri_not_allowed", "'known_hosts'"},
      {"qemu:///system?socket=/run/other.sock", false, "uri_not_allowed", "'socket'"},
      {"qemu+ssh://h/system?authfile=/etc/shadow", false, "uri_not_allowed", "'authfile'"},
      {"qemu+ssh://h/system?name=test:///etc/shadow", false, "uri_not_allowed", "'name'"},
      {"qemu+ssh://h/system?mode=direct;command=x", false, "uri_not_allowed", "'command'"},
      {"qemu+ssh://h/system?COMMAND=x", false, "uri_not_allowed",
       "lower-case"},  // libvirt: STRCASEEQ
      {"qemu+ssh://h/system?comm%61nd=x", false, "uri_not_allowed",
       "lower-case"},  // unescaped by libvirt
      {"qemu+ssh://h/system?frobnicate=1", false, "uri_not_allowed",
       "--host-uri-params=frobnicate"},
      {"qemu+ssh://h/system?&mode=direct", false, "uri_not_allowed", "empty"},
      {"qemu+tcp://127.0.0.1:22/system", false, "uri_not_allowed", "--allow-tcp-hosts"},
      {"test:///etc/shadow", false, "uri_not_allowed", "--allow-test-hosts"},
      {"test:///default", false, "uri_not_allowed", "--allow-test-hosts"},
      // Other drivers, transports and paths.
      {"lxc:///", false, "uri_not_allowed", "'lxc'"},
      {"xen:///system", false, "uri_not_allowed", "'xen'"},
      {"qemu+unix:///system?socket=/x", false, "uri_not_allowed", "'qemu+unix'"},
      {"qemu+libssh2://h/system", false, "uri_not_allowed", "'qemu+libssh2'"},
      {"QEMU+EXT:///system", false, "uri_not_allowed", "'QEMU+EXT'"},
      {"remote+ext:///system?command=x", false, "uri_not_allowed", "'remote+ext'"},
      {"qemu:///embed?root=/tmp/x", false, "uri_not_allowed", "/system or /session"},
      {"qemu:///system/../embed", false, "uri_not_allowed", "/system or /session"},
      {"qemu:///sys%74em", false, "uri_not_allowed", "/system or /session"},
      // Hosts ssh could take for options, passwords, odd ports.
      {"qemu+ssh://-oProxyCommand=touch%20x/system", false, "uri_not_allowed", "host"},
      {"qemu+ssh://-luser@h/system", false, "uri_not_allowed", "user"},
      {"qemu+ssh://h.-x/system", false, "uri_not_allowed", "host"},
      {"qemu+ssh://user:secret@h/system", false, "uri_not_allowed", "user"},
      {"qemu+ssh://h:0/system", false, "uri_not_allowed", "port"},
      {"qemu+ssh://h:65536/system", false, "uri_not_allowed", "port"},
      {"qemu+ssh://h:22x/system", false, "uri_not_allowed", "port"},
      {"qemu+ssh://:22/system", false, "uri_not_allowed", "host"},
      {"qemu+ssh://h%2Fx/system", false, "uri_not_allowed", "host"},
      // Not URIs, or URIs libvirt might read otherwise.
      {"", false, "invalid_uri", ""},
      {"qemu", false, "invalid_uri", ""},
      {"qemu:/system", false, "invalid_uri", ""},
      {"://x/system", false, "invalid_uri", ""},
      {"qemu://h", false, "invalid_uri", ""},
      {"qemu://h?mode=direct/system", false, "invalid_uri", ""},
      {"qemu:///system?mode=a?b", false, "invalid_uri", ""},
      {"qemu:///system#frag", false, "invalid_uri", ""},
      {"qemu:///system\\x", false, "invalid_uri", ""},
      {"qemu:///system x", false, "invalid_uri", ""},
      {"qemu:///system\n", false, "invalid_uri", ""},
      {"qemu:///syst\xc3\xa9m", false, "invalid_uri", ""},
      {std::string(1025, 'q'), false, "invalid_uri", ""},
  };
  HostUriPolicy policy;
  for (const auto& row : rows) {
    CAPTURE(row.uri);
    auto st = check_host_uri(row.uri, policy);
    CHECK(st.ok() == row.ok);
    if (st.ok() || row.ok) continue;
    CHECK(st.error().code == atrium::Code::invalid_argument);
    CHECK(st.error().reason == row.reason);
    REQUIRE(st.error().fields.size() == 1);
    CHECK(st.error().fields[0].field == "uri");
    CHECK_MESSAGE(st.error().message.find(row.mentions) != std::string::npos, st.error().message);
  }
}

TEST_CASE(
    "10.4: host URIs: flags allow test hosts, tcp and named parameters; the default host passes") {
  HostUriPolicy p;
  p.allow_test = true;
  CHECK(check_host_uri("test:///default", p).ok());
  CHECK(check_host_uri("test:///srv/fixtures/host.xml", p).ok());
  CHECK_FALSE(check_host_uri("test://h/default", p).ok());
  CHECK_FALSE(check_host_uri("test:///default?x=1", p).ok());
  CHECK_FALSE(check_host_uri("test:///", p).ok());
  CHECK_FALSE(check_host_uri("qemu+tcp://h/system", p).ok());

  p.allow_tcp = true;
  CHECK(check_host_uri("qemu+tcp://h:16509/system", p).ok());
  CHECK_FALSE(check_host_uri("qemu+tcp://h/system?command=x", p).ok());

  p.extra_params = {"keyfile"};
  CHECK(check_host_uri("qemu+ssh://h/system?keyfile=/etc/atrium/id_ed25519", p).ok());
  CHECK_FALSE(check_host_uri("qemu+ssh://h/system?keyfile=/k&command=x", p).ok());

  HostUriPolicy d;
  d.exempt_uri = "test:///default";
  CHECK(check_host_uri("test:///default", d).ok());
  CHECK_FALSE(check_host_uri("test:///etc/shadow", d).ok());
}

// Which libvirt connection URIs the broker opens. A libvirt URI is more than an address:
// `qemu+ext:///system?command=/path` runs that command as the broker's user, `test:///path`
// parses that file (and libvirt quotes it back in its errors), `?keyfile=`, `?pkipath=`,
// `?known_hosts=`, `?socket=`, `?authfile=` name local files, and `qemu+tcp://host:port`
// probes any port. So a URI passes only through an allow-list of drivers, transports, paths
// and query parameters; anything this check does not understand is refused.
//
// Pure (no I/O): used by POST /v1/hosts (400 uri_not_allowed) and again by the host
// reconciler before it opens a host already in the log (a refused host goes to alert).
#pragma once

#include <set>
#include <string>

#include "common/result.h"

namespace atrium::domain {

struct HostUriPolicy {
  // test:///default and test:///<absolute path of a host XML> (--allow-test-hosts).
  bool allow_test = false;
  // qemu+tcp:// (--allow-tcp-hosts): unencrypted, and an open door to port probing.
  bool allow_tcp = false;
  // Query parameters allowed beyond the safe ones (--host-uri-params), e.g. "keyfile".
  std::set<std::string> extra_params;
  // Accepted as it is, whatever the rules say: the operator's own --default-host.
  std::string exempt_uri;
};

// The query parameters allowed without a flag: they choose among libvirt's own behaviours
// and name neither a command nor a local file.
const std::set<std::string>& safe_host_uri_params();

// Ok when the broker may open `uri` under `policy`; otherwise invalid_argument with reason
// "uri_not_allowed" (or "invalid_uri" when it is not a URI at all), a message that says
// which part is refused and how to allow it, and the field "uri".
Status check_host_uri(const std::string& uri, const HostUriPolicy& policy);

}  // namespace atrium::domain

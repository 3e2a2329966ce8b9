// atrium-agent's logic that needs no network: configuration (flags and the config file), the
// broker choice and retry delay of seed 001 (with an injected random source, so that unit
// tests see every path), XDG desktop-entry discovery, load figures from /proc, and the local
// state files (the credential, kept 0600; the applied remote-app and remote-user lists).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "common/broker_groups.h"

namespace atrium::agent {

using Json = nlohmann::json;

// ---- configuration ------------------------------------------------------------------------
struct Config {
  BrokerGroups brokers;
  std::string enrollment_token;  // first start only (then the credential in state_dir)
  std::string state_dir = "/var/lib/atrium-agent";
  std::vector<std::string> apps_dirs;  // extra desktop-entry dirs (besides XDG's)
  bool discover_apps = true;           // scan desktop entries (server agents)
  bool once = false;
  std::string machine_id;  // default: SMBIOS system UUID, else /etc/machine-id
  std::string hostname;    // default: gethostname()
  std::string ca_file;     // PEM bundle to verify an HTTPS broker (default: the system's)
  std::string desktop;     // for OnlyShowIn/NotShowIn (default: $XDG_CURRENT_DESKTOP)
  int64_t request_timeout_ms = 10'000;
};

// The keys (without "--") flags and the config file share.
const std::vector<std::string>& config_keys();

// Parses "key = value" lines ('#' comments, blank lines; a value may be quoted with "...").
// Unknown keys and malformed lines are errors naming the line.
struct ParseError {
  std::string message;
};
std::variant<std::map<std::string, std::string>, ParseError> parse_config_file(
    const std::string& text);

// Builds the configuration from the config file's values overridden by the flags'. Errors name
// the key; the caller exits 2.
std::variant<Config, ParseError> make_config(const std::map<std::string, std::string>& file,
                                             const std::map<std::string, std::string>& flags);

// ---- broker choice (seed 001) -------------------------------------------------------------
using Random = std::function<uint64_t()>;

// Registration tries a random broker of the first group; when it is down (timeout, refused),
// another untried broker of the same group; only when every broker of the group is down, the
// next group. When every group is down the round is over: next() answers nullopt and the
// caller waits retry_delay_ms() before a new round (reset()), forever.
class BrokerChooser {
 public:
  BrokerChooser(BrokerGroups groups, Random random);
  std::optional<std::string> next();
  void down(const std::string& broker);  // the last one next() gave did not answer
  void reset();                          // a new round
  // A new round after `failed` stopped answering (a broker that died): every other broker,
  // as next() picks them, before `failed` again, so the agent moves on with one retry.
  void reset_after(const std::string& failed);
  // The registration answer's list replaces the configured one (empty: kept).
  void replace(const BrokerGroups& groups);
  const BrokerGroups& groups() const { return groups_; }

 private:
  BrokerGroups groups_;
  Random random_;
  size_t group_ = 0;
  std::set<std::string> tried_;
  std::string last_resort_;
};

// A random delay of 7 to 10 s (inclusive), in ms.
int64_t retry_delay_ms(const Random& random);

// ---- desktop entries ----------------------------------------------------------------------
struct DesktopApp {
  std::string id;  // desktop-file id, e.g. "org.gnome.Calculator.desktop"
  std::string name;
  std::string executable_path;
  std::string description;
  std::string desktop_file;  // its path
  bool operator==(const DesktopApp&) const = default;
};

// The [Desktop Entry] of one file as an application, or nullopt when it is not one to show:
// not Type=Application, NoDisplay=true, Hidden=true, a TryExec that is not an executable
// (absolute, or found in `path`), OnlyShowIn without `desktop`, NotShowIn with it, no Name or
// Exec. `exists` tells whether a file is executable (injected for tests).
std::optional<DesktopApp> parse_desktop_entry(
    const std::string& text, const std::string& file, const std::string& desktop,
    const std::string& path, const std::function<bool(const std::string&)>& exists);

// The directories to scan, in precedence order: $XDG_DATA_HOME/applications (default
// ~/.local/share/applications), each $XDG_DATA_DIRS entry + /applications (default
// /usr/local/share:/usr/share), then `extra`.
std::vector<std::string> application_dirs(const std::map<std::string, std::string>& env,
                                          const std::vector<std::string>& extra);

// Every application of those dirs (recursively; the first dir that has a desktop-file id
// wins, as the XDG spec says), ordered by id.
std::vector<DesktopApp> discover_applications(const std::vector<std::string>& dirs,
                                              const std::string& desktop, const std::string& path);

// ---- load ---------------------------------------------------------------------------------
struct CpuTimes {
  uint64_t busy = 0;
  uint64_t total = 0;
};
// The first "cpu" line of /proc/stat.
std::optional<CpuTimes> parse_proc_stat(const std::string& text);
// Busy share between two readings, 0..1.
double cpu_load(const CpuTimes& before, const CpuTimes& after);
// 1 - MemAvailable / MemTotal from /proc/meminfo.
std::optional<double> parse_meminfo(const std::string& text);

// ---- local state --------------------------------------------------------------------------
struct Credential {
  std::string agent_id;
  std::string credential;
  std::string kind;
};
// <state_dir>/credential.json, written 0600 (atomically: a temp file renamed).
std::optional<Credential> load_credential(const std::string& state_dir);
bool save_credential(const std::string& state_dir, const Credential& c, std::string* error);
void remove_credential(const std::string& state_dir);

// <state_dir>/remote-lists.json: the remote-app and remote-user lists as applied (where a
// real RemoteApp service would be configured), and the configuration version they came from.
struct RemoteLists {
  std::string config_version;
  Json remote_apps = Json::array();   // [{id, name, executable_path}]
  Json remote_users = Json::array();  // [{id, name}]
  std::set<std::string> app_ids() const;
  std::set<std::string> user_ids() const;
};
std::optional<RemoteLists> load_remote_lists(const std::string& state_dir);
bool save_remote_lists(const std::string& state_dir, const RemoteLists& l, std::string* error);

// Writes `content` to `path` through a temp file and rename, with `mode`.
bool write_file_atomic(const std::string& path, const std::string& content, unsigned mode,
                       std::string* error);

}  // namespace atrium::agent

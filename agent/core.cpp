#include "agent/core.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace atrium::agent {

namespace fs = std::filesystem;

// ---- configuration ------------------------------------------------------------------------
const std::vector<std::string>& config_keys() {
  static const std::vector<std::string> k{
      "brokers",    "enrollment-token", "state-dir", "apps-dir", "discover-apps",    "once",
      "machine-id", "hostname",         "ca-file",   "desktop",  "request-timeout-s"};
  return k;
}

namespace {

std::string trim(std::string s) {
  size_t a = s.find_first_not_of(" \t\r");
  if (a == std::string::npos) return "";
  size_t b = s.find_last_not_of(" \t\r");
  return s.substr(a, b - a + 1);
}

bool known_key(const std::string& k) {
  const auto& keys = config_keys();
  return std::find(keys.begin(), keys.end(), k) != keys.end();
}

std::optional<bool> to_bool(const std::string& v) {
  if (v == "" || v == "true" || v == "yes" || v == "on" || v == "1") return true;
  if (v == "false" || v == "no" || v == "off" || v == "0") return false;
  return std::nullopt;
}

}  // namespace

std::variant<std::map<std::string, std::string>, ParseError> parse_config_file(
    const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    auto eq = t.find('=');
    if (eq == std::string::npos) {
      return ParseError{"line " + std::to_string(n) + ": expected key = value"};
    }
    std::string key = trim(t.substr(0, eq));
    std::string value = trim(t.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    if (!known_key(key)) return ParseError{"line " + std::to_string(n) + ": unknown key " + key};
    if (key == "apps-dir" && out.count(key)) {
      out[key] += ":" + value;  // several lines add directories
    } else {
      out[key] = value;
    }
  }
  return out;
}

std::variant<Config, ParseError> make_config(const std::map<std::string, std::string>& file,
                                             const std::map<std::string, std::string>& flags) {
  std::map<std::string, std::string> v = file;
  for (const auto& [k, x] : flags) {
    if (!known_key(k)) return ParseError{"unknown flag --" + k};
    v[k] = x;
  }
  Config c;
  auto it = v.find("brokers");
  if (it == v.end() || it->second.empty()) return ParseError{"--brokers is required"};
  auto groups = parse_broker_groups(it->second);
  if (!groups) {
    return ParseError{
        "--brokers must be broker URLs, in groups such as "
        "\"(http://b1:8080 http://b2:8080)(http://b3:8080)\""};
  }
  for (const auto& g : *groups) {
    for (const auto& b : g) {
      if (b.rfind("http://", 0) != 0 && b.rfind("https://", 0) != 0) {
        return ParseError{"--brokers: " + b + " is not an http:// or https:// URL"};
      }
    }
  }
  c.brokers = *groups;
  if (auto x = v.find("enrollment-token"); x != v.end()) c.enrollment_token = x->second;
  if (auto x = v.find("state-dir"); x != v.end()) c.state_dir = x->second;
  if (auto x = v.find("apps-dir"); x != v.end()) {
    std::stringstream ss(x->second);
    std::string d;
    while (std::getline(ss, d, ':')) {
      if (!d.empty()) c.apps_dirs.push_back(d);
    }
  }
  for (auto [key, dst] :
       {std::pair{"discover-apps", &c.discover_apps}, std::pair{"once", &c.once}}) {
    if (auto x = v.find(key); x != v.end()) {
      auto b = to_bool(x->second);
      if (!b) return ParseError{std::string("--") + key + " must be true or false"};
      *dst = *b;
    }
  }
  if (auto x = v.find("machine-id"); x != v.end()) c.machine_id = x->second;
  if (auto x = v.find("hostname"); x != v.end()) c.hostname = x->second;
  if (auto x = v.find("ca-file"); x != v.end()) c.ca_file = x->second;
  if (auto x = v.find("desktop"); x != v.end()) c.desktop = x->second;
  if (auto x = v.find("request-timeout-s"); x != v.end()) {
    char* end = nullptr;
    long n = std::strtol(x->second.c_str(), &end, 10);
    if (end == x->second.c_str() || *end != '\0' || n < 1 || n > 300) {
      return ParseError{"--request-timeout-s must be 1 to 300"};
    }
    c.request_timeout_ms = n * 1000;
  }
  if (c.state_dir.empty()) return ParseError{"--state-dir must not be empty"};
  return c;
}

// ---- broker choice ------------------------------------------------------------------------
BrokerChooser::BrokerChooser(BrokerGroups groups, Random random)
    : groups_(std::move(groups)), random_(std::move(random)) {}

std::optional<std::string> BrokerChooser::next() {
  while (group_ < groups_.size()) {
    std::vector<std::string> left;
    for (const auto& b : groups_[group_]) {
      if (tried_.count(b) == 0) left.push_back(b);
    }
    if (!left.empty()) {
      const std::string& b = left[random_() % left.size()];
      tried_.insert(b);
      return b;
    }
    ++group_;  // every broker of this group is down: the next group
  }
  if (!last_resort_.empty()) {  // the broker that just failed, once every other one did too
    std::string b = std::move(last_resort_);
    last_resort_.clear();
    return b;
  }
  return std::nullopt;
}

void BrokerChooser::down(const std::string&) {}  // next() already skips what was tried

void BrokerChooser::reset() {
  group_ = 0;
  tried_.clear();
  last_resort_.clear();
}

void BrokerChooser::reset_after(const std::string& failed) {
  reset();
  if (failed.empty()) return;
  tried_.insert(failed);
  last_resort_ = failed;
}

void BrokerChooser::replace(const BrokerGroups& groups) {
  if (groups.empty() || groups == groups_) return;
  groups_ = groups;
  reset();
}

int64_t retry_delay_ms(const Random& random) {
  return 7000 + static_cast<int64_t>(random() % 3001);
}

// ---- desktop entries ----------------------------------------------------------------------
namespace {

bool has_in_list(const std::string& list, const std::string& desktops) {
  // Both are ';' (entry) and ':' ($XDG_CURRENT_DESKTOP) separated lists.
  std::set<std::string> mine;
  std::stringstream d(desktops);
  std::string x;
  while (std::getline(d, x, ':')) {
    if (!x.empty()) mine.insert(x);
  }
  std::stringstream l(list);
  while (std::getline(l, x, ';')) {
    if (!x.empty() && mine.count(x)) return true;
  }
  return false;
}

// The program of an Exec line: its first word, unquoted, field codes dropped.
std::string exec_program(const std::string& exec) {
  std::string out;
  bool quoted = false;
  size_t i = 0;
  while (i < exec.size() && exec[i] == ' ') ++i;
  for (; i < exec.size(); ++i) {
    char c = exec[i];
    if (c == '"') {
      quoted = !quoted;
      continue;
    }
    if (c == '\\' && quoted && i + 1 < exec.size()) {
      out.push_back(exec[++i]);
      continue;
    }
    if (c == ' ' && !quoted) break;
    out.push_back(c);
  }
  return out;
}

bool findable(const std::string& prog, const std::string& path,
              const std::function<bool(const std::string&)>& exists) {
  if (prog.empty()) return false;
  if (prog.find('/') != std::string::npos) return exists(prog);
  std::stringstream ss(path);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (!dir.empty() && exists(dir + "/" + prog)) return true;
  }
  return false;
}

}  // namespace

std::optional<DesktopApp> parse_desktop_entry(
    const std::string& text, const std::string& file, const std::string& desktop,
    const std::string& path, const std::function<bool(const std::string&)>& exists) {
  std::map<std::string, std::string> kv;
  std::istringstream in(text);
  std::string line;
  bool in_entry = false;
  while (std::getline(in, line)) {
    std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    if (t[0] == '[') {
      in_entry = t == "[Desktop Entry]";
      continue;
    }
    if (!in_entry) continue;
    auto eq = t.find('=');
    if (eq == std::string::npos) continue;
    std::string k = trim(t.substr(0, eq));
    if (k.find('[') != std::string::npos) continue;  // localized keys: the plain one is kept
    kv.emplace(k, trim(t.substr(eq + 1)));
  }
  auto get = [&](const char* k) {
    auto it = kv.find(k);
    return it == kv.end() ? std::string() : it->second;
  };
  if (get("Type") != "Application") return std::nullopt;
  if (get("NoDisplay") == "true" || get("Hidden") == "true") return std::nullopt;
  if (!get("OnlyShowIn").empty() && !has_in_list(get("OnlyShowIn"), desktop)) return std::nullopt;
  if (!get("NotShowIn").empty() && has_in_list(get("NotShowIn"), desktop)) return std::nullopt;
  if (!get("TryExec").empty() && !findable(get("TryExec"), path, exists)) return std::nullopt;
  std::string name = get("Name"), prog = exec_program(get("Exec"));
  if (name.empty() || prog.empty()) return std::nullopt;
  DesktopApp a;
  a.id = fs::path(file).filename().string();
  a.name = name;
  a.executable_path = prog;
  a.description = get("Comment");
  a.desktop_file = file;
  return a;
}

std::vector<std::string> application_dirs(const std::map<std::string, std::string>& env,
                                          const std::vector<std::string>& extra) {
  auto get = [&](const char* k) {
    auto it = env.find(k);
    return it == env.end() ? std::string() : it->second;
  };
  std::vector<std::string> out;
  std::string home = get("XDG_DATA_HOME");
  if (home.empty() && !get("HOME").empty()) home = get("HOME") + "/.local/share";
  if (!home.empty()) out.push_back(home + "/applications");
  std::string dirs = get("XDG_DATA_DIRS");
  if (dirs.empty()) dirs = "/usr/local/share:/usr/share";
  std::stringstream ss(dirs);
  std::string d;
  while (std::getline(ss, d, ':')) {
    if (!d.empty()) out.push_back(d + "/applications");
  }
  for (const auto& e : extra) out.push_back(e);
  return out;
}

std::vector<DesktopApp> discover_applications(const std::vector<std::string>& dirs,
                                              const std::string& desktop, const std::string& path) {
  auto exists = [](const std::string& p) { return ::access(p.c_str(), X_OK) == 0; };
  std::map<std::string, DesktopApp> by_id;
  std::set<std::string> seen;  // desktop-file ids, including those that are not shown
  for (const auto& dir : dirs) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    std::vector<fs::path> files;
    for (auto it = fs::recursive_directory_iterator(
             dir, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->path().extension() == ".desktop" && it->is_regular_file(ec))
        files.push_back(it->path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      // The desktop-file id: the path below the dir, '/' replaced by '-'.
      std::string rel = fs::relative(f, dir, ec).string();
      std::replace(rel.begin(), rel.end(), '/', '-');
      if (!seen.insert(rel).second) continue;  // an earlier dir has it (and wins, even hidden)
      std::ifstream in(f);
      std::stringstream buf;
      buf << in.rdbuf();
      if (auto app = parse_desktop_entry(buf.str(), f.string(), desktop, path, exists)) {
        app->id = rel;
        by_id[rel] = *app;
      }
    }
  }
  std::vector<DesktopApp> out;
  for (auto& [id, a] : by_id) out.push_back(std::move(a));
  return out;
}

// ---- load ---------------------------------------------------------------------------------
std::optional<CpuTimes> parse_proc_stat(const std::string& text) {
  std::istringstream in(text);
  std::string label;
  in >> label;
  if (label != "cpu") return std::nullopt;
  uint64_t v[8] = {0};
  for (auto& x : v) {
    if (!(in >> x)) break;
  }
  CpuTimes t;
  for (uint64_t x : v) t.total += x;
  uint64_t idle = v[3] + v[4];  // idle + iowait
  t.busy = t.total - idle;
  if (t.total == 0) return std::nullopt;
  return t;
}

double cpu_load(const CpuTimes& a, const CpuTimes& b) {
  if (b.total <= a.total || b.busy < a.busy) return 0;
  double l = static_cast<double>(b.busy - a.busy) / static_cast<double>(b.total - a.total);
  return std::clamp(l, 0.0, 1.0);
}

std::optional<double> parse_meminfo(const std::string& text) {
  std::istringstream in(text);
  std::string key;
  uint64_t total = 0, avail = 0, value = 0;
  std::string unit;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemTotal:") total = value;
    if (key == "MemAvailable:") avail = value;
  }
  if (total == 0 || avail > total) return std::nullopt;
  return 1.0 - static_cast<double>(avail) / static_cast<double>(total);
}

// ---- local state --------------------------------------------------------------------------
bool write_file_atomic(const std::string& path, const std::string& content, unsigned mode,
                       std::string* error) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) {
    if (error) *error = "cannot write " + tmp;
    return false;
  }
  ::fchmod(fd, mode);
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ok = ::fsync(fd) == 0 && ok;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    if (error) *error = "cannot write " + path;
    ::unlink(tmp.c_str());
    return false;
  }
  return true;
}

namespace {
std::optional<Json> read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream buf;
  buf << in.rdbuf();
  Json j = Json::parse(buf.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return j;
}
}  // namespace

std::optional<Credential> load_credential(const std::string& state_dir) {
  auto j = read_json(state_dir + "/credential.json");
  if (!j || !(*j)["agent_id"].is_string() || !(*j)["credential"].is_string()) return std::nullopt;
  return Credential{(*j)["agent_id"], (*j)["credential"], j->value("kind", "")};
}

bool save_credential(const std::string& state_dir, const Credential& c, std::string* error) {
  std::error_code ec;
  fs::create_directories(state_dir, ec);
  ::chmod(state_dir.c_str(), 0700);
  Json j{{"agent_id", c.agent_id}, {"credential", c.credential}, {"kind", c.kind}};
  return write_file_atomic(state_dir + "/credential.json", j.dump() + "\n", 0600, error);
}

void remove_credential(const std::string& state_dir) {
  ::unlink((state_dir + "/credential.json").c_str());
}

std::set<std::string> RemoteLists::app_ids() const {
  std::set<std::string> s;
  for (const auto& a : remote_apps) {
    if (a.is_object() && a.contains("id") && a["id"].is_string())
      s.insert(a["id"].get<std::string>());
  }
  return s;
}

std::set<std::string> RemoteLists::user_ids() const {
  std::set<std::string> s;
  for (const auto& u : remote_users) {
    if (u.is_object() && u.contains("id") && u["id"].is_string())
      s.insert(u["id"].get<std::string>());
  }
  return s;
}

std::optional<RemoteLists> load_remote_lists(const std::string& state_dir) {
  auto j = read_json(state_dir + "/remote-lists.json");
  if (!j) return std::nullopt;
  RemoteLists l;
  l.config_version = j->value("config_version", "");
  if (j->contains("remote_apps") && (*j)["remote_apps"].is_array())
    l.remote_apps = (*j)["remote_apps"];
  if (j->contains("remote_users") && (*j)["remote_users"].is_array())
    l.remote_users = (*j)["remote_users"];
  return l;
}

bool save_remote_lists(const std::string& state_dir, const RemoteLists& l, std::string* error) {
  std::error_code ec;
  fs::create_directories(state_dir, ec);
  Json j{{"config_version", l.config_version},
         {"remote_apps", l.remote_apps},
         {"remote_users", l.remote_users}};
  return write_file_atomic(state_dir + "/remote-lists.json", j.dump(2) + "\n", 0644, error);
}

}  // namespace atrium::agent

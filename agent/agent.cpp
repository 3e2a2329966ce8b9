#include "agent/agent.h"

#include <poll.h>
#include <sys/inotify.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <utmpx.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "agent/http_client.h"

extern char** environ;

namespace atrium::agent {

namespace {

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void log(const std::string& line) {
  std::fprintf(stderr, "atrium-agent: %s\n", line.c_str());
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::string first_line(const std::string& s) {
  auto nl = s.find('\n');
  std::string l = s.substr(0, nl);
  while (!l.empty() && (l.back() == ' ' || l.back() == '\r')) l.pop_back();
  return l;
}

std::map<std::string, std::string> environment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return env;
}

// Who is logged in (utmp USER_PROCESS entries), for the heartbeat's sessions.
Json logged_in() {
  std::set<std::string> users;
  setutxent();
  while (utmpx* u = getutxent()) {
    if (u->ut_type == USER_PROCESS && u->ut_user[0] != '\0') {
      users.insert(std::string(u->ut_user, strnlen(u->ut_user, sizeof u->ut_user)));
    }
  }
  endutxent();
  Json out = Json::array();
  for (const auto& u : users) out.push_back(Json{{"user", u}, {"state", "active"}});
  return out;
}

}  // namespace

std::string default_machine_id() {
  std::string id = first_line(read_file("/sys/class/dmi/id/product_uuid"));
  if (id.empty()) id = first_line(read_file("/etc/machine-id"));
  return id;
}

struct Agent::Impl {
  Config cfg;
  int stop_fd;
  std::mt19937_64 rng{std::random_device{}()};
  Random random = [this] { return rng(); };
  BrokerChooser chooser;
  HttpClient http;
  std::optional<Credential> cred;
  std::string broker;  // the one registered with
  std::string lost_broker;  // the one that just stopped answering (tried last)
  std::string registration;
  std::string kind;
  int64_t interval_ms = 30'000;
  std::string config_version;
  Json config;
  std::optional<CpuTimes> cpu_before;
  std::vector<DesktopApp> apps;
  bool apps_dirty = true;
  int inotify_fd = -1;
  std::map<std::string, int64_t> logged_at;  // rejection reason -> last log line

  Impl(Config c, int fd)
      : cfg(std::move(c)),
        stop_fd(fd),
        chooser(cfg.brokers, [this] { return rng(); }),
        http(cfg.request_timeout_ms, cfg.ca_file) {}

  // Waits up to ms; false when told to stop. Desktop-entry changes mark the apps dirty; with
  // `report`, a registered server agent sends its inventory right away (after 200 ms, so that
  // a package installing many entries is one report) and keeps waiting: the heartbeat stays
  // on its interval (an early one would be refused as heartbeat_too_early).
  bool sleep(int64_t ms, bool report = false) {
    int64_t until = now_ms() + ms;
    for (;;) {
      int64_t left = until - now_ms();
      if (left <= 0) return true;
      pollfd fds[2] = {{stop_fd, POLLIN, 0}, {inotify_fd, POLLIN, 0}};
      int n =
          ::poll(fds, inotify_fd >= 0 ? 2 : 1, static_cast<int>(std::min<int64_t>(left, 60'000)));
      if (n > 0 && (fds[0].revents & POLLIN)) return false;
      if (n > 0 && inotify_fd >= 0 && (fds[1].revents & POLLIN)) {
        char buf[4096];
        while (::read(inotify_fd, buf, sizeof buf) > 0) {
        }
        apps_dirty = true;
        if (report && kind == "server" && !registration.empty()) {
          pollfd stop{stop_fd, POLLIN, 0};
          if (::poll(&stop, 1, 200) > 0) return false;
          while (::read(inotify_fd, buf, sizeof buf) > 0) {
          }
          inventory();
        }
      }
    }
  }

  void log_rejection(const std::string& what, const HttpResult& r) {
    Json j = Json::parse(r.body, nullptr, false);
    std::string reason = j.is_object() ? j.value("reason", "") : "";
    int64_t now = now_ms();
    auto& last = logged_at[what + reason];
    if (now - last < interval_ms) return;  // once per reason and interval
    last = now;
    log(what + " refused by " + broker + ": HTTP " + std::to_string(r.status) + " " + reason +
        (j.is_object() ? " (" + j.value("detail", "") + ")" : ""));
  }

  // POSTs to `url` of the current broker.
  HttpResult call(const std::string& path, const Json& body, const std::string& bearer) {
    return http.post(broker + path, body.dump(), bearer);
  }

  // One round over the brokers (seed 001): the first that answers is kept in `broker`.
  // false when every broker is down.
  bool pick_broker(const std::function<HttpResult()>& attempt, HttpResult& out) {
    // The same credential with another broker: the one that stopped answering comes last.
    chooser.reset_after(lost_broker);
    lost_broker.clear();
    while (auto b = chooser.next()) {
      broker = *b;
      out = attempt();
      if (!out.down) return true;
      log("broker " + broker + " is down: " + out.error);
      chooser.down(broker);
    }
    broker.clear();
    return false;
  }

  bool enroll() {
    if (cfg.enrollment_token.empty()) {
      log("no credential in " + cfg.state_dir + " and no --enrollment-token: cannot enroll");
      return false;
    }
    char host[256] = {0};
    ::gethostname(host, sizeof host - 1);
    std::string machine = cfg.machine_id.empty() ? default_machine_id() : cfg.machine_id;
    Json body{{"token", cfg.enrollment_token},
              {"hostname", cfg.hostname.empty() ? std::string(host) : cfg.hostname},
              {"os", "linux"},
              {"agent_version", "1.0"},
              {"machine_id", machine.empty() ? std::string(host) : machine}};
    HttpResult r;
    if (!pick_broker([&] { return call("/v1/agents/enroll", body, ""); }, r)) return false;
    if (r.status != 201) {
      log_rejection("enrollment", r);
      return false;
    }
    Json j = Json::parse(r.body, nullptr, false);
    if (!j.is_object() || !j["id"].is_string() || !j["credential"].is_string()) return false;
    Credential c{j["id"], j["credential"], j.value("kind", "")};
    std::string err;
    if (!save_credential(cfg.state_dir, c, &err)) {
      log("cannot keep the credential: " + err);
      return false;
    }
    cred = c;
    log("enrolled as agent " + c.agent_id + " (" + c.kind + ") with " + broker);
    return true;
  }

  // Registers (choosing a broker); false when no broker answered or it refused.
  bool register_once(int64_t& retry_ms) {
    retry_ms = 0;
    HttpResult r;
    std::string path = "/v1/agents/" + cred->agent_id + "/register";
    if (!pick_broker([&] { return call(path, Json::object(), cred->credential); }, r)) return false;
    if (r.status != 200) {
      log_rejection("registration", r);
      retry_ms = r.retry_after_ms;
      Json j = Json::parse(r.body, nullptr, false);
      if (r.status == 401 && j.is_object() && j.value("reason", "") == "agent_unknown" &&
          !cfg.enrollment_token.empty()) {
        cred.reset();  // replaced by a re-enrollment elsewhere: enroll again
        retry_ms = 1;
      }
      return false;
    }
    Json j = Json::parse(r.body, nullptr, false);
    std::string reg = j.value("registration", "");
    if (reg != registration) log("registered with " + broker + ": " + reg);
    registration = reg;
    kind = j.value("kind", cred->kind);
    interval_ms = static_cast<int64_t>(j.value("heartbeat_interval_s", 30.0) * 1000);
    if (j.contains("brokers") && j["brokers"].is_array()) {
      BrokerGroups g;
      for (const auto& grp : j["brokers"]) {
        std::vector<std::string> one;
        if (grp.is_array()) {
          for (const auto& b : grp) {
            if (b.is_string()) one.push_back(b);
          }
        }
        if (!one.empty()) g.push_back(one);
      }
      if (!g.empty() && g != chooser.groups()) {
        log("brokers from the registration answer: " + format_broker_groups(g));
        std::string keep = broker;
        chooser.replace(g);
        broker = keep;
      }
    }
    apply_config(j.value("config_version", ""), j.value("config", Json::object()));
    return true;
  }

  void apply_config(const std::string& version, const Json& c) {
    if (version.empty() || version == config_version) return;
    config_version = version;
    config = c;
    if (c.value("kind", "") == "server" && c.contains("remote_apps")) {
      RemoteLists l;
      l.config_version = version;
      l.remote_apps = c.value("remote_apps", Json::array());
      l.remote_users = c.value("remote_users", Json::array());
      std::string err;
      if (save_remote_lists(cfg.state_dir, l, &err)) {
        log("applied configuration " + version + ": " + std::to_string(l.remote_apps.size()) +
            " remote apps, " + std::to_string(l.remote_users.size()) + " remote users");
      } else {
        log("cannot apply configuration " + version + ": " + err);
      }
      apps_dirty = true;  // report what the lists now hold
    } else if (c.contains("policy")) {
      std::string err;
      if (write_file_atomic(cfg.state_dir + "/policy.json", c["policy"].dump(2) + "\n", 0644,
                            &err)) {
        log("applied configuration " + version + ": policy " + c["policy"].dump());
      }
    }
  }

  Json heartbeat_body() {
    auto cpu_now = parse_proc_stat(read_file("/proc/stat"));
    double cpu = cpu_before && cpu_now ? cpu_load(*cpu_before, *cpu_now) : 0;
    if (cpu_now) cpu_before = cpu_now;
    double mem = parse_meminfo(read_file("/proc/meminfo")).value_or(0);
    uint64_t disk = 0;
    struct statvfs vfs {};
    if (::statvfs(cfg.state_dir.c_str(), &vfs) == 0) {
      disk = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    }
    return Json{{"cpu_load", cpu},
                {"memory_load", mem},
                {"disk_free_bytes", disk},
                {"sessions", logged_in()},
                {"config_version", config_version}};
  }

  // true: accepted; false with `lost` when the broker is gone (choose another).
  bool heartbeat(bool& lost, int64_t& retry_ms) {
    lost = false;
    retry_ms = 0;
    HttpResult r =
        call("/v1/agents/" + cred->agent_id + "/heartbeat", heartbeat_body(), cred->credential);
    if (r.down) {
      log("broker " + broker + " stopped answering: " + r.error);
      lost_broker = broker;
      lost = true;
      return false;
    }
    if (r.status != 200) {
      log_rejection("heartbeat", r);
      retry_ms = r.retry_after_ms;
      lost = r.status == 409 || r.status == 401 || r.status == 403;  // register again
      return false;
    }
    Json j = Json::parse(r.body, nullptr, false);
    std::string reg = j.value("registration", "");
    if (reg != registration) log("registration is now " + reg);
    registration = reg;
    if (j.contains("heartbeat_interval_s")) {
      interval_ms = static_cast<int64_t>(j.value("heartbeat_interval_s", 30.0) * 1000);
    }
    if (j.contains("config")) apply_config(j.value("config_version", ""), j["config"]);
    return true;
  }

  // Watches every desktop-entry dir and its subdirectories (discovery is recursive). Called at
  // each inventory, so a subdirectory created since is watched from then on (adding a watch
  // twice is harmless: inotify answers the same descriptor). A dir that does not exist yet is
  // picked up at the next inventory after it appears.
  void watch_apps(const std::vector<std::string>& dirs) {
    if (inotify_fd < 0) inotify_fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (inotify_fd < 0) return;
    constexpr uint32_t kMask = IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM |
                               IN_MOVED_TO | IN_ATTRIB;
    size_t watched = 0;
    for (const auto& d : dirs) {
      std::error_code ec;
      if (!std::filesystem::is_directory(d, ec)) continue;
      ::inotify_add_watch(inotify_fd, d.c_str(), kMask);
      for (auto it = std::filesystem::recursive_directory_iterator(
               d, std::filesystem::directory_options::skip_permission_denied, ec);
           !ec && it != std::filesystem::recursive_directory_iterator() && watched < 1000;
           it.increment(ec)) {
        if (it->is_directory(ec)) {
          ::inotify_add_watch(inotify_fd, it->path().c_str(), kMask);
          ++watched;
        }
      }
    }
  }

  // Server agents: the applications and what the lists hold, when anything changed.
  bool inventory() {
    if (kind != "server" || registration != "hard" || !apps_dirty) return true;
    auto env = environment();
    auto dirs = application_dirs(env, cfg.apps_dirs);
    watch_apps(dirs);
    std::string desktop = cfg.desktop.empty()
                              ? (env.count("XDG_CURRENT_DESKTOP") ? env["XDG_CURRENT_DESKTOP"] : "")
                              : cfg.desktop;
    Json apps_json = Json::array();
    if (cfg.discover_apps) {
      apps =
          discover_applications(dirs, desktop, env.count("PATH") ? env["PATH"] : "/usr/bin:/bin");
      for (const auto& a : apps) {
        apps_json.push_back(Json{{"name", a.name},
                                 {"executable_path", a.executable_path},
                                 {"description", a.description},
                                 {"desktop_file", a.desktop_file}});
      }
    }
    RemoteLists held = load_remote_lists(cfg.state_dir).value_or(RemoteLists{});
    Json body{{"applications", apps_json},
              {"remote_apps", held.app_ids()},
              {"remote_users", held.user_ids()}};
    HttpResult r = call("/v1/agents/" + cred->agent_id + "/inventory", body, cred->credential);
    if (r.down || r.status != 200) {
      if (!r.down) log_rejection("inventory", r);
      return false;
    }
    Json j = Json::parse(r.body, nullptr, false);
    apps_dirty = false;
    log("inventory: " + std::to_string(apps.size()) + " applications, " +
        (j.value("in_sync", false) ? std::string("in sync")
                                   : "differs: " + j.value("sync", Json()).dump()));
    return true;
  }

  int run() {
    cred = load_credential(cfg.state_dir);
    for (;;) {
      if (!cred && !enroll()) {
        if (cfg.enrollment_token.empty()) return 2;
        if (cfg.once) return 1;
        if (!sleep(retry_delay_ms(random))) return 0;
        continue;
      }
      int64_t retry = 0;
      if (!register_once(retry)) {
        if (cfg.once && retry != 1) return 1;
        int64_t wait = retry > 0 ? retry : retry_delay_ms(random);
        if (!broker.empty() || retry > 0) wait = std::max<int64_t>(retry, 1000);
        if (!sleep(wait)) return 0;
        continue;
      }
      // Registered: heartbeat now (the first report) and every interval.
      for (;;) {
        bool lost = false;
        int64_t hb_retry = 0;
        bool ok = heartbeat(lost, hb_retry);
        if (!ok && !lost && hb_retry > 0 && hb_retry <= 10'000) {
          if (!sleep(hb_retry)) return 0;
          ok = heartbeat(lost, hb_retry);
        }
        if (ok) inventory();
        if (cfg.once) {
          if (ok) log("--once: registered and reported; exiting");
          return ok ? 0 : 1;
        }
        if (lost) break;  // register again, with another broker if this one is gone
        if (!sleep(interval_ms, true)) return 0;
      }
      registration.clear();
    }
  }
};

Agent::Agent(Config cfg, int stop_fd) : cfg_(std::move(cfg)), stop_fd_(stop_fd) {}

int Agent::run() {
  Impl impl(cfg_, stop_fd_);
  return impl.run();
}

}  // namespace atrium::agent

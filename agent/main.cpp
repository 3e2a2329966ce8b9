// atrium-agent: the agent inside a desktop VM or on an application server (issue 11). Flags,
// or the same keys in a config file (--config); see agent/atrium-agent.conf.example and the
// README's "Agents" section.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "agent/agent.h"
#include "agent/http_client.h"

namespace {

int g_stop_pipe[2] = {-1, -1};

void on_signal(int) {
  char c = 1;
  ssize_t n = ::write(g_stop_pipe[1], &c, 1);
  (void)n;
}

void usage() {
  std::fprintf(
      stderr,
      "usage: atrium-agent [--config FILE] --brokers \"(URL URL)(URL)\" [--flag=value ...]\n"
      "  --brokers            broker groups: a random broker of the first group, the next\n"
      "                       group only when all of it is down\n"
      "  --enrollment-token   first start only: exchanged for a credential\n"
      "  --state-dir          where the credential (0600) and applied lists live\n"
      "                       (default /var/lib/atrium-agent)\n"
      "  --apps-dir           extra desktop-entry dirs (repeat, or ':'-separated)\n"
      "  --discover-apps      true|false: report desktop entries (default true)\n"
      "  --once               register, report once, exit (0: done, 1: failed)\n"
      "  --machine-id         default: SMBIOS system UUID, else /etc/machine-id\n"
      "  --hostname           default: the system's\n"
      "  --ca-file            PEM CA bundle for an https:// broker\n"
      "  --desktop            for OnlyShowIn/NotShowIn (default $XDG_CURRENT_DESKTOP)\n"
      "  --request-timeout-s  per request, 1 to 300 (default 10)\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> flags;
  std::string config_path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      usage();
      return 0;
    }
    if (a.rfind("--", 0) != 0) {
      usage();
      return 2;
    }
    std::string kv = a.substr(2), k = kv, v;
    auto eq = kv.find('=');
    if (eq != std::string::npos) {
      k = kv.substr(0, eq);
      v = kv.substr(eq + 1);
    } else if (k == "once") {
      v = "true";
    } else if (i + 1 < argc) {
      v = argv[++i];
    }
    if (k == "config") {
      config_path = v;
    } else if (k == "apps-dir" && flags.count(k)) {
      flags[k] += ":" + v;
    } else {
      flags[k] = v;
    }
  }
  std::map<std::string, std::string> file;
  if (!config_path.empty()) {
    std::ifstream in(config_path);
    if (!in) {
      std::fprintf(stderr, "atrium-agent: cannot read --config %s\n", config_path.c_str());
      return 2;
    }
    std::stringstream buf;
    buf << in.rdbuf();
    auto parsed = atrium::agent::parse_config_file(buf.str());
    if (auto* e = std::get_if<atrium::agent::ParseError>(&parsed)) {
      std::fprintf(stderr, "atrium-agent: %s: %s\n", config_path.c_str(), e->message.c_str());
      return 2;
    }
    file = std::get<0>(parsed);
  }
  auto cfg = atrium::agent::make_config(file, flags);
  if (auto* e = std::get_if<atrium::agent::ParseError>(&cfg)) {
    std::fprintf(stderr, "atrium-agent: %s\n", e->message.c_str());
    usage();
    return 2;
  }
  if (::pipe2(g_stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return 1;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  atrium::agent::http_global_init();
  atrium::agent::Agent agent(std::get<atrium::agent::Config>(cfg), g_stop_pipe[0]);
  int rc = agent.run();
  std::fprintf(stderr, "atrium-agent: stopped (%d)\n", rc);
  return rc;
}

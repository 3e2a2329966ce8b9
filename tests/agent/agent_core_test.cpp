// atrium-agent's logic without network (agent/core.h): broker choice and the 7-10 s retry
// delay with an injected random source, configuration from flags and the config file, XDG
// desktop entries (NoDisplay, Hidden, TryExec, OnlyShowIn, NotShowIn, precedence of dirs),
// /proc figures and the 0600 credential file.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "agent/core.h"
#include "support/test_support.h"

using namespace atrium;
using namespace atrium::agent;

namespace {

// A scripted random source: each call returns the next value (cycling).
Random script(std::vector<uint64_t> v) {
  auto i = std::make_shared<size_t>(0);
  return [v, i] { return v[(*i)++ % v.size()]; };
}

void write(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

}  // namespace

TEST_CASE(
    "11: broker choice: a random broker of the first group, the next group only when all are "
    "down") {
  BrokerGroups g = *parse_broker_groups("(http://b1 http://b2)(http://b3)");
  BrokerChooser c(g, script({1, 0, 0}));
  CHECK(c.next() == "http://b2");   // random index 1 of {b1, b2}
  CHECK(c.next() == "http://b1");   // the one left in the group
  CHECK(c.next() == "http://b3");   // only now the second group
  CHECK(c.next() == std::nullopt);  // the round is over: wait, then a new round
  c.reset();
  CHECK(c.next() == "http://b2");
  // The registration answer's list replaces the configured one.
  c.replace({{"http://b9"}});
  CHECK(c.next() == "http://b9");
  CHECK(c.next() == std::nullopt);
  c.replace({});  // an empty answer keeps it
  CHECK(c.groups() == BrokerGroups{{"http://b9"}});
}

TEST_CASE("12: a broker that stopped answering is tried last in the next round, not first") {
  BrokerGroups g = *parse_broker_groups("(http://b1 http://b2 http://b3)");
  BrokerChooser c(g, script({0}));
  c.reset_after("http://b1");      // b1 died under its agents
  CHECK(c.next() == "http://b2");  // the same credential goes to another broker at once
  CHECK(c.next() == "http://b3");
  CHECK(c.next() == "http://b1");  // only when every other one is down too
  CHECK(c.next() == std::nullopt);
  c.reset();  // a plain round forgets it
  CHECK(c.next() == "http://b1");
}

TEST_CASE("11: the retry delay is a random 7 to 10 s, every value reachable") {
  CHECK(retry_delay_ms(script({0})) == 7000);
  CHECK(retry_delay_ms(script({3000})) == 10000);
  CHECK(retry_delay_ms(script({3001})) == 7000);
  CHECK(retry_delay_ms(script({1234567})) == 7000 + 1234567 % 3001);
}

TEST_CASE("11: broker groups parse as a VDA's ListOfDDCs") {
  CHECK(parse_broker_groups("(a b)(c)") == BrokerGroups{{"a", "b"}, {"c"}});
  CHECK(parse_broker_groups("a b") == BrokerGroups{{"a", "b"}});
  CHECK(parse_broker_groups("( a  b )\n( c )") == BrokerGroups{{"a", "b"}, {"c"}});
  for (const char* bad : {"", "(a", "a)", "(a (b))", "()", "(a) b", "a (b)"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_broker_groups(bad));
  }
  CHECK(format_broker_groups({{"a", "b"}, {"c"}}) == "(a b)(c)");
}

TEST_CASE("11: configuration: the config file's keys, overridden by flags; bad values are named") {
  auto f = parse_config_file(
      "# an agent on app-server-7\n"
      "brokers = (http://b1:8080 http://b2:8080)(http://b3:8080)\n"
      "enrollment-token = \"atr_x\"\n"
      "state-dir = /var/lib/atrium-agent\n"
      "apps-dir = /opt/a\n"
      "apps-dir = /opt/b\n");
  REQUIRE(std::holds_alternative<std::map<std::string, std::string>>(f));
  auto file = std::get<0>(f);
  auto c = make_config(file, {{"state-dir", "/tmp/x"}, {"once", "true"}});
  REQUIRE(std::holds_alternative<Config>(c));
  const Config& cfg = std::get<Config>(c);
  CHECK(cfg.brokers.size() == 2);
  CHECK(cfg.enrollment_token == "atr_x");
  CHECK(cfg.state_dir == "/tmp/x");
  CHECK(cfg.apps_dirs == std::vector<std::string>{"/opt/a", "/opt/b"});
  CHECK(cfg.once);
  CHECK(std::get<ParseError>(parse_config_file("nonsense\n")).message.find("line 1") !=
        std::string::npos);
  CHECK(std::get<ParseError>(parse_config_file("colour = red\n")).message.find("colour") !=
        std::string::npos);
  CHECK(std::holds_alternative<ParseError>(make_config({}, {})));  // --brokers is required
  CHECK(std::holds_alternative<ParseError>(make_config({}, {{"brokers", "(ftp://x)"}})));
  CHECK(std::holds_alternative<ParseError>(make_config({}, {{"brokers", "(http://x"}})));
  CHECK(std::holds_alternative<ParseError>(
      make_config({}, {{"brokers", "http://x"}, {"request-timeout-s", "0"}})));
  CHECK(std::holds_alternative<ParseError>(
      make_config({}, {{"brokers", "http://x"}, {"no-such", ""}})));
}

TEST_CASE(
    "11: desktop entries: NoDisplay, Hidden, TryExec, OnlyShowIn and NotShowIn are honoured") {
  auto exists = [](const std::string& p) { return p == "/usr/bin/real" || p == "/opt/bin/tool"; };
  auto parse = [&](const std::string& body, const std::string& desktop = "GNOME") {
    return parse_desktop_entry("[Desktop Entry]\nType=Application\n" + body, "/x/a.desktop",
                               desktop, "/opt/bin:/usr/bin", exists);
  };
  auto app =
      parse("Name=Editor\nName[de]=Bearbeiter\nExec=\"/usr/bin/my editor\" %F\nComment=Edits\n");
  REQUIRE(app);
  CHECK(app->name == "Editor");
  CHECK(app->executable_path == "/usr/bin/my editor");
  CHECK(app->description == "Edits");
  CHECK(app->desktop_file == "/x/a.desktop");
  CHECK_FALSE(parse("Name=A\nExec=a\nNoDisplay=true\n"));
  CHECK_FALSE(parse("Name=A\nExec=a\nHidden=true\n"));
  CHECK(parse("Name=A\nExec=a\nTryExec=/usr/bin/real\n"));
  CHECK(parse("Name=A\nExec=a\nTryExec=tool\n"));  // found in PATH
  CHECK_FALSE(parse("Name=A\nExec=a\nTryExec=/usr/bin/missing\n"));
  CHECK(parse("Name=A\nExec=a\nOnlyShowIn=KDE;GNOME;\n"));
  CHECK_FALSE(parse("Name=A\nExec=a\nOnlyShowIn=KDE;\n"));
  CHECK_FALSE(parse("Name=A\nExec=a\nOnlyShowIn=KDE;\n", ""));
  CHECK_FALSE(parse("Name=A\nExec=a\nNotShowIn=GNOME;\n"));
  CHECK(parse("Name=A\nExec=a\nNotShowIn=GNOME;\n", "XFCE"));
  CHECK(parse("Name=A\nExec=a\n", "ubuntu:GNOME"));
  CHECK_FALSE(parse("Name=A\n"));  // no Exec
  CHECK_FALSE(
      parse_desktop_entry("[Desktop Entry]\nType=Link\nName=A\nURL=x\n", "f", "", "", exists));
  CHECK_FALSE(
      parse_desktop_entry("[Other]\nType=Application\nName=A\nExec=a\n", "f", "", "", exists));
}

TEST_CASE("11: desktop-entry discovery on fixture dirs: XDG order, ids, the first dir wins") {
  testing::TempDir dir;
  auto home = dir.path() / "home/.local/share/applications";
  auto sys = dir.path() / "usr/share/applications";
  auto extra = dir.path() / "extra";
  write(home / "editor.desktop",
        "[Desktop Entry]\nType=Application\nName=My Editor\nExec=/bin/true\n");
  write(sys / "editor.desktop", "[Desktop Entry]\nType=Application\nName=Editor\nExec=/bin/true\n");
  write(sys / "hidden.desktop",
        "[Desktop Entry]\nType=Application\nName=H\nExec=/bin/true\nNoDisplay=true\n");
  write(sys / "kde/konsole.desktop",
        "[Desktop Entry]\nType=Application\nName=Konsole\nExec=/bin/true\n");
  write(sys / "notes.txt", "not a desktop entry");
  write(extra / "calc.desktop",
        "[Desktop Entry]\nType=Application\nName=Calc\nExec=/bin/true %u\n");
  // A user's hidden override hides the system's entry of the same id.
  write(home / "hidden-by-user.desktop",
        "[Desktop Entry]\nType=Application\nName=X\nExec=x\nHidden=true\n");
  write(sys / "hidden-by-user.desktop",
        "[Desktop Entry]\nType=Application\nName=Y\nExec=/bin/true\n");
  auto dirs = application_dirs({{"HOME", (dir.path() / "home").string()},
                                {"XDG_DATA_DIRS", (dir.path() / "usr/share").string()}},
                               {extra.string()});
  REQUIRE(dirs.size() == 3);
  CHECK(dirs[0] == home.string());
  auto apps = discover_applications(dirs, "", "/bin");
  std::vector<std::string> got;
  for (const auto& a : apps) got.push_back(a.id + "=" + a.name);
  CHECK(got == std::vector<std::string>{"calc.desktop=Calc", "editor.desktop=My Editor",
                                        "kde-konsole.desktop=Konsole"});
}

TEST_CASE("11: the shipped example configuration parses into a configuration") {
  std::ifstream in(std::string(ATRIUM_SOURCE_DIR) + "/agent/atrium-agent.conf.example");
  REQUIRE(in);
  std::stringstream text;
  text << in.rdbuf();
  auto f = parse_config_file(text.str());
  REQUIRE(std::holds_alternative<std::map<std::string, std::string>>(f));
  auto c = make_config(std::get<0>(f), {});
  REQUIRE(std::holds_alternative<Config>(c));
  CHECK(std::get<Config>(c).brokers.size() == 2);
  CHECK(std::get<Config>(c).state_dir == "/var/lib/atrium-agent");
}

TEST_CASE("11: load figures from /proc text") {
  auto a = parse_proc_stat("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n");
  auto b = parse_proc_stat("cpu  150 0 150 750 150 0 0 0 0 0\n");
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->total == 1000);
  CHECK(a->busy == 200);
  CHECK(cpu_load(*a, *b) == doctest::Approx(0.5));
  CHECK(cpu_load(*b, *a) == 0);
  CHECK_FALSE(parse_proc_stat("intr 1 2 3"));
  CHECK(*parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n") ==
        doctest::Approx(0.75));
  CHECK_FALSE(parse_meminfo("MemFree: 1 kB\n"));
}

TEST_CASE("11: the credential is kept 0600; the applied lists are read back") {
  testing::TempDir dir;
  std::string state = (dir.path() / "state").string();
  CHECK_FALSE(load_credential(state));
  std::string err;
  REQUIRE(save_credential(state, {"a1", "atr_secret", "server"}, &err));
  struct stat st {};
  REQUIRE(::stat((state + "/credential.json").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto c = load_credential(state);
  REQUIRE(c);
  CHECK(c->agent_id == "a1");
  CHECK(c->credential == "atr_secret");
  RemoteLists l;
  l.config_version = "v1";
  l.remote_apps = Json::array({Json{{"id", "x1"}, {"name", "Word"}}});
  l.remote_users = Json::array({Json{{"id", "u1"}, {"name", "alice"}}});
  REQUIRE(save_remote_lists(state, l, &err));
  auto back = load_remote_lists(state);
  REQUIRE(back);
  CHECK(back->app_ids() == std::set<std::string>{"x1"});
  CHECK(back->user_ids() == std::set<std::string>{"u1"});
}

// Durability of the real daemon: SIGKILL under concurrent writes loses no acknowledged write
// and leaves no gap; SIGTERM drains and exits 0; a full disk answers 503 and recovers; WAL
// damage in the middle stops the start, a torn tail does not; files are private. The kill
// loop (many rounds of this) is tests/api/kill_loop_test.cpp.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "support/child_daemon.h"
#include "support/test_support.h"

using atrium::testing::http;
using atrium::testing::TempDir;
using namespace atrium::testing::child;
namespace fs = std::filesystem;

TEST_CASE("kill -9 under concurrent writes loses no acknowledged write and leaves no gap") {
  TempDir dir;
  std::set<std::string> acked;
  std::mutex mu;
  for (int round = 0; round < 3; ++round) {
    Child c = spawn(dir.str());
    std::atomic<bool> stop{false};
    std::vector<std::thread> writers;
    for (int t = 0; t < 8; ++t) {
      writers.emplace_back([&, t] {
        for (int i = 0; !stop; ++i) {
          std::string name = "r" + std::to_string(round) + "-t" + std::to_string(t) + "-" + std::to_string(i);
          auto r = http(c.port, "POST", "/v1/users", "{\"name\":\"" + name + "\"}", auth(), 2000);
          if (r.status == 201) {
            std::lock_guard l(mu);
            acked.insert(name);
          } else if (r.status == 0) {
            break;  // the daemon is gone
          }
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    ::kill(c.pid, SIGKILL);
    stop = true;
    for (auto& w : writers) w.join();
    CHECK(wait_exit(c.pid) == -SIGKILL);
  }
  REQUIRE(acked.size() > 50);

  Child c = spawn(dir.str());
  auto events = all_events(c.port);
  std::set<std::string> present;
  for (size_t i = 0; i < events.size(); ++i) {
    CHECK(events[i]["position"].get<uint64_t>() == i + 1);  // gap-free from 1
    if (events[i]["type"] == "UserCreated") present.insert(events[i]["data"]["name"].get<std::string>());
  }
  size_t missing = 0;
  for (const auto& n : acked) missing += present.count(n) == 0;
  CHECK(missing == 0);
  MESSAGE("acknowledged writes: " << acked.size() << ", events after restart: " << events.size());

  // SIGTERM: drains and exits 0; the log then verifies.
  ::kill(c.pid, SIGTERM);
  CHECK(wait_exit(c.pid) == 0);
  std::string cmd = std::string(atriumd()) + " verify --data-dir=" + dir.str() + " > /dev/null";
  CHECK(atrium::testing::run_command(cmd) == 0);
}

TEST_CASE("SIGTERM under load: in-flight requests finish, the daemon exits 0") {
  TempDir dir;
  Child c = spawn(dir.str());
  std::atomic<int> ok{0}, failed_mid{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        auto r = http(c.port, "POST", "/v1/users",
                      "{\"name\":\"g" + std::to_string(t) + "-" + std::to_string(i) + "\"}", auth(), 5000);
        if (r.status == 201) ok++;
        else if (r.status == 0 || r.status == 503) break;
        else failed_mid++;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::kill(c.pid, SIGTERM);
  for (auto& t : ts) t.join();
  CHECK(wait_exit(c.pid) == 0);
  CHECK(failed_mid.load() == 0);
  Child again = spawn(dir.str());
  auto events = all_events(again.port);
  int users = 0;
  for (auto& e : events) users += e["type"] == "UserCreated" ? 1 : 0;
  CHECK(users >= ok.load() + 1);  // +1: the bootstrap admin
  ::kill(again.pid, SIGTERM);
  CHECK(wait_exit(again.pid) == 0);
}

TEST_CASE("configuration flags: pool and placement settings are accepted, bad values refused") {
  TempDir dir;
  // Accepted: the daemon starts and answers.
  Child c = spawn(dir.str() + "/ok", {"--client-timeout-s=30", "--launch-wait-s=20", "--ticket-ttl-s=60",
                                      "--spice-listen=127.0.0.1", "--placement-scope=prefer_cluster",
                                      "--placement-policy=round_robin", "--load-stale-s=45",
                                      "--load-weights=0.5,0.5,0", "--default-host=none"});
  CHECK(http(c.port, "GET", "/readyz").status == 200);
  ::kill(c.pid, SIGTERM);
  CHECK(wait_exit(c.pid) == 0);
  // Refused before anything starts: exit 2 with a message naming the flag.
  struct Row {
    std::string flag;
    std::string says;
  };
  for (const Row& row : std::vector<Row>{{"--client-timeout-s=1", "--client-timeout-s"},
                                         {"--launch-wait-s=soon", "--launch-wait-s"},
                                         {"--placement-scope=nearest", "--placement-scope"},
                                         {"--placement-policy=random", "--placement-policy"},
                                         {"--load-weights=1,2", "--load-weights"},
                                         {"--load-weights=0,0,0", "weights"},
                                         {"--accept-data-loss=maybe", "--accept-data-loss"}}) {
    CAPTURE(row.flag);
    std::string err = dir.str() + "/err.txt";
    std::string cmd = std::string(atriumd()) + " serve --data-dir=" + dir.str() + "/bad " + row.flag +
                      " 2> " + err;
    CHECK(atrium::testing::run_command(cmd) == 2);
    std::ifstream in(err);
    std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(said.find(row.says) != std::string::npos, said);
  }
}

TEST_CASE("10.4: host URI flags: --allow-test-hosts, --allow-tcp-hosts, --host-uri-params") {
  TempDir dir;
  auto add = [&](const Child& c, const std::string& uri) {
    nlohmann::json body{{"name", "h" + std::to_string(std::hash<std::string>()(uri))}, {"uri", uri}};
    return http(c.port, "POST", "/v1/hosts", body.dump(), auth()).status;
  };
  const std::string fixture = std::string("test://") + ATRIUM_SOURCE_DIR + "/tests/adapters/fixtures/host.xml";
  {
    Child c = spawn(dir.str() + "/default", {"--host-reconciler=off"});
    CHECK(add(c, fixture) == 400);
    CHECK(add(c, "qemu+tcp://kvm1/system") == 400);
    CHECK(add(c, "qemu+ssh://kvm1/system?keyfile=/k") == 400);
    CHECK(add(c, "qemu+ssh://kvm1/system") == 202);
    ::kill(c.pid, SIGTERM);
    CHECK(wait_exit(c.pid) == 0);
  }
  {
    Child c = spawn(dir.str() + "/on", {"--host-reconciler=off", "--allow-test-hosts=on",
                                        "--allow-tcp-hosts=on", "--host-uri-params=keyfile,pkipath"});
    CHECK(add(c, fixture) == 202);
    CHECK(add(c, "qemu+tcp://kvm1/system") == 202);
    CHECK(add(c, "qemu+ssh://kvm1/system?keyfile=/k") == 202);
    CHECK(add(c, "qemu+ssh://kvm1/system?command=/k") == 400);
    ::kill(c.pid, SIGTERM);
    CHECK(wait_exit(c.pid) == 0);
  }
  for (const char* flag : {"--allow-test-hosts=yes", "--allow-tcp-hosts=1", "--host-uri-params=Key-File",
                           "--host-uri-params=keyfile,,pkipath"}) {
    CAPTURE(flag);
    std::string name = std::string(flag).substr(0, std::string(flag).find('='));
    std::string err = dir.str() + "/err.txt";
    std::string cmd = std::string(ATRIUMD_PATH) + " serve --data-dir=" + dir.str() + "/bad " + flag +
                      " 2> " + err;
    CHECK(atrium::testing::run_command(cmd) == 2);
    std::ifstream in(err);
    std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(said.find(name) != std::string::npos, said);
  }
}

// ---- issue 10: full disk, WAL damage, file modes, the kill loop ---------------------------

TEST_CASE("10.5: a full disk answers 503 and the daemon recovers by itself, every round") {
  atrium::testing::TmpfsMount mnt("16m");
  if (!mnt.ok()) {
    MESSAGE("skipped: " << mnt.why());
    return;
  }
  const int rounds = env_int("ATRIUM_FULL_DISK_ROUNDS", 6);
  TempDir logs;
  const std::string data = mnt.str() + "/data";
  const std::string filler = mnt.str() + "/filler";
  const std::string err = logs.str() + "/stderr.txt";
  Child c = spawn_with(data, {kQuiet, err, true, -1});
  Writers w;
  w.start(c.port, "full", 6, false);
  int rounds_done = 0;
  for (int round = 0; round < rounds; ++round) {
    CAPTURE(round);
    const uint64_t created = w.created, refused = w.unavailable;
    REQUIRE_MESSAGE(eventually([&] { return w.created > created + 10; }, std::chrono::seconds(20)),
                    "no 201 before filling; stderr: " << slurp(err));
    atrium::testing::fill_until_full(filler);
    REQUIRE_MESSAGE(eventually([&] { return w.unavailable > refused + 5; }, std::chrono::seconds(20)),
                    "no 503 on a full disk; stderr: " << slurp(err));
    REQUIRE_MESSAGE(alive(c.pid), "atriumd died on a full disk: " << slurp(err));
    auto ready = http(c.port, "GET", "/readyz");
    CHECK(ready.status == 503);
    CHECK(ready.json().value("reason", "") == "storage_unavailable");
    CHECK(http(c.port, "GET", "/healthz").status == 200);
    fs::remove(filler);
    const uint64_t after_free = w.created;
    REQUIRE_MESSAGE(eventually([&] { return w.created > after_free + 5; }, std::chrono::seconds(20)),
                    "no 201 after space returned; stderr: " << slurp(err));
    REQUIRE(alive(c.pid));
    CHECK(eventually([&] { return http(c.port, "GET", "/readyz").status == 200; },
                     std::chrono::seconds(5)));
    ++rounds_done;
  }
  w.join();
  CHECK(w.other == 0);
  if (w.other != 0) MESSAGE("last other answer: " << w.last_other);
  MESSAGE(rounds_done << " rounds on a 16 MiB tmpfs: " << w.created.load() << " users created, "
                      << w.unavailable.load() << " answers 503 while full, " << w.no_answer.load()
                      << " unanswered within 5 s, daemon alive throughout");
  ::kill(c.pid, SIGTERM);
  CHECK(wait_exit(c.pid) == 0);

  Child again = spawn_with(data, {kQuiet, err, true, -1});
  std::set<std::string> present;
  auto events = events_after(again.port, 0);
  for (size_t i = 0; i < events.size(); ++i) {
    CHECK(events[i]["position"].get<uint64_t>() == i + 1);
    if (events[i]["type"] == "UserCreated") present.insert(events[i]["data"]["name"].get<std::string>());
  }
  size_t missing = 0;
  for (const auto& n : w.acked) missing += present.count(n) == 0;
  CHECK(missing == 0);
  ::kill(again.pid, SIGTERM);
  CHECK(wait_exit(again.pid) == 0);
  auto v = run("verify --data-dir=" + data, logs.str() + "/verify.txt");
  CHECK_MESSAGE(v.rc == 0, v.out);
}

TEST_CASE("10.6: a flipped byte mid-WAL stops the start, naming the loss; verify changes nothing") {
  TempDir dir, logs;
  constexpr int kUsers = 300;
  {
    Child c = spawn(dir.str(), kQuiet);
    for (int i = 0; i < kUsers; ++i) {
      auto r = http(c.port, "POST", "/v1/users", "{\"name\":\"wal-" + std::to_string(i) + "\"}", auth());
      REQUIRE(r.status == 201);
    }
    // verify beside the running daemon: read-only (a RocksDB secondary), exit 0.
    auto beside = run("verify --data-dir=" + dir.str(), logs.str() + "/beside.txt");
    CHECK_MESSAGE(beside.rc == 0, beside.out);
    CHECK(beside.out.find("a daemon runs on this store") != std::string::npos);
    ::kill(c.pid, SIGKILL);  // everything stays in the WAL
    CHECK(wait_exit(c.pid) == -SIGKILL);
  }
  fs::path wal;
  for (const auto& e : fs::directory_iterator(dir.str() + "/events")) {
    if (e.path().extension() == ".log" && (wal.empty() || fs::file_size(e.path()) > fs::file_size(wal))) {
      wal = e.path();
    }
  }
  REQUIRE_FALSE(wal.empty());
  const auto size = fs::file_size(wal);
  REQUIRE(size > 50000);
  {
    std::fstream f(wal, std::ios::in | std::ios::out | std::ios::binary);
    char ch = 0;
    f.seekg(static_cast<std::streamoff>(size / 2));
    f.read(&ch, 1);
    ch = static_cast<char>(ch ^ 0x01);
    f.seekp(static_cast<std::streamoff>(size / 2));
    f.write(&ch, 1);
    REQUIRE(f.good());
  }
  const auto before = atrium::testing::file_contents(dir.str());

  // verify: exit 1, the damage named, not a byte changed.
  auto v = run("verify --data-dir=" + dir.str(), logs.str() + "/verify.txt");
  CAPTURE(v.out);
  CHECK(v.rc == 1);
  CHECK(v.out.find("wal: DAMAGED") != std::string::npos);
  CHECK(v.out.find(wal.filename().string()) != std::string::npos);
  CHECK(v.out.find("byte offset") != std::string::npos);
  CHECK(atrium::testing::file_contents(dir.str()) == before);

  // serve: refuses to start (exit 1), saying what would be lost and how to accept it.
  // (Under `timeout`: a daemon that does start, as older ones did, must not hang the test.)
  auto refused = run("serve --listen=127.0.0.1:" + std::to_string(free_port()) + " --data-dir=" + dir.str() +
                         " --default-host=none --host-reconciler=off",
                     logs.str() + "/refused.txt");
  CAPTURE(refused.out);
  CHECK(refused.rc == 1);
  CHECK(refused.out.find("damaged in the middle") != std::string::npos);
  CHECK(refused.out.find(wal.filename().string()) != std::string::npos);
  CHECK(refused.out.find("acknowledged events") != std::string::npos);
  CHECK(refused.out.find("--accept-data-loss") != std::string::npos);
  CHECK(atrium::testing::file_contents(dir.str()) == before);

  // --accept-data-loss: starts on the intact prefix, says so loudly, and verify remembers.
  const std::string err = logs.str() + "/accepted.txt";
  std::vector<std::string> extra = kQuiet;
  extra.push_back("--accept-data-loss");
  Child c = spawn_with(dir.str(), {extra, err, true, -1});
  CHECK(slurp(err).find("DATA LOSS ACCEPTED") != std::string::npos);
  auto events = events_after(c.port, 0);
  int users = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    CHECK(events[i]["position"].get<uint64_t>() == i + 1);
    users += events[i]["type"] == "UserCreated" ? 1 : 0;
  }
  CHECK(users > 1);
  CHECK(users < kUsers);
  ::kill(c.pid, SIGTERM);
  CHECK(wait_exit(c.pid) == 0);
  auto after = run("verify --data-dir=" + dir.str(), logs.str() + "/verify2.txt");
  CHECK_MESSAGE(after.rc == 0, after.out);
  CHECK(after.out.find("data loss accepted earlier") != std::string::npos);
}

TEST_CASE("10.6: a torn WAL tail (the last record cut short) still starts, with a warning") {
  TempDir dir, logs;
  {
    Child c = spawn(dir.str(), kQuiet);
    for (int i = 0; i < 50; ++i) {
      REQUIRE(http(c.port, "POST", "/v1/users", "{\"name\":\"torn-" + std::to_string(i) + "\"}", auth()).status == 201);
    }
    ::kill(c.pid, SIGKILL);
    wait_exit(c.pid);
  }
  fs::path wal;
  for (const auto& e : fs::directory_iterator(dir.str() + "/events")) {
    if (e.path().extension() == ".log" && (wal.empty() || fs::file_size(e.path()) > fs::file_size(wal))) {
      wal = e.path();
    }
  }
  REQUIRE_FALSE(wal.empty());
  fs::resize_file(wal, fs::file_size(wal) - 7);
  auto v = run("verify --data-dir=" + dir.str(), logs.str() + "/verify.txt");
  CHECK_MESSAGE(v.rc == 0, v.out);
  CHECK(v.out.find("wal: WARNING") != std::string::npos);
  const std::string err = logs.str() + "/stderr.txt";
  Child c = spawn_with(dir.str(), {kQuiet, err, true, -1});
  CHECK(slurp(err).find("torn tail") != std::string::npos);
  auto events = events_after(c.port, 0);
  int users = 0;
  for (auto& e : events) users += e["type"] == "UserCreated" ? 1 : 0;
  CHECK(users == 50);  // the admin, and 49 of the 50: only the cut record is gone
  ::kill(c.pid, SIGTERM);
  CHECK(wait_exit(c.pid) == 0);
}

TEST_CASE("10.7: every file under the data dir is 0600 and every directory 0700, umask 022") {
  TempDir root;
  const std::string data = root.str() + "/data";
  for (int start = 0; start < 2; ++start) {
    Child c = spawn_with(data, {{"--default-host=none"}, "", true, 022});
    for (int i = 0; i < 20; ++i) {
      REQUIRE(http(c.port, "POST", "/v1/users",
                   "{\"name\":\"perm-" + std::to_string(start) + "-" + std::to_string(i) + "\"}", auth())
                  .status == 201);
    }
    ::kill(c.pid, SIGTERM);  // writes the snapshot checkpoint
    CHECK(wait_exit(c.pid) == 0);
  }
  size_t files = 0;
  auto check = [&](const fs::path& p) {
    struct stat st {};
    REQUIRE(::lstat(p.c_str(), &st) == 0);
    CAPTURE(p.string());
    if (S_ISDIR(st.st_mode)) {
      CHECK((st.st_mode & 07777) == 0700);
    } else {
      CHECK((st.st_mode & 07777) == 0600);
      ++files;
    }
  };
  check(data);
  for (const auto& e : fs::recursive_directory_iterator(data)) check(e.path());
  CHECK(files >= 6);
}

TEST_CASE("10.6: /readyz turns 503 once a read hits corrupted data") {
  TempDir dir;
  {
    atrium::testing::TestBroker b(dir.str());
    for (int i = 0; i < 400; ++i) {
      REQUIRE(b.call("POST", "/v1/users", {{"name", "c" + std::to_string(i)}}).status == 201);
    }
    b.restart();  // the restart's WAL recovery flushes everything into table files
  }  // stopping writes a snapshot: the next start does not need to read the old events
  fs::path sst;
  for (const auto& e : fs::directory_iterator(dir.str() + "/events")) {
    if (e.path().extension() == ".sst" && (sst.empty() || fs::file_size(e.path()) > fs::file_size(sst))) {
      sst = e.path();
    }
  }
  REQUIRE_FALSE(sst.empty());
  {
    const auto size = fs::file_size(sst);
    std::fstream f(sst, std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes(64, '\0');
    f.seekg(static_cast<std::streamoff>(size / 3));
    f.read(bytes.data(), 64);
    for (auto& ch : bytes) ch = static_cast<char>(~ch);
    f.seekp(static_cast<std::streamoff>(size / 3));
    f.write(bytes.data(), 64);
    REQUIRE(f.good());
  }
  atrium::testing::TestBroker b(dir.str());
  REQUIRE(b.call("GET", "/readyz").status == 200);
  auto read = b.call("GET", "/v1/events?limit=1000");
  for (int page = 0; page < 10 && read.status == 200 && !read.json()["next_cursor"].is_null(); ++page) {
    read = b.call("GET", "/v1/events?limit=1000&cursor=" + read.json()["next_cursor"].get<std::string>());
  }
  CHECK(read.status >= 500);
  auto ready = b.call("GET", "/readyz");
  CHECK(ready.status == 503);
  CHECK(ready.json().value("reason", "") == "storage_corrupt");
  CHECK(ready.body.find(dir.str()) == std::string::npos);  // no paths on a public route
}

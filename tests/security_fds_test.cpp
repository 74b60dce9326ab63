// Security: no fd of gonso reaches a spawned program, and every fd gonso
// holds is close-on-exec, while other threads make and drop fds.
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <gonso/child.hpp>
#include <gonso/executor.hpp>
#include <gonso/netns.hpp>
#include <gonso/persist.hpp>
#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>
#include <gonso/workers.hpp>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

namespace {

/// What an fd of this process names, as /proc/self/fd shows it.
std::string link_of_fd(int fd) { return std::filesystem::read_symlink(fmt::format("/proc/self/fd/{}", fd)).string(); }

/// How many fds of this process inheritable_fds() has looked at.
std::atomic<std::size_t> fds_examined{0};

/// Open fds of this process that are not close-on-exec, but for `allowed`.
std::vector<std::string> inheritable_fds(const std::set<int>& allowed) {
  std::vector<std::string> out;
  for (const auto& [fd, target] : test::fds_of("/proc/self")) {
    if (allowed.count(fd) != 0) continue;
    ++fds_examined;
    const int flags = ::fcntl(fd, F_GETFD);
    if (flags >= 0 && (flags & FD_CLOEXEC) == 0) out.push_back(fmt::format("fd {} -> {}", fd, target));
  }
  return out;
}

/// The fds open now that are not close-on-exec: the test's own (stdio, what
/// ctest handed down), never gonso's.
std::set<int> inheritable_now() {
  std::set<int> out;
  for (const auto& entry : test::fds_of("/proc/self")) {
    const int flags = ::fcntl(entry.first, F_GETFD);
    if (flags >= 0 && (flags & FD_CLOEXEC) == 0) out.insert(entry.first);
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// No fd of gonso's reaches a spawned program, and every one is close-on-exec.

namespace {

/// Spawns `cat` into `set` with stdin and stdout pipes and stderr inherited,
/// a given environment and working directory; once a line has gone through
/// it (so the program runs: its exec is over), checks from outside that it
/// holds exactly fds 0, 1 and 2, each where it was asked, and that its
/// environment and cwd are those asked for. Returns how many fds of the
/// program were checked.
std::size_t check_spawned_fds(const gonso::Set& set, const std::filesystem::path& cwd) {
  gonso::SpawnOptions options;
  options.in = gonso::Stdio::pipe;
  options.out = gonso::Stdio::pipe;
  options.env = std::vector<std::string>{"GONSO_SECURITY=1", "PATH=/usr/bin:/bin"};
  options.cwd = cwd;
  gonso::Child child = gonso::spawn(set, {"cat"}, options);
  // spawn() returns when the exec closed its report pipe, and the kernel may
  // still be closing the other close-on-exec fds then (before the program
  // runs any code): look once the program has answered.
  REQUIRE(::write(child.stdin_fd(), "x\n", 2) == 2);
  std::string echo;
  for (char c = 0; echo.size() < 2 && ::read(child.stdout_fd(), &c, 1) == 1;) echo += c;
  REQUIRE(echo == "x\n");
  const std::string proc = fmt::format("/proc/{}", child.pid());
  const std::map<int, std::string> fds = test::fds_of(proc);
  INFO("spawned into " << fmt::format("{}", set) << ", fds " << test::describe(fds));
  CHECK(fds.size() == 3);
  CHECK(fds.count(0) == 1);
  CHECK(fds.count(1) == 1);
  CHECK(fds.count(2) == 1);
  if (fds.count(0) != 0) CHECK(fds.at(0) == link_of_fd(child.stdin_fd()));  // the same pipe
  if (fds.count(1) != 0) CHECK(fds.at(1) == link_of_fd(child.stdout_fd()));
  if (fds.count(2) != 0) CHECK(fds.at(2) == link_of_fd(STDERR_FILENO));
  // And the program is in the Set's namespaces, as the kernel shows them.
  for (gonso::Kind kind : set.kinds()) {
    INFO("kind " << gonso::name(kind));
    CHECK(test::identity_at(kind, proc + "/ns/" + std::string(gonso::name(kind))) == set.identity(kind));
  }
  const std::string env = test::file_text(proc + "/environ");
  CHECK(env == std::string("GONSO_SECURITY=1\0PATH=/usr/bin:/bin\0", 36));
  struct stat there {
  }, here{};
  REQUIRE(::stat((proc + "/cwd").c_str(), &there) == 0);
  REQUIRE(::stat(cwd.c_str(), &here) == 0);
  CHECK(there.st_dev == here.st_dev);
  CHECK(there.st_ino == here.st_ino);
  child.kill();
  CHECK(child.wait().signal() == SIGKILL);
  return fds.size();
}

}  // namespace

TEST_CASE("security: every fd gonso holds is close-on-exec, and none reaches a spawned program",
          "[security][privileged][process]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    gonso::retire_idle_workers();
    fds_examined = 0;
    const std::set<int> own = inheritable_now();  // the test's: stdio and what ctest handed down
    std::size_t checked_fds = 0;
    std::size_t objects = 0;
    // Each object made, then the fds it brought checked.
    const auto made = [&](const char* what) {
      INFO("after making " << what);
      CHECK(inheritable_fds(own).empty());
      ++objects;
      checked_fds = std::max(checked_fds, test::count_fds());
    };
    const test::TempDir cwd;
    const test::PrivateTmpfs persisted;
    std::optional<gonso::Set> all;  // fresh namespaces of every kind a thread may be in
    all.emplace(gonso::Set::current().unshare(gonso::Kind::net | gonso::Kind::uts | gonso::Kind::ipc |
                                              gonso::Kind::cgroup | gonso::Kind::mnt));
    made("a Set of cgroup, ipc, mnt, net, uts");
    const gonso::Set user = gonso::Set::current().unshare(gonso::Kind::user | gonso::Kind::net);
    made("a Set of a user namespace");
    const gonso::Set pid = gonso::Set::current().unshare(gonso::Kind::pid);
    made("a Set of a pid namespace, with its init");
    const gonso::Set time = gonso::Set::current().unshare(gonso::Kind::time);
    made("a Set of a time namespace");
    gonso::Kinds kinds;
    for (gonso::Kind kind : gonso::all_kinds) kinds |= kind;
    const gonso::Set every = gonso::Set::current(kinds).unshare(kinds);
    made("a Set of every kind");
    all->run(true, [] {});
    (void)every.run_in_process([] { return 0; });
    made("an idle worker and its anchor");
    gonso::Executor executor(all->dup(gonso::Kind::net | gonso::Kind::uts));
    executor.run([] {});
    made("an Executor");
    gonso::Pool pool(gonso::Set::current(gonso::Kind::net), gonso::Kind::net, {.size = 2});
    REQUIRE(pool.wait_ready(std::chrono::seconds(20)));
    made("a Pool");
    gonso::persist(all->dup(gonso::Kind::net | gonso::Kind::uts), persisted.path() / "box");
    made("persisted namespaces");
    const gonso::Set reopened = gonso::Set::from_dir(persisted.path() / "box");
    made("a Set opened from persisted files");

    // Other threads make and drop fds all the while: a spawn must not catch
    // one in flight.
    std::atomic<int> rounds{0};
    std::mutex errors_lock;
    std::vector<std::string> errors;
    // Stopped and joined however the test leaves this scope (a REQUIRE throws).
    std::vector<std::jthread> busy;
    busy.reserve(2);
    for (int i = 0; i < 2; ++i) {
      busy.emplace_back([&, i](const std::stop_token& stop) {
        try {
          while (!stop.stop_requested()) {
            if (i == 0) {
              reopened.run(true, [] {});
              (void)gonso::Set::current(gonso::Kind::uts).unshare(gonso::Kind::uts);
            } else {
              gonso::SpawnOptions quiet;
              quiet.out = gonso::Stdio::pipe;
              (void)gonso::spawn(reopened, {"/bin/true"}, quiet).wait();
            }
            ++rounds;
          }
        } catch (const std::exception& e) {
          const std::lock_guard lock(errors_lock);
          errors.emplace_back(e.what());
        }
      });
    }
    std::size_t program_fds = 0;
    std::size_t spawns = 0;
    std::size_t scans = 0;
    for (const gonso::Set* set :
         std::initializer_list<const gonso::Set*>{&*all, &user, &pid, &time, &every, &reopened}) {
      for (int i = 0; i < 3; ++i) {
        // Every kind but mnt leaves the same tree: the program starts where asked.
        const bool own_tree = set->kinds().contains(gonso::Kind::mnt);
        program_fds += check_spawned_fds(*set, own_tree ? std::filesystem::path("/") : cwd.path());
        ++spawns;
        CHECK(inheritable_fds(own).empty());
        ++scans;
      }
    }
    busy.clear();
    CHECK(errors.empty());
    CHECK(rounds.load() > 0);
    made("Sets, workers and children of the busy threads");
    // The init of the pid namespace holds its lifeline alone (pid_init.hpp).
    const pid_t init = test::init_of(pid.identity(gonso::Kind::pid));
    REQUIRE(init > 0);
    const std::map<int, std::string> init_fds = test::fds_of(fmt::format("/proc/{}", init));
    INFO("the init's fds: " << test::describe(init_fds));
    CHECK(init_fds.size() == 1);
    CHECK(init_fds.count(3) == 1);
    if (init_fds.count(3) != 0) CHECK(init_fds.at(3).rfind("pipe:[", 0) == 0);
    all.reset();
    gonso::unpersist_dir(persisted.path() / "box");
    WARN("checked " << objects << " objects, " << fds_examined.load() << " fds of this process in all (up to "
                    << checked_fds << " open at once), " << spawns << " spawned programs (" << program_fds
                    << " of their fds), " << scans << " scans during " << rounds.load() << " rounds of busy threads");
  });
}

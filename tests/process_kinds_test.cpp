// The process path of unshare: new user, pid and time namespaces (id maps,
// owners, the init, clock offsets), the other kinds carried over, and what it
// refuses. Identities are read inside with stat(2) of /proc/self/ns/* (a
// process's own links), never through gonso.
#include <grp.h>
#include <linux/nsfs.h>
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>

using gonso::Kind;
using gonso::Set;

TEST_CASE("a new user namespace maps the caller to root, or as asked", "[privileged][process][user]") {
  test::require_privilege();
  SECTION("map me to root") {
    const Set u = Set::current().unshare(Kind::user | Kind::net);
    const auto seen = u.run_in_process(
        [] { return fmt::format("{} {}|{}", ::getuid(), ::getgid(), test::file_text("/proc/self/uid_map")); });
    std::istringstream fields(seen.substr(seen.find('|') + 1));
    std::uint64_t inside = 9, outside = 9, count = 9;
    fields >> inside >> outside >> count;
    CHECK(seen.substr(0, seen.find('|')) == "0 0");
    CHECK(inside == 0);
    CHECK(outside == ::geteuid());
    CHECK(count == 1);
  }
  SECTION("explicit ranges") {
    gonso::UnshareOptions options;
    options.uid_map = {{0, 100000, 1000}, {1000, 0, 1}};
    options.gid_map = {{0, 200000, 10}};
    const Set u = Set::current().unshare(Kind::user, options);
    const std::string maps = u.run_in_process(
        [] { return test::file_text("/proc/self/uid_map") + "|" + test::file_text("/proc/self/gid_map"); });
    std::istringstream uid(maps.substr(0, maps.find('|')));
    std::istringstream gid(maps.substr(maps.find('|') + 1));
    std::vector<std::uint64_t> u_fields{std::istream_iterator<std::uint64_t>(uid), {}};
    std::vector<std::uint64_t> g_fields{std::istream_iterator<std::uint64_t>(gid), {}};
    CHECK(u_fields == std::vector<std::uint64_t>{0, 100000, 1000, 1000, 0, 1});
    CHECK(g_fields == std::vector<std::uint64_t>{0, 200000, 10});
  }
}

TEST_CASE("namespaces unshared with a user namespace are owned by it", "[privileged][process][user]") {
  test::require_privilege();
  const Set u = Set::current().unshare(Kind::user | Kind::net | Kind::uts | Kind::ipc | Kind::mnt);
  for (Kind kind : {Kind::net, Kind::uts, Kind::ipc, Kind::mnt}) {
    INFO(gonso::name(kind));
    gonso::detail::unique_fd owner(::ioctl(u.fd(kind), NS_GET_USERNS));
    REQUIRE(owner);
    struct stat st {};
    REQUIRE(::fstat(owner.get(), &st) == 0);
    CHECK(gonso::Identity{Kind::user, st.st_dev, st.st_ino} == u.identity(Kind::user));
  }
}

TEST_CASE("a new pid namespace has an init that reaps orphans and dies with the last Set",
          "[privileged][process][pid]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::children);
  gonso::Identity pidns{};
  {
    Set p = Set::current().unshare(Kind::pid);
    pidns = p.identity(Kind::pid);
    // Exactly the init lives there while nothing runs.
    REQUIRE(test::eventually([&] { return test::processes_in(pidns).size() == 1; }, std::chrono::seconds(2)));

    // The callable's child forks a grandchild and exits at once: the
    // grandchild is orphaned to the init, which must reap it.
    const pid_t orphan_parent_status = p.run_in_process([] {
      const pid_t child = ::fork();
      if (child == 0) {
        if (::fork() == 0) {
          ::usleep(50'000);
          ::_exit(0);
        }
        ::_exit(0);
      }
      int status = 0;
      ::waitpid(child, &status, 0);
      return status;
    });
    CHECK(orphan_parent_status == 0);
    CHECK(test::eventually(
        [&] {
          const std::vector<pid_t> pids = test::processes_in(pidns);
          return pids.size() == 1 && test::status_field(pids[0], "State").rfind('Z', 0) != 0;
        },
        std::chrono::seconds(3)));

    // A copy keeps the namespace (and its init) alive after the original goes.
    const Set copy = p;
    { const Set gone = std::move(p); }  // the original's handle is closed here
    CHECK(copy.run_in_process([] { return ::getpid(); }) > 1);
  }
  // The last Set went: nothing of that namespace is left, zombies included.
  CHECK(test::eventually([&] { return test::processes_in(pidns).empty(); }, std::chrono::seconds(3)));
  base.check();
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("a new time namespace runs its clocks ahead by the offsets given", "[privileged][process][time]") {
  test::require_privilege();
  gonso::UnshareOptions options;
  options.monotonic_offset = std::chrono::hours(24);
  options.boottime_offset = std::chrono::hours(48) + std::chrono::milliseconds(500);
  const Set t = Set::current().unshare(Kind::time, options);
  const auto seconds = [](clockid_t clock) {
    timespec ts{};
    ::clock_gettime(clock, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  };
  struct Clocks {
    double monotonic;
    double boottime;
  };
  const double mono_before = seconds(CLOCK_MONOTONIC);
  const double boot_before = seconds(CLOCK_BOOTTIME);
  const Clocks inside = t.run_in_process([&] { return Clocks{seconds(CLOCK_MONOTONIC), seconds(CLOCK_BOOTTIME)}; });
  const double mono_after = seconds(CLOCK_MONOTONIC);
  const double boot_after = seconds(CLOCK_BOOTTIME);
  // Inside was read between the two outside readings.
  CHECK(inside.monotonic - 86400.0 >= mono_before);
  CHECK(inside.monotonic - 86400.0 <= mono_after);
  CHECK(inside.boottime - 172800.5 >= boot_before - 0.001);
  CHECK(inside.boottime - 172800.5 <= boot_after + 0.001);
}

TEST_CASE("time offsets are written also from a mount namespace whose /proc shows another pid namespace",
          "[privileged][process][time]") {
  test::require_privilege();
  // A mount namespace with a /proc of a pid namespace the caller is not in:
  // there, /proc/self of a process outside that pid namespace names nobody.
  const Set box = Set::current().unshare(Kind::mnt | Kind::pid);
  box.run_in_process([] {
    if (::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
      throw std::system_error(errno, std::generic_category(), "mount proc");
  });
  const Set mounts_only = box.dup(Kind::mnt);
  CHECK(mounts_only.run_in_process([] {
    std::error_code ec;
    (void)std::filesystem::read_symlink("/proc/self", ec);
    return static_cast<bool>(ec);
  }));  // the condition under test holds
  gonso::UnshareOptions options;
  options.monotonic_offset = std::chrono::hours(24);
  const Set timed = mounts_only.unshare(Kind::time, options);
  const auto monotonic = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
  };
  const auto before = monotonic();
  const auto inside = timed.run_in_process(monotonic);
  CHECK(inside - 86400 >= before);
  CHECK(inside - 86400 <= monotonic() + 1);
}

TEST_CASE("the process path carries the other kinds over and nests in the source Set", "[privileged][process]") {
  test::require_privilege();
  const Set source = Set::current().unshare(Kind::pid | Kind::uts);
  // Made from a Set whose pid namespace is not the caller's: the creator is
  // forked into it first. Many rounds, since the order of its messages once raced.
  for (int i = 0; i < 30; ++i) {
    const Set made = source.unshare(Kind::user | Kind::net);
    CHECK(made.identity(Kind::uts) == source.identity(Kind::uts));
    CHECK(made.identity(Kind::pid) == source.identity(Kind::pid));
    CHECK(made.identity(Kind::net) != source.identity(Kind::net));
    const Set timed = source.unshare(Kind::time | Kind::ipc);
    CHECK(timed.identity(Kind::time) != source.identity(Kind::time));
    CHECK(timed.identity(Kind::ipc) != source.identity(Kind::ipc));
    CHECK(timed.identity(Kind::uts) == source.identity(Kind::uts));
  }
  // A pid namespace made from it nests inside it.
  const Set nested = source.unshare(Kind::pid);
  gonso::detail::unique_fd parent(::ioctl(nested.fd(Kind::pid), NS_GET_PARENT));
  REQUIRE(parent);
  struct stat st {};
  REQUIRE(::fstat(parent.get(), &st) == 0);
  CHECK(gonso::Identity{Kind::pid, st.st_dev, st.st_ino} == source.identity(Kind::pid));
  CHECK(nested.run_in_process([] { return ::getpid(); }) == 2);
}

TEST_CASE("joining a user namespace makes the process its root where 0 is mapped", "[privileged][process][user]") {
  test::require_privilege();
  gonso::UnshareOptions ids;
  ids.uid_map = {{0, 100000, 65536}};
  ids.gid_map = {{0, 100000, 65536}};
  const Set u = Set::current().unshare(Kind::user | Kind::uts, ids);
  const auto seen = u.run_in_process([] {
    const std::string name = "mapped";
    const bool named = ::sethostname(name.data(), name.size()) == 0;
    return fmt::format("{} {} {} {}", ::getuid(), ::geteuid(), ::getgid(), named);
  });
  CHECK(seen == "0 0 0 true");
}

TEST_CASE("unshare refuses what it cannot do right, clearly", "[privileged][process]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::children);
  SECTION("from a thread whose children go to another pid namespace") {
    const Set pidns = Set::current().unshare(Kind::pid);
    const std::string error = pidns.run(true, [] {
      try {
        (void)Set::current().unshare(Kind::user);
        return std::string("none");
      } catch (const std::system_error& e) {
        return std::string(e.what());
      }
    });
    CHECK_THAT(error, Catch::Contains("another pid namespace"));
  }
  base.check();
  CHECK(base.children().empty());  // none before, so none left
}

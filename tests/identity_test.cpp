// Identity and introspection of Sets: equality and hashing of the same
// namespaces, NS_GET_ID telling apart namespaces on a reused inode number,
// Sets from pidfds, and owner(), parent(), owner_uid(). Namespaces are checked
// against stat(2) of the files, NS_GET_ID asked here with ioctl(2) and /proc,
// never against gonso alone.
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "support/attackers.hpp"
#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/ns_files.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/persist.hpp>
#include <gonso/spawn.hpp>

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;
using test::describe;
using test::Raw;
using test::raw_of_fd;
using test::same_file;
using test::stat_of;

TEST_CASE("Sets of the same namespaces compare and hash equal and key one map entry; of others, not",
          "[persist][identity][privileged]") {
  test::require_privilege();
  const Kinds kinds = Kind::net | Kind::uts | Kind::ipc;
  const Set a = Set::current(kinds);
  const Set b = Set::from_dir("/proc/thread-self/ns", kinds);
  CHECK(a == b);
  // Equality is of namespaces, never of fds: from_fd keeps a duplicate of
  // its own (opened twice, as a and b are, gonso shares one fd instead).
  const Set own_fd = Set::from_fd(Kind::net, a.fd(Kind::net));
  CHECK(own_fd.fd(Kind::net) != a.fd(Kind::net));
  CHECK(own_fd == a.dup(Kind::net));
  CHECK(std::hash<Set>{}(a) == std::hash<Set>{}(b));
  for (Kind kind : kinds) {
    INFO(gonso::name(kind));
    const Raw raw = raw_of_fd(a.fd(kind));
    CHECK(a.identity(kind).id != 0);  // this kernel has NS_GET_ID
    CHECK(a.identity(kind).id == raw.id);
    CHECK(same_file(stat_of("/proc/thread-self/ns/" + std::string(gonso::name(kind))), raw));
    CHECK(std::hash<gonso::Identity>{}(a.identity(kind)) == std::hash<gonso::Identity>{}(b.identity(kind)));
  }

  std::unordered_map<Set, int> map;
  map.emplace(a, 1);
  REQUIRE(map.count(b) == 1);
  CHECK(map.at(b) == 1);

  const Set c = a.unshare(Kind::net);  // another network namespace, the same uts and ipc
  CHECK_FALSE(c == a);
  CHECK(c.identity(Kind::uts) == a.identity(Kind::uts));
  CHECK(c.identity(Kind::net) != a.identity(Kind::net));
  CHECK(map.count(c) == 0);
  map.emplace(c, 2);
  CHECK(map.size() == 2);
  CHECK(map.at(Set(c)) == 2);
  CHECK(map.at(b) == 1);

  const Set fewer = a.dup(Kind::net | Kind::uts);  // same namespaces, fewer kinds
  CHECK_FALSE(fewer == a);
  CHECK(map.count(fewer) == 0);
}

TEST_CASE("the id of a namespace born after another died differs, even on a reused inode number",
          "[persist][identity][privileged]") {
  test::require_privilege();
  constexpr int max_tries = 2000;
  std::map<ino_t, gonso::Identity> seen;
  std::optional<std::pair<gonso::Identity, gonso::Identity>> reused;  // the earlier one, the later one
  std::string mismatch;
  int tries = 0;
  while (tries < max_tries && !reused) {
    ++tries;
    const Set fresh = Set::current(Kind::net).unshare(Kind::net);
    const gonso::Identity id = fresh.identity(Kind::net);
    const Raw raw = raw_of_fd(fresh.fd(Kind::net));
    if (mismatch.empty() && (id.id != raw.id || id.inode != raw.ino || id.device != raw.dev)) {
      mismatch = fmt::format("gonso says inode {} id {}, the kernel {}", id.inode, id.id, describe(raw));
    }
    const auto [it, fresh_inode] = seen.emplace(raw.ino, id);
    if (!fresh_inode) reused.emplace(it->second, id);
  }  // each namespace dies with its Set
  CHECK(mismatch.empty());
  if (!reused) {
    FAIL(
        fmt::format("no inode number came back in {} network namespaces made and dropped one after another; "
                    "the id's reason to exist was not exercised",
                    tries));
  }
  INFO(fmt::format("inode {} came back after {} namespaces", reused->first.inode, tries));
  const auto& [earlier, later] = *reused;
  CHECK(earlier.inode == later.inode);
  CHECK(earlier.device == later.device);
  CHECK(earlier.id != 0);
  CHECK(later.id != 0);
  CHECK(earlier.id != later.id);
  CHECK(earlier != later);
  // An identity read with stat(2) has no id and cannot tell them apart.
  const gonso::Identity stat_only{Kind::net, later.device, later.inode, 0};
  CHECK(stat_only == earlier);
  CHECK(stat_only == later);
}

TEST_CASE("Set::from_pidfd(): the process's namespaces while it lives, ESRCH once it has ended",
          "[persist][pidfd][privileged]") {
  test::require_privilege();
  const Set box = Set::current().unshare(Kind::net | Kind::uts | Kind::ipc);
  gonso::Child sleeper = gonso::spawn(box, {"sleep", "60"});
  const int pidfd = sleeper.pidfd();
  const std::string proc = fmt::format("/proc/{}/ns/", sleeper.pid());

  const Set by_pidfd = Set::from_pidfd(pidfd);
  CHECK(by_pidfd == Set::from_pid(sleeper.pid()));
  CHECK(by_pidfd == box);
  for (Kind kind : by_pidfd.kinds()) {
    INFO(gonso::name(kind));
    CHECK(by_pidfd.identity(kind) == test::identity_at(kind, proc + std::string(gonso::name(kind))));
  }
  CHECK(Set::from_pidfd(pidfd, Kind::net | Kind::uts) == box.dup(Kind::net | Kind::uts));

  sleeper.kill(SIGKILL);
  // Ended but not reaped: a zombie has no namespaces any more.
  siginfo_t info{};
  REQUIRE(::waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED | WNOWAIT) == 0);
  auto e = test::system_error_of([&] { (void)Set::from_pidfd(pidfd); });
  CHECK(e.code() == std::errc::no_such_process);

  CHECK(sleeper.wait().signal() == SIGKILL);
  // Reaped: the pidfd names a process that is no more, whatever its pid is now.
  e = test::system_error_of([&] { (void)Set::from_pidfd(pidfd); });
  CHECK(e.code() == std::errc::no_such_process);
  CHECK_THAT(e.what(), Catch::Contains(std::to_string(pidfd)));
}

TEST_CASE("Set::from_pidfd() of the caller, and refusals of fds that are not pidfds or are closed",
          "[persist][pidfd]") {
  const test::Baseline base(test::Watch::fds);
  {
    gonso::detail::unique_fd self(static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0U)));
    REQUIRE(self);
    CHECK(Set::from_pidfd(self.get()) == Set::from_pid(::getpid()));
  }
  int pipe_fds[2];
  REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
  gonso::detail::unique_fd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  auto e = test::system_error_of([&] { (void)Set::from_pidfd(read_end.get()); });
  CHECK(e.code() == std::errc::invalid_argument);

  gonso::detail::unique_fd ns(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
  REQUIRE(ns);
  e = test::system_error_of([&] { (void)Set::from_pidfd(ns.get()); });
  CHECK(e.code() == std::errc::invalid_argument);

  // An fd number far above what is open, so that no other thread gets it meanwhile.
  const int closed = ::fcntl(read_end.get(), F_DUPFD_CLOEXEC, 900);
  REQUIRE(closed >= 900);
  REQUIRE(::close(closed) == 0);
  e = test::system_error_of([&] { (void)Set::from_pidfd(closed); });
  CHECK(e.code() == std::errc::bad_file_descriptor);

  read_end.reset();
  write_end.reset();
  ns.reset();
  base.check();
}

TEST_CASE("owner(), parent() and owner_uid() of the caller's namespaces", "[persist][introspection]") {
  const Set here = Set::current(gonso::Kinds::all());
  const gonso::Identity own_user = test::identity_at(Kind::user, "/proc/self/ns/user");
  // The initial namespaces are owned by the initial user namespace.
  for (Kind kind : {Kind::net, Kind::uts, Kind::ipc, Kind::mnt, Kind::cgroup, Kind::pid, Kind::time}) {
    INFO(gonso::name(kind));
    const Set owner = here.owner(kind);
    CHECK(owner.kinds() == Kinds(Kind::user));
    CHECK(owner.identity(Kind::user) == own_user);
  }
  // Above the caller's own user and pid namespaces it may not look.
  auto e = test::system_error_of([&] { (void)here.owner(Kind::user); });
  CHECK(e.code() == std::errc::operation_not_permitted);
  e = test::system_error_of([&] { (void)here.parent(Kind::user); });
  CHECK(e.code() == std::errc::operation_not_permitted);
  e = test::system_error_of([&] { (void)here.parent(Kind::pid); });
  CHECK(e.code() == std::errc::operation_not_permitted);
  // Only pid and user namespaces have parents.
  e = test::system_error_of([&] { (void)here.parent(Kind::net); });
  CHECK(e.code() == std::errc::invalid_argument);
  // Kinds not held.
  CHECK_THROWS_AS(here.dup(Kind::uts).owner(Kind::net), std::invalid_argument);
  CHECK_THROWS_AS(here.dup(Kind::net).owner_uid(), std::invalid_argument);
}

TEST_CASE("owner(), parent() and owner_uid() of namespaces gonso made",
          "[persist][introspection][privileged][process]") {
  test::require_privilege();
  const gonso::Identity own_user = test::identity_at(Kind::user, "/proc/self/ns/user");
  const gonso::Identity own_pid = test::identity_at(Kind::pid, "/proc/self/ns/pid");

  const Set made = Set::current().unshare(Kind::user | Kind::net | Kind::pid);
  // A program in the Set reads its user namespace from /proc, not from gonso.
  gonso::Child sleeper = gonso::spawn(made, {"sleep", "60"});
  const gonso::Identity seen_user = test::identity_at(Kind::user, fmt::format("/proc/{}/ns/user", sleeper.pid()));

  const Set net_owner = made.owner(Kind::net);
  CHECK(net_owner.kinds() == Kinds(Kind::user));
  CHECK(net_owner.identity(Kind::user) == seen_user);
  CHECK(net_owner.identity(Kind::user) == made.identity(Kind::user));
  CHECK(net_owner.identity(Kind::user) != own_user);
  CHECK(made.owner(Kind::pid).identity(Kind::user) == seen_user);
  // What it did not make is still owned by the caller's user namespace.
  CHECK(made.owner(Kind::uts).identity(Kind::user) == own_user);
  // A user namespace's owner is its parent.
  CHECK(made.owner(Kind::user).identity(Kind::user) == own_user);
  CHECK(made.parent(Kind::user).identity(Kind::user) == own_user);
  CHECK(made.parent(Kind::pid).identity(Kind::pid) == own_pid);
  CHECK(made.owner_uid() == ::geteuid());
  const auto e = test::system_error_of([&] { (void)made.parent(Kind::net); });
  CHECK(e.code() == std::errc::invalid_argument);

  // A pid namespace made alone is a child of the caller's too.
  const Set pid_only = Set::current().unshare(Kind::pid);
  CHECK(pid_only.parent(Kind::pid).identity(Kind::pid) == own_pid);
  CHECK(pid_only.parent(Kind::pid).kinds() == Kinds(Kind::pid));
  CHECK(pid_only.owner(Kind::pid).identity(Kind::user) == own_user);

  sleeper.kill(SIGKILL);
  CHECK(sleeper.wait().signal() == SIGKILL);
}

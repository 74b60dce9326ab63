// gonso::Child and how spawn() makes it: poll, kill, destruction and
// adoption; a child sharing the caller's memory or forked, into pid and time
// namespaces, with SIGCHLD ignored, or when a sandbox refuses clone(CLONE_VM).
// Nothing is left behind (the one Baseline).
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <gonso/child.hpp>
#include <gonso/spawn.hpp>

#include "support/baseline.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/privilege.hpp"
#include "support/programs.hpp"
#include "support/tools.hpp"

using gonso::Child;
using gonso::ExitStatus;
using gonso::Kind;
using gonso::Set;
using gonso::Stdio;
using test::ended;

TEST_CASE("Child::poll() says nothing before the end and the status after it", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set fresh = Set::current().unshare(Kind::net);
    Child cat = gonso::spawn(fresh, {"cat"}, {.in = Stdio::pipe, .out = Stdio::null});
    CHECK_FALSE(cat.poll().has_value());  // blocked on its stdin
    cat.close_stdin();
    CHECK(cat.stdin_fd() == -1);
    CHECK(cat.wait() == ExitStatus::exited_with(0));
    CHECK(cat.poll() == ExitStatus::exited_with(0));
    CHECK(cat.wait() == ExitStatus::exited_with(0));

    Child quick = gonso::spawn(fresh, {"sh", "-c", "exit 4"});
    REQUIRE(ended(quick));
    std::optional<ExitStatus> seen = quick.poll();
    REQUIRE(seen.has_value());
    CHECK(*seen == ExitStatus::exited_with(4));
    CHECK(test::gone(quick.pid(), std::chrono::seconds(2)));  // poll() reaped it
  }
  base.check({.children = false});
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("Child::kill() signals the program, and never fails once it has ended", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set fresh = Set::current().unshare(Kind::net);
    Child sleeper = gonso::spawn(fresh, {"sleep", "100"});
    sleeper.kill();
    CHECK(sleeper.wait() == ExitStatus::killed_by(SIGKILL));
    CHECK_NOTHROW(sleeper.kill());  // reaped: nothing to send

    Child polite = gonso::spawn(fresh, {"sleep", "100"});
    polite.kill(SIGTERM);
    CHECK(polite.wait() == ExitStatus::killed_by(SIGTERM));

    Child zombie = gonso::spawn(fresh, {"true"});
    REQUIRE(ended(zombie));
    CHECK_NOTHROW(zombie.kill());  // ended, not reaped yet
    CHECK(zombie.wait() == ExitStatus::exited_with(0));

    Child bad = gonso::spawn(fresh, {"sleep", "100"});
    try {
      bad.kill(12345);
      FAIL("a bad signal number was accepted");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
    }
  }
  base.check({.children = false});
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("Child: destroying an unwaited one kills and reaps it", "[privileged][spawn]") {
  test::require_privilege();
  const Set fresh = Set::current().unshare(Kind::net);
  test::ForeignNamespaces holder(CLONE_NEWPID);
  const Set pidns = Set::from_file(Kind::pid, holder.path(Kind::pid));
  const test::Baseline base(test::Watch::fds);
  for (const Set* set : {&fresh, &pidns}) {
    pid_t pid = -1;
    {
      Child child = gonso::spawn(*set, {"sleep", "100"}, {.in = Stdio::pipe, .out = Stdio::pipe});
      pid = child.pid();
      REQUIRE(std::filesystem::exists(fmt::format("/proc/{}", pid)));
    }
    CHECK(test::gone(pid, std::chrono::seconds(2)));
  }
  // Move assignment ends the process held so far.
  Child a = gonso::spawn(fresh, {"sleep", "100"});
  Child b = gonso::spawn(fresh, {"sleep", "100"});
  const pid_t first = a.pid();
  const pid_t second = b.pid();
  a = std::move(b);
  CHECK(test::gone(first, std::chrono::seconds(2)));
  CHECK(a.pid() == second);
  CHECK_FALSE(b.valid());                       // NOLINT(bugprone-use-after-move)
  CHECK(b.pid() == -1);                         // NOLINT(bugprone-use-after-move)
  CHECK_THROWS_AS(b.wait(), std::logic_error);  // NOLINT(bugprone-use-after-move)
  a.kill();
  CHECK(a.wait().signaled());
  CHECK(test::children() == std::set<pid_t>{holder.pid()});
  a = Child();
  base.check();
}

TEST_CASE("Child::adopt() takes charge of a child the caller forked", "[spawn]") {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) ::_exit(5);
  Child child = Child::adopt(pid);
  CHECK(child.pid() == pid);
  CHECK(child.wait() == ExitStatus::exited_with(5));
  try {
    (void)Child::adopt(::getppid());
    FAIL("adopted the parent");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::no_child_process);
  }
  CHECK_THROWS_AS(Child::adopt(0), std::invalid_argument);
}

TEST_CASE("spawn() without time: a child sharing our memory, seen in the Set while it runs", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    test::ForeignNamespaces holder(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNS);
    test::ForeignNamespaces pid_holder(CLONE_NEWPID);
    const Set fresh = Set::current().unshare(Kind::net | Kind::uts | Kind::ipc | Kind::mnt | Kind::cgroup);
    const Set foreign = Set::from_pid(holder.pid(), Kind::user | Kind::net | Kind::uts | Kind::ipc | Kind::mnt);
    const Set pidns = Set::from_pid(pid_holder.pid(), Kind::pid | Kind::net);
    for (const Set* set : {&fresh, &foreign, &pidns}) {
      // What spawn() picks: no fork, unless ThreadSanitizer is watching.
      const gonso::detail::join_plan plan =
          gonso::detail::plan_join(gonso::detail::set_access::handles(*set), set->kinds());
      gonso::detail::spawn_plan sp;
      sp.join = plan;
#if defined(__SANITIZE_THREAD__)
      CHECK_FALSE(gonso::detail::may_share_memory(sp));
#else
      CHECK(gonso::detail::may_share_memory(sp));
#endif
      Child sleeper = gonso::spawn(*set, {"sleep", "100"});
      // The kernel's view of the running program, not gonso's.
      for (Kind kind : set->kinds()) {
        INFO(gonso::name(kind));
        CHECK(test::identity_at(kind, fmt::format("/proc/{}/ns/{}", sleeper.pid(), gonso::name(kind))) ==
              set->identity(kind));
      }
      std::ifstream status(fmt::format("/proc/{}/status", sleeper.pid()));
      std::string line;
      while (std::getline(status, line) && !line.starts_with("PPid:")) {
      }
      CHECK(line == fmt::format("PPid:\t{}", ::getpid()));  // our own child, no helper between
      sleeper.kill();
      CHECK(sleeper.wait() == ExitStatus::killed_by(SIGKILL));
    }
    CHECK(test::children() == std::set<pid_t>{holder.pid(), pid_holder.pid()});  // no middle process, no zombie
  }
  base.check();
}

TEST_CASE("spawn() into a pid namespace holds the program even when SIGCHLD is ignored", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    test::ForeignNamespaces holder(CLONE_NEWPID);
    const Set pidns = Set::from_file(Kind::pid, holder.path(Kind::pid));
    gonso::detail::spawn_plan sp;
    sp.join = gonso::detail::plan_join(gonso::detail::set_access::handles(pidns), pidns.kinds());
    // The pidfd comes from the program's clone only when the child shares
    // our memory; a forked child opens it afterwards, and may be too late.
    if (gonso::detail::may_share_memory(sp)) {
      struct sigaction ignore {};
      struct sigaction old {};
      ignore.sa_handler = SIG_IGN;
      REQUIRE(::sigaction(SIGCHLD, &ignore, &old) == 0);
      int held = 0;
      for (int i = 0; i < 20; ++i) {
        try {
          Child quick = gonso::spawn(pidns, {"true"});
          if (ended(quick)) ++held;  // the kernel reaps it, the pidfd still says so
        } catch (const std::exception& e) {
          UNSCOPED_INFO(e.what());
        }
      }
      ::sigaction(SIGCHLD, &old, nullptr);
      CHECK(held == 20);
    }
  }
  base.check({.children = false});
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("spawn() into pid and time namespaces forks, and the program is inside", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    // The process path makes them, with an init for the pid namespace.
    const Set set = Set::current().unshare(Kind::pid | Kind::time | Kind::net);
    gonso::detail::spawn_plan sp;
    sp.join = gonso::detail::plan_join(gonso::detail::set_access::handles(set), set.kinds());
    CHECK_FALSE(gonso::detail::may_share_memory(sp));
    Child sleeper = gonso::spawn(set, {"sleep", "100"});
    for (Kind kind : {Kind::net, Kind::pid, Kind::time}) {
      INFO(gonso::name(kind));
      CHECK(test::identity_at(kind, fmt::format("/proc/{}/ns/{}", sleeper.pid(), gonso::name(kind))) ==
            set.identity(kind));
    }
    sleeper.kill();
    CHECK(sleeper.wait() == ExitStatus::killed_by(SIGKILL));
    CHECK(test::children().size() == 1);  // the namespace's init, and no zombie
  }
  base.check({.children = false});
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("spawn() forks when a sandbox refuses a child sharing memory", "[spawn][fork]") {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // A seccomp filter that answers EPERM to clone with CLONE_VM, as a
    // container runtime's might. Plain fork (clone without it) still works.
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])),  // low half, little-endian
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_VM, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    const sock_fprog program{static_cast<unsigned short>(std::size(filter)), filter};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) {
      ::_exit(2);
    }
    int code = 3;
    try {
      Child child = gonso::spawn(Set::current(Kind::uts), {"sh", "-c", "exit 7"});
      code = child.wait() == ExitStatus::exited_with(7) ? 0 : 4;
    } catch (...) {
      code = 5;
    }
    ::_exit(code);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

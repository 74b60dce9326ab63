// gonso::Child beyond wait(): waiting with a deadline, communicate() over
// both pipes without deadlock, and giving the process up with release() or
// detach(). What the process did is read from the kernel (/proc, waitid).
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include <gonso/child.hpp>
#include <gonso/spawn.hpp>

#include "support/baseline.hpp"
#include "support/kernel_view.hpp"
#include "support/privilege.hpp"

using gonso::Child;
using gonso::ExitStatus;
using gonso::Kind;
using gonso::Set;
using gonso::Stdio;
using namespace std::chrono_literals;

namespace {

/// The process is alive and not a zombie, as /proc/PID/status says.
bool running(pid_t pid) {
  const std::string state = test::status_field(pid, "State");
  return !state.empty() && state[0] != 'Z' && state[0] != 'X';
}

bool sigpipe_pending() {
  sigset_t pending;
  sigemptyset(&pending);
  (void)::sigpending(&pending);
  return ::sigismember(&pending, SIGPIPE) == 1;
}

}  // namespace

TEST_CASE("Child::wait_for and wait_until: nothing before the end, the status once it comes", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set here = Set::current(Kind::uts);
    Child slow = gonso::spawn(here, {"sh", "-c", "read line; exit 3"}, {.in = Stdio::pipe});
    CHECK_FALSE(slow.wait_for(20ms).has_value());
    CHECK_FALSE(slow.wait_for(-5s).has_value());  // looks once
    CHECK_FALSE(slow.wait_until(std::chrono::system_clock::now() + 20ms).has_value());
    CHECK(running(slow.pid()));
    slow.close_stdin();
    const std::optional<ExitStatus> ended = slow.wait_for(30s);
    REQUIRE(ended.has_value());
    CHECK(*ended == ExitStatus::exited_with(3));
    CHECK(test::gone(slow.pid(), 2s));  // reaped
    CHECK(slow.wait_for(0s) == ExitStatus::exited_with(3));

    // A timeout beyond the clock's range waits without overflowing.
    Child quick = gonso::spawn(here, {"sh", "-c", "exit 5"});
    CHECK(quick.wait_for(std::chrono::hours::max()) == ExitStatus::exited_with(5));
    Child killed = gonso::spawn(here, {"sleep", "30"});
    killed.kill(SIGTERM);
    CHECK(killed.wait_until(std::chrono::steady_clock::time_point::max()) == ExitStatus::killed_by(SIGTERM));

    Child empty;
    CHECK_THROWS_AS(empty.wait_for(1ms), std::logic_error);
  }
  base.check({.children = false});
  CHECK(base.children().empty());
}

TEST_CASE("Child::communicate feeds stdin and drains stdout and stderr at once", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set here = Set::current(Kind::uts);
    const gonso::SpawnOptions piped{.in = Stdio::pipe, .out = Stdio::pipe, .err = Stdio::pipe};
    std::string input;
    for (int i = 0; input.size() < 3'000'000; ++i) input += std::to_string(i) + '\n';

    SECTION("input larger than any pipe comes back whole, while stderr fills first") {
      // 1 MB to stderr before reading stdin: one pipe at a time would block.
      Child cat = gonso::spawn(here, {"sh", "-c", "head -c 1000000 /dev/zero >&2; cat; echo done >&2"}, piped);
      const Child::Output got = cat.communicate(input);
      CHECK(got.status == ExitStatus::exited_with(0));
      CHECK(got.out.size() == input.size());
      CHECK(got.out == input);
      CHECK(got.err.size() == 1'000'000 + 5);
      CHECK(got.err.substr(got.err.size() - 5) == "done\n");
      CHECK(test::gone(cat.pid(), 2s));
    }
    SECTION("a program that closes its stdin early costs the caller no SIGPIPE") {
      REQUIRE_FALSE(sigpipe_pending());
      Child early = gonso::spawn(here, {"sh", "-c", "exec 0<&-; echo closed"}, piped);
      const Child::Output got = early.communicate(input);
      CHECK(got.status == ExitStatus::exited_with(0));
      CHECK(got.out == "closed\n");
      CHECK_FALSE(sigpipe_pending());
    }
    SECTION("only the pipes there are: stdout alone, no input") {
      Child echo = gonso::spawn(here, {"sh", "-c", "echo out; echo err >&2"}, {.out = Stdio::pipe, .err = Stdio::null});
      const Child::Output got = echo.communicate();
      CHECK(got.out == "out\n");
      CHECK(got.err.empty());
      CHECK(got.status.success());
    }
    SECTION("input without a stdin pipe is refused before anything is written") {
      Child echo = gonso::spawn(here, {"sh", "-c", "exit 0"}, {.out = Stdio::pipe});
      CHECK_THROWS_AS(echo.communicate("data"), std::logic_error);
      CHECK_THROWS_WITH(echo.communicate("data"), Catch::Contains("not a pipe"));
      CHECK(echo.wait().success());
    }
  }
  base.check({.children = false});
  CHECK(base.children().empty());
}

TEST_CASE("Child::release and detach give the process up without ending it", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  std::optional<Set> here_holder(Set::current(Kind::uts));
  const Set& here = *here_holder;
  SECTION("release hands over a pidfd; the process outlives the handle") {
    pid_t pid = -1;
    int pidfd = -1;
    {
      Child sleeper = gonso::spawn(here, {"sleep", "30"}, {.out = Stdio::pipe});
      pid = sleeper.pid();
      pidfd = sleeper.release();
      CHECK_FALSE(sleeper.valid());
      CHECK(sleeper.pid() == -1);
      CHECK(sleeper.stdout_fd() == -1);
      CHECK_THROWS_AS(sleeper.release(), std::logic_error);
    }
    CHECK(running(pid));
    CHECK(test::fd_link(pidfd) == "anon_inode:[pidfd]");
    CHECK((::fcntl(pidfd, F_GETFD) & FD_CLOEXEC) != 0);
    // The caller reaps it itself.
    REQUIRE(::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0U) == 0);
    siginfo_t info{};
    REQUIRE(::waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED) == 0);
    CHECK(info.si_pid == pid);
    CHECK(info.si_code == CLD_KILLED);
    ::close(pidfd);
  }
  SECTION("detach leaves the process to be reaped by pid") {
    pid_t pid = -1;
    {
      Child seven = gonso::spawn(here, {"sh", "-c", "read line; exit 7"}, {.in = Stdio::pipe});
      pid = seven.detach();
      CHECK_FALSE(seven.valid());
    }
    // The stdin pipe went with the handle: the program reads end of file.
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 7);
  }
  here_holder.reset();
  base.check({.children = false});
  CHECK(base.children().empty());
}

// Fault injection around processes: a pid namespace whose init died, a
// child killed by a signal, and the application forking while gonso's
// threads exist. Each checks the documented outcome, and then that the
// process is as it was (the one Baseline).
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <gonso/executor.hpp>
#include <gonso/persist.hpp>
#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>
#include <gonso/workers.hpp>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fault.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"

using gonso::Kind;
using gonso::Set;
using test::inside;
using test::land;
using test::Landing;

// ---------------------------------------------------------------------------
// A pid namespace whose init died.

namespace {

/// What a run, run_in_process and spawn do with a Set whose pid namespace
/// has no init any more: the kernel refuses every fork into it (ENOMEM).
void check_dead_pid_namespace(const Set& dead) {
  const std::system_error in_process = test::system_error_of([&] { (void)dead.run_in_process([] { return 1; }); });
  CHECK(in_process.code() == std::errc::not_enough_memory);
  CHECK_THAT(in_process.what(), Catch::Contains("cannot fork into the joined pid"));

  const std::system_error spawned = test::system_error_of([&] { (void)gonso::spawn(dead, {"/bin/true"}); });
  CHECK(spawned.code() == std::errc::not_enough_memory);
  CHECK_THAT(spawned.what(), Catch::Contains("cannot fork /bin/true into the joined pid"));

  // A thread can still join it (only its children's pid namespace changes);
  // what the callable forks there fails.
  const auto [in, fork_error] = dead.run(true, [&] {
    const bool joined = inside(dead);
    const pid_t child = ::fork();
    if (child == 0) ::_exit(0);
    const int err = child < 0 ? errno : 0;
    if (child > 0) ::waitpid(child, nullptr, 0);
    return std::pair(joined, err);
  });
  CHECK(in);
  CHECK(fork_error == ENOMEM);
}

}  // namespace

TEST_CASE("fault: a pid namespace whose init was killed gives clear errors and leaves no zombie",
          "[fault][privileged][process]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::process);
  SECTION("made by unshare: gonso's init, reaped when the last Set goes") {
    std::optional<Set> pidset(Set::current().unshare(Kind::pid | Kind::uts));
    const pid_t init = test::init_of(pidset->identity(Kind::pid));
    REQUIRE(init > 0);
    REQUIRE(::kill(init, SIGKILL) == 0);
    siginfo_t info{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(init), &info, WEXITED | WNOWAIT) == 0);  // dead, not reaped
    CHECK(info.si_code == CLD_KILLED);
    check_dead_pid_namespace(*pidset);
    // gonso does not reap it while a Set holds it: the zombie is ours until then.
    const std::vector<std::string> left = test::child_processes();
    CHECK(std::find(left.begin(), left.end(), fmt::format("child {}", init)) != left.end());
    pidset.reset();
    CHECK(test::eventually([] { return test::child_processes().empty(); }));
  }
  SECTION("opened with from_pid: its init is someone else's") {
    std::optional<test::ForeignNamespaces> foreign;
    foreign.emplace(CLONE_NEWPID | CLONE_NEWUTS);
    const Set theirs = Set::from_pid(foreign->pid(), Kind::pid | Kind::uts);
    REQUIRE(::kill(foreign->pid(), SIGKILL) == 0);
    siginfo_t info{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(foreign->pid()), &info, WEXITED | WNOWAIT) == 0);
    check_dead_pid_namespace(theirs);
    foreign.reset();  // reaps it: gonso never owned it
  }
  base.check();
}

// ---------------------------------------------------------------------------
// A child killed by a signal.

TEST_CASE("fault: a child killed by a signal is reported with that signal and reaped", "[fault][privileged][process]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::process);
  {
    const Set box = Set::current().unshare(Kind::net | Kind::uts);
    const Set pidset = Set::current().unshare(Kind::pid);
    const auto killed_by = [](auto&& fn) {
      try {
        fn();
      } catch (const gonso::ProcessError& e) {
        CHECK(e.cause() == gonso::ProcessError::Cause::signal);
        CHECK_THAT(e.what(), Catch::Contains("killed by signal"));
        return e.signal();
      }
      FAIL("no gonso::ProcessError was thrown");
      return 0;
    };
    // SIGUSR2: fatal by default, and Catch2 handles it not.
    CHECK(killed_by([&] { box.run_in_process([] { ::raise(SIGKILL); }); }) == SIGKILL);
    CHECK(killed_by([&] { box.run_in_process([] { ::raise(SIGUSR2); }); }) == SIGUSR2);
    CHECK(killed_by([&] { pidset.run_in_process([] { ::raise(SIGKILL); }); }) == SIGKILL);

    // Killed from another thread of the caller, by the pid it reports.
    int pids[2];
    REQUIRE(::pipe2(pids, O_CLOEXEC) == 0);
    std::thread killer([&] {
      pid_t pid = 0;
      if (::read(pids[0], &pid, sizeof pid) == sizeof pid) ::kill(pid, SIGKILL);
    });
    CHECK(killed_by([&] {
            box.run_in_process([&] {
              const pid_t self = ::getpid();
              if (::write(pids[1], &self, sizeof self) != sizeof self) ::_exit(3);
              for (;;) ::pause();
            });
          }) == SIGKILL);
    killer.join();
    ::close(pids[0]);
    ::close(pids[1]);

    // Spawned programs, killed through the handle and from outside it.
    gonso::Child a = gonso::spawn(box, {"/bin/sleep", "60"});
    a.kill(SIGKILL);
    CHECK(a.wait() == gonso::ExitStatus::killed_by(SIGKILL));
    gonso::Child b = gonso::spawn(pidset, {"/bin/sleep", "60"});
    std::thread([pid = b.pid()] { ::kill(pid, SIGUSR2); }).join();
    CHECK(b.wait() == gonso::ExitStatus::killed_by(SIGUSR2));
    {
      gonso::Child c = gonso::spawn(box, {"/bin/sleep", "60"});
      ::kill(c.pid(), SIGKILL);  // never waited for: the handle reaps it
    }
    CHECK(land(box).inside);
  }
  base.check();
}

// ---------------------------------------------------------------------------
// The application forks.

TEST_CASE("fault: a fork while workers, the anchor, an Executor and a Pool exist leaves both sides working",
          "[fault][privileged][fork]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::process);
  {
    const Set box = Set::current().unshare(Kind::net | Kind::uts);
    // Two idle workers (two runs at once) and the anchor.
    std::thread other([&] { (void)land(box); });
    const pid_t worker = land(box).tid;
    other.join();
    const gonso::Executor ex(box);
    const pid_t executor_thread = land(ex).tid;
    gonso::PoolOptions options;
    options.size = 2;
    std::optional<gonso::Pool> pool_holder;
    gonso::Pool& pool = pool_holder.emplace(Set::current(), Kind::net, options);
    REQUIRE(pool.wait_ready(std::chrono::seconds(30)));
    REQUIRE(gonso::idle_workers() >= 1);

    std::fflush(nullptr);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::alarm(30);  // a hang shows as SIGALRM, never as a stuck test
      // Only this thread exists here: no worker, no anchor, no executor or
      // refill thread (the Executor and the Pool are documented as not
      // usable here, and are not touched).
      int code = 0;
      try {
        if (gonso::idle_workers() != 0) code |= 1;
        if (!land(box).inside) code |= 2;
        const Set mine = Set::current().unshare(Kind::uts);
        if (!land(mine).inside) code |= 4;
        if (!box.run_in_process([&] { return inside(box); })) code |= 8;
      } catch (...) {
        code |= 16;
      }
      std::exit(code);  // runs exit handlers, gonso's among them  NOLINT(concurrency-mt-unsafe)
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);

    // The parent's threads never noticed.
    CHECK(std::filesystem::exists(fmt::format("/proc/self/task/{}", worker)));
    CHECK(land(box).inside);
    const Landing ex_again = land(ex);
    CHECK(ex_again.tid == executor_thread);
    CHECK(ex_again.inside);
    const Set fresh = pool.get();
    CHECK(fresh.identity(Kind::net) != base.caller().at(Kind::net));
    CHECK(land(fresh).inside);

    // A fork from inside a callable: the child sits in the Set and can use
    // gonso itself before it _exits. The pool goes first: its refill thread
    // borrows idle workers too, and would make which one is reused a race.
    pool_holder.reset();
    const pid_t next_worker = land(box).tid;
    const auto [forker, grandchild_status] = box.run(true, [&] {
      const pid_t pid = ::fork();
      if (pid == 0) {
        ::alarm(30);
        int code = inside(box) ? 0 : 1;
        try {
          if (!land(box).inside) code |= 2;
          const Set mine = Set::current().unshare(Kind::uts);
          if (!land(mine).inside) code |= 4;
        } catch (...) {
          code |= 8;
        }
        ::_exit(code);
      }
      int st = -1;
      if (pid > 0) ::waitpid(pid, &st, 0);
      return std::pair(test::tid(), st);
    });
    CHECK(forker == next_worker);
    CHECK(WIFEXITED(grandchild_status));
    CHECK(WEXITSTATUS(grandchild_status) == 0);
    CHECK(land(box).tid == next_worker);
  }
  base.check();
}

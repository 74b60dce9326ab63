// gonso::spawn: the program runs inside exactly the Set's namespaces (as the
// kernel's links read, and as nsenter(1) enters them), is the caller's own
// child, and comes back as it ended; nothing is left behind (the one
// Baseline).
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
using test::chomp;
using test::output_of;
using test::Ran;
using test::run;

namespace {

constexpr Kind unshareable[] = {Kind::cgroup, Kind::ipc, Kind::mnt, Kind::net, Kind::uts};

}  // namespace

TEST_CASE("ExitStatus: a value that says how a process ended", "[spawn]") {
  const ExitStatus three = ExitStatus::exited_with(3);
  CHECK(three.exited());
  CHECK_FALSE(three.signaled());
  CHECK(three.code() == 3);
  CHECK(three.signal() == 0);
  CHECK_FALSE(three.success());
  CHECK(ExitStatus::exited_with(0).success());
  CHECK(fmt::format("{}", three) == "exited 3");
  const ExitStatus killed = ExitStatus::killed_by(SIGKILL);
  CHECK(killed.signaled());
  CHECK_FALSE(killed.exited());
  CHECK(killed.signal() == SIGKILL);
  CHECK(killed.code() == -1);
  CHECK(fmt::format("{}", killed) == "killed by signal 9 (Killed)");
  CHECK(three == ExitStatus::exited_with(3));
  CHECK(three != ExitStatus::exited_with(4));
  CHECK(ExitStatus::exited_with(9) != ExitStatus::killed_by(9));
}

TEST_CASE("spawn(): the program sees exactly the Set's namespace of each kind", "[privileged][spawn]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const test::Baseline base(test::Watch::namespaces | test::Watch::fds | test::Watch::children);
  {
    const Set fresh = Set::current().unshare(Kind::net | Kind::uts | Kind::ipc | Kind::mnt | Kind::cgroup);
    for (Kind kind : unshareable) REQUIRE(fresh.identity(kind) != caller.at(kind));
    // Every kind the Set holds, the fresh ones and those carried over.
    for (Kind kind : fresh.kinds()) {
      INFO(gonso::name(kind));
      const std::string link = fmt::format("/proc/self/ns/{}", gonso::name(kind));
      CHECK(output_of(fresh, {"readlink", link}) == gonso::to_string(fresh.identity(kind)));
    }
  }
  base.check({.children = false});
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("spawn(): pid, time and user namespaces, which need a process", "[privileged][spawn]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const test::Baseline base(test::Watch::namespaces | test::Watch::fds);
  for (const auto& [kind, flag] : {std::pair{Kind::pid, CLONE_NEWPID}, std::pair{Kind::time, CLONE_NEWTIME},
                                   std::pair{Kind::user, CLONE_NEWUSER}}) {
    DYNAMIC_SECTION(gonso::name(kind)) {
      test::ForeignNamespaces holder(flag);
      const Set set = Set::from_file(kind, holder.path(kind));
      REQUIRE(set.identity(kind) != caller.at(kind));
      const std::string link = fmt::format("/proc/self/ns/{}", gonso::name(kind));
      CHECK(output_of(set, {"readlink", link}) == gonso::to_string(set.identity(kind)));
      // Only the helper is left a child of this process: the middle process
      // that joined was reaped, the program too.
      CHECK(test::children() == std::set<pid_t>{holder.pid()});
    }
  }
  base.check();
}

TEST_CASE("spawn() into a pid namespace: the program is inside, and the caller's own child", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    test::ForeignNamespaces holder(CLONE_NEWPID);  // pid 1 there
    const Set pidns = Set::from_file(Kind::pid, holder.path(Kind::pid));

    Child child = gonso::spawn(pidns, {"sh", "-c", "echo $$; exec sleep 100"}, {.out = Stdio::pipe});
    // The pidfd, wait and kill must reach the program, not a relay.
    std::string inside_pid;
    char c = 0;
    while (::read(child.stdout_fd(), &c, 1) == 1 && c != '\n') inside_pid += c;
    REQUIRE_FALSE(inside_pid.empty());
    CHECK(std::stoi(inside_pid) >= 2);  // pid 1 is the holder's
    CHECK(std::stoi(inside_pid) != child.pid());
    CHECK(test::identity_at(Kind::pid, fmt::format("/proc/{}/ns/pid", child.pid())) == pidns.identity(Kind::pid));
    std::ifstream status(fmt::format("/proc/{}/status", child.pid()));
    std::string line;
    while (std::getline(status, line) && !line.starts_with("NSpid:")) {
    }
    CHECK(line == fmt::format("NSpid:\t{}\t{}", child.pid(), inside_pid));
    CHECK(test::children() == std::set<pid_t>{holder.pid(), child.pid()});  // no middle process, no zombie

    CHECK_FALSE(child.poll());
    child.kill();
    CHECK(child.wait() == ExitStatus::killed_by(SIGKILL));
    CHECK(test::gone(child.pid(), std::chrono::seconds(2)));

    CHECK(run(pidns, {"sh", "-c", "exit 7"}).status == ExitStatus::exited_with(7));
    CHECK(run(pidns, {"sh", "-c", "kill -TERM $$"}).status == ExitStatus::killed_by(SIGTERM));
    CHECK(test::children() == std::set<pid_t>{holder.pid()});
  }
  base.check();
}

TEST_CASE("spawn() from inside Set::run of a pid namespace", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    test::ForeignNamespaces holder(CLONE_NEWPID);
    test::ForeignNamespaces other(CLONE_NEWPID);
    const Set pidns = Set::from_file(Kind::pid, holder.path(Kind::pid));
    const Set elsewhere = Set::from_file(Kind::pid, other.path(Kind::pid));
    struct Seen {
      std::string link;
      pid_t pid;
      std::string refused;
    };
    const Seen seen = pidns.run(true, [&] {
      // This thread's children go to pidns already: nothing to join, and the
      // program is forked straight into it.
      Child child = gonso::spawn(pidns, {"readlink", "/proc/self/ns/pid"}, {.out = Stdio::pipe});
      Seen s{chomp(child.read_stdout()), child.pid(), {}};
      (void)child.wait();
      // A middle process here would number the program in pidns.
      try {
        (void)gonso::spawn(elsewhere, {"true"});
      } catch (const std::system_error& e) {
        s.refused = e.what();
      }
      return s;
    });
    CHECK(seen.link == gonso::to_string(pidns.identity(Kind::pid)));
    CHECK(seen.pid > 0);
    CHECK_THAT(seen.refused, Catch::StartsWith("cannot spawn true into the pid or time namespace") &&
                                 Catch::EndsWith(std::string(std::strerror(EINVAL))));
    CHECK(test::children() == std::set<pid_t>{holder.pid(), other.pid()});
  }
  base.check();
}

TEST_CASE("spawn(): exit codes and signals come back as they happened", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set fresh = Set::current().unshare(Kind::net | Kind::uts);
    const Ran seven = run(fresh, {"sh", "-c", "exit 7"});
    CHECK(seven.status == ExitStatus::exited_with(7));
    CHECK(seven.status.code() == 7);
    CHECK(fmt::format("{}", seven.status) == "exited 7");
    const Ran term = run(fresh, {"sh", "-c", "kill -TERM $$"});
    CHECK(term.status == ExitStatus::killed_by(SIGTERM));
    CHECK(fmt::format("{}", term.status) == "killed by signal 15 (Terminated)");
    CHECK(run(fresh, {"true"}).status.success());
  }
  base.check({.children = false});
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("spawn() agrees with nsenter(1)", "[privileged][spawn]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const Set own = Set::current(Kind::uts);
  // nsenter opens the Set's fd through this process's /proc entry.
  const std::string file = fmt::format("/proc/{}/fd/{}", ::getpid(), net.fd(Kind::net));
  const std::string by_nsenter = output_of(own, {"nsenter", "--net=" + file, "readlink", "/proc/self/ns/net"});
  const std::string by_gonso = output_of(net, {"readlink", "/proc/self/ns/net"});
  CHECK(by_gonso == by_nsenter);
  CHECK(by_gonso == gonso::to_string(net.identity(Kind::net)));
}

TEST_CASE("spawn() from many threads at once", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set here = Set::current();
    const std::vector<Set> sets{here.unshare(Kind::net), here.unshare(Kind::net | Kind::uts), here};
    constexpr int callers = 6;
    constexpr int spawns = 15;
    std::atomic<int> wrong{0}, failed{0}, done{0};
    std::vector<std::thread> threads;
    threads.reserve(callers);
    for (int c = 0; c < callers; ++c) {
      threads.emplace_back([&, c] {
        for (int i = 0; i < spawns; ++i) {
          const Set& set = sets[static_cast<std::size_t>(i + c) % sets.size()];
          try {
            Child child = gonso::spawn(set, {"readlink", "/proc/self/ns/net"}, {.out = Stdio::pipe});
            const std::string out = chomp(child.read_stdout());
            if (!child.wait().success() || out != gonso::to_string(set.identity(Kind::net))) ++wrong;
          } catch (...) {
            ++failed;
          }
          ++done;
        }
      });
    }
    for (auto& t : threads) t.join();
    CHECK(done == callers * spawns);
    CHECK(wrong == 0);
    CHECK(failed == 0);
  }
  base.check({.children = false});
  CHECK(base.children().empty());  // none before, so none left
}

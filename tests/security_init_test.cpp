// Security: the init of a pid namespace made by gonso keeps reaping
// orphans whatever signals it is sent, and one killed from outside leaves
// clear errors and no zombie.
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

// ---------------------------------------------------------------------------
// The init of a pid namespace made by gonso keeps reaping, whatever it is sent.

namespace {

/// Zombies in pid namespace `ns`, or children of `init` (it reaps them).
std::vector<pid_t> zombies_in(const gonso::Identity& ns, pid_t init) {
  std::vector<pid_t> out;
  std::set<pid_t> candidates;
  for (pid_t pid : test::processes_in(ns)) candidates.insert(pid);
  std::ifstream in(fmt::format("/proc/{0}/task/{0}/children", init));
  for (pid_t pid = 0; in >> pid;) candidates.insert(pid);
  for (pid_t pid : candidates) {
    if (test::status_field(pid, "State").rfind('Z', 0) == 0) out.push_back(pid);
  }
  return out;
}

/// In `set`'s pid namespace: a process forks a child that forks a
/// grandchild and exits, so that the grandchild is reparented to the init.
/// With `linger`, the grandchild stays (until the namespace ends); else it
/// exits at once and only the init can reap it.
void make_orphan(const gonso::Set& set, bool linger) {
  set.run_in_process([linger] {
    const pid_t child = ::fork();
    if (child < 0) throw std::system_error(errno, std::generic_category(), "fork");
    if (child == 0) {
      const pid_t grandchild = ::fork();
      if (grandchild == 0) {
        if (linger) {
          for (;;) ::pause();
        }
        ::_exit(0);
      }
      ::_exit(grandchild > 0 ? 0 : 1);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error("the child could not fork");
  });
}

/// Every signal a process may catch: all but SIGKILL and SIGSTOP.
std::vector<int> catchable_signals() {
  std::vector<int> out;
  for (int sig = 1; sig <= SIGRTMAX; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP && (sig < 32 || sig >= SIGRTMIN)) out.push_back(sig);
  }
  return out;
}

/// A pidfd on a process, to tell later whether it is gone for good (reaped),
/// whoever its parent is, without the risk of pid reuse.
class Reaping {
 public:
  explicit Reaping(pid_t pid) : fd_(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0U))) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), fmt::format("pidfd_open({})", pid));
  }
  Reaping(const Reaping&) = delete;
  Reaping& operator=(const Reaping&) = delete;
  ~Reaping() { ::close(fd_); }
  /// Signal 0 reaches a live process and a zombie; ESRCH once it is reaped.
  [[nodiscard]] bool reaped() const {
    return ::syscall(SYS_pidfd_send_signal, fd_, 0, nullptr, 0U) != 0 && errno == ESRCH;
  }

 private:
  int fd_;
};

}  // namespace

TEST_CASE("security: signals cannot make the init of a pid namespace leave orphans unreaped",
          "[security][privileged][process]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::children);
  std::optional<gonso::Set> set(gonso::Set::current().unshare(gonso::Kind::pid));
  const gonso::Identity ns = set->identity(gonso::Kind::pid);
  const pid_t init = test::init_of(ns);
  REQUIRE(init > 0);
  const Reaping init_watch(init);
  const auto no_zombies = [&] { return zombies_in(ns, init).empty(); };
  const auto running = [&] { return test::status_field(init, "State").rfind('S', 0) == 0; };

  // Every catchable signal from outside: pending for ever, never acted on,
  // but SIGCHLD, which makes it reap.
  std::size_t sent = 0;
  for (int sig : catchable_signals()) {
    INFO("signal " << sig);
    CHECK(::kill(init, sig) == 0);
    ++sent;
  }
  make_orphan(*set, false);
  make_orphan(*set, true);
  CHECK(test::eventually(no_zombies));
  CHECK(zombies_in(ns, init).empty());
  CHECK(running());
  CHECK(set->run_in_process([] { return ::getpid(); }) > 1);  // forks still land inside

  // Every signal from inside, SIGKILL and SIGSTOP too: pid 1 gets only
  // those it handles (SIGCHLD), so each kill(1, sig) succeeds and does nothing.
  const int delivered = set->run_in_process([] {
    int ok = 0;
    for (int sig = 1; sig <= SIGRTMAX; ++sig) {
      if ((sig < 32 || sig >= SIGRTMIN) && ::kill(1, sig) == 0) ++ok;
    }
    return ok;
  });
  CHECK(delivered == static_cast<int>(catchable_signals().size()) + 2);
  make_orphan(*set, false);
  CHECK(test::eventually(no_zombies));
  CHECK(running());

  // SIGSTOP from outside is forced on it: while stopped it reaps nothing, and
  // an orphan that exits stays a zombie; SIGCONT lets it catch up.
  REQUIRE(::kill(init, SIGSTOP) == 0);
  CHECK(test::eventually([&] { return test::status_field(init, "State").rfind('T', 0) == 0; }));
  make_orphan(*set, false);
  CHECK(test::eventually([&] { return !zombies_in(ns, init).empty(); }));
  const std::size_t stopped_zombies = zombies_in(ns, init).size();
  CHECK(stopped_zombies >= 1);
  REQUIRE(::kill(init, SIGCONT) == 0);
  CHECK(test::eventually(no_zombies));
  CHECK(running());

  // The last Set goes: the init and the lingering orphans are killed, and
  // all of them reaped, not left as zombies of this process.
  // An orphan that is to exit may not have run yet (no zombie so far, but
  // alive): wait until the init and the lingering one are all that is left.
  CHECK(test::eventually([&] { return test::processes_in(ns).size() == 2; }));
  std::vector<std::unique_ptr<Reaping>> inside;
  for (pid_t pid : test::processes_in(ns)) {
    if (pid != init) inside.push_back(std::make_unique<Reaping>(pid));
  }
  CHECK(inside.size() == 1);  // the lingering grandchild
  set.reset();
  CHECK(init_watch.reaped());
  for (const auto& w : inside) CHECK(w->reaped());
  CHECK(test::processes_in(ns).empty());
  base.check({.children = false});
  WARN("sent " << sent << " signals from outside and " << delivered << " from inside; " << stopped_zombies
               << " zombie(s) waited while the init was stopped");
}

TEST_CASE("security: a pid namespace whose init was killed from outside fails clearly and leaves no zombie",
          "[security][privileged][process]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::children);
  std::optional<gonso::Set> set(gonso::Set::current().unshare(gonso::Kind::pid));
  const gonso::Identity ns = set->identity(gonso::Kind::pid);
  const pid_t init = test::init_of(ns);
  REQUIRE(init > 0);
  const Reaping init_watch(init);
  make_orphan(*set, true);
  const std::vector<pid_t> before = test::processes_in(ns);
  REQUIRE(before.size() == 2);
  REQUIRE(::kill(init, SIGKILL) == 0);
  // The namespace dies with it; the init stays a zombie child of this
  // process until gonso reaps it, when the last Set goes.
  CHECK(test::eventually([&] { return test::status_field(init, "State").rfind('Z', 0) == 0; }));
  CHECK_FALSE(init_watch.reaped());
  const std::system_error in_process = test::system_error_of([&] { set->run_in_process([] { return 0; }); });
  CHECK(in_process.code() == std::errc::not_enough_memory);
  const std::system_error spawned = test::system_error_of([&] { (void)gonso::spawn(*set, {"/bin/true"}); });
  CHECK(spawned.code() == std::errc::not_enough_memory);
  WARN("after SIGKILL of the init: run_in_process: " << in_process.what() << "; spawn: " << spawned.what());
  set.reset();
  CHECK(init_watch.reaped());
  base.check({.children = false});
}

// Fault injection with signals: the application's own SIGCHLD handling (it
// ignores SIGCHLD, or reaps every child) and a storm of signals without
// SA_RESTART. Each checks the documented outcome, and then that the process
// is as it was (the one Baseline).
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

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
#include "support/soak.hpp"

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;
using test::inside;
using test::land;

// ---------------------------------------------------------------------------
// The application's own SIGCHLD handling.

namespace {

/// The worst SIGCHLD handler: it reaps every child, gonso's included.
void reap_everything(int /*sig*/) {
  const int saved = errno;
  while (::waitpid(-1, nullptr, WNOHANG | __WALL) > 0) {
  }
  errno = saved;
}

}  // namespace

TEST_CASE("fault: an application that ignores SIGCHLD or reaps every child gets values or a clear ECHILD",
          "[fault][privileged][process]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::process);
  std::optional<Set> box_holder(Set::current().unshare(Kind::net | Kind::uts));
  std::optional<Set> pidset_holder(Set::current().unshare(Kind::pid));
  const Set& box = *box_holder;
  const Set& pidset = *pidset_holder;
  constexpr int rounds = 5;
  int values = 0;
  int lost = 0;  // exit statuses lost, reported as ECHILD (README, "Not yet")
  const auto lost_status = [&](const std::system_error& e) {
    CHECK(e.code() == std::errc::no_child_process);
    CHECK_THAT(e.what(), Catch::Contains("SIGCHLD ignored"));
    ++lost;
  };
  const auto body = [&] {
    for (int i = 0; i < rounds; ++i) {
      // A value is reported before the child ends: it always comes back.
      CHECK(box.run_in_process([&] { return inside(box); }));
      CHECK(pidset.run_in_process([&] { return inside(pidset); }));
      values += 2;
      // No report: only the exit status could tell, and it may be gone.
      try {
        box.run_in_process([] { ::_exit(3); });
        FAIL("nothing thrown");
      } catch (const gonso::ProcessError& e) {
        CHECK(e.exit_code() == 3);
      } catch (const std::system_error& e) {
        lost_status(e);
      }
      for (const Set* where : {&box, &pidset}) {
        gonso::Child child = gonso::spawn(*where, {"/bin/true"});
        try {
          const gonso::ExitStatus status = child.wait();
          CHECK(status.success());
        } catch (const std::system_error& e) {
          lost_status(e);
        }
      }
    }
    // The process path of unshare: it must work whoever reaps its helpers.
    for (const Kinds kinds : {Kind::user | Kind::pid, Kinds(Kind::pid), Kinds(Kind::time)}) {
      const Set made = Set::current().unshare(kinds);
      for (Kind kind : kinds) CHECK(made.identity(kind) != base.caller().at(kind));
      CHECK(made.run_in_process([&] { return inside(made); }));
    }
    gonso::PoolOptions options;
    options.size = 3;
    gonso::Pool pool(Set::current(), Kind::pid, options);
    CHECK(pool.wait_ready(std::chrono::seconds(30)));
    std::vector<Set> taken;
    taken.reserve(4);
    for (int i = 0; i < 4; ++i) taken.push_back(pool.get());
    for (const Set& s : taken) {
      CHECK(s.identity(Kind::pid) != base.caller().at(Kind::pid));
      CHECK(s.run_in_process([&] { return inside(s); }));
    }
  };
  SECTION("SIGCHLD ignored") {
    const test::SignalDisposition ignore(SIGCHLD, SIG_IGN, 0);
    body();
  }
  SECTION("a SIGCHLD handler reaps every child") {
    const test::SignalDisposition handler(SIGCHLD, reap_everything, SA_RESTART);
    body();
  }
  UNSCOPED_INFO("SIGCHLD: " << values << " values back, " << lost << " exit statuses lost and reported as ECHILD");
  box_holder.reset();
  pidset_holder.reset();
  base.check();
}

// ---------------------------------------------------------------------------
// EINTR everywhere.

namespace {

std::atomic<long> interrupts{0};
void count_interrupt(int /*sig*/) { interrupts.fetch_add(1, std::memory_order_relaxed); }

/// Whether process `pid` catches `sig` and does not block it, from
/// /proc/PID/status: a child that inherited the application's handler, as
/// a signal to the whole process group would find it. A spawned program (or
/// its helper before exec) has it blocked or at its default, fatal action:
/// signalling it would test the signal, not gonso.
bool catches(pid_t pid, int sig) {
  std::ifstream status(fmt::format("/proc/{}/status", pid));
  unsigned long long blocked = ~0ULL;
  unsigned long long caught = 0;
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("SigBlk:", 0) == 0) blocked = std::stoull(line.substr(7), nullptr, 16);
    if (line.rfind("SigCgt:", 0) == 0) caught = std::stoull(line.substr(7), nullptr, 16);
  }
  const unsigned long long bit = 1ULL << (sig - 1);
  return (caught & bit) != 0 && (blocked & bit) == 0;
}

/// A thread that sends SIGUSR1 to every other thread of the process, and to
/// every child that catches it, over and over, until destroyed.
class SignalStorm {
 public:
  SignalStorm() : thread_([this] { loop(); }) {}
  SignalStorm(const SignalStorm&) = delete;
  SignalStorm& operator=(const SignalStorm&) = delete;
  ~SignalStorm() {
    stop_.store(true);
    thread_.join();
  }
  [[nodiscard]] long to_threads() const { return to_threads_.load(); }
  [[nodiscard]] long to_children() const { return to_children_.load(); }

 private:
  void loop() {
    const pid_t self = test::tid();
    const pid_t process = ::getpid();
    while (!stop_.load()) {
      std::error_code ec;
      for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
        const auto tid = static_cast<pid_t>(std::atol(task.path().filename().c_str()));
        if (tid != self && ::syscall(SYS_tgkill, process, tid, SIGUSR1) == 0) ++to_threads_;
        signal_children(task.path() / "children", 3);
      }
      ::usleep(100);  // keeps the machine usable
    }
  }

  // Children and their children (gonso's helpers fork once more for pid
  // and time namespaces), down to `depth` generations.
  void signal_children(const std::filesystem::path& list, int depth) {
    std::ifstream children(list);
    for (pid_t pid = 0; children >> pid;) {
      if (catches(pid, SIGUSR1) && ::kill(pid, SIGUSR1) == 0) ++to_children_;
      if (depth > 1) signal_children(fmt::format("/proc/{0}/task/{0}/children", pid), depth - 1);
    }
  }

  std::atomic<bool> stop_{false};
  std::atomic<long> to_threads_{0};
  std::atomic<long> to_children_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("fault: a storm of signals without SA_RESTART makes no gonso call fail or return a wrong value",
          "[fault][privileged][process]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::process);
  test::Problems problems;
  long to_threads = 0;
  long to_children = 0;
  interrupts.store(0);
  {
    const Set box = Set::current().unshare(Kind::net | Kind::uts);
    const Set pidset = Set::current().unshare(Kind::pid);
    const Set timeset = Set::current().unshare(Kind::time);
    const gonso::Executor ex(box);
    gonso::PoolOptions options;
    options.size = 3;
    gonso::Pool pool(Set::current(), Kind::net, options);
    const std::string big(std::size_t{256} * 1024, 'x');  // four times a pipe's buffer: the report streams
    const test::SignalDisposition handler(SIGUSR1, count_interrupt, 0);  // no SA_RESTART
    {
      const SignalStorm storm;
      // Runs: the futex hand-offs between caller, worker and anchor.
      std::thread runs([&] {
        for (int i = 0; i < 40; ++i) {
          problems.guard("run(true)",
                         [&] { problems.expect(box.run(true, [&] { return inside(box); }), "run(true)"); });
          problems.guard("executor", [&] { problems.expect(ex.run([&] { return inside(box); }), "executor run"); });
        }
        for (int i = 0; i < 10; ++i) {
          problems.guard("run(false)",
                         [&] { problems.expect(box.run(false, [&] { return inside(box); }), "run(false)"); });
        }
      });
      // Processes: poll, read, waitid and wait4 in run_in_process; clone,
      // read and waitid in spawn and Child.
      std::thread processes([&] {
        for (int i = 0; i < 10; ++i) {
          problems.guard("run_in_process",
                         [&] { problems.expect(box.run_in_process([&] { return inside(box); }), "run_in_process"); });
          problems.guard(
              "spawn", [&] { problems.expect(gonso::spawn(box, {"/bin/true"}).wait().success(), "spawn /bin/true"); });
        }
        for (int i = 0; i < 3; ++i) {
          problems.guard("run_in_process, big result", [&] {
            problems.expect(box.run_in_process([&] { return std::string(big); }) == big, "big result");
          });
          problems.guard("run_in_process, pid", [&] {
            problems.expect(pidset.run_in_process([&] { return inside(pidset); }), "run_in_process pid");
          });
          problems.guard("run_in_process, time", [&] {
            problems.expect(timeset.run_in_process([&] { return inside(timeset); }), "run_in_process time");
          });
          problems.guard("spawn, pid", [&] {
            problems.expect(gonso::spawn(pidset, {"/bin/true"}).wait().success(), "spawn into pid");
          });
          problems.guard("spawn, time", [&] {
            problems.expect(gonso::spawn(timeset, {"/bin/true"}).wait().success(), "spawn into time");
          });
          problems.guard("spawn, stdout", [&] {
            gonso::SpawnOptions out;
            out.out = gonso::Stdio::pipe;
            gonso::Child child = gonso::spawn(box, {"/bin/sh", "-c", "sleep 0.05; echo hi"}, out);
            problems.expect(child.read_stdout() == "hi\n", "spawn stdout");
            problems.expect(child.wait().success(), "spawn sh");
          });
        }
      });
      // This thread: unshare on both paths, the Pool, a long Child::wait.
      for (int i = 0; i < 5; ++i) {
        problems.guard("unshare(net)", [&] {
          const Set made = Set::current().unshare(Kind::net);
          problems.expect(made.identity(Kind::net) != base.caller().at(Kind::net) && land(made).inside, "unshare(net)");
        });
        problems.guard("pool", [&] {
          problems.expect(pool.wait_ready(std::chrono::seconds(30)), "pool wait_ready");
          const Set got = pool.get();
          problems.expect(got.identity(Kind::net) != base.caller().at(Kind::net), "pool get");
        });
      }
      for (const Kinds kinds : {Kinds(Kind::pid), Kind::user | Kind::net, Kinds(Kind::time)}) {
        for (int i = 0; i < 3; ++i) {
          problems.guard(fmt::format("unshare({})", kinds), [&] {
            const Set made = Set::current().unshare(kinds);
            problems.expect(made.run_in_process([&] { return inside(made); }), fmt::format("unshare({})", kinds));
          });
          // Nested in the pid namespace: the creator forks once more.
          problems.guard(fmt::format("unshare({}) from a pid Set", kinds), [&] {
            const Set made = pidset.unshare(kinds);
            problems.expect(made.run_in_process([&] { return inside(made); }),
                            fmt::format("unshare({}) from a pid Set", kinds));
          });
        }
      }
      problems.guard("Child::wait", [&] {
        problems.expect(gonso::spawn(box, {"/bin/sleep", "0.2"}).wait().success(), "sleep 0.2");
      });
      runs.join();
      processes.join();
      to_threads = storm.to_threads();
      to_children = storm.to_children();
    }
  }
  for (const std::string& p : problems.list()) UNSCOPED_INFO(p);
  CHECK(problems.list().empty());
  CHECK(interrupts.load() > 0);
  CHECK(to_threads > 0);
  UNSCOPED_INFO("EINTR storm: " << to_threads << " signals to threads, " << to_children << " to children; "
                                << interrupts.load() << " handled in this process");
  base.check();
}

// Set::run at its edges: errors that name the namespace, refusals before
// anything starts, nesting, many callers at once, nothing leaking (the one
// Baseline), forks, a Set without /proc, pid namespaces and thread limits,
// and runs while the process exits.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/baseline.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;

TEST_CASE("joining fails with the errno and the namespace named", "[privileged]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const test::Baseline base(test::Watch::fds);
  bool ran = false;
  // The new worker inherits its creator's missing capability.
  const test::Refusal refusal = test::refusal_on_unprivileged_thread([&] { net.run(false, [&] { ran = true; }); });
  CHECK(refusal.code == std::errc::operation_not_permitted);
  CHECK_THAT(refusal.message, Catch::StartsWith(fmt::format("cannot join net namespace {}", net.identity(Kind::net))));
  CHECK_FALSE(ran);
  base.check();
}

TEST_CASE("run() refuses user and foreign time namespaces before starting anything", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set net = Set::current().unshare(Kind::net);
  const test::Baseline base(test::Watch::threads);
  const Kind kind = GENERATE(Kind::user, Kind::time);
  const bool restore = GENERATE(true, false);
  DYNAMIC_SECTION(gonso::name(kind) << (restore ? " with restore" : " without restore")) {
    test::ForeignNamespaces holder(gonso::clone_flag(kind));
    // A Set that also holds a new net namespace, gathered through a folder of
    // links: the refusal must come before the worker joins that net.
    const test::TempDir dir;
    std::filesystem::create_symlink(holder.path(kind), dir.path() / gonso::name(kind));
    std::filesystem::create_symlink(fmt::format("/proc/self/fd/{}", net.fd(Kind::net)), dir.path() / "net");
    const Set mixed = Set::from_dir(dir.path(), kind | Kind::net);
    REQUIRE(mixed.identity(Kind::net) == net.identity(Kind::net));
    const std::size_t fds = test::count_fds();
    bool ran = false;
    try {
      mixed.run(restore, [&] { ran = true; });
      FAIL("ran in a foreign " << gonso::name(kind) << " namespace on a thread");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK_THAT(e.what(), Catch::StartsWith(fmt::format("cannot join {} namespace {} on a thread", gonso::name(kind),
                                                         mixed.identity(kind))) &&
                               Catch::Contains("child process"));
    }
    CHECK_FALSE(ran);
    CHECK(test::snapshot() == caller);
    // No worker was started or taken: the pool and the process look the same.
    CHECK(gonso::idle_workers() == 0);
    CHECK(base.threads_started() == 0);
    CHECK(test::count_fds() == fds);
  }
}

TEST_CASE("run() in the process's own user and time namespaces joins nothing for them", "[privileged]") {
  test::require_privilege();
  const Set all = Set::current(Kinds::all());
  const test::Snapshot inside = all.run(true, [] { return test::snapshot(); });
  CHECK(inside.at(Kind::user) == all.identity(Kind::user));
  CHECK(inside.at(Kind::time) == all.identity(Kind::time));
}

TEST_CASE("run() on an empty Set is a logic error") {
  Set moved = Set::current(Kind::net);
  Set other = std::move(moved);
  CHECK_THROWS_AS(moved.run(true, [] {}), std::logic_error);  // NOLINT(bugprone-use-after-move)
  CHECK_THROWS_WITH(Set{}.run(false, [] {}), Catch::Contains("empty Set"));
  CHECK_FALSE(other.empty());
}

TEST_CASE("runs nest: a callable may run code in another Set", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set net = Set::current().unshare(Kind::net);
  const Set uts = Set::current().unshare(Kind::uts);
  const auto seen = net.run(true, [&] {
    const auto inner = uts.run(true, [] { return test::snapshot(); });
    return std::pair(test::snapshot(), inner);
  });
  CHECK(seen.first.at(Kind::net) == net.identity(Kind::net));
  CHECK(seen.second.at(Kind::uts) == uts.identity(Kind::uts));
  CHECK(test::snapshot() == caller);
  CHECK(test::threads_outside(caller).empty());
}

TEST_CASE("many callers at once: every callable sees exactly its Set", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set here = Set::current();
  const std::vector<Set> sets{here.unshare(Kind::net), here.unshare(Kind::uts),
                              here.unshare(Kind::net | Kind::uts | Kind::ipc), here};
  constexpr int callers = 8;
  constexpr int runs = 1000;
  std::atomic<int> wrong{0}, moved{0}, done{0};
  std::vector<std::thread> threads;
  threads.reserve(callers);
  for (int c = 0; c < callers; ++c) {
    threads.emplace_back([&, c] {
      const test::Snapshot mine = test::snapshot();
      for (int i = 0; i < runs; ++i) {
        const Set& s = sets[static_cast<std::size_t>(i + c) % sets.size()];
        // Thread creation dominates runs without restore: one in eight.
        const bool restore = (i + c) % 8 != 0;
        const bool ok = s.run(restore, [&s] {
          for (Kind kind : {Kind::net, Kind::uts, Kind::ipc}) {
            if (test::thread_ns(kind) != s.identity(kind)) return false;
          }
          return true;
        });
        if (!ok) ++wrong;
        if (test::snapshot() != mine) ++moved;
        ++done;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(done == callers * runs);
  CHECK(wrong == 0);
  CHECK(moved == 0);
  CHECK(test::snapshot() == caller);
  CHECK(test::threads_outside(caller).empty());
}

TEST_CASE("nothing leaks: fds and threads return to their baseline", "[privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::threads);
  {
    const Set here = Set::current();
    const Set a = here.unshare(Kind::net | Kind::uts);
    const Set b = here.unshare(Kind::mnt);
    for (int i = 0; i < 50; ++i) {
      (void)a.run(i % 2 == 0, [] { return test::tid(); });
      (void)b.run(true, [] { return test::tid(); });
      try {
        a.run(true, [] { throw std::runtime_error("x"); });
      } catch (const std::runtime_error&) {
      }
    }
    CHECK(gonso::idle_workers() >= 1);
  }
  gonso::retire_idle_workers();
  CHECK(gonso::idle_workers() == 0);
  base.check();
}

TEST_CASE("a child forked while workers are pooled can still run in Sets", "[privileged][fork]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const pid_t parent_worker = net.run(true, [] { return test::tid(); });
  REQUIRE(gonso::idle_workers() >= 1);

  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The pooled workers did not come along; a stale pool would hand one out
    // and wait for it forever. The alarm turns such a hang into a failure.
    ::alarm(20);
    const auto [tid, inside] = net.run(true, [] { return std::pair(test::tid(), test::thread_ns(Kind::net)); });
    const bool ok = inside == net.identity(Kind::net) && tid != parent_worker && gonso::idle_workers() == 1;
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  INFO("child status " << status);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  // The parent's pool is untouched.
  CHECK(net.run(true, [] { return test::tid(); }) == parent_worker);
}

TEST_CASE("a Set whose mount namespace has no /proc can be run in and unshared from", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  // Like a container whose /proc is its own or absent: gonso must still name
  // the worker's namespaces through the host's /proc.
  test::ForeignNamespaces box(CLONE_NEWNS | CLONE_NEWUTS, /*hide_proc=*/true);
  const Set boxed = Set::from_pid(box.pid(), Kind::mnt | Kind::uts);
  const auto seen = boxed.run(
      true, [] { return std::pair(std::filesystem::exists("/proc/self"), Set::current(Kind::mnt | Kind::uts)); });
  CHECK_FALSE(seen.first);  // the callable really was in the box
  CHECK(seen.second == boxed);
  const Set fresh = boxed.unshare(Kind::uts);
  CHECK(fresh.identity(Kind::mnt) == boxed.identity(Kind::mnt));
  CHECK(fresh.identity(Kind::uts) != boxed.identity(Kind::uts));
  CHECK(fresh.identity(Kind::uts) != caller.at(Kind::uts));
  CHECK(test::snapshot() == caller);
}

TEST_CASE("a child forked by the callable that returns is ended, not left in gonso's loop", "[privileged]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  // The child must exec or _exit; if it returns, gonso ends it with a
  // failure status instead of letting it wait for work that never comes.
  const pid_t child = net.run(true, [] { return ::fork(); });
  if (child == 0) return;  // not reached: gonso ends the child
  REQUIRE(child > 0);
  int status = 0;
  pid_t reaped = 0;
  (void)test::eventually([&] { return (reaped = ::waitpid(child, &status, WNOHANG)) != 0; }, std::chrono::seconds(5));
  if (reaped == 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
    FAIL("the forked child was still alive after 5 s");
  }
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == EXIT_FAILURE);
}

TEST_CASE("a callable in a pid namespace cannot start threads, and says so", "[privileged]") {
  test::require_privilege();
  test::ForeignNamespaces holder(CLONE_NEWPID);
  const Set pidns = Set::from_file(Kind::pid, holder.path(Kind::pid));
  const Set uts = Set::current().unshare(Kind::uts);
  const std::string error = pidns.run(true, [&] {
    try {
      uts.run(false, [] {});  // needs a new thread
      return std::string("no error");
    } catch (const std::system_error& e) {
      return std::string(e.what());
    }
  });
  CHECK_THAT(error, Catch::StartsWith("cannot start a gonso worker thread"));
  CHECK_THAT(error, Catch::Contains("children go to another pid namespace"));
}

// The pid-namespace explanation is given only where it is the cause: a
// thread limit (here a pids cgroup holding the process at its size) says so.
TEST_CASE("a worker that hits a thread limit says which limit, not pid namespaces", "[privileged][process]") {
  test::require_privilege();
  const std::string pids_root = std::filesystem::exists("/sys/fs/cgroup/pids/cgroup.procs") ? "/sys/fs/cgroup/pids"
                                : std::filesystem::exists("/sys/fs/cgroup/cgroup.subtree_control") ? "/sys/fs/cgroup"
                                                                                                   : "";
  if (pids_root.empty()) FAIL("no pids cgroup controller is mounted at /sys/fs/cgroup/pids or /sys/fs/cgroup");
  const std::string group = fmt::format("{}/gonso-test-{}", pids_root, ::getpid());
  REQUIRE(::mkdir(group.c_str(), 0755) == 0);
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  // The child is single-threaded: the group holds it alone, and pids.max 1
  // lets it start no thread.
  const std::string message = net.run_in_process([&] {
    const auto write = [](const std::string& path, const std::string& text) {
      const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) return false;
      const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
      ::close(fd);
      return ok;
    };
    if (!write(group + "/pids.max", "1") || !write(group + "/cgroup.procs", std::to_string(::getpid()))) {
      return std::string("cannot enter the test's pids cgroup");
    }
    try {
      (void)Set::current(Kind::uts).run(true, [] { return 0; });
      return std::string("no error");
    } catch (const std::system_error& e) {
      return std::string(e.what());
    }
  });
  CHECK(::rmdir(group.c_str()) == 0);
  CHECK_THAT(message, Catch::StartsWith("cannot start a gonso worker thread"));
  CHECK_THAT(message, Catch::Contains("a limit on threads was reached"));
  CHECK_THAT(message, !Catch::Contains("pid namespace"));
}

TEST_CASE("runs started while the process exits still work", "[privileged][fork]") {
  test::require_privilege();
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::alarm(20);
    static const Set* net = nullptr;
    net = new Set(Set::current().unshare(Kind::net));  // NOLINT: outlives main on purpose
    std::atexit([] {
      const bool ok = net->run(true, [] { return test::thread_ns(Kind::net); }) == net->identity(Kind::net);
      if (!ok) ::_exit(3);
    });
    std::exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  INFO("status " << status);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("a Set from a pidfd is joined whether or not its process still lives", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  std::optional<Set> held;
  {
    test::ForeignNamespaces child(CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC);
    gonso::detail::unique_fd pidfd(gonso::detail::pidfd_open(child.pid()));
    REQUIRE(pidfd);
    const Set s = Set::from_pidfd(pidfd.get(), Kind::net | Kind::uts | Kind::ipc);
    // While the process lives, one setns(2) on the pidfd may join all three.
    const test::Snapshot inside = s.run(true, [] { return test::snapshot(); });
    for (Kind kind : {Kind::net, Kind::uts, Kind::ipc}) {
      INFO(gonso::name(kind));
      CHECK(inside.at(kind) == s.identity(kind));
      CHECK(inside.at(kind) != caller.at(kind));
    }
    held = s;
  }
  // The process is gone; the Set's fds still hold its namespaces, and the
  // join falls back to them.
  const test::Snapshot inside = held->run(true, [] { return test::snapshot(); });
  for (Kind kind : {Kind::net, Kind::uts, Kind::ipc}) {
    INFO(gonso::name(kind));
    CHECK(inside.at(kind) == held->identity(kind));
  }
  CHECK(test::snapshot() == caller);
  CHECK(test::threads_outside(caller).empty());
}

// Set::run: the callable sees exactly the Set's namespaces, the caller never
// moves, workers are reused only when restored, results and errors cross back.
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

#include "support/fixtures.hpp"
#include "support/baseline.hpp"
#include "support/kernel_view.hpp"
#include "support/privilege.hpp"

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;

namespace {

constexpr Kind thread_joinable[] = {Kind::cgroup, Kind::ipc, Kind::mnt, Kind::net, Kind::uts};

struct Payload {
  int code;
  std::string text;
};

struct MoveOnly {
  std::unique_ptr<int> value;
};

}  // namespace

TEST_CASE("run() joins each kind a thread can join, and the caller never moves", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set here = Set::current();
  const bool restore = GENERATE(true, false);
  for (Kind kind : thread_joinable) {
    DYNAMIC_SECTION(gonso::name(kind) << (restore ? " with restore" : " without restore")) {
      const Set fresh = here.unshare(kind);
      REQUIRE(fresh.identity(kind) != caller.at(kind));
      const gonso::Identity inside = fresh.run(restore, [kind] { return test::thread_ns(kind); });
      CHECK(inside == fresh.identity(kind));
      CHECK(inside != caller.at(kind));
      CHECK(test::snapshot() == caller);
    }
  }
}

TEST_CASE("run() joins every kind of a Set at once", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set fresh = Set::current().unshare(Kind::cgroup | Kind::ipc | Kind::mnt | Kind::net | Kind::uts);
  const test::Snapshot inside = fresh.run(true, [] { return test::snapshot(); });
  for (Kind kind : thread_joinable) {
    INFO(gonso::name(kind));
    CHECK(inside.at(kind) == fresh.identity(kind));
    CHECK(inside.at(kind) != caller.at(kind));
  }
  // Kinds the Set carried over unchanged are not joined, yet equal.
  CHECK(inside.at(Kind::pid) == fresh.identity(Kind::pid));
  CHECK(inside.at(Kind::time) == fresh.identity(Kind::time));
  CHECK(test::snapshot() == caller);
}

TEST_CASE("run() in a pid namespace sends the worker's children there", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  test::ForeignNamespaces holder(CLONE_NEWPID);  // its child is pid 1 there
  const Set pidns = Set::from_file(Kind::pid, holder.path(Kind::pid));
  REQUIRE(pidns.identity(Kind::pid) != caller.at(Kind::pid));

  struct Seen {
    gonso::Identity for_children;
    gonso::Identity own;
    pid_t child_pid_inside;
    gonso::Identity child_ns;
  };
  const Seen seen = pidns.run(true, [] {
    Seen s{test::thread_ns(Kind::pid), test::identity_at(Kind::pid, "/proc/thread-self/ns/pid"), -1, {}};
    int report[2];
    if (::pipe2(report, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    const pid_t child = ::fork();
    if (child == 0) {
      struct stat st {};
      const pid_t mine = ::getpid();
      ::stat("/proc/self/ns/pid", &st);
      const bool ok = ::write(report[1], &mine, sizeof mine) == sizeof mine &&
                      ::write(report[1], &st.st_ino, sizeof st.st_ino) == sizeof st.st_ino &&
                      ::write(report[1], &st.st_dev, sizeof st.st_dev) == sizeof st.st_dev;
      ::_exit(ok ? 0 : 1);
    }
    ::close(report[1]);
    if (child > 0) {
      ino_t ino = 0;
      dev_t dev = 0;
      const bool ok = ::read(report[0], &s.child_pid_inside, sizeof(pid_t)) == sizeof(pid_t) &&
                      ::read(report[0], &ino, sizeof ino) == sizeof ino &&
                      ::read(report[0], &dev, sizeof dev) == sizeof dev;
      ::waitpid(child, nullptr, 0);
      if (ok) s.child_ns = gonso::Identity{Kind::pid, dev, ino};
    }
    ::close(report[0]);
    return s;
  });
  CHECK(seen.for_children == pidns.identity(Kind::pid));
  CHECK(seen.own == caller.at(Kind::pid));  // the thread itself stays where it was
  CHECK(seen.child_ns == pidns.identity(Kind::pid));
  CHECK(seen.child_pid_inside > 1);  // pid 1 is the holder's init
  CHECK(test::snapshot() == caller);
}

TEST_CASE("with restore, the next run reuses the same thread, back in its own namespaces", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set here = Set::current();
  const Set net = here.dup(Kind::net).unshare(Kind::net);
  const Set uts = here.dup(Kind::uts).unshare(Kind::uts);

  const pid_t first = net.run(true, [] { return test::tid(); });
  struct Seen {
    pid_t tid;
    test::Snapshot ns;
  };
  const Seen second = uts.run(true, [] { return Seen{test::tid(), test::snapshot()}; });
  CHECK(second.tid == first);
  // The worker left net's namespace: a Set without net sees the caller's net.
  CHECK(second.ns.at(Kind::net) == caller.at(Kind::net));
  CHECK(second.ns.at(Kind::uts) == uts.identity(Kind::uts));
  const pid_t third = here.run(true, [] { return test::tid(); });
  CHECK(third == first);
  CHECK(test::threads_outside(caller).empty());
}

TEST_CASE("without restore, or when the callable discards it, each run has a new thread", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set net = Set::current().unshare(Kind::net);
  // Workers other tests left idle would be taken in turn by the runs below.
  gonso::retire_idle_workers();
  const pid_t pooled = net.run(true, [] { return test::tid(); });
  const std::size_t idle = gonso::idle_workers();
  REQUIRE(idle == 1);

  std::vector<pid_t> tids;
  SECTION("restore false: the pooled worker is left alone") {
    for (int i = 0; i < 5; ++i) {
      tids.push_back(net.run(false, [](gonso::RunContext& ctx) {
        if (ctx.will_restore()) throw std::logic_error("will_restore() on a run without restore");
        return test::tid();
      }));
    }
    for (pid_t t : tids) CHECK(t != pooled);
    CHECK(gonso::idle_workers() == idle);
    CHECK(net.run(true, [] { return test::tid(); }) == pooled);
  }
  SECTION("the callable votes to discard its thread, pooled or new") {
    // The C++ spelling of Go gonso's `return false`.
    for (int i = 0; i < 5; ++i) {
      tids.push_back(net.run(true, [](gonso::RunContext& ctx) {
        const bool before = ctx.will_restore();
        ctx.discard_thread();
        if (!before || ctx.will_restore()) throw std::logic_error("will_restore() does not follow the vote");
        return test::tid();
      }));
    }
    CHECK(tids[0] == pooled);  // the most recently pooled worker ran first, then ended
    CHECK(gonso::idle_workers() == idle - 1);
    CHECK(net.run(true, [] { return test::tid(); }) != pooled);
  }
  REQUIRE(tids.size() == 5);
  for (std::size_t i = 0; i < tids.size(); ++i) {
    CHECK(test::thread_ended(tids[i]));
    for (std::size_t j = i + 1; j < tids.size(); ++j) CHECK(tids[i] != tids[j]);
  }
  CHECK(test::threads_outside(caller).empty());
}

TEST_CASE("a thread that joined a mount namespace is never reused", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const std::filesystem::path cwd = std::filesystem::current_path();
  const Set mnt = Set::current().unshare(Kind::mnt);
  std::vector<pid_t> tids;
  for (int i = 0; i < 3; ++i) {
    const auto [tid, inside] = mnt.run(true, [] { return std::pair(test::tid(), test::thread_ns(Kind::mnt)); });
    CHECK(inside == mnt.identity(Kind::mnt));
    tids.push_back(tid);
  }
  CHECK(tids[0] != tids[1]);
  CHECK(tids[1] != tids[2]);
  CHECK(tids[0] != tids[2]);
  CHECK(test::thread_ended(tids[2]));
  // The worker's private root and cwd never leak to the process.
  CHECK(std::filesystem::current_path() == cwd);
  CHECK(test::snapshot() == caller);

  SECTION("but a Set holding the worker's own mount namespace needs no join and stays reusable") {
    const Set here = Set::current();
    const pid_t a = here.run(true, [] { return test::tid(); });
    const pid_t b = here.run(true, [] { return test::tid(); });
    CHECK(a == b);
  }
}

TEST_CASE("a restore that fails discards the thread", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set net = Set::current().unshare(Kind::net);
  const Set uts = Set::current().dup(Kind::uts);

  // Without CAP_SYS_ADMIN the worker cannot setns() back (the README's kernel rules).
  const pid_t crippled = net.run(true, [] {
    test::drop_cap_sys_admin_on_this_thread();
    return test::tid();
  });
  CHECK(test::thread_ended(crippled));
  const pid_t next = uts.run(true, [] { return test::tid(); });
  CHECK(next != crippled);
  CHECK(test::threads_outside(caller).empty());
  CHECK(test::snapshot() == caller);
}

TEST_CASE("a callable that moves its own thread is put back or discarded", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set uts = Set::current().unshare(Kind::uts);

  SECTION("unshare of a kind not in the Set is undone by restore") {
    const pid_t a = uts.run(true, [] {
      if (::unshare(CLONE_NEWNET) != 0) throw std::system_error(errno, std::generic_category(), "unshare");
      return test::tid();
    });
    const auto after = uts.run(true, [] { return std::pair(test::tid(), test::thread_ns(Kind::net)); });
    CHECK(after.first == a);
    CHECK(after.second == caller.at(Kind::net));
  }
  SECTION("a mount namespace of its own cannot be undone: the thread ends") {
    const pid_t a = uts.run(true, [] {
      if (::unshare(CLONE_NEWNS) != 0) throw std::system_error(errno, std::generic_category(), "unshare");
      return test::tid();
    });
    CHECK(test::thread_ended(a));
  }
  CHECK(test::threads_outside(caller).empty());
}

TEST_CASE("exceptions cross back to the caller intact", "[privileged]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const pid_t worker = net.run(true, [] { return test::tid(); });

  CHECK_THROWS_WITH(net.run(true, [] { throw std::runtime_error("boom"); }), "boom");
  try {
    net.run(true, []() -> int { throw Payload{7, "seven"}; });
    FAIL("nothing thrown");
  } catch (const Payload& p) {
    CHECK(p.code == 7);
    CHECK(p.text == "seven");
  }
  try {
    net.run(false, [] { throw std::system_error(make_error_code(std::errc::device_or_resource_busy), "mine"); });
    FAIL("nothing thrown");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::device_or_resource_busy);
  }
  CHECK_THROWS_AS(net.run(true, [] { throw 42; }), int);
  // An exception is an outcome, not a broken thread: the worker was restored.
  CHECK(net.run(true, [] { return test::tid(); }) == worker);
}

TEST_CASE("results of any movable type come back", "[privileged]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  int calls = 0;
  net.run(true, [&] { ++calls; });
  CHECK(calls == 1);
  CHECK(net.run(true, [] { return 41 + 1; }) == 42);
  CHECK(net.run(false, [] { return std::string(1000, 'x'); }) == std::string(1000, 'x'));
  const std::unique_ptr<int> p = net.run(true, [] { return std::make_unique<int>(5); });
  REQUIRE(p);
  CHECK(*p == 5);
  const MoveOnly m = net.run(true, [] { return MoveOnly{std::make_unique<int>(6)}; });
  CHECK(*m.value == 6);
  // A mutable lvalue callable keeps its state across runs: run() takes it by reference.
  auto counter = [n = 0]() mutable { return ++n; };
  CHECK(net.run(true, counter) == 1);
  CHECK(net.run(true, counter) == 2);
}

TEST_CASE("joining fails with the errno and the namespace named", "[privileged]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const std::size_t fds = test::count_fds();
  bool ran = false;
  // The new worker inherits its creator's missing capability.
  const test::Refusal refusal = test::refusal_on_unprivileged_thread([&] { net.run(false, [&] { ran = true; }); });
  CHECK(refusal.code == std::errc::operation_not_permitted);
  CHECK_THAT(refusal.message, Catch::StartsWith(fmt::format("cannot join net namespace {}", net.identity(Kind::net))));
  CHECK_FALSE(ran);
  CHECK(test::count_fds() == fds);
}

TEST_CASE("run() refuses user and foreign time namespaces before starting anything", "[privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set net = Set::current().unshare(Kind::net);
  gonso::retire_idle_workers();
  const std::size_t threads = test::count_threads();
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
    CHECK(test::count_threads() == threads);
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
  for (int i = 0; i < 500 && reaped == 0; ++i) {
    reaped = ::waitpid(child, &status, WNOHANG);
    if (reaped == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
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

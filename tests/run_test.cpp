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

#include "support/baseline.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/privilege.hpp"

using gonso::Kind;
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

// gonso::Executor: a thread that joins a Set once and runs many callables
// there. Identities are read from /proc inside the callables and compared
// with what the Set holds; the caller's own namespaces never change.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <filesystem>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <gonso/executor.hpp>
#include <gonso/workers.hpp>

#include "support/baseline.hpp"
#include "support/kernel_view.hpp"
#include "support/privilege.hpp"

using gonso::Executor;
using gonso::Kind;
using gonso::Set;

namespace {

/// What a callable saw: its thread, and every kind a thread carries.
struct Inside {
  pid_t tid = 0;
  test::Snapshot ns;
};

Inside look() { return Inside{test::tid(), test::snapshot()}; }

/// Threads of the process outside `caller`'s namespaces, as a count: the
/// executor's two threads are there while it lives. An executor thread that
/// was ended may still be on its way out (see test::exit_bound).
std::size_t foreign_threads(const test::Snapshot& caller, std::size_t expected) {
  const auto count = [&] {
    std::set<std::string> tids;
    for (const std::string& line : test::threads_outside_now(caller)) tids.insert(line.substr(0, line.find(' ', 4)));
    return tids.size();
  };
  std::size_t now = count();
  (void)test::eventually([&] { return (now = count()) <= expected; }, test::exit_bound);
  return now;
}

}  // namespace

TEST_CASE("executor: every run is inside the Set, on the same thread, and the caller never moves",
          "[executor][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set set = Set::current().unshare(Kind::net | Kind::uts | Kind::ipc);
  Executor ex(set);
  std::set<pid_t> tids;
  for (int i = 0; i < 50; ++i) {
    const Inside in = ex.run(look);
    tids.insert(in.tid);
    for (Kind kind : {Kind::net, Kind::uts, Kind::ipc}) {
      INFO("run " << i << ", " << gonso::name(kind));
      CHECK(in.ns.at(kind) == set.identity(kind));
      CHECK(in.ns.at(kind) != caller.at(kind));
    }
    // What the Set carried over is the caller's.
    for (Kind kind : {Kind::mnt, Kind::cgroup, Kind::pid}) CHECK(in.ns.at(kind) == caller.at(kind));
  }
  CHECK(tids.size() == 1);
  CHECK(tids.count(test::tid()) == 0);
  CHECK(test::snapshot() == caller);
  CHECK(&ex.set() != &set);
  CHECK(ex.set() == set);
}

TEST_CASE("executor: values, move-only values, exceptions and RunContext cross back", "[executor][privileged]") {
  test::require_privilege();
  const Set set = Set::current().unshare(Kind::net);
  const Executor ex(set);
  CHECK(ex.run([] { return 42; }) == 42);
  CHECK(ex.run([] { return std::string("inside"); }) == "inside");
  const auto p = ex.run([] { return std::make_unique<int>(7); });
  REQUIRE(p);
  CHECK(*p == 7);
  CHECK_THROWS_WITH(ex.run([]() -> int { throw std::runtime_error("from the executor"); }), "from the executor");
  bool restoring = false;
  ex.run([&](gonso::RunContext& ctx) { restoring = ctx.will_restore(); });
  CHECK(restoring);
  // It still works after the exception.
  CHECK(ex.run([] { return test::thread_ns(Kind::net); }) == set.identity(Kind::net));
}

TEST_CASE("executor: runs from many threads happen one at a time, each caller's in order", "[executor][privileged]") {
  test::require_privilege();
  const Set set = Set::current().unshare(Kind::uts);
  const Executor ex(set);
  constexpr int callers = 4;
  constexpr int runs = 100;
  std::atomic<int> inside{0};
  std::atomic<int> most_inside{0};
  std::vector<std::pair<int, int>> order;  // touched only by callables, which never overlap
  std::vector<std::string> wrong(callers);
  {
    std::vector<std::jthread> threads;
    threads.reserve(callers);
    for (int c = 0; c < callers; ++c) {
      threads.emplace_back([&, c] {
        for (int r = 0; r < runs; ++r) {
          const gonso::Identity seen = ex.run([&] {
            const int now = ++inside;
            int most = most_inside.load();
            while (now > most && !most_inside.compare_exchange_weak(most, now)) {
            }
            order.emplace_back(c, r);
            const gonso::Identity id = test::thread_ns(Kind::uts);
            --inside;
            return id;
          });
          if (seen != set.identity(Kind::uts)) wrong[static_cast<std::size_t>(c)] += fmt::format("run {} ", r);
        }
      });
    }
  }
  CHECK(most_inside.load() == 1);
  REQUIRE(order.size() == static_cast<std::size_t>(callers * runs));
  std::vector<int> next(callers, 0);
  for (const auto& [c, r] : order) {
    CHECK(r == next[static_cast<std::size_t>(c)]);
    next[static_cast<std::size_t>(c)] = r + 1;
  }
  for (const std::string& w : wrong) CHECK(w.empty());
}

TEST_CASE("executor: a callable that moves its thread does not move the next one", "[executor][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set set = Set::current().unshare(Kind::net);
  const Executor ex(set);
  const pid_t first = ex.run(test::tid);

  SECTION("unshare and setns of kinds the pidfd covers are undone in place") {
    ex.run([] {
      if (::unshare(CLONE_NEWNET | CLONE_NEWUTS) != 0) throw std::system_error(errno, std::generic_category());
    });
    const Inside in = ex.run(look);
    CHECK(in.tid == first);
    CHECK(in.ns.at(Kind::net) == set.identity(Kind::net));
    CHECK(in.ns.at(Kind::uts) == caller.at(Kind::uts));
  }
  SECTION("a mount namespace of its own ends the thread; the next run gets a fresh one in the Set") {
    ex.run([] {
      if (::unshare(CLONE_NEWNS) != 0) throw std::system_error(errno, std::generic_category());
    });
    const Inside in = ex.run(look);
    CHECK(in.tid != first);
    CHECK(in.ns.at(Kind::net) == set.identity(Kind::net));
    CHECK(in.ns.at(Kind::mnt) == caller.at(Kind::mnt));
  }
  SECTION("discard_thread ends the thread; the next run gets a fresh one in the Set") {
    ex.run([](gonso::RunContext& ctx) { ctx.discard_thread(); });
    const Inside in = ex.run(look);
    CHECK(in.tid != first);
    CHECK(in.ns.at(Kind::net) == set.identity(Kind::net));
  }
  // The executor's thread and the anchor that holds the Set, nothing else.
  CHECK(foreign_threads(caller, 2) == 2);
  CHECK(test::snapshot() == caller);
}

TEST_CASE("executor: in a mount namespace, every run starts at its root whatever the last one did",
          "[executor][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set set = Set::current().unshare(Kind::mnt | Kind::net);
  const Executor ex(set);
  const std::string cwd_outside = std::filesystem::current_path().string();
  const Inside first = ex.run(look);
  CHECK(first.ns.at(Kind::mnt) == set.identity(Kind::mnt));
  CHECK(first.ns.at(Kind::net) == set.identity(Kind::net));
  ex.run([] {
    if (::chdir("/proc") != 0) throw std::system_error(errno, std::generic_category(), "chdir");
  });
  const auto [tid, cwd] = ex.run([] { return std::pair(test::tid(), std::filesystem::current_path().string()); });
  CHECK(tid == first.tid);
  CHECK(cwd == "/");
  // The caller's cwd is its own: the executor's thread has root and cwd of its own.
  CHECK(std::filesystem::current_path().string() == cwd_outside);
  CHECK(test::snapshot() == caller);
}

TEST_CASE("executor: destruction joins its threads and closes its fds", "[executor][leak][privileged]") {
  test::require_privilege();
  const Set set = Set::current().unshare(Kind::net);
  // Retires the unshare's worker, which is not what this test counts.
  const test::Baseline base(test::Watch::namespaces | test::Watch::fds | test::Watch::threads);
  {
    Executor ex(set);
    CHECK(ex.run([] { return test::thread_ns(Kind::net); }) == set.identity(Kind::net));
    CHECK(base.threads_started() == 2);
    Executor moved(std::move(ex));
    CHECK(moved.run([] { return test::thread_ns(Kind::net); }) == set.identity(Kind::net));
    // A moved-from executor says so instead of crashing.
    CHECK_THROWS_AS(ex.run([] {}), std::logic_error);  // NOLINT(bugprone-use-after-move): on purpose
  }
  CHECK(base.no_thread_left());  // joined by the destructor
  base.check();
}

TEST_CASE("executor: bad Sets and missing privilege fail with a clear error and leave nothing behind",
          "[executor][privileged]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  // Retires the unshare's worker, which is not what this test counts.
  const test::Baseline base(test::Watch::fds | test::Watch::threads);
  CHECK_THROWS_AS(Executor(Set()), std::logic_error);
  CHECK(base.no_thread_left());

  const test::Refusal refusal = test::refusal_on_unprivileged_thread([&] { const Executor ex(net); });
  CHECK(refusal.code == std::errc::operation_not_permitted);
  CHECK_THAT(refusal.message, Catch::StartsWith(fmt::format("cannot join net namespace {}", net.identity(Kind::net))));
  CHECK(base.no_thread_left());
  base.check();
}

TEST_CASE("executor: a foreign user namespace is refused before any thread starts", "[executor][process]") {
  test::require_privilege();
  const Set user = Set::current().unshare(Kind::user | Kind::net);
  const test::Baseline base(test::Watch::threads);
  try {
    const Executor ex(user);
    FAIL("an executor joined a foreign user namespace");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("run_in_process"));
  }
  CHECK(base.no_thread_left());
}

TEST_CASE("executor: without verify_each_run, runs stay in the Set and discard_thread still ends the thread",
          "[executor][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set set = Set::current().unshare(Kind::net | Kind::uts);
  const Executor ex(set, gonso::ExecutorOptions{.verify_each_run = false});
  std::set<pid_t> tids;
  for (int i = 0; i < 20; ++i) {
    const Inside in = ex.run(look);
    tids.insert(in.tid);
    CHECK(in.ns.at(Kind::net) == set.identity(Kind::net));
    CHECK(in.ns.at(Kind::uts) == set.identity(Kind::uts));
  }
  CHECK(tids.size() == 1);
  ex.run([](gonso::RunContext& ctx) { ctx.discard_thread(); });
  const Inside fresh = ex.run(look);
  CHECK(tids.count(fresh.tid) == 0);
  CHECK(fresh.ns.at(Kind::net) == set.identity(Kind::net));
  CHECK(fresh.ns.at(Kind::uts) == set.identity(Kind::uts));
  CHECK(test::snapshot() == caller);
}

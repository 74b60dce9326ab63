// The worker pool behind Set::run under load: it never keeps a worker that
// sits in a namespace other than the process's own, runs racing idle
// timeouts and many mixed runs leak nothing (the one Baseline), and waiting
// or idle workers use no CPU. Namespaces are read from /proc, never through
// gonso; threads and fds are counted in /proc/self.
#include <sys/types.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <exception>
#include <latch>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <gonso/set.hpp>
#include <gonso/workers.hpp>

#include "support/baseline.hpp"
#include "support/kernel_view.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"
#include "support/workers.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using gonso::Kind;
using test::long_timeout;
using test::PoolGuard;
using test::Seen;
using test::seen_in;
using test::text;
using test::threads_outside;
using test::with_workers;

TEST_CASE("workers: a worker created in a foreign namespace is never pooled", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({4, long_timeout});
  const gonso::Set s = gonso::Set::current().unshare(Kind::net);
  const gonso::Set uts_only = gonso::Set::current().unshare(Kind::uts).dup(Kind::uts);
  REQUIRE(uts_only.kinds() == gonso::Kinds(Kind::uts));
  gonso::retire_idle_workers();  // so that the inner run must create a worker

  const test::Snapshot caller = test::snapshot();
  const std::size_t threads_before = test::thread_baseline();
  REQUIRE(text(s.identity(Kind::net)) != text(caller.at(Kind::net)));

  struct Nested {
    Seen outer;  // net, as the outer run saw it
    Seen inner_uts;
    gonso::Identity inner_net;
  };
  const Nested nested = s.run(true, [&] {
    Nested n;
    n.outer = Seen{test::tid(), test::thread_ns(Kind::net)};
    // The pool is empty: the inner worker is created here, by a thread in
    // s's net namespace, and a new thread inherits its creator's namespaces.
    const auto inner = uts_only.run(true, [] {
      return std::pair{Seen{test::tid(), test::thread_ns(Kind::uts)}, test::thread_ns(Kind::net)};
    });
    n.inner_uts = inner.first;
    n.inner_net = inner.second;
    return n;
  });

  CHECK(text(nested.outer.id) == text(s.identity(Kind::net)));
  CHECK(text(nested.inner_uts.id) == text(uts_only.identity(Kind::uts)));
  CHECK(nested.inner_uts.tid != nested.outer.tid);
  // The premise: the inner worker did start in s's net namespace.
  REQUIRE(text(nested.inner_net) == text(s.identity(Kind::net)));
  CHECK(text(test::snapshot()) == text(caller));

  // No thread of the process, pooled or not, is left in a foreign namespace:
  // the inner worker ended, the outer one went back and is the only one kept.
  CHECK(threads_outside(caller) == std::vector<std::string>{});
  const std::size_t idle = gonso::idle_workers();
  CHECK(idle == 1);
  CHECK(test::threads_settled_at(with_workers(threads_before, idle)) == with_workers(threads_before, idle));

  // The next run on the uts-only Set gets a worker in the caller's net.
  const auto later = uts_only.run(true, [] {
    return std::pair{test::thread_ns(Kind::uts), test::thread_ns(Kind::net)};
  });
  CHECK(text(later.first) == text(uts_only.identity(Kind::uts)));
  CHECK(text(later.second) == text(caller.at(Kind::net)));
  CHECK(threads_outside(caller) == std::vector<std::string>{});
  CHECK(text(test::snapshot()) == text(caller));
}

// Idle timeouts so short that workers time out while callers are taking them
// from the pool: retire_self() races acquire() and release() all the time.
TEST_CASE("workers: runs from several threads racing idle timeouts", "[workers][leak][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({2, long_timeout});
  const gonso::Set uts = gonso::Set::current().unshare(Kind::uts);
  const gonso::Set net = gonso::Set::current().unshare(Kind::net);
  gonso::retire_idle_workers();
  const test::Baseline base(test::Watch::fds | test::Watch::threads);
  const test::Snapshot caller = test::snapshot();

  gonso::set_worker_policy({2, 1ms});
  constexpr std::size_t callers = 4;
  constexpr std::size_t runs_each = 50;
  std::vector<std::vector<std::string>> wrong(callers);
  {
    std::vector<std::jthread> threads;
    for (std::size_t i = 0; i < callers; ++i) {
      threads.emplace_back([&, i] {
        for (std::size_t r = 0; r < runs_each; ++r) {
          const gonso::Set& set = (i + r) % 2 == 0 ? uts : net;
          const Kind kind = (i + r) % 2 == 0 ? Kind::uts : Kind::net;
          try {
            const Seen seen = seen_in(set, kind);
            if (seen.id != set.identity(kind)) {
              wrong[i].push_back(fmt::format("run {}: inside {}, Set {}", r, text(seen.id), text(set.identity(kind))));
            }
          } catch (const std::exception& e) {
            wrong[i].push_back(fmt::format("run {} threw: {}", r, e.what()));
          }
          // Pauses around the timeout, so that some workers time out between
          // runs and some are taken just as they do.
          std::this_thread::sleep_for(500us * ((i + r) % 4));
        }
      });
    }
  }
  for (std::size_t i = 0; i < callers; ++i) {
    INFO("caller " << i);
    CHECK(wrong[i] == std::vector<std::string>{});
  }
  CHECK(text(test::snapshot()) == text(caller));

  gonso::retire_idle_workers();
  CHECK(gonso::idle_workers() == 0);
  base.check();
  CHECK(threads_outside(caller) == std::vector<std::string>{});
}

TEST_CASE("workers: many mixed runs leak no fd and no thread", "[workers][leak][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({4, long_timeout});
  const test::Baseline base(test::Watch::fds | test::Watch::threads);
  const test::Snapshot caller = test::snapshot();

  constexpr std::size_t runs = 200;
  std::vector<std::string> wrong;
  {
    // A Set of each sort: one restorable kind, two at once, and mnt, whose
    // workers are never reused (the README's kernel rules, "Mount").
    const std::vector<std::pair<gonso::Set, gonso::Kinds>> sets = [] {
      std::vector<std::pair<gonso::Set, gonso::Kinds>> v;
      for (gonso::Kinds kinds : {gonso::Kinds(Kind::uts), Kind::net | Kind::ipc, gonso::Kinds(Kind::mnt)}) {
        v.emplace_back(gonso::Set::current().unshare(kinds), kinds);
      }
      return v;
    }();
    for (std::size_t i = 0; i < runs; ++i) {
      const auto& [set, fresh] = sets[i % sets.size()];
      const bool restore = (i / sets.size()) % 2 == 0;
      const test::Snapshot inside = set.run(restore, [] { return test::snapshot(); });
      for (Kind kind : set.kinds()) {
        if (inside.at(kind) != set.identity(kind)) {
          wrong.push_back(fmt::format("run {} (restore {}): inside {}, Set {}", i, restore, text(inside.at(kind)),
                                      text(set.identity(kind))));
        }
      }
      for (Kind kind : fresh) {
        if (set.identity(kind) == caller.at(kind)) wrong.push_back(fmt::format("run {}: {} not fresh", i, kind));
      }
    }
    CHECK(text(test::snapshot()) == text(caller));
  }  // destroys the Sets
  CHECK(wrong == std::vector<std::string>{});

  gonso::retire_idle_workers();
  CHECK(gonso::idle_workers() == 0);
  base.check();
  CHECK(threads_outside(caller) == std::vector<std::string>{});
  CHECK(text(test::snapshot()) == text(caller));
}

namespace {

/// CPU time a clock has used: CLOCK_THREAD_CPUTIME_ID for the calling thread,
/// CLOCK_PROCESS_CPUTIME_ID for every thread of the process.
std::chrono::nanoseconds cpu_time(clockid_t clock) {
  timespec ts{};
  if (::clock_gettime(clock, &ts) != 0) throw std::system_error(errno, std::generic_category(), "clock_gettime");
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

}  // namespace

TEST_CASE("workers: the spin budget round-trips, is clamped, and a negative one is refused", "[workers]") {
  PoolGuard guard;
  gonso::set_worker_policy({.max_idle = 2, .idle_timeout = 1s, .spin = 123us});
  CHECK(gonso::worker_policy().spin == 123us);
  gonso::set_worker_policy({.max_idle = 2, .idle_timeout = 1s, .spin = 1h});
  CHECK(gonso::worker_policy().spin == 10ms);
  CHECK_THROWS_WITH(gonso::set_worker_policy({.max_idle = 2, .idle_timeout = 1s, .spin = -1us}),
                    Contains("spin") && Contains("negative"));
  CHECK(gonso::worker_policy().spin == 10ms);
}

TEST_CASE("workers: a caller waiting for a long callable sleeps instead of spinning", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({.max_idle = 2, .idle_timeout = long_timeout, .spin = 10ms});  // the longest budget
  const gonso::Set uts = gonso::Set::current().unshare(Kind::uts);
  constexpr auto callable_sleeps = 400ms;
  for (const bool restore : {true, false}) {
    INFO("restore " << restore);
    const auto before = cpu_time(CLOCK_THREAD_CPUTIME_ID);
    const gonso::Identity seen = uts.run(restore, [&] {
      std::this_thread::sleep_for(callable_sleeps);
      return test::thread_ns(Kind::uts);
    });
    const auto used = cpu_time(CLOCK_THREAD_CPUTIME_ID) - before;
    CHECK(seen == uts.identity(Kind::uts));
    // At most one spin budget, plus the work of a run; far from the 400 ms
    // that spinning through the callable would burn.
    CHECK(used < callable_sleeps / 4);
  }
}

TEST_CASE("workers: idle workers and their anchor use no CPU", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({.max_idle = 4, .idle_timeout = long_timeout, .spin = 10ms});
  const gonso::Set net = gonso::Set::current().unshare(Kind::net);
  // Several workers idle at once, each past its spin budget.
  {
    std::latch all_inside(3);
    std::vector<std::jthread> callers;
    callers.reserve(3);
    for (int i = 0; i < 3; ++i) {
      callers.emplace_back([&] { (void)net.run(true, [&] { all_inside.arrive_and_wait(); }); });
    }
  }
  REQUIRE(gonso::idle_workers() == 3);
  std::this_thread::sleep_for(50ms);
  const auto before = cpu_time(CLOCK_PROCESS_CPUTIME_ID);
  std::this_thread::sleep_for(500ms);
  const auto used = cpu_time(CLOCK_PROCESS_CPUTIME_ID) - before;
  // Three spinning workers would burn up to 1.5 s of CPU in 500 ms.
  CHECK(used < 50ms);
  CHECK(gonso::idle_workers() == 3);
  // And they still answer at once.
  CHECK(net.run(true, [] { return test::thread_ns(Kind::net); }) == net.identity(Kind::net));
}

TEST_CASE("workers: with no spin at all, hand-offs sleep and wake and runs stay correct", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({.max_idle = 2, .idle_timeout = long_timeout, .spin = 0us});
  const gonso::Set net = gonso::Set::current().unshare(Kind::net);
  const test::Snapshot caller = test::snapshot();
  std::set<pid_t> tids;
  for (int i = 0; i < 20; ++i) {
    const Seen seen = seen_in(net, Kind::net);
    tids.insert(seen.tid);
    CHECK(text(seen.id) == text(net.identity(Kind::net)));
  }
  CHECK(tids.size() == 1);
  CHECK(text(test::snapshot()) == text(caller));
}

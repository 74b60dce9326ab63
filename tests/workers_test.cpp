// The worker pool behind Set::run (workers.hpp): how many restored workers it
// keeps, for how long, and that it never keeps one that sits in a namespace
// other than the process's own. Namespaces are read from /proc, never through
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

#include "support/kernel_view.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"

namespace {

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using gonso::Kind;
using test::text;

/// Saves the worker policy and retires idle workers; on the way out, whatever
/// the test did, retires them again and puts the policy back.
class PoolGuard {
 public:
  PoolGuard() : saved_(gonso::worker_policy()) { gonso::retire_idle_workers(); }
  PoolGuard(const PoolGuard&) = delete;
  PoolGuard& operator=(const PoolGuard&) = delete;
  ~PoolGuard() {
    gonso::retire_idle_workers();
    try {
      gonso::set_worker_policy(saved_);
    } catch (...) {  // a destructor never throws; the saved policy was valid anyway
    }
  }

 private:
  gonso::WorkerPolicy saved_;
};

/// An idle timeout no test waits for: workers stay until retired.
constexpr auto long_timeout = std::chrono::milliseconds(10min);
/// Bound for the kernel to finish tearing down threads that already exited.
constexpr auto settle_bound = 5s;

/// Threads gonso runs while `idle` workers wait: each worker, plus the anchor
/// that holds the process's namespaces for them to return to, which lives as
/// long as any worker does.
std::size_t with_workers(std::size_t baseline, std::size_t idle) { return baseline + idle + (idle > 0 ? 1 : 0); }

/// test::threads_outside once exiting threads are gone (see
/// test::threads_settled_at).
std::vector<std::string> threads_outside_settled(const test::Snapshot& reference) {
  std::vector<std::string> out;
  (void)test::eventually(
      [&] {
        out = test::threads_outside(reference);
        return out.empty();
      },
      settle_bound);
  return out;
}

/// What a callable saw of the worker it ran on.
struct Seen {
  pid_t tid = 0;
  gonso::Identity id;
};

/// A restoring run in `set` that reports its worker and namespace of `kind`.
Seen seen_in(const gonso::Set& set, Kind kind) {
  return set.run(true, [kind] { return Seen{test::tid(), test::thread_ns(kind)}; });
}

}  // namespace

TEST_CASE("workers: policy round trip", "[workers]") {
  PoolGuard guard;
  const gonso::WorkerPolicy first{3, 250ms};
  gonso::set_worker_policy(first);
  gonso::WorkerPolicy now = gonso::worker_policy();
  CHECK(now.max_idle == first.max_idle);
  CHECK(now.idle_timeout == first.idle_timeout);

  // A second, different policy, so that the round trip cannot pass by
  // matching a default.
  const gonso::WorkerPolicy second{first.max_idle + 2, first.idle_timeout * 3};
  gonso::set_worker_policy(second);
  now = gonso::worker_policy();
  CHECK(now.max_idle == second.max_idle);
  CHECK(now.idle_timeout == second.idle_timeout);

  SECTION("a negative timeout is refused and changes nothing") {
    CHECK_THROWS_AS(gonso::set_worker_policy({1, -1ms}), std::invalid_argument);
    CHECK_THROWS_WITH(gonso::set_worker_policy({1, -1ms}), Contains("timeout") && Contains("negative"));
    now = gonso::worker_policy();
    CHECK(now.max_idle == second.max_idle);
    CHECK(now.idle_timeout == second.idle_timeout);
  }
}

TEST_CASE("workers: a default WorkerPolicy holds the documented defaults", "[workers]") {
  PoolGuard guard;
  const gonso::WorkerPolicy defaults;
  CHECK(defaults.idle_timeout == 10s);
  CHECK(defaults.spin == 50us);
  CHECK(defaults.max_idle >= 4);
  CHECK(defaults.max_idle >= std::thread::hardware_concurrency());
  // Designated initializers leave the other field at its default.
  const gonso::WorkerPolicy some{.max_idle = 2};
  CHECK(some.idle_timeout == defaults.idle_timeout);
}

TEST_CASE("workers: a huge idle timeout means a long wait, not an overflow", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({.max_idle = 2, .idle_timeout = std::chrono::milliseconds::max()});
  CHECK(gonso::worker_policy().idle_timeout == std::chrono::hours(24 * 365));
  const gonso::Set uts = gonso::Set::current().unshare(Kind::uts);
  const pid_t first = uts.run(true, [] { return test::tid(); });
  // An overflowed deadline lies in the past: the worker would be gone at once.
  std::this_thread::sleep_for(200ms);
  CHECK(gonso::idle_workers() == 1);
  CHECK(uts.run(true, [] { return test::tid(); }) == first);
}

TEST_CASE("workers: at most max_idle are kept after concurrent runs", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  const gonso::WorkerPolicy policy{2, long_timeout};
  gonso::set_worker_policy(policy);
  const gonso::Set uts = gonso::Set::current().unshare(Kind::uts);
  gonso::retire_idle_workers();

  const test::Snapshot caller = test::snapshot();
  const std::size_t threads_before = test::count_threads();

  constexpr std::size_t callers = 6;
  std::latch all_inside(static_cast<std::ptrdiff_t>(callers));
  std::vector<Seen> seen(callers);
  std::vector<std::exception_ptr> errors(callers);
  {
    std::vector<std::jthread> threads;
    for (std::size_t i = 0; i < callers; ++i) {
      threads.emplace_back([&, i] {
        std::atomic<bool> arrived{false};
        try {
          // Every callable waits until all six are inside: six workers at once.
          seen[i] = uts.run(true, [&] {
            arrived = true;
            all_inside.arrive_and_wait();
            return Seen{test::tid(), test::thread_ns(Kind::uts)};
          });
        } catch (...) {
          errors[i] = std::current_exception();
          if (!arrived) all_inside.count_down();  // never leave the others waiting
        }
      });
    }
  }  // joins the callers

  for (std::size_t i = 0; i < callers; ++i) {
    if (errors[i]) {
      try {
        std::rethrow_exception(errors[i]);
      } catch (const std::exception& e) {
        FAIL_CHECK("run " << i << " threw: " << e.what());
      }
    }
  }
  std::set<pid_t> tids;
  for (const Seen& s : seen) {
    tids.insert(s.tid);
    CHECK(text(s.id) == text(uts.identity(Kind::uts)));
  }
  CHECK(tids.size() == callers);

  const std::size_t idle = gonso::idle_workers();
  CHECK(idle <= policy.max_idle);
  CHECK(test::threads_settled_at(with_workers(threads_before, idle)) == with_workers(threads_before, idle));
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("workers: an idle worker ends after idle_timeout", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  const gonso::Set uts = gonso::Set::current().unshare(Kind::uts);
  gonso::retire_idle_workers();
  const test::Snapshot caller = test::snapshot();
  const std::size_t threads_before = test::count_threads();

  gonso::set_worker_policy({4, 100ms});
  const Seen seen = seen_in(uts, Kind::uts);
  const std::size_t idle_after_run = gonso::idle_workers();
  CHECK(text(seen.id) == text(uts.identity(Kind::uts)));
  CHECK(idle_after_run == 1);

  // The timed-out worker's thread exits by itself; its std::jthread is joined
  // later (next acquire or retire), but /proc/self/task drops it already.
  std::size_t idle = 0;
  std::size_t threads = 0;
  const bool back_to_baseline = test::eventually(
      [&] {
        idle = gonso::idle_workers();
        threads = test::count_threads();
        return idle == 0 && threads == threads_before;
      },
      settle_bound);
  INFO("idle workers " << idle << ", threads " << threads << ", baseline " << threads_before);
  CHECK(back_to_baseline);
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("workers: retire_idle_workers ends every idle worker", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({4, long_timeout});
  const gonso::Set uts = gonso::Set::current().unshare(Kind::uts);
  const gonso::Set net = gonso::Set::current().unshare(Kind::net);
  gonso::retire_idle_workers();
  const test::Snapshot caller = test::snapshot();
  const std::size_t threads_before = test::count_threads();

  // Sequential runs, then two at once so that two workers are needed.
  for (int i = 0; i < 3; ++i) {
    CHECK(text(seen_in(uts, Kind::uts).id) == text(uts.identity(Kind::uts)));
    CHECK(text(seen_in(net, Kind::net).id) == text(net.identity(Kind::net)));
  }
  {
    std::latch both(2);
    Seen other;
    std::exception_ptr error;
    std::atomic<bool> arrived{false};
    std::jthread second([&] {
      try {
        other = net.run(true, [&] {
          arrived = true;
          both.arrive_and_wait();
          return Seen{test::tid(), test::thread_ns(Kind::net)};
        });
      } catch (...) {
        error = std::current_exception();
        if (!arrived) both.count_down();  // never leave the other run waiting
      }
    });
    const Seen mine = uts.run(true, [&] {
      both.arrive_and_wait();
      return Seen{test::tid(), test::thread_ns(Kind::uts)};
    });
    second.join();
    REQUIRE_FALSE(error);
    CHECK(text(mine.id) == text(uts.identity(Kind::uts)));
    CHECK(text(other.id) == text(net.identity(Kind::net)));
    CHECK(mine.tid != other.tid);
  }
  const std::size_t idle = gonso::idle_workers();
  CHECK(idle > 0);
  CHECK(test::threads_settled_at(with_workers(threads_before, idle)) == with_workers(threads_before, idle));

  gonso::retire_idle_workers();
  CHECK(gonso::idle_workers() == 0);
  CHECK(test::threads_settled_at(threads_before) == threads_before);
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("workers: lowering max_idle ends the idle workers beyond it at once", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({4, long_timeout});
  const gonso::Set uts = gonso::Set::current().unshare(Kind::uts);
  gonso::retire_idle_workers();
  const test::Snapshot caller = test::snapshot();
  const std::size_t threads_before = test::count_threads();

  // Three runs at once leave three restored workers behind.
  constexpr std::size_t callers = 3;
  {
    std::latch all_inside(static_cast<std::ptrdiff_t>(callers));
    std::vector<std::jthread> threads;
    for (std::size_t i = 0; i < callers; ++i) {
      threads.emplace_back([&] {
        std::atomic<bool> arrived{false};
        try {
          (void)uts.run(true, [&] {
            arrived = true;
            all_inside.arrive_and_wait();
            return 0;
          });
        } catch (...) {
          if (!arrived) all_inside.count_down();
        }
      });
    }
  }
  REQUIRE(gonso::idle_workers() == callers);

  gonso::set_worker_policy({1, long_timeout});
  CHECK(gonso::idle_workers() == 1);
  CHECK(test::threads_settled_at(with_workers(threads_before, 1)) == with_workers(threads_before, 1));
  // The one kept still works.
  CHECK(text(seen_in(uts, Kind::uts).id) == text(uts.identity(Kind::uts)));
  CHECK(gonso::idle_workers() == 1);
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("workers: max_idle 0 keeps no worker", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({0, long_timeout});
  const gonso::Set uts = gonso::Set::current().unshare(Kind::uts);
  gonso::retire_idle_workers();
  const test::Snapshot caller = test::snapshot();
  const std::size_t threads_before = test::count_threads();

  constexpr int runs = 5;
  std::set<pid_t> tids;
  for (int i = 0; i < runs; ++i) {
    const Seen seen = seen_in(uts, Kind::uts);
    CHECK(text(seen.id) == text(uts.identity(Kind::uts)));
    CHECK(seen.tid != test::tid());
    tids.insert(seen.tid);
    CHECK(gonso::idle_workers() == 0);
  }
  CHECK(tids.size() == static_cast<std::size_t>(runs));
  CHECK(test::threads_settled_at(threads_before) == threads_before);
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("workers: a worker created in a foreign namespace is never pooled", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({4, long_timeout});
  const gonso::Set s = gonso::Set::current().unshare(Kind::net);
  const gonso::Set uts_only = gonso::Set::current().unshare(Kind::uts).dup(Kind::uts);
  REQUIRE(uts_only.kinds() == gonso::Kinds(Kind::uts));
  gonso::retire_idle_workers();  // so that the inner run must create a worker

  const test::Snapshot caller = test::snapshot();
  const std::size_t threads_before = test::count_threads();
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
  CHECK(threads_outside_settled(caller) == std::vector<std::string>{});
  const std::size_t idle = gonso::idle_workers();
  CHECK(idle == 1);
  CHECK(test::threads_settled_at(with_workers(threads_before, idle)) == with_workers(threads_before, idle));

  // The next run on the uts-only Set gets a worker in the caller's net.
  const auto later = uts_only.run(true, [] {
    return std::pair{test::thread_ns(Kind::uts), test::thread_ns(Kind::net)};
  });
  CHECK(text(later.first) == text(uts_only.identity(Kind::uts)));
  CHECK(text(later.second) == text(caller.at(Kind::net)));
  CHECK(threads_outside_settled(caller) == std::vector<std::string>{});
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
  const test::Snapshot caller = test::snapshot();
  const std::size_t fds_before = test::count_fds();
  const std::size_t threads_before = test::count_threads();

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
  CHECK(test::count_fds() == fds_before);
  CHECK(test::threads_settled_at(threads_before) == threads_before);
  CHECK(threads_outside_settled(caller) == std::vector<std::string>{});
}

TEST_CASE("workers: many mixed runs leak no fd and no thread", "[workers][leak][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({4, long_timeout});
  const test::Snapshot caller = test::snapshot();
  const std::size_t fds_before = test::count_fds();
  const std::size_t threads_before = test::count_threads();

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
  CHECK(test::count_fds() == fds_before);
  CHECK(test::threads_settled_at(threads_before) == threads_before);
  CHECK(threads_outside_settled(caller) == std::vector<std::string>{});
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

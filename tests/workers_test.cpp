// The worker pool behind Set::run (workers.hpp): its policy, how many
// restored workers it keeps, for how long, and how they are retired.
// Namespaces are read from /proc, never through gonso; threads and fds are
// counted in /proc/self.
#include <sys/types.h>
#include <time.h>

#include <atomic>
#include <barrier>
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
using test::exit_bound;
using test::long_timeout;
using test::PoolGuard;
using test::Seen;
using test::seen_in;
using test::text;
using test::with_workers;

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
  const std::size_t threads_before = test::thread_baseline();

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

TEST_CASE("workers: while runs are in flight the pool keeps a worker for each, beyond max_idle",
          "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  gonso::set_worker_policy({1, long_timeout});
  const gonso::Set uts = gonso::Set::current().unshare(Kind::uts);
  gonso::retire_idle_workers();
  const test::Snapshot caller = test::snapshot();
  const std::size_t threads_before = test::thread_baseline();

  // One run stays in flight throughout, so that the runs in flight never
  // drop to none; three callers loop, all three inside at once each round.
  constexpr std::size_t loopers = 3;
  constexpr int rounds = 20;
  std::latch holder_inside(1);
  std::latch holder_may_leave(1);
  std::barrier round(static_cast<std::ptrdiff_t>(loopers));
  std::vector<std::set<pid_t>> tids(loopers);
  std::vector<std::exception_ptr> errors(loopers + 1);
  pid_t holder_tid = -1;
  {
    std::jthread holder([&] {
      try {
        holder_tid = uts.run(true, [&] {
          holder_inside.count_down();
          holder_may_leave.wait();
          return test::tid();
        });
      } catch (...) {
        errors[loopers] = std::current_exception();
        holder_inside.count_down();
      }
    });
    holder_inside.wait();
    {
      std::vector<std::jthread> threads;
      for (std::size_t i = 0; i < loopers; ++i) {
        threads.emplace_back([&, i] {
          for (int r = 0; r < rounds; ++r) {
            try {
              tids[i].insert(uts.run(true, [&] {
                round.arrive_and_wait();
                return test::tid();
              }));
            } catch (...) {
              errors[i] = std::current_exception();
              round.arrive_and_drop();  // never leave the others waiting
              return;
            }
          }
        });
      }
    }  // joins the loopers
    holder_may_leave.count_down();
  }  // joins the holder
  for (const std::exception_ptr& error : errors) {
    if (!error) continue;
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      FAIL_CHECK("a run threw: " << e.what());
    }
  }
  // Four runs were in flight at once: four workers, each reused every round
  // (with max_idle alone, two of the three would have been ended and
  // replaced each round). The workers live throughout, so no tid is reused.
  std::set<pid_t> all;
  for (const auto& seen : tids) all.insert(seen.begin(), seen.end());
  INFO("worker tids seen by the loopers: " << all.size());
  CHECK(all.size() == loopers);
  CHECK(all.count(holder_tid) == 0);
  // The last run to end trimmed the idle workers to max_idle.
  CHECK(gonso::idle_workers() == 1);
  CHECK(test::threads_settled_at(with_workers(threads_before, 1)) == with_workers(threads_before, 1));
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("workers: an idle worker ends after idle_timeout", "[workers][privileged]") {
  test::require_privilege();
  PoolGuard guard;
  const gonso::Set uts = gonso::Set::current().unshare(Kind::uts);
  gonso::retire_idle_workers();
  const test::Snapshot caller = test::snapshot();
  (void)test::thread_baseline();
  const std::set<pid_t> tids_before = test::thread_ids();

  gonso::set_worker_policy({4, 100ms});
  const Seen seen = seen_in(uts, Kind::uts);
  const std::size_t idle_after_run = gonso::idle_workers();
  CHECK(text(seen.id) == text(uts.identity(Kind::uts)));
  CHECK(idle_after_run == 1);

  // The timed-out worker's thread exits by itself; its std::jthread is joined
  // later (next acquire or retire), but /proc/self/task drops it already.
  std::size_t idle = 0;
  std::size_t started = 0;  // the worker and its anchor, until they end
  const bool back_to_baseline = test::eventually(
      [&] {
        idle = gonso::idle_workers();
        started = test::threads_started_since(tids_before).size();
        return idle == 0 && started == 0;
      },
      exit_bound);
  INFO("idle workers " << idle << ", threads started by the run still there " << started);
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
  const std::size_t threads_before = test::thread_baseline();

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
  const std::size_t threads_before = test::thread_baseline();

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
  const std::size_t threads_before = test::thread_baseline();

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

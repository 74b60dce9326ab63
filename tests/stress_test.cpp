// Soak test: many threads use every operation of the library at once, over
// several Sets, for a fixed number of rounds. While they run, a monitor
// thread scans every thread's namespaces; between rounds, with the workers
// quiet, the process's fds, threads and children are compared with the first
// round's; at the end, with everything destroyed, with the baseline.
//
// Catch2 assertions are not thread-safe, so the threads write what went
// wrong into a shared list, which the test's own thread checks.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gonso/executor.hpp>
#include <gonso/persist.hpp>
#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>

#include "support/baseline.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/privilege.hpp"
#include "support/soak.hpp"

using gonso::Kind;
using gonso::Set;

namespace {

// Bounded by count, not time: 8 threads x 6 rounds x 90 operations. Each
// thread cycles through the nine operations, so each runs 480 times in all.
constexpr int stress_threads = 8;
constexpr int rounds = 6;
constexpr int operations_per_round = 90;

/// A Set and what the test itself reads of its namespaces, through the
/// kernel (stat of /proc/self/fd/N), not through gonso.
struct Target {
  std::string name;
  Set set;
  test::Snapshot expected;  // every kind: the Set's, or the process's own
};

Target make_target(std::string name, Set set, const test::Snapshot& own) {
  test::Snapshot expected = own;
  for (Kind kind : set.kinds()) {
    expected[kind] = test::identity_at(kind, fmt::format("/proc/self/fd/{}", set.fd(kind)));
  }
  return {std::move(name), std::move(set), std::move(expected)};
}

/// What a process sees of its namespaces, as a value that run_in_process can
/// copy back (test::thread_ns allocates nothing, which matters in a fork of
/// this busy process: see support.hpp).
struct ProcessView {
  std::array<gonso::Identity, std::size(test::thread_kinds)> ns{};
};

ProcessView process_view() {
  ProcessView view;
  for (std::size_t i = 0; i < std::size(test::thread_kinds); ++i) view.ns[i] = test::thread_ns(test::thread_kinds[i]);
  return view;
}

/// What `view` shows that `expected` does not say; empty when all is as
/// expected. Runs inside callables, so it reports instead of asserting.
std::string mismatches(const ProcessView& view, const test::Snapshot& expected) {
  std::string out;
  for (const gonso::Identity& seen : view.ns) {
    if (seen != expected.at(seen.kind)) {
      out += fmt::format(" {}: saw {} expected {};", gonso::name(seen.kind), seen, expected.at(seen.kind));
    }
  }
  return out;
}
/// The same for the calling thread.
std::string mismatches(const test::Snapshot& expected) { return mismatches(process_view(), expected); }

/// What the rest of the process looks like once the workers are quiet, to
/// compare one round with the next.
struct Quiet {
  std::size_t fds, threads, children, nsfs_mounts;
  friend bool operator==(const Quiet&, const Quiet&) = default;
};

Quiet quiet_state() {
  // Threads counted once the count has settled: a worker buried by
  // run(false) may still be on its way out.
  const std::size_t threads = test::thread_baseline();
  return {test::count_fds(), threads, test::children().size(), test::count_nsfs_mounts()};
}

}  // namespace

namespace Catch {
template <>
struct StringMaker<Quiet> {
  static std::string convert(const Quiet& q) {
    return fmt::format("{{fds {}, threads {}, children {}, nsfs mounts {}}}", q.fds, q.threads, q.children,
                       q.nsfs_mounts);
  }
};
}  // namespace Catch

TEST_CASE("stress: every operation from many threads over several Sets; invariants hold throughout",
          "[privileged][stress]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    // ThreadSanitizer starts a thread of its own at the first thread creation:
    // the Baseline makes it exist before it counts.
    const test::Baseline base(test::Watch::process);
    const test::Snapshot& own = base.caller();
    test::Problems failures;
    std::atomic<std::size_t> operations{0};
    std::array<std::atomic<std::size_t>, 9> succeeded{};  // without an exception, by operation
    std::size_t scans = 0;
    std::size_t foreign_seen = 0;
    {
      const test::PrivateTmpfs files;  // persisted namespaces are bound here
      const Set process = Set::current();
      std::vector<Target> targets;
      targets.push_back(make_target("own", process, own));
      targets.push_back(make_target("net+uts", process.unshare(Kind::net | Kind::uts), own));
      targets.push_back(make_target("net+ipc+mnt", process.unshare(Kind::net | Kind::ipc | Kind::mnt), own));
      targets.push_back(make_target("pid+net", process.unshare(Kind::pid | Kind::net), own));
      test::KnownNamespaces known;
      for (const Target& t : targets) known.add(t.expected);
      std::vector<std::unique_ptr<gonso::Executor>> executors;
      executors.reserve(targets.size());
      for (const Target& t : targets) executors.push_back(std::make_unique<gonso::Executor>(t.set));
      // Every Set the pool makes registers its namespaces from inside: the
      // refill drops a Set it made when put() or a get() filled the pool first,
      // and the test never sees that one.
      gonso::Pool pool(process, Kind::net | Kind::uts,
                       {.size = 4, .after_create = [&known] { known.add(test::snapshot()); }});

      test::CallerThreads callers;
      callers.add(test::tid());
      test::Monitor monitor(own, callers, failures);

      // Between rounds the workers stop, and the test's thread compares the
      // quiet process with the first round's.
      std::vector<Quiet> after_round;
      std::barrier round_end(stress_threads + 1);

      enum Op {
        do_run_restore,
        do_run_once,
        do_executor,
        do_unshare,
        do_process_run,
        do_spawn,
        do_pool_get,
        do_persist,
        do_run_discard,
        op_count,
      };
      static_assert(operations_per_round % op_count == 0, "every thread runs every operation equally often");
      const auto work = [&](int index) {
        callers.add(test::tid());
        std::mt19937 random(static_cast<unsigned>(index));  // fixed: a failure can be replayed
        const auto fail = [&](std::string_view op, const Target& t, const std::string& what) {
          failures.add(fmt::format("thread {} {} in {}: {}", index, op, t.name, what));
        };
        for (int round = 0; round < rounds; ++round) {
          for (int i = 0; i < operations_per_round; ++i) {
            const Target& t = targets[random() % targets.size()];
            const auto probe = [&expected = t.expected] { return mismatches(expected); };
            const int op = (i + index) % op_count;
            try {
              switch (op) {
                case do_run_restore:
                  if (auto m = t.set.run(true, probe); !m.empty()) fail("run(true)", t, m);
                  break;
                case do_run_once:
                  if (auto m = t.set.run(false, probe); !m.empty()) fail("run(false)", t, m);
                  break;
                case do_run_discard:
                  if (auto m = t.set.run(true,
                                         [&](gonso::RunContext& ctx) {
                                           ctx.discard_thread();
                                           return probe();
                                         });
                      !m.empty()) {
                    fail("run(true) discarding", t, m);
                  }
                  break;
                case do_executor:
                  if (auto m = executors[static_cast<std::size_t>(&t - targets.data())]->run(probe); !m.empty()) {
                    fail("Executor::run", t, m);
                  }
                  break;
                case do_unshare: {
                  const Target fresh = make_target(t.name + "+new net+uts", t.set.unshare(Kind::net | Kind::uts), own);
                  if (fresh.expected.at(Kind::net) == t.expected.at(Kind::net)) fail("unshare", t, "same net");
                  known.add(fresh.expected);
                  if (auto m = fresh.set.run(true, [&] { return mismatches(fresh.expected); }); !m.empty()) {
                    fail("run(true) after unshare", t, m);
                  }
                  break;
                }
                case do_process_run:
                  if (auto m = mismatches(t.set.run_in_process(process_view), t.expected); !m.empty()) {
                    fail("run_in_process", t, m);
                  }
                  break;
                case do_spawn: {
                  std::vector<std::string> argv{"readlink"};
                  std::string expected_links;
                  for (Kind kind : t.set.kinds()) {
                    argv.push_back(fmt::format("/proc/self/ns/{}", gonso::name(kind)));
                    expected_links += fmt::format("{}:[{}]\n", gonso::name(kind), t.expected.at(kind).inode);
                  }
                  gonso::Child child = gonso::spawn(t.set, argv, {.out = gonso::Stdio::pipe});
                  const std::string links = child.read_stdout();
                  const gonso::ExitStatus status = child.wait();
                  if (!status.success()) fail("spawn", t, fmt::format("readlink {}", status));
                  if (links != expected_links)
                    fail("spawn", t, fmt::format("saw {} expected {}", links, expected_links));
                  break;
                }
                case do_pool_get: {
                  Set fresh = pool.get();
                  const Target got = make_target("pool Set", fresh, own);
                  if (got.expected.at(Kind::net) == own.at(Kind::net)) fail("Pool::get", t, "the process's own net");
                  known.add(got.expected);
                  if (random() % 2 == 0) {
                    (void)pool.put(std::move(fresh));  // unused: still fresh
                  } else if (auto m = fresh.run(true, [&] { return mismatches(got.expected); }); !m.empty()) {
                    fail("run(true) in a pooled Set", t, m);
                  }
                  break;
                }
                case do_persist: {
                  const auto file = files.path() / fmt::format("net-{}-{}-{}", index, round, i);
                  gonso::persist(t.set, Kind::net, file);
                  const Set reopened = Set::from_file(Kind::net, file);
                  gonso::unpersist(file);
                  const auto seen =
                      test::identity_at(Kind::net, fmt::format("/proc/self/fd/{}", reopened.fd(Kind::net)));
                  if (seen != t.expected.at(Kind::net)) fail("persist and reopen", t, fmt::format("reopened {}", seen));
                  break;
                }
                default:
                  break;
              }
              succeeded[static_cast<std::size_t>(op)].fetch_add(1, std::memory_order_relaxed);
            } catch (const std::exception& e) {
              fail(fmt::format("operation {}", op), t, e.what());
            }
            operations.fetch_add(1, std::memory_order_relaxed);
            if (auto m = mismatches(own); !m.empty()) fail("the caller itself", t, m);
          }
          round_end.arrive_and_wait();  // the round is over
          round_end.arrive_and_wait();  // the test's thread has looked
        }
      };

      std::vector<std::jthread> threads;
      threads.reserve(stress_threads);
      for (int index = 0; index < stress_threads; ++index) threads.emplace_back(work, index);
      for (int round = 0; round < rounds; ++round) {
        round_end.arrive_and_wait();
        if (!pool.wait_ready(std::chrono::seconds(30))) failures.add("the pool did not fill up again within 30 s");
        const auto quiet_monitor = monitor.hold();
        after_round.push_back(quiet_state());
        // Quiet: only executors' threads (the worker and its anchor) may be
        // in foreign namespaces now, each in its own Set's.
        for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
          const auto foreign = test::foreign_namespaces_of(task.path().string(), own);
          if (!foreign || foreign->empty()) continue;
          const bool in_an_executor_set = std::any_of(targets.begin(), targets.end(), [&](const Target& t) {
            return std::all_of(foreign->begin(), foreign->end(),
                               [&](const gonso::Identity& id) { return t.expected.at(id.kind) == id; });
          });
          if (!in_an_executor_set) {
            failures.add(
                fmt::format("between rounds, thread {} is in {}", task.path().filename().string(), foreign->front()));
          }
        }
        round_end.arrive_and_wait();
      }
      threads.clear();
      scans = monitor.scans();
      foreign_seen = monitor.foreign_seen();
      for (const auto& [id, sighting] : monitor.stop()) {
        if (!known.contains(id)) failures.add(sighting + ", a namespace of no Set");
      }

      INFO("after each round: fds, threads, children and nsfs mounts stay as after the first");
      for (std::size_t round = 1; round < after_round.size(); ++round) {
        INFO("round " << round);
        CHECK(after_round[round] == after_round.front());
      }
    }
    // Everything destroyed: back to where the test began.
    base.check({.children = false});
    CHECK(test::reapable_child() == 0);

    INFO(fmt::format("{} operations, {} monitor scans, {} sightings of gonso threads in foreign namespaces",
                     operations.load(), scans, foreign_seen));
    CHECK(operations.load() == static_cast<std::size_t>(stress_threads * rounds * operations_per_round));
    for (std::size_t op = 0; op < succeeded.size(); ++op) {
      INFO("operation " << op);
      CHECK(succeeded[op].load() == operations.load() / succeeded.size());
    }
    CHECK(scans > 0);
    CHECK(foreign_seen > 0);  // the monitor did see workers inside runs
    for (const std::string& f : failures.list()) FAIL_CHECK(f);
    CHECK(failures.count() == 0);
  });
}

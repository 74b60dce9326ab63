// Bad input to Executor, Pool and the worker policy: moved-from Sets and
// Executors, foreign user and time namespaces, bad PoolOptions, negative
// durations. The cases are tables (support/cases.hpp): each call gives the
// documented error type, errno and a message naming what was being done,
// changes nothing and leaks nothing (the one Baseline after every case: fds,
// threads, child processes, namespaces), and the machine is left as found
// (mounts, names, folders).
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/executor.hpp>
#include <gonso/netns.hpp>
#include <gonso/persist.hpp>
#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>
#include <gonso/workers.hpp>

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;
using test::Case;
using test::check_cases;
using test::invalid;
using test::logic;
using test::refused;

namespace fs = std::filesystem;

TEST_CASE("bad input: Executor and Pool", "[badinput][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const Set here = Set::current();
    const Set uts = Set::current(Kind::uts);
    Set source = Set::current(Kind::net);
    const Set& moved_from = source;
    const Set keeper = std::move(source);
    const test::ForeignNamespaces user_holder(CLONE_NEWUSER);
    const Set user = Set::from_file(Kind::user, user_holder.path(Kind::user));
    const test::ForeignNamespaces time_holder(CLONE_NEWTIME);
    const Set time = Set::from_file(Kind::time, time_holder.path(Kind::time));
    const auto pool_options = [](auto&& change) {
      gonso::PoolOptions options;
      change(options);
      return options;
    };

    const std::vector<Case> cases{
        logic(
            "an Executor in a moved-from Set", [&] { const gonso::Executor ex(moved_from); },
            "cannot run an executor in an empty Set"),
        logic(
            "an unverified Executor in a moved-from Set",
            [&] { const gonso::Executor ex(moved_from, {.verify_each_run = false}); },
            "cannot run an executor in an empty Set"),
        refused(
            "an Executor in a foreign user namespace", [&] { const gonso::Executor ex(user); },
            std::errc::invalid_argument, "cannot join user namespace"),
        refused(
            "an Executor in a foreign time namespace", [&] { const gonso::Executor ex(time); },
            std::errc::invalid_argument, "cannot join time namespace"),
        logic(
            "run on a moved-from Executor",
            [&] {
              gonso::Executor ex(uts);
              const gonso::Executor& moved = ex;
              const gonso::Executor keeper_ex = std::move(ex);
              moved.run([] {});
            },
            "cannot run on a moved-from gonso::Executor"),
        logic(
            "set() of a moved-from Executor",
            [&] {
              gonso::Executor ex(uts);
              const gonso::Executor& moved = ex;
              const gonso::Executor keeper_ex = std::move(ex);
              (void)moved.set();
            },
            "has no Set"),

        logic(
            "a Pool of a moved-from Set", [&] { const gonso::Pool pool(moved_from, Kind::net); },
            "cannot make a Pool from an empty Set"),
        invalid(
            "a Pool of no kinds", [&] { const gonso::Pool pool(here, Kinds{}); }, "no namespace kinds"),
        invalid(
            "a Pool of size 0",
            [&] { const gonso::Pool pool(here, Kind::net, pool_options([](auto& o) { o.size = 0; })); }, "size 0"),
        invalid(
            "a zero retry delay",
            [&] {
              const gonso::Pool pool(here, Kind::net,
                                     pool_options([](auto& o) { o.retry_delay = std::chrono::milliseconds(0); }));
            },
            "retry_delay (0 ms) must be positive"),
        invalid(
            "a negative retry delay",
            [&] {
              const gonso::Pool pool(here, Kind::net,
                                     pool_options([](auto& o) { o.retry_delay = std::chrono::milliseconds(-5); }));
            },
            "must be positive"),
        invalid(
            "max_retry_delay below retry_delay",
            [&] {
              const gonso::Pool pool(here, Kind::net, pool_options([](auto& o) {
                                       o.retry_delay = std::chrono::milliseconds(50);
                                       o.max_retry_delay = std::chrono::milliseconds(20);
                                     }));
            },
            "at most max_retry_delay (20 ms)"),
        invalid(
            "a negative max_retry_delay",
            [&] {
              const gonso::Pool pool(here, Kind::net,
                                     pool_options([](auto& o) { o.max_retry_delay = std::chrono::milliseconds(-1); }));
            },
            "at most max_retry_delay (-1 ms)"),
        invalid(
            "a Pool with id maps and no user namespace",
            [&] {
              const gonso::Pool pool(here, Kind::net, pool_options([](auto& o) { o.unshare.uid_map = {{0, 0, 1}}; }));
            },
            "none is unshared"),
        invalid(
            "a Pool with time offsets and no time namespace",
            [&] {
              const gonso::Pool pool(here, Kind::uts,
                                     pool_options([](auto& o) { o.unshare.boottime_offset = std::chrono::hours(1); }));
            },
            "time offsets"),
        invalid(
            "a Pool with overlapping maps",
            [&] {
              const gonso::Pool pool(here, Kind::user | Kind::net, pool_options([](auto& o) {
                                       o.unshare.uid_map = {{0, 0, 5}, {4, 9, 1}};
                                     }));
            },
            "overlap"),
        invalid(
            "put a moved-from Set into a Pool",
            [&] {
              gonso::Pool pool(uts, Kind::uts, pool_options([](auto& o) { o.size = 1; }));
              Set taken = pool.get();
              const Set& gone = taken;
              const Set kept = std::move(taken);
              (void)pool.put(gone);
            },
            "cannot put an empty Set"),
    };
    check_cases(cases);
  });
}

TEST_CASE("bad input: the worker policy refuses negative durations and caps long ones", "[badinput]") {
  const gonso::WorkerPolicy before = gonso::worker_policy();
  struct restore_policy {
    gonso::WorkerPolicy policy;
    ~restore_policy() { gonso::set_worker_policy(policy); }
  } restore{before};
  const std::vector<Case> cases{
      invalid(
          "a negative idle timeout",
          [] { gonso::set_worker_policy({.max_idle = 1, .idle_timeout = std::chrono::milliseconds(-1)}); },
          "idle_timeout must not be negative"),
      invalid(
          "a negative spin", [] { gonso::set_worker_policy({.spin = std::chrono::microseconds(-1)}); },
          "spin must not be negative"),
      invalid(
          "both negative",
          [] {
            gonso::set_worker_policy(
                {.idle_timeout = std::chrono::milliseconds(-1), .spin = std::chrono::microseconds(-1)});
          },
          "must not be negative"),
  };
  check_cases(cases);

  // Out of range upwards is documented as capped, not refused.
  gonso::set_worker_policy(
      {.max_idle = before.max_idle, .idle_timeout = std::chrono::hours(24 * 400), .spin = std::chrono::seconds(1)});
  const gonso::WorkerPolicy capped = gonso::worker_policy();
  CHECK(capped.spin == gonso::detail::longest_spin);
  CHECK(capped.idle_timeout == gonso::detail::longest_wait);
  CHECK(capped.max_idle == before.max_idle);
}

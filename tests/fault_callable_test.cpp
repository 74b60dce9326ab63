// Fault injection in the callable: a restore that fails, a callable that
// throws, a callable that moves its own thread. Each checks the documented
// outcome, and then that gonso is still healthy: the next run sees the Set,
// the caller never moved, and fds, threads and child processes are back to
// where they were (the one Baseline).
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

using gonso::Kind;
using gonso::Set;
using test::inside;
using test::land;
using test::Landing;

// ---------------------------------------------------------------------------
// A restore that fails.

TEST_CASE("fault: a callable that drops CAP_SYS_ADMIN breaks its restore; the worker is never reused",
          "[fault][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::process);
  {
    const Set box = Set::current().unshare(Kind::net | Kind::uts);
    constexpr int injections = 3;
    SECTION("Set::run") {
      for (int i = 0; i < injections; ++i) {
        (void)land(box);  // an idle worker: the next run takes it from the pool
        // Without CAP_SYS_ADMIN setns() home fails with EPERM (the README's kernel rules).
        const auto [tid, was_inside, value] = box.run(true, [&] {
          const bool in = inside(box);
          test::drop_cap_sys_admin_on_this_thread();
          return std::tuple(test::tid(), in, 40 + i);
        });
        CHECK(value == 40 + i);  // fn's value comes back all the same
        CHECK(was_inside);
        CHECK(test::thread_ended(tid));  // joined before run returned, never pooled
        CHECK(test::threads_outside(base.caller()).empty());
        const Landing next = land(box);
        CHECK(next.tid != tid);
        CHECK(next.inside);
        CHECK(next.privileged);
      }
    }
    SECTION("Executor") {
      const gonso::Executor ex(box);
      for (int i = 0; i < injections; ++i) {
        const Landing before = land(ex);
        CHECK(before.inside);
        const auto [tid, value] = ex.run([&] {
          test::drop_cap_sys_admin_on_this_thread();
          return std::pair(test::tid(), 40 + i);
        });
        CHECK(tid == before.tid);
        CHECK(value == 40 + i);
        CHECK(test::thread_ended(tid));
        const Landing next = land(ex);
        CHECK(next.tid != tid);
        CHECK(next.inside);
        CHECK(next.privileged);
      }
    }
    CHECK(test::snapshot() == base.caller());
  }
  base.check();
}

// ---------------------------------------------------------------------------
// The callable throws.

namespace {
struct NotAnException {
  int code;
};
}  // namespace

TEST_CASE("fault: whatever a callable throws comes back as is, and nothing leaks", "[fault][privileged][process]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::process);
  {
    const Set box = Set::current().unshare(Kind::net | Kind::uts);
    SECTION("run(true): rethrown as is; the worker went home and is reused") {
      const Landing first = land(box);
      pid_t thrower = -1;
      CHECK_THROWS_WITH(box.run(true,
                                [&] {
                                  thrower = test::tid();
                                  throw std::runtime_error("boom");
                                }),
                        "boom");
      CHECK(thrower == first.tid);
      try {
        box.run(true, [&]() -> int { throw 42; });
        FAIL("nothing thrown");
      } catch (int value) {
        CHECK(value == 42);
      }
      try {
        box.run(true, [&] { throw NotAnException{7}; });
        FAIL("nothing thrown");
      } catch (const NotAnException& e) {
        CHECK(e.code == 7);
      }
      const Landing after = land(box);
      CHECK(after.tid == first.tid);
      CHECK(after.inside);
    }
    SECTION("run(false): rethrown as is; that thread ends") {
      pid_t thrower = -1;
      try {
        box.run(false, [&] {
          thrower = test::tid();
          throw NotAnException{8};
        });
        FAIL("nothing thrown");
      } catch (const NotAnException& e) {
        CHECK(e.code == 8);
      }
      gonso::retire_idle_workers();  // joins the ended worker
      CHECK(test::thread_ended(thrower));
      CHECK(land(box).inside);
    }
    SECTION("Executor: rethrown as is; the same thread runs on") {
      const gonso::Executor ex(box);
      const Landing first = land(ex);
      CHECK_THROWS_AS(ex.run([]() -> int { throw std::out_of_range("range"); }), std::out_of_range);
      CHECK_THROWS_AS(ex.run([] { throw 42; }), int);
      const Landing after = land(ex);
      CHECK(after.tid == first.tid);
      CHECK(after.inside);
    }
    SECTION("run_in_process: gonso::ProcessError with the type and what()") {
      try {
        box.run_in_process([] { throw std::invalid_argument("bad"); });
        FAIL("nothing thrown");
      } catch (const gonso::ProcessError& e) {
        CHECK(e.cause() == gonso::ProcessError::Cause::exception);
        CHECK(e.exception_type() == "std::invalid_argument");
        CHECK(e.message() == "bad");
      }
      try {
        box.run_in_process([]() -> int { throw NotAnException{9}; });
        FAIL("nothing thrown");
      } catch (const gonso::ProcessError& e) {
        CHECK(e.cause() == gonso::ProcessError::Cause::exception);
        CHECK_THAT(e.exception_type(), Catch::Contains("NotAnException"));
        CHECK(e.message().empty());
      }
      CHECK(box.run_in_process([&] { return inside(box); }));
    }
    CHECK(test::snapshot() == base.caller());
  }
  base.check();
}

// ---------------------------------------------------------------------------
// The callable moves its own thread.

TEST_CASE("fault: a callable that unshares or joins namespaces itself moves no later run", "[fault][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::process);
  const test::Snapshot& caller = base.caller();
  {
    const Set box = Set::current().unshare(Kind::uts | Kind::ipc);
    const test::ForeignNamespaces foreign(CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC);
    const gonso::Identity foreign_net = test::identity_at(Kind::net, foreign.path(Kind::net));
    const auto sees_rest_of_process = [&] {
      return box.run(true, [&] {
        return test::thread_ns(Kind::net) == caller.at(Kind::net) && test::thread_ns(Kind::mnt) == caller.at(Kind::mnt);
      });
    };
    const auto enter_foreign_net = [&] {
      const int fd = ::open(foreign.path(Kind::net).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) throw std::system_error(errno, std::generic_category(), "open foreign net");
      const int rc = ::setns(fd, CLONE_NEWNET);
      const int err = errno;
      ::close(fd);
      if (rc != 0) throw std::system_error(err, std::generic_category(), "setns foreign net");
    };

    SECTION("Set::run") {
      const pid_t worker = land(box).tid;
      // unshare(CLONE_NEWNET | CLONE_NEWUTS): undone by the way home; reused.
      const auto [tid1, made_net, made_uts] = box.run(true, [] {
        test::check_errno(::unshare(CLONE_NEWNET | CLONE_NEWUTS), "unshare net uts");
        return std::tuple(test::tid(), test::thread_ns(Kind::net), test::thread_ns(Kind::uts));
      });
      CHECK(tid1 == worker);
      CHECK(test::no_thread_in(made_net));
      CHECK(test::no_thread_in(made_uts));
      const Landing after1 = land(box);
      CHECK(after1.tid == worker);
      CHECK(after1.inside);
      CHECK(sees_rest_of_process());

      // setns into a foreign net namespace: undone too; reused.
      const pid_t tid2 = box.run(true, [&] {
        enter_foreign_net();
        return test::tid();
      });
      CHECK(tid2 == worker);
      CHECK(test::no_thread_in(foreign_net));
      CHECK(land(box).tid == worker);
      CHECK(sees_rest_of_process());

      // unshare(CLONE_FS): root and cwd of its own cannot be given back; the
      // thread ends.
      const pid_t tid3 = box.run(true, [] {
        test::check_errno(::unshare(CLONE_FS), "unshare fs");
        return test::tid();
      });
      CHECK(tid3 == worker);
      CHECK(test::thread_ended(tid3));
      const Landing after3 = land(box);
      CHECK(after3.tid != tid3);
      CHECK(after3.inside);

      // unshare(CLONE_NEWNS): a mount namespace of its own; the thread ends.
      const auto [tid4, made_mnt] = box.run(true, [] {
        test::check_errno(::unshare(CLONE_NEWNS), "unshare mnt");
        return std::pair(test::tid(), test::thread_ns(Kind::mnt));
      });
      CHECK(tid4 == after3.tid);
      CHECK(test::thread_ended(tid4));
      CHECK(test::no_thread_in(made_mnt));
      const Landing after4 = land(box);
      CHECK(after4.tid != tid4);
      CHECK(after4.inside);
      CHECK(sees_rest_of_process());
    }
    SECTION("Executor") {
      const Set boxnet = Set::current().unshare(Kind::net | Kind::uts);
      const gonso::Executor ex(boxnet);
      const pid_t worker = land(ex).tid;
      const auto made_net = ex.run([] {
        test::check_errno(::unshare(CLONE_NEWNET | CLONE_NEWUTS), "unshare net uts");
        return test::thread_ns(Kind::net);
      });
      CHECK(test::no_thread_in(made_net));
      Landing next = land(ex);
      CHECK(next.tid == worker);
      CHECK(next.inside);

      ex.run(enter_foreign_net);
      CHECK(test::no_thread_in(foreign_net));
      next = land(ex);
      CHECK(next.tid == worker);
      CHECK(next.inside);

      ex.run([] { test::check_errno(::unshare(CLONE_FS), "unshare fs"); });
      CHECK(test::thread_ended(worker));
      next = land(ex);
      CHECK(next.tid != worker);
      CHECK(next.inside);

      const pid_t second = next.tid;
      const auto made_mnt = ex.run([] {
        test::check_errno(::unshare(CLONE_NEWNS), "unshare mnt");
        return test::thread_ns(Kind::mnt);
      });
      CHECK(test::thread_ended(second));
      CHECK(test::no_thread_in(made_mnt));
      next = land(ex);
      CHECK(next.tid != second);
      CHECK(next.inside);
    }
    CHECK(test::threads_outside(caller).empty());
  }
  base.check();
}

// Every way a callable can leave a worker thread: return, throw of any
// type, pthread_exit, cancellation (acted on inside it, or left pending when
// it returns). The process survives, the caller gets the documented error,
// the worker is discarded when its state is unknown, and the next run works:
// inside the Set, the caller never moved, no thread left behind.
#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/kernel_view.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"

#include <gonso/executor.hpp>
#include <gonso/pool.hpp>
#include <gonso/set.hpp>
#include <gonso/workers.hpp>

using gonso::Kind;
using gonso::Set;

namespace {

struct Exit {
  const char* what;
  std::function<int()> leave;  // never returns normally, but for a pending cancellation
};

std::vector<Exit> thread_exits() {
  return {
      {"pthread_exit", []() -> int { ::pthread_exit(nullptr); }},
      {"pthread_cancel acted on at a cancellation point",
       [] {
         ::pthread_cancel(::pthread_self());
         ::pthread_testcancel();
         return 1;
       }},
      {"pthread_cancel left pending when the callable returns",
       [] {
         ::pthread_cancel(::pthread_self());
         return 2;
       }},
      {"pthread_exit from a nested function with objects to destroy",
       [] {
         const std::string on_the_stack(100, 'x');
         const auto deeper = [&] { ::pthread_exit(const_cast<char*>(on_the_stack.data())); };
         deeper();
         return 3;
       }},
  };
}

/// The error of a run that ended its thread: ECANCELED, saying what happened.
template <typename Run>
void check_thread_ended(Run&& run) {
  const std::system_error e = test::system_error_of(std::forward<Run>(run));
  CHECK(e.code() == std::errc::operation_canceled);
  CHECK_THAT(e.what(), Catch::Contains("ended its gonso worker thread"));
}

}  // namespace

TEST_CASE("callable exit: pthread_exit and cancellation in run end only the worker", "[callables][privileged]") {
  test::require_privilege();
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  const test::Baseline base(test::Watch::threads);
  const test::Snapshot caller = test::snapshot();
  for (const Exit& exit : thread_exits()) {
    for (const bool restore : {true, false}) {
      INFO(exit.what << (restore ? ", restore" : ", no restore"));
      check_thread_ended([&] { (void)net.run(restore, exit.leave); });
      CHECK(test::snapshot() == caller);
      // The next run works, inside the Set, and no later run is cancelled.
      CHECK(net.run(true, [] { return test::thread_ns(Kind::net); }) == net.identity(Kind::net));
      CHECK(net.run(true, [] {
        ::pthread_testcancel();
        return 7;
      }) == 7);
    }
  }
  base.check();
}

TEST_CASE("callable exit: pthread_exit and cancellation on an Executor end its thread, not the Executor",
          "[callables][executor][privileged]") {
  test::require_privilege();
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  const test::Baseline base(test::Watch::threads);
  {
    const gonso::Executor executor(net);
    for (const Exit& exit : thread_exits()) {
      INFO(exit.what);
      const pid_t before = executor.run([] { return test::tid(); });
      check_thread_ended([&] { (void)executor.run(exit.leave); });
      // A fresh thread, in the Set.
      CHECK(executor.run([] { return test::thread_ns(Kind::net); }) == net.identity(Kind::net));
      CHECK(executor.run([] { return test::tid(); }) != before);
    }
  }
  base.check();
}

TEST_CASE("callable exit: a Pool hook that ends its thread fails the Pool cleanly", "[callables][pool][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::threads | test::Watch::fds);
  for (const Exit& exit : thread_exits()) {
    INFO(exit.what);
    gonso::PoolOptions options;
    options.size = 2;
    options.after_create = [leave = exit.leave] { (void)leave(); };
    check_thread_ended([&] { gonso::Pool pool(Set::current(Kind::net), Kind::net, options); });
  }
  base.check();
}

TEST_CASE("callable exit: values and exceptions of any type cross back as they are", "[callables][privileged]") {
  test::require_privilege();
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  struct Odd {
    int value;
  };
  for (const bool restore : {true, false}) {
    CHECK_THROWS_AS(net.run(restore, [] { throw 42; }), int);
    CHECK_THROWS_AS(net.run(restore, [] { throw Odd{3}; }), Odd);
    CHECK_THROWS_AS(net.run(restore, [] { throw std::string("text"); }), std::string);
    CHECK(net.run(restore, [] { return 5; }) == 5);
  }
  gonso::retire_idle_workers();
}

TEST_CASE("callable exit: every way out of a run_in_process callable is reported, and the next run works",
          "[callables][privileged][process]") {
  test::require_privilege();
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  const test::Baseline base(test::Watch::namespaces | test::Watch::children);
  const auto error_of = [&](const std::function<int()>& fn) -> std::string {
    try {
      (void)net.run_in_process(fn);
    } catch (const gonso::ProcessError& e) {
      return e.what();
    }
    return "no error";
  };
  for (const Exit& exit : thread_exits()) {
    INFO(exit.what);
    if (std::string(exit.what).find("pending") != std::string::npos) {
      // The child's only thread returned; nothing runs after it there to be
      // cancelled in its place, so its value counts.
      CHECK(net.run_in_process(exit.leave) == 2);
    } else {
      CHECK_THAT(error_of(exit.leave), Catch::Contains("ended its thread"));
    }
  }
  CHECK_THAT(error_of([]() -> int { ::_exit(4); }), Catch::Contains("status 4"));
  // The test runner's handlers are copied into the child: back to the default.
  CHECK_THAT(error_of([]() -> int {
               (void)std::signal(SIGABRT, SIG_DFL);
               std::abort();
             }),
             Catch::Contains("signal 6"));
  CHECK_THAT(error_of([]() -> int {
               (void)std::signal(SIGTERM, SIG_DFL);
               ::raise(SIGTERM);
               return 0;
             }),
             Catch::Contains("signal 15"));
  CHECK_THAT(error_of([]() -> int { throw 17; }), Catch::Contains("int"));
  CHECK(net.run_in_process([] { return test::thread_ns(Kind::net); }) == net.identity(Kind::net));
  base.check();
}

// Calling into a gonso object from its own callable or hook either works or
// throws std::logic_error at once: never a deadlock, never a hang.
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "support/baseline.hpp"
#include "support/kernel_view.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"

#include <gonso/executor.hpp>
#include <gonso/pool.hpp>
#include <gonso/set.hpp>
#include <gonso/workers.hpp>

using gonso::Kind;
using gonso::Set;

TEST_CASE("reentrance: an Executor run from its own callable, or through another's, is refused at once",
          "[reentrance][executor][privileged]") {
  test::require_privilege();
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  const Set uts = Set::current(Kind::uts).unshare(Kind::uts);
  const gonso::Executor a(net);
  const gonso::Executor b(uts);
  // Directly.
  CHECK_THROWS_AS(a.run([&] { return a.run([] { return 1; }); }), std::logic_error);
  // A cycle through another Executor, on its thread.
  CHECK_THROWS_AS(a.run([&] { return b.run([&] { return a.run([] { return 1; }); }); }), std::logic_error);
  // Nesting without a cycle works, each callable in its own Set.
  const auto inner = a.run([&] { return b.run([] { return test::thread_ns(Kind::uts); }); });
  CHECK(inner == uts.identity(Kind::uts));
  // Both still work afterwards.
  CHECK(a.run([] { return test::thread_ns(Kind::net); }) == net.identity(Kind::net));
  CHECK(b.run([] { return test::thread_ns(Kind::uts); }) == uts.identity(Kind::uts));
  // Set::run inside an Executor's callable is no cycle.
  CHECK(a.run([&] { return uts.run(true, [] { return test::thread_ns(Kind::uts); }); }) == uts.identity(Kind::uts));
  gonso::retire_idle_workers();
}

TEST_CASE("reentrance: an Executor destroyed by its own callable ends when that run returns",
          "[reentrance][executor][privileged]") {
  test::require_privilege();
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  const test::Baseline base(test::Watch::threads | test::Watch::fds);
  {
    std::optional<gonso::Executor> executor(std::in_place, net);
    const gonso::Executor& e = *executor;
    const auto seen = e.run([&] {
      executor.reset();
      return test::thread_ns(Kind::net);
    });
    CHECK(seen == net.identity(Kind::net));
    CHECK_FALSE(executor.has_value());
  }
  {
    // Through another Executor's thread.
    std::optional<gonso::Executor> executor(std::in_place, net);
    const gonso::Executor other(net);
    const gonso::Executor& e = *executor;
    CHECK(e.run([&] {
      return other.run([&] {
        executor.reset();
        return 5;
      });
    }) == 5);
  }
  base.check();
}

TEST_CASE("reentrance: a Set destroyed by the callable running in it", "[reentrance][privileged]") {
  test::require_privilege();
  for (const bool restore : {true, false}) {
    std::optional<Set> set(Set::current(Kind::net).unshare(Kind::net));
    const gonso::Identity id = set->identity(Kind::net);
    const Set& s = *set;
    CHECK(s.run(restore, [&] {
      set.reset();
      return test::thread_ns(Kind::net);
    }) == id);
    CHECK(test::thread_ns(Kind::net) != id);
  }
  gonso::retire_idle_workers();
}

TEST_CASE("reentrance: a Pool used from its own after_create hook refuses at once", "[reentrance][pool][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::threads);
  for (const char* verb : {"get", "put", "wait_ready"}) {
    INFO(verb);
    std::atomic<gonso::Pool*> self{nullptr};  // set once the pool exists: the hook then uses it
    gonso::PoolOptions options;
    options.size = 1;
    options.after_create = [&self, verb] {
      gonso::Pool* pool = self.load();
      if (pool == nullptr) return;
      if (std::string(verb) == "get") (void)pool->get();
      if (std::string(verb) == "put") (void)pool->put(Set::current(Kind::net));
      if (std::string(verb) == "wait_ready") (void)pool->wait_ready(std::chrono::hours(1));
    };
    gonso::Pool pool(Set::current(Kind::net), Kind::net, options);
    REQUIRE(pool.wait_ready(std::chrono::seconds(60)));
    self = &pool;
    (void)pool.get();  // the ready one; every Set made from now on runs the using hook
    // Made on this thread, or the refill's failure rethrown: the hook's refusal either way.
    CHECK_THROWS_WITH(pool.get(), Catch::Contains("from its own after_create hook"));
    CHECK_THROWS_WITH(pool.get(), Catch::Contains("from its own after_create hook"));
  }
  base.check();
}

TEST_CASE("reentrance: a Pool destroyed by its own after_create hook ends without waiting for itself",
          "[reentrance][pool][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::threads | test::Watch::fds);
  const gonso::Identity host = test::thread_ns(Kind::net);
  gonso::PoolOptions options;
  options.size = 1;
  std::optional<gonso::Pool> pool;
  SECTION("from the refill thread's hook") {
    std::atomic<bool> armed{false};
    std::atomic<bool> destroyed{false};
    options.after_create = [&] {
      if (!armed.exchange(false)) return;
      pool.reset();
      destroyed = true;
    };
    pool.emplace(Set::current(Kind::net), Kind::net, options);
    REQUIRE(pool->wait_ready(std::chrono::seconds(60)));
    armed = true;
    { const Set taken = pool->get(); }  // leaves none: the refill wakes, and its hook destroys the pool
    CHECK(test::eventually([&] { return destroyed.load(); }));
    CHECK_FALSE(pool.has_value());
  }
  SECTION("from the hook of a get() on an empty pool, while the refill is busy") {
    // Shared with the hook: the refill's run of it may wake after this
    // section's locals are gone.
    struct hold_state {
      std::atomic<int> calls{-1};  // below 0: not armed yet
      std::atomic<bool> refill_held{false};
      std::atomic<bool> released{false};  // an atomic, not a promise: ThreadSanitizer sees into it
    };
    const auto hold = std::make_shared<hold_state>();
    struct release_at_exit {
      explicit release_at_exit(std::shared_ptr<hold_state> to_release) : state(std::move(to_release)) {}
      std::shared_ptr<hold_state> state;
      release_at_exit(const release_at_exit&) = delete;
      release_at_exit& operator=(const release_at_exit&) = delete;
      ~release_at_exit() {
        state->released = true;
        state->released.notify_all();
      }
    } const release(hold);  // also when a check fails: the held hook must never outlive the test
    options.after_create = [hold, &pool] {
      if (hold->calls.load() < 0) return;
      const int n = hold->calls.fetch_add(1);
      if (n == 0) {  // the refill thread's: held until the end
        hold->refill_held = true;
        hold->released.wait(false);
      } else if (n == 1) {  // the get()'s
        pool.reset();
      }
    };
    pool.emplace(Set::current(Kind::net), Kind::net, options);
    REQUIRE(pool->wait_ready(std::chrono::seconds(60)));
    gonso::Pool& p = *pool;
    hold->calls = 0;
    { const Set taken = p.get(); }
    REQUIRE(test::eventually([&] { return hold->refill_held.load(); }));
    {
      const Set made = p.get();  // none ready: made here, and its hook destroys the pool
      CHECK_FALSE(pool.has_value());
      CHECK(made.run(true, [] { return test::thread_ns(Kind::net); }) != host);  // still a fresh one
    }
    // At the end of the section, release lets the refill's hook return; its thread ends by itself.
  }
  // The refill's worker comes home once its hook returned, maybe after a
  // first retire: retire until it did.
  base.check({.fds = true});
  CHECK(test::thread_ns(Kind::net) == host);
}

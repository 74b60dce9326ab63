// gonso::Pool: Sets made ahead of time by a background thread. What a Set
// got from the pool holds is read inside it from /proc (never through
// gonso); threads and fds are counted in /proc/self. Waits for the pool use
// Pool::wait_ready and the test hook's own condition variable, never
// sleeps; every duration asserted is a lower bound, which a slow machine
// cannot break.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <gonso/pool.hpp>
#include <gonso/set.hpp>
#include <gonso/workers.hpp>

#include "support/baseline.hpp"
#include "support/kernel_view.hpp"
#include "support/pool_hook.hpp"
#include "support/privilege.hpp"

using namespace std::chrono_literals;
using gonso::Kind;
using gonso::Pool;
using gonso::Set;
using test::Hook;
using test::HookRelease;
using test::hostname_here;
using test::Inside;
using test::look_inside;
using test::patience;
using test::text;

TEST_CASE("pool: bad arguments are refused before anything is made", "[pool]") {
  const Set here = Set::current();
  const test::Baseline base(test::Watch::fds | test::Watch::threads);
  CHECK_THROWS_AS(Pool(here, gonso::Kinds{}), std::invalid_argument);
  CHECK_THROWS_AS(Pool(here, Kind::net, {.size = 0}), std::invalid_argument);
  CHECK_THROWS_AS(Pool(Set{}, Kind::net), std::logic_error);
  CHECK_THROWS_AS(Pool(here, Kind::net, {.retry_delay = 0ms}), std::invalid_argument);
  CHECK_THROWS_AS(Pool(here, Kind::net, {.retry_delay = 20ms, .max_retry_delay = 10ms}), std::invalid_argument);
  CHECK_THROWS_WITH(Pool(here, Kind::net, {.size = 0}), Catch::Contains("size 0"));
  CHECK(base.threads_started() == 0);  // none started
  base.check();
}

TEST_CASE("pool: every Set has fresh namespaces of the pool's kinds and the base's of the others",
          "[pool][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  // A base with a uts namespace that is not the caller's, so that "carried
  // over from the base" cannot pass by being the caller's.
  const Set base = Set::current().unshare(Kind::uts);
  const test::Snapshot in_base = look_inside(base).ns;
  REQUIRE(text(in_base.at(Kind::uts)) != text(caller.at(Kind::uts)));
  {
    Pool pool(base, Kind::net, {.size = 3});
    REQUIRE(pool.wait_ready(patience));
    CHECK(pool.size() == 3);
    CHECK(pool.kinds() == gonso::Kinds(Kind::net));
    // More than the pool holds: the rest come from the refill or are made by get().
    std::vector<Set> got;
    got.reserve(5);
    for (int i = 0; i < 5; ++i) got.push_back(pool.get());
    std::set<std::pair<dev_t, ino_t>> nets;
    for (const Set& set : got) {
      CHECK(set.kinds() == (base.kinds() | Kind::net));
      const test::Snapshot seen = look_inside(set).ns;
      CHECK(text(seen.at(Kind::net)) != text(caller.at(Kind::net)));
      nets.emplace(seen.at(Kind::net).device, seen.at(Kind::net).inode);
      for (const auto& [kind, id] : in_base) {
        if (kind == Kind::net) continue;
        INFO("kind " << gonso::name(kind));
        CHECK(text(seen.at(kind)) == text(id));
      }
    }
    CHECK(nets.size() == got.size());  // all alive, so distinct inodes mean distinct namespaces
  }
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("pool: after_create runs inside the very Set before get() hands it out", "[pool][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const std::string host = hostname_here();
  Hook hook({.hostname = "gonso-pool", .lo_up = true});
  {
    Pool pool(Set::current(), Kind::net | Kind::uts, {.size = 2, .after_create = hook.fn()});
    std::vector<Set> got;
    got.reserve(4);
    for (int i = 0; i < 4; ++i) got.push_back(pool.get());
    const std::vector<gonso::Identity> nets = hook.nets();
    std::set<std::pair<dev_t, ino_t>> distinct;
    for (const Set& set : got) {
      const Inside in = look_inside(set);
      CHECK(in.hostname == "gonso-pool");
      CHECK(in.lo_up);
      CHECK(text(in.ns.at(Kind::net)) != text(caller.at(Kind::net)));
      CHECK(text(in.ns.at(Kind::uts)) != text(caller.at(Kind::uts)));
      // The hook saw this very namespace, exactly once.
      CHECK(std::count(nets.begin(), nets.end(), in.ns.at(Kind::net)) == 1);
      distinct.emplace(in.ns.at(Kind::net).device, in.ns.at(Kind::net).inode);
    }
    CHECK(distinct.size() == got.size());
  }
  CHECK(hostname_here() == host);
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("pool: get() on an empty pool makes a Set on the calling thread", "[pool][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  // Call 1 is the constructor's; call 2, the refill's after the first get(), is held.
  Hook hook({.hold_call = 2});
  Pool pool(Set::current(), Kind::net, {.size = 1, .after_create = hook.fn()});
  const HookRelease release(hook);
  CHECK(pool.size() == 1);
  const Set first = pool.get();
  REQUIRE(hook.wait_calls(2));
  // The refill thread sits in the hook: nothing can be ready, so this get()
  // can only have made its Set itself.
  CHECK(pool.size() == 0);
  const Set second = pool.get();
  CHECK(pool.size() == 0);
  CHECK(hook.calls() == 3);
  const gonso::Identity net1 = look_inside(first).ns.at(Kind::net);
  const gonso::Identity net2 = look_inside(second).ns.at(Kind::net);
  CHECK(text(net2) != text(net1));
  CHECK(text(net2) != text(caller.at(Kind::net)));
  CHECK(hook.nets().at(2) == net2);  // the third call of the hook ran inside it
  hook.release();
  REQUIRE(pool.wait_ready(patience));
  CHECK(pool.size() == 1);
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("pool: put() keeps a Set for the next get(), and only one that fits", "[pool][privileged]") {
  test::require_privilege();
  Hook hook({.hold_call = 2});
  const Set here = Set::current();
  Pool pool(here, Kind::net, {.size = 1, .after_create = hook.fn()});
  const HookRelease release(hook);
  Set taken = pool.get();
  const gonso::Identity net = look_inside(taken).ns.at(Kind::net);
  REQUIRE(hook.wait_calls(2));  // the refill is held: the pool stays empty
  const bool kept = pool.put(std::move(taken));
  CHECK(kept);
  CHECK(pool.size() == 1);
  const Set again = pool.get();
  CHECK(text(look_inside(again).ns.at(Kind::net)) == text(net));

  hook.release();
  REQUIRE(pool.wait_ready(patience));
  SECTION("a full pool drops what is put") {
    CHECK_FALSE(pool.put(here.unshare(Kind::net)));
    CHECK(pool.size() == 1);
  }
  SECTION("a Set the pool could not have made is dropped, even with room") {
    const Set fresh = pool.get();
    // The caller's own network namespace must never be handed out as fresh.
    CHECK_FALSE(pool.put(here));
    CHECK_FALSE(pool.put(here.dup(Kind::net)));                  // other kinds
    CHECK_FALSE(pool.put(here.unshare(Kind::net | Kind::uts)));  // not the base's uts
    CHECK_THROWS_AS(pool.put(Set{}), std::invalid_argument);
    CHECK(pool.wait_ready(patience));  // only the refill filled it
    CHECK(pool.size() == 1);
    CHECK(text(look_inside(pool.get()).ns.at(Kind::net)) != text(test::thread_ns(Kind::net)));
  }
}

TEST_CASE("pool: wait_ready() returns when the pool is full, and only then", "[pool][privileged]") {
  test::require_privilege();
  Hook hook({.hold_call = 3});
  Pool pool(Set::current(), Kind::net, {.size = 3, .after_create = hook.fn()});
  const HookRelease release(hook);
  REQUIRE(hook.wait_calls(3));
  // Two are made and the third is held: the pool cannot be full.
  CHECK_FALSE(pool.wait_ready(50ms));
  CHECK(pool.size() == 2);
  hook.release();
  CHECK(pool.wait_ready(patience));
  CHECK(pool.size() == 3);
  const Set a = pool.get();
  const Set b = pool.get();
  CHECK(pool.wait_ready(patience));
  CHECK(pool.size() == 3);
}

TEST_CASE("pool: a failed refill is rethrown by the next get(), once, and the refill tries again",
          "[pool][privileged]") {
  test::require_privilege();
  // Call 1 (the constructor's) works, call 2 (the refill's) throws, call 3 works.
  Hook hook({.fail_call = 2});
  Pool pool(Set::current(), Kind::net, {.size = 2, .after_create = hook.fn()});
  // Call 2 precedes call 3 on the refill thread: once full, call 2 has failed.
  REQUIRE(pool.wait_ready(patience));
  CHECK(hook.calls() == 3);
  CHECK_THROWS_AS(pool.get(), std::runtime_error);  // what the hook threw, as it threw it
  CHECK(pool.size() == 2);                          // that get() took nothing
  const Set set = pool.get();                       // reported once only
  CHECK(text(look_inside(set).ns.at(Kind::net)) != text(test::thread_ns(Kind::net)));

  SECTION("with the hook's message") {
    Hook again({.fail_call = 2});
    Pool other(Set::current(), Kind::net, {.size = 2, .after_create = again.fn()});
    REQUIRE(other.wait_ready(patience));
    CHECK_THROWS_WITH(other.get(), "hook failed on call 2");
  }
}

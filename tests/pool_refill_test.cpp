// gonso::Pool when things go wrong or get busy: refills that fail and retry
// with growing delays, destruction while a refill is under way or waiting,
// no privilege, many threads at once, user namespaces, and what put() takes
// back. What a Set got from the pool holds is read inside it from /proc
// (never through gonso); threads and fds are counted in /proc/self (the one
// Baseline). Waits use Pool::wait_ready and the hook's own condition
// variable, never sleeps; every duration asserted is a lower bound.
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
using gonso::PoolOptions;
using gonso::Set;
using test::Hook;
using test::hostname_here;
using test::look_inside;
using test::patience;
using test::text;

TEST_CASE("pool: a refill that keeps failing waits longer after every failure", "[pool][privileged]") {
  test::require_privilege();
  Hook hook({.fail_call = 2, .fail_after = true});
  std::vector<std::chrono::steady_clock::time_point> starts;
  {
    Pool pool(Set::current(), Kind::net,
              {.size = 2, .after_create = hook.fn(), .retry_delay = 20ms, .max_retry_delay = 80ms});
    REQUIRE(hook.wait_calls(7));
    starts = hook.starts();
    CHECK_THROWS_WITH(pool.get(), Catch::StartsWith("hook failed on call "));
    CHECK(pool.size() == 1);  // the constructor's, and nothing since
  }
  // Each try begins no sooner than the delay after the previous one failed:
  // 20, 40, 80 ms, then no more than max_retry_delay. Lower bounds only.
  const std::array<std::chrono::milliseconds, 5> delays{20ms, 40ms, 80ms, 80ms, 80ms};
  for (std::size_t i = 0; i < delays.size(); ++i) {
    INFO("between tries " << i + 2 << " and " << i + 3);
    CHECK(starts.at(i + 2) - starts.at(i + 1) >= delays.at(i));
  }
}

TEST_CASE("pool: a pool waiting out a long retry delay is destroyed at once", "[pool][privileged]") {
  test::require_privilege();
  Hook hook({.fail_call = 2, .fail_after = true});
  std::optional<Pool> pool;
  pool.emplace(Set::current(), Kind::net,
               PoolOptions{.size = 2, .after_create = hook.fn(), .retry_delay = 1h, .max_retry_delay = 1h});
  REQUIRE(hook.wait_calls(2));
  // Whether the refill is in its hour-long wait yet or about to be, the
  // destructor stops it; a pool that waited the delay out would hang here.
  pool.reset();
  CHECK(hook.calls() == 2);
}

TEST_CASE("pool: without CAP_SYS_ADMIN the constructor throws EPERM and leaves nothing", "[pool][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::threads);
  const test::Refusal refusal =
      test::refusal_on_unprivileged_thread([] { const Pool pool(Set::current(), Kind::net); });
  CHECK(refusal.code == std::errc::operation_not_permitted);
  base.check();
}

TEST_CASE("pool: destruction joins the refill thread and closes every namespace", "[pool][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::namespaces | test::Watch::fds | test::Watch::threads);

  SECTION("a full pool") {
    Hook hook;
    {
      Pool pool(Set::current(), Kind::net | Kind::uts, {.size = 3, .after_create = hook.fn()});
      REQUIRE(pool.wait_ready(patience));
      const Set taken = pool.get();
      CHECK(test::count_fds() > base.fds());
    }
    CHECK(hook.calls() >= 3);
  }
  SECTION("while the refill thread is making a Set") {
    Hook hook({.hold_call = 2});
    {
      std::optional<Pool> pool;
      pool.emplace(Set::current(), Kind::net, PoolOptions{.size = 2, .after_create = hook.fn()});
      REQUIRE(hook.wait_calls(2));
      std::thread destroy([&] { pool.reset(); });  // waits for the held call
      hook.release();
      destroy.join();
      CHECK_FALSE(pool.has_value());
    }
    CHECK(hook.calls() == 2);
  }
  base.check();  // the caller's namespaces too
}

TEST_CASE("pool: many threads get and put at once", "[pool][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  constexpr std::size_t size = 4;
  constexpr std::size_t threads = 4;
  constexpr int rounds = 8;
  Pool pool(Set::current(), Kind::net, {.size = size});
  REQUIRE(pool.wait_ready(patience));

  // Off the test thread: no Catch macros, only results to check below.
  struct Result {
    std::vector<Set> held;  // got and never put back
    std::size_t largest = 0;
    std::exception_ptr error;
  };
  std::vector<Result> results(threads);
  std::vector<std::thread> workers;
  workers.reserve(threads);
  for (auto& result : results) {
    workers.emplace_back([&pool, &result] {
      try {
        for (int i = 0; i < rounds; ++i) {
          Set a = pool.get();
          result.held.push_back(pool.get());
          (void)pool.put(std::move(a));  // kept, or dropped when full
          result.largest = std::max(result.largest, pool.size());
        }
      } catch (...) {
        result.error = std::current_exception();
      }
    });
  }
  for (auto& w : workers) w.join();

  std::set<std::pair<dev_t, ino_t>> nets;
  std::size_t held = 0;
  for (const Result& result : results) {
    CHECK(result.error == nullptr);
    CHECK(result.largest <= size);
    for (const Set& set : result.held) {
      const gonso::Identity net = look_inside(set).ns.at(Kind::net);
      CHECK(text(net) != text(caller.at(Kind::net)));
      nets.emplace(net.device, net.inode);
      ++held;
    }
  }
  CHECK(held == threads * static_cast<std::size_t>(rounds));
  // Sets held at once are all alive: one namespace was never given to two holders.
  CHECK(nets.size() == held);
  CHECK(pool.wait_ready(patience));
  CHECK(pool.size() == size);
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("pool: Sets with user namespaces, the hook run in a child process", "[pool][privileged][process]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const std::string host = hostname_here();
  Pool pool(Set::current(), Kind::user | Kind::net | Kind::uts, {.size = 2, .after_create = [] {
                                                                   if (::sethostname("gonso-pool-user", 15) != 0) {
                                                                     throw std::system_error(
                                                                         errno, std::generic_category(), "sethostname");
                                                                   }
                                                                 }});
  REQUIRE(pool.wait_ready(patience));
  const Set a = pool.get();
  const Set b = pool.get();
  struct Seen {
    std::array<char, 65> hostname;
    gonso::Identity user, net;
  };
  const auto look = [] {
    Seen seen{};
    (void)::gethostname(seen.hostname.data(), seen.hostname.size() - 1);
    seen.user = test::thread_ns(Kind::user);
    seen.net = test::thread_ns(Kind::net);
    return seen;
  };
  const Seen in_a = a.run_in_process(look);
  const Seen in_b = b.run_in_process(look);
  CHECK(std::string(in_a.hostname.data()) == "gonso-pool-user");
  CHECK(std::string(in_b.hostname.data()) == "gonso-pool-user");
  CHECK(text(in_a.user) != text(caller.at(Kind::user)));
  CHECK(text(in_a.net) != text(caller.at(Kind::net)));
  CHECK(text(in_a.user) != text(in_b.user));
  CHECK(text(in_a.net) != text(in_b.net));
  CHECK(hostname_here() == host);
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("pool: put() takes back only a Set one of its get()s handed out, once; get() never repeats a namespace",
          "[pool][privileged]") {
  test::require_privilege();
  const Set here = Set::current();
  Pool pool(here, Kind::net, {.size = 4});
  REQUIRE(pool.wait_ready(patience));
  Pool other(here, Kind::net, {.size = 1});
  const auto net_of = [](const Set& set) {
    return text(test::identity_at(Kind::net, fmt::format("/proc/self/fd/{}", set.fd(Kind::net))));
  };

  // Room for what is put back.
  std::vector<Set> drained;
  while (pool.size() > 0) drained.push_back(pool.get());
  Set taken = std::move(drained.back());
  drained.pop_back();
  const Set copy = taken;
  const Set second_copy = taken;
  const bool kept = pool.put(std::move(taken));  // the first return is kept
  CHECK(kept);
  CHECK_FALSE(pool.put(copy));  // a copy of a Set already back
  CHECK_FALSE(pool.put(second_copy));
  // Sets this pool never handed out, though they fit its kinds and base.
  CHECK_FALSE(pool.put(here.unshare(Kind::net)));  // made by the caller
  CHECK_FALSE(pool.put(copy.dup(copy.kinds())));   // a dup is a Set of its own, not one handed out
  CHECK_FALSE(pool.put(other.get()));              // another pool's
  // A Set got again, then a stale copy of its first lease put: refused, so
  // the namespace is never out twice.
  // The refill may have stacked fresh Sets on top of it meanwhile.
  std::vector<Set> got;
  while (got.size() < 64 && (got.empty() || net_of(got.back()) != net_of(copy))) got.push_back(pool.get());
  REQUIRE(net_of(got.back()) == net_of(copy));
  CHECK_FALSE(pool.put(copy));
  std::set<std::string> seen;
  for (const Set& set : got) CHECK(seen.insert(net_of(set)).second);
  for (const Set& set : drained) CHECK(seen.insert(net_of(set)).second);
  // Kept alive, so that no inode number is given to another namespace.
  std::vector<Set> later;
  for (int i = 0; i < 8; ++i) {
    later.push_back(pool.get());
    CHECK(seen.insert(net_of(later.back())).second);  // never a namespace handed out before
  }
}

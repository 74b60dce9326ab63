// gonso::Pool: Sets made ahead of time by a background thread. What a Set
// got from the pool holds is read inside it from /proc (never through
// gonso); threads and fds are counted in /proc/self. Waits for the pool use
// Pool::wait_ready and the test hook's own condition variable, never
// sleeps; every duration asserted is a lower bound, which a slow machine
// cannot break.
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
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
#include "support/privilege.hpp"

namespace {

using namespace std::chrono_literals;
using gonso::Kind;
using gonso::Pool;
using gonso::PoolOptions;
using gonso::Set;
using test::text;

/// Long enough for any number of namespace creations on a loaded machine
/// under a sanitizer; only a broken pool waits this long.
constexpr auto patience = 60s;

/// Whether `lo` of the calling thread's network namespace is up; with
/// `bring_up`, sets it up first.
bool lo_is_up(bool bring_up = false) {
  const int sock = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) throw std::system_error(errno, std::generic_category(), "socket");
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, "lo", 3);
  int err = ::ioctl(sock, SIOCGIFFLAGS, &ifr) == 0 ? 0 : errno;
  if (err == 0 && bring_up) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    err = ::ioctl(sock, SIOCSIFFLAGS, &ifr) == 0 ? 0 : errno;
  }
  ::close(sock);
  if (err != 0) throw std::system_error(err, std::generic_category(), "flags of lo");
  return (ifr.ifr_flags & IFF_UP) != 0;
}

std::string hostname_here() {
  std::array<char, 65> name{};
  if (::gethostname(name.data(), name.size() - 1) != 0) throw std::system_error(errno, std::generic_category());
  return name.data();
}

/// What a callable run inside a Set sees.
struct Inside {
  test::Snapshot ns;
  std::string hostname;
  bool lo_up = false;
};
Inside inside(const Set& set) {
  return set.run(true, [] { return Inside{test::snapshot(), hostname_here(), lo_is_up()}; });
}

/// What a test Hook does.
struct HookOptions {
  int hold_call = 0;        ///< this call (1-based) waits in the hook until release()
  int fail_call = 0;        ///< this call throws std::runtime_error
  bool fail_after = false;  ///< ... and so does every later one
  std::string hostname{};   ///< set inside (only for pools of uts namespaces)
  bool lo_up = false;       ///< bring lo up inside
};

/// An after_create hook for tests: counts its calls, records the network
/// namespace each call ran in and when it started, can hold one call until
/// released, and can throw from chosen calls. Thread-safe, as a hook must be.
/// It must outlive the pool; release it (HookRelease) before the pool goes.
class Hook {
 public:
  explicit Hook(HookOptions options = {}) : options_(std::move(options)) {}

  /// The callable for PoolOptions::after_create.
  std::function<void()> fn() {
    return [this] { call(); };
  }

  /// Waits until `n` calls have started; false after `patience`.
  bool wait_calls(int n) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, patience, [&] { return calls_ >= n; });
  }
  void release() {
    {
      const std::lock_guard lock(mutex_);
      released_ = true;
    }
    changed_.notify_all();
  }
  int calls() {
    const std::lock_guard lock(mutex_);
    return calls_;
  }
  /// The network namespace of every call so far, by call.
  std::vector<gonso::Identity> nets() {
    const std::lock_guard lock(mutex_);
    return nets_;
  }
  /// When every call so far started, by call.
  std::vector<std::chrono::steady_clock::time_point> starts() {
    const std::lock_guard lock(mutex_);
    return starts_;
  }

 private:
  void call() {
    const auto start = std::chrono::steady_clock::now();
    const gonso::Identity net = test::thread_ns(Kind::net);
    if (!options_.hostname.empty() && ::sethostname(options_.hostname.data(), options_.hostname.size()) != 0) {
      throw std::system_error(errno, std::generic_category(), "sethostname");
    }
    if (options_.lo_up) (void)lo_is_up(true);
    std::unique_lock lock(mutex_);
    const int n = ++calls_;
    nets_.push_back(net);
    starts_.push_back(start);
    changed_.notify_all();
    if (n == options_.hold_call) changed_.wait(lock, [this] { return released_; });
    if (n == options_.fail_call || (options_.fail_after && options_.fail_call > 0 && n > options_.fail_call)) {
      throw std::runtime_error(fmt::format("hook failed on call {}", n));
    }
  }

  const HookOptions options_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int calls_ = 0;
  bool released_ = false;
  std::vector<gonso::Identity> nets_;
  std::vector<std::chrono::steady_clock::time_point> starts_;
};

/// Releases a held hook when the test leaves, also when it fails: declared
/// after the pool, it runs before the pool's destructor waits for the refill
/// thread sitting in the hook.
class HookRelease {
 public:
  explicit HookRelease(Hook& hook) : hook_(hook) {}
  HookRelease(const HookRelease&) = delete;
  HookRelease& operator=(const HookRelease&) = delete;
  ~HookRelease() { hook_.release(); }

 private:
  Hook& hook_;
};

}  // namespace

TEST_CASE("pool: bad arguments are refused before anything is made", "[pool]") {
  const Set here = Set::current();
  const test::Baseline base(test::Watch::fds | test::Watch::threads);
  CHECK_THROWS_AS(Pool(here, gonso::Kinds{}), std::invalid_argument);
  CHECK_THROWS_AS(Pool(here, Kind::net, {.size = 0}), std::invalid_argument);
  CHECK_THROWS_AS(Pool(Set{}, Kind::net), std::logic_error);
  CHECK_THROWS_AS(Pool(here, Kind::net, {.retry_delay = 0ms}), std::invalid_argument);
  CHECK_THROWS_AS(Pool(here, Kind::net, {.retry_delay = 20ms, .max_retry_delay = 10ms}), std::invalid_argument);
  CHECK_THROWS_WITH(Pool(here, Kind::net, {.size = 0}), Catch::Contains("size 0"));
  CHECK(test::count_threads() == base.threads());  // none started, none retired
  base.check();
}

TEST_CASE("pool: every Set has fresh namespaces of the pool's kinds and the base's of the others",
          "[pool][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  // A base with a uts namespace that is not the caller's, so that "carried
  // over from the base" cannot pass by being the caller's.
  const Set base = Set::current().unshare(Kind::uts);
  const test::Snapshot in_base = inside(base).ns;
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
      const test::Snapshot seen = inside(set).ns;
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
      const Inside in = inside(set);
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
  const gonso::Identity net1 = inside(first).ns.at(Kind::net);
  const gonso::Identity net2 = inside(second).ns.at(Kind::net);
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
  const gonso::Identity net = inside(taken).ns.at(Kind::net);
  REQUIRE(hook.wait_calls(2));  // the refill is held: the pool stays empty
  const bool kept = pool.put(std::move(taken));
  CHECK(kept);
  CHECK(pool.size() == 1);
  const Set again = pool.get();
  CHECK(text(inside(again).ns.at(Kind::net)) == text(net));

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
    CHECK(text(inside(pool.get()).ns.at(Kind::net)) != text(test::thread_ns(Kind::net)));
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
  CHECK(text(inside(set).ns.at(Kind::net)) != text(test::thread_ns(Kind::net)));

  SECTION("with the hook's message") {
    Hook again({.fail_call = 2});
    Pool other(Set::current(), Kind::net, {.size = 2, .after_create = again.fn()});
    REQUIRE(other.wait_ready(patience));
    CHECK_THROWS_WITH(other.get(), "hook failed on call 2");
  }
}

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
      const gonso::Identity net = inside(set).ns.at(Kind::net);
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

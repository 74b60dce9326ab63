// gonso: the options of every entry point, and their validation.
// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <gonso/kind.hpp>

namespace gonso {

/// What a new mount namespace does with the mount propagation it inherits.
enum class Propagation {
  rprivate,   ///< mount --make-rprivate /: nothing propagates either way (default)
  rslave,     ///< mount --make-rslave /: host mounts show up inside, not the reverse
  rshared,    ///< mount --make-rshared /: both ways
  unchanged,  ///< keep what was inherited: mounts inside may appear on the host
};

/// One line of a uid_map or gid_map: ids [inside, inside + count) of a new
/// user namespace are ids [outside, outside + count) of its parent.
struct IdRange {
  std::uint32_t inside = 0;
  std::uint32_t outside = 0;
  std::uint32_t count = 1;
};

/// Options of Set::unshare.
struct UnshareOptions {
  /// Applied to `/` of a new mount namespace. util-linux unshare(1) also
  /// defaults to rprivate, so that mounts made inside never leak to the host.
  Propagation propagation = Propagation::rprivate;
  /// uid_map of a new user namespace, in ids of its parent: the caller's
  /// user namespace, or the Set's when the Set holds another one (a nested
  /// user namespace). Empty (the default): the caller's effective uid, as
  /// that parent sees it, becomes root, as `unshare --map-root-user` does.
  /// Mapping more than one's own id needs CAP_SETUID over the parent (which
  /// a nested namespace's maps have: they are written from inside the Set).
  std::vector<IdRange> uid_map{};
  /// gid_map of a new user namespace, likewise; empty maps the caller's
  /// effective gid to 0. Without CAP_SETGID, gonso first writes "deny" to
  /// setgroups, as the kernel requires; a nested namespace keeps its
  /// parent's setgroups setting.
  std::vector<IdRange> gid_map{};
  /// CLOCK_MONOTONIC and CLOCK_BOOTTIME inside a new time namespace run ahead
  /// of the caller's by these offsets (written before any process enters).
  std::chrono::nanoseconds monotonic_offset{0};
  std::chrono::nanoseconds boottime_offset{0};

  /// Throws std::invalid_argument, as Set::unshare(kinds, *this) would before
  /// starting anything: id maps without a new user namespace (likewise time
  /// offsets), a map line that maps no ids or runs past the largest id, lines
  /// that overlap, or more lines than the kernel takes (340).
  void check(Kinds kinds) const {
    if (!kinds.contains(Kind::user) && !(uid_map.empty() && gid_map.empty())) {
      throw std::invalid_argument("uid_map and gid_map apply to a new user namespace, and none is unshared");
    }
    const bool offsets = monotonic_offset.count() != 0 || boottime_offset.count() != 0;
    if (!kinds.contains(Kind::time) && offsets) {
      throw std::invalid_argument("time offsets apply to a new time namespace, and none is unshared");
    }
    check_map(uid_map, "uid_map");
    check_map(gid_map, "gid_map");
  }

 private:
  static void check_map(const std::vector<IdRange>& map, const char* which) {
    if (map.size() > 340)
      throw std::invalid_argument(fmt::format("{} has {} lines; the kernel takes 340", which, map.size()));
    for (std::size_t i = 0; i < map.size(); ++i) {
      const IdRange& a = map[i];
      if (a.count == 0) throw std::invalid_argument(fmt::format("{} line {} maps no ids (count 0)", which, i));
      if (a.inside > UINT32_MAX - a.count || a.outside > UINT32_MAX - a.count) {
        throw std::invalid_argument(fmt::format("{} line {} runs past the largest id", which, i));
      }
      for (std::size_t j = 0; j < i; ++j) {
        const IdRange& b = map[j];
        const auto overlap = [](std::uint32_t x, std::uint32_t y, std::uint32_t n, std::uint32_t m) {
          return x < y + m && y < x + n;
        };
        if (overlap(a.inside, b.inside, a.count, b.count) || overlap(a.outside, b.outside, a.count, b.count)) {
          throw std::invalid_argument(fmt::format("{} lines {} and {} overlap", which, j, i));
        }
      }
    }
  }
};

/// Options of Set::run_in_process.
struct ProcessOptions {
  /// The name of a network namespace (as under /run/netns) whose files in
  /// /etc/netns/NAME are bound over those of /etc for the callable, in a
  /// mount namespace of its own, as `ip netns exec NAME` does (resolv.conf,
  /// hosts). A missing /etc/netns/NAME binds nothing. nullopt: none.
  std::optional<std::string> etc_of_netns{};
};

/// Where one standard stream of a spawned program goes.
enum class Stdio {
  inherit,  ///< the caller's fd 0, 1 or 2, as it is
  pipe,     ///< a pipe; the caller's end is on the Child (stdin_fd(), stdout_fd(), stderr_fd())
  null,     ///< /dev/null, opened by the caller (the Set's mount namespace may have none)
};

/// Options of gonso::spawn().
struct SpawnOptions {
  /// The program's whole environment, "NAME=value" each; nullopt passes the
  /// caller's environ. Its PATH (else the caller's, else "/bin:/usr/bin")
  /// is where a program name without '/' is looked for.
  std::optional<std::vector<std::string>> env{};
  /// Working directory, changed to after joining the Set, so it names a path
  /// in the Set's mount namespace. nullopt: the caller's working directory
  /// when the mount namespace is not joined (the Set has none, or the caller
  /// is in it already), "/" of the namespace when it is.
  std::optional<std::filesystem::path> cwd{};
  /// The name of a network namespace (as under /run/netns) whose files in
  /// /etc/netns/NAME are bound over those of /etc for the program, in a
  /// mount namespace of its own, as `ip netns exec NAME` does (resolv.conf,
  /// hosts). A missing /etc/netns/NAME binds nothing. nullopt: none.
  std::optional<std::string> etc_of_netns{};
  Stdio in = Stdio::inherit;   ///< standard input
  Stdio out = Stdio::inherit;  ///< standard output
  Stdio err = Stdio::inherit;  ///< standard error
};

/// Options of an Executor.
struct ExecutorOptions {
  /// After each callable, rejoin the Set through the anchor's pidfd and check
  /// root, cwd and time_for_children (below): about 2-3 us a run on a small
  /// VM. false skips both, for callables that never call unshare(2),
  /// setns(2) or chdir(2) on their thread: a callable that does moves every
  /// later one. RunContext::discard_thread() works either way.
  bool verify_each_run = true;
};

/// Options of a Pool.
struct PoolOptions {
  /// How many Sets the pool keeps ready. 0 is refused (std::invalid_argument):
  /// a pool that keeps nothing is a plain Set::unshare.
  std::size_t size = 4;
  /// Passed to Set::unshare for every Set the pool makes.
  UnshareOptions unshare{};
  /// Runs inside each new Set before it becomes ready, e.g. to bring `lo` up
  /// or set a hostname, so that get() hands out Sets that need no more work.
  /// It runs through Set::run(true, ...) when the unshared kinds are ones a
  /// thread can join (cgroup, ipc, mnt, net, uts), and through
  /// Set::run_in_process otherwise (user, pid, time). It is called from the
  /// pool's refill thread and from threads calling get() on an empty pool,
  /// possibly at once, so it must be thread-safe; get(), put() and
  /// wait_ready() of the same pool throw std::logic_error from it.
  /// Empty: none.
  std::function<void()> after_create{};
  /// After a failed refill, the pool waits this long before the next try,
  /// doubling the wait after every further failure up to max_retry_delay, so
  /// that a lasting error (EPERM, a broken hook) costs a try now and then
  /// rather than a spinning thread. Must be positive.
  std::chrono::milliseconds retry_delay{10};
  /// The longest wait between tries; at least retry_delay. Longer than a year
  /// counts as a year.
  std::chrono::milliseconds max_retry_delay{1000};
};

}  // namespace gonso

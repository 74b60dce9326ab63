// gonso: the options of every entry point, and their validation.
// SPDX-License-Identifier: MIT
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <gonso/dir.hpp>
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

/// Maps of a new user namespace made from the caller's subordinate ids: the
/// ranges /etc/subuid and /etc/subgid grant its user (the lines whose first
/// field is the name of the caller's real uid, or that uid in decimal), as
/// rootless container runtimes map 65536 ids. The ids are those of the
/// caller's user namespace, the new one's parent.
///
/// Without CAP_SETUID (CAP_SETGID) there, gonso has the setuid helper
/// newuidmap (newgidmap; Debian package uidmap) write the map, from
/// /usr/bin, /bin, /usr/sbin or /sbin only, with an empty environment. It
/// takes only ranges that file grants, and the caller's own id alone; it
/// requires the caller's real uid and gid to be its passwd entry's uid and
/// primary gid, with the effective ones equal to them (it checks the owner
/// of the new namespace's process). gonso leaves setgroups to newgidmap,
/// which denies setgroups(2) inside only when no subordinate gid is mapped.
/// With the capabilities gonso writes the same lines itself.
struct SubordinateIds {
  /// true: inside id 0 is the caller's effective uid (gid), and the
  /// subordinate ids follow from 1 up, as rootless podman maps them. false:
  /// the subordinate ids from 0 up, as `unshare --map-auto` does.
  bool map_self_as_root = true;
  /// Empty: every range the file grants, in file order, one after the other
  /// inside. Else these lines (inside, outside, count) alone, each of whose
  /// outside ids must lie within one granted range, else Set::unshare throws
  /// std::invalid_argument naming it before starting anything; with
  /// map_self_as_root they may not use inside id 0.
  std::vector<IdRange> uid_ranges{};
  std::vector<IdRange> gid_ranges{};  ///< as uid_ranges, from /etc/subgid
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
  /// Both maps of a new user namespace from the caller's subordinate ids
  /// (see SubordinateIds); not with uid_map or gid_map, nor for a user
  /// namespace nested in a Set's foreign one. Set::unshare throws
  /// std::system_error: ENOENT when the files grant the caller's user no
  /// range or the helper is missing, EPERM (with the helper's exit status
  /// and what it printed) when the helper fails.
  std::optional<SubordinateIds> subordinate_ids{};
  /// CLOCK_MONOTONIC and CLOCK_BOOTTIME inside a new time namespace run ahead
  /// of the caller's by these offsets (written before any process enters).
  std::chrono::nanoseconds monotonic_offset{0};
  std::chrono::nanoseconds boottime_offset{0};

  /// Throws std::invalid_argument, as Set::unshare(kinds, *this) would before
  /// starting anything: id maps without a new user namespace (likewise time
  /// offsets), a map line that maps no ids or runs past the largest id, lines
  /// that overlap, or more lines than the kernel takes (340); likewise
  /// subordinate_ids without a new user namespace or with uid_map or
  /// gid_map, and its explicit ranges.
  void check(Kinds kinds) const {
    if (!kinds.contains(Kind::user) && !(uid_map.empty() && gid_map.empty())) {
      throw std::invalid_argument("uid_map and gid_map apply to a new user namespace, and none is unshared");
    }
    if (subordinate_ids) {
      if (!kinds.contains(Kind::user)) {
        throw std::invalid_argument("subordinate_ids apply to a new user namespace, and none is unshared");
      }
      // Two sources for one map: neither could be honoured whole.
      if (!uid_map.empty() || !gid_map.empty()) {
        throw std::invalid_argument("subordinate_ids make the id maps; give no uid_map or gid_map with them");
      }
      check_map(subordinate_ids->uid_ranges, "subordinate_ids.uid_ranges");
      check_map(subordinate_ids->gid_ranges, "subordinate_ids.gid_ranges");
      if (subordinate_ids->map_self_as_root) {
        const auto uses_root = [](const std::vector<IdRange>& map) {
          for (const IdRange& r : map) {
            if (r.inside == 0) return true;
          }
          return false;
        };
        if (uses_root(subordinate_ids->uid_ranges) || uses_root(subordinate_ids->gid_ranges)) {
          throw std::invalid_argument(
              "subordinate_ids: a range maps inside id 0, which map_self_as_root gives the caller's own id");
        }
      }
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

/// Where one standard stream of a spawned program goes.
enum class Stdio {
  inherit,    ///< the caller's fd 0, 1 or 2, as it is, unless SpawnOptions::fds maps another fd there
  pipe,       ///< a pipe; the caller's end is on the Child (stdin_fd(), stdout_fd(), stderr_fd())
  null,       ///< /dev/null, opened by the caller (the Set's mount namespace may have none)
  to_stdout,  ///< standard error only: whatever standard output became (`2>&1`)
};

/// Who a spawned program runs as: ids of the user namespace it runs in
/// (the Set's, once joined), set after joining with setgroups(2),
/// setresgid(2) and setresuid(2), as `nsenter -S UID -G GID` does.
struct Credentials {
  uid_t uid = 0;
  gid_t gid = 0;
  /// The supplementary groups. nullopt: none when the program may set them
  /// (CAP_SETGID in its user namespace, setgroups allowed), else left as
  /// they are; an empty vector: none, or an error saying why not.
  std::optional<std::vector<gid_t>> groups{};
};

/// The capability sets of a spawned program, one bit per capability
/// (1 << CAP_NET_ADMIN, ...; see capability_mask). Set after the ids change,
/// with the bounding set dropped to `bounding` before, so that a uid change
/// away from 0 keeps what is asked (PR_SET_KEEPCAPS).
///
/// execve(2) recomputes the sets. A program running as uid 0 gets
/// permitted = inheritable | bounding, whatever the rest says, so restrict
/// it with `bounding`. Any other uid keeps only `ambient` (unless the file
/// has capabilities of its own), which must lie within permitted and
/// inheritable.
struct Capabilities {
  std::uint64_t effective = 0;
  std::uint64_t permitted = 0;
  std::uint64_t inheritable = 0;
  /// nullopt: the bounding set stays as inherited.
  std::optional<std::uint64_t> bounding{};
  std::uint64_t ambient = 0;
};

/// The bits of `caps` (CAP_* numbers) as a mask for Capabilities. Throws
/// std::invalid_argument for a number outside 0..63 (spawn refuses numbers
/// this kernel does not know).
[[nodiscard]] inline std::uint64_t capability_mask(std::initializer_list<int> caps) {
  std::uint64_t mask = 0;
  for (const int cap : caps) {
    if (cap < 0 || cap > 63) throw std::invalid_argument(fmt::format("{} is not a capability number", cap));
    mask |= std::uint64_t{1} << static_cast<unsigned>(cap);
  }
  return mask;
}

/// One resource limit (RLIMIT_NOFILE, ...), set with prlimit(2) before the
/// ids change, so that raising a hard limit counts the caller's privilege.
struct Rlimit {
  int resource = 0;
  rlim_t soft = 0;
  rlim_t hard = 0;
};

/// An fd of the caller that the program gets as fd `as` (a socket, a netns
/// fd, a pipe end). Mapping onto 0, 1 or 2 redirects that stream, which
/// must then be left at Stdio::inherit.
struct FdMapping {
  int fd = -1;
  int as = -1;
};

/// Options of gonso::spawn(). Applied in the child after joining the Set, in
/// this order: /etc/netns, root and mount_proc's mount namespace, /proc, cwd,
/// rlimits, umask, the fds, the session, and last the ids and capabilities,
/// so that every step before still has the caller's privilege.
struct SpawnOptions {
  /// The program's whole environment, "NAME=value" each; nullopt passes the
  /// caller's environ. Its PATH (else the caller's, else "/bin:/usr/bin")
  /// is where a program name without '/' is looked for.
  std::optional<std::vector<std::string>> env{};
  /// Working directory, changed to after joining the Set and entering
  /// `root`, so it names a path in the Set's mount namespace under that root
  /// (nsenter `--wdns`). nullopt: `cwd_dir` if given, else "/" when `root`
  /// is given or the mount namespace is joined, else the caller's.
  std::optional<std::filesystem::path> cwd{};
  /// A directory to start in, held open (nsenter `-w`, with
  /// Target::cwd()); not with `cwd`.
  std::optional<Dir> cwd_dir{};
  /// A directory that becomes the program's root (fchdir and chroot after
  /// joining: nsenter `-r`, with Target::root()). Needs CAP_SYS_CHROOT in
  /// the user namespace the program runs in.
  std::optional<Dir> root{};
  /// The name of a network namespace (as under /run/netns) whose files in
  /// /etc/netns/NAME are bound over those of /etc for the program, in a
  /// mount namespace of its own, as `ip netns exec NAME` does (resolv.conf,
  /// hosts). A missing /etc/netns/NAME binds nothing. nullopt: none.
  std::optional<std::string> etc_of_netns{};
  Stdio in = Stdio::inherit;   ///< standard input
  Stdio out = Stdio::inherit;  ///< standard output
  Stdio err = Stdio::inherit;  ///< standard error
  /// Extra fds, each at the number asked for; every other fd of the caller
  /// stays closed to the program.
  std::vector<FdMapping> fds{};
  /// The program is pid 1 of a new pid namespace (`unshare --pid --fork`),
  /// a child of the caller's, owned by the user namespace the program runs
  /// in. Not with a Set whose pid namespace is to be joined (EINVAL before
  /// starting): the kernel makes a pid namespace only below the maker's
  /// active one, which setns(2) never changes. The Child's
  /// pidfd reaches it, and Set::from_pidfd(child.pidfd(), Kind::pid) holds
  /// that namespace, which ends with the program. Needs CAP_SYS_ADMIN in
  /// the user namespace the program runs in.
  bool new_pid_namespace = false;
  /// A mount namespace of the program's own with a fresh /proc (under
  /// `root`), showing the pid namespace the program is in: with
  /// new_pid_namespace, the program as pid 1 (`unshare --mount-proc`).
  /// Mounts made there stay there (its `/` turns rprivate).
  bool mount_proc = false;
  /// A cgroup v2 directory (Dir::open("/sys/fs/cgroup/NAME"), or
  /// Target::cgroup()) the program starts in: the child moves itself there
  /// before joining anything, so the program never runs elsewhere.
  std::optional<Dir> cgroup{};
  std::optional<Credentials> user{};           ///< nullopt: the caller's ids
  std::optional<Capabilities> capabilities{};  ///< nullopt: as the ids change leaves them
  /// prctl(PR_SET_NO_NEW_PRIVS): execve(2) never grants privilege again
  /// (no setuid bit, no file capabilities).
  bool no_new_privs = false;
  std::vector<Rlimit> rlimits{};
  std::optional<mode_t> umask{};  ///< nullopt: the caller's
  /// setsid(2): the program leads a new session and process group, with no
  /// controlling terminal.
  bool new_session = false;
  /// An fd of the program (0, 1, 2 or a FdMapping's `as`) on a terminal that
  /// becomes its controlling terminal (TIOCSCTTY); implies new_session.
  std::optional<int> controlling_terminal{};
};

/// Options of Set::run_in_process.
struct ProcessOptions {
  /// The name of a network namespace (as under /run/netns) whose files in
  /// /etc/netns/NAME are bound over those of /etc for the callable, in a
  /// mount namespace of its own, as `ip netns exec NAME` does (resolv.conf,
  /// hosts). A missing /etc/netns/NAME binds nothing. nullopt: none.
  std::optional<std::string> etc_of_netns{};
  /// As SpawnOptions::root, cwd, cgroup and user, applied in the same order
  /// after joining: the callable runs under that root, in that directory
  /// and cgroup, as those ids (no capabilities are kept across a uid change
  /// away from 0).
  std::optional<Dir> root{};
  std::optional<std::filesystem::path> cwd{};
  std::optional<Dir> cgroup{};
  std::optional<Credentials> user{};
  /// The longest the callable may take: past it the child is killed and
  /// reaped (the process running the callable in a joined pid or time
  /// namespace dies with it; processes the callable started do not), and
  /// run_in_process throws ProcessError with Cause::timeout. Must be
  /// positive; more than a year counts as a year. nullopt: no limit.
  std::optional<std::chrono::milliseconds> timeout{};
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

// gonso: planning the join of a Set: which namespaces a thread or child must
// enter, in which order, seen from where it stands.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <string>
#include <system_error>

#include <fmt/format.h>

#include <gonso/detail/ns/kinds.hpp>
#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/kind.hpp>

namespace gonso::detail {

/// Which namespaces a forked child must join, worked out in the parent so
/// that the child only makes system calls.
struct join_plan {
  struct step {
    int fd;
    Kind kind;
  };
  std::array<step, all_kinds.size()> steps{};
  std::size_t count = 0;
  /// Set when pid or time is joined: setns() then changes only where the
  /// children go, so the work must run in a child of the joining process.
  bool fork_after = false;
};

/// Plans the join of `kinds` of `target` from the calling thread's point of
/// view: kinds it is in already are skipped (setns into one's own user
/// namespace fails), in join_order (user last; join_in_child retries what
/// was refused once inside it).
///
/// The thread's own namespaces are read as link text under one open of
/// /proc/thread-self/ns (a worker's own fd of it when there is one). A link
/// names its namespace by inode only; nsfs has one device, and `target` keeps
/// its namespaces alive, so an equal inode is the same namespace. A link that
/// cannot be read counts as another namespace: that kind is joined.
[[nodiscard]] inline join_plan plan_join(const ns_handles& target, Kinds kinds) {
  unique_fd own_dir;
  int dir = worker_ns_dir;
  if (dir < 0) {
    own_dir.reset(::open("/proc/thread-self/ns", O_PATH | O_DIRECTORY | O_CLOEXEC));
    dir = own_dir.get();
  }
  join_plan plan;
  for (Kind kind : join_order) {
    if (!kinds.contains(kind)) continue;
    const ns_handle& ns = target[index_of(kind)];
    if (dir >= 0 && read_ns_link(dir, thread_link(kind)) == ns.id.inode) continue;
    plan.steps[plan.count++] = {ns.fd.get(), kind};
    if (kind == Kind::pid || kind == Kind::time) plan.fork_after = true;
  }
  return plan;
}

/// False when the calling thread's children go to a pid namespace other
/// than its own (it joined one, as a worker inside Set::run does): a middle
/// process made there would see the program's pid in that namespace's
/// numbering, not the caller's. True when /proc cannot tell.
[[nodiscard]] inline bool children_share_pid_ns() noexcept {
  const bool worker = worker_ns_dir >= 0;
  const int dir = worker ? worker_ns_dir : AT_FDCWD;
  const ino_t own = read_ns_link(dir, worker ? "pid" : "/proc/thread-self/ns/pid");
  if (own == 0) return true;
  errno = 0;
  const ino_t children = read_ns_link(dir, worker ? "pid_for_children" : "/proc/thread-self/ns/pid_for_children");
  // ENOENT: the thread unshared a pid namespace that has no process yet.
  if (children == 0) return errno != ENOENT;
  return own == children;
}

/// What failed when step `index` of `plan` (of the namespaces `ns`) could
/// not be joined, in the words every engine uses: "cannot join net
/// namespace net:[4026532008]". `index` must be below plan.count.
[[nodiscard]] inline std::string join_failure(const join_plan& plan, const ns_handles& ns, std::size_t index) {
  const Kind kind = plan.steps[index].kind;
  return fmt::format("cannot join {} namespace {}", kind, ns[index_of(kind)].id);
}

/// Set::thread_joinable: whether the calling thread's user and time
/// namespaces are those `kinds` of `ns` holds, as no thread of a
/// multithreaded process can join others. Throws std::system_error when the
/// thread's own cannot be read.
[[nodiscard]] inline bool thread_can_join(const ns_handles& ns, Kinds kinds) {
  for (Kind kind : {Kind::user, Kind::time}) {
    if (!kinds.contains(kind)) continue;
    // On a worker (a nested run) /proc may be another mount namespace's.
    const bool worker = worker_ns_dir >= 0;
    const std::string link = std::string(worker ? "" : "/proc/thread-self/ns/") + std::string(name(kind));
    Identity own{};
    if (const int err = stat_ns(worker ? worker_ns_dir : AT_FDCWD, link.c_str(), kind, own); err != 0) {
      throw system_error(err, "cannot read this thread's {} namespace", kind);
    }
    if (own != ns[index_of(kind)].id) return false;
  }
  return true;
}

}  // namespace gonso::detail

// gonso: what a worker thread is handed: a job (the namespaces to join and the
// callable behind it), and the limits and checks that come with one.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/kcmp.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cxxabi.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iterator>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/detail/thread/anchor.hpp>
#include <gonso/detail/thread/credentials.hpp>
#include <gonso/detail/thread/event.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>
#include <gonso/run_context.hpp>

namespace gonso::detail {

/// The larger of 4 and the number of CPUs.
[[nodiscard]] inline std::size_t default_max_idle() noexcept {
  return std::max<std::size_t>(4, std::thread::hardware_concurrency());
}
inline constexpr std::chrono::milliseconds default_idle_timeout{10'000};
/// Longer timeouts, delays and waits (here and in Pool) are cut to this, so
/// that a deadline computed from them cannot overflow the clock.
inline constexpr std::chrono::milliseconds longest_wait{std::chrono::hours(24 * 365)};

/// How long threads waiting for each other spin before they sleep; set by
/// gonso::set_worker_policy.
inline std::atomic<long long>& spin_ns() noexcept {
  static std::atomic<long long> value{std::chrono::nanoseconds(default_spin).count()};
  return value;
}
[[nodiscard]] inline std::chrono::nanoseconds spin_budget() noexcept {
  return std::chrono::nanoseconds(spin_ns().load(std::memory_order_relaxed));
}

/// Throws std::system_error(EINVAL) unless the namespace `kinds` holds of
/// `kind` (user or time) is the calling thread's own. A thread of a
/// multithreaded process can join no other (the README, "How namespaces behave"), and every
/// thread of a process shares its user and time namespaces, so the caller's
/// are the ones a worker would have. `home`, when there is one, knows them
/// already: reading them from /proc costs more than the rest of a run.
inline void require_own(Kind kind, Kinds kinds, const ns_handles& target, const anchor* home) {
  if (!kinds.contains(kind)) return;
  const Identity& wanted = target[index_of(kind)].id;
  Identity own = home == nullptr ? Identity{} : kind == Kind::user ? home->user() : home->time();
  if (own.inode == 0) {
    // On a worker (a nested run) /proc may be another mount namespace's.
    const std::string own_link = std::string(worker_ns_dir >= 0 ? "" : "/proc/thread-self/ns/") + name(kind).data();
    if (const int err = stat_ns(worker_ns_dir >= 0 ? worker_ns_dir : AT_FDCWD, own_link.c_str(), kind, own); err != 0) {
      throw system_error(err, "cannot read this thread's {} namespace", kind);
    }
  }
  if (own == wanted) return;
  throw system_error(EINVAL,
                     "cannot join {} namespace {} on a thread: the kernel lets only a single-threaded process "
                     "join a {} namespace; use Set::run_in_process or gonso::spawn, which join in a child process",
                     kind, wanted, kind);
}

/// Throws std::system_error(err) for a thread that could not be started,
/// with the cause the kernel's errno stands for here.
[[noreturn]] inline void throw_cannot_start_thread(int err, std::string_view what) {
  std::string why;
  if (err == EAGAIN) {
    why = " (a limit on threads was reached: RLIMIT_NPROC, the pids cgroup's pids.max, or kernel.threads-max)";
  } else if (err == EINVAL) {
    // The kernel refuses a thread to a thread whose children go to another
    // pid or time namespace than its own, as inside Set::run of a Set
    // holding one.
    const int dir = worker_ns_dir >= 0 ? worker_ns_dir : AT_FDCWD;
    const char* prefix = worker_ns_dir >= 0 ? "" : "/proc/thread-self/ns/";
    for (const char* kind : {"pid", "time"}) {
      const ino_t own = read_ns_link(dir, (std::string(prefix) + kind).c_str());
      const ino_t children = read_ns_link(dir, (std::string(prefix) + kind + "_for_children").c_str());
      if (own != 0 && own != children) {
        why = fmt::format(
            " (this thread's children go to another {} namespace than its own, as inside Set::run of a Set "
            "holding one, and the kernel then lets it start no thread)",
            kind);
        break;
      }
    }
  }
  throw system_error(err, "cannot start {}{}", what, why);
}

/// The calling thread's umask, read from thread-self/status under `proc`, a
/// procfs fd (anchor::proc): no system call reads a umask without changing
/// it, and changing it for a moment would give every thread sharing it that
/// value meanwhile. -1 with errno when it cannot be read.
[[nodiscard]] inline int read_thread_umask(int proc) noexcept {
  const int fd = ::openat(proc, "thread-self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  std::array<char, 4096> text{};
  std::size_t size = 0;
  for (;;) {
    const ssize_t n = ::read(fd, text.data() + size, text.size() - 1 - size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    size += static_cast<std::size_t>(n);
    if (size == text.size() - 1) break;
  }
  const int saved = errno;
  (void)::close(fd);
  const std::string_view status(text.data(), size);
  // "Umask:\t0022", in octal, near the top.
  constexpr std::string_view field = "\nUmask:\t";
  const std::size_t at = status.find(field);
  if (at == std::string_view::npos) {
    errno = saved != 0 ? saved : ENODATA;
    return -1;
  }
  int mask = 0;
  std::size_t i = at + field.size();
  for (; i < status.size() && status[i] >= '0' && status[i] <= '7'; ++i) {
    mask = mask * 8 + (status[i] - '0');
    if (mask > 0777) break;
  }
  // Octal digits, then the end of the line, or it is no umask.
  if (i == at + field.size() || mask > 0777 || i >= status.size() || status[i] != '\n') {
    errno = EINVAL;
    return -1;
  }
  return mask;
}

/// Work handed to a worker: the namespaces to join and, behind invoke(), the
/// callable and the place for its result. Lives on the caller's stack for the
/// duration of one run.
class job {
 public:
  job(const ns_handles* into, Kinds joining, bool restoring) noexcept
      : target(into), kinds(joining), restore(restoring) {}
  job(const job&) = delete;
  job& operator=(const job&) = delete;

  /// Runs the callable and keeps its value or exception. Lets through only
  /// a forced unwind (pthread_exit, pthread_cancel), which must reach the
  /// thread's start: a catch (...) that ends it aborts the process.
  virtual void invoke(RunContext& ctx) = 0;

  /// The namespaces to join, or nullptr for none (an executor's worker is
  /// in its Set already).
  const ns_handles* const target;
  const Kinds kinds;
  const bool restore;
  /// A pidfd of a process in `target`'s namespaces (Set::from_pidfd), or -1.
  int pidfd = -1;
  /// The thread that posted the job and waits for it (RunContext::host), or
  /// -1: taken only for callables that take a RunContext, so that others do
  /// not pay for the gettid(2).
  pid_t caller_tid = -1;
  /// False only for an Executor whose caller vouches that callables leave
  /// the thread's namespaces alone: no setns back home, no checks.
  bool verify = true;
  /// The callable's exception, or the join's; invoke() is not called when
  /// joining failed.
  std::exception_ptr error;
  /// Set when the worker has root, cwd and umask of its own from an earlier
  /// run in a mount namespace (worker::fs_private): its umask no longer
  /// follows the process's, so the caller reads its own while the worker
  /// joins, and hands it over through umask_ready (a fresh worker would have
  /// copied it). Negative: -errno, it could not be read.
  bool wants_umask = false;
  int caller_umask = -1;
  event umask_ready;

 protected:
  ~job() = default;
};

}  // namespace gonso::detail

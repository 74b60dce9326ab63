// gonso: the one launcher. Every fork and clone of the library is one of the
// four starts below, every parent holds its children in a child_guard until
// they are its own to keep, and every fixed-size message a child sends its
// parent is a child_record, read by read_records. (run_in_process's child
// reports a value of any size: that stream is report.hpp's.)
// SPDX-License-Identifier: MIT
#pragma once

#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <poll.h>
#include <sched.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>

#include <gonso/detail/process/child_code.hpp>
#include <gonso/detail/sys/unique_fd.hpp>

namespace gonso::detail {

/// Waits for child `pid` (retrying on EINTR) and returns its wait status, or
/// -1 when it was reaped elsewhere (the application ignores SIGCHLD).
inline int reap(pid_t pid) noexcept {
  int status = 0;
  for (;;) {
    const auto r = static_cast<pid_t>(::syscall(SYS_wait4, pid, &status, __WALL, nullptr));
    if (r == pid) return status;
    if (r < 0 && errno == EINTR) continue;
    return -1;
  }
}

/// Waits for the child behind `pidfd` (retrying on EINTR) and returns its
/// wait status, or -1 when it was reaped elsewhere. Unlike a pid, the pidfd
/// cannot name another process once that one is gone.
inline int reap(const unique_fd& pidfd) noexcept {
  siginfo_t info{};
  while (::waitid(P_PIDFD, static_cast<id_t>(pidfd.get()), &info, WEXITED | __WALL) != 0) {
    if (errno != EINTR) return -1;
  }
  if (info.si_code == CLD_EXITED) return W_EXITCODE(info.si_status, 0);
  return info.si_status | (info.si_code == CLD_DUMPED ? WCOREFLAG : 0);  // as wait(2) encodes a signal
}

/// SIGKILL through `pidfd`, then reap(pidfd).
inline int kill_and_reap(const unique_fd& pidfd) noexcept {
  (void)::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0U);
  return reap(pidfd);
}

// The four ways a child starts. Which one a site uses depends on what the
// child runs, and on what must not happen in it:

/// For a child that runs the caller's C++ code (run_in_process): libc's
/// fork(), so that the pthread_atfork handlers run (glibc resets malloc's
/// locks; gonso resets its worker pool and child registry, whose locks other
/// threads may hold at the fork).
[[nodiscard]] inline pid_t fork_for_callable() noexcept { return ::fork(); }

/// clone(2) with `flags` and no new stack, as a raw system call, for a child
/// that makes only system calls: CLONE_PARENT makes it a sibling of the
/// caller, so that the caller (not the process cloning) reaps it. Argument
/// order (flags, stack, ...) as on x86-64 and most others.
[[nodiscard]] GONSO_CHILD_CODE inline pid_t raw_clone(unsigned long flags) noexcept {
  return static_cast<pid_t>(::syscall(SYS_clone, flags, nullptr, nullptr, nullptr, 0));
}

/// fork(2) as a raw clone: the child gets no pthread_atfork handlers (the
/// caller's code, unsafe in a child that may only make system calls; glibc's
/// posix_spawn skips them too), and a sanitizer does not start a thread in
/// it (ThreadSanitizer does after forking a single-threaded process, and a
/// second thread makes setns of mnt, user and time fail, the README, "How namespaces behave").
[[nodiscard]] GONSO_CHILD_CODE inline pid_t raw_fork() noexcept { return raw_clone(SIGCHLD); }

/// clone(2) running `fn(arg)` on `stack` (its top), for a child that shares
/// the caller's memory (CLONE_VM | CLONE_VFORK, as posix_spawn does) and so
/// needs a stack of its own. Like fork_for_callable a libc call, as glibc's
/// clone() is the assembly stub that switches stacks: it takes no lock and
/// runs no handler. With CLONE_PIDFD the child's pidfd lands in `*pidfd`.
[[nodiscard]] GONSO_CHILD_CODE inline pid_t clone_on_stack(int (*fn)(void*), unsigned char* stack, int flags, void* arg,
                                                           int* pidfd) noexcept {
  return ::clone(fn, stack, flags, arg, pidfd);
}

/// A child the caller started and must not leave behind: SIGKILLed and
/// reaped when the guard goes, unless its owner took it (release) or reaped
/// it (reap). Held by pidfd once there is one, which cannot come to name
/// another process; by pid until then, which is safe while the child is
/// unreaped (its number is not free).
class child_guard {
 public:
  child_guard() noexcept = default;
  explicit child_guard(pid_t pid) noexcept : pid_(pid) {}
  child_guard(const child_guard&) = delete;
  child_guard& operator=(const child_guard&) = delete;
  ~child_guard() {
    if (pidfd_) {
      (void)kill_and_reap(pidfd_);
    } else if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)reap(pid_);
    }
  }

  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  [[nodiscard]] const unique_fd& pidfd() const noexcept { return pidfd_; }
  /// From now on held by `pidfd`.
  void hold(unique_fd pidfd) noexcept { pidfd_ = std::move(pidfd); }
  /// Waits for the child (it is ending by itself) and gives up the guard;
  /// returns the wait status, -1 when it was reaped elsewhere.
  int reap_now() noexcept {
    const int status = pidfd_ ? reap(pidfd_) : reap(pid_);
    pidfd_.reset();
    pid_ = -1;
    return status;
  }
  /// The child is the caller's to keep: its pidfd, the guard disarmed.
  [[nodiscard]] unique_fd release() noexcept {
    pid_ = -1;
    return std::move(pidfd_);
  }

 private:
  pid_t pid_ = -1;
  unique_fd pidfd_;
};

/// The one format of the fixed-size messages a child sends its parent
/// (spawn's records, the namespace creator's messages): what happened, a
/// value (a pid, the index of a failed step) and an errno. Twelve bytes,
/// far below PIPE_BUF, so that each write is atomic and arrives whole,
/// whichever of several processes writes it; no padding, so that no byte
/// sent is left undefined. Every record is untrusted: each protocol decodes
/// and checks it (spawn_records.hpp, creator_wire.hpp).
template <typename What>
struct child_record {
  What what{};
  std::int32_t value = 0;
  std::int32_t err = 0;
};

/// Sends one record with one write(2). Async-signal-safe.
template <typename What>
GONSO_CHILD_CODE inline void send_record(int fd, What what, std::int32_t value, std::int32_t err) noexcept {
  const child_record<What> record{what, value, err};
  static_assert(sizeof record == 12, "no padding");
  while (::syscall(SYS_write, fd, &record, sizeof record) < 0 && errno == EINTR) {
  }
}

/// Reads what the children write on `fd` into `buf` until every writer is
/// gone (exec closed the pipe, or the processes exited), or `buf` is full:
/// a writer that goes on past what a protocol allows is refused by its
/// decoder, never read further. With `one`, stops after one whole record
/// (a conversation: the parent answers some records). A read error counts
/// as the end. Returns how many bytes were read.
template <std::size_t N>
[[nodiscard]] std::size_t read_records(int fd, std::array<std::byte, N>& buf, bool one = false) noexcept {
  constexpr std::size_t record = sizeof(child_record<std::int32_t>);
  std::size_t have = 0;
  while (have < buf.size() && !(one && have == record)) {
    const std::size_t want = one ? record - have : buf.size() - have;
    const ssize_t n = ::read(fd, buf.data() + have, want);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += static_cast<std::size_t>(n);
  }
  return have;
}

}  // namespace gonso::detail

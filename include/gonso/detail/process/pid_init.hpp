// gonso: the minimal init that keeps a pid namespace made by gonso usable.
// SPDX-License-Identifier: MIT
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include <gonso/detail/process/child_code.hpp>
#include <gonso/detail/process/children.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>

namespace gonso::detail {

/// The body of pid 1 of a new pid namespace. Async-signal-safe; never returns.
/// A pid namespace dies with its pid 1 (later forks fail with ENOMEM), so
/// this process stays until `lifeline` (a pipe's read end, whose write end
/// the owning Sets hold) reports end of file, and meanwhile reaps every
/// orphan that the kernel reparents to it. Signals sent from inside the
/// namespace cannot stop it: pid 1 only receives those it handles, and it
/// handles SIGCHLD alone.
[[noreturn]] inline void pid_init_main(int lifeline) noexcept {
  // Nothing else of the creator's may stay open in here.
  if (lifeline != 3 && ::dup2(lifeline, 3) == 3) lifeline = 3;
  ::syscall(SYS_close_range, 0U, 2U, 0U);
  ::syscall(SYS_close_range, 4U, ~0U, 0U);
  // Every signal is blocked already (by the creator). The handlers came with
  // the copy of the application: none may run here.
  default_all_signals();
  struct sigaction on_child {};
  on_child.sa_handler = [](int) {};
  ::sigaction(SIGCHLD, &on_child, nullptr);
  sigset_t wait_mask;
  ::sigfillset(&wait_mask);
  ::sigdelset(&wait_mask, SIGCHLD);
  for (;;) {
    while (::waitpid(-1, nullptr, WNOHANG | __WALL) > 0) {
    }
    pollfd owner{lifeline, POLLIN, 0};
    if (::ppoll(&owner, 1, nullptr, &wait_mask) > 0) ::_exit(0);  // every owner is gone
  }
}

/// Ownership of one such init, shared by every Set that holds its pid
/// namespace. When the last owner goes, the init (and with it everything in
/// the namespace) is killed and, when it is the caller's child, reaped, along
/// with the caller's own children the namespace was waiting for.
class pid_init {
 public:
  pid_init(unique_fd lifeline, unique_fd pidfd) noexcept
      : lifeline_(std::move(lifeline)), pidfd_(std::move(pidfd)), owner_(::getpid()) {}
  pid_init(const pid_init&) = delete;
  pid_init& operator=(const pid_init&) = delete;
  ~pid_init() {
    lifeline_.reset();
    // In a forked copy of the owner (one that calls exit()), letting go of the
    // lifeline is all: the owner's Sets still hold the namespace.
    if (!pidfd_ || ::getpid() != owner_) return;
    // Reaped here only if the init is our child (see creator_main);
    // otherwise its parent reaps it and waitid says ECHILD at once. Never a
    // plain blocking wait: the dying init may be waiting for programs that
    // only this process can reap (reap_killed_init).
    (void)::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0U);
    reap_killed_init(pidfd_);
  }

 private:
  unique_fd lifeline_;
  unique_fd pidfd_;
  pid_t owner_;
};

}  // namespace gonso::detail

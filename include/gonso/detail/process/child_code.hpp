// gonso: the rules for code that runs in a child after fork or clone, and the
// few primitives such code may use. Every function here is async-signal-safe.
// SPDX-License-Identifier: MIT
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

namespace gonso::detail {

// Forked children make their system calls through syscall(2) alone, which
// the parent calls before it forks (see bind_syscall). A libc function that a
// child calls for the first time is bound lazily in that child, again in
// every child (the binding lands in the child's copy of the GOT), unless the
// program was linked with -z now: here that cost ~30 µs for a handful of
// functions, plus a copy of the GOT page. A child that shares the caller's
// memory (spawn) must not run the dynamic linker at all.

// Code that runs in a child sharing the caller's memory (spawn's) is kept out
// of sanitizer instrumentation: AddressSanitizer would poison shadow memory
// for frames on the child's stack that never return (the child execs), and
// the sanitizers' runtimes keep per-thread state that the child would use
// as if it were the suspended calling thread. Every function such a child
// runs carries this, and calls nothing but these and syscall(2).
#if defined(__clang__)
#define GONSO_CHILD_CODE __attribute__((no_sanitize("address", "undefined")))  // NOLINT(cppcoreguidelines-macro-usage)
#else
#define GONSO_CHILD_CODE \
  __attribute__((no_sanitize_address, no_sanitize_undefined))  // NOLINT(cppcoreguidelines-macro-usage)
#endif

/// Calls syscall(2) once, and reads errno (__errno_location), so that both
/// are bound before a child is made; returns the caller's pid.
[[nodiscard]] inline pid_t bind_syscall() noexcept {
  const auto pid = static_cast<pid_t>(::syscall(SYS_getpid));
  volatile int& err = errno;
  err = err;
  return pid;
}

/// exit_group(2): ends the calling process at once, running no exit handler.
[[noreturn]] GONSO_CHILD_CODE inline void child_exit(int code) noexcept {
  ::syscall(SYS_exit_group, code);
  __builtin_unreachable();
}

/// Sets the disposition of `sig` to SIG_DFL with a raw rt_sigaction(2), which
/// also resets what glibc's sigaction() refuses to touch (its own signals).
GONSO_CHILD_CODE inline int default_signal(int sig) noexcept {
  struct {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)();
    std::uint64_t mask;  // the kernel's sigset_t: 64 bits
  } action{SIG_DFL, 0, nullptr, 0};
  return static_cast<int>(::syscall(SYS_rt_sigaction, sig, &action, nullptr, sizeof action.mask));
}

/// Resets every signal disposition to the default, so that none of the
/// caller's handlers can run in a child once its mask is opened.
GONSO_CHILD_CODE inline void default_all_signals() noexcept {
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) (void)default_signal(sig);
  }
}

/// Sets the signal mask of the calling thread to nothing or everything.
GONSO_CHILD_CODE inline void mask_signals(bool all) noexcept {
  std::uint64_t set = all ? ~std::uint64_t{0} : 0;  // the kernel's sigset_t: 64 bits
  ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &set, nullptr, sizeof set);
}

/// Makes the calling child die with its parent thread, and checks that the
/// parent did not die before that was armed. A child born into a pid
/// namespace its parent is not in (forked by a thread whose children go
/// elsewhere) sees its parent as 0: it cannot check, only arm. Pass 0 for
/// `parent` to arm without checking. Async-signal-safe.
GONSO_CHILD_CODE inline void die_with_parent(pid_t parent) noexcept {
  ::syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  const auto now = static_cast<pid_t>(::syscall(SYS_getppid));
  if (parent != 0 && now != 0 && now != parent) child_exit(127);
}

/// Ends the calling process the way a child's wait status says its own child
/// ended, so that a relaying middle process is invisible to the caller.
[[noreturn]] inline void exit_like(int status) noexcept {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    (void)default_signal(sig);
    ::syscall(SYS_prctl, PR_SET_DUMPABLE, 0, 0, 0, 0);  // no core file for a relayed crash
    ::syscall(SYS_kill, ::syscall(SYS_getpid), sig);
    child_exit(128 + sig);
  }
  child_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 127);
}

}  // namespace gonso::detail

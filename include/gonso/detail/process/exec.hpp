// gonso: the child side of spawn(): the plan it reads, and the code that
// joins, sets up the standard streams and fds, and execs the program.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <gonso/detail/ns/join.hpp>
#include <gonso/detail/process/child_code.hpp>
#include <gonso/detail/process/etc_overlay.hpp>
#include <gonso/detail/process/join.hpp>
#include <gonso/detail/process/launch.hpp>
#include <gonso/detail/process/program_setup.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/kind.hpp>

namespace gonso::detail {

/// What the child of spawn() reports on its close-on-exec pipe, in a
/// child_record: the program's pid (from the middle process of a pid or time
/// namespace), or the step that failed (value: the join step, the standard
/// stream, the /etc/netns pair, the rlimit, the extra fd, the capability,
/// which part of a step) and its errno.
enum class spawn_step : std::int32_t {
  pid = 1,
  join,
  fork,
  stdio,
  chdir,
  cloexec,
  exec,
  etc,
  cgroup,
  new_pid,
  proc,
  root,
  rlimit,
  fds,
  session,
  ctty,
  bounding,
  keepcaps,
  groups,
  gid,
  uid,
  caps,
  ambient,
  no_new_privs,
};
using spawn_record = child_record<spawn_step>;

/// Everything the child needs, built before it is made so that the child
/// only makes system calls and reads plain arrays.
struct spawn_plan {
  join_plan join;
  std::vector<std::string> paths;  // execve candidates, in order
  std::vector<const char*> path_ptrs;
  std::vector<const char*> argv;
  std::vector<const char*> envp;       // the program's environment, null-terminated
  std::vector<std::string> etc_files;  // pairs: /etc/netns/NAME/x, /etc/x
  std::vector<const char*> etc_ptrs;
  std::string cwd_storage;
  const char* cwd = nullptr;
  int stdio[3] = {-1, -1, -1};  // what becomes fd 0, 1, 2; -1 keeps the caller's
  program_setup setup;
  program_setup_storage setup_storage;

  /// The vectors above as plain arrays, set by seal() once they are
  /// complete: the child reads these alone and calls no member function.
  struct arrays {
    const char* const* paths = nullptr;
    std::size_t path_count = 0;
    char* const* argv = nullptr;
    char* const* envp = nullptr;
    const char* const* etc = nullptr;
    std::size_t etc_count = 0;
  } raw;

  void seal() noexcept {
    raw.paths = path_ptrs.data();
    raw.path_count = path_ptrs.size();
    raw.argv = const_cast<char* const*>(argv.data());  // NOLINT: execve's signature
    raw.envp = const_cast<char* const*>(envp.data());  // NOLINT: execve's signature
    raw.etc = etc_ptrs.data();
    raw.etc_count = etc_ptrs.size();
  }
};

// The child of spawn() is started by the launcher (raw_fork, or
// clone_on_stack when it shares the caller's memory) and makes raw system
// calls only: no libc wrapper that a sanitizer intercepts or that is bound
// lazily (see bind_syscall), and no state that other threads of the caller
// may have left locked, is touched (child_code.hpp).

/// Where a child of spawn() says which step failed: a close-on-exec pipe
/// (`fd`), or, for a child that shares the caller's memory and blocks it
/// until it has exec'd or ended, the caller's `shared` record itself.
struct spawn_reporter {
  int fd = -1;
  spawn_record* shared = nullptr;
};

GONSO_CHILD_CODE inline void send_record(const spawn_reporter& to, spawn_step what, std::int32_t value,
                                         std::int32_t err) noexcept {
  if (to.shared != nullptr) {
    to.shared->what = what;
    to.shared->value = value;
    to.shared->err = err;
    return;
  }
  send_record(to.fd, what, value, err);
}

/// Returns `fd` if it is above `floor`, else a close-on-exec copy above it,
/// so that moving fds into place (0, 1, 2 and the extra fds, at most
/// `floor`) cannot overwrite it. -1 on failure.
GONSO_CHILD_CODE inline int above(int fd, int floor) noexcept {
  return fd < 0 || fd > floor ? fd : static_cast<int>(::syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, floor + 1));
}

/// Marks every fd from 3 up close-on-exec. close_range(2) needs Linux 5.11;
/// older kernels get a loop up to the fd limit. Returns 0 or the errno.
GONSO_CHILD_CODE inline int cloexec_from_3() noexcept {
  if (::syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return 0;
  if (errno != ENOSYS && errno != EINVAL) return errno;
  struct {
    std::uint64_t cur, max;
  } limit{};
  if (::syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, nullptr, &limit) != 0) return errno;
  for (std::uint64_t fd = 3; fd < limit.cur && fd <= 0x7fffffff; ++fd) {
    const long flags = ::syscall(SYS_fcntl, static_cast<int>(fd), F_GETFD);
    if (flags >= 0) (void)::syscall(SYS_fcntl, static_cast<int>(fd), F_SETFD, flags | FD_CLOEXEC);
  }
  return 0;
}

/// Errors after which execvp(3) tries the next PATH entry.
GONSO_CHILD_CODE inline bool not_here(int err) noexcept {
  return err == ENOENT || err == ENOTDIR || err == ESTALE || err == ENODEV || err == ETIMEDOUT;
}

[[noreturn]] GONSO_CHILD_CODE inline void step_failed(const spawn_reporter& report, spawn_step step, std::int32_t value,
                                                      int err) noexcept {
  send_record(report, step, value, err);
  child_exit(127);
}

/// Moves the child into its cgroup before it joins anything: "0" moves the
/// writer, and the fd was opened (and its permission judged) by the caller.
GONSO_CHILD_CODE inline void enter_cgroup(const program_setup& setup, const spawn_reporter& report) noexcept {
  if (setup.cgroup_procs >= 0 && ::syscall(SYS_write, setup.cgroup_procs, "0", 1) != 1) {
    step_failed(report, spawn_step::cgroup, 0, errno);
  }
}

/// The program's mount namespace, root, /proc and working directory. A fresh
/// /proc goes into a mount namespace of its own whose tree is first made
/// private: /proc may be a shared mount, and a proc mounted on it would
/// then show up in the caller's namespace too.
GONSO_CHILD_CODE inline void enter_place(const spawn_plan& plan, const spawn_reporter& report) noexcept {
  const program_setup& setup = plan.setup;
  // Into the root first: unshare(CLONE_NEWNS) moves the cwd (and root) to
  // the new namespace's copy of its mount, while the root's fd stays on the
  // old one, where no /proc could be mounted from the new namespace.
  if (setup.root >= 0 && ::syscall(SYS_fchdir, setup.root) != 0) step_failed(report, spawn_step::root, 0, errno);
  if (setup.mount_proc) {
    if (::syscall(SYS_unshare, CLONE_NEWNS) != 0) step_failed(report, spawn_step::proc, 0, errno);
    if (::syscall(SYS_mount, nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      step_failed(report, spawn_step::proc, 1, errno);
    }
  }
  if (setup.root >= 0 && ::syscall(SYS_chroot, ".") != 0) step_failed(report, spawn_step::root, 0, errno);
  if (setup.mount_proc &&
      ::syscall(SYS_mount, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
    step_failed(report, spawn_step::proc, 2, errno);
  }
  if (setup.cwd_dir >= 0 && ::syscall(SYS_fchdir, setup.cwd_dir) != 0) step_failed(report, spawn_step::chdir, 1, errno);
  if (plan.cwd != nullptr && ::syscall(SYS_chdir, plan.cwd) != 0) step_failed(report, spawn_step::chdir, 0, errno);
}

/// The program's fds: the standard streams and the extra fds at their
/// numbers, everything else close-on-exec. Sources at or below the highest
/// number given out are first copied above it.
GONSO_CHILD_CODE inline void place_fds(const spawn_plan& plan, const spawn_reporter& report) noexcept {
  const program_setup& setup = plan.setup;
  int from[3];
  for (int i = 0; i < 3; ++i) {
    from[i] = above(plan.stdio[i], setup.fd_floor);
    if (plan.stdio[i] >= 0 && from[i] < 0) step_failed(report, spawn_step::stdio, i, errno);
  }
  for (std::size_t k = 0; k < setup.fd_count; ++k) {
    setup.scratch[k] = above(setup.fd_from[k], setup.fd_floor);
    if (setup.scratch[k] < 0) step_failed(report, spawn_step::fds, static_cast<std::int32_t>(k), errno);
  }
  // Whatever the caller opened without O_CLOEXEC, and whatever other threads
  // open meanwhile, stops here: the program gets 0, 1, 2 and its extra fds.
  if (const int err = cloexec_from_3(); err != 0) step_failed(report, spawn_step::cloexec, 0, err);
  for (int i = 0; i < 3; ++i) {
    // dup3 leaves close-on-exec clear on `i`; from[i] > fd_floor >= 2.
    if (from[i] >= 0 && ::syscall(SYS_dup3, from[i], i, 0) < 0) step_failed(report, spawn_step::stdio, i, errno);
  }
  for (std::size_t k = 0; k < setup.fd_count; ++k) {
    if (::syscall(SYS_dup3, setup.scratch[k], setup.fd_to[k], 0) < 0) {
      step_failed(report, spawn_step::fds, static_cast<std::int32_t>(k), errno);
    }
  }
  // Last: fd 1 is then whatever stdout became, a mapped fd included.
  if (setup.err_to_stdout && ::syscall(SYS_dup3, 1, 2, 0) < 0) step_failed(report, spawn_step::stdio, 2, errno);
}

/// Session, limits and umask, then who the program is: the bounding set
/// dropped while the caller's privilege lasts, the groups and ids, and the
/// capabilities asked for, kept across a uid change by PR_SET_KEEPCAPS
/// (which execve clears again).
GONSO_CHILD_CODE inline void become_user(const program_setup& setup, const spawn_reporter& report) noexcept {
  for (std::size_t i = 0; i < setup.rlimit_count; ++i) {
    const struct { std::uint64_t cur, max; } limit{setup.rlimits[i].soft, setup.rlimits[i].hard};
    if (::syscall(SYS_prlimit64, 0, setup.rlimits[i].resource, &limit, nullptr) != 0) {
      step_failed(report, spawn_step::rlimit, static_cast<std::int32_t>(i), errno);
    }
  }
  if (setup.umask >= 0) (void)::syscall(SYS_umask, setup.umask);
  if (setup.new_session && ::syscall(SYS_setsid) < 0) step_failed(report, spawn_step::session, 0, errno);
  if (setup.ctty >= 0 && ::syscall(SYS_ioctl, setup.ctty, TIOCSCTTY, 0) != 0) {
    step_failed(report, spawn_step::ctty, 0, errno);
  }
  if (setup.drop_bounding) {
    for (int cap = 0; cap <= setup.last_cap; ++cap) {
      if ((setup.bounding >> cap & 1U) == 0 && ::syscall(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
        step_failed(report, spawn_step::bounding, cap, errno);
      }
    }
  }
  if (setup.set_ids) {
    if (setup.set_caps && ::syscall(SYS_prctl, PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) {
      step_failed(report, spawn_step::keepcaps, 0, errno);
    }
    if (setup.groups >= 0) {
      if (::syscall(SYS_setgroups, setup.groups, setup.group_list) != 0)
        step_failed(report, spawn_step::groups, 0, errno);
    } else {
      // Dropped where allowed; a user namespace with setgroups "deny" (or
      // no CAP_SETGID) keeps the groups it has, as nsenter -S does.
      (void)::syscall(SYS_setgroups, 0, nullptr);
    }
    if (::syscall(SYS_setresgid, setup.gid, setup.gid, setup.gid) != 0) step_failed(report, spawn_step::gid, 0, errno);
    if (::syscall(SYS_setresuid, setup.uid, setup.uid, setup.uid) != 0) step_failed(report, spawn_step::uid, 0, errno);
  }
  if (setup.set_caps) {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {
        {static_cast<std::uint32_t>(setup.effective), static_cast<std::uint32_t>(setup.permitted),
         static_cast<std::uint32_t>(setup.inheritable)},
        {static_cast<std::uint32_t>(setup.effective >> 32), static_cast<std::uint32_t>(setup.permitted >> 32),
         static_cast<std::uint32_t>(setup.inheritable >> 32)}};
    if (::syscall(SYS_capset, &header, data) != 0) step_failed(report, spawn_step::caps, 0, errno);
    if (::syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && setup.ambient != 0) {
      step_failed(report, spawn_step::ambient, -1, errno);
    }
    for (int cap = 0; cap <= setup.last_cap; ++cap) {
      if ((setup.ambient >> cap & 1U) != 0 &&
          ::syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0) {
        step_failed(report, spawn_step::ambient, cap, errno);
      }
    }
  }
  if (setup.no_new_privs && ::syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    step_failed(report, spawn_step::no_new_privs, 0, errno);
  }
}

/// The process that becomes the program: /etc/netns, place, fds, ids (see
/// SpawnOptions for the order), death signal, signal mask, then execve over
/// the candidates. Async-signal-safe. Never returns.
[[noreturn]] GONSO_CHILD_CODE inline void exec_program(const spawn_plan& plan, const spawn_reporter& report) noexcept {
  std::size_t failed = 0;
  if (const int err = bind_etc_overlay(plan.raw.etc, plan.raw.etc_count, failed); err != 0) {
    step_failed(report, spawn_step::etc, failed == SIZE_MAX ? -1 : static_cast<std::int32_t>(failed), err);
  }
  enter_place(plan, report);
  place_fds(plan, report);
  become_user(plan.setup, report);
  // The death signal was for a child still being set up: it fires when the
  // spawning *thread* ends and persists across execve, so it would kill a
  // program that the Child handle (movable to any thread) may outlive.
  ::syscall(SYS_prctl, PR_SET_PDEATHSIG, 0, 0, 0, 0);
  mask_signals(false);
  // execvp's search, over candidates made before the child: ENOENT and the
  // like move on, EACCES is remembered, anything else stops.
  int err = ENOENT;
  bool denied = false;
  for (std::size_t i = 0; i < plan.raw.path_count; ++i) {
    ::syscall(SYS_execve, plan.raw.paths[i], plan.raw.argv, plan.raw.envp);
    err = errno;
    if (err == EACCES) {
      denied = true;
    } else if (!not_here(err)) {
      break;
    }
  }
  if (denied && not_here(err)) err = EACCES;
  mask_signals(true);  // nothing may interrupt the report now
  send_record(report, spawn_step::exec, 0, err);
  child_exit(127);
}

/// The forked child of spawn(). Starts with every signal blocked (the parent
/// blocked them around the clone), so that none of the caller's handlers
/// runs here; resets every disposition, joins, clones once more for pid and
/// time, and becomes the program. Never returns.
[[noreturn]] GONSO_CHILD_CODE inline void spawn_child(const spawn_plan& plan, int report_fd, pid_t parent) noexcept {
  default_all_signals();
  die_with_parent(parent);
  const spawn_reporter report{above(report_fd, plan.setup.fd_floor), nullptr};
  if (report.fd < 0) child_exit(127);  // no way to say why; the parent sees exit status 127
  // Once its ids and capabilities are the container's, a process inside
  // could ptrace this one (a copy of the caller's memory and fds) until the
  // exec. Not dumpable, it cannot; execve makes the program dumpable again.
  if (plan.setup.set_ids || plan.setup.set_caps) ::syscall(SYS_prctl, PR_SET_DUMPABLE, 0, 0, 0, 0);
  enter_cgroup(plan.setup, report);
  std::size_t failed = 0;
  if (const int err = join_in_child(plan.join, failed); err != 0) {
    send_record(report, spawn_step::join, static_cast<std::int32_t>(failed), err);
    child_exit(127);
  }
  if (plan.setup.new_pid && ::syscall(SYS_unshare, CLONE_NEWPID) != 0)
    step_failed(report, spawn_step::new_pid, 0, errno);
  if (plan.join.fork_after) {
    // Joining pid or time changed only where children go. CLONE_PARENT makes
    // the program a child of the caller (with this process's exit signal,
    // SIGCHLD), so the Child's pidfd, wait and kill reach the program itself.
    // Argument order (flags, stack, ...) as on x86-64 and most others.
    const pid_t inner = raw_clone(CLONE_PARENT);
    if (inner < 0) {
      send_record(report, spawn_step::fork, 0, errno);
      child_exit(127);
    }
    if (inner > 0) {
      // Our own pid namespace is still the caller's: `inner` is its pid there.
      send_record(report, spawn_step::pid, static_cast<std::int32_t>(inner), 0);
      child_exit(0);
    }
  }
  exec_program(plan, report);
}

/// What a child that shares the caller's memory reads, and where it writes
/// what the caller must learn: on the caller's stack, which is the caller's
/// alone while it waits (CLONE_VFORK).
struct shared_spawn {
  const spawn_plan* plan;
  pid_t parent;
  spawn_record failure{};  // what == 0: none
  // Joining a pid namespace: the stack of the program's process, and what
  // the middle process learns when it clones it.
  unsigned char* program_stack = nullptr;
  pid_t program = -1;
  int program_pidfd = -1;
};

/// The program's process in a joined pid namespace: cloned by the middle
/// process with CLONE_PARENT, so a child of the caller. Never returns.
GONSO_CHILD_CODE inline int shared_program_child(void* arg) noexcept {
  auto& job = *static_cast<shared_spawn*>(arg);
  die_with_parent(0);  // the caller is in another pid namespace: arm, cannot check
  exec_program(*job.plan, spawn_reporter{-1, &job.failure});
}

/// The child of spawn() that shares the caller's memory, on a stack of its
/// own: as spawn_child, reporting into the caller's record. When it joined a
/// pid namespace it shares the caller's fd table too (CLONE_FILES) and only
/// joins, then clones the program (CLONE_VM | CLONE_VFORK | CLONE_PARENT |
/// CLONE_PIDFD): the program's pidfd lands straight in the caller's table.
GONSO_CHILD_CODE inline int shared_spawn_child(void* arg) noexcept {
  auto& job = *static_cast<shared_spawn*>(arg);
  const spawn_reporter report{-1, &job.failure};
  default_all_signals();
  die_with_parent(job.parent);
  enter_cgroup(job.plan->setup, report);
  std::size_t failed = 0;
  if (const int err = join_in_child(job.plan->join, failed); err != 0) {
    send_record(report, spawn_step::join, static_cast<std::int32_t>(failed), err);
    child_exit(127);
  }
  if (job.plan->setup.new_pid && ::syscall(SYS_unshare, CLONE_NEWPID) != 0) {
    step_failed(report, spawn_step::new_pid, 0, errno);
  }
  if (job.plan->join.fork_after) {
    // Joining pid changed only where children go. CLONE_PARENT gives the
    // program this process's exit signal, SIGCHLD.
    int pidfd = -1;
    const pid_t inner = clone_on_stack(shared_program_child, job.program_stack,
                                       CLONE_VM | CLONE_VFORK | CLONE_PARENT | CLONE_PIDFD, &job, &pidfd);
    if (inner < 0) {
      send_record(report, spawn_step::fork, 0, errno);
      child_exit(127);
    }
    // Our own pid namespace is still the caller's: `inner` is its pid there.
    job.program = inner;
    job.program_pidfd = pidfd;
    child_exit(0);
  }
  exec_program(*job.plan, report);
}

/// Whether spawn() may make its child share the caller's memory
/// (CLONE_VM | CLONE_VFORK, as posix_spawn(3) does) instead of forking: no
/// copy of the caller's page tables, no copy-on-write faults after it, and
/// the caller wakes once, when the program has been exec'd. Not when a time
/// namespace is joined (clone refuses CLONE_VM while time_for_children is
/// another namespace, and setns into one needs a process that shares its
/// memory with none), not when the ids or capabilities change, and not
/// under ThreadSanitizer, whose runtime cannot follow such a child.
[[nodiscard]] inline bool may_share_memory(const spawn_plan& plan) noexcept {
  constexpr bool thread_sanitizer =
#if defined(__SANITIZE_THREAD__)
      true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
      true;
#else
      false;
#endif
#else
      false;
#endif
  if (thread_sanitizer) return false;
  // Dumpability belongs to the memory: the child could not make itself
  // undumpable (see spawn_child) without making the caller so, and changing
  // ids does that to it anyway.
  if (plan.setup.set_ids || plan.setup.set_caps) return false;
  for (std::size_t i = 0; i < plan.join.count; ++i) {
    if (plan.join.steps[i].kind == Kind::time) return false;
  }
  return true;
}

/// The stack of a child that shares the caller's memory, in the caller's
/// frame: the child makes only system calls from a few small frames (under
/// 1 KiB at -O0 with AddressSanitizer, by -fstack-usage), so 16 KiB leaves
/// room for compilers' stack checks without asking much of a small thread
/// stack. (glibc's posix_spawn maps 32 KiB per call.)
inline constexpr std::size_t shared_child_stack = std::size_t{16} * 1024;

/// Runs shared_spawn_child on a stack in this frame (and its program, for a
/// pid namespace, on another). Returns the child's pid and sets `pidfd`, or
/// -1 with errno from clone(2). When it returns, the child has exec'd or
/// ended (and so has the program's clone, if any, or it exec'd): the stacks
/// and our memory are ours again.
[[nodiscard]] inline pid_t clone_sharing_memory(shared_spawn& job, unique_fd& pidfd) noexcept {
  alignas(64) unsigned char stacks[2][shared_child_stack];
  job.program_stack = stacks[1] + shared_child_stack;
  const int files = job.plan->join.fork_after ? CLONE_FILES : 0;
  int fd = -1;
  const pid_t pid = clone_on_stack(shared_spawn_child, stacks[0] + shared_child_stack,
                                   CLONE_VM | CLONE_VFORK | CLONE_PIDFD | files | SIGCHLD, &job, &fd);
  if (pid > 0) pidfd.reset(fd);
  return pid;
}

}  // namespace gonso::detail

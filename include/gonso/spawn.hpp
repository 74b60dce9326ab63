// gonso: starting a program inside a Set, as nsenter(1) or `ip netns exec`
// do, without exec'ing a helper.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <gonso/child.hpp>
#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/process/child_process.hpp>
#include <gonso/detail/process/report.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/detail/thread/worker_pool.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>
#include <gonso/set.hpp>

namespace gonso {

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

namespace detail {

/// The join plan of a whole Set, made from its public view.
[[nodiscard]] inline join_plan plan_join(const Set& set) {
  ns_refs refs{};
  for (Kind kind : set.kinds()) refs[detail::index_of(kind)] = {set.fd(kind), set.identity(kind)};
  return plan_join(refs, set.kinds());
}

/// What the child of spawn() reports on its close-on-exec pipe: the
/// program's pid (from the middle process of a pid or time namespace), or
/// the step that failed and its errno. Fixed size and far below PIPE_BUF, so
/// each record arrives whole whichever process writes it.
enum class spawn_step : std::int32_t { pid = 1, join, fork, stdio, chdir, cloexec, exec, etc };
struct spawn_record {
  spawn_step what;
  std::int32_t value;  // the pid, the failed join step, or the standard stream
  std::int32_t err;    // errno
};

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
  const char* cwd = nullptr;
  int stdio[3] = {-1, -1, -1};  // what becomes fd 0, 1, 2; -1 keeps the caller's

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

// The child of spawn() is made with a raw clone and makes raw system calls
// only: no libc wrapper that a sanitizer intercepts or that is bound lazily
// (see bind_syscall), and no state that other threads of the caller may
// have left locked, is touched.

/// Where a child of spawn() says which step failed: a close-on-exec pipe
/// (`fd`), or, for a child that shares the caller's memory and blocks it
/// until it has exec'd or ended, the caller's `shared` record itself.
struct spawn_reporter {
  int fd = -1;
  spawn_record* shared = nullptr;
};

GONSO_CHILD_CODE inline void send_record(const spawn_reporter& to, spawn_step what, std::int32_t value,
                                         int err) noexcept {
  if (to.shared != nullptr) {
    to.shared->what = what;
    to.shared->value = value;
    to.shared->err = err;
    return;
  }
  const spawn_record record{what, value, err};
  // One write: far below PIPE_BUF, it is atomic and never partial.
  while (::syscall(SYS_write, to.fd, &record, sizeof record) < 0 && errno == EINTR) {
  }
}

/// Returns `fd` if it is above 2, else a close-on-exec copy above 2, so that
/// moving the standard streams into place cannot overwrite it. -1 on failure.
GONSO_CHILD_CODE inline int above_stdio(int fd) noexcept {
  return fd < 0 || fd > 2 ? fd : static_cast<int>(::syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, 3));
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

/// The process that becomes the program: standard streams, working
/// directory, fds, death signal, signal mask, then execve over the
/// candidates. Async-signal-safe. Never returns.
[[noreturn]] GONSO_CHILD_CODE inline void exec_program(const spawn_plan& plan, const spawn_reporter& report) noexcept {
  int from[3];
  for (int i = 0; i < 3; ++i) {
    from[i] = above_stdio(plan.stdio[i]);
    if (plan.stdio[i] >= 0 && from[i] < 0) {
      send_record(report, spawn_step::stdio, i, errno);
      child_exit(127);
    }
  }
  for (int i = 0; i < 3; ++i) {
    // dup3 leaves close-on-exec clear on `i`; from[i] > 2, so never equal.
    if (from[i] >= 0 && ::syscall(SYS_dup3, from[i], i, 0) < 0) {
      send_record(report, spawn_step::stdio, i, errno);
      child_exit(127);
    }
  }
  std::size_t failed = 0;
  if (const int err = bind_etc_overlay(plan.raw.etc, plan.raw.etc_count, failed); err != 0) {
    send_record(report, spawn_step::etc, failed == SIZE_MAX ? -1 : static_cast<std::int32_t>(failed), err);
    child_exit(127);
  }
  if (plan.cwd != nullptr && ::syscall(SYS_chdir, plan.cwd) != 0) {
    send_record(report, spawn_step::chdir, 0, errno);
    child_exit(127);
  }
  // Whatever the caller opened without O_CLOEXEC, and whatever other threads
  // open meanwhile, stops here: the program gets fds 0, 1 and 2 only.
  if (const int err = cloexec_from_3(); err != 0) {
    send_record(report, spawn_step::cloexec, 0, err);
    child_exit(127);
  }
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
  const spawn_reporter report{above_stdio(report_fd), nullptr};
  if (report.fd < 0) child_exit(127);  // no way to say why; the parent sees exit status 127
  std::size_t failed = 0;
  if (const int err = join_in_child(plan.join, failed); err != 0) {
    send_record(report, spawn_step::join, static_cast<std::int32_t>(failed), err);
    child_exit(127);
  }
  if (plan.join.fork_after) {
    // Joining pid or time changed only where children go. CLONE_PARENT makes
    // the program a child of the caller (with this process's exit signal,
    // SIGCHLD), so the Child's pidfd, wait and kill reach the program itself.
    // Argument order (flags, stack, ...) as on x86-64 and most others.
    const long inner = ::syscall(SYS_clone, CLONE_PARENT, 0, 0, 0, 0);
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
  std::size_t failed = 0;
  if (const int err = join_in_child(job.plan->join, failed); err != 0) {
    send_record(report, spawn_step::join, static_cast<std::int32_t>(failed), err);
    child_exit(127);
  }
  if (job.plan->join.fork_after) {
    // Joining pid changed only where children go. CLONE_PARENT gives the
    // program this process's exit signal, SIGCHLD.
    int pidfd = -1;
    const int inner = ::clone(shared_program_child, job.program_stack,
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
/// memory with none), and not under ThreadSanitizer, whose runtime cannot
/// follow such a child.
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
  const int pid = ::clone(shared_spawn_child, stacks[0] + shared_child_stack,
                          CLONE_VM | CLONE_VFORK | CLONE_PIDFD | files | SIGCHLD, &job, &fd);
  if (pid > 0) pidfd.reset(fd);
  return pid;
}

/// The most records a spawn child writes: the program's pid (from a middle
/// process), then one failure.
inline constexpr std::size_t max_spawn_records = 2;

/// What the records a child sent may name, from the plan: how many join
/// steps, /etc/netns files, and whether a pid is to be expected at all.
struct spawn_limits {
  std::size_t join_steps = 0;
  std::size_t etc_files = 0;  // pairs: an index names the first of two
  bool expect_pid = false;
};

/// What the records say, validated.
struct spawn_outcome {
  pid_t program = -1;                   // the pid record's value, when there was one
  std::optional<spawn_record> failure;  // the first failure
};

/// Checks one failure record against the plan: a known step, an errno in
/// range, and a value that names something the plan has. Throws
/// std::system_error(EPROTO) otherwise, so that a bad index never reaches
/// spawn_error.
inline void check_spawn_failure(const spawn_record& record, const spawn_limits& limits) {
  const auto bad = [](const char* why) {
    throw system_error(EPROTO, "malformed record from the child of spawn: {}", why);
  };
  if (!valid_errno(record.err)) bad("an errno out of range");
  const std::int64_t value = record.value;
  switch (record.what) {
    case spawn_step::join:
      if (value < 0 || static_cast<std::uint64_t>(value) >= limits.join_steps) bad("a join step the plan has not");
      return;
    case spawn_step::stdio:
      if (value < 0 || value > 2) bad("a standard stream other than 0, 1 or 2");
      return;
    case spawn_step::etc:
      if (value == -1) return;  // making the mount namespace failed
      if (value < 0 || value % 2 != 0 || static_cast<std::uint64_t>(value) + 1 >= limits.etc_files) {
        bad("an /etc/netns file the plan has not");
      }
      return;
    case spawn_step::fork:
    case spawn_step::chdir:
    case spawn_step::cloexec:
    case spawn_step::exec:
      if (value != 0) bad("a value where none belongs");
      return;
    case spawn_step::pid:
      break;
  }
  bad("an unknown step");
}

/// Decodes the bytes a child of spawn() wrote on its pipe. Pure and bounded:
/// whole records only, at most max_spawn_records, each validated (see
/// check_spawn_failure); at most one pid record, only where one is expected,
/// with a value above 0. Throws std::system_error(EPROTO) for anything else.
/// A pid is only a claim: the caller checks that it names its own child in
/// the Set (see verify_program).
[[nodiscard]] inline spawn_outcome decode_spawn_records(std::span<const std::byte> bytes, const spawn_limits& limits) {
  const auto bad = [](const char* why) {
    throw system_error(EPROTO, "malformed record from the child of spawn: {}", why);
  };
  if (bytes.size() % sizeof(spawn_record) != 0) bad("a record cut short");
  if (bytes.size() > max_spawn_records * sizeof(spawn_record)) bad("more records than a child writes");
  spawn_outcome out;
  bool pid_seen = false;
  for (std::size_t at = 0; at < bytes.size(); at += sizeof(spawn_record)) {
    spawn_record record{};
    std::memcpy(&record, bytes.data() + at, sizeof record);
    // The middle process writes the program's pid after cloning it, and the
    // program may fail (and write its failure) first: either order is sound.
    if (record.what == spawn_step::pid) {
      if (!limits.expect_pid) bad("a pid where none is expected");
      if (pid_seen) bad("a second pid");
      if (record.value <= 0 || record.err != 0) bad("a pid that is no process id");
      pid_seen = true;
      out.program = record.value;
      continue;
    }
    check_spawn_failure(record, limits);
    if (out.failure) bad("a second failure");
    out.failure = record;
  }
  return out;
}

/// Reads what the child writes until all writers are gone (exec closed the
/// pipe, or the processes exited), but never more than max_spawn_records
/// records and one byte: a writer that goes on is refused. A read error
/// counts as the end. Then decodes it (decode_spawn_records).
inline spawn_outcome read_records(int fd, const spawn_limits& limits) {
  std::array<std::byte, max_spawn_records * sizeof(spawn_record) + 1> buf{};
  std::size_t have = 0;
  while (have < buf.size()) {
    const ssize_t n = ::read(fd, buf.data() + have, buf.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += static_cast<std::size_t>(n);
  }
  return decode_spawn_records(std::span<const std::byte>(buf.data(), have), limits);
}

/// Whether `pidfd` (for `pid`) is a process the caller may take as the
/// program: its own child (or one already reaped elsewhere, when the
/// application ignores SIGCHLD) that no Child holds yet, and inside the Set's
/// pid and time namespaces where those were joined. A pid (or pidfd) comes
/// from a child, so it is never taken on trust. Opens no fd (the caller may
/// be out of them). Throws std::system_error(EPROTO) when it is not.
inline void verify_program(const unique_fd& pidfd, pid_t pid, const Set& set, const join_plan& plan) {
  siginfo_t info{};
  int r = 0;
  while ((r = ::waitid(P_PIDFD, static_cast<id_t>(pidfd.get()), &info, WEXITED | WNOHANG | WNOWAIT | __WALL)) != 0 &&
         errno == EINTR) {
  }
  if (r != 0) {
    pollfd ended{pidfd.get(), POLLIN, 0};
    // ECHILD for a process that has ended: ours, reaped by the kernel
    // (SIGCHLD ignored); for one still running: someone else's.
    if (errno != ECHILD || ::poll(&ended, 1, 0) != 1) {
      throw system_error(EPROTO, "the child of spawn named pid {}, which is not the caller's child", pid);
    }
  }
  {
    child_registry& registry = child_registry::get();
    const std::lock_guard<std::mutex> hold(registry.lock);
    for (const auto& state : registry.live) {
      if (state->pid == pid) throw system_error(EPROTO, "the child of spawn named pid {}, which a Child holds", pid);
    }
  }
  for (std::size_t i = 0; i < plan.count; ++i) {
    const Kind kind = plan.steps[i].kind;
    if (kind != Kind::pid && kind != Kind::time) continue;
    Identity seen{};
    const std::string path = fmt::format("/proc/{}/ns/{}", pid, name(kind));
    // A zombie keeps its namespace links; a pid reused since cannot be ours
    // (ours is unreaped, so its number is not free).
    if (stat_ns(AT_FDCWD, path.c_str(), kind, seen) == 0 && seen.inode != set.identity(kind).inode) {
      throw system_error(EPROTO, "the child of spawn named pid {}, which is not in the Set's {} namespace", pid, kind);
    }
  }
}

/// A std::system_error for a failed step, in words a person can act on.
[[nodiscard]] inline std::system_error spawn_error(const spawn_record& record, const spawn_plan& plan, const Set& set,
                                                   const std::vector<std::string>& argv, std::string_view search) {
  static constexpr const char* streams[] = {"standard input", "standard output", "standard error"};
  switch (record.what) {
    case spawn_step::join: {
      const Kind kind = plan.join.steps[static_cast<std::size_t>(record.value)].kind;
      return system_error(record.err, "cannot join {} namespace {}", kind, set.identity(kind));
    }
    case spawn_step::fork:
      return system_error(record.err, "cannot fork {} into the joined pid or time namespace of {}", argv[0], set);
    case spawn_step::stdio:
      return system_error(record.err, "cannot set up the {} of {}", streams[record.value % 3], argv[0]);
    case spawn_step::chdir:
      return system_error(record.err, "cannot change directory to {}", plan.cwd);
    case spawn_step::etc:
      if (record.value < 0)
        return system_error(record.err, "cannot make a mount namespace for /etc/netns of {}", argv[0]);
      return system_error(record.err, "cannot bind {} over {}", plan.etc_files[static_cast<std::size_t>(record.value)],
                          plan.etc_files[static_cast<std::size_t>(record.value) + 1]);
    case spawn_step::cloexec:
      return system_error(record.err, "cannot mark the inherited fds of {} close-on-exec", argv[0]);
    case spawn_step::exec:
    default:
      if (search.empty()) return system_error(record.err, "cannot execute {}", argv[0]);
      return system_error(record.err, "cannot execute {} (searched PATH {})", argv[0], search);
  }
}

}  // namespace detail

/// Starts the program `argv` (argv[0] is the file; without a '/' it is looked
/// up in PATH, as execvp(3) does, inside the Set's mount namespace) in a
/// process that has joined every namespace of `set` it is not already in,
/// user and time included. Returns the Child that owns it.
///
/// The program is a direct child of the caller, also in a pid or time
/// namespace: there the child joins and clones the program with
/// CLONE_PARENT, so that it is inside the namespace (the README's kernel rules, "pid").
/// It gets fds 0, 1 and 2 only (as `options` says), every other fd of the
/// caller being close-on-exec for it; default signal dispositions and an
/// empty signal mask; and no death signal: like posix_spawn(3)'s, it outlives
/// the caller unless the Child is destroyed first. The child is a raw clone
/// (no pthread_atfork handlers run) that makes only system calls until exec;
/// everything that allocates is done before. Unless a time namespace is
/// joined, it shares the caller's memory and the calling thread waits until
/// the program has been exec'd, as with posix_spawn(3) (CLONE_VM |
/// CLONE_VFORK): no copy of the caller's page tables; in a pid namespace the
/// program's pidfd comes from its clone. Joining a time namespace forks. May
/// be called from many threads at once, and from inside Set::run.
///
/// Throws std::invalid_argument for an empty argv, an empty argv[0], a NUL
/// inside an argument, env entry or cwd, an env entry without '=', or a bad
/// etc_of_netns name; std::logic_error for an empty Set;
/// std::system_error with the child's errno when a step before exec fails
/// ("cannot join net namespace net:[4026532008]: Operation not permitted",
/// "cannot execute /no/such: No such file or directory", "cannot change
/// directory to /x: No such file or directory"), and with the caller's for
/// pipe, fork and pidfd failures; std::system_error(EINVAL), before starting
/// anything, when a pid or time namespace is to be joined from a thread whose
/// children go to another pid namespace (inside Set::run of a Set holding
/// one), where the program's pid could not be learnt. After an error nothing
/// is left: no process, zombie or fd.
[[nodiscard]] inline Child spawn(const Set& set, const std::vector<std::string>& argv,
                                 const SpawnOptions& options = {}) {
  if (argv.empty()) throw std::invalid_argument("cannot spawn a program: argv is empty");
  if (argv[0].empty()) throw std::invalid_argument("cannot spawn a program: argv[0] is empty");
  const auto has_nul = [](const std::string& s) { return s.find('\0') != std::string::npos; };
  for (const std::string& arg : argv) {
    // Escaped: a NUL in argv[0] would cut what() short of the reason.
    if (has_nul(arg)) throw std::invalid_argument(fmt::format("cannot spawn {:?}: an argument holds a NUL", argv[0]));
  }
  if (set.empty()) {
    throw std::logic_error("cannot spawn a program in an empty Set (moved-from, or opened with no kinds)");
  }

  detail::spawn_plan plan;
  plan.join = detail::plan_join(set);
  if (plan.join.fork_after && !detail::children_share_pid_ns()) {
    throw detail::system_error(EINVAL,
                               "cannot spawn {} into the pid or time namespace of {} from a thread whose children go "
                               "to another pid namespace (as inside Set::run of a Set holding one): the program's "
                               "pid would be numbered there, not here",
                               argv[0], set);
  }
  for (const std::string& arg : argv) plan.argv.push_back(arg.c_str());
  plan.argv.push_back(nullptr);
  const char* path_var = nullptr;
  if (options.env) {
    for (const std::string& entry : *options.env) {
      if (has_nul(entry))
        throw std::invalid_argument(fmt::format("cannot spawn {}: an env entry holds a NUL", argv[0]));
      // execve(2) would pass it on, and the program's getenv() would never see it.
      if (entry.find('=') == std::string::npos)
        throw std::invalid_argument(fmt::format("cannot spawn {}: env entry {:?} is not NAME=value", argv[0], entry));
      plan.envp.push_back(entry.c_str());
      if (entry.starts_with("PATH=")) path_var = entry.c_str() + 5;
    }
  } else {
    // A copy of environ's array: a child sharing our memory must not read
    // an array that setenv() in another thread may free meanwhile. After
    // clearenv() environ is null: no variables.
    for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) plan.envp.push_back(*entry);
    path_var = std::getenv("PATH");  // NOLINT(concurrency-mt-unsafe): as execvp itself reads it
  }
  plan.envp.push_back(nullptr);
  std::string search;  // the PATH searched, for messages; empty when argv[0] has a '/'
  if (argv[0].find('/') != std::string::npos) {
    plan.paths.push_back(argv[0]);
  } else {
    // glibc's execvp default when there is no PATH at all.
    search = path_var != nullptr ? path_var : "/bin:/usr/bin";
    std::string_view rest = search;
    for (;;) {
      const std::size_t colon = rest.find(':');
      const std::string_view dir = rest.substr(0, colon);
      // An empty entry is the current directory (POSIX).
      plan.paths.push_back(dir.empty() ? argv[0] : fmt::format("{}/{}", dir, argv[0]));
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
  }
  for (const std::string& path : plan.paths) plan.path_ptrs.push_back(path.c_str());
  const std::string cwd = options.cwd ? options.cwd->native() : std::string();
  // chdir(2) would stop at the NUL and go to another folder.
  if (has_nul(cwd)) throw std::invalid_argument(fmt::format("cannot spawn {}: the cwd holds a NUL", argv[0]));
  if (options.cwd) plan.cwd = cwd.c_str();
  if (options.etc_of_netns) {
    // Listed here, in the caller's mount namespace, as ip netns exec does.
    plan.etc_files = detail::etc_overlay(*options.etc_of_netns);
    plan.etc_ptrs = detail::c_strings(plan.etc_files);
  }
  plan.seal();

  // Every fd made here is close-on-exec: a program another thread spawns
  // meanwhile must not hold our pipes open.
  detail::unique_fd devnull;
  if (options.in == Stdio::null || options.out == Stdio::null || options.err == Stdio::null) {
    devnull.reset(::open("/dev/null", O_RDWR | O_CLOEXEC | O_NOCTTY));
    if (!devnull) throw detail::system_error(errno, "cannot open /dev/null for {}", argv[0]);
  }
  detail::pipe_fds pipes[3];
  const Stdio wanted[3] = {options.in, options.out, options.err};
  detail::unique_fd mine[3];  // the caller's ends
  for (int i = 0; i < 3; ++i) {
    if (wanted[i] == Stdio::pipe) {
      pipes[i] = detail::make_pipe();
      // stdin: the program reads; stdout and stderr: it writes.
      mine[i] = std::move(i == 0 ? pipes[i].write : pipes[i].read);
      plan.stdio[i] = (i == 0 ? pipes[i].read : pipes[i].write).get();
    } else if (wanted[i] == Stdio::null) {
      plan.stdio[i] = devnull.get();
    }
  }
  const auto close_childs_ends = [&] {
    for (auto& p : pipes) {
      p.read.reset();
      p.write.reset();
    }
    devnull.reset();
  };
  // With every signal blocked across the clone, none of the caller's
  // handlers can run in the child before it has reset them.
  sigset_t all;
  sigset_t old;
  ::sigfillset(&all);
  // Through syscall(2), bound here before the child, which calls nothing
  // else. A child born in another pid namespace sees its parent as pid 0 and
  // skips the check.
  const pid_t parent = detail::bind_syscall();
  const detail::spawn_limits limits{plan.join.count, plan.etc_files.size(), plan.join.fork_after};

  if (detail::may_share_memory(plan)) {
    detail::shared_spawn job{&plan, parent};
    detail::unique_fd pidfd;
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    const pid_t pid = detail::clone_sharing_memory(job, pidfd);
    const int clone_errno = errno;  // meaningful only on failure: the child shares our errno
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (pid > 0) {
      close_childs_ends();
      // The record and the numbers in `job` were written by the child: each
      // is checked before it is believed (decode_spawn_records, verify_program).
      const bool failed = job.failure.what != detail::spawn_step{};
      const auto failure = [&] {
        return detail::decode_spawn_records(std::as_bytes(std::span(&job.failure, 1)), limits).failure.value();
      };
      if (!plan.join.fork_after) {
        if (failed) {
          (void)detail::reap(pidfd);  // it has ended, or is ending
          throw detail::spawn_error(failure(), plan, set, argv, search);
        }
        return detail::child_access::make(std::move(pidfd), pid, std::move(mine[0]), std::move(mine[1]),
                                          std::move(mine[2]));
      }
      // The middle process has ended, once the program's process exec'd or
      // ended; its pidfd is ours (it shared our fd table), so the program is
      // held even if it ended and was reaped already.
      (void)detail::reap(pidfd);
      detail::unique_fd program;
      if (job.program_pidfd > 2) {
        // Owned (and so closed) only once it is shown to be a pidfd: any
        // other fd of ours stays untouched. Only gonso's own code wrote
        // `job` (the memory stops being shared when the program is exec'd),
        // but it is checked all the same.
        siginfo_t info{};
        const int r = ::waitid(P_PIDFD, static_cast<id_t>(job.program_pidfd), &info, WEXITED | WNOHANG | WNOWAIT);
        if (r == 0 || (errno != EBADF && errno != EINVAL)) program.reset(job.program_pidfd);
      }
      if (failed) {
        if (program) (void)detail::reap(program);
        throw detail::spawn_error(failure(), plan, set, argv, search);
      }
      if (!program) {
        // Killed (say by another's SIGKILL) before it could clone the program.
        throw detail::system_error(ECHILD, "cannot spawn {}: the child setting it up ended with no report", argv[0]);
      }
      detail::verify_program(program, job.program, set, plan.join);
      return detail::child_access::make(std::move(program), job.program, std::move(mine[0]), std::move(mine[1]),
                                        std::move(mine[2]));
    }
    // A sandbox may refuse the shared-memory clone (a seccomp filter's EPERM
    // or ENOSYS, an emulated kernel's EINVAL): fork then.
    if (clone_errno != EPERM && clone_errno != ENOSYS && clone_errno != EINVAL) {
      throw detail::system_error(clone_errno, "cannot start a child process to spawn {} in {}", argv[0], set);
    }
  }

  // Forked: the child reports on a close-on-exec pipe, whose end of file
  // means exec or exit.
  detail::pipe_fds report = detail::make_pipe();
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  const pid_t pid = detail::raw_fork();
  if (pid == 0) detail::spawn_child(plan, report.write.get(), parent);
  const int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) throw detail::system_error(fork_errno, "cannot fork a child process to spawn {} in {}", argv[0], set);

  // Without pid or time the child is the program: hold it by pidfd at once.
  detail::unique_fd pidfd;
  if (!plan.join.fork_after) {
    pidfd.reset(detail::pidfd_open(pid));
    if (!pidfd) {
      const int err = errno;
      ::kill(pid, SIGKILL);
      (void)detail::reap(pid);
      throw detail::system_error(err, "cannot open a pidfd for pid {} ({})", pid, argv[0]);
    }
  }
  report.write.reset();
  close_childs_ends();
  detail::spawn_outcome outcome;
  try {
    outcome = detail::read_records(report.read.get(), limits);
  } catch (const std::system_error&) {
    // Bad bytes: end what is surely ours. A pid the child claimed is not.
    if (pidfd) {
      (void)detail::kill_and_reap(pidfd);
    } else {
      ::kill(pid, SIGKILL);
      (void)detail::reap(pid);
    }
    throw;
  }
  const pid_t program = plan.join.fork_after ? outcome.program : pid;
  const detail::spawn_record* failure = outcome.failure ? &*outcome.failure : nullptr;
  int middle_status = 0;
  if (plan.join.fork_after) {
    // The middle process has reported and exited (or failed): reap it. The
    // program is the caller's child and not reaped, so its pid is safe to
    // open until then.
    middle_status = detail::reap(pid);
    if (program > 0) {
      pidfd.reset(detail::pidfd_open(program));
      if (!pidfd) {
        // ESRCH: the program already ended and was reaped elsewhere (the
        // application ignores SIGCHLD, or a handler reaps every child). Its
        // pid may be someone else's by now: signal nothing.
        const int err = errno;
        throw detail::system_error(err, "cannot open a pidfd for pid {} ({})", program, argv[0]);
      }
      // Before it is reaped or held: the pid came from the child.
      detail::verify_program(pidfd, program, set, plan.join);
    }
  }
  if (failure != nullptr) {
    // The failing process exits by itself: reap it.
    if (pidfd) (void)detail::reap(pidfd);
    throw detail::spawn_error(*failure, plan, set, argv, search);
  }
  if (!pidfd) {
    // The middle process ended without reporting a pid or an error: it was
    // killed (say by another's SIGKILL) before it could.
    if (middle_status == -1)
      throw detail::system_error(ECHILD, "cannot spawn {}: the child was reaped elsewhere", argv[0]);
    throw detail::system_error(ECHILD, "cannot spawn {}: the child setting it up ended with status {:#x} and no report",
                               argv[0], middle_status);
  }
  return detail::child_access::make(std::move(pidfd), program, std::move(mine[0]), std::move(mine[1]),
                                    std::move(mine[2]));
}

}  // namespace gonso

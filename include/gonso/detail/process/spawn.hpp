// gonso: the parent side of spawn(): the plan made from the caller's
// arguments, the standard streams, and the two ways to start the child (in
// the caller's memory, or forked), each ending in a verified program or an
// error with nothing left behind.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/ns/join.hpp>
#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/process/etc_overlay.hpp>
#include <gonso/detail/process/exec.hpp>
#include <gonso/detail/process/launch.hpp>
#include <gonso/detail/process/spawn_records.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/io.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/options.hpp>

namespace gonso::detail {

/// What spawn() makes its Child of: the program's pidfd and pid, and the
/// caller's ends of its standard streams.
struct spawned {
  unique_fd pidfd;
  pid_t pid = -1;
  unique_fd in;
  unique_fd out;
  unique_fd err;
};

[[nodiscard]] inline bool has_nul(const std::string& s) noexcept { return s.find('\0') != std::string::npos; }

/// The candidates execvp(3) would try for `file`, with the PATH searched
/// (empty when `file` has a '/'): glibc's default when there is no PATH,
/// and an empty entry meaning the current directory (POSIX).
inline void plan_path_search(spawn_plan& plan, const std::string& file, const char* path_var, std::string& search) {
  if (file.find('/') != std::string::npos) {
    plan.paths.push_back(file);
  } else {
    search = path_var != nullptr ? path_var : "/bin:/usr/bin";
    std::string_view rest = search;
    for (;;) {
      const std::size_t colon = rest.find(':');
      const std::string_view dir = rest.substr(0, colon);
      plan.paths.push_back(dir.empty() ? file : fmt::format("{}/{}", dir, file));
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
  }
  for (const std::string& path : plan.paths) plan.path_ptrs.push_back(path.c_str());
}

/// std::invalid_argument for an argv that cannot be exec'd.
inline void check_argv(const std::vector<std::string>& argv) {
  if (argv.empty()) throw std::invalid_argument("cannot spawn a program: argv is empty");
  if (argv[0].empty()) throw std::invalid_argument("cannot spawn a program: argv[0] is empty");
  for (const std::string& arg : argv) {
    // Escaped: a NUL in argv[0] would cut what() short of the reason.
    if (has_nul(arg)) throw std::invalid_argument(fmt::format("cannot spawn {:?}: an argument holds a NUL", argv[0]));
  }
}

/// Checks the rest of spawn()'s arguments (std::invalid_argument) and plans
/// everything but the standard streams: the join, argv, the environment,
/// the PATH search, cwd and the /etc/netns overlay. `plan` points into
/// `argv` and `options`, which must outlive it.
inline void plan_spawn(spawn_plan& plan, const ns_handles& ns, Kinds kinds, const std::vector<std::string>& argv,
                       const SpawnOptions& options, std::string& search) {
  check_argv(argv);
  plan.join = plan_join(ns, kinds);
  bool joins_user = false;
  for (std::size_t i = 0; i < plan.join.count; ++i) joins_user = joins_user || plan.join.steps[i].kind == Kind::user;
  plan_program_setup(plan.setup, plan.setup_storage, options, !joins_user, argv[0]);
  if (plan.setup.new_pid) {
    for (std::size_t i = 0; i < plan.join.count; ++i) {
      // The kernel makes a pid namespace only below the maker's active one,
      // and setns(pid) changes only where children go (unshare: EINVAL).
      if (plan.join.steps[i].kind == Kind::pid) {
        throw system_error(EINVAL,
                           "cannot spawn {} as pid 1 of a new pid namespace while joining the pid namespace of {}: "
                           "a new one is made below the caller's own (leave Kind::pid out of the Set)",
                           argv[0], describe(ns, kinds));
      }
    }
    // The program is then a child of the process that made the namespace.
    plan.join.fork_after = true;
  }
  if (plan.join.fork_after && !children_share_pid_ns()) {
    throw system_error(EINVAL,
                       "cannot spawn {} into the pid or time namespace of {} from a thread whose children go "
                       "to another pid namespace (as inside Set::run of a Set holding one): the program's "
                       "pid would be numbered there, not here",
                       argv[0], describe(ns, kinds));
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
  plan_path_search(plan, argv[0], path_var, search);
  if (options.cwd) {
    plan.cwd_storage = options.cwd->native();
    // chdir(2) would stop at the NUL and go to another folder.
    if (has_nul(plan.cwd_storage))
      throw std::invalid_argument(fmt::format("cannot spawn {}: the cwd holds a NUL", argv[0]));
    plan.cwd = plan.cwd_storage.c_str();
  }
  if (options.etc_of_netns) {
    // Listed here, in the caller's mount namespace, as ip netns exec does.
    plan.etc_files = etc_overlay(*options.etc_of_netns);
    plan.etc_ptrs = c_strings(plan.etc_files);
  }
}

/// The standard streams of one spawn: the pipes and /dev/null the child is
/// given, and the caller's ends. Every fd is close-on-exec: a program
/// another thread spawns meanwhile must not hold our pipes open.
struct spawn_stdio {
  unique_fd devnull;
  pipe_fds pipes[3];
  unique_fd mine[3];

  spawn_stdio(const SpawnOptions& options, spawn_plan& plan, const std::string& program) {
    const Stdio wanted[3] = {options.in, options.out, options.err};
    for (int i = 0; i < 3; ++i) {
      if (wanted[i] == Stdio::null && !devnull) {
        devnull.reset(::open("/dev/null", O_RDWR | O_CLOEXEC | O_NOCTTY));
        if (!devnull) throw system_error(errno, "cannot open /dev/null for {}", program);
      }
      if (wanted[i] == Stdio::pipe) {
        pipes[i] = make_pipe();
        // stdin: the program reads; stdout and stderr: it writes.
        mine[i] = std::move(i == 0 ? pipes[i].write : pipes[i].read);
        plan.stdio[i] = (i == 0 ? pipes[i].read : pipes[i].write).get();
      } else if (wanted[i] == Stdio::null) {
        plan.stdio[i] = devnull.get();
      }
    }
  }
  /// Once the child has them (exec'd, or its own copy of our fd table).
  void close_childs_ends() noexcept {
    for (auto& p : pipes) {
      p.read.reset();
      p.write.reset();
    }
    devnull.reset();
  }
  [[nodiscard]] spawned to(unique_fd pidfd, pid_t pid) noexcept {
    return {std::move(pidfd), pid, std::move(mine[0]), std::move(mine[1]), std::move(mine[2])};
  }
};

/// Every signal blocked on the calling thread while it lives, so that none
/// of the caller's handlers can run in a child before it has reset them.
class signals_blocked {
 public:
  signals_blocked() noexcept {
    sigset_t all;
    ::sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old_);
  }
  signals_blocked(const signals_blocked&) = delete;
  signals_blocked& operator=(const signals_blocked&) = delete;
  ~signals_blocked() { ::pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_{};
};

/// One spawn in flight: what its errors name, and how to judge what the
/// children report.
struct spawn_call {
  const ns_handles& ns;
  Kinds kinds;
  const std::vector<std::string>& argv;
  const spawn_plan& plan;
  std::string search;
  spawn_limits limits;
  pid_t parent;

  [[noreturn]] void fail(const spawn_record& record) const { throw spawn_error(record, plan, ns, kinds, argv, search); }
};

/// The child shares the caller's memory (may_share_memory) and reports into
/// `job`; when it returns, the child has exec'd or ended. nullopt when the
/// kernel refuses such a clone (a seccomp filter's EPERM or ENOSYS, an
/// emulated kernel's EINVAL): the caller forks then.
[[nodiscard]] inline std::optional<spawned> spawn_sharing_memory(const spawn_call& call, spawn_stdio& stdio) {
  shared_spawn job{&call.plan, call.parent};
  unique_fd pidfd;
  pid_t pid = -1;
  int clone_errno = 0;
  {
    const signals_blocked quiet;
    pid = clone_sharing_memory(job, pidfd);
    clone_errno = errno;  // meaningful only on failure: the child shares our errno
  }
  if (pid <= 0) {
    if (clone_errno == EPERM || clone_errno == ENOSYS || clone_errno == EINVAL) return std::nullopt;
    throw system_error(clone_errno, "cannot start a child process to spawn {} in {}", call.argv[0],
                       describe(call.ns, call.kinds));
  }
  child_guard child(pid);
  child.hold(std::move(pidfd));
  stdio.close_childs_ends();
  // The record and the numbers in `job` were written by the child: each is
  // checked before it is believed (decode_spawn_records, verify_program).
  const bool failed = job.failure.what != spawn_step{};
  const auto failure = [&] {
    return decode_spawn_records(std::as_bytes(std::span(&job.failure, 1)), call.limits).failure.value();
  };
  if (!call.plan.join.fork_after) {
    if (failed) {
      (void)child.reap_now();  // it has ended, or is ending
      call.fail(failure());
    }
    return stdio.to(child.release(), pid);
  }
  // The middle process has ended, once the program's process exec'd or
  // ended; its pidfd is ours (it shared our fd table), so the program is
  // held even if it ended and was reaped already.
  (void)child.reap_now();
  unique_fd program;
  if (job.program_pidfd > 2) {
    // Owned (and so closed) only once it is shown to be a pidfd: any other
    // fd of ours stays untouched. Only gonso's own code wrote `job` (the
    // memory stops being shared when the program is exec'd), but it is
    // checked all the same.
    siginfo_t info{};
    const int r = ::waitid(P_PIDFD, static_cast<id_t>(job.program_pidfd), &info, WEXITED | WNOHANG | WNOWAIT);
    if (r == 0 || (errno != EBADF && errno != EINVAL)) program.reset(job.program_pidfd);
  }
  if (failed) {
    if (program) (void)reap(program);
    call.fail(failure());
  }
  if (!program) {
    // Killed (say by another's SIGKILL) before it could clone the program.
    throw system_error(ECHILD, "cannot spawn {}: the child setting it up ended with no report", call.argv[0]);
  }
  // Never signalled if this throws: a pidfd that fails the check may name
  // a process that is not ours.
  verify_program(program, job.program, call.ns, call.plan.join, call.plan.setup.new_pid);
  return stdio.to(std::move(program), job.program);
}

/// The child is forked and reports on a close-on-exec pipe, whose end of
/// file means exec or exit. With a pid or time namespace the child is a
/// middle process that clones the program with CLONE_PARENT and reports its
/// pid.
[[nodiscard]] inline spawned spawn_forked(const spawn_call& call, spawn_stdio& stdio) {
  pipe_fds report = make_pipe();
  pid_t pid = -1;
  int fork_errno = 0;
  {
    const signals_blocked quiet;
    pid = raw_fork();
    if (pid == 0) spawn_child(call.plan, report.write.get(), call.parent);
    fork_errno = errno;
  }
  if (pid < 0) {
    throw system_error(fork_errno, "cannot fork a child process to spawn {} in {}", call.argv[0],
                       describe(call.ns, call.kinds));
  }
  child_guard child(pid);
  if (!call.plan.join.fork_after) {
    // The child is the program: hold it by pidfd at once.
    unique_fd pidfd(pidfd_open(pid));
    if (!pidfd) throw system_error(errno, "cannot open a pidfd for pid {} ({})", pid, call.argv[0]);
    child.hold(std::move(pidfd));
  }
  report.write.reset();
  stdio.close_childs_ends();
  // Bad bytes throw here: the guard ends what is surely ours; a pid the
  // child claimed is not.
  const spawn_outcome outcome = read_spawn_records(report.read.get(), call.limits);
  if (!call.plan.join.fork_after) {
    if (outcome.failure) {
      (void)child.reap_now();  // the failing process exits by itself
      call.fail(*outcome.failure);
    }
    return stdio.to(child.release(), pid);
  }
  // The middle process has reported and exited (or failed): reap it. The
  // program is the caller's child and not reaped, so its pid is safe to
  // open until then.
  const int middle_status = child.reap_now();
  unique_fd program;
  if (outcome.program > 0) {
    program.reset(pidfd_open(outcome.program));
    // ESRCH: the program already ended and was reaped elsewhere (the
    // application ignores SIGCHLD, or a handler reaps every child). Its pid
    // may be someone else's by now: signal nothing.
    if (!program) throw system_error(errno, "cannot open a pidfd for pid {} ({})", outcome.program, call.argv[0]);
    // Before it is reaped or held, and never signalled if this throws: the
    // pid came from the child.
    verify_program(program, outcome.program, call.ns, call.plan.join, call.plan.setup.new_pid);
  }
  if (outcome.failure) {
    if (program) (void)reap(program);
    call.fail(*outcome.failure);
  }
  if (!program) {
    // The middle process ended without reporting a pid or an error: it was
    // killed (say by another's SIGKILL) before it could.
    if (middle_status == -1)
      throw system_error(ECHILD, "cannot spawn {}: the child was reaped elsewhere", call.argv[0]);
    throw system_error(ECHILD, "cannot spawn {}: the child setting it up ended with status {:#x} and no report",
                       call.argv[0], middle_status);
  }
  return stdio.to(std::move(program), outcome.program);
}

/// spawn()'s engine: `argv` started in a child that joined `kinds` of `ns`.
[[nodiscard]] inline spawned spawn_program(const ns_handles& ns, Kinds kinds, const std::vector<std::string>& argv,
                                           const SpawnOptions& options) {
  spawn_plan plan;
  std::string search;
  plan_spawn(plan, ns, kinds, argv, options, search);
  spawn_stdio stdio(options, plan, argv[0]);
  plan.seal();
  // Through syscall(2), bound here before the child, which calls nothing
  // else. A child born in another pid namespace sees its parent as pid 0 and
  // skips the check.
  const spawn_call call{ns,
                        kinds,
                        argv,
                        plan,
                        std::move(search),
                        {plan.join.count, plan.etc_files.size(), plan.join.fork_after, plan.setup.rlimit_count,
                         plan.setup.fd_count, plan.setup.last_cap, plan.cwd != nullptr, plan.setup.cwd_dir >= 0},
                        bind_syscall()};
  if (may_share_memory(plan)) {
    if (std::optional<spawned> done = spawn_sharing_memory(call, stdio)) return std::move(*done);
  }
  return spawn_forked(call, stdio);
}

}  // namespace gonso::detail

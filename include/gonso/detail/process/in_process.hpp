// gonso: running a callable in a child process that joined a Set
// (Set::run_in_process): the child's life, and the parent's wait for its report.
// SPDX-License-Identifier: MIT
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/ns/join.hpp>
#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/process/child_code.hpp>
#include <gonso/detail/process/etc_overlay.hpp>
#include <gonso/detail/process/join.hpp>
#include <gonso/detail/process/launch.hpp>
#include <gonso/detail/process/private_fds.hpp>
#include <gonso/detail/process/program_setup.hpp>
#include <gonso/detail/process/report.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/error.hpp>
#include <gonso/options.hpp>

namespace gonso::detail {

/// Whether `plan` joins a namespace of `kind`.
[[nodiscard]] inline bool plan_joins(const join_plan& plan, Kind kind) noexcept {
  for (std::size_t i = 0; i < plan.count; ++i) {
    if (plan.steps[i].kind == kind) return true;
  }
  return false;
}

/// Root, working directory and ids of a run_in_process child, after
/// joining. Returns what failed (errno says why), or nullptr.
inline const char* enter_root_cwd_ids(const program_setup& setup, const char* cwd) noexcept {
  if (setup.root >= 0 && (::syscall(SYS_fchdir, setup.root) != 0 || ::syscall(SYS_chroot, ".") != 0)) {
    return "cannot change the root directory";
  }
  if (cwd != nullptr && ::syscall(SYS_chdir, cwd) != 0) return "cannot change the working directory";
  if (!setup.set_ids) return nullptr;
  if (setup.groups >= 0) {
    if (::syscall(SYS_setgroups, setup.groups, setup.group_list) != 0) return "cannot set the supplementary groups";
  } else {
    (void)::syscall(SYS_setgroups, 0, nullptr);  // dropped where allowed, as spawn does
  }
  if (::syscall(SYS_setresgid, setup.gid, setup.gid, setup.gid) != 0) return "cannot set the gid";
  if (::syscall(SYS_setresuid, setup.uid, setup.uid, setup.uid) != 0) return "cannot set the uid";
  return nullptr;
}

/// The forked child of run_in_process: join, maybe fork into pid and time
/// namespaces, run, report, and exit without running the parent's exit
/// handlers. System calls through syscall(2): see bind_syscall.
template <typename R, typename F>
[[noreturn]] void run_child(const join_plan& plan, const ns_handles& ns, const std::vector<const char*>& etc,
                            const program_setup& setup, const char* cwd, report_sink& report, pid_t parent,
                            F& fn) noexcept {
  die_with_parent(parent);
  // Before joining: the caller opened cgroup.procs, and "0" moves the writer.
  if (setup.cgroup_procs >= 0 && ::syscall(SYS_write, setup.cgroup_procs, "0", 1) != 1) {
    report_join_error(report, errno, "cannot enter the cgroup (writing cgroup.procs)");
    child_exit(1);
  }
  std::size_t failed = 0;
  if (const int err = join_in_child(plan, failed); err != 0) {
    report_join_error(report, err, join_failure(plan, ns, failed));
    child_exit(1);
  }
  if (plan.fork_after) {
    // The inner process sees this one as its parent, or as 0 from inside a
    // joined pid namespace.
    const pid_t middle = plan_joins(plan, Kind::pid) ? 0 : static_cast<pid_t>(::syscall(SYS_getpid));
    const pid_t inner = fork_for_callable();
    if (inner < 0) {
      report_join_error(report, errno, "cannot fork into the joined pid or time namespace");
      child_exit(1);
    }
    if (inner > 0) {
      report.close();
      exit_like(reap(inner));
    }
    ::syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    // Killed (say by a timeout) before the death signal was armed: the
    // callable must not run on unsupervised.
    if (static_cast<pid_t>(::syscall(SYS_getppid)) != middle) child_exit(1);
  }
  if (const int err = bind_etc_overlay(etc.data(), etc.size(), failed); err != 0) {
    report_join_error(report, err,
                      failed == SIZE_MAX ? std::string("cannot make a mount namespace for /etc/netns")
                                         : fmt::format("cannot bind {} over {}", etc[failed], etc[failed + 1]));
    child_exit(1);
  }
  if (const char* step = enter_root_cwd_ids(setup, cwd); step != nullptr) {
    report_join_error(report, errno, step);
    child_exit(1);
  }
  run_and_report<R>(std::forward<F>(fn), report);
  std::fflush(nullptr);
  child_exit(0);
}

/// Set::run_in_process's engine: forks a child that joins `kinds` of `ns`
/// and runs `fn` (run_child), then waits for its report and turns it into
/// fn's value or the matching exception.
template <typename F>
auto run_in_child(const ns_handles& ns, Kinds kinds, const ProcessOptions& options, F&& fn)
    -> std::invoke_result_t<F&&> {
  using R = std::invoke_result_t<F&&>;
  const join_plan plan = plan_join(ns, kinds);
  const std::vector<std::string> etc =
      options.etc_of_netns ? etc_overlay(*options.etc_of_netns) : std::vector<std::string>{};
  const std::vector<const char*> etc_paths = c_strings(etc);
  if (options.timeout && options.timeout->count() <= 0) {
    throw std::invalid_argument(fmt::format("run_in_process: timeout {} ms is not positive", options.timeout->count()));
  }
  if (options.cwd && options.cwd->native().find('\0') != std::string::npos) {
    throw std::invalid_argument("run_in_process: the cwd holds a NUL");
  }
  // The checks and plan spawn() makes of the same options.
  SpawnOptions same;
  same.root = options.root;
  same.cgroup = options.cgroup;
  same.user = options.user;
  program_setup setup;
  program_setup_storage storage;
  plan_program_setup(setup, storage, same, !plan_joins(plan, Kind::user), "the callable");
  const std::string cwd = options.cwd ? options.cwd->native() : std::string();
  report_channel report;
  fd_channel fds;
  listed_fds listed{&report.data.read, &report.data.write, &report.bell, &fds.receive, &fds.send};
  {
    // Made and listed before any other run's child is forked (private_fds).
    const private_fds::making making;
    report = make_report_channel();
    if constexpr (encoded_result<R>) fds = make_fd_channel();
    listed.add_all();
  }
  // Unflushed output would be written twice, once by each process.
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = bind_syscall();
  pid_t pid = -1;
  {
    const private_fds::forking forking;
    pid = fork_for_callable();
    if (pid == 0) {
      private_fds::instance().after_fork();
      // Other runs' channels first, and our own read ends: only what this
      // child writes to stays open.
      private_fds::instance().close_others({report.data.write.get(), report.bell.get(), fds.send.get()});
      (void)report.data.read.release();
      (void)fds.receive.release();
      report_sink sink(report.data.write.get(), report.bell.get(), fds.send.get());
      run_child<R>(plan, ns, etc_paths, setup, options.cwd ? cwd.c_str() : nullptr, sink, parent, fn);
    }
  }
  if (pid < 0) throw system_error(errno, "cannot fork a child process to run in {} namespaces", kinds);
  child_guard child(pid);
  listed_fds::close(report.data.write);
  listed_fds::close(fds.send);
  // Not yet reaped by us, so `pid` is still the child's; from here on the
  // pidfd names it. ESRCH: it has ended and was reaped elsewhere (the
  // application ignores SIGCHLD), so all it wrote is in the pipe, and its
  // pid may be another's already: nothing is signalled.
  unique_fd pidfd(pidfd_open(pid));
  if (!pidfd && errno != ESRCH) throw system_error(errno, "cannot open a pidfd for the child process {}", pid);
  const bool reaped_elsewhere = !pidfd;
  if (reaped_elsewhere) {
    (void)child.release();
  } else {
    child.hold(std::move(pidfd));
  }
  std::optional<std::chrono::steady_clock::time_point> timeout_at;
  // Saturated at a year: milliseconds::max() would overflow in nanoseconds.
  if (options.timeout) {
    timeout_at = std::chrono::steady_clock::now() +
                 std::min<std::chrono::milliseconds>(*options.timeout, std::chrono::hours(24 * 365));
  }
  std::optional<std::string> data =
      read_report(report.data.read.get(), report.bell.get(), child.pidfd().get(), timeout_at);
  // The guard kills and reaps the child (its own child in a joined pid or
  // time namespace dies with it: PR_SET_PDEATHSIG).
  if (!data) throw ProcessError::timed_out(static_cast<long long>(options.timeout->count()));
  // Everything the child sent is queued by now: it has ended.
  std::vector<unique_fd> received;
  if constexpr (encoded_result<R>) received = receive_fds(fds.receive.get());
  return decode_report<R>(*data, reaped_elsewhere ? -1 : child.reap_now(), std::move(received));
}

}  // namespace gonso::detail

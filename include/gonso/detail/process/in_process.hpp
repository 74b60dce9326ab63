// gonso: running a callable in a child process that joined a Set
// (Set::run_in_process): the child's life, and the parent's wait for its report.
// SPDX-License-Identifier: MIT
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
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
#include <gonso/detail/process/report.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/options.hpp>

namespace gonso::detail {

/// The forked child of run_in_process: join, maybe fork into pid and time
/// namespaces, run, report, and exit without running the parent's exit
/// handlers. System calls through syscall(2): see bind_syscall.
template <typename R, typename F>
[[noreturn]] void run_child(const join_plan& plan, const ns_handles& ns, const std::vector<const char*>& etc,
                            report_sink& report, pid_t parent, F& fn) noexcept {
  die_with_parent(parent);
  std::size_t failed = 0;
  if (const int err = join_in_child(plan, failed); err != 0) {
    report_join_error(report, err, join_failure(plan, ns, failed));
    child_exit(1);
  }
  if (plan.fork_after) {
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
  }
  if (const int err = bind_etc_overlay(etc.data(), etc.size(), failed); err != 0) {
    report_join_error(report, err,
                      failed == SIZE_MAX ? std::string("cannot make a mount namespace for /etc/netns")
                                         : fmt::format("cannot bind {} over {}", etc[failed], etc[failed + 1]));
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
  report_channel report = make_report_channel();
  // Unflushed output would be written twice, once by each process.
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = bind_syscall();
  const pid_t pid = fork_for_callable();
  if (pid < 0) throw system_error(errno, "cannot fork a child process to run in {} namespaces", kinds);
  if (pid == 0) {
    report.data.read.reset();
    report_sink sink(report.data.write.get(), report.bell.get());
    run_child<R>(plan, ns, etc_paths, sink, parent, fn);
  }
  child_guard child(pid);
  report.data.write.reset();
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
  const std::string data = read_report(report.data.read.get(), report.bell.get(), child.pidfd().get());
  return decode_report<R>(data, reaped_elsewhere ? -1 : child.reap_now());
}

}  // namespace gonso::detail

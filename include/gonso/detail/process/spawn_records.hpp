// gonso: what the children of spawn() report, decoded and checked as the
// untrusted bytes it is, and turned into the caller's error.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/ns/join.hpp>
#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/process/children.hpp>
#include <gonso/detail/process/exec.hpp>
#include <gonso/detail/process/launch.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/unique_fd.hpp>

namespace gonso::detail {

/// The most records a spawn child writes: the program's pid (from a middle
/// process), then one failure.
inline constexpr std::size_t max_spawn_records = 2;

/// What the records a child sent may name, from the plan: how many join
/// steps, /etc/netns files, and whether a pid is to be expected at all.
struct spawn_limits {
  std::size_t join_steps = 0;
  std::size_t etc_files = 0;  // pairs: an index names the first of two
  bool expect_pid = false;
  std::size_t rlimits = 0;
  std::size_t fds = 0;
  int last_cap = 0;
  bool cwd = false;      // a cwd path is planned (chdir value 0)
  bool cwd_dir = false;  // a cwd_dir is planned (chdir value 1)
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
    case spawn_step::rlimit:
      if (value < 0 || static_cast<std::uint64_t>(value) >= limits.rlimits) bad("an rlimit the plan has not");
      return;
    case spawn_step::fds:
      if (value < 0 || static_cast<std::uint64_t>(value) >= limits.fds) bad("an extra fd the plan has not");
      return;
    case spawn_step::bounding:
      if (value < 0 || value > limits.last_cap) bad("a capability the kernel has not");
      return;
    case spawn_step::ambient:
      if (value < -1 || value > limits.last_cap) bad("a capability the kernel has not");
      return;
    case spawn_step::chdir:
      if (!(value == 0 && limits.cwd) && !(value == 1 && limits.cwd_dir)) bad("a working directory the plan has not");
      return;
    case spawn_step::proc:
      if (value < 0 || value > 2) bad("a /proc step the plan has not");
      return;
    case spawn_step::fork:
    case spawn_step::cloexec:
    case spawn_step::exec:
    case spawn_step::cgroup:
    case spawn_step::new_pid:
    case spawn_step::root:
    case spawn_step::session:
    case spawn_step::ctty:
    case spawn_step::keepcaps:
    case spawn_step::groups:
    case spawn_step::gid:
    case spawn_step::uid:
    case spawn_step::caps:
    case spawn_step::no_new_privs:
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

/// Reads what the children write until all writers are gone, but never
/// more than max_spawn_records records and one byte (a writer that goes on
/// is refused), and decodes it (decode_spawn_records).
inline spawn_outcome read_spawn_records(int fd, const spawn_limits& limits) {
  std::array<std::byte, max_spawn_records * sizeof(spawn_record) + 1> buf{};
  const std::size_t have = read_records(fd, buf);
  return decode_spawn_records(std::span<const std::byte>(buf.data(), have), limits);
}

/// Whether `pidfd` (for `pid`) is a process the caller may take as the
/// program: its own child (or one already reaped elsewhere, when the
/// application ignores SIGCHLD) that no Child holds yet, and inside the Set's
/// pid and time namespaces where those were joined (its own pid namespace,
/// with `new_pid`). A pid (or pidfd) comes
/// from a child, so it is never taken on trust. Opens no fd (the caller may
/// be out of them). Throws std::system_error(EPROTO) when it is not.
inline void verify_program(const unique_fd& pidfd, pid_t pid, const ns_handles& ns, const join_plan& plan,
                           bool new_pid) {
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
    // A program in a pid namespace of its own is in none the Set has.
    if ((kind != Kind::pid || new_pid) && kind != Kind::time) continue;
    Identity seen{};
    const std::string path = fmt::format("/proc/{}/ns/{}", pid, name(kind));
    // A zombie keeps its namespace links; a pid reused since cannot be ours
    // (ours is unreaped, so its number is not free).
    if (stat_ns(AT_FDCWD, path.c_str(), kind, seen) == 0 && seen.inode != ns[index_of(kind)].id.inode) {
      throw system_error(EPROTO, "the child of spawn named pid {}, which is not in the Set's {} namespace", pid, kind);
    }
  }
}

/// A std::system_error for a failed step, in words a person can act on.
[[nodiscard]] inline std::system_error spawn_error(const spawn_record& record, const spawn_plan& plan,
                                                   const ns_handles& ns, Kinds kinds,
                                                   const std::vector<std::string>& argv, std::string_view search) {
  static constexpr const char* streams[] = {"standard input", "standard output", "standard error"};
  switch (record.what) {
    case spawn_step::join: {
      return system_error(record.err, "{}", join_failure(plan.join, ns, static_cast<std::size_t>(record.value)));
    }
    case spawn_step::fork:
      return system_error(record.err, "cannot fork {} into the joined pid or time namespace of {}", argv[0],
                          describe(ns, kinds));
    case spawn_step::stdio:
      return system_error(record.err, "cannot set up the {} of {}", streams[record.value % 3], argv[0]);
    case spawn_step::chdir:
      if (record.value == 1)
        return system_error(record.err, "cannot change directory to {} for {}", fd_target(plan.setup.cwd_dir), argv[0]);
      return system_error(record.err, "cannot change directory to {}", plan.cwd);
    case spawn_step::cgroup:
      return system_error(record.err, "cannot start {} in its cgroup (writing cgroup.procs)", argv[0]);
    case spawn_step::new_pid:
      return system_error(record.err, "cannot make a pid namespace for {}", argv[0]);
    case spawn_step::proc: {
      static constexpr const char* parts[] = {"make a mount namespace", "make the mounts of / private",
                                              "mount a fresh /proc"};
      return system_error(record.err, "cannot {} for {} (mount_proc)", parts[record.value % 3], argv[0]);
    }
    case spawn_step::root:
      return system_error(record.err, "cannot change the root directory of {}", argv[0]);
    case spawn_step::rlimit: {
      const Rlimit& r = plan.setup.rlimits[record.value];
      return system_error(record.err, "cannot set rlimit {} of {} to {}/{}", r.resource, argv[0], r.soft, r.hard);
    }
    case spawn_step::fds:
      return system_error(record.err, "cannot pass fd {} to {} as fd {}", plan.setup.fd_from[record.value], argv[0],
                          plan.setup.fd_to[record.value]);
    case spawn_step::session:
      return system_error(record.err, "cannot start a new session for {}", argv[0]);
    case spawn_step::ctty:
      return system_error(record.err, "cannot make fd {} the controlling terminal of {}", plan.setup.ctty, argv[0]);
    case spawn_step::bounding:
      return system_error(record.err, "cannot drop capability {} from the bounding set of {}", record.value, argv[0]);
    case spawn_step::keepcaps:
      return system_error(record.err, "cannot keep the capabilities of {} across the uid change", argv[0]);
    case spawn_step::groups:
      return system_error(record.err, "cannot set the {} supplementary groups of {}", plan.setup.groups, argv[0]);
    case spawn_step::gid:
      return system_error(record.err, "cannot set gid {} for {} (is it mapped in its user namespace?)", plan.setup.gid,
                          argv[0]);
    case spawn_step::uid:
      return system_error(record.err, "cannot set uid {} for {} (is it mapped in its user namespace?)", plan.setup.uid,
                          argv[0]);
    case spawn_step::caps:
      return system_error(record.err, "cannot set the capabilities of {}", argv[0]);
    case spawn_step::ambient:
      if (record.value < 0) return system_error(record.err, "cannot clear the ambient capabilities of {}", argv[0]);
      return system_error(record.err, "cannot raise ambient capability {} of {}", record.value, argv[0]);
    case spawn_step::no_new_privs:
      return system_error(record.err, "cannot set no_new_privs for {}", argv[0]);
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

}  // namespace gonso::detail

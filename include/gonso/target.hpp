// gonso: a running process to start programs in, as `nsenter -t PID -a -r
// -w` and `runc exec` do: its namespaces, root and working directory held
// open, and its ids, capabilities, cgroup and environment read on demand.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <gonso/child.hpp>
#include <gonso/detail/process/proc_files.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/io.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/dir.hpp>
#include <gonso/options.hpp>
#include <gonso/set.hpp>
#include <gonso/spawn.hpp>

namespace gonso {

/// A process to start programs in. Taken from a pidfd, so that a pid reused
/// meanwhile is never mistaken for it: its /proc folder, namespaces, root
/// and working directory are opened, then the pidfd is asked whether the
/// process still lives. The /proc folder stays open, and names that process
/// alone (reads fail with ESRCH once it is gone), so what is read later
/// (ids, capabilities, cgroup, environment) is that process's too.
///
/// What is read is a snapshot: the process may change its ids, cwd or
/// cgroup a moment later, as with nsenter(1).
class Target {
 public:
  /// Throws std::system_error: EBADF or EINVAL for an fd that is no pidfd,
  /// ESRCH for a process that has ended, EACCES/EPERM when the caller may
  /// not inspect it (ptrace access mode, as for /proc/PID/root).
  [[nodiscard]] static Target of_pidfd(int pidfd, Kinds kinds = Kinds::all()) {
    const pid_t pid = detail::pid_of_pidfd(pidfd);
    Target t;
    t.pid_ = pid;
    t.proc_ = std::make_shared<const detail::unique_fd>(detail::open_proc_dir(pid));
    t.set_ = Set::from_pidfd(pidfd, kinds);
    t.root_ = t.open_dir("root");
    t.cwd_ = t.open_dir("cwd");
    // Everything above was opened by pid; only now is it known to be this
    // process (a pidfd never names another, and a process never comes back).
    // EPERM: alive, only not ours to signal.
    if (::syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0U) != 0 && errno != EPERM) {
      throw detail::system_error(errno, "cannot take pid {} as a target", pid);
    }
    detail::unique_fd own(::fcntl(pidfd, F_DUPFD_CLOEXEC, 0));
    if (!own) throw detail::system_error(errno, "cannot duplicate pidfd {}", pidfd);
    t.pidfd_ = std::make_shared<const detail::unique_fd>(std::move(own));
    return t;
  }

  /// As of_pidfd, through a pidfd opened here. Throws
  /// std::invalid_argument for pid <= 0, std::system_error(ESRCH).
  [[nodiscard]] static Target of_pid(pid_t pid, Kinds kinds = Kinds::all()) {
    if (pid <= 0) throw std::invalid_argument(fmt::format("cannot take pid {} as a target: not a process id", pid));
    const detail::unique_fd pidfd(detail::pidfd_open(pid));
    if (!pidfd) throw detail::system_error(errno, "cannot take pid {} as a target", pid);
    return of_pidfd(pidfd.get(), kinds);
  }

  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  /// The pidfd this Target holds (valid while it or a copy lives).
  [[nodiscard]] int pidfd() const noexcept { return pidfd_ ? pidfd_->get() : -1; }
  /// The process's namespaces of the kinds asked for.
  [[nodiscard]] const Set& set() const noexcept { return set_; }
  /// Its root directory (/proc/PID/root): for a chroot-style runtime, not
  /// the root of its mount namespace.
  [[nodiscard]] const Dir& root() const noexcept { return root_; }
  /// Its working directory (/proc/PID/cwd).
  [[nodiscard]] const Dir& cwd() const noexcept { return cwd_; }

  /// Its effective uid and gid and its supplementary groups, as ids of its
  /// own user namespace (what setresuid(2) takes after joining it). Groups
  /// that namespace does not map are left out; where it denies setgroups(2)
  /// `groups` is nullopt. Throws std::system_error(ERANGE) for a uid or gid
  /// it does not map.
  [[nodiscard]] Credentials credentials() const {
    const detail::proc_status status = detail::parse_status(read("status"));
    const bool same_userns = detail::same_file("/proc/self/ns/user", proc_->get(), "ns/user");
    std::vector<detail::id_line> uids, gids;
    if (!same_userns) {
      // Read by a process of another user namespace, a map's second column
      // is in the reader's ids: those /proc/PID/status shows.
      uids = detail::parse_id_map(read("uid_map"));
      gids = detail::parse_id_map(read("gid_map"));
    }
    const auto inside = [&](const std::vector<detail::id_line>& map, std::uint32_t id, const char* what) {
      if (same_userns) return id;
      if (const std::optional<std::uint32_t> in = detail::map_to_inside(map, id)) return *in;
      throw detail::system_error(ERANGE, "{} {} of pid {} is not mapped in its user namespace", what, id, pid_);
    };
    Credentials c;
    c.uid = inside(uids, status.uid, "uid");
    c.gid = inside(gids, status.gid, "gid");
    // Where setgroups(2) is denied the program keeps the groups it has (as
    // the target did); elsewhere groups the namespace does not map are left
    // out, as the kernel shows them to the target as the overflow gid.
    if (!same_userns && read("setgroups").starts_with("deny")) return c;
    std::vector<gid_t> groups;
    for (const std::uint32_t g : status.groups) {
      if (same_userns) {
        groups.push_back(g);
      } else if (const std::optional<std::uint32_t> in = detail::map_to_inside(gids, g)) {
        groups.push_back(*in);
      }
    }
    c.groups = std::move(groups);
    return c;
  }

  /// Its capability sets (CapEff, CapPrm, CapInh, CapBnd, CapAmb).
  [[nodiscard]] Capabilities capabilities() const {
    const detail::proc_status status = detail::parse_status(read("status"));
    return {status.cap_eff, status.cap_prm, status.cap_inh, status.cap_bnd, status.cap_amb};
  }

  /// Whether it runs with no_new_privs.
  [[nodiscard]] bool no_new_privs() const { return detail::parse_status(read("status")).no_new_privs; }

  /// Its cgroup v2 directory, under the cgroup2 mount of the caller's
  /// mount namespace (found in /proc/self/mountinfo: /sys/fs/cgroup, or
  /// /sys/fs/cgroup/unified on a hybrid hierarchy). Throws
  /// std::system_error(ENOENT) when there is no such mount or the cgroup
  /// lies outside it.
  [[nodiscard]] Dir cgroup() const {
    const std::string path = detail::cgroup2_path(read("cgroup"), detail::read_file("/proc/self/mountinfo"), pid_);
    return Dir::open(path);
  }

  /// Its initial environment (/proc/PID/environ: what it was started with,
  /// not what setenv(3) changed since), entries without '=' left out.
  [[nodiscard]] std::vector<std::string> environment() const { return detail::parse_environ(read("environ")); }

  /// The options `runc exec` would use for it: its root, cwd, ids, groups,
  /// capabilities, no_new_privs, cgroup and environment. Change any before
  /// spawning (spawn(target.set(), argv, options)).
  [[nodiscard]] SpawnOptions exec_options() const {
    SpawnOptions o;
    o.root = root_;
    o.cwd_dir = cwd_;
    o.user = credentials();
    o.capabilities = capabilities();
    o.no_new_privs = no_new_privs();
    o.cgroup = cgroup();
    o.env = environment();
    return o;
  }

  /// spawn(set(), argv, exec_options()): the program as the target runs,
  /// where it runs, as `runc exec` starts it.
  [[nodiscard]] Child exec(const std::vector<std::string>& argv) const { return spawn(set_, argv, exec_options()); }

 private:
  Target() = default;

  [[nodiscard]] Dir open_dir(const char* which) const {
    detail::unique_fd fd(::openat(proc_->get(), which, O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!fd) throw detail::system_error(errno == ENOENT ? ESRCH : errno, "cannot open the {} of pid {}", which, pid_);
    return Dir::adopt(std::move(fd));
  }

  [[nodiscard]] std::string read(const char* file) const {
    detail::unique_fd fd(::openat(proc_->get(), file, O_RDONLY | O_CLOEXEC));
    if (!fd) throw detail::system_error(errno == ENOENT ? ESRCH : errno, "cannot read /proc/{}/{}", pid_, file);
    try {
      return detail::read_to_end(fd.get());
    } catch (const std::system_error& e) {
      throw detail::system_error(e.code().value(), "cannot read /proc/{}/{}", pid_, file);
    }
  }

  pid_t pid_ = -1;
  std::shared_ptr<const detail::unique_fd> pidfd_;
  // Shared by copies, like the pidfd: /proc/PID of that process alone.
  std::shared_ptr<const detail::unique_fd> proc_;
  Set set_;
  Dir root_;
  Dir cwd_;
};

}  // namespace gonso

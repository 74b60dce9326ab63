// gonso: what a spawned program's process sets up after joining and before
// exec (root, cwd, /proc, cgroup, fds, session, limits, ids, capabilities):
// checked and planned by the caller, so that the child only reads plain
// numbers and arrays.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/options.hpp>

namespace gonso::detail {

/// The plan of one program's setup. Every fd in it belongs to the caller
/// (Dirs the options hold, or `cgroup_procs` below) and is close-on-exec.
struct program_setup {
  int cgroup_procs = -1;  // cgroup.procs of the cgroup to start in, open for writing
  bool new_pid = false;
  bool mount_proc = false;
  int root = -1;
  int cwd_dir = -1;
  const Rlimit* rlimits = nullptr;
  std::size_t rlimit_count = 0;
  int umask = -1;
  // Extra fds: from[k] becomes to[k]; `scratch` has room for the copies
  // of those at or below `fd_floor` (the highest fd number the program
  // gets), which are moved above it first so that no dup3 overwrites one.
  const int* fd_from = nullptr;
  const int* fd_to = nullptr;
  int* scratch = nullptr;
  std::size_t fd_count = 0;
  int fd_floor = 2;
  bool err_to_stdout = false;
  bool new_session = false;
  int ctty = -1;
  bool set_ids = false;
  uid_t uid = 0;
  gid_t gid = 0;
  int groups = -1;  // -1: drop them if allowed; else how many of group_list
  const gid_t* group_list = nullptr;
  bool set_caps = false;
  std::uint64_t effective = 0, permitted = 0, inheritable = 0, ambient = 0;
  bool drop_bounding = false;
  std::uint64_t bounding = 0;
  int last_cap = 0;
  bool no_new_privs = false;
};

/// The storage a program_setup points into, owned by the caller's frame.
struct program_setup_storage {
  std::vector<int> fd_from, fd_to, scratch;
  std::vector<gid_t> groups;
  unique_fd cgroup_procs;
};

/// The highest capability number this kernel knows (CAP_LAST_CAP of the
/// running kernel, which may be newer or older than the headers).
[[nodiscard]] inline int kernel_last_cap() {
  std::ifstream in("/proc/sys/kernel/cap_last_cap");
  int last = -1;
  if (in >> last && last >= 0 && last < 64) return last;
  return 40;  // CAP_CHECKPOINT_RESTORE, Linux 5.9's last: no procfs to ask
}

/// Whether `id` is mapped in the caller's own user namespace (an id that is
/// not would fail setresuid(2) with EINVAL after the child started).
[[nodiscard]] inline bool mapped_here(const char* map_file, std::uint32_t id) {
  std::ifstream in(map_file);
  std::uint64_t inside = 0, outside = 0, count = 0;
  while (in >> inside >> outside >> count) {
    if (id >= inside && id - inside < count) return true;
  }
  return false;
}

/// A cgroup v2 directory's cgroup.procs, open for writing. Throws
/// std::invalid_argument when `dir` is not on a cgroup v2 file system,
/// std::system_error when cgroup.procs cannot be opened.
[[nodiscard]] inline unique_fd open_cgroup_procs(const Dir& dir, const std::string& program) {
  struct statfs fs {};
  if (::fstatfs(dir.fd(), &fs) != 0) throw system_error(errno, "cannot inspect the cgroup for {}", program);
  if (fs.f_type != CGROUP2_SUPER_MAGIC) {
    throw std::invalid_argument(fmt::format("cannot start {} in {}: not a cgroup v2 directory", program, dir.path()));
  }
  unique_fd procs(::openat(dir.fd(), "cgroup.procs", O_WRONLY | O_CLOEXEC | O_NOCTTY));
  if (!procs) throw system_error(errno, "cannot open {}/cgroup.procs to start {} there", dir.path(), program);
  return procs;
}

/// Whether an fd is open in the caller.
[[nodiscard]] inline bool fd_is_open(int fd) noexcept { return fd >= 0 && ::fcntl(fd, F_GETFD) >= 0; }

/// Checks the setup options (std::invalid_argument; std::system_error for
/// what the system refuses to open) and plans them into `setup`, which
/// points into `store` and `options`.
inline void plan_program_setup(program_setup& setup, program_setup_storage& store, const SpawnOptions& options,
                               bool stays_in_own_userns, const std::string& program) {
  const auto bad = [&](std::string_view why) {
    return std::invalid_argument(fmt::format("cannot spawn {}: {}", program, why));
  };
  if (options.cwd && options.cwd_dir) throw bad("cwd and cwd_dir are both given");
  if (options.in == Stdio::to_stdout || options.out == Stdio::to_stdout)
    throw bad("Stdio::to_stdout is for standard error only");
  for (const auto* dir : {&options.root, &options.cwd_dir, &options.cgroup}) {
    if (*dir && (*dir)->empty()) throw bad("an empty Dir is given as root, cwd_dir or cgroup");
  }
  setup.root = options.root ? options.root->fd() : -1;
  setup.cwd_dir = options.cwd_dir ? options.cwd_dir->fd() : -1;
  setup.new_pid = options.new_pid_namespace;
  setup.mount_proc = options.mount_proc;

  // Resource limits: known numbers, once each, soft within hard.
  for (std::size_t i = 0; i < options.rlimits.size(); ++i) {
    const Rlimit& r = options.rlimits[i];
    if (r.resource < 0 || r.resource >= RLIM_NLIMITS) throw bad(fmt::format("rlimit {} is no resource", r.resource));
    if (r.soft > r.hard) throw bad(fmt::format("rlimit {} has soft {} above hard {}", r.resource, r.soft, r.hard));
    for (std::size_t j = 0; j < i; ++j) {
      if (options.rlimits[j].resource == r.resource) throw bad(fmt::format("rlimit {} is given twice", r.resource));
    }
  }
  setup.rlimits = options.rlimits.data();
  setup.rlimit_count = options.rlimits.size();
  if (options.umask) {
    if ((*options.umask & ~mode_t{0777}) != 0)
      throw bad(fmt::format("umask {:#o} has bits beyond 0777", *options.umask));
    setup.umask = static_cast<int>(*options.umask);
  }

  // Extra fds: open, at distinct numbers within the fd limit, none on a
  // standard stream that is set up otherwise.
  const Stdio streams[3] = {options.in, options.out, options.err};
  rlimit nofile{};
  (void)::getrlimit(RLIMIT_NOFILE, &nofile);
  for (std::size_t i = 0; i < options.fds.size(); ++i) {
    const FdMapping& m = options.fds[i];
    if (m.as < 0) throw bad(fmt::format("fd {} is to become {}, not an fd number", m.fd, m.as));
    if (static_cast<rlim_t>(m.as) >= nofile.rlim_cur)
      throw bad(fmt::format("fd number {} is beyond the fd limit {}", m.as, nofile.rlim_cur));
    if (m.as <= 2 && streams[m.as] != Stdio::inherit)
      throw bad(fmt::format("fd {} clashes with a standard stream set up otherwise", m.as));
    if (!fd_is_open(m.fd)) throw system_error(EBADF, "cannot pass fd {} to {} as fd {}", m.fd, program, m.as);
    for (std::size_t j = 0; j < i; ++j) {
      if (options.fds[j].as == m.as) throw bad(fmt::format("two fds are to become fd {}", m.as));
    }
    store.fd_from.push_back(m.fd);
    store.fd_to.push_back(m.as);
    setup.fd_floor = std::max(setup.fd_floor, m.as);
  }
  // The child copies up to three streams, the extra fds and its report
  // pipe above the highest number given out: there must be room for them.
  const auto room = static_cast<rlim_t>(setup.fd_floor) + 5 + options.fds.size();
  if (!options.fds.empty() && room > nofile.rlim_cur) {
    throw bad(
        fmt::format("fd number {} leaves no room above it below the fd limit {}", setup.fd_floor, nofile.rlim_cur));
  }
  store.scratch.resize(store.fd_from.size());
  setup.fd_from = store.fd_from.data();
  setup.fd_to = store.fd_to.data();
  setup.scratch = store.scratch.data();
  setup.fd_count = store.fd_from.size();
  setup.err_to_stdout = options.err == Stdio::to_stdout;

  setup.new_session = options.new_session || options.controlling_terminal.has_value();
  if (options.controlling_terminal) {
    const int t = *options.controlling_terminal;
    const bool known = (t >= 0 && t <= 2) || std::find(store.fd_to.begin(), store.fd_to.end(), t) != store.fd_to.end();
    if (!known) throw bad(fmt::format("controlling_terminal {} is none of the program's fds", t));
    setup.ctty = t;
  }

  if (options.user) {
    const Credentials& c = *options.user;
    if (c.uid == static_cast<uid_t>(-1) || c.gid == static_cast<gid_t>(-1)) throw bad("uid or gid -1 is no id");
    if (stays_in_own_userns) {
      // Only here can the maps be read before starting: a foreign user
      // namespace's maps are checked by the kernel in the child (EINVAL).
      if (!mapped_here("/proc/self/uid_map", c.uid))
        throw bad(fmt::format("uid {} is not mapped in the caller's user namespace", c.uid));
      if (!mapped_here("/proc/self/gid_map", c.gid))
        throw bad(fmt::format("gid {} is not mapped in the caller's user namespace", c.gid));
    }
    if (c.groups) {
      if (c.groups->size() > 65536) throw bad(fmt::format("{} groups, more than the kernel takes", c.groups->size()));
      store.groups = *c.groups;
      setup.groups = static_cast<int>(store.groups.size());
      setup.group_list = store.groups.data();
    }
    setup.set_ids = true;
    setup.uid = c.uid;
    setup.gid = c.gid;
  }
  if (options.capabilities) {
    const Capabilities& caps = *options.capabilities;
    setup.last_cap = kernel_last_cap();
    const std::uint64_t known =
        setup.last_cap >= 63 ? ~std::uint64_t{0} : (std::uint64_t{1} << (setup.last_cap + 1)) - 1;
    for (const std::uint64_t set :
         {caps.effective, caps.permitted, caps.inheritable, caps.ambient, caps.bounding.value_or(0)}) {
      if ((set & ~known) != 0)
        throw bad(fmt::format("capability bits {:#x} are beyond this kernel's last capability ({})", set & ~known,
                              setup.last_cap));
    }
    if ((caps.effective & ~caps.permitted) != 0) throw bad("effective capabilities must lie within permitted");
    if ((caps.ambient & ~(caps.permitted & caps.inheritable)) != 0)
      throw bad("ambient capabilities must lie within permitted and inheritable");
    setup.set_caps = true;
    setup.effective = caps.effective;
    setup.permitted = caps.permitted;
    setup.inheritable = caps.inheritable;
    setup.ambient = caps.ambient;
    setup.drop_bounding = caps.bounding.has_value();
    setup.bounding = caps.bounding.value_or(0);
  }
  setup.no_new_privs = options.no_new_privs;
  // Last: the one fd this opens is then never left behind by a check above.
  if (options.cgroup) {
    store.cgroup_procs = open_cgroup_procs(*options.cgroup, program);
    setup.cgroup_procs = store.cgroup_procs.get();
  }
}

}  // namespace gonso::detail

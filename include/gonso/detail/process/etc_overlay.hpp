// gonso: /etc/netns/NAME bound over /etc, as `ip netns exec NAME` does, for
// run_in_process and spawn.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/ns/netns_name.hpp>
#include <gonso/detail/process/child_code.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/unique_fd.hpp>

namespace gonso::detail {

/// Pairs of paths, /etc/netns/NAME/x then /etc/x, for every file of
/// /etc/netns/NAME, listed in the caller's mount namespace as iproute2 does.
/// The folder is opened with no symlink followed in any component (a link
/// there is refused with ENOTDIR, not listed), and listed through that fd;
/// a missing folder is an empty overlay.
[[nodiscard]] inline std::vector<std::string> etc_overlay(const std::string& netns) {
  check_netns_name(netns);
  const std::string folder = "/etc/netns/" + netns;
  struct {
    std::uint64_t flags, mode, resolve;
  } how{O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0, 0x04 /* RESOLVE_NO_SYMLINKS */};
  const unique_fd dir(static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, folder.c_str(), &how, sizeof how)));
  if (!dir) {
    if (errno == ENOENT) return {};
    throw system_error(errno, "cannot overlay /etc with {} (no symlink is followed there)", folder);
  }
  std::vector<std::string> pairs;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(fmt::format("/proc/self/fd/{}", dir.get()), ec)) {
    pairs.push_back(folder + "/" + entry.path().filename().native());
    pairs.push_back("/etc/" + entry.path().filename().native());
  }
  return pairs;
}

/// In a child that has its namespaces: a mount namespace of its own that
/// still sees the host's later mounts (slave), with the `count` paths of
/// `pairs` (source, target, source, ...) bound on top. A source is opened
/// with no symlink followed in any component, the last included (ELOOP: a
/// symlink in /etc/netns/NAME is refused where iproute2 would follow it).
/// A target in /etc is followed as iproute2 follows it (/etc/resolv.conf is
/// often a symlink into /run), once: that is only the system's /etc, and
/// the bind lands in this child's own mount namespace. The source's inode
/// is then mounted onto the target's through their fds (open_tree(2),
/// move_mount(2)), so that nothing swapped between opening and mounting is
/// acted on. Returns 0, or the
/// errno with `failed` the index of the failing pair's source (or SIZE_MAX
/// for the namespace itself). Async-signal-safe.
[[nodiscard]] GONSO_CHILD_CODE inline int bind_etc_overlay(const char* const* pairs, std::size_t count,
                                                           std::size_t& failed) noexcept {
  if (count == 0) return 0;
  if (::syscall(SYS_unshare, CLONE_NEWNS) != 0 ||
      ::syscall(SYS_mount, "", "/", "none", MS_SLAVE | MS_REC, nullptr) != 0) {
    failed = SIZE_MAX;
    return errno;
  }
  struct {
    std::uint64_t flags, mode, resolve;
  } how{O_PATH | O_NOFOLLOW | O_CLOEXEC, 0, 0x04 /* RESOLVE_NO_SYMLINKS */};
  const auto open_checked = [&how](const char* path) noexcept {
    const int fd = static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how));
    struct stat st {};
    if (fd >= 0 && (::syscall(SYS_fstat, fd, &st) != 0 || S_ISLNK(st.st_mode))) {
      ::syscall(SYS_close, fd);
      errno = ELOOP;
      return -1;
    }
    return fd;
  };
  for (std::size_t i = 0; i + 1 < count; i += 2) {
    int err = 0;
    const int source = open_checked(pairs[i]);
    const int target =
        source < 0 ? -1 : static_cast<int>(::syscall(SYS_openat, AT_FDCWD, pairs[i + 1], O_PATH | O_CLOEXEC));
    const int tree = target < 0 ? -1
                                : static_cast<int>(::syscall(SYS_open_tree, source, "",
                                                             1 /* OPEN_TREE_CLONE */ | O_CLOEXEC | AT_EMPTY_PATH));
    if (tree < 0 || ::syscall(SYS_move_mount, tree, "", target, "", 0x04 | 0x40 /* F_ and T_EMPTY_PATH */) != 0) {
      err = errno;
    }
    for (const int fd : {tree, target, source}) {
      if (fd >= 0) ::syscall(SYS_close, fd);
    }
    if (err != 0) {
      failed = i;
      return err;
    }
  }
  return 0;
}

/// The C strings of `strings`, for a child that may not call into the
/// standard library.
[[nodiscard]] inline std::vector<const char*> c_strings(const std::vector<std::string>& strings) {
  std::vector<const char*> out;
  out.reserve(strings.size());
  for (const std::string& s : strings) out.push_back(s.c_str());
  return out;
}

}  // namespace gonso::detail

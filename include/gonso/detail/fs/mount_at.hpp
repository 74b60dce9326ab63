// gonso: mounting, unmounting, creating and removing through fds, so that
// each call acts on the very inode that was created or checked before, and a
// path swapped meanwhile (for a symlink, another folder) leads nowhere else.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>

// The new mount API (kernel 5.2), in case the C library predates it.
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1  // NOLINT(cppcoreguidelines-macro-usage)
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC  // NOLINT(cppcoreguidelines-macro-usage)
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004  // NOLINT(cppcoreguidelines-macro-usage)
#endif
#ifndef MOVE_MOUNT_T_EMPTY_PATH
#define MOVE_MOUNT_T_EMPTY_PATH 0x00000040  // NOLINT(cppcoreguidelines-macro-usage)
#endif

namespace gonso::detail {

/// "/proc/self/fd/N": a path that the kernel resolves to exactly the file
/// (mount and dentry) that fd N holds, wherever its name went since.
[[nodiscard]] inline std::string fd_path(int fd) { return fmt::format("/proc/self/fd/{}", fd); }

/// openat2(2) that refuses a symlink in any component of `path`, the last
/// included (with O_PATH|O_NOFOLLOW it would open the link itself, so that
/// is refused here too). For paths the library owns, such as /run/netns,
/// where no component has a reason to be a link. Returns -1 with errno set.
[[nodiscard]] inline int open_no_symlinks(int dir, const char* path, int flags) noexcept {
  open_how how{};
  how.flags = static_cast<__u64>(static_cast<unsigned>(flags | O_NOFOLLOW | O_CLOEXEC));
  how.resolve = RESOLVE_NO_SYMLINKS;
  const int fd = static_cast<int>(::syscall(SYS_openat2, dir, path, &how, sizeof how));
  if (fd < 0) return -1;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || S_ISLNK(st.st_mode)) {
    ::close(fd);
    errno = ELOOP;
    return -1;
  }
  return fd;
}

/// Bind-mounts the file `source` holds (a namespace fd, or any O_PATH fd)
/// onto the inode `target` holds: a detached copy made with open_tree(2),
/// attached with move_mount(2). Neither side is looked up by name again.
/// Returns 0 or the errno.
[[nodiscard]] inline int bind_fd_onto_fd(int source, int target, bool recursive = false) noexcept {
  const unsigned flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | (recursive ? AT_RECURSIVE : 0U);
  const unique_fd tree(static_cast<int>(::syscall(SYS_open_tree, source, "", flags)));
  if (!tree) return errno;
  if (::syscall(SYS_move_mount, tree.get(), "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) != 0) {
    return errno;  // closing `tree` drops the copy, which was never attached
  }
  return 0;
}

/// The id of the mount `fd` is on, and whether `fd` is that mount's root,
/// from statx(2) of the fd itself. False with errno set when it fails.
[[nodiscard]] inline bool mount_of(int fd, std::uint64_t& id, bool& root) noexcept {
  struct statx sx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &sx) != 0) return false;
  if ((sx.stx_mask & STATX_MNT_ID) == 0) {
    errno = ENOSYS;
    return false;
  }
  id = sx.stx_mnt_id;
  root = (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) != 0 && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
  return true;
}

/// True when the mount with id `mount_id` is shared (a member of a peer
/// group), by its optional fields in the calling thread's mountinfo.
[[nodiscard]] inline bool mount_is_shared(std::uint64_t mount_id) {
  std::ifstream info("/proc/thread-self/mountinfo");
  const std::string id = std::to_string(mount_id) + " ";
  for (std::string line; std::getline(info, line);) {
    if (line.compare(0, id.size(), id) != 0) continue;
    const std::size_t end = line.find(" - ");
    return line.substr(0, end).find(" shared:") != std::string::npos;
  }
  return false;
}

/// True when `fd` is on an nsfs mount: a namespace file bound somewhere.
/// nsfs inodes are reachable by path only through such a mount (the links
/// in /proc/PID/ns are procfs symlinks, which O_NOFOLLOW opens as such).
[[nodiscard]] inline bool on_nsfs(int fd) noexcept {
  struct statfs fs {};
  return ::fstatfs(fd, &fs) == 0 && fs.f_type == nsfs_magic;
}

/// Unlinks `name` in `dir` only while it still names the inode `fd` holds:
/// the undo of a failed creation must not remove what someone put there
/// instead. Best effort, for error paths.
inline void unlink_if_same(int dir, const char* name, int fd) noexcept {
  struct stat ours {
  }, there{};
  if (::fstat(fd, &ours) != 0 || ::fstatat(dir, name, &there, AT_SYMLINK_NOFOLLOW) != 0) return;
  if (ours.st_dev == there.st_dev && ours.st_ino == there.st_ino) ::unlinkat(dir, name, 0);
}

}  // namespace gonso::detail

// gonso: the mounts behind persist(): a namespace file bound onto a new inode
// in a verified folder, and unbound through its fd. Was:
// files, as `ip netns add` and `unshare --net=FILE` make.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/fs/mount_at.hpp>
#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/kind.hpp>

namespace gonso::detail {

// The folder of a path the caller gave, opened once (O_PATH), and the name
// of its last component. The folder's own path is the caller's to choose:
// symlinks on the way to it are followed, as the caller asked for that path.
// The last component is only ever acted on relative to this fd, and never
// followed.
struct dir_entry {
  unique_fd dir;
  std::string name;
};
[[nodiscard]] inline dir_entry open_parent(const std::filesystem::path& path) noexcept {
  std::filesystem::path parent = path.parent_path();
  if (parent.empty()) parent = ".";
  std::string name = path.filename().string();
  if (name.empty()) name = ".";  // "dir/": the folder itself, which exists
  return {unique_fd(::open(parent.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC)), std::move(name)};
}

// The kernel binds a mount namespace's file only into a mount namespace
// older than it (a lower id than the namespace of the thread that mounts),
// so that no two can hold each other alive. The ids come from per-CPU
// batches, not one counter: inside a container, whose mount namespace was
// itself made by a running system, a namespace made after it may still get
// a lower id, and the kernel then refuses with EINVAL (ELOOP through
// move_mount). Checked here first, so that the error names the rule.
template <typename S>  // a Set
void check_mnt_order(const S& set, const std::filesystem::path& file) {
  const Identity bound = set.identity(Kind::mnt);
  const unique_fd here(::open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC));
  struct stat st {};
  if (!here || ::fstat(here.get(), &st) != 0) return;  // the kernel decides
  const std::uint64_t own = ns_id(here.get());
  if (bound.id == 0 || own == 0) return;  // no ids to compare: the kernel decides
  if (bound.id == own) {
    throw system_error(EINVAL,
                       "cannot bind {} onto {}: it is the mount namespace of the calling thread, and would be "
                       "bound inside itself; persist it from another mount namespace",
                       bound, file.native());
  }
  if (bound.id < own) {
    throw system_error(EINVAL,
                       "cannot bind {} onto {}: the kernel binds a mount namespace only into an older one, and "
                       "its id {} is below the id {} of the calling thread's mount namespace mnt:[{}] (ids are "
                       "handed out per CPU, so a namespace made later can still be older)",
                       bound, file.native(), bound.id, own, st.st_ino);
  }
}

// persist() of one kind onto `entry.name` in the verified folder
// `entry.dir`; `file` is for messages.
template <typename S>  // a Set
void persist_at(const S& set, Kind kind, int dir, const std::string& name, const std::filesystem::path& file) {
  const int fd = set.fd(kind);
  if (dir < 0) throw system_error(errno, "cannot create {} to persist {}", file.native(), set.identity(kind));
  if (kind == Kind::mnt) {
    std::uint64_t mount_id = 0;
    bool root = false;
    if (mount_of(dir, mount_id, root) && mount_is_shared(mount_id)) {
      // A mount namespace bound onto a shared mount would propagate into
      // its peers, possibly into itself (util-linux refuses it too).
      throw system_error(EINVAL,
                         "cannot bind {} onto {}: its mount is shared; bind mount namespaces into a folder on a "
                         "private mount",
                         set.identity(kind), file.native());
    }
    check_mnt_order(set, file);
  }
  // O_CREAT|O_EXCL|O_NOFOLLOW: a new inode of ours, never what a symlink
  // there leads to; the fd then names that inode whatever becomes of its
  // name, and the namespace is mounted onto it and nothing else.
  const unique_fd point(::openat(dir, name.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444));
  if (!point) throw system_error(errno, "cannot create {} to persist {}", file.native(), set.identity(kind));
  if (const int err = bind_fd_onto_fd(fd, point.get()); err != 0) {
    unlink_if_same(dir, name.c_str(), point.get());
    throw system_error(err, "cannot bind {} onto {}", set.identity(kind), file.native());
  }
}

// The namespace file `name` in the verified folder `dir`, opened without
// following it: a persisted namespace, or an error (`file` is for messages).
// `nstype` (a CLONE_NEW* value), when not 0, is the only kind accepted.
[[nodiscard]] inline unique_fd open_persisted(int dir, const std::string& name, const std::filesystem::path& file,
                                              int nstype) {
  if (dir < 0) throw system_error(errno, "cannot remove persisted {}", file.native());
  unique_fd fd(::openat(dir, name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) throw system_error(errno, "cannot remove persisted {}", file.native());
  if (!on_nsfs(fd.get()))
    throw system_error(EINVAL, "cannot remove {}: it is not a persisted namespace", file.native());
  if (nstype != 0) {
    // ioctl(2) needs an fd opened for reading: reopened through the O_PATH
    // fd, so it is the same inode.
    const unique_fd readable(::open(fd_path(fd.get()).c_str(), O_RDONLY | O_CLOEXEC));
    const int type = readable ? ns_type(readable.get()) : -1;
    if (type != nstype) {
      throw system_error(EINVAL, "cannot remove {}: it is not a persisted {} namespace", file.native(),
                         gonso::name(static_cast<Kind>(nstype)));
    }
  }
  return fd;
}

// Undoes persist_at(). The mount is detached through /proc/self/fd/N of the
// O_PATH fd checked above: the kernel resolves that to exactly the mount
// the fd is on, not to whatever the name leads to by then (umount2 with
// UMOUNT_NOFOLLOW on the name would act on what the name is at that time).
// The name is then unlinked relative to the folder's fd, never followed.
inline void unpersist_at(int dir, const std::string& name, const std::filesystem::path& file, int nstype = 0) {
  const unique_fd fd = open_persisted(dir, name, file, nstype);
  if (::umount2(fd_path(fd.get()).c_str(), MNT_DETACH) != 0) {
    throw system_error(errno, "cannot unmount {}", file.native());
  }
  // Once unmounted, the name may be taken over by whoever can write the
  // folder: only the regular file it covered is removed, and a name gone or
  // replaced meanwhile (a symlink, a folder) is left to whoever did that.
  struct stat st {};
  if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return;
    throw system_error(errno, "cannot remove {}", file.native());
  }
  if (S_ISREG(st.st_mode) && ::unlinkat(dir, name.c_str(), 0) != 0 && errno != ENOENT) {
    throw system_error(errno, "cannot remove {}", file.native());
  }
}

}  // namespace gonso::detail

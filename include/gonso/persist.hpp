// gonso: keeping namespaces alive without a process: bind mounts of their
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
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/kind.hpp>
#include <gonso/set.hpp>

namespace gonso {

namespace detail {

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
inline void check_mnt_order(const Set& set, const std::filesystem::path& file) {
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
inline void persist_at(const Set& set, Kind kind, int dir, const std::string& name, const std::filesystem::path& file) {
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

}  // namespace detail

/// Bind-mounts the namespace of `kind` in `set` onto `file`, which must not
/// exist yet (it is created, empty): the namespace then lives until
/// unpersist(file), with no fd or process holding it, and Set::from_file()
/// opens it again. The folder of `file` is opened once, following symlinks
/// in its path as the caller wrote it; `file` itself is created with
/// O_EXCL|O_NOFOLLOW relative to that folder and the namespace is mounted
/// onto exactly that inode through its fd, so a name swapped meanwhile (for
/// a symlink, say) never gets the mount. Throws std::invalid_argument when
/// the Set lacks `kind`, std::system_error: EEXIST when `file` exists (also
/// as a symlink); EINVAL when a mount namespace would be bound onto a shared
/// mount (bind mount namespaces into a folder on a private mount, as
/// util-linux `unshare --mount=FILE` asks), inside itself, or into an older
/// one (the kernel binds a mount namespace only into a mount namespace with
/// a lower id than its own; checked before anything is made). Nothing is
/// left behind on error.
inline void persist(const Set& set, Kind kind, const std::filesystem::path& file) {
  detail::checked(kind, "gonso::persist");
  (void)set.fd(kind);  // std::invalid_argument before anything is opened
  const detail::dir_entry at = detail::open_parent(file);
  detail::persist_at(set, kind, at.dir.get(), at.name, file);
}

/// Undoes persist(): unmounts `file` (lazily, so that users of it keep
/// working) and removes it. `file` itself is never followed: a symlink is
/// refused even when it leads to a persisted namespace. Throws
/// std::system_error: ENOENT when it does not exist, EINVAL when it is not a
/// bind-mounted namespace file.
inline void unpersist(const std::filesystem::path& file) {
  const detail::dir_entry at = detail::open_parent(file);
  detail::unpersist_at(at.dir.get(), at.name, file);
}

/// Bind-mounts every namespace of `set` into `dir` (created if missing, with
/// its parents), one file per kind named as in /proc/PID/ns, so that
/// Set::from_dir(dir) opens them again later. `dir` itself must be a folder,
/// not a symlink to one (ENOTDIR); the files are made in it as persist(set,
/// kind, file) makes them. On an error, what was already bound is undone.
/// Throws std::logic_error for an empty Set, before `dir` is made.
inline void persist(const Set& set, const std::filesystem::path& dir) {
  // Else it would make an empty folder that from_dir() refuses, and report success.
  if (set.empty()) {
    throw std::logic_error(
        fmt::format("cannot persist an empty Set (moved-from, or opened with no kinds) into {}", dir.native()));
  }
  if (dir.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(dir.parent_path(), ec);
    if (ec) throw std::system_error(ec, fmt::format("cannot create {}", dir.native()));
  }
  const detail::dir_entry at = detail::open_parent(dir);
  if (!at.dir) throw detail::system_error(errno, "cannot create {}", dir.native());
  const bool made = ::mkdirat(at.dir.get(), at.name.c_str(), 0755) == 0;
  if (!made && errno != EEXIST) throw detail::system_error(errno, "cannot create {}", dir.native());
  const auto undo_dir = [&] {
    if (made) ::unlinkat(at.dir.get(), at.name.c_str(), AT_REMOVEDIR);
  };
  const detail::unique_fd folder(
      ::openat(at.dir.get(), at.name.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!folder) {
    const int err = errno == ELOOP ? ENOTDIR : errno;  // a symlink: not a folder of its own
    undo_dir();
    throw detail::system_error(err, "cannot create {}", dir.native());
  }
  std::vector<std::string> done;
  try {
    for (Kind kind : set.kinds()) {
      const std::string file(name(kind));
      detail::persist_at(set, kind, folder.get(), file, dir / file);
      done.push_back(file);
    }
  } catch (...) {
    for (const auto& file : done) {
      try {
        detail::unpersist_at(folder.get(), file, dir / file);
      } catch (...) {
      }
    }
    undo_dir();
    throw;
  }
}

/// Undoes persist(set, dir): unpersists every namespace file in `dir`, then
/// removes `dir` if that left it empty. Neither `dir` (a symlink is refused)
/// nor its files are followed. Throws std::system_error: ENOENT when `dir`
/// holds no persisted namespace.
inline void unpersist_dir(const std::filesystem::path& dir) {
  const detail::dir_entry at = detail::open_parent(dir);
  const detail::unique_fd folder(
      at.dir ? ::openat(at.dir.get(), at.name.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) : -1);
  bool any = false;
  for (Kind kind : all_kinds) {
    if (!folder) break;
    const std::string file(name(kind));
    const detail::unique_fd fd(::openat(folder.get(), file.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd || !detail::on_nsfs(fd.get())) continue;
    detail::unpersist_at(folder.get(), file, dir / file);
    any = true;
  }
  if (!any) throw detail::system_error(ENOENT, "cannot unpersist {}: it holds no persisted namespace", dir.native());
  ::unlinkat(at.dir.get(), at.name.c_str(), AT_REMOVEDIR);  // only if empty; other files are the caller's
}

}  // namespace gonso

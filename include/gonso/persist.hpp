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
#include <gonso/detail/fs/persist.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/kind.hpp>
#include <gonso/set.hpp>

namespace gonso {

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

/// persist(set, dir) under the name that pairs it with unpersist_dir.
inline void persist_dir(const Set& set, const std::filesystem::path& dir) { persist(set, dir); }

/// Undoes persist(set, dir) (persist_dir): unpersists every namespace file in `dir`, then
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

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
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/error.hpp>
#include <gonso/detail/syscalls.hpp>
#include <gonso/detail/unique_fd.hpp>
#include <gonso/kind.hpp>
#include <gonso/set.hpp>

namespace gonso {

namespace detail {

// True when the mount holding `dir` is shared (a peer group): read its
// mount id with statx(2), then its optional fields in mountinfo.
[[nodiscard]] inline bool on_shared_mount(const std::filesystem::path& dir) {
  struct statx sx {};
  if (::statx(AT_FDCWD, dir.c_str(), 0, STATX_MNT_ID, &sx) != 0 || (sx.stx_mask & STATX_MNT_ID) == 0) return false;
  std::ifstream info("/proc/self/mountinfo");
  const std::string id = std::to_string(sx.stx_mnt_id) + " ";
  for (std::string line; std::getline(info, line);) {
    if (line.compare(0, id.size(), id) != 0) continue;
    const std::size_t end = line.find(" - ");
    return line.substr(0, end).find(" shared:") != std::string::npos;
  }
  return false;
}

// An empty regular file to mount over; false with errno when it exists.
[[nodiscard]] inline bool make_mount_point(const std::filesystem::path& file) noexcept {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

}  // namespace detail

/// Bind-mounts the namespace of `kind` in `set` onto `file`, which must not
/// exist yet (it is created, empty): the namespace then lives until
/// unpersist(file), with no fd or process holding it, and Set::from_file()
/// opens it again. Throws std::invalid_argument when the Set lacks `kind`,
/// std::system_error: EEXIST when `file` exists; EINVAL when a mount
/// namespace would be bound onto a shared mount (checked here: bind mount
/// namespaces into a folder on a private mount, as util-linux
/// `unshare --mount=FILE` asks), or, from the kernel, inside itself or an
/// older one. Nothing is left behind on error.
inline void persist(const Set& set, Kind kind, const std::filesystem::path& file) {
  detail::checked(kind, "gonso::persist");
  const int fd = set.fd(kind);
  if (kind == Kind::mnt) {
    const auto parent = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
    if (detail::on_shared_mount(parent)) {
      // A mount namespace bound onto a shared mount would propagate into
      // its peers, possibly into itself (util-linux refuses it too).
      throw detail::system_error(EINVAL,
                                 "cannot bind {} onto {}: its mount is shared; bind mount namespaces into a "
                                 "folder on a private mount",
                                 set.identity(kind), file.native());
    }
  }
  if (!detail::make_mount_point(file)) {
    throw detail::system_error(errno, "cannot create {} to persist {}", file.native(), set.identity(kind));
  }
  const std::string source = fmt::format("/proc/self/fd/{}", fd);
  if (::mount(source.c_str(), file.c_str(), nullptr, MS_BIND, nullptr) != 0) {
    const int err = errno;
    ::unlink(file.c_str());
    throw detail::system_error(err, "cannot bind {} onto {}", set.identity(kind), file.native());
  }
}

/// Undoes persist(): unmounts `file` (lazily, so that users of it keep
/// working) and removes it. Throws std::system_error: ENOENT when it does not
/// exist, EINVAL when it is not a bind-mounted namespace file.
inline void unpersist(const std::filesystem::path& file) {
  struct statfs fs {};
  if (::statfs(file.c_str(), &fs) != 0) throw detail::system_error(errno, "cannot remove persisted {}", file.native());
  if (fs.f_type != detail::nsfs_magic) {
    throw detail::system_error(EINVAL, "cannot remove {}: it is not a persisted namespace", file.native());
  }
  if (::umount2(file.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) != 0) {
    throw detail::system_error(errno, "cannot unmount {}", file.native());
  }
  if (::unlink(file.c_str()) != 0) throw detail::system_error(errno, "cannot remove {}", file.native());
}

/// Bind-mounts every namespace of `set` into `dir` (created if missing), one
/// file per kind named as in /proc/PID/ns, so that Set::from_dir(dir) opens
/// them again later. On an error, what was already bound is undone. Throws
/// std::logic_error for an empty Set, before `dir` is made.
inline void persist(const Set& set, const std::filesystem::path& dir) {
  // Else it would make an empty folder that from_dir() refuses, and report success.
  if (set.empty()) {
    throw std::logic_error(
        fmt::format("cannot persist an empty Set (moved-from, or opened with no kinds) into {}", dir.native()));
  }
  std::error_code ec;
  const bool made = std::filesystem::create_directories(dir, ec);
  if (ec) throw std::system_error(ec, fmt::format("cannot create {}", dir.native()));
  std::vector<std::filesystem::path> done;
  try {
    for (Kind kind : set.kinds()) {
      const auto file = dir / std::string(name(kind));
      persist(set, kind, file);
      done.push_back(file);
    }
  } catch (...) {
    for (const auto& file : done) {
      try {
        unpersist(file);
      } catch (...) {
      }
    }
    if (made) ::rmdir(dir.c_str());
    throw;
  }
}

/// Undoes persist(set, dir): unpersists every namespace file in `dir`, then
/// removes `dir` if that left it empty. Throws std::system_error: ENOENT
/// when `dir` holds no persisted namespace.
inline void unpersist_dir(const std::filesystem::path& dir) {
  bool any = false;
  for (Kind kind : all_kinds) {
    const auto file = dir / std::string(name(kind));
    struct statfs fs {};
    if (::statfs(file.c_str(), &fs) != 0 || fs.f_type != detail::nsfs_magic) continue;
    unpersist(file);
    any = true;
  }
  if (!any) throw detail::system_error(ENOENT, "cannot unpersist {}: it holds no persisted namespace", dir.native());
  ::rmdir(dir.c_str());  // only if empty; other files are the caller's
}

}  // namespace gonso

// gonso: the folder of named network namespaces (/run/netns), made and
// opened as iproute2 does, with no symlink followed.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/fs/mount_at.hpp>
#include <gonso/detail/ns/netns_name.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/kind.hpp>

namespace gonso::netns::detail {

using gonso::detail::system_error;

/// Where iproute2 keeps named network namespaces.
inline constexpr const char* directory = "/run/netns";

// /run/netns, opened once and made ready for names; its fd is where names
// are then made. The library owns this path from / down, so no component of
// it is followed when it is a symlink (ENOTDIR): /run and /run/netns are each
// opened with O_NOFOLLOW relative to the one before, and made with mkdirat(2)
// in it when missing. As iproute2 does, /run/netns is made a mount of its
// own, shared, so that a name added later shows up in mount namespaces made
// meanwhile (`ip netns exec` makes some): a recursive self-bind of exactly
// the folder opened (open_tree(2) and move_mount(2) on its fd), then its
// propagation set through /proc/self/fd/N of the new mount's own fd.
[[nodiscard]] inline gonso::detail::unique_fd prepare_directory() {
  using gonso::detail::system_error;
  using gonso::detail::unique_fd;
  // Every step below needs it; refusing first leaves nothing half made
  // (such as /run/netns) and fails alike whatever state /run is in.
  constexpr unsigned cap_sys_admin = CAP_SYS_ADMIN;
  if ((gonso::detail::capabilities()[0].effective & (1U << cap_sys_admin)) == 0) {
    throw system_error(EPERM, "cannot prepare {} for a name: mounting there needs CAP_SYS_ADMIN", directory);
  }
  const auto open_folder = [](int at, const char* name) {
    return unique_fd(::openat(at, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  };
  const unique_fd root(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) throw system_error(errno, "cannot open /");
  if (::mkdirat(root.get(), "run", 0755) != 0 && errno != EEXIST) throw system_error(errno, "cannot create /run");
  const unique_fd run = open_folder(root.get(), "run");
  if (!run) throw system_error(errno, "cannot open /run (a folder, never followed as a symlink)");
  const bool made = ::mkdirat(run.get(), "netns", 0755) == 0;
  if (!made && errno != EEXIST) throw system_error(errno, "cannot create {}", directory);
  unique_fd dir = open_folder(run.get(), "netns");
  const auto fail = [&](int err, const char* what, const char* why = "") {
    if (made) ::unlinkat(run.get(), "netns", AT_REMOVEDIR);
    return system_error(err, "cannot {} {}{}", what, directory, why);
  };
  if (!dir) throw fail(errno, "open", " (a folder, never followed as a symlink)");
  std::uint64_t mount_id = 0;
  bool mount_root = false;
  if (!gonso::detail::mount_of(dir.get(), mount_id, mount_root)) throw fail(errno, "find the mount of");
  if (mount_root && gonso::detail::mount_is_shared(mount_id)) return dir;
  if (!mount_root) {
    const unsigned flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE;
    unique_fd tree(static_cast<int>(::syscall(SYS_open_tree, dir.get(), "", flags)));
    if (!tree) throw fail(errno, "bind onto itself");
    if (::syscall(SYS_move_mount, tree.get(), "", dir.get(), "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) !=
        0) {
      throw fail(errno, "bind onto itself");
    }
    dir = std::move(tree);  // the root of the new mount, now attached on top
  }
  if (::mount("none", gonso::detail::fd_path(dir.get()).c_str(), nullptr, MS_SHARED | MS_REC, nullptr) != 0) {
    const int err = errno;
    if (!mount_root) ::umount2(gonso::detail::fd_path(dir.get()).c_str(), MNT_DETACH);
    throw fail(err, "make a shared mount of");
  }
  return dir;
}

/// A base folder of names other than /run/netns (containerd keeps its own):
/// absolute, without "." or ".." parts, no NUL. Throws std::invalid_argument.
inline void check_base(const std::filesystem::path& base) {
  const std::string& text = base.native();
  if (!base.is_absolute() || text.find('\0') != std::string::npos) {
    throw std::invalid_argument(fmt::format("netns base folder {:?} is not an absolute path", text));
  }
  for (const auto& part : base.relative_path()) {
    if (part == "." || part == "..") {
      throw std::invalid_argument(fmt::format("netns base folder {:?} has a \".\" or \"..\" part", text));
    }
  }
}

// A base folder other than /run/netns, made (0755, with its parents) and
// opened part by part from / with no symlink followed, as /run/netns is. It
// is left as it is otherwise: not made a mount of its own, so that a caller's
// folder gets no mount gonso would have to undo (bind it onto itself, shared,
// for names to show up in mount namespaces made before they were).
[[nodiscard]] inline gonso::detail::unique_fd prepare_base(const std::filesystem::path& base) {
  using gonso::detail::unique_fd;
  if (base == directory) return prepare_directory();
  check_base(base);
  constexpr unsigned cap_sys_admin = CAP_SYS_ADMIN;
  if ((gonso::detail::capabilities()[0].effective & (1U << cap_sys_admin)) == 0) {
    throw system_error(EPERM, "cannot name network namespaces in {}: binding them needs CAP_SYS_ADMIN", base.native());
  }
  unique_fd dir(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dir) throw system_error(errno, "cannot open /");
  for (const auto& part : base.relative_path()) {
    if (part.empty()) continue;  // a trailing '/'
    if (::mkdirat(dir.get(), part.c_str(), 0755) != 0 && errno != EEXIST) {
      throw system_error(errno, "cannot create {} (making {})", part.native(), base.native());
    }
    dir.reset(::openat(dir.get(), part.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!dir) throw system_error(errno, "cannot open {} (a folder, never followed as a symlink)", base.native());
  }
  return dir;
}

// /run/netns as it is, for removing a name: opened without following a
// symlink in any component, and made nothing of.
[[nodiscard]] inline gonso::detail::unique_fd open_directory(const char* base = directory) noexcept {
  return gonso::detail::unique_fd(gonso::detail::open_no_symlinks(AT_FDCWD, base, O_PATH | O_DIRECTORY));
}

}  // namespace gonso::netns::detail

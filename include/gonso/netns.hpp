// gonso: named network namespaces, as iproute2's `ip netns` keeps them under
// /run/netns, so that either side sees what the other makes.
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
#include <gonso/persist.hpp>
#include <gonso/set.hpp>

/// Named network namespaces under /run/netns, compatible with iproute2.
namespace gonso::netns {

/// Where iproute2 keeps named network namespaces.
inline constexpr const char* directory = "/run/netns";

/// Throws std::invalid_argument unless `name` can name a file directly in
/// /run/netns: not empty, not "." or "..", no '/', no NUL, at most 255 bytes.
/// Names that would escape /run/netns are refused before anything is touched.
inline void check_name(std::string_view name) { gonso::detail::check_netns_name(name); }

/// The file of namespace `name`, /run/netns/NAME. Checks the name.
[[nodiscard]] inline std::filesystem::path path(std::string_view name) {
  check_name(name);
  return std::filesystem::path(directory) / std::string(name);
}

namespace detail {

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

// /run/netns as it is, for removing a name: opened without following a
// symlink in any component, and made nothing of.
[[nodiscard]] inline gonso::detail::unique_fd open_directory() noexcept {
  return gonso::detail::unique_fd(gonso::detail::open_no_symlinks(AT_FDCWD, directory, O_PATH | O_DIRECTORY));
}

}  // namespace detail

/// Makes a new network namespace named `name`, as `ip netns add NAME` does,
/// and returns a Set holding it. /run/netns is made (a shared mount of its
/// own) when needed; neither it nor /run may be a symlink, and the name is
/// created and bound through fds as persist() does. Throws
/// std::invalid_argument for a bad name, std::system_error: EEXIST when the
/// name is taken, EPERM without CAP_SYS_ADMIN (before anything is touched),
/// ENOTDIR when /run or /run/netns is a symlink. Nothing is left behind on
/// error but /run/netns itself.
[[nodiscard]] inline Set create(std::string_view name) {
  const auto file = path(name);
  const gonso::detail::unique_fd dir = detail::prepare_directory();
  Set fresh = Set::current(Kind::net).unshare(Kind::net);
  gonso::detail::persist_at(fresh, Kind::net, dir.get(), std::string(name), file);
  return fresh;
}

/// Gives an existing network namespace (e.g. a container's) the name `name`.
/// Throws std::invalid_argument for a bad name or a Set without a network
/// namespace, before /run/netns is touched; std::system_error as create().
inline void add(const Set& set, std::string_view name) {
  const auto file = path(name);
  if (!set.contains(Kind::net)) {
    throw std::invalid_argument(
        fmt::format("cannot name {:?} a network namespace: the Set {} holds none", std::string(name), set.kinds()));
  }
  const gonso::detail::unique_fd dir = detail::prepare_directory();
  gonso::detail::persist_at(set, Kind::net, dir.get(), std::string(name), file);
}

/// Opens the network namespace named `name`, whoever made it. Throws
/// std::invalid_argument for a bad name, std::system_error(ENOENT) for an
/// unknown one, (EINVAL) when the file is not a network namespace.
[[nodiscard]] inline Set open(std::string_view name) { return Set::from_file(Kind::net, path(name)); }

/// The names under /run/netns, sorted, as `ip netns list` shows them.
[[nodiscard]] inline std::vector<std::string> list() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(directory, ec)) {
    names.push_back(entry.path().filename().string());
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    throw std::system_error(ec, fmt::format("cannot list {}", directory));
  }
  std::sort(names.begin(), names.end());
  return names;
}

/// Removes the name `name`, as `ip netns delete NAME` does; the namespace
/// itself lives on while anything else holds it. Only a network namespace
/// bound on /run/netns/NAME itself is removed: no symlink (there, or as
/// /run or /run/netns) is followed. Throws std::invalid_argument for a bad
/// name, std::system_error: ENOENT for an unknown one (so deleting twice
/// fails the second time), EINVAL for a name that is no persisted network
/// namespace.
inline void remove(std::string_view name) {
  const auto file = path(name);
  const gonso::detail::unique_fd dir = detail::open_directory();
  gonso::detail::unpersist_at(dir.get(), std::string(name), file, CLONE_NEWNET);
}

}  // namespace gonso::netns

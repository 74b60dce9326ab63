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
#include <gonso/detail/fs/netns_dir.hpp>
#include <gonso/detail/ns/netns_name.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/kind.hpp>
#include <gonso/persist.hpp>
#include <gonso/set.hpp>

/// Named network namespaces under /run/netns, compatible with iproute2.
namespace gonso::netns {

/// Where iproute2 keeps named network namespaces.
inline constexpr const char* directory = detail::directory;

/// Throws std::invalid_argument unless `name` can name a file directly in
/// /run/netns: not empty, not "." or "..", no '/', no NUL, at most 255 bytes.
/// Names that would escape /run/netns are refused before anything is touched.
inline void check_name(std::string_view name) { gonso::detail::check_netns_name(name); }

/// The file of namespace `name`, BASE/NAME (by default /run/netns/NAME).
/// Checks the name, and a base other than /run/netns (check_base).
[[nodiscard]] inline std::filesystem::path path(std::string_view name, const std::filesystem::path& base = directory) {
  check_name(name);
  if (base != directory) detail::check_base(base);
  return base / std::string(name);
}

/// Every function below takes, last, the folder its names live in: by
/// default /run/netns, which iproute2 shares; a runtime may keep its own
/// elsewhere (an absolute path; std::invalid_argument for a relative one or
/// one with "." or ".." parts). Such a folder is made with its parents
/// (0755) when missing, opened part by part with no symlink followed, and,
/// unlike /run/netns, not made a shared mount of its own.

/// Makes a new network namespace named `name`, as `ip netns add NAME` does,
/// and returns a Set holding it. /run/netns is made (a shared mount of its
/// own) when needed; neither it nor /run may be a symlink, and the name is
/// created and bound through fds as persist() does. Throws
/// std::invalid_argument for a bad name, std::system_error: EEXIST when the
/// name is taken, EPERM without CAP_SYS_ADMIN (before anything is touched),
/// ENOTDIR when /run or /run/netns is a symlink. Nothing is left behind on
/// error but /run/netns itself.
[[nodiscard]] inline Set create(std::string_view name, const std::filesystem::path& base = directory) {
  const auto file = path(name, base);
  const gonso::detail::unique_fd dir = detail::prepare_base(base);
  Set fresh = Set::current(Kind::net).unshare(Kind::net);
  gonso::detail::persist_at(fresh, Kind::net, dir.get(), std::string(name), file);
  return fresh;
}

/// Gives an existing network namespace (e.g. a container's) the name `name`.
/// Throws std::invalid_argument for a bad name or a Set without a network
/// namespace, before /run/netns is touched; std::system_error as create().
inline void add(const Set& set, std::string_view name, const std::filesystem::path& base = directory) {
  const auto file = path(name, base);
  if (!set.contains(Kind::net)) {
    throw std::invalid_argument(
        fmt::format("cannot name {:?} a network namespace: the Set {} holds none", std::string(name), set.kinds()));
  }
  const gonso::detail::unique_fd dir = detail::prepare_base(base);
  gonso::detail::persist_at(set, Kind::net, dir.get(), std::string(name), file);
}

/// Opens the network namespace named `name`, whoever made it. Throws
/// std::invalid_argument for a bad name, std::system_error(ENOENT) for an
/// unknown one, (EINVAL) when the file is not a network namespace. In a base
/// folder other than /run/netns nothing is followed: a symlink in the
/// folder's path is ENOTDIR or ELOOP, and a name that is no namespace file
/// itself (a symlink to one, a FIFO) is EINVAL, found before it is opened.
[[nodiscard]] inline Set open(std::string_view name, const std::filesystem::path& base = directory) {
  const auto file = path(name, base);
  if (base == directory) return Set::from_file(Kind::net, file);
  using gonso::detail::system_error;
  const gonso::detail::unique_fd dir = detail::open_directory(base.c_str());
  if (!dir) throw system_error(errno, "cannot open net namespace {}: cannot open its folder", file.native());
  const gonso::detail::unique_fd link(::openat(dir.get(), std::string(name).c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!link) throw system_error(errno, "cannot open net namespace {}", file.native());
  if (!gonso::detail::on_nsfs(link.get())) {
    throw system_error(EINVAL, "cannot open net namespace {}: it is no namespace file", file.native());
  }
  // Reopened through the fd: the same inode, now readable for the checks.
  const gonso::detail::unique_fd readable(::open(gonso::detail::fd_path(link.get()).c_str(), O_RDONLY | O_CLOEXEC));
  if (!readable) throw system_error(errno, "cannot open net namespace {}", file.native());
  return Set::from_fd(Kind::net, readable.get());
}

/// The names in the folder, sorted, as `ip netns list` shows them; none
/// when the folder does not exist. A base folder other than /run/netns is
/// opened with no symlink followed, and listed through that fd.
[[nodiscard]] inline std::vector<std::string> list(const std::filesystem::path& base = directory) {
  std::filesystem::path where = base;
  gonso::detail::unique_fd dir;
  if (base != directory) {
    detail::check_base(base);
    dir = detail::open_directory(base.c_str());
    if (!dir) {
      if (errno == ENOENT) return {};
      throw gonso::detail::system_error(errno, "cannot list {} (a folder, never followed as a symlink)", base.native());
    }
    where = gonso::detail::fd_path(dir.get());
  }
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(where, ec)) {
    names.push_back(entry.path().filename().string());
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    throw std::system_error(ec, fmt::format("cannot list {}", base.native()));
  }
  std::sort(names.begin(), names.end());
  return names;
}

/// Removes the name `name`, as `ip netns delete NAME` does; the namespace
/// itself lives on while anything else holds it. Only a network namespace
/// bound on /run/netns/NAME itself is removed: no symlink (there, or in
/// the folder's path) is followed. Throws std::invalid_argument for a bad
/// name, std::system_error: ENOENT for an unknown one (so deleting twice
/// fails the second time: remove_if_exists does not), EINVAL for a name that
/// is no persisted network namespace.
inline void remove(std::string_view name, const std::filesystem::path& base = directory) {
  const auto file = path(name, base);
  const gonso::detail::unique_fd dir = detail::open_directory(base.c_str());  // unpersist_at reports a failure
  gonso::detail::unpersist_at(dir.get(), std::string(name), file, CLONE_NEWNET);
}

/// remove(), where a name (or its folder) that does not exist is no error:
/// what a CNI DEL needs, which must succeed when repeated. Returns whether
/// a name was removed. Every other error is remove()'s.
inline bool remove_if_exists(std::string_view name, const std::filesystem::path& base = directory) {
  try {
    remove(name, base);
    return true;
  } catch (const std::system_error& e) {
    if (e.code() == std::errc::no_such_file_or_directory) return false;
    throw;
  }
}

}  // namespace gonso::netns

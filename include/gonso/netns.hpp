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

/// The file of namespace `name`, /run/netns/NAME. Checks the name.
[[nodiscard]] inline std::filesystem::path path(std::string_view name) {
  check_name(name);
  return std::filesystem::path(directory) / std::string(name);
}

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

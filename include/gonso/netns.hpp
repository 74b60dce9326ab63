// gonso: named network namespaces, as iproute2's `ip netns` keeps them under
// /run/netns, so that either side sees what the other makes.
// SPDX-License-Identifier: MIT
#pragma once

#include <sys/mount.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/error.hpp>
#include <gonso/detail/netns_name.hpp>
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

// As iproute2 does: /run/netns is made a mount of its own, shared, so that a
// name added later shows up in mount namespaces made meanwhile (`ip netns
// exec` makes some).
inline void prepare_directory() {
  std::error_code ec;
  std::filesystem::create_directories(directory, ec);
  if (ec) throw std::system_error(ec, fmt::format("cannot create {}", directory));
  if (::mount("", directory, "none", MS_SHARED | MS_REC, nullptr) == 0) return;
  if (errno != EINVAL) throw gonso::detail::system_error(errno, "cannot make {} a shared mount", directory);
  // Not a mount point yet: bind it onto itself first.
  if (::mount(directory, directory, "none", MS_BIND | MS_REC, nullptr) != 0 ||
      ::mount("", directory, "none", MS_SHARED | MS_REC, nullptr) != 0) {
    throw gonso::detail::system_error(errno, "cannot make {} a shared mount", directory);
  }
}

}  // namespace detail

/// Makes a new network namespace named `name`, as `ip netns add NAME` does,
/// and returns a Set holding it. Throws std::invalid_argument for a bad
/// name, std::system_error: EEXIST when the name is taken, EPERM without
/// privilege. Nothing is left behind on error.
[[nodiscard]] inline Set create(std::string_view name) {
  const auto file = path(name);
  detail::prepare_directory();
  Set fresh = Set::current(Kind::net).unshare(Kind::net);
  persist(fresh, Kind::net, file);
  return fresh;
}

/// Gives an existing network namespace (e.g. a container's) the name `name`.
/// Throws std::invalid_argument for a bad name or a Set without a network
/// namespace, before /run/netns is touched; std::system_error(EEXIST) when
/// the name is taken.
inline void add(const Set& set, std::string_view name) {
  const auto file = path(name);
  if (!set.contains(Kind::net)) {
    throw std::invalid_argument(
        fmt::format("cannot name {:?} a network namespace: the Set {} holds none", std::string(name), set.kinds()));
  }
  detail::prepare_directory();
  persist(set, Kind::net, file);
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
/// itself lives on while anything else holds it. Throws
/// std::invalid_argument for a bad name, std::system_error(ENOENT) for an
/// unknown one (so deleting twice fails the second time).
inline void remove(std::string_view name) { unpersist(path(name)); }

}  // namespace gonso::netns

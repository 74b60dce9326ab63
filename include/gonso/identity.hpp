// gonso: naming one namespace.
// SPDX-License-Identifier: MIT
#pragma once

#include <sys/statfs.h>
#include <sys/types.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include <fmt/format.h>

#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/text_formatter.hpp>
#include <gonso/kind.hpp>

namespace gonso {

/// Names one namespace: its kind, the (device, inode) of its nsfs file (the
/// pair `readlink /proc/PID/ns/KIND` shows as "net:[4026531840]"), and the
/// kernel's 64-bit namespace id where the kernel has NS_GET_ID (6.x).
///
/// Inode numbers are reused soon after a namespace dies (the README, "How namespaces behave");
/// ids never are. Two identities are equal when both have an id and the ids
/// match, or, when either lacks one (read with stat(2), or an older kernel),
/// when kind, device and inode match: compare those only for namespaces that
/// something keeps alive.
struct Identity {
  Kind kind{};
  dev_t device = 0;
  ino_t inode = 0;
  /// NS_GET_ID of the namespace, or 0 when unknown.
  std::uint64_t id = 0;

  friend bool operator==(const Identity& a, const Identity& b) noexcept {
    if (a.kind != b.kind) return false;
    if (a.id != 0 && b.id != 0) return a.id == b.id;
    return a.device == b.device && a.inode == b.inode;
  }
};

/// "net:[4026531840]", as the kernel's namespace links read.
[[nodiscard]] inline std::string to_string(const Identity& id) { return fmt::format("{}:[{}]", id.kind, id.inode); }

/// The kind of namespace an fd refers to (NS_GET_NSTYPE), e.g. to sort fds
/// passed in by another program. Throws std::system_error: EBADF for a
/// closed fd, EINVAL for an fd that is not a namespace or of a kind gonso
/// does not know.
[[nodiscard]] inline Kind kind_of(int fd) {
  struct statfs fs {};
  if (::fstatfs(fd, &fs) != 0) throw detail::system_error(errno, "cannot inspect fd {}", fd);
  if (fs.f_type != detail::nsfs_magic) throw detail::system_error(EINVAL, "fd {} is not a namespace", fd);
  const int type = detail::ns_type(fd);
  if (type < 0) throw detail::system_error(errno, "cannot read the namespace type of fd {}", fd);
  for (Kind kind : all_kinds) {
    if (clone_flag(kind) == type) return kind;
  }
  throw detail::system_error(EINVAL, "fd {} is a namespace of unknown type {:#x}", fd, type);
}

}  // namespace gonso

/// Hashes kind, device and inode, the fields every identity has, so that
/// equal identities hash alike.
template <>
struct std::hash<gonso::Identity> {
  std::size_t operator()(const gonso::Identity& id) const noexcept {
    std::size_t h = std::hash<std::uint64_t>{}(static_cast<std::uint64_t>(id.inode));
    h ^=
        std::hash<std::uint64_t>{}(static_cast<std::uint64_t>(id.device)) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h ^= std::hash<std::uint32_t>{}(static_cast<std::uint32_t>(id.kind)) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
  }
};

template <>
struct fmt::formatter<gonso::Identity> : gonso::detail::text_formatter {
  auto format(const gonso::Identity& id, format_context& ctx) const {
    return write(fmt::format("{}:[{}]", id.kind, id.inode), ctx);
  }
};

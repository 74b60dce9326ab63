// gonso: naming one namespace.
// SPDX-License-Identifier: MIT
#pragma once

#include <sys/types.h>

#include <string>

#include <fmt/format.h>

#include <gonso/kind.hpp>

namespace gonso {

/// Names one namespace: its kind and the (device, inode) of its nsfs file, the
/// same pair `readlink /proc/PID/ns/KIND` shows as "net:[4026531840]".
/// Inode numbers are reused soon after a namespace dies (kernel-rules.md), so
/// compare identities only of namespaces that something keeps alive.
struct Identity {
  Kind kind{};
  dev_t device = 0;
  ino_t inode = 0;

  friend bool operator==(const Identity&, const Identity&) = default;
};

/// "net:[4026531840]", as the kernel's namespace links read.
[[nodiscard]] inline std::string to_string(const Identity& id) {
  return fmt::format("{}:[{}]", name(id.kind), id.inode);
}

}  // namespace gonso

template <>
struct fmt::formatter<gonso::Identity> {
  constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
  auto format(const gonso::Identity& id, format_context& ctx) const {
    return fmt::format_to(ctx.out(), "{}:[{}]", gonso::name(id.kind), id.inode);
  }
};

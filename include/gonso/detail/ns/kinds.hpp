// gonso: the orders and sets of kinds the engines use, each derived from the
// one table (table.hpp), and the checks of Kind values given by callers.
// SPDX-License-Identifier: MIT
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string_view>

#include <fmt/format.h>

#include <gonso/detail/ns/table.hpp>
#include <gonso/kind.hpp>

namespace gonso::detail {

/// `kind`, when it is one; std::invalid_argument otherwise.
constexpr Kind checked(Kind kind, std::string_view given_to) {
  if (!is_kind(kind)) throw_not_a_kind(static_cast<std::uint32_t>(kind), given_to);
  return kind;
}

/// `kinds`, when it holds only kinds; std::invalid_argument naming the other
/// bits otherwise. Iterating would skip those bits silently.
inline Kinds checked(Kinds kinds, std::string_view given_to) {
  if (const std::uint32_t unknown = kinds.unknown_bits(); unknown != 0) {
    throw std::invalid_argument(
        fmt::format("invalid namespace kinds {:#x} given to {}: bits {:#x}{} are no "
                    "namespace kind",
                    static_cast<std::uint32_t>(kinds.clone_flags()), given_to, unknown, clone_flag_names(unknown)));
  }
  return kinds;
}

/// The kinds whose `column` holds in the table.
[[nodiscard]] constexpr Kinds kinds_where(bool kind_row::*column) noexcept {
  Kinds kinds;
  for (const kind_row& row : kind_table) {
    if (row.*column) kinds |= static_cast<Kind>(row.flag);
  }
  return kinds;
}

/// What a thread of a multithreaded process can join (not user, not time).
inline constexpr Kinds thread_joinable_kinds = kinds_where(&kind_row::thread_joins);
/// The kinds whose state a thread carries and gonso checks after a restoring run.
inline constexpr Kinds watched_kinds = kinds_where(&kind_row::thread_carries);
/// The kinds no thread can create: a child process creates them, and
/// everything asked for with them.
inline constexpr Kinds process_only_kinds = Kinds::all() - kinds_where(&kind_row::thread_creates);
/// The kinds one setns(2) on a thread's pidfd can put back.
inline constexpr Kinds pidfd_kinds = kinds_where(&kind_row::pidfd_restores);

/// Every kind in the order a child joins them (ascending join_rank).
inline constexpr std::array<Kind, kind_count> join_order = [] {
  std::array<Kind, kind_count> order{};
  for (std::size_t i = 0; i < kind_count; ++i) order[i] = static_cast<Kind>(kind_table[join_sequence[i]].flag);
  return order;
}();

/// The kinds a worker thread joins, in join order: thread_joinable_kinds.
inline constexpr std::array<Kind, thread_joinable_kinds.size()> thread_join_order = [] {
  std::array<Kind, thread_joinable_kinds.size()> order{};
  std::size_t n = 0;
  for (Kind kind : join_order) {
    if (thread_joinable_kinds.contains(kind)) order[n++] = kind;
  }
  return order;
}();

/// The name of a kind's link in /proc/thread-self/ns that shows what the
/// thread joined (pid_for_children for pid, time_for_children for time).
[[nodiscard]] constexpr const char* thread_link(Kind kind) noexcept { return kind_table[index_of(kind)].thread_link; }

}  // namespace gonso::detail

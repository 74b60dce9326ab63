// gonso: the one table of namespace kinds. Everything the library knows about
// a kind (its flag, its file, how it is joined and by whom) is a column here;
// every order and every set of kinds elsewhere is derived from it.
// SPDX-License-Identifier: MIT
#pragma once

#include <sched.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace gonso::detail {

/// One kind of namespace, as the kernel treats it (see the README, "How
/// namespaces behave").
struct kind_row {
  std::uint32_t flag;       ///< its CLONE_NEW* bit
  const char* name;         ///< its file under /proc/PID/ns (a NUL-terminated literal)
  const char* thread_link;  ///< the link that shows what a thread joined: setns of pid and
                            ///< time changes only the namespace its children get
  int join_rank;            ///< joined in ascending rank: mnt after the others, as it needs the
                            ///< unshare(CLONE_FS) that cannot be undone (a failure before it
                            ///< leaves a thread restorable), and moves root and cwd;
                            ///< user last, as entering it sheds
                            ///< privilege in the namespaces it does not own
  bool thread_joins;        ///< a thread of a multithreaded process may setns into it
                            ///< (not user, not time: the kernel wants a single-threaded process)
  bool thread_carries;      ///< per-thread state a worker is checked for after a run (not user,
                            ///< which no thread of a multithreaded process can change)
  bool thread_creates;      ///< a thread may unshare it (not pid, time or user: a child process
                            ///< creates those, and everything asked for with them)
  bool pidfd_restores;      ///< one setns on a thread's pidfd puts it back whatever the thread did
                            ///< (not mnt, which would move root and cwd; not time or user)
};

/// In the order of the files under /proc/PID/ns, which is the order of
/// iteration and printing.
inline constexpr std::array<kind_row, 8> kind_table{{
    // flag             name      thread_link          rank joins  carries creates pidfd
    {CLONE_NEWCGROUP, "cgroup", "cgroup", 0, true, true, true, true},
    {CLONE_NEWIPC, "ipc", "ipc", 1, true, true, true, true},
    {CLONE_NEWNS, "mnt", "mnt", 5, true, true, true, false},
    {CLONE_NEWNET, "net", "net", 3, true, true, true, true},
    {CLONE_NEWPID, "pid", "pid_for_children", 4, true, true, false, true},
    {CLONE_NEWTIME, "time", "time_for_children", 6, false, true, false, false},
    {CLONE_NEWUSER, "user", "user", 7, false, false, false, false},
    {CLONE_NEWUTS, "uts", "uts", 2, true, true, true, true},
}};
inline constexpr std::size_t kind_count = kind_table.size();

/// The row of a kind (a Kind or its raw bit); kind_count for a value that is
/// not exactly one kind, which must never be used as an index.
template <typename K>
[[nodiscard]] constexpr std::size_t index_of(K kind) noexcept {
  for (std::size_t i = 0; i < kind_count; ++i) {
    if (kind_table[i].flag == static_cast<std::uint32_t>(kind)) return i;
  }
  return kind_count;
}

/// Row indices in join order (ascending join_rank).
inline constexpr std::array<std::size_t, kind_count> join_sequence = [] {
  std::array<std::size_t, kind_count> order{};
  for (std::size_t i = 0; i < kind_count; ++i) order[static_cast<std::size_t>(kind_table[i].join_rank)] = i;
  return order;
}();

/// The CLONE_NEW* bits of the rows whose `column` holds.
[[nodiscard]] constexpr std::uint32_t flags_where(bool kind_row::*column) noexcept {
  std::uint32_t flags = 0;
  for (const kind_row& row : kind_table) {
    if (row.*column) flags |= row.flag;
  }
  return flags;
}
inline constexpr std::uint32_t every_flag = [] {
  std::uint32_t flags = 0;
  for (const kind_row& row : kind_table) flags |= row.flag;
  return flags;
}();

/// Throws std::invalid_argument naming a value that is no kind and what it
/// was given to.
[[noreturn]] inline void throw_not_a_kind(std::uint32_t value, std::string_view given_to) {
  throw std::invalid_argument(
      fmt::format("invalid namespace kind {:#x} given to {}: a Kind is exactly one of "
                  "CLONE_NEW{{CGROUP,IPC,NS,NET,PID,TIME,USER,UTS}}",
                  value, given_to));
}

/// " (CLONE_VM|CLONE_FS)": the names of the clone(2) flags among `bits` that
/// are not namespace kinds, for error messages; empty when none is known.
[[nodiscard]] inline std::string clone_flag_names(std::uint64_t bits) {
  static constexpr std::pair<std::uint64_t, std::string_view> known[] = {
      {0x00000100, "CLONE_VM"},
      {0x00000200, "CLONE_FS"},
      {0x00000400, "CLONE_FILES"},
      {0x00000800, "CLONE_SIGHAND"},
      {0x00001000, "CLONE_PIDFD"},
      {0x00002000, "CLONE_PTRACE"},
      {0x00004000, "CLONE_VFORK"},
      {0x00008000, "CLONE_PARENT"},
      {0x00010000, "CLONE_THREAD"},
      {0x00040000, "CLONE_SYSVSEM"},
      {0x00080000, "CLONE_SETTLS"},
      {0x00100000, "CLONE_PARENT_SETTID"},
      {0x00200000, "CLONE_CHILD_CLEARTID"},
      {0x00800000, "CLONE_UNTRACED"},
      {0x01000000, "CLONE_CHILD_SETTID"},
      {0x80000000, "CLONE_IO"},
  };
  std::string names;
  for (const auto& [bit, flag] : known) {
    if ((bits & bit) == 0) continue;
    names += names.empty() ? " (" : "|";
    names += flag;
  }
  return names.empty() ? names : names + ")";
}

}  // namespace gonso::detail

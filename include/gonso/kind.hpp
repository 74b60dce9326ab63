// gonso: namespace kinds and sets of kinds.
// SPDX-License-Identifier: MIT
#pragma once

#include <sched.h>

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include <gonso/detail/ns/table.hpp>
#include <gonso/detail/text_formatter.hpp>

namespace gonso {

/// One kind of Linux namespace. The value is the kernel's CLONE_NEW* bit, so a
/// Kind converts losslessly to what unshare(2), setns(2) and NS_GET_NSTYPE use.
enum class Kind : std::uint32_t {
  cgroup = CLONE_NEWCGROUP,
  ipc = CLONE_NEWIPC,
  mnt = CLONE_NEWNS,
  net = CLONE_NEWNET,
  pid = CLONE_NEWPID,
  time = CLONE_NEWTIME,
  user = CLONE_NEWUSER,
  uts = CLONE_NEWUTS,
};

/// Every kind, in the order of their names under /proc/PID/ns. This order is
/// used for iteration and printing; joining uses its own order.
inline constexpr std::array<Kind, detail::kind_count> all_kinds = [] {
  std::array<Kind, detail::kind_count> kinds{};
  for (std::size_t i = 0; i < detail::kind_count; ++i) kinds[i] = static_cast<Kind>(detail::kind_table[i].flag);
  return kinds;
}();

/// True when `kind` is one of the eight kinds, that is exactly one known
/// CLONE_NEW* bit. Every Kind that gonso takes is checked with it, since a
/// static_cast can make a Kind of any value.
[[nodiscard]] constexpr bool is_kind(Kind kind) noexcept { return detail::index_of(kind) < detail::kind_count; }

/// The name of a kind's file under /proc/PID/ns ("net", "mnt", ...). Throws
/// std::invalid_argument for a value that is not a kind (see is_kind).
[[nodiscard]] constexpr std::string_view name(Kind kind) {
  const std::size_t row = detail::index_of(kind);
  if (row == detail::kind_count) detail::throw_not_a_kind(static_cast<std::uint32_t>(kind), "gonso::name");
  return detail::kind_table[row].name;
}

/// The raw CLONE_NEW* bit of a kind.
[[nodiscard]] constexpr int clone_flag(Kind kind) noexcept { return static_cast<int>(kind); }

/// The kind whose /proc/PID/ns name is `text`, or nullopt.
[[nodiscard]] constexpr std::optional<Kind> kind_from_name(std::string_view text) noexcept {
  for (Kind kind : all_kinds) {
    if (name(kind) == text) return kind;
  }
  return std::nullopt;
}

/// A set of namespace kinds: a typed mask of CLONE_NEW* bits. Iterates in the
/// order of all_kinds.
class Kinds {
 public:
  constexpr Kinds() noexcept = default;
  /// A set holding one kind; implicit so that Kind::net | Kind::uts reads well.
  constexpr Kinds(Kind kind) noexcept : bits_(static_cast<std::uint32_t>(kind)) {}  // NOLINT

  /// Every kind the library knows.
  [[nodiscard]] static constexpr Kinds all() noexcept {
    Kinds kinds;
    kinds.bits_ = detail::every_flag;
    return kinds;
  }

  /// Converts raw CLONE_NEW* flags, e.g. CLONE_NEWNET | CLONE_NEWUTS.
  /// Throws std::invalid_argument naming any bit that is not a namespace kind
  /// (CLONE_VM, CLONE_FS, ...): silently dropping it would hide a caller's bug.
  [[nodiscard]] static Kinds from_clone_flags(std::uint64_t flags) {
    const std::uint64_t unknown = flags & ~static_cast<std::uint64_t>(all().bits_);
    if (unknown != 0) {
      throw std::invalid_argument(
          fmt::format("unknown namespace flag bits {:#010x}{} in {:#010x}: only CLONE_NEW{{CGROUP,"
                      "IPC,NS,NET,PID,TIME,USER,UTS}} name namespaces",
                      unknown, detail::clone_flag_names(unknown), flags));
    }
    Kinds kinds;
    kinds.bits_ = static_cast<std::uint32_t>(flags);
    return kinds;
  }

  /// The raw CLONE_NEW* mask, for unshare(2), clone(2) and setns(2).
  [[nodiscard]] constexpr int clone_flags() const noexcept { return static_cast<int>(bits_); }

  [[nodiscard]] constexpr bool empty() const noexcept { return bits_ == 0; }
  [[nodiscard]] constexpr std::size_t size() const noexcept { return static_cast<std::size_t>(std::popcount(bits_)); }
  /// False for a value that is not a kind (is_kind), whatever bits it has.
  [[nodiscard]] constexpr bool contains(Kind kind) const noexcept {
    return is_kind(kind) && (bits_ & static_cast<std::uint32_t>(kind)) != 0;
  }
  /// The bits of this set that are no kind: 0 unless it was built from a
  /// Kind made by a cast (Kinds(static_cast<Kind>(...))).
  [[nodiscard]] constexpr std::uint32_t unknown_bits() const noexcept { return bits_ & ~all().bits_; }
  /// True when every kind of `other` is in this set.
  [[nodiscard]] constexpr bool contains(Kinds other) const noexcept { return (bits_ & other.bits_) == other.bits_; }

  constexpr Kinds& operator|=(Kinds other) noexcept {
    bits_ |= other.bits_;
    return *this;
  }
  constexpr Kinds& operator&=(Kinds other) noexcept {
    bits_ &= other.bits_;
    return *this;
  }
  constexpr Kinds& operator-=(Kinds other) noexcept {
    bits_ &= ~other.bits_;
    return *this;
  }
  [[nodiscard]] friend constexpr Kinds operator|(Kinds a, Kinds b) noexcept { return a |= b; }
  [[nodiscard]] friend constexpr Kinds operator&(Kinds a, Kinds b) noexcept { return a &= b; }
  /// The kinds of `a` that are not in `b`.
  [[nodiscard]] friend constexpr Kinds operator-(Kinds a, Kinds b) noexcept { return a -= b; }
  [[nodiscard]] friend constexpr bool operator==(Kinds a, Kinds b) noexcept = default;

  /// Forward iterator over the kinds held, in all_kinds order.
  class iterator {
   public:
    using value_type = Kind;
    using difference_type = std::ptrdiff_t;
    using iterator_category = std::forward_iterator_tag;

    constexpr iterator() noexcept = default;
    constexpr Kind operator*() const noexcept { return all_kinds[pos_]; }
    constexpr iterator& operator++() noexcept {
      ++pos_;
      skip();
      return *this;
    }
    constexpr iterator operator++(int) noexcept {
      iterator old = *this;
      ++*this;
      return old;
    }
    friend constexpr bool operator==(iterator a, iterator b) noexcept { return a.pos_ == b.pos_; }

   private:
    friend class Kinds;
    constexpr iterator(std::uint32_t bits, std::size_t pos) noexcept : bits_(bits), pos_(pos) { skip(); }
    constexpr void skip() noexcept {
      while (pos_ < all_kinds.size() && (bits_ & static_cast<std::uint32_t>(all_kinds[pos_])) == 0) ++pos_;
    }
    std::uint32_t bits_ = 0;
    std::size_t pos_ = all_kinds.size();
  };

  [[nodiscard]] constexpr iterator begin() const noexcept { return {bits_, 0}; }
  [[nodiscard]] constexpr iterator end() const noexcept { return {bits_, all_kinds.size()}; }

 private:
  std::uint32_t bits_ = 0;
};

[[nodiscard]] constexpr Kinds operator|(Kind a, Kind b) noexcept { return Kinds(a) | Kinds(b); }

/// Every kind but user: what a thread can hold and what Set::current() reads
/// by default (a thread cannot join a user namespace: see the README, "How
/// namespaces behave").
inline constexpr Kinds default_kinds = Kinds::all() - Kind::user;

}  // namespace gonso

/// Prints the kind's name; a value that is no kind prints as "Kind(0x...)",
/// so that an error message about it can still be written. Takes the
/// options of a string ("{:>5}").
template <>
struct fmt::formatter<gonso::Kind> : gonso::detail::text_formatter {
  auto format(gonso::Kind kind, format_context& ctx) const {
    if (!gonso::is_kind(kind)) return write(fmt::format("Kind({:#x})", static_cast<std::uint32_t>(kind)), ctx);
    return write(gonso::name(kind), ctx);
  }
};

/// Prints "{mnt, net}"; "{}" when empty.
template <>
struct fmt::formatter<gonso::Kinds> : gonso::detail::text_formatter {
  auto format(gonso::Kinds kinds, format_context& ctx) const {
    std::string text = "{";
    for (gonso::Kind kind : kinds) {
      if (text.size() > 1) text += ", ";
      text += gonso::name(kind);
    }
    text += '}';
    return write(text, ctx);
  }
};

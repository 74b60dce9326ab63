// gonso: the one door through which the engines reach a Set's storage.
// SPDX-License-Identifier: MIT
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/kind.hpp>

namespace gonso::detail {

/// A Pool's mark on a Set one get() handed out: the pool, and whether the
/// Set is still out (put() takes it back at most once).
struct pool_lease {
  explicit pool_lease(std::uint64_t by) noexcept : pool(by) {}
  const std::uint64_t pool;
  std::atomic<bool> out{true};
};

/// Set befriends this alone: the engines (worker threads, child processes,
/// Executor, Pool) take a Set's handles from here instead of each being a
/// friend, or rebuilding them from the public view. Templates, so that this
/// header needs no Set.
struct set_access {
  template <typename S>
  [[nodiscard]] static const ns_handles& handles(const S& set) noexcept {
    return set.ns_;
  }
  /// The pidfd the Set came from (from_pidfd), -1 for none: a hint for
  /// joining, never trusted for identity.
  template <typename S>
  [[nodiscard]] static int pidfd(const S& set) noexcept {
    return set.pidfd_ ? set.pidfd_->get() : -1;
  }
  template <typename S>
  static void put(S& set, Kind kind, ns_handle&& ns) noexcept {
    set.put(kind, std::move(ns));
  }
  /// A Set holding what was opened.
  template <typename S>
  [[nodiscard]] static S adopt(opened_ns&& opened) noexcept {
    return S(std::move(opened));
  }
  template <typename S>
  [[nodiscard]] static std::shared_ptr<pool_lease>& lease(S& set) noexcept {
    return set.lease_;
  }
};

}  // namespace gonso::detail

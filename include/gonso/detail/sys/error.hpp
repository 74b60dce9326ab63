// gonso: building the exceptions the library throws.
// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <system_error>
#include <utility>

#include <fmt/core.h>

// On a function that catches abi::__forced_unwind (pthread_exit, pthread_cancel)
// by reference, as the C++ ABI has it be caught. That exception has no object,
// and UBSan's null-reference check would take the binding for a bug.
#define GONSO_CATCHES_FORCED_UNWIND __attribute__((no_sanitize("null")))  // NOLINT(cppcoreguidelines-macro-usage)

namespace gonso::detail {

/// A std::system_error in the generic category whose what() reads
/// "<message>: <strerror(err)>", e.g. "cannot join net namespace net:[4026532008]:
/// Operation not permitted". Generic category so that callers can compare
/// e.code() with std::errc values.
template <typename... Args>
[[nodiscard]] std::system_error system_error(int err, fmt::format_string<Args...> format, Args&&... args) {
  return std::system_error(err, std::generic_category(), fmt::format(format, std::forward<Args>(args)...));
}

/// The largest errno a kernel returns (its MAX_ERRNO); errnos from children
/// outside 1 to this are refused.
inline constexpr int max_errno = 4095;
[[nodiscard]] constexpr bool valid_errno(std::int64_t err) noexcept { return err >= 1 && err <= max_errno; }

}  // namespace gonso::detail

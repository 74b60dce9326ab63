// gonso: owning file descriptor.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace gonso::detail {

/// Owns one file descriptor and closes it once. Move-only; adoption is
/// explicit through the constructor, giving up ownership through release().
class unique_fd {
 public:
  constexpr unique_fd() noexcept = default;
  constexpr explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& other) noexcept : fd_(other.release()) {}
  /// Closes the fd held so far at once, then takes the other's.
  unique_fd& operator=(unique_fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { reset(); }

  [[nodiscard]] constexpr int get() const noexcept { return fd_; }
  [[nodiscard]] constexpr bool valid() const noexcept { return fd_ >= 0; }
  explicit constexpr operator bool() const noexcept { return valid(); }

  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }

  void reset(int fd = -1) noexcept {
    const int old = std::exchange(fd_, fd);
    // close() may report EINTR after the fd is already gone on Linux: never retry.
    if (old >= 0) ::close(old);
  }

  /// A close-on-exec duplicate (F_DUPFD_CLOEXEC, never dup(), which drops it).
  /// Returns an invalid fd and leaves errno set on failure.
  [[nodiscard]] unique_fd duplicate() const noexcept {
    return unique_fd(fd_ < 0 ? -1 : ::fcntl(fd_, F_DUPFD_CLOEXEC, 0));
  }

 private:
  int fd_ = -1;
};

}  // namespace gonso::detail

// gonso: an owned file descriptor, the type gonso hands out and takes back.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace gonso {

/// Owns one file descriptor and closes it once. Move-only: copying an fd's
/// number copies no ownership. Adopting is explicit (the constructor),
/// giving up ownership too (release()).
///
/// Every fd gonso makes is close-on-exec (O_CLOEXEC, SOCK_CLOEXEC,
/// F_DUPFD_CLOEXEC): a program another thread starts meanwhile never
/// inherits it. An Fd adopting a caller's fd keeps whatever flags it has.
///
/// An fd is a number only in the process that holds it. A callable of
/// Set::run_in_process runs in a child process, so an `int` it returns is a
/// dead number in the caller (or another file's); an Fd it returns is sent
/// over a Unix socket (SCM_RIGHTS) and arrives as a new fd of the caller.
/// gonso refuses, at compile time, results that hold an Fd it cannot send
/// (a struct with an Fd member is not trivially copyable); it cannot tell an
/// `int` that means an fd from any other int.
class Fd {
 public:
  constexpr Fd() noexcept = default;
  /// Adopts `fd` (-1: none).
  constexpr explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  /// Closes the fd held so far at once, then takes the other's.
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  /// The number, still owned: never close it.
  [[nodiscard]] constexpr int get() const noexcept { return fd_; }
  [[nodiscard]] constexpr bool valid() const noexcept { return fd_ >= 0; }
  explicit constexpr operator bool() const noexcept { return valid(); }

  /// Gives up ownership: the caller closes what this returns.
  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }

  /// Closes the fd held (if any) and adopts `fd`.
  void reset(int fd = -1) noexcept {
    const int old = std::exchange(fd_, fd);
    // close() may report EINTR after the fd is already gone on Linux: never retry.
    if (old >= 0) ::close(old);
  }

  /// A close-on-exec duplicate (F_DUPFD_CLOEXEC, never dup(), which drops
  /// the flag). Returns an invalid Fd and leaves errno set on failure.
  [[nodiscard]] Fd duplicate() const noexcept { return Fd(fd_ < 0 ? -1 : ::fcntl(fd_, F_DUPFD_CLOEXEC, 0)); }

 private:
  int fd_ = -1;
};

}  // namespace gonso

// gonso: a directory held open, to be entered by a spawned program as its
// root, working directory or cgroup, whatever path names it later.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>

#include <fmt/core.h>

#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/io.hpp>
#include <gonso/detail/sys/unique_fd.hpp>

namespace gonso {
/// An O_PATH, close-on-exec descriptor of a directory. Held open, it keeps
/// naming the directory it was opened on when paths are renamed, swapped
/// for symlinks or unmounted meanwhile, and it reaches a directory of
/// another mount namespace or root (a process's `/proc/PID/root`) that no
/// path of the caller's names. Copies share the descriptor, which never
/// changes (as Set's do); an empty Dir (default-constructed or moved-from)
/// holds none.
class Dir {
 public:
  Dir() = default;

  /// Opens `path`, following symlinks as open(2) does. Throws
  /// std::system_error (ENOENT, ENOTDIR, EACCES, ...) naming the path.
  [[nodiscard]] static Dir open(const std::filesystem::path& path) {
    detail::unique_fd fd(::open(path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!fd) throw detail::system_error(errno, "cannot open directory {}", path.native());
    return Dir(std::move(fd));
  }

  /// A duplicate of `fd`, which must be a directory (opened with O_PATH or
  /// not). Throws std::system_error: EBADF for a closed fd, ENOTDIR.
  [[nodiscard]] static Dir from_fd(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw detail::system_error(errno, "cannot use fd {} as a directory", fd);
    if (!S_ISDIR(st.st_mode)) throw detail::system_error(ENOTDIR, "cannot use fd {} as a directory", fd);
    detail::unique_fd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!copy) throw detail::system_error(errno, "cannot duplicate directory fd {}", fd);
    return Dir(std::move(copy));
  }

  /// Adopts `fd`, which the caller has checked to be a directory.
  [[nodiscard]] static Dir adopt(detail::unique_fd fd) { return Dir(std::move(fd)); }

  /// The descriptor, valid while this Dir or a copy lives; -1 when empty.
  [[nodiscard]] int fd() const noexcept { return fd_ ? fd_->get() : -1; }
  [[nodiscard]] bool empty() const noexcept { return fd_ == nullptr; }
  explicit operator bool() const noexcept { return fd_ != nullptr; }

  /// Where the directory is now, as the kernel names it for the caller
  /// (`/proc/self/fd/N`'s link): for display, never to be opened again.
  [[nodiscard]] std::string path() const { return fd_ ? detail::fd_target(fd_->get()) : std::string(); }

 private:
  explicit Dir(detail::unique_fd fd) : fd_(std::make_shared<const detail::unique_fd>(std::move(fd))) {}

  std::shared_ptr<const detail::unique_fd> fd_;
};

}  // namespace gonso

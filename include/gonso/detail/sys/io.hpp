// gonso: pipes, and reading and writing fds whole through EINTR.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <string>

#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/unique_fd.hpp>

namespace gonso::detail {

/// write(2) until everything is written; false on error (errno set).
inline bool write_all(int fd, const void* data, std::size_t size) noexcept {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::syscall(SYS_write, fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

/// Reads until end of file. Throws std::system_error on a read error.
inline std::string read_to_end(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(errno, "cannot read from a gonso child process");
    if (n == 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

/// The pid (in the caller's pid namespace) of the process a pidfd refers
/// to, read from /proc/self/fdinfo. Throws std::system_error: EBADF for a
/// closed fd, EINVAL when it is no pidfd, ESRCH when the process has ended.
[[nodiscard]] inline pid_t pid_of_pidfd(int pidfd) {
  const std::string path = "/proc/self/fdinfo/" + std::to_string(pidfd);
  unique_fd info(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!info) throw system_error(errno == ENOENT ? EBADF : errno, "cannot inspect pidfd {}", pidfd);
  const std::string text = read_to_end(info.get());
  const std::size_t at = text.find("\nPid:\t");
  if (at == std::string::npos) throw system_error(EINVAL, "cannot use fd {} as a pidfd: it is not one", pidfd);
  const long pid = std::strtol(text.c_str() + at + 6, nullptr, 10);
  if (pid <= 0) throw system_error(ESRCH, "cannot open namespaces of pidfd {}: its process has ended", pidfd);
  return static_cast<pid_t>(pid);
}

/// A close-on-exec pipe: [0] reads, [1] writes.
struct pipe_fds {
  unique_fd read;
  unique_fd write;
};
[[nodiscard]] inline pipe_fds make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw system_error(errno, "cannot create a pipe");
  return {unique_fd(fds[0]), unique_fd(fds[1])};
}

}  // namespace gonso::detail

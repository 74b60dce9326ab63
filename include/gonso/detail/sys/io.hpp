// gonso: pipes, and reading and writing fds whole through EINTR.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <string_view>
#include <system_error>

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

/// Where an fd's file is now, as the kernel names it for the caller
/// (`/proc/self/fd/N`'s link): for messages, never to be opened again.
[[nodiscard]] inline std::string fd_target(int fd) {
  std::string link = fmt::format("/proc/self/fd/{}", fd);
  char buf[PATH_MAX];
  const ssize_t n = ::readlink(link.c_str(), buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : link;
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

/// SIGPIPE blocked on the calling thread for a scope; one raised meanwhile by
/// a write to a pipe whose reader is gone (EPIPE) is discarded, unless one was
/// pending already, and the old mask comes back.
class sigpipe_blocked {
 public:
  sigpipe_blocked() noexcept {
    (void)::sigemptyset(&pipe_only_);
    (void)::sigaddset(&pipe_only_, SIGPIPE);
    sigset_t pending;
    (void)::sigpending(&pending);
    was_pending_ = ::sigismember(&pending, SIGPIPE) == 1;
    (void)::pthread_sigmask(SIG_BLOCK, &pipe_only_, &old_);
  }
  sigpipe_blocked(const sigpipe_blocked&) = delete;
  sigpipe_blocked& operator=(const sigpipe_blocked&) = delete;
  ~sigpipe_blocked() {
    if (raised_ && !was_pending_) {
      const timespec now{0, 0};
      while (::sigtimedwait(&pipe_only_, nullptr, &now) < 0 && errno == EINTR) {
      }
    }
    (void)::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  /// A write failed with EPIPE: a SIGPIPE is pending on this thread now.
  void raised() noexcept { raised_ = true; }

 private:
  sigset_t pipe_only_{};
  sigset_t old_{};
  bool was_pending_ = false;
  bool raised_ = false;
};

/// Writes `input` to `in` (then closes it) and reads `out` and `err` to their
/// end into `out_text` and `err_text`, all at once through poll(2); fds that
/// are not open are skipped. A reader gone from `in` drops the rest of the
/// input. Writes go in chunks of PIPE_BUF, which a pipe poll(2) finds
/// writable always takes without blocking. Throws std::system_error.
inline void exchange(unique_fd& in, std::string_view input, unique_fd& out, std::string& out_text, unique_fd& err,
                     std::string& err_text) {
  sigpipe_blocked no_sigpipe;
  if (in && input.empty()) in.reset();
  std::array<char, 65536> buf{};
  for (;;) {
    std::array<pollfd, 3> fds{};
    nfds_t count = 0;
    if (in) fds[count++] = {in.get(), POLLOUT, 0};
    if (out) fds[count++] = {out.get(), POLLIN, 0};
    if (err) fds[count++] = {err.get(), POLLIN, 0};
    if (count == 0) return;
    if (::poll(fds.data(), count, -1) < 0) {
      if (errno == EINTR) continue;
      throw system_error(errno, "cannot poll the pipes of a gonso child process");
    }
    for (nfds_t i = 0; i < count; ++i) {
      if (fds[i].revents == 0) continue;
      if (in && fds[i].fd == in.get()) {
        const ssize_t n = ::write(in.get(), input.data(), std::min<std::size_t>(input.size(), PIPE_BUF));
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0 && errno != EPIPE) throw system_error(errno, "cannot write to a gonso child process");
        if (n < 0) no_sigpipe.raised();
        input.remove_prefix(n < 0 ? input.size() : static_cast<std::size_t>(n));
        if (input.empty()) in.reset();
        continue;
      }
      unique_fd& from = out && fds[i].fd == out.get() ? out : err;
      std::string& into = &from == &out ? out_text : err_text;
      const ssize_t n = ::read(from.get(), buf.data(), buf.size());
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n < 0) throw system_error(errno, "cannot read from a gonso child process");
      if (n == 0) {
        from.reset();  // end of file: every writer has closed it
        continue;
      }
      into.append(buf.data(), static_cast<std::size_t>(n));
    }
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

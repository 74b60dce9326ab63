// gonso: how a child process running a callable reports its outcome to the
// parent over a pipe, and how the parent turns that into a value or an error.
// SPDX-License-Identifier: MIT
#pragma once

#include <cxxabi.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <system_error>
#include <type_traits>

#include <gonso/detail/child_process.hpp>
#include <gonso/detail/error.hpp>
#include <gonso/detail/unique_fd.hpp>
#include <gonso/process.hpp>

namespace gonso::detail {

/// Results a child process can hand back: bytes, not objects.
template <typename R>
inline constexpr bool reportable = std::is_void_v<R> || std::is_same_v<R, std::string> ||
                                   (std::is_trivially_copyable_v<R> && !std::is_pointer_v<R>);

// One message per run: a tag byte, then the tag's payload.
enum report_tag : char {
  tag_value = 'V',      // the value's bytes (void: none)
  tag_exception = 'E',  // u32 length of the type name, the name, then what()
  tag_join = 'J',       // i32 errno, then the message
};

/// Where a child reports: a pipe for the report, whose ends are both
/// non-blocking, and an eventfd, its bell. The parent leaves the report in
/// the pipe until the child has ended: a pipe write wakes the reader, and
/// every wake-up costs tens of microseconds on an idle CPU, so the parent
/// sleeps on the child's pidfd and the bell alone, and wakes once, when the
/// child has ended (reapable at once). Only a report too large for the pipe
/// rings the bell, and the parent then reads it as it comes. An eventfd, not
/// a pipe, because a pipe would wake the parent at its end of file, just
/// before the child is reapable. All close-on-exec.
struct report_channel {
  pipe_fds data;
  unique_fd bell;
};
[[nodiscard]] inline report_channel make_report_channel() {
  report_channel channel;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) throw system_error(errno, "cannot create a pipe");
  channel.data = {unique_fd(fds[0]), unique_fd(fds[1])};
  channel.bell.reset(::eventfd(0, EFD_CLOEXEC));
  if (!channel.bell) throw system_error(errno, "cannot create an eventfd");
  return channel;
}

/// The child's end of a report_channel: writes the report without ever
/// blocking on a parent that is not reading yet.
class report_sink {
 public:
  report_sink(int data, int bell) noexcept : data_(data), bell_(bell) {}

  /// Writes everything; false on error (errno set).
  bool write(const void* bytes, std::size_t size) noexcept {
    const auto* p = static_cast<const char*>(bytes);
    while (size > 0) {
      const ssize_t n = ::syscall(SYS_write, data_, p, size);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) {
        if (!streaming_) {
          // Full: have the parent read from now on, then wait for room.
          const std::uint64_t ring = 1;
          if (!write_all(bell_, &ring, sizeof ring)) return false;
          streaming_ = true;
        }
        pollfd room{data_, POLLOUT, 0};
        if (::syscall(SYS_ppoll, &room, 1, nullptr, nullptr, 0) < 0 && errno != EINTR) return false;
        continue;
      }
      if (n <= 0) return false;
      p += n;
      size -= static_cast<std::size_t>(n);
    }
    return true;
  }

  /// Closes both (a middle process that only relays an exit).
  void close() noexcept {
    ::syscall(SYS_close, data_);
    ::syscall(SYS_close, bell_);
  }

 private:
  int data_;
  int bell_;
  bool streaming_ = false;
};

/// The parent's side of a report_channel: sleeps until the child behind
/// `pidfd` has ended or rang the bell, and returns what the data pipe holds,
/// read as it comes once the bell rang. Returns once the child has ended: a
/// process it forked and left running (holding the pipe) does not hold the
/// caller up. A `pidfd` of -1 says the child has ended already. Throws
/// std::system_error on a poll or read error.
[[nodiscard]] inline std::string read_report(int data, int bell, int pidfd) {
  std::string out;
  bool streaming = false;  // the bell rang: read the data pipe as it fills
  bool data_open = true;   // no end of file on it yet
  for (bool ended = pidfd < 0;;) {
    // Until the bell rings the data pipe is not watched: its writes must not
    // wake us. The eventfd stays readable once rung; it is not watched after.
    if (!ended) {
      pollfd wait[2] = {{pidfd, POLLIN, 0}, {streaming ? data : bell, POLLIN, 0}};
      const nfds_t count = streaming && !data_open ? 1 : 2;
      if (::poll(wait, count, -1) < 0) {
        if (errno == EINTR) continue;
        throw system_error(errno, "cannot wait for a gonso child process");
      }
      ended = (wait[0].revents & (POLLIN | POLLHUP)) != 0;
      if (!streaming && (wait[1].revents & POLLIN) != 0) streaming = true;
      if (!ended && !streaming) continue;
    }
    // Take what is there. Once the child has ended all it wrote is there;
    // a copy of the write end that anyone else still holds (another
    // thread's fork took it along) must not hold us up: EAGAIN is the end.
    char buf[4096];
    while (data_open) {
      const ssize_t n = ::read(data, buf, sizeof buf);
      if (n > 0) {
        out.append(buf, static_cast<std::size_t>(n));
      } else if (n == 0) {
        data_open = false;
      } else if (errno == EAGAIN) {
        break;
      } else if (errno != EINTR) {
        throw system_error(errno, "cannot read from a gonso child process");
      }
    }
    if (ended) return out;
  }
}

inline void report_join_error(report_sink& sink, int err, const std::string& message) noexcept {
  const char tag = tag_join;
  const auto code = static_cast<std::int32_t>(err);
  (void)(sink.write(&tag, 1) && sink.write(&code, sizeof code) && sink.write(message.data(), message.size()));
}

/// The demangled name of the exception being handled, e.g. "std::runtime_error".
inline std::string current_exception_type() {
  const std::type_info* type = abi::__cxa_current_exception_type();
  if (type == nullptr) return "unknown";
  int status = 0;
  char* demangled = abi::__cxa_demangle(type->name(), nullptr, nullptr, &status);
  std::string name = status == 0 && demangled != nullptr ? demangled : type->name();
  std::free(demangled);  // NOLINT(cppcoreguidelines-no-malloc): __cxa_demangle's contract
  return name;
}

/// Runs `fn` in the child and writes its outcome to `sink`.
template <typename R, typename F>
void run_and_report(F&& fn, report_sink& sink) noexcept {
  try {
    const char tag = tag_value;
    if constexpr (std::is_void_v<R>) {
      std::forward<F>(fn)();
      (void)sink.write(&tag, 1);
    } else if constexpr (std::is_same_v<R, std::string>) {
      const std::string value = std::forward<F>(fn)();
      (void)(sink.write(&tag, 1) && sink.write(value.data(), value.size()));
    } else {
      const R value = std::forward<F>(fn)();
      char message[1 + sizeof(R)];
      message[0] = tag;
      std::memcpy(message + 1, &value, sizeof(R));
      (void)sink.write(message, sizeof message);
    }
  } catch (...) {
    std::string type;
    std::string text;
    try {
      type = current_exception_type();
      std::rethrow_exception(std::current_exception());
    } catch (const std::exception& e) {
      text = e.what();
    } catch (...) {
    }
    const char tag = tag_exception;
    const auto length = static_cast<std::uint32_t>(type.size());
    (void)(sink.write(&tag, 1) && sink.write(&length, sizeof length) && sink.write(type.data(), type.size()) &&
           sink.write(text.data(), text.size()));
  }
}

/// Turns what a child wrote, and how it ended, into the callable's value or
/// the matching exception.
template <typename R>
R decode_report(const std::string& report, int status) {
  if (!report.empty()) {
    const char* body = report.data() + 1;
    const std::size_t size = report.size() - 1;
    switch (report[0]) {
      case tag_value:
        if constexpr (std::is_void_v<R>) {
          return;
        } else if constexpr (std::is_same_v<R, std::string>) {
          return std::string(body, size);
        } else {
          if (size == sizeof(R)) {
            R value;
            std::memcpy(&value, body, sizeof(R));
            return value;
          }
        }
        break;
      case tag_exception: {
        std::uint32_t length = 0;
        if (size < sizeof length) break;
        std::memcpy(&length, body, sizeof length);
        if (size - sizeof length < length) break;
        const char* type = body + sizeof length;
        throw ProcessError::thrown(std::string(type, length),
                                   std::string(type + length, size - sizeof length - length));
      }
      case tag_join: {
        std::int32_t err = 0;
        if (size < sizeof err) break;
        std::memcpy(&err, body, sizeof err);
        throw std::system_error(err, std::generic_category(), std::string(body + sizeof err, size - sizeof err));
      }
      default:
        break;
    }
  }
  if (status == -1) throw system_error(ECHILD, "cannot learn how the child process ended (is SIGCHLD ignored?)");
  if (WIFSIGNALED(status)) throw ProcessError::killed(WTERMSIG(status));
  throw ProcessError::exited(WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

}  // namespace gonso::detail

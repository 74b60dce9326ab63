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

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include <gonso/detail/process/child_code.hpp>
#include <gonso/detail/process/result_wire.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/io.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/error.hpp>

namespace gonso::detail {

/// Results a child process can hand back: bytes, fds (sent as fds, see
/// result_wire.hpp), and pairs or tuples of them; never objects that own
/// anything else.
template <typename R>
inline constexpr bool reportable =
    std::is_void_v<R> || std::is_same_v<R, std::string> || byte_value<R> || encoded_result<R>;

// One message per run: a tag byte, the length of the body (u32, native
// order), then the body. The length makes a cut-short report (a child killed
// while writing) tell itself apart from a whole one.
enum report_tag : char {
  tag_value = 'V',      // the value's bytes (void: none)
  tag_exception = 'E',  // u32 length of the type name, the name, then what()
  tag_join = 'J',       // i32 errno, then the message
};
inline constexpr std::size_t report_header = 1 + sizeof(std::uint32_t);

/// The largest body a report may have. The callable runs in the child that
/// writes the report, so its bytes are untrusted: the parent never reads or
/// allocates more than this, whatever a child sends.
inline constexpr std::size_t max_report_body = std::size_t{64} << 20;  // 64 MiB

/// A report that cannot be what a gonso child writes: EPROTO, naming why.
[[noreturn]] inline void malformed_report(const char* why) {
  throw system_error(EPROTO, "malformed report from a gonso child process: {}", why);
}

/// A report, parsed but not yet turned into a value or an exception; its
/// views point into the bytes parsed.
struct parsed_report {
  enum class kind { none, value, exception, join };
  kind what = kind::none;  // none: the child wrote nothing
  std::string_view body;   // the value's bytes
  std::string_view type;   // the exception's type name
  std::string_view text;   // what(), or the join error's message
  int err = 0;             // the join error's errno, 1 to max_errno
};

/// Parses the bytes a child wrote. Pure and bounded: reads only `bytes`,
/// allocates nothing, and throws std::system_error(EPROTO) for anything that
/// is not one whole well-formed report (unknown tag, cut short, trailing
/// bytes, a body over max_report_body, a name longer than its message, an
/// errno out of range).
[[nodiscard]] inline parsed_report parse_report(std::span<const char> bytes) {
  parsed_report out;
  if (bytes.empty()) return out;
  if (bytes.size() < report_header) malformed_report("cut short in its header");
  std::uint32_t length = 0;
  std::memcpy(&length, bytes.data() + 1, sizeof length);
  if (length > max_report_body) malformed_report("its body is longer than the limit");
  if (bytes.size() - report_header < length) malformed_report("cut short in its body");
  if (bytes.size() - report_header > length) malformed_report("trailing bytes after its body");
  const std::string_view body(bytes.data() + report_header, length);
  switch (bytes[0]) {
    case tag_value:
      out.what = parsed_report::kind::value;
      out.body = body;
      return out;
    case tag_exception: {
      std::uint32_t name = 0;
      if (body.size() < sizeof name) malformed_report("an exception without its type's length");
      std::memcpy(&name, body.data(), sizeof name);
      if (body.size() - sizeof name < name) malformed_report("an exception type longer than the message");
      out.what = parsed_report::kind::exception;
      out.type = body.substr(sizeof name, name);
      out.text = body.substr(sizeof name + name);
      return out;
    }
    case tag_join: {
      std::int32_t err = 0;
      if (body.size() < sizeof err) malformed_report("a join error without its errno");
      std::memcpy(&err, body.data(), sizeof err);
      if (!valid_errno(err)) malformed_report("a join error with an errno out of range");
      out.what = parsed_report::kind::join;
      out.err = err;
      out.text = body.substr(sizeof err);
      return out;
    }
    default:
      malformed_report("an unknown tag");
  }
}

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
  /// `fds`: the socket a result's fds are sent on, -1 when R has none.
  report_sink(int data, int bell, int fds = -1) noexcept : data_(data), bell_(bell), fds_(fds) {}

  [[nodiscard]] int fd_socket() const noexcept { return fds_; }

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
  int fds_;
  bool streaming_ = false;
};

/// The parent's side of a report_channel: sleeps until the child behind
/// `pidfd` has ended or rang the bell, and returns what the data pipe holds,
/// read as it comes once the bell rang, never more than one report of
/// max_report_body (EMSGSIZE beyond it). Returns once the child has ended: a
/// process it forked and left running (holding the pipe) does not hold the
/// caller up. A `pidfd` of -1 says the child has ended already. Throws
/// std::system_error on a poll or read error.
/// With a `timeout_at`, returns nullopt once it has passed and the child is
/// still running.
[[nodiscard]] inline std::optional<std::string> read_report(
    int data, int bell, int pidfd, std::optional<std::chrono::steady_clock::time_point> timeout_at = std::nullopt) {
  std::string out;
  bool streaming = false;  // the bell rang: read the data pipe as it fills
  bool data_open = true;   // no end of file on it yet
  for (bool ended = pidfd < 0;;) {
    // Until the bell rings the data pipe is not watched: its writes must not
    // wake us. The eventfd stays readable once rung; it is not watched after.
    if (!ended) {
      pollfd wait[2] = {{pidfd, POLLIN, 0}, {streaming ? data : bell, POLLIN, 0}};
      const nfds_t count = streaming && !data_open ? 1 : 2;
      int wait_ms = -1;
      if (timeout_at) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(*timeout_at - std::chrono::steady_clock::now());
        if (left.count() <= 0) return std::nullopt;
        wait_ms = static_cast<int>(std::min<std::chrono::milliseconds::rep>(left.count(), INT_MAX));
      }
      const int ready = ::poll(wait, count, wait_ms);
      if (ready < 0) {
        if (errno == EINTR) continue;
        throw system_error(errno, "cannot wait for a gonso child process");
      }
      if (ready == 0) continue;  // the deadline is checked above
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
        if (out.size() + static_cast<std::size_t>(n) > report_header + max_report_body) {
          throw system_error(EMSGSIZE, "the report of a gonso child process exceeds the limit of {} bytes",
                             max_report_body);
        }
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

/// Writes one report: the header, then the body's parts. Value-initialised
/// header: no byte of it is left undefined.
inline bool write_report(report_sink& sink, char tag, std::initializer_list<std::string_view> parts) noexcept {
  std::size_t length = 0;
  for (const std::string_view part : parts) length += part.size();
  char header[report_header] = {};
  header[0] = tag;
  const auto size = static_cast<std::uint32_t>(length);
  std::memcpy(header + 1, &size, sizeof size);
  if (!sink.write(header, sizeof header)) return false;
  for (const std::string_view part : parts) {
    if (!sink.write(part.data(), part.size())) return false;
  }
  return true;
}

inline void report_join_error(report_sink& sink, int err, const std::string& message) noexcept {
  const auto code = static_cast<std::int32_t>(err);
  (void)write_report(
      sink, tag_join,
      {std::string_view(reinterpret_cast<const char*>(&code), sizeof code), std::string_view(message).substr(0, 4096)});
}

inline void report_exception(report_sink& sink, std::string_view type, std::string_view text) noexcept {
  // Cut to fit: a what() text may be anything, the report may not.
  type = type.substr(0, 4096);
  text = text.substr(0, max_report_body - sizeof(std::uint32_t) - type.size());
  const auto length = static_cast<std::uint32_t>(type.size());
  (void)write_report(sink, tag_exception,
                     {std::string_view(reinterpret_cast<const char*>(&length), sizeof length), type, text});
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

/// Runs `fn` in the child and writes its outcome to `sink`. A callable
/// that ends its thread (pthread_exit, pthread_cancel) ends the child, the
/// only thread there, with a report saying so: the unwind must not go on
/// past the fork, into the caller's frames copied with it.
template <typename R, typename F>
GONSO_CATCHES_FORCED_UNWIND void run_and_report(F&& fn, report_sink& sink) noexcept {
  try {
    if constexpr (std::is_void_v<R>) {
      std::forward<F>(fn)();
      (void)write_report(sink, tag_value, {});
    } else if constexpr (std::is_same_v<R, std::string>) {
      const std::string value = std::forward<F>(fn)();
      if (value.size() > max_report_body) {
        report_exception(sink, "std::length_error",
                         fmt::format("the callable's result of {} bytes exceeds run_in_process's limit of {} bytes",
                                     value.size(), max_report_body));
        return;
      }
      (void)write_report(sink, tag_value, {std::string_view(value)});
    } else if constexpr (encoded_result<R>) {
      const R value = std::forward<F>(fn)();
      std::string body;
      std::vector<int> fds;
      encode_result(value, body, fds);
      // Before the report: the parent takes the fds once it has the report.
      if (const int err = send_fds(sink.fd_socket(), fds); err != 0) {
        report_exception(sink, "std::system_error",
                         fmt::format("cannot send the callable's {} fds to the caller: {}", fds.size(),
                                     std::generic_category().message(err)));
        return;
      }
      (void)write_report(sink, tag_value, {std::string_view(body)});
    } else {
      const R value = std::forward<F>(fn)();
      (void)write_report(sink, tag_value, {std::string_view(reinterpret_cast<const char*>(&value), sizeof(R))});
    }
  } catch (abi::__forced_unwind&) {
    report_exception(sink, "abi::__forced_unwind",
                     "the callable ended its thread (pthread_exit or pthread_cancel), and with it the child process");
    child_exit(1);  // before the handler ends: leaving it would abort the process
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
    report_exception(sink, type, text);
  }
}

/// Turns what a child wrote, and how it ended (a wait status, or -1 when
/// unknown), into the callable's value or the matching exception. The bytes
/// are untrusted (see parse_report): a value must have exactly the size of
/// R (and a bool be 0 or 1), else std::system_error(EPROTO); a malformed
/// report from a child that a signal killed is reported as that signal.
/// `fds` are those the child sent for an encoded result (result_wire.hpp),
/// closed unless the value takes them.
template <typename R>
R decode_report(std::span<const char> report, int status, std::vector<Fd> fds = {}) {
  parsed_report parsed;
  try {
    parsed = parse_report(report);
  } catch (const std::system_error&) {
    if (status != -1 && WIFSIGNALED(status)) throw ProcessError::killed(WTERMSIG(status));
    throw;
  }
  switch (parsed.what) {
    case parsed_report::kind::value:
      if constexpr (std::is_void_v<R>) {
        if (!parsed.body.empty()) malformed_report("a value for a callable that returns void");
        return;
      } else if constexpr (std::is_same_v<R, std::string>) {
        return std::string(parsed.body);
      } else if constexpr (encoded_result<R>) {
        return result_reader(parsed.body, fds).read_all<R>();
      } else {
        if (parsed.body.size() != sizeof(R)) malformed_report("a value of the wrong size");
        if constexpr (std::is_same_v<R, bool>) {
          // Any other byte would be undefined behaviour as a bool.
          if (parsed.body[0] != 0 && parsed.body[0] != 1) malformed_report("a bool that is neither 0 nor 1");
        }
        R value;
        std::memcpy(&value, parsed.body.data(), sizeof(R));
        return value;
      }
    case parsed_report::kind::exception:
      throw ProcessError::thrown(std::string(parsed.type), std::string(parsed.text));
    case parsed_report::kind::join:
      throw std::system_error(parsed.err, std::generic_category(), std::string(parsed.text));
    case parsed_report::kind::none:
      break;
  }
  if (status == -1) throw system_error(ECHILD, "cannot learn how the child process ended (is SIGCHLD ignored?)");
  if (WIFSIGNALED(status)) throw ProcessError::killed(WTERMSIG(status));
  throw ProcessError::exited(WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

}  // namespace gonso::detail

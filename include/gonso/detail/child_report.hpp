// gonso: how a child process running a callable reports its outcome to the
// parent over a pipe, and how the parent turns that into a value or an error.
// SPDX-License-Identifier: MIT
#pragma once

#include <cxxabi.h>
#include <sys/wait.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <system_error>
#include <type_traits>

#include <gonso/detail/child_process.hpp>
#include <gonso/detail/error.hpp>
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

inline void report_join_error(int fd, int err, const std::string& message) noexcept {
  const char tag = tag_join;
  const auto code = static_cast<std::int32_t>(err);
  (void)(write_all(fd, &tag, 1) && write_all(fd, &code, sizeof code) && write_all(fd, message.data(), message.size()));
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

/// Runs `fn` in the child and writes its outcome to `fd`.
template <typename R, typename F>
void run_and_report(F&& fn, int fd) noexcept {
  try {
    const char tag = tag_value;
    if constexpr (std::is_void_v<R>) {
      std::forward<F>(fn)();
      (void)write_all(fd, &tag, 1);
    } else if constexpr (std::is_same_v<R, std::string>) {
      const std::string value = std::forward<F>(fn)();
      (void)(write_all(fd, &tag, 1) && write_all(fd, value.data(), value.size()));
    } else {
      const R value = std::forward<F>(fn)();
      (void)(write_all(fd, &tag, 1) && write_all(fd, &value, sizeof value));
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
    (void)(write_all(fd, &tag, 1) && write_all(fd, &length, sizeof length) && write_all(fd, type.data(), type.size()) &&
           write_all(fd, text.data(), text.size()));
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

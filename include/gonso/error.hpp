// gonso: the errors of child processes (ProcessError), thrown by run_in_process and spawn.
// SPDX-License-Identifier: MIT
#pragma once

#include <string.h>

#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/core.h>

namespace gonso {

/// A callable run with Set::run_in_process did not return a value: it threw,
/// or its process was killed by a signal or exited without reporting.
/// (Failures to join the Set come as std::system_error instead.)
class ProcessError : public std::runtime_error {
 public:
  enum class Cause {
    exception,  ///< the callable threw; exception_type() and message() say what
    signal,     ///< the process was killed by signal()
    exit,       ///< the process exited with exit_code() before reporting
    timeout,    ///< ProcessOptions::timeout passed first: the process was killed
  };

  /// The callable threw an exception of type `type` (demangled) with what() `text`.
  [[nodiscard]] static ProcessError thrown(std::string type, std::string text) {
    std::string what = fmt::format("callable in child process threw {}: {}", type, text);
    return ProcessError(Cause::exception, what, std::move(type), std::move(text), 0, 0);
  }
  [[nodiscard]] static ProcessError killed(int sig) {
    return ProcessError(Cause::signal, fmt::format("child process was killed by signal {} ({})", sig, ::strsignal(sig)),
                        {}, {}, sig, 0);
  }
  [[nodiscard]] static ProcessError exited(int code) {
    return ProcessError(Cause::exit, fmt::format("child process exited with status {} without a result", code), {}, {},
                        0, code);
  }

  [[nodiscard]] static ProcessError timed_out(long long milliseconds) {
    return ProcessError(Cause::timeout,
                        fmt::format("child process did not finish within {} ms and was killed", milliseconds), {}, {},
                        0, 0);
  }

  [[nodiscard]] Cause cause() const noexcept { return cause_; }
  /// The demangled type of the exception the callable threw, e.g. "std::runtime_error".
  [[nodiscard]] const std::string& exception_type() const noexcept { return type_; }
  /// Its what() text.
  [[nodiscard]] const std::string& message() const noexcept { return text_; }
  /// The signal that killed the process, or 0.
  [[nodiscard]] int signal() const noexcept { return signal_; }
  /// The exit status of a process that exited without reporting, or 0.
  [[nodiscard]] int exit_code() const noexcept { return exit_code_; }

 private:
  ProcessError(Cause cause, const std::string& what, std::string type, std::string text, int sig, int code)
      : std::runtime_error(what),
        cause_(cause),
        type_(std::move(type)),
        text_(std::move(text)),
        signal_(sig),
        exit_code_(code) {}

  Cause cause_;
  std::string type_;
  std::string text_;
  int signal_;
  int exit_code_;
};

}  // namespace gonso

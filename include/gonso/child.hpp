// gonso: a handle on a child process: its pidfd, how it ended, its pipes.
// SPDX-License-Identifier: MIT
#pragma once

#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/core.h>

#include <gonso/detail/process/children.hpp>
#include <gonso/detail/process/launch.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/io.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/detail/text_formatter.hpp>

namespace gonso {

/// How a process ended: it exited with a code, or a signal killed it.
/// A value; prints as "exited 3" or "killed by signal 9 (Killed)".
class ExitStatus {
 public:
  /// The process called exit(code) or returned code from main.
  [[nodiscard]] static constexpr ExitStatus exited_with(int code) noexcept { return ExitStatus(false, code); }
  /// Signal `sig` killed the process (with or without a core dump).
  [[nodiscard]] static constexpr ExitStatus killed_by(int sig) noexcept { return ExitStatus(true, sig); }

  /// True when the process exited (rather than being killed).
  [[nodiscard]] constexpr bool exited() const noexcept { return !signaled_; }
  /// The exit code (0 to 255) when exited(), else -1.
  [[nodiscard]] constexpr int code() const noexcept { return signaled_ ? -1 : value_; }
  /// True when a signal killed the process.
  [[nodiscard]] constexpr bool signaled() const noexcept { return signaled_; }
  /// The signal that killed it when signaled(), else 0.
  [[nodiscard]] constexpr int signal() const noexcept { return signaled_ ? value_ : 0; }
  /// True when the process exited with code 0.
  [[nodiscard]] constexpr bool success() const noexcept { return !signaled_ && value_ == 0; }

  /// Same way of ending, same code or signal.
  friend constexpr bool operator==(const ExitStatus&, const ExitStatus&) noexcept = default;

 private:
  constexpr ExitStatus(bool signaled, int value) noexcept : signaled_(signaled), value_(value) {}

  bool signaled_ = false;
  int value_ = 0;
};

/// A move-only handle on a child process of the caller: a pidfd
/// (pidfd_open(2), close-on-exec) that names the process even after its pid
/// is reused, and the caller's ends of the pipes to its standard streams.
///
/// The handle owns the child: when a Child that was neither wait()ed nor
/// seen to end by poll() is destroyed (or assigned to), the process gets
/// SIGKILL and is reaped, so it never stays a zombie; release() and
/// detach() give it up instead. The destructor blocks
/// until the kernel has ended it and never throws.
///
/// Reaping uses waitid(P_PIDFD), which needs SIGCHLD not to be ignored
/// (SIG_IGN or SA_NOCLDWAIT let the kernel reap children by itself). A Child
/// is used from one thread at a time, like an fstream.
class Child {
 public:
  /// An empty handle: owns no process; pid() is -1.
  Child() noexcept = default;

  /// Takes charge of `pid`, a child process the caller forked and has not
  /// reaped yet, by opening a pidfd on it. Throws std::invalid_argument for
  /// pid <= 0, std::system_error(ECHILD) when it is not a child of this
  /// process, and with pidfd_open's errno (ESRCH: no such process) otherwise.
  [[nodiscard]] static Child adopt(pid_t pid) {
    if (pid <= 0) throw std::invalid_argument(fmt::format("cannot adopt pid {}: not a process id", pid));
    detail::unique_fd pidfd(detail::pidfd_open(pid));
    if (!pidfd) throw detail::system_error(errno, "cannot open a pidfd for pid {}", pid);
    // WNOWAIT: look without reaping; ECHILD means someone else's process.
    siginfo_t info{};
    while (::waitid(P_PIDFD, static_cast<id_t>(pidfd.get()), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
      if (errno == EINTR) continue;
      throw detail::system_error(errno, "cannot adopt pid {}: not a child process of the caller", pid);
    }
    return detail::child_access::make(std::move(pidfd), pid, {}, {}, {});
  }

  Child(Child&& other) noexcept
      : pid_(std::exchange(other.pid_, -1)),
        state_(std::move(other.state_)),
        stdin_(std::move(other.stdin_)),
        stdout_(std::move(other.stdout_)),
        stderr_(std::move(other.stderr_)),
        status_(std::exchange(other.status_, std::nullopt)) {}
  /// Ends and reaps the process held so far (as the destructor does), then
  /// takes the other's.
  Child& operator=(Child&& other) noexcept {
    if (this != &other) {
      finish();
      pid_ = std::exchange(other.pid_, -1);
      state_ = std::move(other.state_);
      stdin_ = std::move(other.stdin_);
      stdout_ = std::move(other.stdout_);
      stderr_ = std::move(other.stderr_);
      status_ = std::exchange(other.status_, std::nullopt);
    }
    return *this;
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  /// Unless it was already reaped: sends SIGKILL, closes the pipes and
  /// reaps the process. Never throws.
  ~Child() { finish(); }

  /// True when this handle owns a process (reaped or not).
  [[nodiscard]] bool valid() const noexcept { return state_ != nullptr; }
  explicit operator bool() const noexcept { return valid(); }

  /// The process id in the caller's pid namespace (a program spawned into
  /// another pid namespace has a different one there), or -1 for an empty
  /// handle. After the process is reaped the number may name another process;
  /// pidfd() does not.
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

  /// The pidfd, still owned by this handle, or -1. Usable with poll(2)
  /// (readable once the process has ended), setns(2) and
  /// pidfd_send_signal(2); it stays open until the handle is destroyed.
  [[nodiscard]] int pidfd() const noexcept { return state_ ? state_->pidfd.get() : -1; }

  /// Blocks until the process ends, reaps it and returns how it ended;
  /// later calls return the same status. Retries on EINTR. Read the pipes
  /// first: a program blocked on a full stdout pipe never ends by itself.
  /// Throws std::logic_error on an empty handle, std::system_error(ECHILD)
  /// when the process was reaped elsewhere (SIGCHLD ignored).
  ExitStatus wait() {
    if (status_) return *status_;
    require_valid("wait for");
    return *reap(true);
  }

  /// Waits at most `timeout` for the process to end: how it ended (reaped),
  /// or nullopt when it still runs then. A zero or negative timeout looks
  /// once, as poll() does. Throws as wait() does.
  template <typename Rep, typename Period>
  [[nodiscard]] std::optional<ExitStatus> wait_for(const std::chrono::duration<Rep, Period>& timeout) {
    using clock = std::chrono::steady_clock;
    const auto now = clock::now();
    // A timeout beyond the clock's range waits as long as it can (compared
    // in floating point: in the clock's unit, hours::max() would overflow).
    using seconds = std::chrono::duration<double>;
    if (seconds(timeout) >= seconds(clock::time_point::max() - now)) return wait_until(clock::time_point::max());
    return wait_until(now + std::chrono::ceil<clock::duration>(timeout));
  }

  /// Waits until `deadline` (of any clock) for the process to end: how it
  /// ended (reaped), or nullopt when it still runs then. Throws as wait()
  /// does.
  template <typename Clock, typename Duration>
  [[nodiscard]] std::optional<ExitStatus> wait_until(const std::chrono::time_point<Clock, Duration>& deadline) {
    if (status_) return status_;
    require_valid("wait for");
    for (;;) {
      if (std::optional<ExitStatus> ended = reap(false)) return ended;
      const auto left = deadline - Clock::now();
      if (left <= decltype(left)::zero()) return std::nullopt;
      const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
      pollfd ended{state_->pidfd.get(), POLLIN, 0};
      if (::poll(&ended, 1, static_cast<int>(std::min<decltype(ms)>(ms, INT_MAX))) < 0 && errno != EINTR) {
        throw detail::system_error(errno, "cannot wait for pid {}", pid_);
      }
    }
  }

  /// What communicate() gathered: everything the program wrote to its
  /// stdout and stderr pipes (empty for one that is not a pipe), and how it
  /// ended.
  struct Output {
    std::string out;
    std::string err;
    ExitStatus status = ExitStatus::exited_with(0);
  };

  /// Writes `input` to the stdin pipe and closes it, reads the stdout and
  /// stderr pipes to their end, all at once through poll(2), so that a
  /// program filling one pipe while gonso writes or reads another never
  /// blocks either side; then waits for the process. A program that closes
  /// its stdin early gets the rest of `input` dropped, and the caller no
  /// SIGPIPE (it is blocked on the calling thread meanwhile, and one it
  /// raised is discarded). Throws std::logic_error on an empty handle, or
  /// when there is input but stdin is not a pipe; std::system_error when a
  /// read, write or poll fails.
  [[nodiscard]] Output communicate(std::string_view input = {}) {
    require_valid("communicate with");
    if (!input.empty() && !stdin_) {
      throw std::logic_error(
          fmt::format("cannot write {} bytes to the stdin of pid {}: it is not a pipe", input.size(), pid_));
    }
    Output result;
    detail::exchange(stdin_, input, stdout_, result.out, stderr_, result.err);
    result.status = wait();
    return result;
  }

  /// Gives up the process without ending it and returns a new pidfd on it
  /// (close-on-exec) that the caller owns: the handle becomes empty, gonso
  /// neither kills nor reaps the process, and it stays a child of the
  /// caller, a zombie once it ends until the caller reaps it (waitid(2) with
  /// P_PIDFD, or waitpid). The pipes are closed. Throws std::logic_error on
  /// an empty handle and std::system_error when no fd can be made (the
  /// handle then still owns the process).
  [[nodiscard]] int release() {
    require_valid("release");
    const int fd = ::fcntl(state_->pidfd.get(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) throw detail::system_error(errno, "cannot release pid {}: no fd for its pidfd", pid_);
    forget();
    return fd;
  }

  /// As release(), without a pidfd: the process runs on, and the caller,
  /// whose child it stays, reaps it by pid (waitpid) or leaves it to the
  /// kernel by ignoring SIGCHLD. Returns that pid. Throws std::logic_error
  /// on an empty handle.
  pid_t detach() {
    require_valid("detach");
    const pid_t pid = pid_;
    forget();
    return pid;
  }

  /// How the process ended, reaping it, or nullopt while it still runs.
  /// Never blocks. Once it has returned a status, keeps returning it.
  /// Throws as wait() does.
  [[nodiscard]] std::optional<ExitStatus> poll() {
    if (status_) return status_;
    require_valid("poll");
    return reap(false);
  }

  /// Sends `sig` to the process through its pidfd (pidfd_send_signal(2)), so
  /// that a reused pid is never hit. Sending to a process that has already
  /// ended is no error and does nothing: a zombie ignores it, and once the
  /// process is reaped nothing is sent. Throws std::logic_error on an empty
  /// handle and std::system_error for other failures (EINVAL for a bad
  /// signal number, EPERM).
  void kill(int sig = SIGKILL) {
    require_valid("signal");
    if (status_) return;
    if (::syscall(SYS_pidfd_send_signal, state_->pidfd.get(), sig, nullptr, 0U) != 0 && errno != ESRCH) {
      throw detail::system_error(errno, "cannot send signal {} to pid {}", sig, pid_);
    }
  }

  /// The write end of a pipe to the process's standard input, or -1 when it
  /// is not a pipe or was closed. Still owned by the handle. Writing after
  /// the process has closed its end raises SIGPIPE in the caller unless it
  /// blocks or ignores that signal.
  [[nodiscard]] int stdin_fd() const noexcept { return stdin_.get(); }
  /// The read end of a pipe from the process's standard output, or -1.
  [[nodiscard]] int stdout_fd() const noexcept { return stdout_.get(); }
  /// The read end of a pipe from the process's standard error, or -1.
  [[nodiscard]] int stderr_fd() const noexcept { return stderr_.get(); }

  /// Closes the stdin pipe, so that the process reads end of file. Does
  /// nothing when there is none.
  void close_stdin() noexcept { stdin_.reset(); }

  /// Reads the stdout pipe until end of file, i.e. until the process and
  /// everything that inherited its stdout have closed it. When stdout and
  /// stderr are both pipes, a process filling the one not being read blocks:
  /// poll(2) both fds instead, or read one on another thread. Throws
  /// std::logic_error when stdout is not a pipe and std::system_error when
  /// read(2) fails.
  [[nodiscard]] std::string read_stdout() { return read_pipe(stdout_, "stdout"); }
  /// As read_stdout(), for stderr.
  [[nodiscard]] std::string read_stderr() { return read_pipe(stderr_, "stderr"); }

 private:
  friend struct detail::child_access;

  Child(std::shared_ptr<detail::child_state> state, pid_t pid, detail::unique_fd in, detail::unique_fd out,
        detail::unique_fd err) noexcept
      : pid_(pid), state_(std::move(state)), stdin_(std::move(in)), stdout_(std::move(out)), stderr_(std::move(err)) {}

  void require_valid(const char* verb) const {
    if (!state_) throw std::logic_error(fmt::format("cannot {} an empty gonso::Child (moved-from or default)", verb));
  }

  // Reaps through the shared state, which a dying pid namespace's init may
  // have reaped already (see detail::child_state); caches the status.
  std::optional<ExitStatus> reap(bool block) {
    detail::child_state& state = *state_;
    for (;;) {
      (void)detail::try_reap(state);
      {
        const std::lock_guard<std::mutex> hold(state.lock);
        if (state.error != 0) {
          throw detail::system_error(state.error, "cannot wait for pid {} (is SIGCHLD ignored?)", pid_);
        }
        if (state.reaped) {
          status_ =
              state.code == CLD_EXITED ? ExitStatus::exited_with(state.status) : ExitStatus::killed_by(state.status);
          return status_;
        }
      }
      if (!block) return std::nullopt;
      pollfd ended{state.pidfd.get(), POLLIN, 0};
      if (::poll(&ended, 1, -1) < 0 && errno != EINTR) {
        throw detail::system_error(errno, "cannot wait for pid {}", pid_);
      }
    }
  }

  std::string read_pipe(const detail::unique_fd& fd, const char* stream) const {
    if (!fd) throw std::logic_error(fmt::format("cannot read the {} of pid {}: it is not a pipe", stream, pid_));
    return detail::read_to_end(fd.get());
  }

  // Lets go of the process without ending it; closes the pipes.
  void forget() noexcept {
    detail::child_registry::get().remove(state_.get());
    stdin_.reset();
    stdout_.reset();
    stderr_.reset();
    state_.reset();
    pid_ = -1;
    status_.reset();
  }

  // Kills and reaps an unreaped process, closes everything. Never throws.
  void finish() noexcept {
    stdin_.reset();
    if (state_) {
      if (!status_) {
        (void)::syscall(SYS_pidfd_send_signal, state_->pidfd.get(), SIGKILL, nullptr, 0U);
        (void)detail::wait_reaped(*state_);
      }
      detail::child_registry& registry = detail::child_registry::get();
      registry.remove(state_.get());
      // An init killed earlier may have been waiting for this very process.
      registry.sweep_dying_inits();
    }
    stdout_.reset();
    stderr_.reset();
    state_.reset();
    pid_ = -1;
    status_.reset();
  }

  pid_t pid_ = -1;
  std::shared_ptr<detail::child_state> state_;
  detail::unique_fd stdin_;
  detail::unique_fd stdout_;
  detail::unique_fd stderr_;
  std::optional<ExitStatus> status_;
};

inline Child detail::child_access::make(unique_fd pidfd, pid_t pid, unique_fd in, unique_fd out, unique_fd err) {
  std::shared_ptr<child_state> state;
  try {
    state = std::make_shared<child_state>(std::move(pidfd), pid);
  } catch (...) {
    // Nothing may own a process that no handle can reap.
    if (pidfd) (void)kill_and_reap(pidfd);
    throw;
  }
  (void)child_registry::get().add(state);
  return Child(std::move(state), pid, std::move(in), std::move(out), std::move(err));
}

}  // namespace gonso

/// Prints "exited 3" or "killed by signal 9 (Killed)".
template <>
struct fmt::formatter<gonso::ExitStatus> : gonso::detail::text_formatter {
  auto format(const gonso::ExitStatus& status, format_context& ctx) const {
    if (status.exited()) return write(fmt::format("exited {}", status.code()), ctx);
    // sigdescr_np, unlike strsignal, is thread-safe; nullptr for unknown numbers.
    const char* description = ::sigdescr_np(status.signal());
    return write(fmt::format("killed by signal {} ({})", status.signal(),
                             description != nullptr ? description : "unknown signal"),
                 ctx);
  }
};

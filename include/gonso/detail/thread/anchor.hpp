// gonso: a parked thread that holds a place in a set of namespaces, so that
// a worker can return there with one setns(2) on its pidfd.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/magic.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <exception>
#include <string>
#include <thread>

#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/detail/thread/event.hpp>
#include <gonso/kind.hpp>

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL  // NOLINT(cppcoreguidelines-macro-usage): kernel 6.9, not in older headers
#endif

namespace gonso::detail {

/// Joins each of `kinds` of `target` that the calling thread is not in, in
/// thread_join_order; `here` tells where the thread is now. Sets `fs_private` when
/// it had to unshare(CLONE_FS) for mnt, which cannot be undone. Adds what it
/// joined to `joined`. Throws std::system_error naming the kind.
template <typename Here>
void join_kinds(const ns_handles& target, Kinds kinds, Here&& here, Kinds& joined, bool& fs_private) {
  for (Kind kind : thread_join_order) {
    if (!kinds.contains(kind)) continue;
    const ns_handle& ns = target[index_of(kind)];
    // Joining what the thread is in already is a no-op for most kinds but an
    // error for mnt without CLONE_FS: skip it.
    if (here(kind) == ns.id) continue;
    if (kind == Kind::mnt && !fs_private) {
      // setns(CLONE_NEWNS) is refused while the thread shares its root and cwd
      // with the process (the README, "How namespaces behave", mount).
      if (const int err = unshare_ns(CLONE_FS); err != 0) {
        throw system_error(err, "cannot unshare filesystem attributes to join {}", ns.id);
      }
      fs_private = true;
    }
    if (const int err = set_ns(ns.fd.get(), clone_flag(kind)); err != 0) {
      throw system_error(err, "cannot join {} namespace {}", kind, ns.id);
    }
    joined |= kind;
  }
}

/// Opens the calling thread's namespaces of every watched kind. A kernel
/// without time namespaces, or a pid_for_children not yet set up
/// (the README, "How namespaces behave", pid), leaves that kind empty.
[[nodiscard]] inline ns_handles open_thread_ns(int ns_dir) {
  ns_handles out{};
  for (Kind kind : watched_kinds) {
    out[index_of(kind)] = open_ns(ns_dir, thread_link(kind), kind, std::string("this thread's ") + thread_link(kind),
                                  /*missing_ok=*/true);
  }
  return out;
}

/// The identity of the calling thread's namespace of `kind` as its link in
/// `ns_dir` shows it, read without opening it; empty when it cannot be read.
[[nodiscard]] inline Identity thread_ns_id(int ns_dir, Kind kind) noexcept {
  Identity id{};
  if (stat_ns(ns_dir, thread_link(kind), kind, id) != 0) return {};
  return id;
}

/// A thread that joins some namespaces once and then only sleeps, so that
/// its namespaces never change: a worker goes back to all of them with one
/// setns(2) on the anchor's pidfd, which costs about as much as one setns
/// on an fd (the README, "How namespaces behave", pidfd). Joining through a pidfd never
/// checks first, so it also undoes whatever a callable changed that gonso
/// did not join: checking each kind would cost far more.
class anchor {
 public:
  /// Starts the thread in its creator's namespaces, then has it join `kinds`
  /// of `target`. Throws std::system_error when the thread cannot start or
  /// cannot join.
  explicit anchor(const ns_handles* target = nullptr, Kinds kinds = {})
      : thread_([this, target, kinds] { main(target, kinds); }) {
    (void)ready_.wait(default_spin);
    if (error_) {
      stop_.store(true, std::memory_order_relaxed);
      wake_.post();
      thread_.join();
      std::rethrow_exception(error_);
    }
  }
  anchor(const anchor&) = delete;
  anchor& operator=(const anchor&) = delete;
  ~anchor() {
    if (!thread_.joinable()) return;
    stop_.store(true, std::memory_order_relaxed);
    wake_.post();
  }  // thread_ joins

  /// A pidfd of the anchor thread, or -1 when the kernel cannot make one for
  /// a thread (PIDFD_THREAD, Linux 6.9).
  [[nodiscard]] int pidfd() const noexcept { return pidfd_.get(); }
  [[nodiscard]] pid_t tid() const noexcept { return tid_; }
  /// The anchor's namespaces of every watched kind, as its thread links show them.
  [[nodiscard]] const ns_handles& ns() const noexcept { return ns_; }
  /// Its active pid namespace: what setns(pidfd, CLONE_NEWPID) gives, which
  /// differs from ns()[pid] (pid_for_children) when the anchor joined one.
  [[nodiscard]] const Identity& active_pid() const noexcept { return active_pid_; }
  /// Its user and (active) time namespaces: those of every thread of the
  /// process while the anchor lives, since no thread of a multithreaded
  /// process can change either (the README, "How namespaces behave").
  [[nodiscard]] const Identity& user() const noexcept { return user_; }
  [[nodiscard]] const Identity& time() const noexcept { return time_; }
  /// An O_PATH fd of the procfs that showed this process's threads when the
  /// anchor started (checked to be procfs, and to show the anchor's own
  /// thread-self), or -1: callers whose `/proc` path names something else
  /// now (a chroot, another mount namespace) still read their own files
  /// through it.
  [[nodiscard]] int proc() const noexcept { return proc_.get(); }

 private:
  void main(const ns_handles* target, Kinds kinds) noexcept {
    try {
      tid_ = this_tid();
      unique_fd ns_dir(::open("/proc/thread-self/ns", O_PATH | O_DIRECTORY | O_CLOEXEC));
      if (!ns_dir) throw system_error(errno, "cannot open /proc/thread-self/ns");
      if (target != nullptr) {
        Kinds joined;
        bool fs_private = false;  // this thread's own; nothing here depends on it
        join_kinds(
            *target, kinds, [&](Kind kind) { return thread_ns_id(ns_dir.get(), kind); }, joined, fs_private);
      }
      ns_ = open_thread_ns(ns_dir.get());
      if (stat_ns(ns_dir.get(), "pid", Kind::pid, active_pid_) != 0) active_pid_ = {};
      if (stat_ns(ns_dir.get(), "user", Kind::user, user_) != 0) user_ = {};
      if (stat_ns(ns_dir.get(), "time", Kind::time, time_) != 0) time_ = {};
      pidfd_.reset(pidfd_open(tid_, PIDFD_THREAD));
      open_proc();
    } catch (...) {
      error_ = std::current_exception();
    }
    ready_.post();
    while (!stop_.load(std::memory_order_relaxed)) (void)wake_.wait(std::chrono::nanoseconds::zero());
  }

  void open_proc() noexcept {
    unique_fd proc(::open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC));
    struct statfs fs {};
    if (!proc || ::fstatfs(proc.get(), &fs) != 0 || fs.f_type != PROC_SUPER_MAGIC) return;
    struct stat own {};
    if (::fstatat(proc.get(), "thread-self/status", &own, 0) != 0) return;  // another pid namespace's procfs
    proc_ = std::move(proc);
  }

  event ready_;
  event wake_;
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;
  pid_t tid_ = -1;
  unique_fd pidfd_;
  unique_fd proc_;
  ns_handles ns_{};
  Identity active_pid_{};
  Identity user_{};
  Identity time_{};
  std::jthread thread_;  // last: starts after, and is joined before, the rest
};

}  // namespace gonso::detail

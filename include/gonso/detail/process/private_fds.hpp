// gonso: the parent-side ends of run_in_process channels, kept out of every
// other run_in_process child.
// SPDX-License-Identifier: MIT
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <initializer_list>
#include <iterator>
#include <thread>

#include <gonso/detail/process/child_code.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/fd.hpp>

namespace gonso::detail {

/// Why: a run_in_process child is a fork, so it holds a copy of every fd of
/// the caller, close-on-exec or not (it never execs). Its callable may be
/// less trusted than the caller (it may run as another uid, inside a
/// container), and among those fds are the channels of other runs in flight
/// on other threads: their report pipes and the sockets that carry their
/// fds. A callable reading from them could take another run's result, or the
/// sockets and files made inside another Set. So every channel fd is listed
/// here while it is open, and each run_in_process child closes every listed
/// fd but its own before anything else runs.
///
/// The list is a fixed array of atomics (the child reads it with no lock and
/// no allocation). An fd is listed only while its number is the channel's:
/// added after it is made, removed before it is closed. Making and listing
/// are one step with respect to a fork: no fork happens while channels are
/// being made and listed (making), and no making while a fork is under way
/// (forking); forks may overlap each other. So no child is forked from a
/// state where a channel exists but is not listed yet. Not a std::shared_mutex:
/// the child of a fork gets a copy of it held, and a run_in_process in that
/// child would wait for itself; this one the child resets (after_fork).
class private_fds {
 public:
  static constexpr std::size_t capacity = 4096;

  [[nodiscard]] static private_fds& instance() noexcept {
    static private_fds list;
    return list;
  }

  /// Scopes: channels being made and listed; a fork under way.
  class making {
   public:
    making() noexcept {
      for (int idle = 0; !instance().state_.compare_exchange_weak(idle, -1, std::memory_order_acquire); idle = 0) {
        std::this_thread::yield();
      }
    }
    making(const making&) = delete;
    making& operator=(const making&) = delete;
    ~making() { instance().state_.store(0, std::memory_order_release); }
  };
  class forking {
   public:
    forking() noexcept {
      for (int now = instance().state_.load(std::memory_order_relaxed);;) {
        if (now >= 0 && instance().state_.compare_exchange_weak(now, now + 1, std::memory_order_acquire)) return;
        if (now < 0) {
          std::this_thread::yield();
          now = instance().state_.load(std::memory_order_relaxed);
        }
      }
    }
    forking(const forking&) = delete;
    forking& operator=(const forking&) = delete;
    ~forking() { instance().state_.fetch_sub(1, std::memory_order_release); }
  };

  /// In a forked child, the only thread there: no fork or making is under
  /// way in it, whatever the copy says. System calls only (none at all).
  GONSO_CHILD_CODE void after_fork() noexcept { state_.store(0, std::memory_order_relaxed); }

  /// Lists `fd` (-1: nothing). Throws std::system_error(EMFILE) when the list
  /// is full: more channels than that are open at once.
  void add(int fd) {
    if (fd < 0) return;
    for (std::size_t i = 0; i < capacity; ++i) {
      int free = 0;
      if (slots_[i].compare_exchange_strong(free, fd + 1, std::memory_order_acq_rel)) {
        std::size_t high = high_.load(std::memory_order_relaxed);
        while (high < i + 1 && !high_.compare_exchange_weak(high, i + 1, std::memory_order_acq_rel)) {
        }
        return;
      }
    }
    throw system_error(EMFILE, "cannot list a run_in_process channel: {} are open already", capacity);
  }

  /// Unlists `fd`, before it is closed.
  void remove(int fd) noexcept {
    if (fd < 0) return;
    const std::size_t high = high_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < high; ++i) {
      int mine = fd + 1;
      if (slots_[i].compare_exchange_strong(mine, 0, std::memory_order_acq_rel)) return;
    }
  }

  /// In a forked child, before anything else: closes every listed fd but
  /// those in `keep`. System calls only.
  GONSO_CHILD_CODE void close_others(std::initializer_list<int> keep) noexcept {
    const std::size_t high = high_.load(std::memory_order_relaxed);
    for (std::size_t i = 0; i < high; ++i) {
      const int fd = slots_[i].load(std::memory_order_relaxed) - 1;
      if (fd < 0) continue;
      bool kept = false;
      for (const int k : keep) kept = kept || k == fd;
      if (!kept) ::syscall(SYS_close, fd);
    }
  }

 private:
  private_fds() noexcept = default;

  std::atomic<int> state_{0};  // -1: making; > 0: forks under way
  std::atomic<std::size_t> high_{0};
  std::atomic<int> slots_[capacity] = {};  // fd + 1; 0: free
};

/// The channel fds of one run_in_process call, listed in private_fds for as
/// long as they are open: `close(fd)` unlists one, then closes it; the
/// destructor unlists those still open (their owners close them next).
class listed_fds {
 public:
  listed_fds(std::initializer_list<Fd*> fds) {
    std::size_t n = 0;
    for (Fd* fd : fds) {
      if (n < std::size(fds_)) fds_[n++] = fd;
    }
    count_ = n;
  }
  listed_fds(const listed_fds&) = delete;
  listed_fds& operator=(const listed_fds&) = delete;
  ~listed_fds() {
    for (std::size_t i = 0; i < count_; ++i) private_fds::instance().remove(fds_[i]->get());
  }

  /// Lists them all; called in a private_fds::making scope.
  void add_all() {
    for (std::size_t i = 0; i < count_; ++i) private_fds::instance().add(fds_[i]->get());
  }

  /// Unlists and closes one of them.
  static void close(Fd& fd) noexcept {
    private_fds::instance().remove(fd.get());
    fd.reset();
  }

 private:
  Fd* fds_[8] = {};
  std::size_t count_ = 0;
};

}  // namespace gonso::detail

// gonso: handing work between two threads, spinning briefly before sleeping.
// SPDX-License-Identifier: MIT
#pragma once

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <ctime>

namespace gonso::detail {

/// How long a thread that waits for another spins before it sleeps. Waking a
/// sleeping thread on another CPU costs 25-60 us on the machines gonso is
/// measured on, while a spinning one answers in well under a microsecond
/// (the README, "How namespaces behave"); spinning about as long as a wake-up costs bounds the
/// waste at twice the best case either way.
inline constexpr std::chrono::microseconds default_spin{50};
/// Longer spins are cut to this: a waiter must never keep a CPU for long.
inline constexpr std::chrono::microseconds longest_spin{10'000};

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

/// A one-shot signal from any thread to one waiting thread: post() sets it,
/// wait() spins for a budget, then sleeps on a futex, and consumes it. post()
/// makes a system call only when the waiter is asleep, so a hand-off between
/// two threads that are both awake costs no system call at all.
class event {
 public:
  event() noexcept = default;
  event(const event&) = delete;
  event& operator=(const event&) = delete;
  ~event() = default;

  /// Sets the event; wakes the waiter if it sleeps. Memory written before
  /// post() is visible to the waiter after its wait() returns.
  void post() noexcept {
    if (word_.exchange(posted, std::memory_order_acq_rel) == sleeping) {
      (void)::syscall(SYS_futex, &word_, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    }
  }

  /// Waits until posted, spinning for at most `spin` first; returns false
  /// when `timeout` (if not negative) passes first. Consumes the post.
  [[nodiscard]] bool wait(std::chrono::nanoseconds spin,
                          std::chrono::nanoseconds timeout = std::chrono::nanoseconds(-1)) noexcept {
    using clock = std::chrono::steady_clock;
    if (consume()) return true;
    const auto start = clock::now();
    // Several runnable threads may share fewer CPUs (many callers, a noisy
    // machine): yielding now and then lets the thread we wait for run. No
    // budget means no spinning at all, not one round of it.
    for (unsigned round = 1; spin > std::chrono::nanoseconds::zero(); ++round) {
      cpu_relax();
      if (consume()) return true;
      if (round % 64 == 0) {
        if (clock::now() - start >= spin) break;
        ::sched_yield();
      }
    }
    const bool forever = timeout < std::chrono::nanoseconds::zero();
    const auto deadline = start + timeout;
    for (;;) {
      std::uint32_t expected = idle;
      if (!word_.compare_exchange_strong(expected, sleeping, std::memory_order_acq_rel) && consume()) return true;
      timespec rel{};
      if (!forever) {
        const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - clock::now());
        if (left <= std::chrono::nanoseconds::zero()) {
          expected = sleeping;
          if (word_.compare_exchange_strong(expected, idle, std::memory_order_acq_rel)) return false;
          return consume();  // posted just now
        }
        rel.tv_sec = static_cast<time_t>(left.count() / 1'000'000'000);
        rel.tv_nsec = static_cast<long>(left.count() % 1'000'000'000);
      }
      // EINTR, EAGAIN (posted before we slept) and spurious wake-ups all loop.
      (void)::syscall(SYS_futex, &word_, FUTEX_WAIT_PRIVATE, sleeping, forever ? nullptr : &rel, nullptr, 0);
      if (consume()) return true;
    }
  }

 private:
  static constexpr std::uint32_t idle = 0;
  static constexpr std::uint32_t posted = 1;
  static constexpr std::uint32_t sleeping = 2;

  bool consume() noexcept {
    std::uint32_t expected = posted;
    return word_.load(std::memory_order_relaxed) == posted &&
           word_.compare_exchange_strong(expected, idle, std::memory_order_acquire);
  }

  std::atomic<std::uint32_t> word_{idle};
};

}  // namespace gonso::detail

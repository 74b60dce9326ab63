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

/// How many threads may spin in event::wait at once: one fewer than the
/// CPUs this process may run on, read once. A spinner helps only while the
/// thread it waits for has a CPU of its own; with more spinners than that
/// (eight callers on two CPUs), the thread that must do the work queues
/// behind them, and every hand-off costs a time slice instead of a wake-up.
[[nodiscard]] inline unsigned spin_slots() noexcept {
  static const unsigned slots = [] {
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    if (::sched_getaffinity(0, sizeof cpus, &cpus) != 0) return 0U;
    const int count = CPU_COUNT(&cpus);
    return count > 1 ? static_cast<unsigned>(count - 1) : 0U;
  }();
  return slots;
}

/// The threads of the process spinning in event::wait right now.
[[nodiscard]] inline std::atomic<unsigned>& spinning_threads() noexcept {
  static std::atomic<unsigned> count{0};
  return count;
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

/// A one-shot signal from any thread to one waiting thread: post() sets it,
/// wait() spins for a budget while a CPU is free for the poster (see
/// spin_slots), then sleeps on a futex, and consumes it. post()
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
    if (spin > std::chrono::nanoseconds::zero() && spin_slot()) {
      // Other runnable threads may share our CPU (a noisy machine): yielding
      // now and then lets the thread we wait for run.
      bool posted_meanwhile = false;
      for (unsigned round = 1;; ++round) {
        cpu_relax();
        if (consume()) {
          posted_meanwhile = true;
          break;
        }
        if (round % 64 == 0) {
          if (clock::now() - start >= spin) break;
          ::sched_yield();
        }
      }
      spinning_threads().fetch_sub(1, std::memory_order_relaxed);
      if (posted_meanwhile) return true;
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

  // Takes one of the spin_slots(), or says there is none free: then the
  // waiter sleeps at once. No budget means no spinning at all.
  static bool spin_slot() noexcept {
    if (spinning_threads().fetch_add(1, std::memory_order_relaxed) < spin_slots()) return true;
    spinning_threads().fetch_sub(1, std::memory_order_relaxed);
    return false;
  }

  bool consume() noexcept {
    std::uint32_t expected = posted;
    return word_.load(std::memory_order_relaxed) == posted &&
           word_.compare_exchange_strong(expected, idle, std::memory_order_acquire);
  }

  std::atomic<std::uint32_t> word_{idle};
};

}  // namespace gonso::detail

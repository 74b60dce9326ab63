// gonso: the dedicated threads behind Set::run, and how many of them to keep.
// SPDX-License-Identifier: MIT
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <stdexcept>

#include <gonso/detail/thread/worker_pool.hpp>

namespace gonso {

/// How many restored worker threads gonso keeps for reuse, for how long, and
/// how long threads waiting for each other spin before they sleep. A worker
/// is kept only after a run with restore that brought it back to its
/// original namespaces; everything else ends its thread.
///
/// While it keeps workers, gonso also keeps one more thread, the anchor: it
/// sleeps in the process's own namespaces, and a worker goes back to them
/// after each run with one setns(2) on the anchor's pidfd. It ends with the
/// last worker, or when max_idle or idle_timeout is 0.
struct WorkerPolicy {
  /// Most idle workers kept once no run is in flight; 0 keeps none (every
  /// run gets a new thread). While runs are in flight, as many are kept as
  /// there are runs, so that callers looping in many threads reuse workers
  /// instead of starting one per run. Default: the larger of 4 and the
  /// number of CPUs.
  std::size_t max_idle = detail::default_max_idle();
  /// An idle worker ends after this long without work; 0 keeps none. Longer
  /// than a year counts as a year. Default: 10 s.
  std::chrono::milliseconds idle_timeout = detail::default_idle_timeout;
  /// How long a caller waiting for its callable's result, and a worker (or
  /// an Executor) waiting for its next callable, spin before they sleep in
  /// the kernel. Waking a sleeping thread costs 25-60 us on a small VM, a
  /// spinning one answers in well under 1 us: back-to-back runs within the
  /// budget cost little more than their setns calls, and a waiter never
  /// burns more CPU than one wake-up would have cost. 0 always sleeps at
  /// once. Longer than 10 ms counts as 10 ms. Default: 50 us.
  std::chrono::microseconds spin = detail::default_spin;
};

/// The policy in force.
[[nodiscard]] inline WorkerPolicy worker_policy() {
  auto& pool = detail::worker_pool::instance();
  return {pool.max_idle(), pool.idle_timeout(),
          std::chrono::duration_cast<std::chrono::microseconds>(detail::spin_budget())};
}

/// Changes the policy for later runs; idle workers beyond the new max_idle end
/// at once (oldest first). Workers already waiting keep their current timeout
/// until they next wake. Throws std::invalid_argument for a negative timeout
/// or spin.
inline void set_worker_policy(const WorkerPolicy& policy) {
  if (policy.idle_timeout < std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("worker idle_timeout must not be negative");
  }
  if (policy.spin < std::chrono::microseconds::zero()) {
    throw std::invalid_argument("worker spin must not be negative");
  }
  detail::spin_ns().store(std::chrono::nanoseconds(std::min(policy.spin, detail::longest_spin)).count(),
                          std::memory_order_relaxed);
  detail::worker_pool::instance().set_limits(policy.max_idle, policy.idle_timeout);
}

/// Number of restored workers waiting for work.
[[nodiscard]] inline std::size_t idle_workers() { return detail::worker_pool::instance().idle_count(); }

/// Ends every idle worker now and joins its thread, e.g. when an application
/// wants its thread count back to what it was. (A child of fork() starts with
/// an empty pool on its own.)
inline void retire_idle_workers() { detail::worker_pool::instance().retire_idle(); }

}  // namespace gonso

// gonso: the dedicated threads behind Set::run, and how many of them to keep.
// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstddef>
#include <stdexcept>

#include <gonso/detail/worker_pool.hpp>

namespace gonso {

/// How many restored worker threads gonso keeps for reuse, and for how long.
/// A worker is kept only after a run with restore that brought it back to its
/// original namespaces; everything else ends its thread.
struct WorkerPolicy {
  /// Most idle workers kept at once; 0 keeps none (every run gets a new thread).
  /// Default: the larger of 4 and the number of CPUs.
  std::size_t max_idle = detail::default_max_idle();
  /// An idle worker ends after this long without work; 0 keeps none. Longer
  /// than a year counts as a year. Default: 10 s.
  std::chrono::milliseconds idle_timeout = detail::default_idle_timeout;
};

/// The policy in force.
[[nodiscard]] inline WorkerPolicy worker_policy() {
  auto& pool = detail::worker_pool::instance();
  return {pool.max_idle(), pool.idle_timeout()};
}

/// Changes the policy for later runs; idle workers beyond the new max_idle end
/// at once (oldest first). Workers already waiting keep their current timeout
/// until they next wake. Throws std::invalid_argument for a negative timeout.
inline void set_worker_policy(const WorkerPolicy& policy) {
  if (policy.idle_timeout < std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("worker idle_timeout must not be negative");
  }
  detail::worker_pool::instance().set_limits(policy.max_idle, policy.idle_timeout);
}

/// Number of restored workers waiting for work.
[[nodiscard]] inline std::size_t idle_workers() { return detail::worker_pool::instance().idle_count(); }

/// Ends every idle worker now and joins its thread, e.g. when an application
/// wants its thread count back to what it was. (A child of fork() starts with
/// an empty pool on its own.)
inline void retire_idle_workers() { detail::worker_pool::instance().retire_idle(); }

}  // namespace gonso

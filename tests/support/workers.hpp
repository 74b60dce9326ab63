// The worker pool tests' tools: a guard that saves the worker policy and
// retires idle workers on the way in and out, how many threads gonso runs
// while workers are idle, and what a run saw of the worker it ran on.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include <gonso/set.hpp>
#include <gonso/workers.hpp>

#include "kernel_view.hpp"
#include "poll.hpp"

namespace test {

/// Saves the worker policy and retires idle workers; on the way out, whatever
/// the test did, retires them again and puts the policy back.
class PoolGuard {
 public:
  PoolGuard() : saved_(gonso::worker_policy()) { gonso::retire_idle_workers(); }
  PoolGuard(const PoolGuard&) = delete;
  PoolGuard& operator=(const PoolGuard&) = delete;
  ~PoolGuard() {
    gonso::retire_idle_workers();
    try {
      gonso::set_worker_policy(saved_);
    } catch (...) {  // a destructor never throws; the saved policy was valid anyway
    }
  }

 private:
  gonso::WorkerPolicy saved_;
};

/// An idle timeout no test waits for: workers stay until retired.
inline constexpr auto long_timeout = std::chrono::milliseconds(std::chrono::minutes(10));

/// Threads gonso runs while `idle` workers wait: each worker, plus the anchor
/// that holds the process's namespaces for them to return to, which lives as
/// long as any worker does.
inline std::size_t with_workers(std::size_t baseline, std::size_t idle) { return baseline + idle + (idle > 0 ? 1 : 0); }

/// What a callable saw of the worker it ran on.
struct Seen {
  pid_t tid = 0;
  gonso::Identity id;
};

/// A restoring run in `set` that reports its worker and namespace of `kind`.
inline Seen seen_in(const gonso::Set& set, gonso::Kind kind) {
  return set.run(true, [kind] { return Seen{tid(), thread_ns(kind)}; });
}

}  // namespace test

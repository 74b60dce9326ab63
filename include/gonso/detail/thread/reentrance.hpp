// gonso: what the calling thread is inside of, so that a call that would wait
// for itself (an Executor run from its own callable, a Pool used from its own
// hook) fails at once instead of deadlocking.
// SPDX-License-Identifier: MIT
#pragma once

namespace gonso::detail {

/// The Executors whose runs led to the calling thread's code: the run in
/// progress on this thread, and the ones that wait for it, through every
/// thread in between. A run of one of them from here would wait for itself.
struct executor_chain {
  const void* executor;
  const executor_chain* caller;
};
inline thread_local const executor_chain* executor_calls = nullptr;

[[nodiscard]] inline bool called_from(const void* executor) noexcept {
  for (const executor_chain* link = executor_calls; link != nullptr; link = link->caller) {
    if (link->executor == executor) return true;
  }
  return false;
}

/// The Pool whose after_create hook the calling thread (or child process) runs.
inline thread_local const void* pool_in_hook = nullptr;

}  // namespace gonso::detail

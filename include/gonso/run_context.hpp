// gonso: what a callable run inside a Set can ask of its thread.
// SPDX-License-Identifier: MIT
#pragma once

#include <sys/types.h>

#include <gonso/detail/fwd.hpp>
#include <gonso/kind.hpp>

namespace gonso {

class Set;

/// Passed to a callable that takes a `gonso::RunContext&` as its only
/// parameter. Go gonso lets the function vote against reusing its thread by
/// returning false; in C++ the return value is the callable's result, so the
/// vote is a call instead:
///
///     set.run(true, [](gonso::RunContext& ctx) {
///       if (!tidy_up()) ctx.discard_thread();  // never reuse this thread
///       return 42;
///     });
class RunContext {
 public:
  RunContext(const RunContext&) = delete;
  RunContext& operator=(const RunContext&) = delete;
  ~RunContext() = default;

  /// The worker thread exits after this run instead of being restored and
  /// reused. Use it after changing thread state gonso cannot see or undo
  /// (unshare(CLONE_FS), capabilities, signal mask, thread-local state).
  void discard_thread() noexcept { discard_ = true; }

  /// True when the thread will be restored and reused after the callable
  /// returns: restore was asked for and nothing has discarded the thread yet.
  /// The restore itself may still fail, which discards the thread.
  [[nodiscard]] bool will_restore() const noexcept { return restore_ && !discard_; }

  /// The namespaces of `kinds` of the thread that called run (or
  /// Executor::run) and waits for this callable: CNI's `hostNS`, so that a
  /// callable configuring a container's network can reach back for the
  /// caller's side, e.g. to move one end of a veth pair there. Opened when
  /// asked, through the worker's own procfs, so a mount namespace the worker
  /// joined does not change the answer; held by fd, so the Set stays valid
  /// after the run. Defined in set.hpp. Throws std::system_error when a
  /// namespace cannot be opened (ENOENT when /proc shows another pid
  /// namespace than the process's own, which numbers threads differently).
  [[nodiscard]] Set host(Kinds kinds = default_kinds) const;

 private:
  friend class detail::worker;
  explicit RunContext(bool restore) noexcept : restore_(restore) {}

  bool restore_;
  bool discard_ = false;
  // For host(): the thread waiting in run(), found beside the worker's own
  // /proc/thread-self/ns (detail::worker_ns_dir).
  pid_t caller_tid_ = -1;
};

}  // namespace gonso

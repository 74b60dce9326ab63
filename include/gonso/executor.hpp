// gonso: a thread that lives inside one Set and runs callables there.
// SPDX-License-Identifier: MIT
#pragma once

#include <memory>
#include <mutex>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include <gonso/detail/anchor.hpp>
#include <gonso/detail/worker_pool.hpp>
#include <gonso/run_context.hpp>
#include <gonso/set.hpp>

namespace gonso {

/// Options of an Executor.
struct ExecutorOptions {
  /// After each callable, rejoin the Set through the anchor's pidfd and check
  /// root, cwd and time_for_children (below): about 2-3 us a run on a small
  /// VM. false skips both, for callables that never call unshare(2),
  /// setns(2) or chdir(2) on their thread: a callable that does moves every
  /// later one. RunContext::discard_thread() works either way.
  bool verify_each_run = true;
};

/// A dedicated thread that joins a Set once and stays inside it, for code
/// that works in one container's namespaces again and again (an agent
/// polling a container's network, a CNI plugin configuring interfaces).
/// Set::run joins and leaves the Set on every call; an Executor does not,
/// so a run costs the hand-off to its thread and back, and one setns(2)
/// that pins the thread to the Set after each callable (below).
///
/// Runs happen one at a time, in the order callers take the executor's
/// lock; run() may be called from many threads at once. The destructor
/// waits for the run in progress, then joins the thread. The calling
/// thread never changes namespace.
///
/// After each callable the thread rejoins the Set's cgroup, ipc, net, pid
/// and uts namespaces in one setns(2) on the pidfd of a second, sleeping
/// thread that holds the Set (whatever the callable did to its own), and the
/// caller checks that the callable did not give the thread root and cwd of
/// its own or a time namespace for its children. A thread that fails this,
/// or whose callable called RunContext::discard_thread(), ends; the next
/// run starts a fresh one in the Set.
class Executor {
 public:
  /// Starts the threads and joins `set`. Throws std::logic_error for an empty
  /// Set; std::system_error(EINVAL) when it holds a user or time namespace
  /// other than the process's own (a thread cannot join one: use
  /// Set::run_in_process); std::system_error naming the kind when joining
  /// fails, e.g. EPERM without CAP_SYS_ADMIN.
  explicit Executor(const Set& set, ExecutorOptions options = {}) : state_(std::make_unique<state>(set, options)) {
    std::lock_guard lock(state_->mutex);
    state_->start();
  }
  Executor(Executor&&) noexcept = default;
  Executor& operator=(Executor&&) noexcept = default;
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;
  ~Executor() = default;  // the worker joins first, then the anchor

  /// Runs `fn` (taking nothing or a gonso::RunContext&) on the executor's
  /// thread, inside the Set, and returns its value or rethrows its
  /// exception. Throws std::logic_error on a moved-from Executor, and
  /// std::system_error when a fresh thread cannot rejoin the Set.
  template <typename F>
  auto run(F&& fn) const -> detail::run_result_t<F> {
    using R = detail::run_result_t<F>;
    static_assert(!std::is_reference_v<R>,
                  "gonso::Executor::run: the callable must return by value; its result crosses threads");
    if (!state_) throw std::logic_error("cannot run on a moved-from gonso::Executor");
    std::lock_guard lock(state_->mutex);
    if (!state_->worker) state_->start();
    detail::run_job<F, R> job(nullptr, {}, /*restoring=*/true, std::forward<F>(fn));
    job.verify = state_->options.verify_each_run;
    if (!state_->worker->execute(job)) state_->worker.reset();  // left the Set: join it now
    return job.take();
  }

  /// The Set the executor runs in.
  [[nodiscard]] const Set& set() const {
    if (!state_) throw std::logic_error("a moved-from gonso::Executor has no Set");
    return state_->set;
  }

 private:
  // Behind a pointer: the threads point at it, and the Executor moves.
  struct state {
    state(const Set& s, ExecutorOptions o) : set(s), options(o) {
      if (set.empty()) throw std::logic_error("cannot run an executor in an empty Set (moved-from, or no kinds)");
      detail::require_own(Kind::user, set.kinds_, set.ns_, nullptr);
      detail::require_own(Kind::time, set.kinds_, set.ns_, nullptr);
      anchor = std::make_shared<const detail::anchor>(&set.ns_, set.kinds_);
    }

    // A new worker, settled in the Set for good.
    void start() {
      auto fresh = std::make_unique<detail::worker>(nullptr, nullptr);
      auto settle = [&] { fresh->settle(set.ns_, set.kinds_, anchor); };
      detail::run_job<decltype(settle)&, void> job(nullptr, {}, /*restoring=*/true, settle);
      const bool settled = fresh->execute(job);
      job.take();  // the join's exception, if any
      if (!settled) throw detail::system_error(EAGAIN, "cannot settle an executor thread in {}", set);
      worker = std::move(fresh);
    }

    const Set set;
    const ExecutorOptions options;
    std::shared_ptr<const detail::anchor> anchor;
    std::mutex mutex;                        // one run at a time
    std::unique_ptr<detail::worker> worker;  // null after its thread ended
  };

  std::unique_ptr<state> state_;
};

}  // namespace gonso

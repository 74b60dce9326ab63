// gonso: a thread that lives inside one Set and runs callables there.
// SPDX-License-Identifier: MIT
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include <gonso/detail/set_access.hpp>
#include <gonso/detail/thread/anchor.hpp>
#include <gonso/detail/thread/reentrance.hpp>
#include <gonso/detail/thread/worker_pool.hpp>
#include <gonso/options.hpp>
#include <gonso/run_context.hpp>
#include <gonso/set.hpp>

namespace gonso {

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
  /// Joins the worker, then the anchor. Called from one of its own callables
  /// (or from code a callable of it waits for), it leaves that to the run in
  /// progress, which ends the threads once its callable has returned.
  ~Executor() {
    if (state_ && detail::called_from(state_.get())) {
      state_->orphaned = true;
      (void)state_.release();  // deleted by run(), see there
    }
  }

  /// Runs `fn` (taking nothing or a gonso::RunContext&) on the executor's
  /// thread, inside the Set, and returns its value or rethrows its
  /// exception. Throws std::logic_error on a moved-from Executor, and when
  /// called from one of its own callables, directly or through runs of
  /// other Executors (it would wait for itself); std::system_error when a
  /// fresh thread cannot rejoin the Set.
  template <typename F>
  auto run(F&& fn) const -> detail::run_result_t<F> {
    using R = detail::run_result_t<F>;
    static_assert(!std::is_reference_v<R>,
                  "gonso::Executor::run: the callable must return by value; its result crosses threads");
    if (!state_) throw std::logic_error("cannot run on a moved-from gonso::Executor");
    // The callable may destroy or move this Executor: from here on only `st`.
    state* const st = state_.get();
    if (detail::called_from(st)) {
      throw std::logic_error(
          "cannot run on a gonso::Executor from one of its own callables: the run would wait for itself");
    }
    const detail::executor_chain link{st, detail::executor_calls};
    auto inside = [&](RunContext& ctx) -> R {
      const chain_guard guard(&link);
      if constexpr (detail::takes_context<F>) {
        return std::invoke(std::forward<F>(fn), ctx);
      } else {
        return std::invoke(std::forward<F>(fn));
      }
    };
    detail::run_job<decltype(inside)&, R> job(nullptr, {}, /*restoring=*/true, inside);
    {
      std::lock_guard lock(st->mutex);
      if (!st->worker) st->start();
      job.verify = st->options.verify_each_run;
      if (!st->worker->execute(job)) st->worker.reset();  // left the Set: join it now
    }
    if (st->orphaned) delete st;  // NOLINT(cppcoreguidelines-owning-memory): released by ~Executor
    return job.take();
  }

  /// The Set the executor runs in.
  [[nodiscard]] const Set& set() const {
    if (!state_) throw std::logic_error("a moved-from gonso::Executor has no Set");
    return state_->set;
  }

 private:
  // Puts a run's link on the executor thread's chain while its callable runs.
  struct chain_guard {
    explicit chain_guard(const detail::executor_chain* link) noexcept
        : previous(std::exchange(detail::executor_calls, link)) {}
    chain_guard(const chain_guard&) = delete;
    chain_guard& operator=(const chain_guard&) = delete;
    ~chain_guard() { detail::executor_calls = previous; }
    const detail::executor_chain* previous;
  };

  // Behind a pointer: the threads point at it, and the Executor moves.
  struct state {
    state(const Set& s, ExecutorOptions o) : set(s), options(o) {
      if (set.empty()) throw std::logic_error("cannot run an executor in an empty Set (moved-from, or no kinds)");
      detail::require_own(Kind::user, set.kinds(), detail::set_access::handles(set), nullptr);
      detail::require_own(Kind::time, set.kinds(), detail::set_access::handles(set), nullptr);
      anchor = std::make_shared<const detail::anchor>(&detail::set_access::handles(set), set.kinds());
    }

    // A new worker, settled in the Set for good.
    void start() {
      std::unique_ptr<detail::worker> fresh;
      try {
        fresh = std::make_unique<detail::worker>(nullptr, nullptr);
      } catch (const std::system_error& e) {
        detail::throw_cannot_start_thread(e.code().value(), fmt::format("an executor thread for {}", set));
      }
      auto settle = [&] { fresh->settle(detail::set_access::handles(set), set.kinds(), anchor); };
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
    bool orphaned = false;                   // its Executor was destroyed by a callable of its own
  };

  std::unique_ptr<state> state_;
};

}  // namespace gonso

// gonso: a run of a callable on a worker thread (Set::run): the job on the
// caller's stack, and the hand-off to a pooled or fresh worker.
// SPDX-License-Identifier: MIT
#pragma once

#include <cxxabi.h>

#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/thread/worker_pool.hpp>
#include <gonso/kind.hpp>
#include <gonso/run_context.hpp>

namespace gonso::detail {

template <typename F>
inline constexpr bool takes_context = std::is_invocable_v<F&&, RunContext&>;

template <typename F>
using run_result_t =
    typename std::conditional_t<takes_context<F>, std::invoke_result<F&&, RunContext&>, std::invoke_result<F&&>>::type;

/// A run's callable and the place for its outcome, on the caller's stack.
template <typename F, typename R>
class run_job final : public job {
 public:
  run_job(const ns_handles* into, Kinds joining, bool restoring, F&& fn) noexcept
      : job(into, joining, restoring), fn_(std::addressof(fn)) {
    if constexpr (takes_context<F>) caller_tid = this_tid();
  }

  GONSO_CATCHES_FORCED_UNWIND void invoke(RunContext& ctx) override {
    try {
      if constexpr (std::is_void_v<R>) {
        call(ctx);
      } else {
        value_.emplace(call(ctx));
      }
    } catch (abi::__forced_unwind&) {
      throw;  // pthread_exit or cancellation: the worker ends its thread (worker::perform)
    } catch (...) {
      error = std::current_exception();
    }
  }

  /// The callable's value, or its exception (or the join's) rethrown.
  R take() {
    if (error) std::rethrow_exception(error);
    if constexpr (!std::is_void_v<R>) return std::move(*value_);
  }

 private:
  decltype(auto) call(RunContext& ctx) {
    if constexpr (takes_context<F>) {
      return std::invoke(std::forward<F>(*fn_), ctx);
    } else {
      return std::invoke(std::forward<F>(*fn_));
    }
  }

  std::remove_reference_t<F>* fn_;
  std::optional<std::conditional_t<std::is_void_v<R>, bool, R>> value_;
};

/// Set::run's engine: runs `fn` in `kinds` of `ns` on a worker (a kept one
/// when `restore`, a fresh one ended after otherwise), and hands back its
/// value or exception. `pidfd`, when not -1, lets the worker join several
/// kinds with one setns(2).
template <typename F>
auto run_on_worker(const ns_handles& ns, Kinds kinds, int pidfd, bool restore, F&& fn) -> run_result_t<F> {
  using R = run_result_t<F>;
  auto& pool = worker_pool::instance();
  if (kinds.contains(Kind::user) || kinds.contains(Kind::time)) {
    const std::shared_ptr<const anchor> home = pool.current_home();
    require_own(Kind::user, kinds, ns, home.get());
    require_own(Kind::time, kinds, ns, home.get());
  }
  run_job<F, R> job(&ns, kinds, restore, std::forward<F>(fn));
  if (pidfd >= 0) job.pidfd = pidfd;
  const Identity* mnt = kinds.contains(Kind::mnt) ? &ns[index_of(Kind::mnt)].id : nullptr;
  std::unique_ptr<worker> runner = restore ? pool.acquire(mnt) : pool.spawn();
  job.wants_umask = runner->fs_private();
  if (runner->execute(job)) {
    pool.release(std::move(runner));
  } else if (!restore) {
    pool.bury(std::move(runner));  // it ends on its own; joined later, without making us wait
  } else {
    pool.discard(std::move(runner));  // it could not go home
  }
  return job.take();
}

}  // namespace gonso::detail

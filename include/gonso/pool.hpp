// gonso: a pool of ready, pre-created Sets that hides namespace creation cost.
// SPDX-License-Identifier: MIT
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/ns/kinds.hpp>
#include <gonso/detail/set_access.hpp>
#include <gonso/detail/thread/reentrance.hpp>
#include <gonso/kind.hpp>
#include <gonso/options.hpp>
#include <gonso/set.hpp>

namespace gonso {

/// Keeps `size` Sets with fresh namespaces ready, so that taking one costs a
/// lock and a move instead of a namespace creation (~190 us for a network
/// namespace, milliseconds when a child process has to make user, pid or
/// time namespaces). A background thread makes new ones as Sets are taken:
/// it sleeps while more than half of `size` are ready, and once woken tops
/// the pool up to `size` again, so that most get()s pay no wake-up.
///
/// Every Set is base.unshare(kinds, options.unshare), followed by
/// options.after_create inside it: fresh namespaces of `kinds`, the base's
/// namespaces of every other kind it holds.
///
/// All member functions but the destructor may be called from many threads
/// at once. The refill thread makes Sets through Set::unshare and Set::run,
/// so it uses gonso's worker threads too (workers.hpp). A Pool is not usable
/// in a child of fork(): its refill thread does not exist there.
class Pool {
 public:
  /// Makes the first Set on the calling thread, then starts the refill thread,
  /// which makes the rest. Making the first one here means that a pool that
  /// can never work (no privilege, options that do not fit `kinds`, a hook
  /// that always throws) fails now, in the caller, instead of in every get().
  ///
  /// Throws std::invalid_argument for empty `kinds`, options.size 0, or a
  /// retry delay that is not positive or exceeds max_retry_delay;
  /// std::logic_error for an empty `base`; and whatever making the first Set
  /// throws: Set::unshare's std::system_error (e.g. EPERM without
  /// CAP_SYS_ADMIN) or std::invalid_argument, or the hook's exception
  /// (gonso::ProcessError when it ran in a child process). Nothing is left
  /// behind then: no thread, fd or namespace.
  Pool(Set base, Kinds kinds, PoolOptions options = {})
      : state_(std::make_shared<state>(std::move(base), detail::checked(kinds, "Pool"), std::move(options))) {
    state& s = *state_;
    if (s.kinds.empty()) throw std::invalid_argument("cannot make a Pool: no namespace kinds given");
    if (s.options.size == 0) throw std::invalid_argument("cannot make a Pool of size 0: it would keep no Set ready");
    if (s.options.retry_delay <= std::chrono::milliseconds::zero() ||
        s.options.max_retry_delay < s.options.retry_delay) {
      throw std::invalid_argument(
          fmt::format("cannot make a Pool: retry_delay ({} ms) must be positive and at most max_retry_delay ({} ms)",
                      s.options.retry_delay.count(), s.options.max_retry_delay.count()));
    }
    if (s.base.empty()) throw std::logic_error("cannot make a Pool from an empty Set (moved-from, or with no kinds)");
    s.options.max_retry_delay = std::min(s.options.max_retry_delay, detail::longest_wait);
    s.options.retry_delay = std::min(s.options.retry_delay, s.options.max_retry_delay);
    s.ready.reserve(s.options.size);  // push_back never allocates, so never throws, under the lock
    s.ready.push_back(s.create());
    // The thread shares the state, so that it can outlive a Pool destroyed
    // from the hook it is waiting for.
    refill_ = std::jthread([shared = state_](const std::stop_token& stop) { shared->refill(stop); });
  }

  /// Stops the refill thread and joins it, then closes the ready Sets. When
  /// the thread is making a Set, this waits until it is made (a namespace
  /// creation cannot be interrupted), and that Set is dropped; a thread
  /// waiting out a retry delay stops at once. From the pool's own
  /// after_create hook, which the refill thread (or a get()) is waiting for,
  /// it does not wait: the Set being made is dropped, and the refill thread
  /// ends by itself once the hook returns, closing what the pool held.
  ~Pool() {
    refill_.request_stop();
    if (!refill_.joinable()) return;
    if (detail::pool_in_hook == state_.get()) {
      refill_.detach();  // joining would wait for this very hook
    } else {
      refill_.join();
    }
  }

  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  Pool(Pool&&) = delete;  // Sets handed out name this pool
  Pool& operator=(Pool&&) = delete;

  /// A ready Set, at once; the refill thread is woken when half the pool or
  /// less is left. When none
  /// is ready, makes one on the calling thread (hook included), which costs
  /// what Set::unshare costs: the pool never makes a caller wait for another
  /// thread.
  ///
  /// When making a Set in the background failed since the last get(), this
  /// get() rethrows that failure (std::system_error, or what the hook threw),
  /// once, and takes no Set; the next get() works as usual. Errors of the
  /// refill thread have nowhere else to go, and a pool that silently stops
  /// refilling would only show as slow get()s. The refill keeps trying, with
  /// growing delays. When making a Set on the calling thread fails, that
  /// exception propagates as is.
  [[nodiscard]] Set get() {
    refuse_from_hook("get() from");
    state& s = *state_;
    // Allocated first, so that nothing after taking a Set can throw.
    auto lease = std::make_shared<detail::pool_lease>(s.serial);
    std::unique_lock lock(s.mutex);
    if (s.error) {
      const std::exception_ptr error = std::exchange(s.error, nullptr);
      lock.unlock();
      std::rethrow_exception(error);
    }
    if (s.ready.empty()) {
      lock.unlock();
      const std::shared_ptr<state> keep = state_;  // the hook may destroy this Pool
      Set made = keep->create();
      detail::set_access::lease(made) = std::move(lease);
      return made;
    }
    Set set = std::move(s.ready.back());
    s.ready.pop_back();
    detail::set_access::lease(set) = std::move(lease);
    // Waking a thread that is busy anyway would cost a system call for nothing,
    // and waking a sleeping one costs more than the rest of get() (a futex
    // wake that crosses CPUs, 2-9 us on a small VM): only the get() that
    // leaves half the pool or less pays it, and the refill then tops the pool
    // up to full.
    const bool wake = s.refill_waiting && s.ready.size() <= s.options.size / 2;
    lock.unlock();
    if (wake) s.refill_wanted.notify_one();
    return set;
  }

  /// Hands a Set back for a later get(), which gets it as it is: put back only
  /// Sets left as fresh (e.g. taken and not used), since the hook does not
  /// run again. Returns true when the Set is kept. Only a Set that a get()
  /// of this pool handed out (or a copy of it) is kept, and only once per
  /// get(): the first put() of it, or of any of its copies, uses up its
  /// return, whether kept or not. So a namespace the pool did not make (the
  /// caller's own, a container's), a copy of a Set already back, or a Set of
  /// another pool (also one destroyed before this one was made) is never
  /// handed out as fresh, and no get() returns a namespace that an earlier
  /// get() handed out and nobody returned. It is also refused when its kinds
  /// or base namespaces are not the pool's, or when `size` are ready. A
  /// refused Set is dropped (closed) and false is returned.
  ///
  /// Throws std::invalid_argument for an empty Set: it is a caller's bug.
  bool put(Set set) {
    refuse_from_hook("put() into");
    if (set.empty()) throw std::invalid_argument("cannot put an empty Set (moved-from?) into a Pool");
    const std::shared_ptr<detail::pool_lease> lease = std::move(detail::set_access::lease(set));
    if (!lease || lease->pool != state_->serial || !lease->out.exchange(false)) return false;
    return state_->fits(set) && state_->offer(set);
  }

  /// How many Sets are ready now. Other threads may change it at any moment.
  [[nodiscard]] std::size_t size() const {
    std::lock_guard lock(state_->mutex);
    return state_->ready.size();
  }

  /// The kinds every Set from this pool has fresh namespaces of.
  [[nodiscard]] Kinds kinds() const noexcept { return state_->kinds; }

  /// Waits until options.size Sets are ready, e.g. before a burst of get()s
  /// or in tests, without polling. Returns true when they are, false when
  /// `timeout` passed first (longer than a year counts as a year). A refill
  /// that keeps failing does not end the wait early; get() reports it.
  [[nodiscard]] bool wait_ready(std::chrono::milliseconds timeout) const {
    refuse_from_hook("wait_ready() on");
    state& s = *state_;
    std::unique_lock lock(s.mutex);
    // A pool above half full has a sleeping refill (see get()): wake it.
    if (s.refill_waiting && s.ready.size() < s.options.size) s.refill_wanted.notify_one();
    return s.full.wait_for(lock, std::min(timeout, detail::longest_wait),
                           [&s] { return s.ready.size() >= s.options.size; });
  }

 private:
  // Everything the refill thread touches, shared with it.
  struct state {
    state(Set base_set, Kinds pool_kinds, PoolOptions pool_options)
        : base(std::move(base_set)), kinds(pool_kinds), options(std::move(pool_options)) {}

    // One new Set: the namespaces, then the hook inside them.
    [[nodiscard]] Set create() const {
      Set set = base.unshare(kinds, options.unshare);
      if (options.after_create) {
        const auto hook = [this] {
          const hook_guard guard(this);
          options.after_create();
        };
        // A thread can be in none of user, time or (for what it starts) pid.
        if (!(kinds & detail::process_only_kinds).empty() || !set.thread_joinable()) {
          set.run_in_process(hook);
        } else {
          set.run(true, hook);
        }
      }
      return set;
    }

    // Takes `set` when fewer than `size` are ready, and wakes wait_ready()
    // callers once the pool is full. A refused `set` is left to its owner,
    // to be closed outside the lock.
    bool offer(Set& set) {
      bool now_full = false;
      {
        std::lock_guard lock(mutex);
        if (ready.size() >= options.size) return false;
        ready.push_back(std::move(set));
        now_full = ready.size() == options.size;
      }
      if (now_full) full.notify_all();
      return true;
    }

    // Whether `set` could have come from create().
    [[nodiscard]] bool fits(const Set& set) const {
      if (set.kinds() != (base.kinds() | kinds)) return false;
      for (Kind kind : base.kinds()) {
        const bool same = set.identity(kind) == base.identity(kind);
        if (same == kinds.contains(kind)) return false;
      }
      return true;
    }

    void refill(const std::stop_token& stop) {
      std::chrono::milliseconds delay{0};
      for (;;) {
        {
          std::unique_lock lock(mutex);
          refill_waiting = true;
          (void)refill_wanted.wait(lock, stop, [this] { return ready.size() < options.size; });
          refill_waiting = false;
          // wait() returns the predicate, not whether stop was asked: a pool
          // being destroyed while not full would otherwise go on making Sets.
          if (stop.stop_requested()) return;
        }
        // Made without the lock, so that get() and put() never wait for it.
        std::optional<Set> made;
        std::exception_ptr failure;
        try {
          made.emplace(create());
        } catch (...) {
          failure = std::current_exception();
        }
        if (made) {
          delay = std::chrono::milliseconds::zero();
          // Full already when put() or a caller got there first; then, as when
          // stopping, `made` is dropped below, outside the lock.
          if (!stop.stop_requested()) (void)offer(*made);
          continue;
        }
        delay = delay == std::chrono::milliseconds::zero() ? options.retry_delay
                : delay >= options.max_retry_delay / 2     ? options.max_retry_delay
                                                           : delay * 2;
        std::unique_lock lock(mutex);
        error = failure;  // the latest failure: the one that says what is wrong now
        // Only a stop ends this wait early; get() does not shorten it.
        (void)refill_wanted.wait_until(lock, stop, std::chrono::steady_clock::now() + delay, [] { return false; });
        if (stop.stop_requested()) return;
      }
    }

    const Set base;
    const Kinds kinds;
    PoolOptions options;
    // Names this pool in the Sets it hands out; never reused, unlike an address.
    const std::uint64_t serial = next_serial();

    mutable std::mutex mutex;
    mutable std::condition_variable_any refill_wanted;  // the pool needs topping up, or stop was asked
    mutable std::condition_variable full;               // the pool became full
    std::vector<Set> ready;                             // taken from the back: the warmest first
    std::exception_ptr error;                           // the refill's latest failure, not yet reported
    bool refill_waiting = false;                        // the refill thread sleeps on refill_wanted
  };

  struct hook_guard {
    explicit hook_guard(const state* pool) noexcept : previous(std::exchange(detail::pool_in_hook, pool)) {}
    hook_guard(const hook_guard&) = delete;
    hook_guard& operator=(const hook_guard&) = delete;
    ~hook_guard() { detail::pool_in_hook = previous; }
    const void* previous;
  };

  static std::uint64_t next_serial() noexcept {
    static std::atomic<std::uint64_t> last{0};
    return last.fetch_add(1, std::memory_order_relaxed) + 1;
  }

  // The hook runs while the refill (or a get() on an empty pool) waits for
  // it: a get() from there could recurse without end, a wait_ready() would
  // wait for itself.
  void refuse_from_hook(const char* verb) const {
    if (detail::pool_in_hook == state_.get()) {
      throw std::logic_error(fmt::format("cannot {} a gonso::Pool from its own after_create hook", verb));
    }
  }

  std::shared_ptr<state> state_;
  std::jthread refill_;  // last: started after the state is complete
};

}  // namespace gonso

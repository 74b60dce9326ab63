// gonso: the pool that keeps restored worker threads for reuse.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/kcmp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cxxabi.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iterator>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/detail/thread/anchor.hpp>
#include <gonso/detail/thread/credentials.hpp>
#include <gonso/detail/thread/event.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>
#include <gonso/run_context.hpp>

#include <gonso/detail/thread/worker.hpp>

namespace gonso::detail {

/// Keeps restored workers for reuse, each for at most idle_timeout: as many
/// as runs are in flight (eight callers looping keep eight workers, instead
/// of ending and starting one on every run), and at most max_idle once no
/// run is. Workers are handed out last-in first-out, so a warm thread is
/// reused first and the cold ones time out.
class worker_pool {
 public:
  /// The process's pool. It is never destroyed, so that runs still in flight
  /// at exit, or started from static destructors, find it alive; at exit its
  /// idle workers are joined and no new ones are kept.
  [[nodiscard]] static worker_pool& instance() {
    static worker_pool* const pool = new worker_pool;  // NOLINT(cppcoreguidelines-owning-memory)
    return *pool;
  }

  worker_pool(const worker_pool&) = delete;
  worker_pool& operator=(const worker_pool&) = delete;
  ~worker_pool() = delete;

  /// The anchor of home if one lives now, else null.
  [[nodiscard]] std::shared_ptr<const anchor> current_home() {
    std::lock_guard lock(mutex_);
    return home_;
  }

  /// An idle worker with the caller's credentials, or a new one. `mnt`, for
  /// a run that joins a mount namespace, names it: a run into another mount
  /// namespace than home's takes a worker with root and cwd of its own
  /// (worker::fs_private) when one is idle, and every other run one that
  /// shares them with the process.
  [[nodiscard]] std::unique_ptr<worker> acquire(const Identity* mnt = nullptr) {
    std::vector<std::unique_ptr<worker>> ended;
    std::unique_ptr<worker> found;
    credentials mine = this_thread_credentials(worker_ns_dir, thread_token());
    {
      std::lock_guard lock(mutex_);
      take_ended(ended);
      drop_unfit_locked();
      const bool fs_private =
          mnt != nullptr && serves_fs_private_locked() && home_->ns()[index_of(Kind::mnt)].id != *mnt;
      const auto same = std::find_if(idle_.rbegin(), idle_.rend(), [&](const auto& w) {
        return w->fs_private() == fs_private && w->creds() == mine;
      });
      if (same != idle_.rend()) {
        found = std::move(*same);
        idle_.erase(std::next(same).base());
      }
      high_water_ = std::max(high_water_, ++in_flight_);
    }
    ended.clear();  // joins threads that ended long ago, outside the lock
    // A worker still checking its credentials after its last run is done
    // within microseconds: waiting beats starting a thread. One found unfit
    // ends by itself; it is joined here.
    if (found && await_verdict(*found) != worker::ready) found.reset();
    if (found) return found;
    try {
      return start_worker(false, std::move(mine));
    } catch (...) {
      std::lock_guard lock(mutex_);
      leave_flight();
      throw;
    }
  }

  /// A worker that will not be kept: it runs once, then ends.
  [[nodiscard]] std::unique_ptr<worker> spawn() {
    std::vector<std::unique_ptr<worker>> ended;
    {
      std::lock_guard lock(mutex_);
      take_ended(ended);
    }
    ended.clear();
    return start_worker(/*once=*/true);
  }

  /// Takes back a worker from acquire() that came home restored: keeps it
  /// while fewer than max_idle are idle, or while the pool's workers, idle
  /// and in flight, are no more than the most runs in flight at once; else
  /// ends it. Counting the
  /// peak rather than the runs in flight right now keeps a worker for a
  /// caller that is between two runs. The last run in flight trims the idle
  /// workers to max_idle and forgets the peak.
  void release(std::unique_ptr<worker> done) noexcept {
    std::lock_guard lock(mutex_);
    const std::size_t others_in_flight = in_flight_ > 0 ? in_flight_ - 1 : 0;
    const bool room = idle_.size() < max_idle_ || idle_.size() + others_in_flight < high_water_;
    const bool servable = !done->fs_private() || serves_fs_private_locked();
    if (closing_ || !keeps_workers() || done->fitness() == worker::unfit || !room || !servable) {
      bury_locked(std::move(done));
    } else {
      try {
        idle_.push_back(std::move(done));
      } catch (...) {  // out of memory: ending the thread is always safe
        bury_locked(std::move(done));
      }
    }
    leave_flight();
  }

  /// Takes back a worker from acquire() that must not run again (it could
  /// not go home): joins its thread now, so that it lingers nowhere.
  void discard(std::unique_ptr<worker> done) noexcept {
    {
      std::lock_guard lock(mutex_);
      leave_flight();
    }
    done.reset();
  }

  /// Takes a worker that ended, or is ending, its thread. It is joined later,
  /// so that the caller does not wait for the thread to exit.
  void bury(std::unique_ptr<worker> done) noexcept {
    std::lock_guard lock(mutex_);
    bury_locked(std::move(done));
  }

  /// Ends and joins every idle worker and every one that ended; with the
  /// last of them goes the anchor of home.
  void retire_idle() {
    std::vector<std::unique_ptr<worker>> idle;
    std::vector<std::unique_ptr<worker>> retired;
    std::shared_ptr<const anchor> home;
    {
      std::lock_guard lock(mutex_);
      idle.swap(idle_);
      retired.swap(retired_);
      home.swap(home_);
    }
  }

  /// The idle workers fit to serve, once those still checking their
  /// credentials have a verdict.
  [[nodiscard]] std::size_t idle_count() {
    for (int round = 0;; ++round) {
      {
        std::lock_guard lock(mutex_);
        drop_unfit_locked();
        const bool settled =
            std::none_of(idle_.begin(), idle_.end(), [](const auto& w) { return w->fitness() == worker::checking; });
        if (settled || round >= 100'000) return idle_.size();
      }
      ::sched_yield();
    }
  }

  void set_limits(std::size_t max_idle, std::chrono::milliseconds idle_timeout) {
    std::shared_ptr<const anchor> home;  // destroyed after `ending`, outside the lock
    std::vector<std::unique_ptr<worker>> ending;
    {
      std::lock_guard lock(mutex_);
      max_idle_ = max_idle;
      idle_timeout_ms_.store(std::min(idle_timeout, longest_wait).count(), std::memory_order_relaxed);
      if (!keeps_workers()) home.swap(home_);
      // The oldest idle workers go first; the warm ones stay.
      const auto excess = static_cast<std::ptrdiff_t>(idle_.size() - std::min(idle_.size(), max_idle_));
      std::move(idle_.begin(), idle_.begin() + excess, std::back_inserter(ending));
      idle_.erase(idle_.begin(), idle_.begin() + excess);
    }
  }

  [[nodiscard]] std::size_t max_idle() {
    std::lock_guard lock(mutex_);
    return max_idle_;
  }
  [[nodiscard]] std::chrono::milliseconds idle_timeout() const noexcept {
    return std::chrono::milliseconds(idle_timeout_ms_.load(std::memory_order_relaxed));
  }

 private:
  friend class worker;

  // Whether idle workers are kept at all; under mutex_ (max_idle_).
  [[nodiscard]] bool keeps_workers() const noexcept {
    return max_idle_ > 0 && idle_timeout() > std::chrono::milliseconds::zero();
  }

  // Under mutex_: whether workers with a filesystem context of their own
  // (worker::fs_private) are kept and handed out: only with a procfs to read
  // each caller's umask from.
  [[nodiscard]] bool serves_fs_private_locked() const noexcept { return home_ && home_->proc() >= 0; }

  // Under mutex_: moves the idle workers found unfit to retired_.
  void drop_unfit_locked() noexcept {
    for (auto it = idle_.begin(); it != idle_.end();) {
      if ((*it)->fitness() != worker::unfit) {
        ++it;
        continue;
      }
      bury_locked(std::move(*it));
      it = idle_.erase(it);
    }
  }

  // Waits, yielding, until `w` has checked its credentials.
  static worker::fitness_state await_verdict(const worker& w) noexcept {
    worker::fitness_state now = w.fitness();
    for (unsigned round = 1; now == worker::checking; ++round, now = w.fitness()) {
      if (round % 64 == 0) {
        ::sched_yield();
      } else {
        cpu_relax();
      }
    }
    return now;
  }

  // Under mutex_. Never below 0: a child of fork() starts with none in
  // flight, though the thread that forked may hold a worker of its parent's.
  // The last run to leave trims the idle workers to max_idle (the oldest
  // go first; the warm ones stay) and forgets the peak.
  void leave_flight() noexcept {
    if (in_flight_ > 0) --in_flight_;
    if (in_flight_ != 0) return;
    high_water_ = 0;
    while (idle_.size() > max_idle_) {
      bury_locked(std::move(idle_.front()));
      idle_.erase(idle_.begin());
    }
  }

  /// The newest ended workers, which may still be on their way out, are not
  /// joined yet: joining one would make the caller sleep until it has exited.
  /// The older ones have had a whole run's time to exit; joining them returns
  /// their stacks to libc's cache at once, for the next thread to reuse
  /// instead of mapping (and later unmapping, across CPUs) a new one.
  static constexpr std::size_t newest_unjoined = 1;

  worker_pool() {
    // The pool lives until the process ends; these hooks are registered once.
    std::atexit(at_exit);
    ::pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
  }

  [[nodiscard]] std::unique_ptr<worker> start_worker(bool once = false, credentials creds = {}) {
    try {
      return std::make_unique<worker>(this, home(), once, std::move(creds));
    } catch (const std::system_error& e) {
      throw_cannot_start_thread(e.code().value(), "a gonso worker thread");
    }
  }

  // The anchor of home: a thread in the process's own namespaces, made by
  // the first worker's creator. A creator that sits in other namespaces than
  // the main thread makes no anchor; its workers are never pooled.
  [[nodiscard]] std::shared_ptr<const anchor> home() {
    std::lock_guard lock(mutex_);
    if (closing_) return nullptr;
    if (home_) return home_;
    // A pool that keeps no thread keeps no anchor either: each worker holds
    // its own, which ends with it.
    auto made = std::make_shared<const anchor>();
    for (Kind kind : watched_kinds) {
      const ns_handle& mine = made->ns()[index_of(kind)];
      struct stat st {};
      const std::string main_thread = std::string("/proc/self/ns/") + thread_link(kind);
      if (mine.fd && ::stat(main_thread.c_str(), &st) == 0 &&
          (st.st_dev != mine.id.device || st.st_ino != mine.id.inode)) {
        return nullptr;
      }
    }
    if (keeps_workers()) home_ = made;
    return made;
  }

  void bury_locked(std::unique_ptr<worker> done) noexcept {
    done->end();  // one whose caller found it out of place is still waiting for work
    try {
      retired_.push_back(std::move(done));
    } catch (...) {  // out of memory: join it now instead
    }
  }

  // Hands the ended workers to the caller to join, but for the newest.
  void take_ended(std::vector<std::unique_ptr<worker>>& ended) {
    if (retired_.size() <= newest_unjoined) return;
    const auto older = static_cast<std::ptrdiff_t>(retired_.size() - newest_unjoined);
    std::move(retired_.begin(), retired_.begin() + older, std::back_inserter(ended));
    retired_.erase(retired_.begin(), retired_.begin() + older);
  }

  // Idle workers must not outlive main(): end them while the rest of the
  // program still exists, and keep no new ones.
  static void at_exit() noexcept {
    worker_pool& pool = instance();
    {
      std::lock_guard lock(pool.mutex_);
      pool.closing_ = true;
    }
    try {
      pool.retire_idle();
    } catch (...) {
    }
  }

  // A child of fork() has one thread, the one that forked: the workers and
  // the anchor the pool holds do not exist there. Hold the pool's lock across
  // fork() so the child gets consistent lists, then let the child forget
  // them. Their objects are leaked on purpose: destroying one would join a
  // thread that is not there.
  static void before_fork() noexcept { instance().mutex_.lock(); }
  static void after_fork_in_parent() noexcept { instance().mutex_.unlock(); }
  static void after_fork_in_child() noexcept {
    worker_pool& pool = instance();
    for (auto& w : pool.idle_) (void)w.release();
    for (auto& w : pool.retired_) (void)w.release();
    pool.idle_.clear();
    pool.retired_.clear();
    pool.in_flight_ = 0;  // the runs of other threads, which the child lacks
    pool.high_water_ = 0;
    if (pool.home_) {
      // Leaked by placement in static storage, never destroyed: no allocation
      // in a child of fork(). A later fork's child ends the lifetime of what
      // is there without destroying it either.
      alignas(std::shared_ptr<const anchor>) static std::byte grave[sizeof(std::shared_ptr<const anchor>)];
      ::new (static_cast<void*>(grave)) std::shared_ptr<const anchor>(std::move(pool.home_));
    }
    pool.mutex_.unlock();
  }

  /// Called by an idle worker whose timeout expired. True when the worker was
  /// idle here and now belongs to retired_: its thread must return at once.
  /// False when a caller has taken it (work is on its way), or when it is not
  /// back in the pool yet.
  bool retire_self(const worker& self) noexcept {
    std::lock_guard lock(mutex_);
    auto it = std::find_if(idle_.begin(), idle_.end(), [&](const auto& w) { return w.get() == &self; });
    if (it == idle_.end()) return false;
    try {
      retired_.push_back(std::move(*it));
    } catch (...) {
      return false;  // out of memory: stay idle, try again at the next timeout
    }
    idle_.erase(it);
    // The last idle worker gone: the pool has nothing left to anchor. Running
    // workers keep the anchor as long as they need it.
    if (idle_.empty()) home_.reset();
    return true;
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<worker>> idle_;     // back() is the most recently used
  std::vector<std::unique_ptr<worker>> retired_;  // ended; joined by the next acquire or spawn, or retire_idle
  // Kept while workers are idle or run once, and by each worker while it
  // lives: the anchor ends with the last of them.
  std::shared_ptr<const anchor> home_;
  std::size_t max_idle_ = default_max_idle();
  std::size_t in_flight_ = 0;   // workers given out by acquire() and not yet back
  std::size_t high_water_ = 0;  // most in flight at once since in_flight_ was last 0
  bool closing_ = false;
  std::atomic<long long> idle_timeout_ms_{default_idle_timeout.count()};
};

// May end in a forced unwind out of a callable (see perform): the thread
// then ends, its caller told.
inline void worker::loop() {
  try {
    start();
  } catch (...) {
    // Reported by every job: a worker that cannot see its own namespaces
    // cannot run anything safely.
    start_error_ = std::current_exception();
    fast_ = false;
    away_from_home_ = true;
  }
  while (!stop_.load(std::memory_order_relaxed)) {
    const auto timeout =
        pool_ != nullptr ? std::chrono::nanoseconds(pool_->idle_timeout()) : std::chrono::nanoseconds(-1);
    if (!work_.wait(spin_budget(), timeout)) {
      if (pool_->retire_self(*this)) return;  // the pool owns us now: touch nothing
      continue;
    }
    if (stop_.load(std::memory_order_relaxed)) return;
    if (!perform(*job_)) {
      // Never run anything else in a thread we could not restore. One whose
      // credentials changed may be idle in the pool already: it leaves it
      // (else the pool buries it when its caller releases it).
      if (fitness() == unfit) (void)pool_->retire_self(*this);
      return;
    }
  }
}

}  // namespace gonso::detail

// gonso: the threads that run callables inside Sets, and the pool that keeps
// restored ones for reuse.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/kcmp.h>
#include <pthread.h>
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

namespace gonso::detail {

/// The larger of 4 and the number of CPUs.
[[nodiscard]] inline std::size_t default_max_idle() noexcept {
  return std::max<std::size_t>(4, std::thread::hardware_concurrency());
}
inline constexpr std::chrono::milliseconds default_idle_timeout{10'000};
/// Longer timeouts, delays and waits (here and in Pool) are cut to this, so
/// that a deadline computed from them cannot overflow the clock.
inline constexpr std::chrono::milliseconds longest_wait{std::chrono::hours(24 * 365)};

/// How long threads waiting for each other spin before they sleep; set by
/// gonso::set_worker_policy.
inline std::atomic<long long>& spin_ns() noexcept {
  static std::atomic<long long> value{std::chrono::nanoseconds(default_spin).count()};
  return value;
}
[[nodiscard]] inline std::chrono::nanoseconds spin_budget() noexcept {
  return std::chrono::nanoseconds(spin_ns().load(std::memory_order_relaxed));
}

/// Throws std::system_error(EINVAL) unless the namespace `kinds` holds of
/// `kind` (user or time) is the calling thread's own. A thread of a
/// multithreaded process can join no other (the README's kernel rules), and every
/// thread of a process shares its user and time namespaces, so the caller's
/// are the ones a worker would have. `home`, when there is one, knows them
/// already: reading them from /proc costs more than the rest of a run.
inline void require_own(Kind kind, Kinds kinds, const ns_handles& target, const anchor* home) {
  if (!kinds.contains(kind)) return;
  const Identity& wanted = target[index_of(kind)].id;
  Identity own = home == nullptr ? Identity{} : kind == Kind::user ? home->user() : home->time();
  if (own.inode == 0) {
    // On a worker (a nested run) /proc may be another mount namespace's.
    const std::string own_link = std::string(worker_ns_dir >= 0 ? "" : "/proc/thread-self/ns/") + name(kind).data();
    if (const int err = stat_ns(worker_ns_dir >= 0 ? worker_ns_dir : AT_FDCWD, own_link.c_str(), kind, own); err != 0) {
      throw system_error(err, "cannot read this thread's {} namespace", kind);
    }
  }
  if (own == wanted) return;
  throw system_error(EINVAL,
                     "cannot join {} namespace {} on a thread: the kernel lets only a single-threaded process "
                     "join a {} namespace; use Set::run_in_process or gonso::spawn, which join in a child process",
                     kind, wanted, kind);
}

/// Throws std::system_error(err) for a thread that could not be started,
/// with the cause the kernel's errno stands for here.
[[noreturn]] inline void throw_cannot_start_thread(int err, std::string_view what) {
  std::string why;
  if (err == EAGAIN) {
    why = " (a limit on threads was reached: RLIMIT_NPROC, the pids cgroup's pids.max, or kernel.threads-max)";
  } else if (err == EINVAL) {
    // The kernel refuses a thread to a thread whose children go to another
    // pid or time namespace than its own, as inside Set::run of a Set
    // holding one.
    const int dir = worker_ns_dir >= 0 ? worker_ns_dir : AT_FDCWD;
    const char* prefix = worker_ns_dir >= 0 ? "" : "/proc/thread-self/ns/";
    for (const char* kind : {"pid", "time"}) {
      const ino_t own = read_ns_link(dir, (std::string(prefix) + kind).c_str());
      const ino_t children = read_ns_link(dir, (std::string(prefix) + kind + "_for_children").c_str());
      if (own != 0 && own != children) {
        why = fmt::format(
            " (this thread's children go to another {} namespace than its own, as inside Set::run of a Set "
            "holding one, and the kernel then lets it start no thread)",
            kind);
        break;
      }
    }
  }
  throw system_error(err, "cannot start {}{}", what, why);
}

/// Work handed to a worker: the namespaces to join and, behind invoke(), the
/// callable and the place for its result. Lives on the caller's stack for the
/// duration of one run.
class job {
 public:
  job(const ns_handles* into, Kinds joining, bool restoring) noexcept
      : target(into), kinds(joining), restore(restoring) {}
  job(const job&) = delete;
  job& operator=(const job&) = delete;

  /// Runs the callable and keeps its value or exception. Lets through only
  /// a forced unwind (pthread_exit, pthread_cancel), which must reach the
  /// thread's start: a catch (...) that ends it aborts the process.
  virtual void invoke(RunContext& ctx) = 0;

  /// The namespaces to join, or nullptr for none (an executor's worker is
  /// in its Set already).
  const ns_handles* const target;
  const Kinds kinds;
  const bool restore;
  /// A pidfd of a process in `target`'s namespaces (Set::from_pidfd), or -1.
  int pidfd = -1;
  /// False only for an Executor whose caller vouches that callables leave
  /// the thread's namespaces alone: no setns back home, no checks.
  bool verify = true;
  /// The callable's exception, or the join's; invoke() is not called when
  /// joining failed.
  std::exception_ptr error;

 protected:
  ~job() = default;
};

class worker_pool;

/// One dedicated thread with a home: the namespaces of its anchor, to which
/// it returns after every run that restores. A pool worker's home is the
/// process's own namespaces; an executor's worker makes a Set its home.
///
/// The hand-off both ways spins before it sleeps (detail::event), so runs in
/// quick succession cost little more than their setns(2) calls. After a run
/// the worker goes home with one setns on the anchor's pidfd, covering cgroup,
/// ipc, net, pid and uts whatever the callable did; meanwhile the caller checks
/// the two things that undoes not: that the worker still shares root and cwd
/// with the process (kcmp), which a callable that unshared CLONE_FS or a mount
/// namespace broke, and its time_for_children, which a thread cannot set back.
/// A worker that fails any of it ends.
class worker {
 public:
  /// Starts a thread in the caller's namespaces. With `home` (a pool
  /// worker), the thread returns to home's namespaces after each run, and
  /// is pooled only when it started there. `creds` are the creating
  /// thread's, read by the pool before it starts one it may keep (see
  /// worker_pool::acquire); a worker never pooled needs none.
  worker(worker_pool* pool, std::shared_ptr<const anchor> home, bool once = false, credentials creds = {})
      : pool_(pool), owner_(::getpid()), once_(once), creds_(std::move(creds)), home_(std::move(home)), thread_([this] {
          loop();
          // The last worker of a home ends its anchor too.
          home_.reset();
        }) {}
  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;
  ~worker() { end(); }  // then thread_, the first member destroyed, joins

  /// Asks the thread to end without waiting for it.
  void end() noexcept {
    stop_.store(true, std::memory_order_relaxed);
    work_.post();
  }

  /// Runs `work` on this worker's thread and waits until the thread is done
  /// with it, its return home included. Returns whether the worker may run
  /// again.
  [[nodiscard]] bool execute(job& work) {
    job_ = &work;
    work_.post();
    (void)done_.wait(spin_budget());
    if (!work.restore) return false;
    // The worker is on its way home; check what that does not undo meanwhile.
    const bool checked = !work.verify || !fast_ || still_in_place();
    (void)home_reached_.wait(spin_budget());
    return reusable_ && checked;
  }

  [[nodiscard]] const credentials& creds() const noexcept { return creds_; }

  /// Makes the worker's own namespaces, joined from `target`, its home for
  /// good: an executor's worker. Runs on the worker's thread through a job.
  void settle(const ns_handles& target, Kinds kinds, std::shared_ptr<const anchor> home);

 private:
  void loop();
  bool perform(job& work);
  void abandon(job& work) noexcept;
  void start();
  void arrive();
  void join(const job& work, Kinds& joined);
  [[nodiscard]] bool go_home(Kinds joined) noexcept;
  [[nodiscard]] bool restore_slowly(Kinds joined) noexcept;
  [[nodiscard]] bool still_in_place() const noexcept;
  [[nodiscard]] bool has_its_credentials() const noexcept;
  [[nodiscard]] Identity link_identity(Kind kind, dev_t device) const;
  [[nodiscard]] const Identity& home_id(Kind kind) const noexcept { return home_->ns()[index_of(kind)].id; }

  worker_pool* const pool_;  // null for an executor's worker, which is never pooled
  const pid_t owner_;        // the process the worker belongs to; a fork() child is another
  const bool once_;          // runs one job without restore, then ends
  // The creator's, which the thread inherits: only a caller with the same
  // may take it from the pool, or a caller without CAP_SYS_ADMIN would have
  // a privileged thread join for it. A pooled worker checks after each run
  // that it still has them (a callable can change its thread's).
  const credentials creds_;

  event work_;          // a job was posted, or stop asked
  event done_;          // the callable returned, or joining failed
  event home_reached_;  // back home after a restoring job, or given up
  std::atomic<bool> stop_{false};
  job* job_ = nullptr;     // published by work_
  bool reusable_ = false;  // published by home_reached_

  // Set by the worker's thread before it takes its first job, then read-only
  // until the thread ends.
  std::shared_ptr<const anchor> home_;
  pid_t home_tid_ = -1;                // for the caller's checks, which must not touch home_
  std::uint64_t home_time_inode_ = 0;  // 0: the kernel has no time namespaces
  std::exception_ptr start_error_;
  pid_t tid_ = -1;
  unique_fd ns_dir_;            // /proc/thread-self/ns of this thread, see worker_ns_dir
  ns_handles origin_{};         // where this thread started, for the slow path
  bool fast_ = false;           // goes home through the anchor's pidfd
  bool away_from_home_ = true;  // started elsewhere than home: never reused
  int home_flags_ = 0;          // CLONE_NEW* joined through the anchor's pidfd
  bool pid_by_fd_ = false;      // home's pid_for_children is not the anchor's active pid namespace
  bool joined_mnt_ = false;     // unshare(CLONE_FS) done: root and cwd are the thread's own

  std::jthread thread_;  // last, so that it starts after, and stops before, the rest
};

/// Keeps restored workers for reuse: at most max_idle of them, each for at
/// most idle_timeout. Workers are handed out last-in first-out, so a warm
/// thread is reused first and the cold ones time out.
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

  /// An idle worker with the caller's credentials, or a new one.
  [[nodiscard]] std::unique_ptr<worker> acquire() {
    std::vector<std::unique_ptr<worker>> ended;
    std::unique_ptr<worker> found;
    credentials mine = this_thread_credentials(worker_ns_dir, thread_token());
    {
      std::lock_guard lock(mutex_);
      take_ended(ended);
      const auto same = std::find_if(idle_.rbegin(), idle_.rend(), [&](const auto& w) { return w->creds() == mine; });
      if (same != idle_.rend()) {
        found = std::move(*same);
        idle_.erase(std::next(same).base());
      }
    }
    ended.clear();  // joins threads that ended long ago, outside the lock
    return found ? std::move(found) : start_worker(false, std::move(mine));
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

  /// Keeps a restored worker, or ends it when the pool keeps none or is full.
  void release(std::unique_ptr<worker> done) noexcept {
    std::lock_guard lock(mutex_);
    if (closing_ || !keeps_workers() || idle_.size() >= max_idle_) {
      bury_locked(std::move(done));
      return;
    }
    try {
      idle_.push_back(std::move(done));
    } catch (...) {  // out of memory: ending the thread is always safe
      bury_locked(std::move(done));
    }
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

  [[nodiscard]] std::size_t idle_count() {
    std::lock_guard lock(mutex_);
    return idle_.size();
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
    if (!perform(*job_)) return;  // never run anything else in a thread we could not restore
  }
}

GONSO_CATCHES_FORCED_UNWIND inline bool worker::perform(job& work) {
  RunContext ctx(work.restore);
  Kinds joined;
  try {
    if (start_error_) std::rethrow_exception(start_error_);
    join(work, joined);
    // Cancellation may act only inside the callable: at a cancellation
    // point of gonso's own (close, open) it would unwind through code that
    // cannot let it pass. One the callable asked for and left pending acts
    // here, before the next callable could be cancelled in its place.
    (void)::pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, nullptr);
    work.invoke(ctx);
    ::pthread_testcancel();
  } catch (abi::__forced_unwind&) {
    abandon(work);
    throw;
  } catch (...) {
    work.error = std::current_exception();
  }
  (void)::pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, nullptr);
  if (::getpid() != owner_) {
    // The callable forked and its child returned into gonso: the child has
    // no caller to report to, and must not run the parent's exit handlers.
    static constexpr char message[] =
        "gonso: a child forked inside Set::run returned from the callable; "
        "it must exec or _exit\n";
    (void)::write(STDERR_FILENO, message, sizeof message - 1);
    ::_exit(EXIT_FAILURE);
  }
  const bool restore = work.restore;
  const bool verify = work.verify;
  const bool wanted = ctx.will_restore() && !away_from_home_;
  if (!restore) {
    // Nobody looks at this thread again: let go of its fds before the caller
    // returns, so that the process is back to the fds it had.
    worker_ns_dir = -1;
    ns_dir_.reset();
  }
  // From here on `work` may be gone: the caller returns once done_ is
  // posted, unless it waits for home_reached_ too.
  done_.post();
  if (!restore) return false;
  reusable_ = wanted && (!verify || go_home(joined)) && (pool_ == nullptr || has_its_credentials());
  home_reached_.post();
  return reusable_;
}

// The callable ended its thread (pthread_exit, or a cancellation it let
// happen): tell the caller, who discards this worker, and let the unwind go
// on to the thread's start, where the thread ends.
inline void worker::abandon(job& work) noexcept {
  work.error = std::make_exception_ptr(system_error(
      ECANCELED, "the callable ended its gonso worker thread (pthread_exit or pthread_cancel); it returned no value"));
  const bool restore = work.restore;
  worker_ns_dir = -1;
  reusable_ = false;
  done_.post();  // `work` may be gone from here on
  if (restore) home_reached_.post();
}

// Once per thread, before it joins anything.
inline void worker::start() {
  (void)::pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, nullptr);  // see perform
  tid_ = this_tid();
  ns_dir_.reset(::open("/proc/thread-self/ns", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!ns_dir_) throw system_error(errno, "cannot open /proc/thread-self/ns");
  worker_ns_dir = ns_dir_.get();
  // No home yet: an executor's worker (settle() gives it one). One that
  // runs once never comes back, and needs to know nothing of where it is.
  if (home_ && !once_) arrive();
}

inline void worker::arrive() {
  origin_ = open_thread_ns(ns_dir_.get());
  home_tid_ = home_->tid();
  const ns_handle& time = home_->ns()[index_of(Kind::time)];
  home_time_inode_ = time.fd ? time.id.inode : 0;
  // Threads inherit their creator's namespaces. A worker created by a thread
  // that sits elsewhere than home must not carry that into the pool.
  away_from_home_ = false;
  for (Kind kind : watched_kinds) {
    if (origin_[index_of(kind)].id != home_id(kind)) away_from_home_ = true;
  }
  if (away_from_home_ || home_->pidfd() < 0) return;
  pid_by_fd_ = home_->ns()[index_of(Kind::pid)].fd && home_id(Kind::pid) != home_->active_pid();
  // With root and cwd of its own, the worker rejoins its home's mount
  // namespace through the pidfd too; that also puts root and cwd back.
  home_flags_ = static_cast<int>((pid_by_fd_ ? pidfd_kinds - Kind::pid : pidfd_kinds).clone_flags()) |
                (joined_mnt_ ? CLONE_NEWNS : 0);
  // Going home through the pidfd needs the privilege to join each of those
  // kinds, even where the thread is already; without it, go the slow way.
  fast_ = set_ns(home_->pidfd(), home_flags_) == 0;
}

inline void worker::settle(const ns_handles& target, Kinds kinds, std::shared_ptr<const anchor> home) {
  Kinds joined;
  join_kinds(
      target, kinds, [&](Kind kind) { return thread_ns_id(ns_dir_.get(), kind); }, joined, joined_mnt_);
  home_ = std::move(home);
  arrive();
}

inline Identity worker::link_identity(Kind kind, dev_t device) const {
  errno = 0;
  const ino_t inode = read_ns_link(ns_dir_.get(), thread_link(kind));
  if (inode == 0) throw system_error(errno != 0 ? errno : EINVAL, "cannot read this thread's {} namespace", kind);
  // Every namespace lives on the one nsfs: the device is the same.
  return Identity{kind, device, inode, 0};
}

inline void worker::join(const job& work, Kinds& joined) {
  if (work.target == nullptr) return;
  const ns_handles& target = *work.target;
  // A worker that runs once does not know where it is: where its creator
  // was, which only /proc can tell, at ~2 us a kind. When the Set holds
  // every kind the anchor's pidfd covers, each of them ends up as the Set's
  // whatever the start; going home first costs one setns and says where the
  // thread is.
  bool at_home = false;
  if (!origin_[index_of(Kind::net)].fd && home_ && home_->pidfd() >= 0 && work.kinds.contains(pidfd_kinds)) {
    at_home = set_ns(home_->pidfd(), pidfd_kinds.clone_flags()) == 0;
  }
  const auto here = [&](Kind kind) {
    if (!joined.contains(kind)) {
      // A pooled worker waits for work where it started: home.
      if (const ns_handle& origin = origin_[index_of(kind)]; origin.fd) return origin.id;
      if (at_home && pidfd_kinds.contains(kind)) return kind == Kind::pid ? home_->active_pid() : home_id(kind);
    }
    return link_identity(kind, target[index_of(kind)].id.device);
  };
  if (work.pidfd >= 0) {
    // One setns(2) on a pidfd joins several kinds at once (the README's kernel rules:
    // ~1.0 us for four kinds against ~2.9 us for four calls). Never mnt this
    // way: from a thread that shares its fs_struct it would move the root and
    // cwd of every thread. The process may have moved since the Set was
    // opened, or died: what did not land where the Set says is joined by fd
    // below.
    Kinds batch;
    for (Kind kind : thread_join_order) {
      if (kind != Kind::mnt && work.kinds.contains(kind) && here(kind) != target[index_of(kind)].id) batch |= kind;
    }
    if (batch.size() >= 2 && set_ns(work.pidfd, batch.clone_flags()) == 0) joined |= batch;
  }
  join_kinds(target, work.kinds, here, joined, joined_mnt_);
}

inline bool worker::go_home(Kinds joined) noexcept {
  if (joined_mnt_ && !(fast_ && (home_flags_ & CLONE_NEWNS) != 0)) return false;
  if (!fast_) return restore_slowly(joined);
  if (set_ns(home_->pidfd(), home_flags_) != 0) return false;
  if (pid_by_fd_ && set_ns(home_->ns()[index_of(Kind::pid)].fd.get(), CLONE_NEWPID) != 0) return false;
  return true;
}

// On the caller's thread, while the worker goes home: what setns on the
// anchor's pidfd does not undo.
inline bool worker::still_in_place() const noexcept {
  // Root and cwd are still the process's, which also means the mount
  // namespace is: unsharing one unshares them (the README's kernel rules, mount).
  // A worker that joined its home's mount namespace has root and cwd of its
  // own by design, and goes back to them through the pidfd.
  if (!joined_mnt_ && ::syscall(SYS_kcmp, tid_, home_tid_, KCMP_FS, 0UL, 0UL) != 0) return false;
  // time_for_children: no thread of a multithreaded process can set it back.
  if (home_time_inode_ == 0) return true;
  // The anchor holds its namespace open, so its inode number cannot have
  // been given to another.
  return read_ns_link(ns_dir_.get(), thread_link(Kind::time)) == home_time_inode_;
}

// On the worker's thread, back home: a callable may have changed its
// thread's credentials (raw setresuid, capset, prctl, a seccomp filter), and
// the next caller is matched to those the worker was started with.
inline bool worker::has_its_credentials() const noexcept {
  try {
    return this_thread_credentials(ns_dir_.get(), creds_.filter_origin) == creds_;
  } catch (...) {
    return false;  // out of memory: a worker that cannot tell is not kept
  }
}

inline bool worker::restore_slowly(Kinds joined) noexcept {
  if (away_from_home_ || joined_mnt_) return false;
  for (auto it = thread_join_order.rbegin(); it != thread_join_order.rend(); ++it) {
    if (!joined.contains(*it)) continue;
    const ns_handle& origin = origin_[index_of(*it)];
    if (!origin.fd || set_ns(origin.fd.get(), clone_flag(*it)) != 0) return false;
  }
  // The callable may have called unshare() or setns() itself: check every
  // kind, not only those joined, before the thread runs anything else.
  for (Kind kind : watched_kinds) {
    const ns_handle& origin = origin_[index_of(kind)];
    Identity now{};
    if (stat_ns(ns_dir_.get(), thread_link(kind), kind, now) != 0) {
      if (!origin.fd) continue;  // never had it (e.g. no time namespaces in this kernel)
      return false;
    }
    if (origin.fd && now == origin.id) continue;
    // mnt would need CLONE_FS unshared; time cannot be joined by a thread.
    if (!origin.fd || kind == Kind::mnt || kind == Kind::time) return false;
    if (set_ns(origin.fd.get(), clone_flag(kind)) != 0) return false;
  }
  return true;
}

}  // namespace gonso::detail

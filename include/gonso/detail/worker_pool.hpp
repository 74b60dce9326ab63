// gonso: the threads that run callables inside Sets, and the pool that keeps
// restored ones for reuse.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iterator>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <gonso/detail/error.hpp>
#include <gonso/detail/ns_file.hpp>
#include <gonso/detail/syscalls.hpp>
#include <gonso/detail/unique_fd.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>
#include <gonso/run_context.hpp>

namespace gonso::detail {

/// One namespace handle per kind, indexed by index_of(kind).
using ns_handles = std::array<ns_handle, all_kinds.size()>;

/// The order in which a thread joins. mnt comes last: joining it needs
/// unshare(CLONE_FS), which cannot be undone, so a failure in any other kind
/// leaves the thread still restorable. user and time are absent: a thread of
/// a multithreaded process can join neither (kernel-rules.md).
inline constexpr std::array<Kind, 6> join_order{Kind::cgroup, Kind::ipc, Kind::uts, Kind::net, Kind::pid, Kind::mnt};

/// The kinds whose state a thread carries and gonso checks after a restoring
/// run. user is absent because no thread of a multithreaded process can change it.
inline constexpr std::array<Kind, 7> watched_kinds{Kind::cgroup, Kind::ipc,  Kind::mnt, Kind::net,
                                                   Kind::pid,    Kind::time, Kind::uts};

/// The larger of 4 and the number of CPUs.
[[nodiscard]] inline std::size_t default_max_idle() noexcept {
  return std::max<std::size_t>(4, std::thread::hardware_concurrency());
}
inline constexpr std::chrono::milliseconds default_idle_timeout{10'000};
/// Longer timeouts are cut to this: the deadline must not overflow the clock.
inline constexpr std::chrono::milliseconds longest_idle_timeout{std::chrono::hours(24 * 365)};

/// The O_PATH fd of /proc/thread-self/ns of the calling worker thread, or -1
/// on any other thread. Opened before the worker joins anything, it keeps
/// naming this thread's namespaces through the host's procfs even while the
/// thread sits in a mount namespace with another /proc, or none.
inline thread_local int worker_ns_dir = -1;

/// Throws std::system_error(EINVAL) unless the namespace `kinds` holds of
/// `kind` (user or time) is the calling thread's own. A thread of a
/// multithreaded process can join no other (kernel-rules.md), and every
/// thread of a process shares its user and time namespaces, so the caller's
/// are the ones a worker would have.
inline void require_own(Kind kind, Kinds kinds, const ns_handles& target) {
  if (!kinds.contains(kind)) return;
  const Identity& wanted = target[index_of(kind)].id;
  // On a worker (a nested run) /proc may be another mount namespace's.
  const std::string own_link = std::string(worker_ns_dir >= 0 ? "" : "/proc/thread-self/ns/") + name(kind).data();
  Identity own{};
  if (const int err = stat_ns(worker_ns_dir >= 0 ? worker_ns_dir : AT_FDCWD, own_link.c_str(), kind, own); err != 0) {
    throw system_error(err, "cannot read this thread's {} namespace", kind);
  }
  if (own == wanted) return;
  throw system_error(EINVAL,
                     "cannot join {} namespace {} on a thread: the kernel lets only a single-threaded process "
                     "join a {} namespace; use Set::run_in_process or gonso::spawn, which join in a child process",
                     kind, wanted, kind);
}

/// Work handed to a worker: the namespaces to join and, behind invoke(), the
/// callable and the place for its result. Lives on the caller's stack for the
/// duration of one run.
class job {
 public:
  job(const ns_handles& into, Kinds joining, bool restoring) noexcept
      : target(into), kinds(joining), restore(restoring) {}
  job(const job&) = delete;
  job& operator=(const job&) = delete;

  /// Runs the callable and keeps its value or exception. Never throws.
  virtual void invoke(RunContext& ctx) noexcept = 0;

  const ns_handles& target;
  const Kinds kinds;
  const bool restore;
  /// A pidfd of a process in `target`'s namespaces (Set::from_pidfd), or -1.
  int pidfd = -1;
  /// The callable's exception, or the join's; invoke() is not called when
  /// joining failed.
  std::exception_ptr error;

 protected:
  ~job() = default;
};

class worker_pool;

/// One dedicated thread. A worker is in its original namespaces whenever it
/// waits for work; a run that cannot bring it back there ends the thread.
class worker {
 public:
  explicit worker(worker_pool& pool)
      : pool_(pool), owner_(::getpid()), thread_([this](const std::stop_token& stop) { loop(stop); }) {}
  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;
  ~worker() = default;  // thread_ is destroyed first: asks the loop to stop, then joins

  /// Runs `work` on this worker's thread and waits until the thread is done
  /// with it, restore included. Returns whether the worker may run again.
  [[nodiscard]] bool execute(job& work) {
    std::unique_lock lock(mutex_);
    job_ = &work;
    done_ = false;
    wake_.notify_one();
    finished_.wait(lock, [this] { return done_; });
    return reusable_;
  }

 private:
  void loop(const std::stop_token& stop);
  bool perform(job& work) noexcept;
  void open_self();
  void open_origin();
  [[nodiscard]] int identity_now(Kind kind, Identity& out) const noexcept;
  void join(const job& work, Kinds& joined);
  bool restore(Kinds joined) noexcept;

  worker_pool& pool_;
  const pid_t owner_;  // the process the worker belongs to; a fork() child is another

  std::mutex mutex_;
  std::condition_variable_any wake_;  // work posted, or stop asked
  std::condition_variable finished_;  // work done
  job* job_ = nullptr;
  bool done_ = false;
  bool reusable_ = false;

  // Touched by the worker's own thread only.
  unique_fd ns_dir_;     // /proc/thread-self/ns of this thread, see worker_ns_dir
  ns_handles origin_{};  // the namespaces this thread started in
  bool origin_open_ = false;
  bool fs_private_ = false;      // unshare(CLONE_FS) done: never restorable
  bool foreign_origin_ = false;  // started outside the process's namespaces

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

  /// An idle worker, or a new one.
  [[nodiscard]] std::unique_ptr<worker> acquire() {
    std::vector<std::unique_ptr<worker>> ended;
    std::unique_ptr<worker> found;
    {
      std::lock_guard lock(mutex_);
      ended.swap(retired_);
      if (!idle_.empty()) {
        found = std::move(idle_.back());
        idle_.pop_back();
      }
    }
    ended.clear();  // joins threads that timed out, outside the lock
    return found ? std::move(found) : start_worker();
  }

  /// A worker that will not be kept: it runs once, then ends.
  [[nodiscard]] std::unique_ptr<worker> spawn() {
    std::vector<std::unique_ptr<worker>> ended;
    {
      std::lock_guard lock(mutex_);
      ended.swap(retired_);
    }
    ended.clear();
    return start_worker();
  }

  /// Keeps a restored worker, or ends it when the pool keeps none or is full.
  void release(std::unique_ptr<worker> done) noexcept {
    std::lock_guard lock(mutex_);
    if (closing_ || idle_.size() >= max_idle_ || idle_timeout() == std::chrono::milliseconds::zero()) {
      return;  // `done` is joined when it goes out of scope, after the lock
    }
    try {
      idle_.push_back(std::move(done));
    } catch (...) {  // out of memory: ending the thread is always safe
    }
  }

  /// Ends and joins every idle worker and every one that timed out.
  void retire_idle() {
    std::vector<std::unique_ptr<worker>> idle;
    std::vector<std::unique_ptr<worker>> retired;
    {
      std::lock_guard lock(mutex_);
      idle.swap(idle_);
      retired.swap(retired_);
    }
  }

  [[nodiscard]] std::size_t idle_count() {
    std::lock_guard lock(mutex_);
    return idle_.size();
  }

  void set_limits(std::size_t max_idle, std::chrono::milliseconds idle_timeout) {
    std::vector<std::unique_ptr<worker>> ending;
    {
      std::lock_guard lock(mutex_);
      max_idle_ = max_idle;
      idle_timeout_ms_.store(std::min(idle_timeout, longest_idle_timeout).count(), std::memory_order_relaxed);
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

  worker_pool() {
    // The pool lives until the process ends; these hooks are registered once.
    std::atexit(at_exit);
    ::pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
  }

  [[nodiscard]] std::unique_ptr<worker> start_worker() {
    try {
      return std::make_unique<worker>(*this);
    } catch (const std::system_error& e) {
      throw system_error(e.code().value(),
                         "cannot start a gonso worker thread (a callable running in a pid or time "
                         "namespace cannot start threads)");
    }
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

  // A child of fork() has one thread, the one that forked: the workers the
  // pool holds do not exist there. Hold the pool's lock across fork() so the
  // child gets consistent lists, then let the child forget them. Their
  // objects are leaked on purpose: destroying one would join a thread that
  // is not there.
  static void before_fork() noexcept { instance().mutex_.lock(); }
  static void after_fork_in_parent() noexcept { instance().mutex_.unlock(); }
  static void after_fork_in_child() noexcept {
    worker_pool& pool = instance();
    for (auto& w : pool.idle_) (void)w.release();
    for (auto& w : pool.retired_) (void)w.release();
    pool.idle_.clear();
    pool.retired_.clear();
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
    return true;
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<worker>> idle_;     // back() is the most recently used
  std::vector<std::unique_ptr<worker>> retired_;  // timed out; joined by the next acquire or retire
  std::size_t max_idle_ = default_max_idle();
  bool closing_ = false;
  std::atomic<long long> idle_timeout_ms_{default_idle_timeout.count()};
};

inline void worker::loop(const std::stop_token& stop) {
  std::unique_lock lock(mutex_);
  while (!stop.stop_requested()) {
    if (!wake_.wait_for(lock, stop, pool_.idle_timeout(), [this] { return job_ != nullptr; })) {
      if (stop.stop_requested()) return;
      lock.unlock();
      if (pool_.retire_self(*this)) return;  // the pool owns us now: touch nothing
      lock.lock();
      continue;
    }
    job* work = job_;
    lock.unlock();
    const bool reusable = perform(*work);
    if (::getpid() != owner_) {
      // The callable forked and its child returned into gonso: the child has
      // no caller to report to, and must not run the parent's exit handlers.
      static constexpr char message[] =
          "gonso: a child forked inside Set::run returned from the callable; "
          "it must exec or _exit\n";
      (void)::write(STDERR_FILENO, message, sizeof message - 1);
      ::_exit(EXIT_FAILURE);
    }
    lock.lock();
    job_ = nullptr;
    done_ = true;
    reusable_ = reusable;
    finished_.notify_one();
    if (!reusable) return;  // never run anything else in a thread we could not restore
  }
}

inline bool worker::perform(job& work) noexcept {
  RunContext ctx(work.restore);
  Kinds joined;
  try {
    open_self();
    if (work.restore) open_origin();
    join(work, joined);
  } catch (...) {
    work.error = std::current_exception();
    return work.restore && restore(joined);
  }
  work.invoke(ctx);
  return ctx.will_restore() && restore(joined);
}

// Once per thread, before it joins anything.
inline void worker::open_self() {
  if (ns_dir_) return;
  ns_dir_.reset(::open("/proc/thread-self/ns", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!ns_dir_) throw system_error(errno, "cannot open /proc/thread-self/ns");
  worker_ns_dir = ns_dir_.get();
}

inline int worker::identity_now(Kind kind, Identity& out) const noexcept {
  return stat_ns(ns_dir_.get(), thread_link(kind), kind, out);
}

inline void worker::open_origin() {
  if (origin_open_) return;
  for (Kind kind : watched_kinds) {
    // A kernel without time namespaces, or pid_for_children not yet set up
    // (kernel-rules.md, pid), leaves that kind without an origin: joining it
    // is then allowed, restoring it is not.
    origin_[index_of(kind)] =
        open_ns(ns_dir_.get(), thread_link(kind), kind, std::string("this thread's ") + thread_link(kind),
                /*missing_ok=*/true);
  }
  origin_open_ = true;
  for (Kind kind : watched_kinds) {
    // Threads inherit their creator's namespaces. A worker created by a
    // thread that sits in some other namespace than the main thread's must
    // not carry it into the pool.
    const ns_handle& mine = origin_[index_of(kind)];
    const std::string main_thread = std::string("/proc/self/ns/") + thread_link(kind);
    struct stat st {};
    if (mine.fd && ::stat(main_thread.c_str(), &st) == 0 &&
        (st.st_dev != mine.id.device || st.st_ino != mine.id.inode)) {
      foreign_origin_ = true;
    }
  }
}

inline void worker::join(const job& work, Kinds& joined) {
  // Where the worker is now, for kinds of the job: a worker waiting for work
  // is always in its origin.
  const auto here = [&](Kind kind) {
    const ns_handle& origin = origin_[index_of(kind)];
    Identity id{};
    if (origin.fd && !joined.contains(kind)) return origin.id;
    if (const int err = identity_now(kind, id); err != 0) {
      throw system_error(err, "cannot read this thread's {} namespace", kind);
    }
    return id;
  };
  if (work.pidfd >= 0) {
    // One setns(2) on a pidfd joins several kinds at once (kernel-rules.md:
    // ~1.0 us for four kinds against ~2.9 us for four calls). Never mnt this
    // way: from a thread that shares its fs_struct it would move the root and
    // cwd of every thread. The process may have moved since the Set was
    // opened, or died: what did not land where the Set says is joined by fd
    // below.
    Kinds batch;
    for (Kind kind : join_order) {
      if (kind != Kind::mnt && work.kinds.contains(kind) && here(kind) != work.target[index_of(kind)].id) batch |= kind;
    }
    if (batch.size() >= 2 && set_ns(work.pidfd, batch.clone_flags()) == 0) joined |= batch;
  }
  for (Kind kind : join_order) {
    if (!work.kinds.contains(kind)) continue;
    const ns_handle& target = work.target[index_of(kind)];
    // Joining what the thread is in already is a no-op for most kinds but an
    // error for mnt without CLONE_FS: skip it.
    if (here(kind) == target.id) continue;
    if (kind == Kind::mnt && !fs_private_) {
      // setns(CLONE_NEWNS) is refused while the thread shares its root and cwd
      // with the process; unsharing them is one-way, so this thread is not
      // reused afterwards.
      if (const int err = unshare_ns(CLONE_FS); err != 0) {
        throw system_error(err, "cannot unshare filesystem attributes to join {}", target.id);
      }
      fs_private_ = true;
    }
    if (const int err = set_ns(target.fd.get(), clone_flag(kind)); err != 0) {
      throw system_error(err, "cannot join {} namespace {}", kind, target.id);
    }
    joined |= kind;
  }
}

inline bool worker::restore(Kinds joined) noexcept {
  if (!origin_open_ || fs_private_ || foreign_origin_) return false;
  for (auto it = join_order.rbegin(); it != join_order.rend(); ++it) {
    if (!joined.contains(*it)) continue;
    const ns_handle& origin = origin_[index_of(*it)];
    if (!origin.fd || set_ns(origin.fd.get(), clone_flag(*it)) != 0) return false;
  }
  // The callable may have called unshare() or setns() itself: check every
  // kind, not only those joined, before the thread runs anything else.
  for (Kind kind : watched_kinds) {
    const ns_handle& origin = origin_[index_of(kind)];
    Identity now{};
    if (identity_now(kind, now) != 0) {
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

// gonso: the threads that run callables inside Sets, and the pool that keeps
// restored ones for reuse.
// SPDX-License-Identifier: MIT
#pragma once

#include <pthread.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
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
  /// Set when joining failed; invoke() was then not called.
  std::exception_ptr error;

 protected:
  ~job() = default;
};

class worker_pool;

/// One dedicated thread. A worker is in its original namespaces whenever it
/// waits for work; a run that cannot bring it back there ends the thread.
class worker {
 public:
  explicit worker(worker_pool& pool) : pool_(pool), thread_([this](const std::stop_token& stop) { loop(stop); }) {}
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
  void open_origin();
  void join(const job& work, Kinds& joined);
  bool restore(Kinds joined) noexcept;

  worker_pool& pool_;

  std::mutex mutex_;
  std::condition_variable_any wake_;  // work posted, or stop asked
  std::condition_variable finished_;  // work done
  job* job_ = nullptr;
  bool done_ = false;
  bool reusable_ = false;

  // Touched by the worker's own thread only.
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
  [[nodiscard]] static worker_pool& instance() {
    static worker_pool pool;
    return pool;
  }

  worker_pool(const worker_pool&) = delete;
  worker_pool& operator=(const worker_pool&) = delete;
  ~worker_pool() {
    live_.store(nullptr);
    retire_idle();
  }

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
    return found ? std::move(found) : std::make_unique<worker>(*this);
  }

  /// A worker that must not be kept: run once, then exits.
  [[nodiscard]] std::unique_ptr<worker> spawn() { return std::make_unique<worker>(*this); }

  /// Keeps a restored worker, or ends it when max_idle are already kept.
  void release(std::unique_ptr<worker> done) noexcept {
    std::lock_guard lock(mutex_);
    if (idle_.size() >= max_idle_) return;  // `done` is joined when it goes out of scope
    try {
      idle_.push_back(std::move(done));
    } catch (...) {  // out of memory: ending the thread is always safe
    }
  }

  /// Ends and joins every idle worker and every one that timed out.
  void retire_idle() {
    std::vector<std::unique_ptr<worker>> ending;
    {
      std::lock_guard lock(mutex_);
      ending.swap(idle_);
      for (auto& w : retired_) ending.push_back(std::move(w));
      retired_.clear();
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
      idle_timeout_ms_.store(idle_timeout.count(), std::memory_order_relaxed);
      // The oldest idle workers go first; the warm ones stay.
      while (idle_.size() > max_idle_) {
        ending.push_back(std::move(idle_.front()));
        idle_.erase(idle_.begin());
      }
    }
  }

  [[nodiscard]] std::size_t max_idle() {
    std::lock_guard lock(mutex_);
    return max_idle_;
  }
  [[nodiscard]] std::chrono::milliseconds idle_timeout() const noexcept {
    return std::chrono::milliseconds(idle_timeout_ms_.load(std::memory_order_relaxed));
  }

  /// The process's own namespace of `kind` when gonso was first used, read
  /// from the main thread (/proc/self/ns), or nullptr if the kernel lacks it.
  [[nodiscard]] const Identity* baseline(Kind kind) const noexcept {
    const auto& id = baseline_[index_of(kind)];
    return id ? &*id : nullptr;
  }

 private:
  friend class worker;

  worker_pool() {
    for (Kind kind : all_kinds) {
      const std::string path = "/proc/self/ns/" + std::string(name(kind));
      struct stat st {};
      if (::stat(path.c_str(), &st) == 0) baseline_[index_of(kind)] = Identity{kind, st.st_dev, st.st_ino};
    }
    live_.store(this);
    static std::once_flag registered;
    std::call_once(registered, [] { ::pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child); });
  }

  // A child of fork() has one thread, the one that forked: the workers the
  // pool holds do not exist there. Hold the pool's lock across fork() so the
  // child gets consistent lists, then let the child forget them. Their
  // objects are leaked on purpose: destroying one would join a thread that
  // is not there.
  static void before_fork() noexcept {
    if (worker_pool* pool = live_.load()) pool->mutex_.lock();
  }
  static void after_fork_in_parent() noexcept {
    if (worker_pool* pool = live_.load()) pool->mutex_.unlock();
  }
  static void after_fork_in_child() noexcept {
    worker_pool* pool = live_.load();
    if (pool == nullptr) return;
    for (auto& w : pool->idle_) (void)w.release();
    for (auto& w : pool->retired_) (void)w.release();
    pool->idle_.clear();
    pool->retired_.clear();
    pool->mutex_.unlock();
  }

  /// Called by an idle worker whose timeout expired. True when the worker was
  /// idle here and now belongs to retired_: its thread must return at once.
  /// False when a caller took it meanwhile: work is on its way.
  bool retire_self(const worker& self) {
    std::lock_guard lock(mutex_);
    auto it = std::find_if(idle_.begin(), idle_.end(), [&](const auto& w) { return w.get() == &self; });
    if (it == idle_.end()) return false;
    retired_.push_back(std::move(*it));
    idle_.erase(it);
    return true;
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<worker>> idle_;     // back() is the most recently used
  std::vector<std::unique_ptr<worker>> retired_;  // timed out; joined by the next acquire or retire
  std::size_t max_idle_ = std::max<std::size_t>(4, std::thread::hardware_concurrency());
  std::atomic<long long> idle_timeout_ms_{10'000};
  std::array<std::optional<Identity>, all_kinds.size()> baseline_{};
  static inline std::atomic<worker_pool*> live_{nullptr};
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
    if (work.restore) open_origin();
    join(work, joined);
  } catch (...) {
    work.error = std::current_exception();
    return work.restore && restore(joined);
  }
  work.invoke(ctx);
  return ctx.will_restore() && restore(joined);
}

inline void worker::open_origin() {
  if (origin_open_) return;
  for (Kind kind : watched_kinds) {
    const std::string path = std::string("/proc/thread-self/ns/") + thread_link(kind);
    // A kernel without time namespaces, or pid_for_children not yet set up
    // (kernel-rules.md, pid), leaves that kind without an origin: joining it
    // is then allowed, restoring it is not.
    origin_[index_of(kind)] = open_ns(AT_FDCWD, path.c_str(), kind, path, /*missing_ok=*/true);
  }
  origin_open_ = true;
  for (Kind kind : watched_kinds) {
    const ns_handle& mine = origin_[index_of(kind)];
    const Identity* process = pool_.baseline(kind);
    // Threads inherit their creator's namespaces. A worker created by a
    // thread that sits in some other namespace would bring it into the pool.
    if (mine.fd && process != nullptr && mine.id != *process) foreign_origin_ = true;
  }
}

inline void worker::join(const job& work, Kinds& joined) {
  for (Kind kind : join_order) {
    if (!work.kinds.contains(kind)) continue;
    const ns_handle& target = work.target[index_of(kind)];
    const ns_handle& origin = origin_[index_of(kind)];
    Identity here{};
    if (origin.fd) {
      here = origin.id;  // a worker waiting for work is always in its origin
    } else if (const int err = thread_identity(kind, here); err != 0) {
      throw system_error(err, "cannot read this thread's {} namespace", kind);
    }
    // Joining what the thread is in already is a no-op for most kinds but an
    // error for mnt without CLONE_FS: skip it.
    if (here == target.id) continue;
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
    if (thread_identity(kind, now) != 0) {
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

// gonso: one dedicated worker thread with a home: joining a job's namespaces,
// running it, and going home or ending.
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

#include <gonso/detail/thread/job.hpp>

namespace gonso::detail {

class worker_pool;

/// One dedicated thread with a home: the namespaces of its anchor, to which
/// it returns after every run that restores. A pool worker's home is the
/// process's own namespaces; an executor's worker makes a Set its home.
///
/// The hand-off both ways spins before it sleeps (detail::event), so runs in
/// quick succession cost little more than their setns(2) calls. A pooled
/// worker checks its credentials once home, after its caller has returned. After a run
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
    if (work.wants_umask) {
      // Read while the worker joins: /proc costs more than the setns calls.
      // open and read are cancellation points, and the worker holds `work`
      // on this stack: no cancellation may unwind it now.
      int cancel_state = 0;
      (void)::pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
      const int mask = read_thread_umask(home_proc_);
      work.caller_umask = mask >= 0 ? mask : -(errno != 0 ? errno : EIO);
      (void)::pthread_setcancelstate(cancel_state, nullptr);
      work.umask_ready.post();
    }
    (void)done_.wait(spin_budget());
    if (!work.restore) return false;
    // The worker is on its way home; check what that does not undo meanwhile.
    const bool checked = !work.verify || !fast_ || still_in_place();
    (void)home_reached_.wait(spin_budget());
    return reusable_ && checked;
  }

  [[nodiscard]] const credentials& creds() const noexcept { return creds_; }

  /// Root, cwd and umask are the thread's own: it unshared CLONE_FS to join
  /// a mount namespace, which cannot be undone. Going home through the
  /// anchor's pidfd then takes it back to the process's mount namespace too,
  /// at that namespace's root, so the pool keeps it for runs that join
  /// another mount namespace (which reset root and cwd to that namespace's
  /// `/`) and hands it the caller's umask with each (job::wants_umask); it
  /// never serves a run whose callable would see the process's root and cwd.
  /// Read by the thread that holds the worker (published by home_reached_).
  [[nodiscard]] bool fs_private() const noexcept { return joined_mnt_; }

  /// After a restoring run, a pooled worker checks its own credentials
  /// before it may serve again: ready (checked, or never run), checking, or
  /// unfit (a callable changed them: the thread has ended or is ending).
  enum fitness_state : int { ready, checking, unfit };
  [[nodiscard]] fitness_state fitness() const noexcept {
    return static_cast<fitness_state>(fitness_.load(std::memory_order_acquire));
  }

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
  static void take_umask(job& work);
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
  std::atomic<int> fitness_{ready};  // see fitness()
  job* job_ = nullptr;               // published by work_
  bool reusable_ = false;            // published by home_reached_

  // Set by the worker's thread before it takes its first job, then read-only
  // until the thread ends.
  std::shared_ptr<const anchor> home_;
  pid_t home_tid_ = -1;                // for the caller's checks, which must not touch home_
  int home_proc_ = -1;                 // home's procfs fd (anchor::proc), for the caller's umask
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

GONSO_CATCHES_FORCED_UNWIND inline bool worker::perform(job& work) {
  RunContext ctx(work.restore);
  ctx.caller_tid_ = work.caller_tid;
  Kinds joined;
  try {
    if (start_error_) std::rethrow_exception(start_error_);
    join(work, joined);
    if (work.wants_umask) take_umask(work);
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
  reusable_ = wanted && (!verify || go_home(joined));
  if (pool_ == nullptr || !reusable_) {
    home_reached_.post();
    return reusable_;
  }
  // Home: the caller may return. A pooled worker then reads its own
  // credentials, off the caller's path (about half of a run's cost here:
  // credentials_read in gonso-bench), and is offered again only once they
  // are found unchanged (worker_pool::acquire waits for the verdict).
  fitness_.store(checking, std::memory_order_relaxed);  // published by home_reached_
  home_reached_.post();
  const bool fit = has_its_credentials();
  fitness_.store(fit ? ready : unfit, std::memory_order_release);
  return fit;  // unfit: see worker::loop
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
  home_proc_ = home_->proc();
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
  // A worker with root and cwd of its own serves only runs into another mount
  // namespace than home's (see fs_private), and joins it even when it seems
  // to be there already: the join is what puts root and cwd at its `/`.
  const bool rejoin_mnt = joined_mnt_ && pool_ != nullptr;
  const auto here = [&](Kind kind) {
    if (kind == Kind::mnt && rejoin_mnt) return Identity{};
    if (!joined.contains(kind)) {
      // A pooled worker waits for work where it started: home.
      if (const ns_handle& origin = origin_[index_of(kind)]; origin.fd) return origin.id;
      if (at_home && pidfd_kinds.contains(kind)) return kind == Kind::pid ? home_->active_pid() : home_id(kind);
    }
    return link_identity(kind, target[index_of(kind)].id.device);
  };
  if (work.pidfd >= 0) {
    // One setns(2) on a pidfd joins several kinds at once (the README, "How namespaces behave":
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
  if (!fast_) return restore_slowly(joined);
  // With root and cwd of its own the worker goes back to home's mount
  // namespace in the same setns, whatever the callable mounted or unshared.
  // A thread the callable started shares that fs_struct (threads are made
  // with CLONE_FS): a setns of several kinds would still move it along (its
  // check of fs users runs on a copy), and the next join of the mount
  // namespace alone would fail. Unsharing again leaves it behind; with no
  // other user it does nothing.
  if (joined_mnt_ && unshare_ns(CLONE_FS) != 0) return false;
  if (set_ns(home_->pidfd(), home_flags_ | (joined_mnt_ ? CLONE_NEWNS : 0)) != 0) return false;
  if (pid_by_fd_ && set_ns(home_->ns()[index_of(Kind::pid)].fd.get(), CLONE_NEWPID) != 0) return false;
  return true;
}

// On the worker's thread, joined: the umask the caller read for it (see
// job::wants_umask). A worker that cannot have it runs nothing.
inline void worker::take_umask(job& work) {
  (void)work.umask_ready.wait(spin_budget());
  if (work.caller_umask < 0) {
    throw system_error(-work.caller_umask,
                       "cannot read the calling thread's umask (/proc/thread-self/status) for a run in a mount "
                       "namespace");
  }
  (void)::umask(static_cast<mode_t>(work.caller_umask));
}

// On the caller's thread, while the worker goes home: what setns on the
// anchor's pidfd does not undo.
inline bool worker::still_in_place() const noexcept {
  // Root and cwd are still the process's, which also means the mount
  // namespace is: unsharing one unshares them (the README, "How namespaces behave", mount).
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

// gonso: the plumbing of forked children that join a Set: the join itself,
// pipes that carry a report back, and reaping.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/nsfs.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/detail/thread/worker_pool.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>

namespace gonso::detail {

// Forked children make their system calls through syscall(2) alone, which
// the parent calls before it forks (see bind_syscall). A libc function that a
// child calls for the first time is bound lazily in that child, again in
// every child (the binding lands in the child's copy of the GOT), unless the
// program was linked with -z now: here that cost ~30 µs for a handful of
// functions, plus a copy of the GOT page. A child that shares the caller's
// memory (spawn) must not run the dynamic linker at all.

// Code that runs in a child sharing the caller's memory (spawn's) is kept out
// of sanitizer instrumentation: AddressSanitizer would poison shadow memory
// for frames on the child's stack that never return (the child execs), and
// the sanitizers' runtimes keep per-thread state that the child would use
// as if it were the suspended calling thread. Every function such a child
// runs carries this, and calls nothing but these and syscall(2).
#if defined(__clang__)
#define GONSO_CHILD_CODE __attribute__((no_sanitize("address", "undefined")))  // NOLINT(cppcoreguidelines-macro-usage)
#else
#define GONSO_CHILD_CODE \
  __attribute__((no_sanitize_address, no_sanitize_undefined))  // NOLINT(cppcoreguidelines-macro-usage)
#endif

/// Calls syscall(2) once, and reads errno (__errno_location), so that both
/// are bound before a child is made; returns the caller's pid.
[[nodiscard]] inline pid_t bind_syscall() noexcept {
  const auto pid = static_cast<pid_t>(::syscall(SYS_getpid));
  volatile int& err = errno;
  err = err;
  return pid;
}

/// exit_group(2): ends the calling process at once, running no exit handler.
[[noreturn]] GONSO_CHILD_CODE inline void child_exit(int code) noexcept {
  ::syscall(SYS_exit_group, code);
  __builtin_unreachable();
}

/// Sets the disposition of `sig` to SIG_DFL with a raw rt_sigaction(2), which
/// also resets what glibc's sigaction() refuses to touch (its own signals).
GONSO_CHILD_CODE inline int default_signal(int sig) noexcept {
  struct {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)();
    std::uint64_t mask;  // the kernel's sigset_t: 64 bits
  } action{SIG_DFL, 0, nullptr, 0};
  return static_cast<int>(::syscall(SYS_rt_sigaction, sig, &action, nullptr, sizeof action.mask));
}

/// Resets every signal disposition to the default, so that none of the
/// caller's handlers can run in a child once its mask is opened.
GONSO_CHILD_CODE inline void default_all_signals() noexcept {
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) (void)default_signal(sig);
  }
}

/// Sets the signal mask of the calling thread to nothing or everything.
GONSO_CHILD_CODE inline void mask_signals(bool all) noexcept {
  std::uint64_t set = all ? ~std::uint64_t{0} : 0;  // the kernel's sigset_t: 64 bits
  ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &set, nullptr, sizeof set);
}

/// write(2) until everything is written; false on error (errno set).
inline bool write_all(int fd, const void* data, std::size_t size) noexcept {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::syscall(SYS_write, fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

/// Reads until end of file. Throws std::system_error on a read error.
inline std::string read_to_end(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(errno, "cannot read from a gonso child process");
    if (n == 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

/// The pid (in the caller's pid namespace) of the process a pidfd refers
/// to, read from /proc/self/fdinfo. Throws std::system_error: EBADF for a
/// closed fd, EINVAL when it is no pidfd, ESRCH when the process has ended.
[[nodiscard]] inline pid_t pid_of_pidfd(int pidfd) {
  const std::string path = "/proc/self/fdinfo/" + std::to_string(pidfd);
  unique_fd info(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!info) throw system_error(errno == ENOENT ? EBADF : errno, "cannot inspect pidfd {}", pidfd);
  const std::string text = read_to_end(info.get());
  const std::size_t at = text.find("\nPid:\t");
  if (at == std::string::npos) throw system_error(EINVAL, "cannot use fd {} as a pidfd: it is not one", pidfd);
  const long pid = std::strtol(text.c_str() + at + 6, nullptr, 10);
  if (pid <= 0) throw system_error(ESRCH, "cannot open namespaces of pidfd {}: its process has ended", pidfd);
  return static_cast<pid_t>(pid);
}

/// A close-on-exec pipe: [0] reads, [1] writes.
struct pipe_fds {
  unique_fd read;
  unique_fd write;
};
[[nodiscard]] inline pipe_fds make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw system_error(errno, "cannot create a pipe");
  return {unique_fd(fds[0]), unique_fd(fds[1])};
}

/// Waits for child `pid` (retrying on EINTR) and returns its wait status, or
/// -1 when it was reaped elsewhere (the application ignores SIGCHLD).
inline int reap(pid_t pid) noexcept {
  int status = 0;
  for (;;) {
    const auto r = static_cast<pid_t>(::syscall(SYS_wait4, pid, &status, __WALL, nullptr));
    if (r == pid) return status;
    if (r < 0 && errno == EINTR) continue;
    return -1;
  }
}

/// Waits for the child behind `pidfd` (retrying on EINTR) and returns its
/// wait status, or -1 when it was reaped elsewhere. Unlike a pid, the pidfd
/// cannot name another process once that one is gone.
inline int reap(const unique_fd& pidfd) noexcept {
  siginfo_t info{};
  while (::waitid(P_PIDFD, static_cast<id_t>(pidfd.get()), &info, WEXITED | __WALL) != 0) {
    if (errno != EINTR) return -1;
  }
  if (info.si_code == CLD_EXITED) return W_EXITCODE(info.si_status, 0);
  return info.si_status | (info.si_code == CLD_DUMPED ? WCOREFLAG : 0);  // as wait(2) encodes a signal
}

/// SIGKILL through `pidfd`, then reap(pidfd).
inline int kill_and_reap(const unique_fd& pidfd) noexcept {
  (void)::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0U);
  return reap(pidfd);
}

/// One child process of the caller that a gonso::Child owns, shared between
/// that handle and the destructor of a pid namespace's init, either of which
/// may reap it: the pidfd, and how the process ended once reaped.
///
/// Why the init's destructor reaps programs: when pid 1 of a pid namespace is
/// killed, the kernel kills every other process of the namespace and pid 1
/// then waits, in the kernel, until each of them has been reaped, zombies
/// included; only then does it end. A program spawned into the namespace is
/// a child of the caller (CLONE_PARENT), so only the caller can reap it. A
/// thread that waited for the init alone while the program's Child was still
/// unwaited (on the same thread, or on none) would wait forever. So the
/// init's destructor reaps every ended child it knows of into its shared
/// state, where Child::wait() finds how it ended.
struct child_state {
  child_state(unique_fd fd, pid_t p) noexcept : pidfd(std::move(fd)), pid(p) {}
  unique_fd pidfd;
  pid_t pid;
  std::mutex lock;  // guards the three below, and every waitid on pidfd
  bool reaped = false;
  int error = 0;  // waitid's errno when it cannot be reaped (ECHILD: reaped elsewhere)
  int code = 0;   // si_code and si_status of the reaped process
  int status = 0;
};

/// Reaps `state` if its process has ended, without blocking. True once it is
/// reaped (now or earlier) or cannot be (`error` set).
inline bool try_reap(child_state& state) noexcept {
  const std::lock_guard<std::mutex> hold(state.lock);
  if (state.reaped || state.error != 0) return true;
  siginfo_t info{};
  while (::waitid(P_PIDFD, static_cast<id_t>(state.pidfd.get()), &info, WEXITED | __WALL | WNOHANG) != 0) {
    if (errno == EINTR) continue;
    state.error = errno;
    return true;
  }
  if (info.si_pid == 0) return false;
  state.code = info.si_code;
  state.status = info.si_status;
  state.reaped = true;
  return true;
}

/// Blocks until try_reap succeeds: sleeps on the pidfd (readable once the
/// process has ended), so that whoever reaps first, this thread or a dying
/// init's destructor, reaps it exactly once. Returns 0 or poll's errno.
inline int wait_reaped(child_state& state) noexcept {
  while (!try_reap(state)) {
    pollfd ended{state.pidfd.get(), POLLIN, 0};
    if (::poll(&ended, 1, -1) < 0 && errno != EINTR) return errno;
  }
  return 0;
}

/// Every child_state a Child holds, so that a dying init's destructor can
/// reap the programs its namespace waits for; and the inits that could not
/// be reaped in time (see reap_killed_init). Never destroyed: a Child may
/// end in a static destructor.
struct child_registry {
  std::mutex lock;
  std::vector<std::shared_ptr<child_state>> live;
  std::vector<unique_fd> dying_inits;

  static child_registry& get() noexcept {
    static child_registry* const registry = [] {
      // In static storage, constructed once and never destroyed; nothing
      // here allocates, so it cannot fail.
      alignas(child_registry) static unsigned char storage[sizeof(child_registry)];
      auto* r = ::new (static_cast<void*>(storage)) child_registry;
      // A forked child (run_in_process) must not find the lock held by a
      // thread that is not there; the parent's children are not its own.
      (void)::pthread_atfork([] { get().lock.lock(); }, [] { get().lock.unlock(); },
                             [] {
                               child_registry& self = get();
                               new (&self.lock) std::mutex;
                               self.live.clear();
                               self.dying_inits.clear();
                             });
      return r;
    }();
    return *registry;
  }

  /// Registers `state`; false when out of memory (it is then not reaped by
  /// a dying init's destructor, only by its Child).
  bool add(const std::shared_ptr<child_state>& state) noexcept {
    const std::lock_guard<std::mutex> hold(lock);
    try {
      live.push_back(state);
      return true;
    } catch (...) {
      return false;
    }
  }
  void remove(const child_state* state) noexcept {
    const std::lock_guard<std::mutex> hold(lock);
    for (auto it = live.begin(); it != live.end(); ++it) {
      if (it->get() == state) {
        live.erase(it);
        return;
      }
    }
  }
  /// Reaps, without blocking, the inits left for later; keeps those still alive.
  void sweep_dying_inits() noexcept {
    const std::lock_guard<std::mutex> hold(lock);
    for (auto it = dying_inits.begin(); it != dying_inits.end();) {
      siginfo_t info{};
      const int r = ::waitid(P_PIDFD, static_cast<id_t>(it->get()), &info, WEXITED | __WALL | WNOHANG);
      if ((r == 0 && info.si_pid == 0) || (r != 0 && errno == EINTR)) {
        ++it;
      } else {
        it = dying_inits.erase(it);
      }
    }
  }
};

/// How long the destructor of a pid namespace's init waits for its end
/// while nothing it can reap ends. Every gonso Child in the namespace is
/// reaped by it, so the only thing that can hold the init longer is a zombie
/// no gonso object owns (say a child that a callable of Set::run forked into
/// the namespace and never waited for): then the init is left to be reaped
/// later, by the next Child or init that ends, never by a thread that blocks.
inline constexpr int dying_init_patience_ms = 2000;

/// Reaps the init behind `pidfd`, to which SIGKILL has been sent, without
/// depending on anyone else: while it waits for the namespace's other
/// processes to be reaped, every registered child that has ended is reaped
/// into its state. Returns promptly once the init has ended; never blocks
/// for good (see dying_init_patience_ms).
inline void reap_killed_init(unique_fd& pidfd) noexcept {
  child_registry& registry = child_registry::get();
  registry.sweep_dying_inits();
  std::vector<std::shared_ptr<child_state>> known;
  std::vector<pollfd> fds;
  int idle_ms = 0;
  for (;;) {
    siginfo_t info{};
    if (::waitid(P_PIDFD, static_cast<id_t>(pidfd.get()), &info, WEXITED | __WALL | WNOHANG) == 0) {
      if (info.si_pid != 0) return;  // reaped
    } else if (errno != EINTR) {
      return;  // ECHILD: not our child (nested, or reaped elsewhere)
    }
    if (idle_ms >= dying_init_patience_ms) {
      const std::lock_guard<std::mutex> hold(registry.lock);
      try {
        registry.dying_inits.push_back(std::move(pidfd));
      } catch (...) {
        // Out of memory: the init's zombie stays until the process ends.
      }
      return;
    }
    // Taken anew each round: a Child made meanwhile on another thread (a
    // spawn that raced with this teardown) is found on the next one. Only
    // the unreaped: a reaped process's pidfd stays readable.
    known.clear();
    fds.clear();
    try {
      fds.push_back(pollfd{pidfd.get(), POLLIN, 0});
      const std::lock_guard<std::mutex> hold(registry.lock);
      for (const auto& state : registry.live) {
        const std::lock_guard<std::mutex> look(state->lock);
        if (state->reaped || state->error != 0) continue;
        known.push_back(state);
        fds.push_back(pollfd{state->pidfd.get(), POLLIN, 0});
      }
    } catch (...) {
      known.clear();
      fds.assign(1, pollfd{pidfd.get(), POLLIN, 0});
    }
    constexpr int round_ms = 50;
    bool progress = false;
    if (::poll(fds.data(), fds.size(), round_ms) > 0) {
      progress = fds[0].revents != 0;
      for (std::size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents != 0 && try_reap(*known[i - 1])) progress = true;
      }
    }
    idle_ms = progress ? 0 : idle_ms + round_ms;
  }
}

/// Which namespaces a forked child must join, worked out in the parent so
/// that the child only makes system calls.
struct join_plan {
  struct step {
    int fd;
    Kind kind;
  };
  std::array<step, all_kinds.size()> steps{};
  std::size_t count = 0;
  /// Set when pid or time is joined: setns() then changes only where the
  /// children go, so the work must run in a child of the joining process.
  bool fork_after = false;
};

/// One namespace to join, borrowed: the fd stays owned by whoever lent it
/// (a Set). Lets a plan be made from a Set's public view as well as from its
/// handles.
struct ns_ref {
  int fd = -1;
  Identity id{};
};
using ns_refs = std::array<ns_ref, all_kinds.size()>;

/// Plans the join of `kinds` of `target` from the calling thread's point of
/// view: kinds it is in already are skipped (setns into one's own user
/// namespace fails), in join_order (user last; join_in_child retries what
/// was refused once inside it).
///
/// The thread's own namespaces are read as link text under one open of
/// /proc/thread-self/ns (a worker's own fd of it when there is one). A link
/// names its namespace by inode only; nsfs has one device, and `target` keeps
/// its namespaces alive, so an equal inode is the same namespace. A link that
/// cannot be read counts as another namespace: that kind is joined.
[[nodiscard]] inline join_plan plan_join(const ns_refs& target, Kinds kinds) {
  unique_fd own_dir;
  int dir = worker_ns_dir;
  if (dir < 0) {
    own_dir.reset(::open("/proc/thread-self/ns", O_PATH | O_DIRECTORY | O_CLOEXEC));
    dir = own_dir.get();
  }
  join_plan plan;
  for (Kind kind : join_order) {
    if (!kinds.contains(kind)) continue;
    const ns_ref& ns = target[index_of(kind)];
    if (dir >= 0 && read_ns_link(dir, thread_link(kind)) == ns.id.inode) continue;
    plan.steps[plan.count++] = {ns.fd, kind};
    if (kind == Kind::pid || kind == Kind::time) plan.fork_after = true;
  }
  return plan;
}

/// The same plan from the handles a Set owns.
[[nodiscard]] inline join_plan plan_join(const ns_handles& target, Kinds kinds) {
  ns_refs refs{};
  for (Kind kind : kinds) refs[index_of(kind)] = {target[index_of(kind)].fd.get(), target[index_of(kind)].id};
  return plan_join(refs, kinds);
}

/// For a target user namespace nested below another one the child is not
/// in: a namespace owned by one of those ancestors can be joined only from
/// inside that ancestor (setns needs CAP_SYS_ADMIN over its owner and in
/// one's own user namespace, and a process in a user namespace has no
/// capability over its ancestors). So the ancestors between the child's own
/// user namespace and `user_fd` are joined from the outermost down, and the
/// `deferred` steps retried inside each. Async-signal-safe; only run when
/// something was refused with EPERM, never by a privileged child.
GONSO_CHILD_CODE inline void join_user_ancestors(int user_fd, const join_plan& plan,
                                                 std::array<bool, all_kinds.size()>& deferred) noexcept {
  bool any = false;
  for (std::size_t i = 0; i < plan.count; ++i) any = any || deferred[i];
  if (!any) return;
  // NS_GET_PARENT walks up to the child's own user namespace and refuses
  // (EPERM) the step above it, or refuses at once for a namespace that is
  // not below it. 32 levels of nesting at most, plus the child's own.
  constexpr std::size_t deepest = 33;
  std::array<int, deepest> chain{};
  std::size_t depth = 0;
  for (int at = user_fd; depth < deepest; ++depth) {
    const auto up = static_cast<int>(::syscall(SYS_ioctl, at, NS_GET_PARENT));
    if (up < 0) break;
    chain[depth] = up;  // NOLINT(cppcoreguidelines-pro-bounds-constant-array-index): depth < deepest
    at = up;
  }
  // The outermost one found is the child's own: not joined.
  if (depth > 0) ::close(chain[--depth]);  // NOLINT(cppcoreguidelines-pro-bounds-constant-array-index)
  while (depth > 0) {
    const int ancestor = chain[--depth];  // NOLINT(cppcoreguidelines-pro-bounds-constant-array-index)
    const bool joined = ::syscall(SYS_setns, ancestor, CLONE_NEWUSER) == 0;
    ::close(ancestor);
    for (std::size_t i = 0; joined && i < plan.count; ++i) {
      if (deferred[i] && ::syscall(SYS_setns, plan.steps[i].fd, clone_flag(plan.steps[i].kind)) == 0) {
        deferred[i] = false;
      }
    }
  }
}

/// Joins the planned namespaces in a single-threaded child. Async-signal-safe.
/// Without privilege every setns() but the user namespace's fails with EPERM
/// until the child has entered the user namespace; with privilege, entering
/// the user namespace first would shed it. So: everything but user, then
/// user, then what was refused with EPERM (util-linux nsenter also does two
/// passes). Returns 0, or the errno with `failed` naming the step.
[[nodiscard]] GONSO_CHILD_CODE inline int join_in_child(const join_plan& plan, std::size_t& failed) noexcept {
  std::size_t user_step = plan.count;
  for (std::size_t i = 0; i < plan.count; ++i) {
    if (plan.steps[i].kind == Kind::user) user_step = i;
  }
  std::array<bool, all_kinds.size()> deferred{};
  for (std::size_t i = 0; i < plan.count; ++i) {
    if (i == user_step) continue;
    if (::syscall(SYS_setns, plan.steps[i].fd, clone_flag(plan.steps[i].kind)) == 0) continue;
    if (errno == EPERM && user_step < plan.count) {
      deferred[i] = true;
      continue;
    }
    failed = i;
    return errno;
  }
  if (user_step < plan.count) {
    join_user_ancestors(plan.steps[user_step].fd, plan, deferred);
    if (::syscall(SYS_setns, plan.steps[user_step].fd, CLONE_NEWUSER) != 0) {
      failed = user_step;
      return errno;
    }
    // Become root of the namespace where it is mapped, as nsenter does:
    // joining keeps the old ids, which may map to nobody there. Raw system
    // calls: glibc's wrappers would try to signal threads the child lacks.
    // Each may fail (0 unmapped, setgroups denied); what succeeds stays.
    (void)::syscall(SYS_setgroups, 0, nullptr);
    (void)::syscall(SYS_setresgid, 0, 0, 0);
    (void)::syscall(SYS_setresuid, 0, 0, 0);
  }
  for (std::size_t i = 0; i < plan.count; ++i) {
    if (deferred[i] && ::syscall(SYS_setns, plan.steps[i].fd, clone_flag(plan.steps[i].kind)) != 0) {
      failed = i;
      return errno;
    }
  }
  return 0;
}

/// False when the calling thread's children go to a pid namespace other
/// than its own (it joined one, as a worker inside Set::run does): a middle
/// process made there would see the program's pid in that namespace's
/// numbering, not the caller's. True when /proc cannot tell.
[[nodiscard]] inline bool children_share_pid_ns() noexcept {
  const bool worker = worker_ns_dir >= 0;
  const int dir = worker ? worker_ns_dir : AT_FDCWD;
  const ino_t own = read_ns_link(dir, worker ? "pid" : "/proc/thread-self/ns/pid");
  if (own == 0) return true;
  errno = 0;
  const ino_t children = read_ns_link(dir, worker ? "pid_for_children" : "/proc/thread-self/ns/pid_for_children");
  // ENOENT: the thread unshared a pid namespace that has no process yet.
  if (children == 0) return errno != ENOENT;
  return own == children;
}

/// fork(2) as a raw clone: the child gets no pthread_atfork handlers (the
/// caller's code, unsafe in a child that may only make system calls; glibc's
/// posix_spawn skips them too), and a sanitizer does not start a thread in
/// it (ThreadSanitizer does after forking a single-threaded process, and a
/// second thread makes setns of mnt, user and time fail, the README's kernel rules).
inline pid_t raw_fork() noexcept { return static_cast<pid_t>(::syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0)); }

/// Makes the calling child die with its parent thread, and checks that the
/// parent did not die before that was armed. A child born into a pid
/// namespace its parent is not in (forked by a thread whose children go
/// elsewhere) sees its parent as 0: it cannot check, only arm. Pass 0 for
/// `parent` to arm without checking. Async-signal-safe.
GONSO_CHILD_CODE inline void die_with_parent(pid_t parent) noexcept {
  ::syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  const auto now = static_cast<pid_t>(::syscall(SYS_getppid));
  if (parent != 0 && now != 0 && now != parent) child_exit(127);
}

/// Ends the calling process the way a child's wait status says its own child
/// ended, so that a relaying middle process is invisible to the caller.
[[noreturn]] inline void exit_like(int status) noexcept {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    (void)default_signal(sig);
    ::syscall(SYS_prctl, PR_SET_DUMPABLE, 0, 0, 0, 0);  // no core file for a relayed crash
    ::syscall(SYS_kill, ::syscall(SYS_getpid), sig);
    child_exit(128 + sig);
  }
  child_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 127);
}

}  // namespace gonso::detail

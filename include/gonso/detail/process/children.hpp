// gonso: the children a Child owns, shared with the init of a pid namespace
// whose end waits for them.
// SPDX-License-Identifier: MIT
#pragma once

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include <gonso/detail/sys/unique_fd.hpp>

namespace gonso {
class Child;
}  // namespace gonso

namespace gonso::detail {

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

/// Builds Child objects for gonso's own factories (spawn).
struct child_access {
  static Child make(unique_fd pidfd, pid_t pid, unique_fd in, unique_fd out, unique_fd err);
};

}  // namespace gonso::detail

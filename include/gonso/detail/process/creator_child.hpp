// gonso: the child half of creating namespaces in a child process (for the
// kinds a thread cannot create, and everything combined with them).
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <system_error>

#include <gonso/detail/process/child_code.hpp>
#include <gonso/detail/process/creator_wire.hpp>
#include <gonso/detail/process/join.hpp>
#include <gonso/detail/process/launch.hpp>
#include <gonso/detail/process/pid_init.hpp>
#include <gonso/detail/process/report.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/io.hpp>
#include <gonso/kind.hpp>

namespace gonso::detail {

/// What the child is to create, all prepared before the fork.
struct creator_task {
  join_plan plan;
  Kinds kinds;
  int report = -1;                            // write end
  int go = -1;                                // read end: one byte once the maps are written
  int lifeline = -1;                          // read end, for the pid namespace's init
  unsigned long propagation = 0;              // MS_PRIVATE, MS_SLAVE, MS_SHARED, or 0 to keep
  const std::string* time_offsets = nullptr;  // for /proc/self/timens_offsets; may be empty
  // A user namespace nested in the Set's, which is not the caller's: its id
  // maps are written by a helper that stays in the Set's user namespace
  // (its parent), not by the caller. Empty maps mean "0 <own id there> 1".
  bool maps_from_inside = false;
  const std::string* uid_map = nullptr;
  const std::string* gid_map = nullptr;
};

inline void creator_send(int fd, creator_says what, std::int32_t value = 0, std::int32_t err = 0) noexcept {
  send_record(fd, what, value, err);
}

/// Reads the one byte the parent sends. The creator keeps the application's
/// signal handlers (raw_fork copies them), and one installed without
/// SA_RESTART interrupts a read that has nothing yet: read again.
[[nodiscard]] inline bool read_byte(int fd) noexcept {
  char byte = 0;
  for (;;) {
    const ssize_t n = ::read(fd, &byte, 1);
    if (n < 0 && errno == EINTR) continue;
    return n == 1;
  }
}

[[noreturn]] inline void creator_fail(int fd, std::int32_t step) noexcept {
  // An end of file has no errno of its own; the parent takes none outside 1-4095.
  creator_send(fd, creator_says::failed, step, errno != 0 ? errno : EIO);
  ::_exit(1);
}

/// Writes "0 <id> 1\n" into `buf`, without allocating; returns its length.
[[nodiscard]] inline std::size_t own_id_map_line(char (&buf)[32], unsigned id) noexcept {
  char digits[12];
  std::size_t n = 0;
  do {
    digits[n++] = static_cast<char>('0' + id % 10);
    id /= 10;
  } while (id != 0);
  std::size_t len = 0;
  buf[len++] = '0';
  buf[len++] = ' ';
  while (n != 0) buf[len++] = digits[--n];
  buf[len++] = ' ';
  buf[len++] = '1';
  buf[len++] = '\n';
  return len;
}

/// One write(2) of a whole map into `file` under the process directory `dir`.
[[nodiscard]] inline bool write_map(int dir, const char* file, const std::string* map, unsigned own_id) noexcept {
  char line[32];
  const char* text = line;
  std::size_t len = 0;
  if (map != nullptr && !map->empty()) {
    text = map->data();
    len = map->size();
  } else {
    len = own_id_map_line(line, own_id);
  }
  const int fd = ::openat(dir, file, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const ssize_t n = ::write(fd, text, len);
  const int error = errno;
  ::close(fd);
  errno = error;
  if (n == static_cast<ssize_t>(len)) return true;
  if (n >= 0) errno = EIO;
  return false;
}

/// unshare(CLONE_NEWUSER) for a user namespace nested in the one the
/// creator joined, which is not the caller's. The kernel takes a user
/// namespace's maps only from a process in it or in its parent, with
/// CAP_SETUID/CAP_SETGID over the parent; the caller is in neither, and the
/// creator is no longer in the parent once it unshared. So a helper forked
/// first, still in the parent with the full capabilities that joining it
/// gave, writes them through the creator's /proc directory as the caller's
/// /proc shows it (`proc`, opened before any mount namespace was joined).
/// setgroups stays as the parent has it: the helper may write gid_map.
inline void unshare_user_with_maps_from_parent(const creator_task& task, int proc) noexcept {
  const int self = ::openat(proc, "self", O_PATH | O_DIRECTORY | O_CLOEXEC);
  int wake[2];
  if (self < 0 || ::pipe2(wake, O_CLOEXEC) != 0) creator_fail(task.report, step_write_maps);
  const pid_t writer = raw_fork();
  if (writer < 0) creator_fail(task.report, step_write_maps);
  if (writer == 0) {
    ::close(wake[1]);
    // End of file: the creator is gone, and with it the namespace.
    if (!read_byte(wake[0])) ::_exit(1);
    if (!write_map(self, "uid_map", task.uid_map, ::geteuid()) ||
        !write_map(self, "gid_map", task.gid_map, ::getegid())) {
      creator_fail(task.report, step_write_maps);
    }
    ::_exit(0);
  }
  ::close(wake[0]);
  if (::unshare(CLONE_NEWUSER) != 0) creator_fail(task.report, step_unshare_user);
  const char byte = 'm';
  if (!write_all(wake[1], &byte, 1)) creator_fail(task.report, step_write_maps);
  ::close(wake[1]);
  const int status = reap(writer);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    // A writer that failed has told the parent why already; that message
    // is the one read, as it ends the conversation.
    errno = EIO;
    creator_fail(task.report, step_write_maps);
  }
  ::close(self);
}

/// The creator joined a pid or time namespace, which changed only where its
/// children go, and a new pid namespace nests in the creator's own, not in
/// the one its children would get: the rest is done by a child that is
/// fully inside, while this process only relays how it ends. The child
/// speaks only after its pid reached the parent, whose messages would
/// otherwise race with ours.
inline void fork_into_joined(const creator_task& task) noexcept {
  int order[2];
  if (::pipe2(order, O_CLOEXEC) != 0) creator_fail(task.report, step_fork);
  const pid_t inner = raw_fork();
  if (inner < 0) creator_fail(task.report, step_fork);
  if (inner > 0) {
    creator_send(task.report, creator_says::creator_pid, inner);
    const char go = 'p';
    (void)write_all(order[1], &go, 1);
    exit_like(reap(inner));
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (!read_byte(order[0])) ::_exit(1);
}

/// Starts the init of the new pid namespace (pid_init_main).
inline void start_init(const creator_task& task) noexcept {
  // The init is a copy of this process, with the application's signal
  // handlers: a signal arriving before it masks them would run one in
  // there (and could end the namespace). It is born with every signal
  // blocked instead; we only wait to be killed.
  mask_signals(true);
  if (!task.plan.fork_after) {
    // Make the init a child of the caller (CLONE_PARENT), so that the
    // caller reaps it when the namespace is let go: an orphan's new parent
    // may not reap at all. Raw clone: the init makes only system calls.
    const pid_t init = raw_clone(CLONE_PARENT | SIGCHLD);
    if (init < 0) creator_fail(task.report, step_fork_init);
    if (init == 0) pid_init_main(task.lifeline);
    creator_send(task.report, creator_says::init_pid, init);
  } else {
    // Nested in a pid namespace the caller cannot see into: the init stays
    // our child, and when we die it goes to that namespace's own init.
    const pid_t init = raw_fork();
    if (init < 0) creator_fail(task.report, step_fork_init);
    if (init == 0) pid_init_main(task.lifeline);
  }
}

/// The body of the creating child. Only system calls and no allocation: it
/// is cloned (raw_fork, no pthread_atfork handlers) from a process that may
/// have many threads.
[[noreturn]] inline void creator_main(const creator_task& task, pid_t parent) noexcept {
  die_with_parent(parent);
  // The caller's /proc, opened before joining a mount namespace whose /proc
  // may show another pid namespace, where "self" would name nobody.
  const bool offsets = task.time_offsets != nullptr && !task.time_offsets->empty();
  int proc = -1;
  if (task.maps_from_inside || offsets) {
    proc = ::open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (proc < 0) creator_fail(task.report, task.maps_from_inside ? step_write_maps : step_time_offsets);
  }
  std::size_t failed = 0;
  if (join_in_child(task.plan, failed) != 0) creator_fail(task.report, step_join + static_cast<std::int32_t>(failed));
  // A non-dumpable process cannot have its maps written, and becoming root
  // of a joined user namespace changed our ids, which makes one non-dumpable.
  ::prctl(PR_SET_DUMPABLE, 1);
  if (task.plan.fork_after) fork_into_joined(task);
  if (task.kinds.contains(Kind::user) && task.maps_from_inside) {
    unshare_user_with_maps_from_parent(task, proc);
  } else if (task.kinds.contains(Kind::user)) {
    if (::unshare(CLONE_NEWUSER) != 0) creator_fail(task.report, step_unshare_user);
    creator_send(task.report, creator_says::user_created);
    if (!read_byte(task.go)) creator_fail(task.report, step_wait_maps);
  }
  // The rest is created inside the new user namespace, if any, and so owned by it.
  const Kinds rest = task.kinds - Kind::user;
  if (!rest.empty() && ::unshare(rest.clone_flags()) != 0) creator_fail(task.report, step_unshare);
  if (rest.contains(Kind::time) && offsets) {
    // Offsets can be set only before any process enters the namespace.
    const int fd = ::openat(proc, "self/timens_offsets", O_WRONLY | O_CLOEXEC);
    if (fd < 0 || !write_all(fd, task.time_offsets->data(), task.time_offsets->size())) {
      creator_fail(task.report, step_time_offsets);
    }
    ::close(fd);
  }
  if (rest.contains(Kind::mnt) && task.propagation != 0 &&
      ::mount(nullptr, "/", nullptr, MS_REC | task.propagation, nullptr) != 0) {
    creator_fail(task.report, step_propagation);
  }
  if (rest.contains(Kind::pid)) start_init(task);
  creator_send(task.report, creator_says::ready);
  for (;;) ::pause();  // the parent opens our namespaces, then kills us
}

}  // namespace gonso::detail

// gonso: every credential of one thread, for deciding whether a pooled
// worker may act for a caller.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/prctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>

namespace gonso::detail {

/// What the kernel consults, per thread, when a thread joins or creates a
/// namespace, opens a file, or execs a program. Linux keeps all of it per
/// thread: a raw setresuid, setgroups, capset, prctl or seccomp call, and
/// the glibc wrappers setfsuid and setfsgid, change one thread only, and a
/// new thread starts with a copy of its creator's. Two threads whose
/// credentials compare equal may act for each other.
///
/// Seccomp filters cannot be read back; the kernel shows only how many a
/// thread has. A thread inherits its creator's filters, and filters are
/// only ever added, so a worker's filters are its caller's when the caller
/// started that worker and both have as many: `filter_origin` names the
/// thread (a per-thread token, never reused, unlike a tid) whose filters a
/// thread in filter mode carries.
struct credentials {
  std::array<uid_t, 4> uid{};  // real, effective, saved, filesystem
  std::array<gid_t, 4> gid{};
  std::vector<gid_t> groups;    // supplementary, as getgroups(2) lists them
  std::array<__u32, 6> caps{};  // effective, permitted, inheritable; two words each
  std::uint64_t bounding = 0;
  std::uint64_t ambient = 0;
  int securebits = 0;
  int no_new_privs = 0;
  int seccomp_mode = 0;  // 0 none, 1 strict, 2 filters
  long seccomp_filters = 0;
  std::uint64_t filter_origin = 0;  // in filter mode: see above; else 0
  std::string security_context;     // the LSM's, where one labels threads; else empty
  friend bool operator==(const credentials&, const credentials&) = default;
};

/// A number naming the calling thread for its whole life; never 0, never
/// given to another thread, as a tid can be once the thread ends.
[[nodiscard]] inline std::uint64_t thread_token() noexcept {
  static std::atomic<std::uint64_t> next{1};
  thread_local const std::uint64_t token = next.fetch_add(1, std::memory_order_relaxed);
  return token;
}

/// The highest capability number the kernel knows (cap_last_cap), read once.
[[nodiscard]] inline int last_capability() noexcept {
  static const int last = [] {
    for (int cap = 63; cap > 0; --cap) {
      if (::prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0) return cap;
    }
    return 0;
  }();
  return last;
}

/// The text of a small procfs file at `path` relative to `dir`; empty with
/// `ok` false when it cannot be read, or runs past 1 MiB.
[[nodiscard]] inline std::string read_small_proc_file(int dir, const char* path, bool& ok) {
  ok = false;
  const unique_fd fd(::openat(dir, path, O_RDONLY | O_CLOEXEC));
  if (!fd) return {};
  std::array<char, 4096> buf{};
  std::string text;
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return {};
    if (n == 0) break;
    text.append(buf.data(), static_cast<std::size_t>(n));
    if (text.size() > (std::size_t{1} << 20)) return {};
  }
  ok = true;
  return text;
}

/// Whether threads carry an LSM label in /proc/thread-self/attr/current;
/// probed once (EINVAL where no LSM provides one, as without SELinux,
/// AppArmor or Smack).
[[nodiscard]] inline bool threads_have_security_context() noexcept {
  static const bool labelled = [] {
    bool ok = false;
    try {
      const std::string text = read_small_proc_file(AT_FDCWD, "/proc/thread-self/attr/current", ok);
      return ok && !text.empty();
    } catch (...) {
      return true;  // cannot tell: compare, and let a failed read count as a difference
    }
  }();
  return labelled;
}

/// The calling thread's credentials. `proc_dir` is an fd of the thread's
/// /proc/thread-self/ns (a worker's, which stays valid in any mount
/// namespace), or -1 for /proc/thread-self of the caller's own /proc.
/// `origin` is the thread token recorded as filter_origin in filter mode.
/// A value that cannot be read is left at a marker no thread has, so that
/// it never compares equal to a real one by accident.
[[nodiscard]] inline credentials this_thread_credentials(int proc_dir, std::uint64_t origin) {
  credentials c;
  (void)::getresuid(&c.uid[0], &c.uid[1], &c.uid[2]);
  (void)::getresgid(&c.gid[0], &c.gid[1], &c.gid[2]);
  // An invalid id changes nothing and returns the current one.
  c.uid[3] = static_cast<uid_t>(::syscall(SYS_setfsuid, -1));
  c.gid[3] = static_cast<gid_t>(::syscall(SYS_setfsgid, -1));
  for (;;) {
    const long n = ::syscall(SYS_getgroups, 0, nullptr);
    if (n < 0) {
      c.groups.assign(1, static_cast<gid_t>(-1));
      break;
    }
    c.groups.resize(static_cast<std::size_t>(n));
    const long got = ::syscall(SYS_getgroups, n, c.groups.data());
    if (got == n) break;  // else groups changed in between (another thread's setgroups broadcast): again
  }
  const auto data = capabilities();
  c.caps = {data[0].effective, data[1].effective,   data[0].permitted,
            data[1].permitted, data[0].inheritable, data[1].inheritable};
  const int last = last_capability();
  for (int cap = 0; cap <= last; ++cap) {
    if (::prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1) c.bounding |= std::uint64_t{1} << cap;
  }
  // An ambient capability must be permitted and inheritable: only those can
  // be set, and most threads have none.
  const std::uint64_t could_be_ambient = (static_cast<std::uint64_t>(data[1].permitted & data[1].inheritable) << 32) |
                                         (data[0].permitted & data[0].inheritable);
  for (int cap = 0; cap <= last && could_be_ambient != 0; ++cap) {
    if ((could_be_ambient & (std::uint64_t{1} << cap)) == 0) continue;
    if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1) c.ambient |= std::uint64_t{1} << cap;
  }
  c.securebits = ::prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
  c.no_new_privs = ::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
  // In strict mode this prctl itself kills the thread, but a thread in strict
  // mode cannot have called gonso.
  c.seccomp_mode = ::prctl(PR_GET_SECCOMP, 0, 0, 0, 0);
  if (c.seccomp_mode != 0) {
    // Only procfs counts the filters. A thread in filter mode is rare enough
    // to pay for reading its status.
    c.filter_origin = origin;
    c.seccomp_filters = -1;
    bool ok = false;
    const std::string status = read_small_proc_file(proc_dir >= 0 ? proc_dir : AT_FDCWD,
                                                    proc_dir >= 0 ? "../status" : "/proc/thread-self/status", ok);
    static constexpr std::string_view key = "\nSeccomp_filters:";
    if (const std::size_t at = status.find(key); ok && at != std::string::npos) {
      c.seccomp_filters = std::strtol(status.c_str() + at + key.size(), nullptr, 10);
    }
  }
  if (threads_have_security_context()) {
    bool ok = false;
    c.security_context = read_small_proc_file(proc_dir >= 0 ? proc_dir : AT_FDCWD,
                                              proc_dir >= 0 ? "../attr/current" : "/proc/thread-self/attr/current", ok);
    if (!ok) c.security_context = std::string(1, '\0');  // unreadable: equal to nothing that was read
  }
  return c;
}

}  // namespace gonso::detail

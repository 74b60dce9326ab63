// gonso: thin wrappers over the namespace system calls and ioctls.
// SPDX-License-Identifier: MIT
#pragma once

#include <linux/capability.h>
#include <linux/nsfs.h>
#include <linux/types.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>

namespace gonso::detail {

// From linux/magic.h; spelled out so that the library needs no kernel header
// beyond nsfs.h.
inline constexpr long nsfs_magic = 0x6e736673;

/// The calling thread's kernel id.
[[nodiscard]] inline pid_t this_tid() noexcept { return static_cast<pid_t>(::syscall(SYS_gettid)); }

/// setns(2); returns 0 or the errno.
[[nodiscard]] inline int set_ns(int fd, int nstype) noexcept { return ::setns(fd, nstype) == 0 ? 0 : errno; }

/// unshare(2); returns 0 or the errno.
[[nodiscard]] inline int unshare_ns(int flags) noexcept { return ::unshare(flags) == 0 ? 0 : errno; }

/// pidfd_open(2); the fd is close-on-exec by definition. Returns -1 with
/// errno set (ESRCH: no such process).
[[nodiscard]] inline int pidfd_open(pid_t pid, unsigned flags = 0) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, flags));
}

/// The calling thread's capability sets (capget(2), two words each); all
/// zero when the call fails.
[[nodiscard]] inline std::array<__user_cap_data_struct, 2> capabilities() noexcept {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  std::array<__user_cap_data_struct, 2> data{};
  if (::syscall(SYS_capget, &header, data.data()) != 0) data = {};
  return data;
}

#ifndef NS_GET_ID
// Kernel 6.x; not yet in the installed headers (the README, "How namespaces behave").
#define NS_GET_ID _IOR(NSIO, 13, __u64)  // NOLINT(cppcoreguidelines-macro-usage)
#endif

/// The kernel's never-reused 64-bit id of a namespace fd (NS_GET_ID), or 0
/// when the kernel lacks the ioctl.
[[nodiscard]] inline std::uint64_t ns_id(int fd) noexcept {
  __u64 id = 0;
  return ::ioctl(fd, NS_GET_ID, &id) == 0 ? static_cast<std::uint64_t>(id) : 0;
}

/// The CLONE_NEW* type of a namespace fd (NS_GET_NSTYPE), or -1 with errno set.
[[nodiscard]] inline int ns_type(int fd) noexcept { return ::ioctl(fd, NS_GET_NSTYPE); }

}  // namespace gonso::detail

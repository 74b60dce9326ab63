// Privilege: privileged tests fail loudly without CAP_SYS_ADMIN, and threads
// that give it up (or become uid 65534) for what they start, with the raw
// per-thread system calls, so that the rest of the test process keeps it.
#pragma once

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <exception>
#include <string>
#include <system_error>
#include <thread>

#include <catch2/catch.hpp>

#include "kernel_view.hpp"

namespace test {

inline bool has_cap_sys_admin() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &header, data) != 0) return false;
  return (data[0].effective & (1u << CAP_SYS_ADMIN)) != 0;
}

/// Privileged tests fail loudly, never pass, without CAP_SYS_ADMIN.
inline void require_privilege() {
  if (!has_cap_sys_admin()) {
    FAIL(
        "this test needs CAP_SYS_ADMIN (run it as root), or exclude privileged tests: "
        "ctest -LE privileged");
  }
}

/// Drops CAP_SYS_ADMIN from the calling thread's effective and permitted
/// sets with the raw syscall aimed at its own tid: other threads keep theirs.
inline void drop_cap_sys_admin_on_this_thread() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, tid()};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &header, data) != 0) throw std::system_error(errno, std::generic_category(), "capget");
  data[0].effective &= ~(1u << CAP_SYS_ADMIN);
  data[0].permitted &= ~(1u << CAP_SYS_ADMIN);
  header.pid = tid();
  if (::syscall(SYS_capset, &header, data) != 0) throw std::system_error(errno, std::generic_category(), "capset");
}

/// Runs `fn` on a fresh std::thread and returns what it threw; assert on it
/// from the test's own thread.
template <typename Fn>
std::exception_ptr on_fresh_thread(Fn&& fn) {
  std::exception_ptr error;
  std::thread([&] {
    try {
      fn();
    } catch (...) {
      error = std::current_exception();
    }
  }).join();
  return error;
}

/// Runs `fn` on a fresh std::thread that has dropped CAP_SYS_ADMIN, so that
/// whatever it starts (workers, children) inherits the lack. Returns what
/// `fn` threw.
template <typename Fn>
std::exception_ptr on_unprivileged_thread(Fn&& fn) {
  return on_fresh_thread([&] {
    drop_cap_sys_admin_on_this_thread();
    fn();
  });
}

/// uid and gid of the user "nobody".
inline constexpr uid_t nobody = 65534;

/// Runs `fn` on a fresh thread that has become uid and gid 65534 with the raw
/// per-thread system calls (glibc's wrappers would change every thread), so
/// that what it starts inherits those credentials. Returns what `fn` threw.
template <typename Fn>
std::exception_ptr on_nobody_thread(Fn&& fn) {
  const int dumpable = ::prctl(PR_GET_DUMPABLE);
  std::exception_ptr error = on_fresh_thread([&] {
    if (::syscall(SYS_setgroups, 0, nullptr) != 0 || ::syscall(SYS_setresgid, nobody, nobody, nobody) != 0 ||
        ::syscall(SYS_setresuid, nobody, nobody, nobody) != 0) {
      throw std::system_error(errno, std::generic_category(), "cannot become uid 65534 on this thread");
    }
    fn();
  });
  // Changing a uid made the whole process not dumpable; make it as it was.
  ::prctl(PR_SET_DUMPABLE, dumpable);
  return error;
}

/// The std::system_error that `fn` threw on an unprivileged thread (see
/// on_unprivileged_thread): its code, empty when nothing was thrown, and its
/// message. Anything else thrown fails the test.
struct Refusal {
  std::error_code code;
  std::string message;
};
template <typename Fn>
Refusal refusal_on_unprivileged_thread(Fn&& fn) {
  Refusal refusal;
  const std::exception_ptr other = on_unprivileged_thread([&] {
    try {
      fn();
    } catch (const std::system_error& e) {
      refusal = {e.code(), e.what()};
    }
  });
  CHECK(other == nullptr);
  return refusal;
}

}  // namespace test

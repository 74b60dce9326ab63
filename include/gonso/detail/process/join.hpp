// gonso: joining a planned Set from a single-threaded child.
// SPDX-License-Identifier: MIT
#pragma once

#include <linux/nsfs.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>

#include <gonso/detail/ns/join.hpp>
#include <gonso/detail/process/child_code.hpp>
#include <gonso/kind.hpp>

namespace gonso::detail {

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

}  // namespace gonso::detail

// gonso: starting a program inside a Set, as nsenter(1) or `ip netns exec`
// do, without exec'ing a helper. The engine is detail/process/spawn.hpp.
// SPDX-License-Identifier: MIT
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include <gonso/child.hpp>
#include <gonso/detail/process/spawn.hpp>
#include <gonso/detail/set_access.hpp>
#include <gonso/options.hpp>
#include <gonso/set.hpp>

namespace gonso {

/// Starts the program `argv` (argv[0] is the file; without a '/' it is looked
/// up in PATH, as execvp(3) does, inside the Set's mount namespace) in a
/// process that has joined every namespace of `set` it is not already in,
/// user and time included. Returns the Child that owns it.
///
/// The program is a direct child of the caller, also in a pid or time
/// namespace: there the child joins and clones the program with
/// CLONE_PARENT, so that it is inside the namespace (the README, "How namespaces behave", "pid").
/// It gets fds 0, 1 and 2 only (as `options` says), every other fd of the
/// caller being close-on-exec for it; default signal dispositions and an
/// empty signal mask; and no death signal: like posix_spawn(3)'s, it outlives
/// the caller unless the Child is destroyed first. The child is a raw clone
/// (no pthread_atfork handlers run) that makes only system calls until exec;
/// everything that allocates is done before. Unless a time namespace is
/// joined, it shares the caller's memory and the calling thread waits until
/// the program has been exec'd, as with posix_spawn(3) (CLONE_VM |
/// CLONE_VFORK): no copy of the caller's page tables; in a pid namespace the
/// program's pidfd comes from its clone. Joining a time namespace forks. May
/// be called from many threads at once, and from inside Set::run.
///
/// Throws std::invalid_argument for an empty argv, an empty argv[0], a NUL
/// inside an argument, env entry or cwd, an env entry without '=', or a bad
/// etc_of_netns name; std::logic_error for an empty Set;
/// std::system_error with the child's errno when a step before exec fails
/// ("cannot join net namespace net:[4026532008]: Operation not permitted",
/// "cannot execute /no/such: No such file or directory", "cannot change
/// directory to /x: No such file or directory"), and with the caller's for
/// pipe, fork and pidfd failures; std::system_error(EINVAL), before starting
/// anything, when a pid or time namespace is to be joined from a thread whose
/// children go to another pid namespace (inside Set::run of a Set holding
/// one), where the program's pid could not be learnt. After an error nothing
/// is left: no process, zombie or fd.
[[nodiscard]] inline Child spawn(const Set& set, const std::vector<std::string>& argv,
                                 const SpawnOptions& options = {}) {
  detail::check_argv(argv);
  if (set.empty()) {
    throw std::logic_error("cannot spawn a program in an empty Set (moved-from, or opened with no kinds)");
  }
  detail::spawned program = detail::spawn_program(detail::set_access::handles(set), set.kinds(), argv, options);
  return detail::child_access::make(std::move(program.pidfd), program.pid, std::move(program.in),
                                    std::move(program.out), std::move(program.err));
}

}  // namespace gonso

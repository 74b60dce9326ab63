// gonso: the calling thread's own files under /proc.
// SPDX-License-Identifier: MIT
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string_view>

namespace gonso {

/// `/proc/thread-self/RELATIVE`: the calling thread's view of a per-task
/// proc file, e.g. thread_proc_path("net/dev") for the interfaces of the
/// thread's network namespace.
///
/// Why not `/proc/self`: namespaces belong to threads, and `/proc/self`
/// names the process, that is its main thread. A callable run by Set::run
/// is on a worker thread that joined the Set, while the main thread stays
/// where it was, so `/proc/self/net/dev` and `/proc/net/dev` (a link
/// through `/proc/self`) show the host's interfaces, silently. The same
/// holds for `/proc/self/mountinfo`, `/proc/self/ns/*`, `/proc/self/status`
/// (a thread's credentials may differ from the main thread's) and
/// `/proc/self/attr`. In a child process of run_in_process or spawn both
/// agree: it has one thread.
///
/// `/proc` itself is the calling thread's mount namespace's: after joining
/// a mount namespace it may be another procfs, which shows another pid
/// namespace's threads, or none. Throws std::invalid_argument for an
/// absolute `relative` or one that climbs out with "..".
[[nodiscard]] inline std::filesystem::path thread_proc_path(std::string_view relative = {}) {
  const std::filesystem::path rel(relative);
  if (rel.is_absolute())
    throw std::invalid_argument("thread_proc_path: the path must be relative to /proc/thread-self");
  for (const auto& part : rel) {
    if (part == "..") throw std::invalid_argument("thread_proc_path: the path may not climb out with \"..\"");
  }
  return std::filesystem::path("/proc/thread-self") / rel;
}

}  // namespace gonso

// gonso: the namespaces of the host's processes, as util-linux lsns lists them.
// SPDX-License-Identifier: MIT
#pragma once

#include <sys/types.h>

#include <cerrno>
#include <cstdint>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include <gonso/detail/ns/kinds.hpp>
#include <gonso/detail/ns/scan.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>
#include <gonso/set.hpp>

namespace gonso {

/// One namespace that at least one process was in when scan_namespaces
/// looked, and which processes those were.
struct NamespaceInfo {
  Kind kind{};
  /// Kind, nsfs device and inode (as /proc/PID/ns/KIND reads, "net:[4026531840]"),
  /// and the NS_GET_ID of ns_id when it was read.
  Identity id;
  /// The kernel's never-reused id (NS_GET_ID); nullopt when the kernel lacks
  /// it, when relations were not read, or when every process had left.
  std::optional<std::uint64_t> ns_id;
  /// The user namespace that owns it (NS_GET_USERNS); nullopt where the
  /// kernel refuses, as for the caller's initial user namespace (EPERM).
  std::optional<Identity> owner;
  /// The parent of a pid or user namespace (NS_GET_PARENT); nullopt for the
  /// other kinds and at the top of what the caller may see (EPERM).
  std::optional<Identity> parent;
  /// The processes (not threads) that were in it, ascending.
  std::vector<pid_t> pids;

  /// A Set holding this namespace, opened through /proc/PID/ns/KIND of each
  /// pid in turn and kept from the first whose identity is this one: a
  /// process may have left the namespace since, or ended and had its pid
  /// reused. Throws std::system_error: ESRCH when none of the pids is still
  /// in it (the namespace may be gone), EACCES or EPERM when the caller may
  /// not open those that were not seen to have left it.
  ///
  /// The match is on the namespace id where the scan read one (ns_id, which
  /// the kernel never hands out twice). Without it (relations off, or a
  /// kernel without NS_GET_ID) it is on device and inode alone, which nsfs
  /// reuses once a namespace is gone: a process that took a listed pid may
  /// then be in a newer namespace with the same inode, and open() would
  /// return that one. Scan with relations where that matters.
  [[nodiscard]] Set open() const {
    int refused = 0;
    for (const pid_t pid : pids) {
      try {
        Set set = Set::from_pid(pid, kind);
        if (set.identity(kind) == id) return set;
      } catch (const std::system_error& e) {
        const int err = e.code().value();
        if (err == EACCES || err == EPERM) {
          refused = err;
        } else if (err != ESRCH && err != ENOENT) {
          throw;
        }
      }
    }
    if (refused != 0) throw detail::system_error(refused, "cannot open {}: its processes may not be looked at", id);
    throw detail::system_error(ESRCH, "cannot open {}: none of its {} processes is still in it", id, pids.size());
  }
};

/// A process scan_namespaces left out: `error` is ESRCH for one that ended
/// while it was being read, EACCES or EPERM for one whose namespaces the
/// caller may not read (ptrace access mode, as for lsns).
struct Skipped {
  pid_t pid = 0;
  int error = 0;
};

/// What one scan found.
struct NamespaceScan {
  /// Sorted by kind (in all_kinds order) and then by inode.
  std::vector<NamespaceInfo> namespaces;
  /// In the order /proc lists them (ascending pids).
  std::vector<Skipped> skipped;
};

/// What scan_namespaces reads.
struct ScanOptions {
  /// The kinds to list.
  Kinds kinds = Kinds::all();
  /// Also read ns_id, owner and parent: one open(2) and at most four ioctls
  /// per namespace found, never per process.
  bool relations = true;
};

/// Every namespace of `options.kinds` that a process of /proc is in, with
/// those processes, as util-linux lsns lists them: namespaces held only by an
/// fd or a bind mount are not found, threads in other namespaces than their
/// process's main thread are not looked at, and kernel threads count. A
/// zombie still counts in its pid and user namespaces (the kernel keeps
/// those links; it drops the others at exit).
///
/// A snapshot of a moving system: processes start and end while /proc is
/// read. One that ends meanwhile, and one the caller may not look at (as
/// without root, or a process that is not dumpable), is left out and listed
/// in `skipped`, never thrown for; a namespace may therefore be missing, or
/// have fewer pids, than a later look shows. Throws std::invalid_argument
/// for kinds that are not kinds, std::system_error naming /proc when /proc
/// itself cannot be read, or when the process runs out of fds or memory.
[[nodiscard]] inline NamespaceScan scan_namespaces(const ScanOptions& options = {}) {
  detail::checked(options.kinds, "scan_namespaces");
  NamespaceScan scan;
  if (options.kinds.empty()) return scan;
  detail::scan_output found = detail::proc_scanner(options.kinds, options.relations).run();
  scan.namespaces.reserve(found.namespaces.size());
  for (detail::scanned_ns& ns : found.namespaces) {
    scan.namespaces.push_back(NamespaceInfo{ns.id.kind, ns.id, ns.ns_id, ns.owner, ns.parent, std::move(ns.pids)});
  }
  scan.skipped.reserve(found.skipped.size());
  for (const detail::scanned_skip& s : found.skipped) scan.skipped.push_back(Skipped{s.pid, s.error});
  return scan;
}

}  // namespace gonso

// gonso: one pass over /proc that finds the namespaces every process is in,
// for scan_namespaces (namespaces.hpp).
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include <gonso/detail/ns/kinds.hpp>
#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/ns/table.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>

namespace gonso::detail {

/// One namespace as a scan found it.
struct scanned_ns {
  Identity id;
  std::optional<std::uint64_t> ns_id;
  std::optional<Identity> owner;
  std::optional<Identity> parent;
  std::vector<pid_t> pids;
};

/// A process the scan could not read: ESRCH when it ended meanwhile, EACCES
/// or EPERM when the caller may not look at its namespaces.
struct scanned_skip {
  pid_t pid;
  int error;
};

struct scan_output {
  std::vector<scanned_ns> namespaces;
  std::vector<scanned_skip> skipped;
};

/// Index of the namespaces found so far by (kind row, inode): open
/// addressing over a power-of-two table of indices + 1 (0 marks a free
/// slot). A host has hundreds of namespaces and each process names eight,
/// so the lookups, not the inserts, are what must be cheap.
class ns_index {
 public:
  /// The index stored for the key, or `next` after storing it there.
  [[nodiscard]] std::size_t find_or_add(std::size_t row, ino_t inode, std::size_t next,
                                        const std::vector<scanned_ns>& found) {
    if (2 * (next + 1) > slots_.size()) grow(found);
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t at = hash(row, inode) & mask;; at = (at + 1) & mask) {
      const std::uint32_t slot = slots_[at];
      if (slot == 0) {
        slots_[at] = static_cast<std::uint32_t>(next + 1);
        return next;
      }
      const Identity& id = found[slot - 1].id;
      if (id.inode == inode && index_of(id.kind) == row) return slot - 1;
    }
  }

 private:
  [[nodiscard]] static std::size_t hash(std::size_t row, ino_t inode) noexcept {
    // Fibonacci hashing: nsfs inodes are consecutive numbers, which the
    // multiplication spreads over the high bits taken here.
    const std::uint64_t key = (static_cast<std::uint64_t>(inode) << 3U) ^ row;
    return static_cast<std::size_t>((key * 0x9e3779b97f4a7c15ULL) >> 32U);
  }

  void grow(const std::vector<scanned_ns>& found) {
    std::vector<std::uint32_t> old = std::move(slots_);
    slots_.assign(std::max<std::size_t>(256, 2 * old.size()), 0);
    const std::size_t mask = slots_.size() - 1;
    for (const std::uint32_t slot : old) {
      if (slot == 0) continue;
      const Identity& id = found[slot - 1].id;
      std::size_t at = hash(index_of(id.kind), id.inode) & mask;
      while (slots_[at] != 0) at = (at + 1) & mask;
      slots_[at] = slot;
    }
  }

  std::vector<std::uint32_t> slots_;
};

/// The device of every namespace file: the kernel keeps them all on one
/// nsfs superblock, so one stat(2) gives what readlink(2) of the others does
/// not say.
[[nodiscard]] inline dev_t nsfs_device() {
  struct stat st {};
  if (::stat("/proc/self/ns/net", &st) != 0) throw system_error(errno, "cannot stat /proc/self/ns/net");
  return st.st_dev;
}

/// A namespace related to the one `fd` holds (NS_GET_USERNS, NS_GET_PARENT),
/// or nullopt when the kernel refuses (EPERM past the top the caller may see).
[[nodiscard]] inline std::optional<Identity> related_ns(int fd, unsigned long request, Kind kind) noexcept {
  const unique_fd other(::ioctl(fd, request));
  struct stat st {};
  if (!other || ::fstat(other.get(), &st) != 0) return std::nullopt;
  return Identity{kind, st.st_dev, st.st_ino, ns_id(other.get())};
}

/// Reads what only an fd of a namespace can tell: its NS_GET_ID, owner and
/// parent. Opens it through the first of its processes still in it (a pid
/// may have ended, or been reused by a process elsewhere, since the pass).
inline void read_relations(int procfd, scanned_ns& ns) {
  const char* kind_name = name(ns.id.kind).data();  // the names are literals
  for (const pid_t pid : ns.pids) {
    std::array<char, 48> path{};
    const int n = std::snprintf(path.data(), path.size(), "%d/ns/%s", static_cast<int>(pid), kind_name);
    if (n <= 0) continue;
    const unique_fd fd(::openat(procfd, path.data(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
    if (!fd) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) {
        throw system_error(errno, "cannot open /proc/{} to read {}", path.data(), ns.id);
      }
      continue;  // ended, or refused
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || st.st_ino != ns.id.inode) continue;
    ns.id.device = st.st_dev;
    if (const std::uint64_t id = ns_id(fd.get()); id != 0) {
      ns.ns_id = id;
      ns.id.id = id;
    }
    ns.owner = related_ns(fd.get(), NS_GET_USERNS, Kind::user);
    if (ns.id.kind == Kind::pid || ns.id.kind == Kind::user)
      ns.parent = related_ns(fd.get(), NS_GET_PARENT, ns.id.kind);
    return;
  }
}

/// What readlink(2) of one namespace link came to.
enum class link_state { found, absent, refused };

/// One pass over /proc: getdents64 on the folder, then for each process an
/// O_PATH fd of /proc/PID/ns (so that every link read names that process,
/// never one that took its pid meanwhile) and readlink(2) of each link, which
/// unlike stat(2) makes the kernel build no nsfs inode: half the cost. The
/// kernel lists processes there, not threads, as util-linux lsns counts them.
class proc_scanner {
 public:
  proc_scanner(Kinds kinds, bool relations) : kinds_(kinds), relations_(relations) {}

  [[nodiscard]] scan_output run() {
    const unique_fd procfd(::open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!procfd) throw system_error(errno, "cannot open /proc");
    device_ = nsfs_device();
    // 64 KiB: about 2500 processes per getdents64 call.
    constexpr std::size_t buffer_size = std::size_t{64} * 1024;
    const auto buffer = std::make_unique<char[]>(buffer_size);
    for (;;) {
      const long got = ::syscall(SYS_getdents64, procfd.get(), buffer.get(), buffer_size);
      if (got < 0) throw system_error(errno, "cannot read /proc");
      if (got == 0) break;
      for (std::size_t at = 0; at < static_cast<std::size_t>(got);) {
        // struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name.
        // Copied out, not cast: the buffer holds bytes, not objects.
        unsigned short reclen = 0;
        std::memcpy(&reclen, buffer.get() + at + 16, sizeof reclen);
        if (reclen == 0) throw system_error(EIO, "cannot read /proc: a zero-length entry");
        visit(procfd.get(), buffer.get() + at + 19);
        at += reclen;
      }
    }
    if (relations_) {
      for (scanned_ns& ns : out_.namespaces) read_relations(procfd.get(), ns);
    }
    for (scanned_ns& ns : out_.namespaces) {
      // /proc lists pids in ascending order; a sort only when that changed.
      if (!std::is_sorted(ns.pids.begin(), ns.pids.end())) std::sort(ns.pids.begin(), ns.pids.end());
    }
    std::sort(out_.namespaces.begin(), out_.namespaces.end(), [](const scanned_ns& a, const scanned_ns& b) {
      const std::size_t ra = index_of(a.id.kind);
      const std::size_t rb = index_of(b.id.kind);
      return ra != rb ? ra < rb : a.id.inode < b.id.inode;
    });
    return std::move(out_);
  }

 private:
  void visit(int procfd, const char* entry) {
    // Processes only: every other entry of /proc starts with a non-digit.
    pid_t pid = 0;
    std::size_t len = 0;
    for (; entry[len] != '\0'; ++len) {
      if (entry[len] < '0' || entry[len] > '9' || len == 9) return;  // pid_max is at most 2^22
      pid = pid * 10 + (entry[len] - '0');
    }
    if (len == 0 || pid <= 0) return;
    std::array<char, 16> path{};
    std::memcpy(path.data(), entry, len);
    std::memcpy(path.data() + len, "/ns", 4);
    const unique_fd nsdir(::openat(procfd, path.data(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!nsdir) {
      const int err = errno;
      if (err == ENOENT || err == ESRCH) return skip(pid, ESRCH);
      if (err == EACCES || err == EPERM) return skip(pid, err);
      throw system_error(err, "cannot open /proc/{}", path.data());
    }
    // Read every link before counting any: a refused process is left out
    // whole, not counted in the kinds that happened to be readable.
    std::array<ino_t, kind_count> inodes{};
    bool any = false;
    for (const Kind kind : kinds_) {
      const std::size_t row = index_of(kind);
      ino_t& inode = inodes[row];
      switch (read_link(nsdir.get(), kind_table[row].name, inode)) {
        case link_state::found:
          any = true;
          break;
        case link_state::absent:
          break;
        case link_state::refused:
          return skip(pid, refusal_);
      }
    }
    // A zombie still shows its pid and user namespaces, which hang on its
    // pid and credentials, and lost the others; lsns counts it there too. A
    // process with no link left has ended.
    if (!any) return skip(pid, ESRCH);
    for (const Kind kind : kinds_) {
      const std::size_t row = index_of(kind);
      if (inodes[row] != 0) add(row, inodes[row], pid);
    }
  }

  link_state read_link(int nsdir, const char* link, ino_t& inode) {
    std::array<char, 64> text{};
    const ssize_t n = ::readlinkat(nsdir, link, text.data(), text.size());
    if (n < 0) {
      const int err = errno;
      if (err == ENOENT || err == ESRCH) return link_state::absent;
      if (err == EACCES || err == EPERM) {
        refusal_ = err;
        return link_state::refused;
      }
      throw system_error(err, "cannot read the namespace link {} of a process", link);
    }
    inode = link_inode(text.data(), static_cast<std::size_t>(n));
    if (inode == 0) throw system_error(EINVAL, "cannot read the namespace link {}: unexpected text", link);
    return link_state::found;
  }

  void add(std::size_t row, ino_t inode, pid_t pid) {
    // Most processes share the namespaces of the one before them.
    std::size_t& last = last_[row];
    if (last != none && out_.namespaces[last].id.inode == inode) {
      out_.namespaces[last].pids.push_back(pid);
      return;
    }
    const std::size_t next = out_.namespaces.size();
    const std::size_t at = index_.find_or_add(row, inode, next, out_.namespaces);
    if (at == next) {
      scanned_ns& ns = out_.namespaces.emplace_back();
      ns.id = Identity{all_kinds[row], device_, inode, 0};
    }
    out_.namespaces[at].pids.push_back(pid);
    last = at;
  }

  void skip(pid_t pid, int err) { out_.skipped.push_back({pid, err}); }

  static constexpr std::size_t none = static_cast<std::size_t>(-1);

  Kinds kinds_;
  bool relations_;
  dev_t device_ = 0;
  int refusal_ = EACCES;
  std::array<std::size_t, kind_count> last_ = [] {
    std::array<std::size_t, kind_count> rows{};
    rows.fill(none);
    return rows;
  }();
  ns_index index_;
  scan_output out_;
};

}  // namespace gonso::detail

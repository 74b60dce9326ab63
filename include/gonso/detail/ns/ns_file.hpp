// gonso: opening and validating namespace files.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <filesystem>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include <gonso/detail/ns/kinds.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>

namespace gonso::detail {

/// One namespace held open: the fd that keeps it alive, its identity, and
/// whatever else must live as long as it is used (the init of a pid
/// namespace gonso made), shared by every copy.
struct ns_handle {
  unique_fd fd;
  Identity id;
  std::shared_ptr<void> keep_alive;
};

/// One namespace handle per kind, indexed by index_of(kind).
using ns_handles = std::array<ns_handle, kind_count>;

/// The O_PATH fd of /proc/thread-self/ns of the calling worker thread, or -1
/// on any other thread. Opened before the worker joins anything, it keeps
/// naming this thread's namespaces through the host's procfs even while the
/// thread sits in a mount namespace with another /proc, or none.
inline thread_local int worker_ns_dir = -1;

/// Checks that `fd` is a namespace of `kind` and returns its identity.
/// `what` names the fd's origin in messages ("/proc/42/ns/net", "fd 7").
/// Throws std::system_error(EINVAL) for a file that is not a namespace or is
/// a namespace of another kind; the kernel's setns(2) would only say EINVAL.
[[nodiscard]] inline Identity validate_ns_fd(int fd, Kind kind, std::string_view what) {
  struct statfs fs {};
  if (::fstatfs(fd, &fs) != 0) throw system_error(errno, "cannot inspect {} as {} namespace", what, kind);
  if (fs.f_type != nsfs_magic) {
    throw system_error(EINVAL, "cannot use {} as {} namespace: not a namespace file (filesystem magic {:#x})", what,
                       kind, static_cast<unsigned long>(fs.f_type));
  }
  const int type = ns_type(fd);
  if (type < 0) throw system_error(errno, "cannot read the namespace type of {}", what);
  if (type != clone_flag(kind)) {
    // An unknown type means a kernel newer than the library; say so by number.
    const char* actual = "unknown";
    for (Kind k : all_kinds) {
      if (clone_flag(k) == type) actual = name(k).data();
    }
    throw system_error(EINVAL, "cannot use {} as {} namespace: it is a {} namespace", what, kind, actual);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw system_error(errno, "cannot stat {} namespace {}", kind, what);
  return Identity{kind, st.st_dev, st.st_ino, ns_id(fd)};
}

/// Opens `path` (relative to `dirfd`, or absolute) as a namespace of `kind`,
/// close-on-exec, and validates it. Throws std::system_error with the errno of
/// the failing call. Returns an empty handle instead when the file does not
/// exist and `missing_ok` is set.
[[nodiscard]] inline ns_handle open_ns(int dirfd, const char* path, Kind kind, std::string_view what,
                                       bool missing_ok = false) {
  unique_fd fd(::openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    if (missing_ok && errno == ENOENT) return {};
    throw system_error(errno, "cannot open {} namespace {}", kind, what);
  }
  Identity id = validate_ns_fd(fd.get(), kind, what);
  return {std::move(fd), id, nullptr};
}

/// The identity of the namespace file at `path` (relative to `dirfd`), read
/// with fstatat(2): no fd is opened. Returns 0 or the errno.
[[nodiscard]] inline int stat_ns(int dirfd, const char* path, Kind kind, Identity& out) noexcept {
  struct stat st {};
  if (::fstatat(dirfd, path, &st, 0) != 0) return errno;
  out = Identity{kind, st.st_dev, st.st_ino, 0};
  return 0;
}

/// The inode number a namespace link reads as, "net:[4026531840]", or 0
/// when `text` is not of that form.
[[nodiscard]] inline ino_t link_inode(const char* text, std::size_t size) noexcept {
  std::size_t i = 0;
  while (i < size && text[i] != '[') ++i;
  if (++i >= size) return 0;
  ino_t inode = 0;
  for (; i < size && text[i] >= '0' && text[i] <= '9'; ++i) inode = inode * 10 + static_cast<ino_t>(text[i] - '0');
  return i + 1 == size && text[i] == ']' ? inode : 0;
}

/// The inode of the namespace link `path` (relative to `dirfd`), from
/// readlink(2): unlike stat(2) it does not make the namespace's nsfs inode,
/// which halves the cost of a look here (the README, "How namespaces behave"). 0 on any failure.
[[nodiscard]] inline ino_t read_ns_link(int dirfd, const char* path) noexcept {
  char text[64];
  const ssize_t n = ::readlinkat(dirfd, path, text, sizeof text);
  return n > 0 && static_cast<std::size_t>(n) < sizeof text ? link_inode(text, static_cast<std::size_t>(n)) : 0;
}

/// "{net:[4026532008], uts:[4026531838]}": the identities of `kinds` in
/// `ns`, as a Set prints itself; "{}" when empty.
[[nodiscard]] inline std::string describe(const ns_handles& ns, Kinds kinds) {
  std::string out = "{";
  for (Kind kind : kinds)
    fmt::format_to(std::back_inserter(out), "{}{}", out.size() > 1 ? ", " : "", ns[index_of(kind)].id);
  return out + "}";
}

/// Namespaces opened together, for a Set to adopt.
struct opened_ns {
  ns_handles ns{};
  Kinds kinds;
  void put(Kind kind, ns_handle&& handle) noexcept {
    ns[index_of(kind)] = std::move(handle);
    kinds |= kind;
  }
};

/// `kinds` from a /proc/PID/ns-like folder: `prefix` + name under `dirfd`.
/// `whose` says whose they are in messages ("pid 42", "this thread").
[[nodiscard]] inline opened_ns open_proc_ns(int dirfd, std::string_view prefix, Kinds kinds, std::string_view whose) {
  opened_ns out;
  for (Kind kind : kinds) {
    const std::string path = fmt::format("{}{}", prefix, name(kind));
    out.put(kind, open_ns(dirfd, path.c_str(), kind, fmt::format("{} of {}", path, whose)));
  }
  return out;
}

/// `kinds` from a folder of namespace files named as in /proc/PID/ns; with
/// `missing_ok`, whichever of them it has, but at least one (ENOENT).
[[nodiscard]] inline opened_ns open_ns_folder(const std::filesystem::path& dir, Kinds kinds, bool missing_ok) {
  const unique_fd dirfd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dirfd) throw system_error(errno, "cannot open namespace folder {}", dir.native());
  opened_ns out;
  for (Kind kind : kinds) {
    const std::string path = (dir / name(kind)).native();
    ns_handle ns = open_ns(dirfd.get(), std::string(name(kind)).c_str(), kind, path, missing_ok);
    if (ns.fd) out.put(kind, std::move(ns));
  }
  if (out.kinds.empty()) {
    throw system_error(ENOENT, "cannot open namespace folder {}: it holds no namespace file of {}", dir.native(),
                       kinds);
  }
  return out;
}

}  // namespace gonso::detail

// gonso: opening and validating namespace files.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include <fmt/format.h>

#include <gonso/detail/ns/kinds.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>

namespace gonso::detail {

/// One open namespace fd shared by every copy of the handle holding it. A
/// namespace fd never changes what it names and is never repositioned, so
/// copies need no descriptor of their own: a copy costs a reference count,
/// not a dup(2), and 1000 Sets carrying the same namespaces hold one fd for
/// each (a Set per container under the default 1024-fd limit). The fd closes
/// with the last copy.
class shared_fd {
 public:
  shared_fd() noexcept = default;
  // Implicit: an ns_handle is built from the fd just opened. May throw
  // std::bad_alloc, and then closes the fd.
  shared_fd(unique_fd&& fd) : fd_(fd ? std::make_shared<const unique_fd>(std::move(fd)) : nullptr) {}  // NOLINT

  [[nodiscard]] int get() const noexcept { return fd_ ? fd_->get() : -1; }
  [[nodiscard]] bool valid() const noexcept { return fd_ != nullptr; }
  explicit operator bool() const noexcept { return valid(); }

  /// A namespace fd gonso just opened, identified as `id`: when a live
  /// shared_fd already holds that namespace, that one is shared and `fd`
  /// closed, so that Sets opened apart (1000 `Set::current().unshare(net)`
  /// each carry seven kinds from a Set of their own) still hold one fd per
  /// namespace. A live entry keeps its namespace alive, so its inode number
  /// cannot have been given to another meanwhile.
  [[nodiscard]] static shared_fd interned(unique_fd&& fd, const Identity& id);

 private:
  explicit shared_fd(std::shared_ptr<const unique_fd> fd) noexcept : fd_(std::move(fd)) {}

  std::shared_ptr<const unique_fd> fd_;
};

/// The namespaces gonso holds open, by nsfs inode, for shared_fd::interned.
/// Never destroyed: Sets may outlive static destructors.
class ns_fd_registry {
 public:
  [[nodiscard]] static ns_fd_registry& instance() {
    static ns_fd_registry* const registry = new ns_fd_registry;  // NOLINT(cppcoreguidelines-owning-memory)
    return *registry;
  }

  [[nodiscard]] std::shared_ptr<const unique_fd> share(unique_fd&& fd, const Identity& id) {
    auto made = std::make_shared<const unique_fd>(std::move(fd));
    // try_lock, never lock: a child of fork() whose parent had another
    // thread here must not wait for a lock nobody will release. Without the
    // lock the fd is simply not shared.
    std::unique_lock lock(mutex_, std::try_to_lock);
    if (!lock) return made;
    const key k{id.device, id.inode};
    if (const auto it = held_.find(k); it != held_.end()) {
      if (auto live = it->second.lock()) return live;  // `made` closes its fd
      it->second = made;
      return made;
    }
    if (held_.size() >= sweep_at_) {
      std::erase_if(held_, [](const auto& entry) { return entry.second.expired(); });
      sweep_at_ = std::max<std::size_t>(64, 2 * held_.size());
    }
    held_.emplace(k, made);
    return made;
  }

 private:
  struct key {
    dev_t device;
    ino_t inode;
    friend bool operator==(const key&, const key&) = default;
  };
  struct key_hash {
    std::size_t operator()(const key& k) const noexcept {
      return std::hash<ino_t>{}(k.inode) ^ (std::hash<dev_t>{}(k.device) << 1U);
    }
  };

  ns_fd_registry() = default;

  std::mutex mutex_;
  std::unordered_map<key, std::weak_ptr<const unique_fd>, key_hash> held_;
  std::size_t sweep_at_ = 64;
};

inline shared_fd shared_fd::interned(unique_fd&& fd, const Identity& id) {
  if (!fd) return {};
  return shared_fd(ns_fd_registry::instance().share(std::move(fd), id));
}

/// One namespace held open: the fd that keeps it alive, its identity, and
/// whatever else must live as long as it is used (the init of a pid
/// namespace gonso made), shared by every copy.
struct ns_handle {
  shared_fd fd;
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
  return {shared_fd::interned(std::move(fd), id), id, nullptr};
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
  for (Kind kind : kinds) out += fmt::format("{}{}", out.size() > 1 ? ", " : "", ns[index_of(kind)].id);
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

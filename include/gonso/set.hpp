// gonso: a set of Linux namespaces, and running code inside it.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>

#include <cxxabi.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/ns/netns_name.hpp>
#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/process/child_process.hpp>
#include <gonso/detail/process/creator.hpp>
#include <gonso/detail/process/pid_init.hpp>
#include <gonso/detail/process/report.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/detail/thread/worker_pool.hpp>
#include <gonso/error.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>
#include <gonso/run_context.hpp>
#include <gonso/workers.hpp>

namespace gonso {

/// What a new mount namespace does with the mount propagation it inherits.
enum class Propagation {
  rprivate,   ///< mount --make-rprivate /: nothing propagates either way (default)
  rslave,     ///< mount --make-rslave /: host mounts show up inside, not the reverse
  rshared,    ///< mount --make-rshared /: both ways
  unchanged,  ///< keep what was inherited: mounts inside may appear on the host
};

/// One line of a uid_map or gid_map: ids [inside, inside + count) of a new
/// user namespace are ids [outside, outside + count) of its parent.
struct IdRange {
  std::uint32_t inside = 0;
  std::uint32_t outside = 0;
  std::uint32_t count = 1;
};

/// Options of Set::unshare.
struct UnshareOptions {
  /// Applied to `/` of a new mount namespace. util-linux unshare(1) also
  /// defaults to rprivate, so that mounts made inside never leak to the host.
  Propagation propagation = Propagation::rprivate;
  /// uid_map of a new user namespace, in ids of its parent: the caller's
  /// user namespace, or the Set's when the Set holds another one (a nested
  /// user namespace). Empty (the default): the caller's effective uid, as
  /// that parent sees it, becomes root, as `unshare --map-root-user` does.
  /// Mapping more than one's own id needs CAP_SETUID over the parent (which
  /// a nested namespace's maps have: they are written from inside the Set).
  std::vector<IdRange> uid_map{};
  /// gid_map of a new user namespace, likewise; empty maps the caller's
  /// effective gid to 0. Without CAP_SETGID, gonso first writes "deny" to
  /// setgroups, as the kernel requires; a nested namespace keeps its
  /// parent's setgroups setting.
  std::vector<IdRange> gid_map{};
  /// CLOCK_MONOTONIC and CLOCK_BOOTTIME inside a new time namespace run ahead
  /// of the caller's by these offsets (written before any process enters).
  std::chrono::nanoseconds monotonic_offset{0};
  std::chrono::nanoseconds boottime_offset{0};
};

/// Options of Set::run_in_process.
struct ProcessOptions {
  /// The name of a network namespace (as under /run/netns) whose files in
  /// /etc/netns/NAME are bound over those of /etc for the callable, in a
  /// mount namespace of its own, as `ip netns exec NAME` does (resolv.conf,
  /// hosts). A missing /etc/netns/NAME binds nothing. nullopt: none.
  std::optional<std::string> etc_of_netns{};
};

namespace detail {

/// Pairs of paths, /etc/netns/NAME/x then /etc/x, for every file of
/// /etc/netns/NAME, listed in the caller's mount namespace as iproute2 does.
/// The folder is opened with no symlink followed in any component (a link
/// there is refused with ENOTDIR, not listed), and listed through that fd;
/// a missing folder is an empty overlay.
[[nodiscard]] inline std::vector<std::string> etc_overlay(const std::string& netns) {
  check_netns_name(netns);
  const std::string folder = "/etc/netns/" + netns;
  struct {
    std::uint64_t flags, mode, resolve;
  } how{O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0, 0x04 /* RESOLVE_NO_SYMLINKS */};
  const unique_fd dir(static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, folder.c_str(), &how, sizeof how)));
  if (!dir) {
    if (errno == ENOENT) return {};
    throw system_error(errno, "cannot overlay /etc with {} (no symlink is followed there)", folder);
  }
  std::vector<std::string> pairs;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(fmt::format("/proc/self/fd/{}", dir.get()), ec)) {
    pairs.push_back(folder + "/" + entry.path().filename().native());
    pairs.push_back("/etc/" + entry.path().filename().native());
  }
  return pairs;
}

/// In a child that has its namespaces: a mount namespace of its own that
/// still sees the host's later mounts (slave), with the `count` paths of
/// `pairs` (source, target, source, ...) bound on top. A source is opened
/// with no symlink followed in any component, the last included (ELOOP: a
/// symlink in /etc/netns/NAME is refused where iproute2 would follow it).
/// A target in /etc is followed as iproute2 follows it (/etc/resolv.conf is
/// often a symlink into /run), once: that is only the system's /etc, and
/// the bind lands in this child's own mount namespace. The source's inode
/// is then mounted onto the target's through their fds (open_tree(2),
/// move_mount(2)), so that nothing swapped between opening and mounting is
/// acted on. Returns 0, or the
/// errno with `failed` the index of the failing pair's source (or SIZE_MAX
/// for the namespace itself). Async-signal-safe.
[[nodiscard]] GONSO_CHILD_CODE inline int bind_etc_overlay(const char* const* pairs, std::size_t count,
                                                           std::size_t& failed) noexcept {
  if (count == 0) return 0;
  if (::syscall(SYS_unshare, CLONE_NEWNS) != 0 ||
      ::syscall(SYS_mount, "", "/", "none", MS_SLAVE | MS_REC, nullptr) != 0) {
    failed = SIZE_MAX;
    return errno;
  }
  struct {
    std::uint64_t flags, mode, resolve;
  } how{O_PATH | O_NOFOLLOW | O_CLOEXEC, 0, 0x04 /* RESOLVE_NO_SYMLINKS */};
  const auto open_checked = [&how](const char* path) noexcept {
    const int fd = static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how));
    struct stat st {};
    if (fd >= 0 && (::syscall(SYS_fstat, fd, &st) != 0 || S_ISLNK(st.st_mode))) {
      ::syscall(SYS_close, fd);
      errno = ELOOP;
      return -1;
    }
    return fd;
  };
  for (std::size_t i = 0; i + 1 < count; i += 2) {
    int err = 0;
    const int source = open_checked(pairs[i]);
    const int target =
        source < 0 ? -1 : static_cast<int>(::syscall(SYS_openat, AT_FDCWD, pairs[i + 1], O_PATH | O_CLOEXEC));
    const int tree = target < 0 ? -1
                                : static_cast<int>(::syscall(SYS_open_tree, source, "",
                                                             1 /* OPEN_TREE_CLONE */ | O_CLOEXEC | AT_EMPTY_PATH));
    if (tree < 0 || ::syscall(SYS_move_mount, tree, "", target, "", 0x04 | 0x40 /* F_ and T_EMPTY_PATH */) != 0) {
      err = errno;
    }
    for (const int fd : {tree, target, source}) {
      if (fd >= 0) ::syscall(SYS_close, fd);
    }
    if (err != 0) {
      failed = i;
      return err;
    }
  }
  return 0;
}

/// The C strings of `strings`, for a child that may not call into the
/// standard library.
[[nodiscard]] inline std::vector<const char*> c_strings(const std::vector<std::string>& strings) {
  std::vector<const char*> out;
  out.reserve(strings.size());
  for (const std::string& s : strings) out.push_back(s.c_str());
  return out;
}

template <typename F>
inline constexpr bool takes_context = std::is_invocable_v<F&&, RunContext&>;

template <typename F>
using run_result_t =
    typename std::conditional_t<takes_context<F>, std::invoke_result<F&&, RunContext&>, std::invoke_result<F&&>>::type;

/// A Pool's mark on a Set one get() handed out: the pool, and whether the
/// Set is still out (put() takes it back at most once).
struct pool_lease {
  explicit pool_lease(std::uint64_t by) noexcept : pool(by) {}
  const std::uint64_t pool;
  std::atomic<bool> out{true};
};

/// A run's callable and the place for its outcome, on the caller's stack.
template <typename F, typename R>
class run_job final : public job {
 public:
  run_job(const ns_handles* into, Kinds joining, bool restoring, F&& fn) noexcept
      : job(into, joining, restoring), fn_(std::addressof(fn)) {}

  GONSO_CATCHES_FORCED_UNWIND void invoke(RunContext& ctx) override {
    try {
      if constexpr (std::is_void_v<R>) {
        call(ctx);
      } else {
        value_.emplace(call(ctx));
      }
    } catch (abi::__forced_unwind&) {
      throw;  // pthread_exit or cancellation: the worker ends its thread (worker::perform)
    } catch (...) {
      error = std::current_exception();
    }
  }

  /// The callable's value, or its exception (or the join's) rethrown.
  R take() {
    if (error) std::rethrow_exception(error);
    if constexpr (!std::is_void_v<R>) return std::move(*value_);
  }

 private:
  decltype(auto) call(RunContext& ctx) {
    if constexpr (takes_context<F>) {
      return std::invoke(std::forward<F>(*fn_), ctx);
    } else {
      return std::invoke(std::forward<F>(*fn_));
    }
  }

  std::remove_reference_t<F>* fn_;
  std::optional<std::conditional_t<std::is_void_v<R>, bool, R>> value_;
};

}  // namespace detail

/// The kind of namespace an fd refers to (NS_GET_NSTYPE), e.g. to sort fds
/// passed in by another program. Throws std::system_error: EBADF for a
/// closed fd, EINVAL for an fd that is not a namespace or of a kind gonso
/// does not know.
[[nodiscard]] inline Kind kind_of(int fd) {
  struct statfs fs {};
  if (::fstatfs(fd, &fs) != 0) throw detail::system_error(errno, "cannot inspect fd {}", fd);
  if (fs.f_type != detail::nsfs_magic) throw detail::system_error(EINVAL, "fd {} is not a namespace", fd);
  const int type = detail::ns_type(fd);
  if (type < 0) throw detail::system_error(errno, "cannot read the namespace type of fd {}", fd);
  for (Kind kind : all_kinds) {
    if (clone_flag(kind) == type) return kind;
  }
  throw detail::system_error(EINVAL, "fd {} is a namespace of unknown type {:#x}", fd, type);
}

class Executor;

/// A value type holding one namespace per kind, each as an owned,
/// close-on-exec fd. Holding the fd keeps the namespace alive. Copying
/// duplicates the fds; moving is noexcept and leaves the source empty.
/// Const member functions may be called from many threads at once.
///
/// Running code inside a Set never moves the calling thread: run() uses a
/// dedicated worker thread (see workers.hpp).
class Set {
 public:
  /// An empty Set: holds no namespace.
  Set() noexcept = default;

  Set(const Set& other) : kinds_(other.kinds_), pidfd_(other.pidfd_), lease_(other.lease_) {
    for (Kind kind : other.kinds_) {
      const detail::ns_handle& from = other.ns_[detail::index_of(kind)];
      detail::ns_handle& to = ns_[detail::index_of(kind)];
      to.fd = from.fd.duplicate();
      if (!to.fd) throw detail::system_error(errno, "cannot duplicate the fd of {} namespace {}", kind, from.id);
      to.id = from.id;
      to.keep_alive = from.keep_alive;
    }
  }
  Set& operator=(const Set& other) {
    if (this != &other) *this = Set(other);
    return *this;
  }
  Set(Set&& other) noexcept
      : kinds_(std::exchange(other.kinds_, Kinds{})),
        ns_(std::move(other.ns_)),
        pidfd_(std::move(other.pidfd_)),
        lease_(std::move(other.lease_)) {}
  Set& operator=(Set&& other) noexcept {
    if (this != &other) {
      kinds_ = std::exchange(other.kinds_, Kinds{});
      ns_ = std::move(other.ns_);  // closes the fds held so far at once
      pidfd_ = std::move(other.pidfd_);
      lease_ = std::move(other.lease_);
    }
    return *this;
  }
  ~Set() = default;

  /// The calling thread's namespaces of `kinds`, read from /proc/thread-self/ns
  /// (never /proc/self/ns, which is the main thread's). For pid and time this
  /// is the namespace the thread itself is in, not the one its children get.
  /// Throws std::system_error naming the kind that could not be opened.
  [[nodiscard]] static Set current(Kinds kinds = default_kinds) {
    detail::checked(kinds, "Set::current");
    // On a worker, read through the fd it opened before joining: the /proc
    // of a joined mount namespace may show another pid namespace, or be absent.
    if (detail::worker_ns_dir >= 0) return from_proc_dir(detail::worker_ns_dir, "", kinds, "this thread");
    return from_proc_dir(AT_FDCWD, "/proc/thread-self/ns/", kinds, "this thread");
  }

  /// The namespaces of `kinds` of process `pid`, from /proc/PID/ns. Throws
  /// std::invalid_argument for pid <= 0 and std::system_error(ESRCH) when
  /// there is no such process. The pid may be reused between the caller
  /// learning it and this call; a pidfd closes that race.
  [[nodiscard]] static Set from_pid(pid_t pid, Kinds kinds = default_kinds) {
    detail::checked(kinds, "Set::from_pid");
    if (pid <= 0) throw std::invalid_argument(fmt::format("cannot open namespaces of pid {}: not a process id", pid));
    const std::string dir = fmt::format("/proc/{}", pid);
    detail::unique_fd dirfd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dirfd) {
      const int err = errno == ENOENT ? ESRCH : errno;
      throw detail::system_error(err, "cannot open namespaces of pid {}", pid);
    }
    try {
      return from_proc_dir(dirfd.get(), "ns/", kinds, fmt::format("pid {}", pid));
    } catch (const std::system_error& e) {
      // /proc/PID of a zombie is still there, its namespace links are not.
      if (e.code() != std::errc::no_such_file_or_directory) throw;
      throw detail::system_error(ESRCH, "cannot open namespaces of pid {}: it has exited", pid);
    }
  }

  /// A folder of namespace files named as in /proc/PID/ns ("net", "mnt", ...),
  /// such as /proc/PID/ns itself or a folder of bind-mounted namespace files.
  /// Opens the files of `kinds`; all must be there.
  [[nodiscard]] static Set from_dir(const std::filesystem::path& dir, Kinds kinds) {
    return from_dir_impl(dir, detail::checked(kinds, "Set::from_dir"), /*missing_ok=*/false);
  }
  /// As above, with whichever files of default_kinds (all kinds but user) the
  /// folder has. Throws std::system_error(ENOENT) when it has none.
  [[nodiscard]] static Set from_dir(const std::filesystem::path& dir) {
    return from_dir_impl(dir, default_kinds, /*missing_ok=*/true);
  }

  /// One namespace file, e.g. /run/netns/NAME for Kind::net. Throws
  /// std::system_error(EINVAL) when the file is not a namespace of `kind`.
  [[nodiscard]] static Set from_file(Kind kind, const std::filesystem::path& path) {
    detail::checked(kind, "Set::from_file");
    Set set;
    set.put(kind, detail::open_ns(AT_FDCWD, path.c_str(), kind, path.native()));
    return set;
  }

  /// A namespace fd the caller owns; the Set keeps its own duplicate. Throws
  /// std::system_error: EBADF for a closed fd, EINVAL when it is not a
  /// namespace of `kind`.
  [[nodiscard]] static Set from_fd(Kind kind, int fd) {
    detail::checked(kind, "Set::from_fd");
    const std::string what = fmt::format("fd {}", fd);
    const Identity id = detail::validate_ns_fd(fd, kind, what);
    detail::unique_fd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!copy) throw detail::system_error(errno, "cannot duplicate {} as {} namespace", what, kind);
    Set set;
    set.put(kind, {std::move(copy), id, nullptr});
    return set;
  }

  /// The namespaces of the process a pidfd (pidfd_open(2), or CLONE_PIDFD)
  /// refers to. Unlike a pid, a pidfd cannot come to name another process:
  /// the namespaces are opened through /proc, then the pidfd is asked
  /// whether its process is still alive, so that a pid reused meanwhile is
  /// never mistaken for it. Throws std::system_error: EBADF for a closed fd,
  /// EINVAL for an fd that is not a pidfd, ESRCH when the process is gone.
  [[nodiscard]] static Set from_pidfd(int pidfd, Kinds kinds = default_kinds) {
    detail::checked(kinds, "Set::from_pidfd");
    const pid_t pid = detail::pid_of_pidfd(pidfd);
    Set set = from_pid(pid, kinds);
    if (::syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0U) != 0) {
      throw detail::system_error(errno, "cannot open namespaces of pidfd {} (pid {})", pidfd, pid);
    }
    // Kept to join several kinds with one setns(2) where that pays.
    detail::unique_fd own(::fcntl(pidfd, F_DUPFD_CLOEXEC, 0));
    if (!own) throw detail::system_error(errno, "cannot duplicate pidfd {}", pidfd);
    set.pidfd_ = std::make_shared<const detail::unique_fd>(std::move(own));
    return set;
  }

  /// The user namespace that owns this Set's namespace of `kind`
  /// (NS_GET_USERNS), as a Set holding it: open it, compare it, run in it.
  /// Throws std::invalid_argument when the Set lacks `kind`, and
  /// std::system_error(EPERM) when the owner is outside the caller's reach
  /// (the initial user namespace owns itself and has no owner to return).
  [[nodiscard]] Set owner(Kind kind) const {
    return related(detail::checked(kind, "Set::owner"), NS_GET_USERNS, Kind::user, "owner");
  }

  /// The parent of this Set's pid or user namespace (NS_GET_PARENT), as a Set
  /// holding it. Throws std::system_error: EINVAL for other kinds, EPERM at
  /// the top of what the caller may see.
  [[nodiscard]] Set parent(Kind kind) const {
    return related(detail::checked(kind, "Set::parent"), NS_GET_PARENT, kind, "parent");
  }

  /// The uid, in the caller's user namespace, of the creator of this Set's
  /// user namespace (NS_GET_OWNER_UID).
  [[nodiscard]] uid_t owner_uid() const {
    const detail::ns_handle& user = handle(Kind::user);
    uid_t uid = 0;
    if (::ioctl(user.fd.get(), NS_GET_OWNER_UID, &uid) != 0) {
      throw detail::system_error(errno, "cannot read the owner uid of user namespace {}", user.id);
    }
    return uid;
  }

  /// The kinds this Set holds.
  [[nodiscard]] Kinds kinds() const noexcept { return kinds_; }

  /// Whether a thread of this process can join every namespace of this Set,
  /// that is whether run() and Executor can work in it: false when it holds
  /// a user or time namespace other than the calling thread's, which the
  /// kernel lets only a single-threaded process join (run_in_process and
  /// spawn do that in a child). Reads the caller's own from /proc.
  [[nodiscard]] bool thread_joinable() const {
    for (Kind kind : {Kind::user, Kind::time}) {
      if (!kinds_.contains(kind)) continue;
      // On a worker (a nested run) /proc may be another mount namespace's.
      const bool worker = detail::worker_ns_dir >= 0;
      const std::string link = std::string(worker ? "" : "/proc/thread-self/ns/") + std::string(name(kind));
      Identity own{};
      if (const int err = detail::stat_ns(worker ? detail::worker_ns_dir : AT_FDCWD, link.c_str(), kind, own);
          err != 0) {
        throw detail::system_error(err, "cannot read this thread's {} namespace", kind);
      }
      if (own != ns_[detail::index_of(kind)].id) return false;
    }
    return true;
  }
  /// False for a value that is not a kind (is_kind).
  [[nodiscard]] bool contains(Kind kind) const noexcept { return kinds_.contains(kind); }
  [[nodiscard]] bool empty() const noexcept { return kinds_.empty(); }

  /// The fd of one kind, still owned by the Set. Throws std::invalid_argument
  /// when the Set holds no namespace of that kind.
  [[nodiscard]] int fd(Kind kind) const { return handle(detail::checked(kind, "Set::fd")).fd.get(); }

  /// Which namespace of `kind` this Set holds; to_string() gives
  /// "net:[4026531840]". Throws std::invalid_argument when it holds none.
  [[nodiscard]] Identity identity(Kind kind) const { return handle(detail::checked(kind, "Set::identity")).id; }

  /// A copy holding only `kinds`. Throws std::invalid_argument when the Set
  /// lacks one of them, std::system_error when an fd cannot be duplicated.
  [[nodiscard]] Set dup(Kinds kinds) const {
    detail::checked(kinds, "Set::dup");
    if (!kinds_.contains(kinds)) {
      throw std::invalid_argument(
          fmt::format("cannot copy {} out of a Set holding {}: {} missing", kinds, kinds_, kinds - kinds_));
    }
    Set subset;
    for (Kind kind : kinds) {
      const detail::ns_handle& from = ns_[detail::index_of(kind)];
      detail::unique_fd fd = from.fd.duplicate();
      if (!fd) throw detail::system_error(errno, "cannot duplicate the fd of {} namespace {}", kind, from.id);
      subset.put(kind, {std::move(fd), from.id, from.keep_alive});
    }
    return subset;
  }

  /// A new Set with fresh namespaces of `kinds`, created from this Set's
  /// namespaces, and the other kinds of this Set carried over. The calling
  /// thread does not move. For cgroup, ipc, mnt, net and uts a worker thread
  /// joins this Set, unshares and returns to its own namespaces. When `kinds`
  /// has user, pid or time, or when this Set holds a user or time namespace
  /// no thread can join (thread_joinable), a child process does it all
  /// instead: it joins this Set, its user namespace included, creates the new
  /// user namespace first and the others inside it, so that they are owned
  /// by it (as `unshare --user --net` does), and is killed and reaped before
  /// unshare returns. So namespaces made from a Set holding a user namespace
  /// are owned by that one, rootless too. A new mount namespace gets
  /// options.propagation on `/`.
  ///
  /// Lifetimes: the Set's fds keep each namespace alive. A pid namespace also
  /// needs a live pid 1, so a new one comes with a minimal init (it only
  /// reaps orphans) shared by every copy of the Set that holds that pid
  /// namespace; when the last such copy is destroyed, the init and every
  /// process left in the namespace are killed. Sets opened otherwise (e.g.
  /// from_pid of a process inside) do not keep that init alive.
  ///
  /// Throws std::invalid_argument when `kinds` is empty, or for id maps that
  /// are empty-ranged, overlap or are given without a new user namespace
  /// (likewise time offsets); std::logic_error when this Set is empty; and
  /// std::system_error with the kernel's errno when joining, unsharing or
  /// writing maps fails, naming the step.
  [[nodiscard]] Set unshare(Kinds kinds, const UnshareOptions& options = {}) const {
    detail::checked(kinds, "Set::unshare");
    if (kinds.empty()) throw std::invalid_argument("cannot unshare: no namespace kinds given");
    check_options(kinds, options);
    require_not_empty("unshare from");
    // A child process makes what no thread can, and makes every kind in a
    // Set holding a foreign user or time namespace, which no thread can join
    // first: the new namespaces are then owned by the Set's user namespace.
    if (!(kinds & detail::process_only_kinds).empty() || !thread_joinable()) return unshare_in_process(kinds, options);
    Set fresh = run(true, [&] { return unshare_here(kinds, options); });
    Set result = dup(kinds_ - kinds);
    for (Kind kind : kinds) result.put(kind, std::move(fresh.ns_[detail::index_of(kind)]));
    return result;
  }

  /// dup() with raw CLONE_NEW* flags, e.g. set.dup(CLONE_NEWNET), as Go's
  /// Set.Dup takes them. Throws std::invalid_argument naming bits that are
  /// not namespace kinds.
  [[nodiscard]] Set dup(int clone_flags) const {
    return dup(Kinds::from_clone_flags(static_cast<std::uint32_t>(clone_flags)));
  }

  /// unshare() with raw CLONE_NEW* flags, e.g. set.unshare(CLONE_NEWNS).
  /// Throws std::invalid_argument naming bits that are not namespace kinds.
  [[nodiscard]] Set unshare(int clone_flags, const UnshareOptions& options = {}) const {
    return unshare(Kinds::from_clone_flags(static_cast<std::uint32_t>(clone_flags)), options);
  }

  /// Runs `fn` inside this Set's namespaces on a dedicated worker thread and
  /// returns its value, or rethrows its exception, in the calling thread,
  /// which never changes namespace. `fn` takes no argument, or a
  /// `gonso::RunContext&` through which it can discard its thread.
  ///
  /// The worker joins each kind it is not already in (cgroup, ipc, uts, net,
  /// pid, then mnt after unshare(CLONE_FS)). After `fn`, with `restore` true,
  /// the worker goes back to its original namespaces and waits for the next
  /// run; it ends instead when restore is false, when `fn` discarded it, when
  /// it joined a mount namespace (its root and cwd stay its own), or when any
  /// restore step fails. A run in a pid namespace changes only where the
  /// worker's children go; `fn` must then not start threads (the kernel
  /// refuses). A child that `fn` forks must exec or _exit, never return.
  /// Kinds the Set does not hold are the worker's: the process's own for a
  /// reused worker, the caller's for a new one. May be called from many
  /// threads at once.
  ///
  /// Throws, before starting anything: std::logic_error for an empty Set;
  /// std::system_error(EINVAL) when the Set holds a user or time namespace
  /// other than the process's own, as no thread of a multithreaded process
  /// can join those (the README's kernel rules). Throws
  /// std::system_error when joining fails, e.g. "cannot join net namespace
  /// net:[4026532008]: Operation not permitted".
  template <typename F>
  auto run(bool restore, F&& fn) const -> detail::run_result_t<F> {
    using R = detail::run_result_t<F>;
    static_assert(!std::is_reference_v<R>,
                  "gonso::Set::run: the callable must return by value; its result crosses threads");
    require_not_empty("run in");
    auto& pool = detail::worker_pool::instance();
    if (kinds_.contains(Kind::user) || kinds_.contains(Kind::time)) {
      const std::shared_ptr<const detail::anchor> home = pool.current_home();
      detail::require_own(Kind::user, kinds_, ns_, home.get());
      detail::require_own(Kind::time, kinds_, ns_, home.get());
    }

    detail::run_job<F, R> job(&ns_, kinds_, restore, std::forward<F>(fn));
    if (pidfd_) job.pidfd = pidfd_->get();
    std::unique_ptr<detail::worker> worker = restore ? pool.acquire() : pool.spawn();
    if (worker->execute(job)) {
      pool.release(std::move(worker));
    } else if (!restore) {
      pool.bury(std::move(worker));  // it ends on its own; joined later, without making us wait
    } else {
      worker.reset();  // it could not go home: join it now, so that it lingers nowhere
    }
    return job.take();
  }

  /// Runs `fn` in a child process that has joined every namespace of this
  /// Set, user and time included, and returns its result in the caller.
  ///
  /// The child is forked from the calling thread; it joins the kinds it is
  /// not already in (without privilege the user namespace first, which grants
  /// it; with privilege last, since entering sheds it), and when it joined a
  /// pid or time namespace it forks once more, so that `fn` runs in a process
  /// that is inside them. `fn` returns void, std::string or a trivially
  /// copyable value, which is copied back through a pipe.
  ///
  /// `fn` runs in a copy of a possibly multithreaded process in which only
  /// its own thread exists: memory allocation works (glibc resets its locks
  /// at fork), but locks that other threads of the caller held at the fork
  /// stay held, and no gonso worker or other thread of the caller is there.
  /// Calling run() from `fn` starts workers of the child's own. stdout and
  /// stderr are flushed before the fork and when `fn` returns.
  ///
  /// With options.etc_of_netns, /etc/netns/NAME's files are bound over /etc
  /// in a mount namespace of the child's own, as `ip netns exec` does.
  ///
  /// Throws std::logic_error for an empty Set; std::system_error with the
  /// child's errno when joining fails ("cannot join net namespace net:[...]:
  /// Operation not permitted") or the fork fails; gonso::ProcessError when
  /// `fn` threw (its type and what() text), or the process was killed by a
  /// signal or exited without a result.
  template <typename F>
  auto run_in_process(F&& fn, const ProcessOptions& options = {}) const -> std::invoke_result_t<F&&> {
    using R = std::invoke_result_t<F&&>;
    static_assert(detail::reportable<R>,
                  "gonso::Set::run_in_process: the callable must return void, std::string or a trivially "
                  "copyable value; its result is copied between processes");
    require_not_empty("run a process in");
    const detail::join_plan plan = detail::plan_join(ns_, kinds_);
    const std::vector<std::string> etc =
        options.etc_of_netns ? detail::etc_overlay(*options.etc_of_netns) : std::vector<std::string>{};
    const std::vector<const char*> etc_paths = detail::c_strings(etc);
    detail::report_channel report = detail::make_report_channel();
    // Unflushed output would be written twice, once by each process.
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t parent = detail::bind_syscall();
    const pid_t pid = ::fork();
    if (pid < 0) throw detail::system_error(errno, "cannot fork a child process to run in {} namespaces", kinds_);
    if (pid == 0) {
      report.data.read.reset();
      detail::report_sink sink(report.data.write.get(), report.bell.get());
      run_child<R>(plan, etc_paths, sink, parent, fn);
    }
    report.data.write.reset();
    // Not yet reaped by us, so `pid` is still the child's; from here on the
    // pidfd names it. ESRCH: it has ended and was reaped elsewhere (the
    // application ignores SIGCHLD), so all it wrote is in the pipe.
    const detail::unique_fd pidfd(detail::pidfd_open(pid));
    std::string data;
    try {
      if (!pidfd && errno != ESRCH) {
        throw detail::system_error(errno, "cannot open a pidfd for the child process {}", pid);
      }
      data = detail::read_report(report.data.read.get(), report.bell.get(), pidfd.get());
    } catch (...) {
      if (pidfd) {
        (void)detail::kill_and_reap(pidfd);
      } else {
        ::kill(pid, SIGKILL);
        (void)detail::reap(pid);
      }
      throw;
    }
    return detail::decode_report<R>(data, pidfd ? detail::reap(pidfd) : -1);
  }

  /// Same namespaces of the same kinds.
  friend bool operator==(const Set& a, const Set& b) noexcept {
    if (a.kinds_ != b.kinds_) return false;
    for (Kind kind : a.kinds_) {
      if (a.ns_[detail::index_of(kind)].id != b.ns_[detail::index_of(kind)].id) return false;
    }
    return true;
  }

 private:
  // `kind` is a checked one: an unknown value would index past ns_.
  const detail::ns_handle& handle(Kind kind) const {
    if (!kinds_.contains(kind)) {
      throw std::invalid_argument(fmt::format("Set {} holds no {} namespace", kinds_, kind));
    }
    return ns_[detail::index_of(kind)];
  }

  [[nodiscard]] Set related(Kind kind, unsigned long request, Kind result_kind, const char* what) const {
    const detail::ns_handle& ns = handle(kind);
    detail::unique_fd fd(::ioctl(ns.fd.get(), request));
    if (!fd) throw detail::system_error(errno, "cannot open the {} of {} namespace {}", what, kind, ns.id);
    // The kernel returns these fds close-on-exec; validate like any other.
    const std::string origin = fmt::format("the {} of {}", what, ns.id);
    const Identity id = detail::validate_ns_fd(fd.get(), result_kind, origin);
    Set set;
    set.put(result_kind, {std::move(fd), id, nullptr});
    return set;
  }

  void put(Kind kind, detail::ns_handle&& ns) noexcept {
    ns_[detail::index_of(kind)] = std::move(ns);
    kinds_ |= kind;
  }

  void require_not_empty(std::string_view verb) const {
    if (kinds_.empty()) {
      throw std::logic_error(fmt::format("cannot {} an empty Set (moved-from, or opened with no kinds)", verb));
    }
  }

  static Set from_proc_dir(int dirfd, std::string_view prefix, Kinds kinds, std::string_view whose) {
    Set set;
    for (Kind kind : kinds) {
      const std::string path = fmt::format("{}{}", prefix, name(kind));
      set.put(kind, detail::open_ns(dirfd, path.c_str(), kind, fmt::format("{} of {}", path, whose)));
    }
    return set;
  }

  static Set from_dir_impl(const std::filesystem::path& dir, Kinds kinds, bool missing_ok) {
    detail::unique_fd dirfd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dirfd) throw detail::system_error(errno, "cannot open namespace folder {}", dir.native());
    Set set;
    for (Kind kind : kinds) {
      const std::string path = (dir / name(kind)).native();
      detail::ns_handle ns = detail::open_ns(dirfd.get(), std::string(name(kind)).c_str(), kind, path, missing_ok);
      if (ns.fd) set.put(kind, std::move(ns));
    }
    if (set.empty()) {
      throw detail::system_error(ENOENT, "cannot open namespace folder {}: it holds no namespace file of {}",
                                 dir.native(), kinds);
    }
    return set;
  }

  // The forked child of run_in_process: join, maybe fork into pid and time
  // namespaces, run, report, and exit without running the parent's exit
  // handlers. System calls through syscall(2): see detail::bind_syscall.
  template <typename R, typename F>
  [[noreturn]] void run_child(const detail::join_plan& plan, const std::vector<const char*>& etc,
                              detail::report_sink& report, pid_t parent, F& fn) const noexcept {
    detail::die_with_parent(parent);
    std::size_t failed = 0;
    if (const int err = detail::join_in_child(plan, failed); err != 0) {
      const Kind kind = plan.steps[failed].kind;
      detail::report_join_error(report, err,
                                fmt::format("cannot join {} namespace {}", kind, ns_[detail::index_of(kind)].id));
      detail::child_exit(1);
    }
    if (plan.fork_after) {
      const pid_t inner = ::fork();
      if (inner < 0) {
        detail::report_join_error(report, errno, "cannot fork into the joined pid or time namespace");
        detail::child_exit(1);
      }
      if (inner > 0) {
        report.close();
        detail::exit_like(detail::reap(inner));
      }
      ::syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    }
    if (const int err = detail::bind_etc_overlay(etc.data(), etc.size(), failed); err != 0) {
      detail::report_join_error(report, err,
                                failed == SIZE_MAX
                                    ? std::string("cannot make a mount namespace for /etc/netns")
                                    : fmt::format("cannot bind {} over {}", etc[failed], etc[failed + 1]));
      detail::child_exit(1);
    }
    detail::run_and_report<R>(std::forward<F>(fn), report);
    std::fflush(nullptr);
    detail::child_exit(0);
  }

  static void check_map(const std::vector<IdRange>& map, const char* which) {
    if (map.size() > 340)
      throw std::invalid_argument(fmt::format("{} has {} lines; the kernel takes 340", which, map.size()));
    for (std::size_t i = 0; i < map.size(); ++i) {
      const IdRange& a = map[i];
      if (a.count == 0) throw std::invalid_argument(fmt::format("{} line {} maps no ids (count 0)", which, i));
      if (a.inside > UINT32_MAX - a.count || a.outside > UINT32_MAX - a.count) {
        throw std::invalid_argument(fmt::format("{} line {} runs past the largest id", which, i));
      }
      for (std::size_t j = 0; j < i; ++j) {
        const IdRange& b = map[j];
        const auto overlap = [](std::uint32_t x, std::uint32_t y, std::uint32_t n, std::uint32_t m) {
          return x < y + m && y < x + n;
        };
        if (overlap(a.inside, b.inside, a.count, b.count) || overlap(a.outside, b.outside, a.count, b.count)) {
          throw std::invalid_argument(fmt::format("{} lines {} and {} overlap", which, j, i));
        }
      }
    }
  }

  static void check_options(Kinds kinds, const UnshareOptions& options) {
    if (!kinds.contains(Kind::user) && !(options.uid_map.empty() && options.gid_map.empty())) {
      throw std::invalid_argument("uid_map and gid_map apply to a new user namespace, and none is unshared");
    }
    const bool offsets = options.monotonic_offset.count() != 0 || options.boottime_offset.count() != 0;
    if (!kinds.contains(Kind::time) && offsets) {
      throw std::invalid_argument("time offsets apply to a new time namespace, and none is unshared");
    }
    check_map(options.uid_map, "uid_map");
    check_map(options.gid_map, "gid_map");
  }

  static std::string map_text(const std::vector<IdRange>& map, std::uint32_t own_id) {
    if (map.empty()) return fmt::format("0 {} 1\n", own_id);
    std::string text;
    for (const IdRange& r : map) text += fmt::format("{} {} {}\n", r.inside, r.outside, r.count);
    return text;
  }

  static std::string offsets_text(const UnshareOptions& options) {
    std::string text;
    const auto line = [&](const char* clock, std::chrono::nanoseconds offset) {
      if (offset.count() == 0) return;
      const auto secs = std::chrono::floor<std::chrono::seconds>(offset);
      text += fmt::format("{} {} {}\n", clock, secs.count(), (offset - secs).count());
    };
    line("monotonic", options.monotonic_offset);
    line("boottime", options.boottime_offset);
    return text;
  }

  static void write_proc_file(pid_t pid, const char* file, const std::string& text) {
    const std::string path = fmt::format("/proc/{}/{}", pid, file);
    detail::unique_fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) throw detail::system_error(errno, "cannot open {}", path);
    // These files take one write(2) holding every line.
    const ssize_t n = ::write(fd.get(), text.data(), text.size());
    if (n != static_cast<ssize_t>(text.size())) {
      throw detail::system_error(n < 0 ? errno : EIO, "cannot write {} to {}", text.substr(0, text.find('\n')), path);
    }
  }

  static bool has_capability(int cap) noexcept {
    return (detail::capabilities()[static_cast<std::size_t>(cap / 32)].effective & (1u << (cap % 32))) != 0;
  }

  // The child processes of one unshare_in_process: killed and reaped however
  // the parent leaves.
  struct creator_guard {
    pid_t child = -1;
    pid_t creator = -1;  // the child, or its child when it had to fork again
    ~creator_guard() {
      if (creator > 0 && creator != child) ::kill(creator, SIGKILL);
      if (child > 0) {
        ::kill(child, SIGKILL);
        (void)detail::reap(child);
      }
    }
  };

  [[nodiscard]] static std::string creator_error(const detail::creator_message& m, const detail::join_plan& plan,
                                                 const detail::ns_handles& ns, Kinds kinds) {
    using namespace detail;
    if (m.value >= step_join && m.value < step_fork) {
      const Kind kind = plan.steps[static_cast<std::size_t>(m.value)].kind;
      return fmt::format("cannot join {} namespace {}", kind, ns[detail::index_of(kind)].id);
    }
    switch (m.value) {
      case step_fork:
        return "cannot fork into the joined pid or time namespace";
      case step_unshare_user:
        return "cannot unshare user namespace";
      case step_wait_maps:
        return "cannot wait for the user namespace's id maps";
      case step_unshare:
        return fmt::format("cannot unshare {} namespaces", kinds - Kind::user);
      case step_time_offsets:
        return "cannot write the time namespace's offsets";
      case step_propagation:
        return "cannot set mount propagation of / in the new mount namespace";
      case step_fork_init:
        return "cannot start the init of the new pid namespace";
      case step_write_maps:
        return fmt::format("cannot write the id maps of a user namespace nested in {} from inside it",
                           ns[detail::index_of(Kind::user)].id);
      default:
        return "cannot create namespaces";
    }
  }

  [[nodiscard]] Set unshare_in_process(Kinds kinds, const UnshareOptions& options) const {
    if (!detail::children_share_pid_ns()) {
      // Its children would be numbered in another pid namespace than ours.
      throw detail::system_error(EINVAL,
                                 "cannot create {} namespaces from a thread whose children go to another pid "
                                 "namespace (as inside Set::run of a Set holding one); call unshare outside",
                                 kinds);
    }
    // A user namespace nested in the Set's, when that is not the caller's:
    // the caller may not write its maps, a helper in the Set's does.
    bool nested_user = false;
    if (kinds.contains(Kind::user) && kinds_.contains(Kind::user)) {
      Identity own{};
      nested_user = detail::stat_ns(AT_FDCWD, "/proc/thread-self/ns/user", Kind::user, own) != 0 ||
                    own != ns_[detail::index_of(Kind::user)].id;
    }
    const detail::join_plan plan = detail::plan_join(ns_, kinds_);
    detail::pipe_fds report = detail::make_pipe();
    detail::pipe_fds go = detail::make_pipe();
    detail::pipe_fds lifeline;
    if (kinds.contains(Kind::pid)) lifeline = detail::make_pipe();
    const std::string offsets = offsets_text(options);
    detail::creator_task task;
    task.plan = plan;
    task.kinds = kinds;
    task.report = report.write.get();
    task.go = go.read.get();
    task.lifeline = lifeline.read.get();
    task.propagation = propagation_flag(options.propagation);
    task.time_offsets = &offsets;
    // Prepared before the fork: the child may not allocate.
    // Maps in the ids of the new namespace's parent; for a nested one the
    // helper fills in its own id there when none are given.
    const std::string uid_map =
        nested_user && options.uid_map.empty() ? std::string() : map_text(options.uid_map, ::geteuid());
    const std::string gid_map =
        nested_user && options.gid_map.empty() ? std::string() : map_text(options.gid_map, ::getegid());
    const bool deny_setgroups = !nested_user && !has_capability(CAP_SETGID);
    task.maps_from_inside = nested_user;
    task.uid_map = &uid_map;
    task.gid_map = &gid_map;

    creator_guard guard;
    const pid_t parent = ::getpid();
    guard.child = detail::raw_fork();
    if (guard.child < 0)
      throw detail::system_error(errno, "cannot fork a child process to create {} namespaces", kinds);
    if (guard.child == 0) detail::creator_main(task, parent);
    guard.creator = guard.child;
    report.write.reset();
    go.read.reset();
    lifeline.read.reset();

    std::shared_ptr<void> init;  // owns the new pid namespace's init as soon as it exists
    // Every message is untrusted bytes, decoded and checked for its place in
    // the conversation; pids in them are checked against the kernel's view.
    detail::creator_protocol protocol(plan.fork_after, kinds.contains(Kind::user) && !nested_user,
                                      kinds.contains(Kind::pid) && !plan.fork_after);
    for (bool over = false; !over;) {
      std::array<std::byte, sizeof(detail::creator_message)> bytes{};
      std::size_t got = 0;
      while (got < bytes.size()) {
        const ssize_t n = ::read(report.read.get(), bytes.data() + got, bytes.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
          throw detail::system_error(n < 0 ? errno : ECHILD, "the child creating {} namespaces ended early", kinds);
        got += static_cast<std::size_t>(n);
      }
      const detail::creator_message m = detail::decode_creator_message(bytes, plan.count);
      over = protocol.accept(m);
      if (m.tag == detail::creator_message::creator_pid) {
        if (!is_child_of(guard.child, m.value)) {
          throw detail::system_error(EPROTO, "the child creating {} namespaces named pid {}, not its own child", kinds,
                                     m.value);
        }
        guard.creator = m.value;
      } else if (m.tag == detail::creator_message::init_pid) {
        init = adopt_init(guard.creator, m.value, std::move(lifeline.write));
      } else if (m.tag == detail::creator_message::user_created) {
        if (deny_setgroups) write_proc_file(guard.creator, "setgroups", "deny");
        write_proc_file(guard.creator, "uid_map", uid_map);
        write_proc_file(guard.creator, "gid_map", gid_map);
        const char byte = 'g';
        if (!detail::write_all(go.write.get(), &byte, 1))
          throw detail::system_error(errno, "cannot wake the child creating {} namespaces", kinds);
      } else if (m.tag == detail::creator_message::failed) {
        throw std::system_error(m.error, std::generic_category(), creator_error(m, plan, ns_, kinds));
      }
    }

    Set result = dup(kinds_ - kinds);
    for (Kind kind : kinds) {
      const std::string path = fmt::format("/proc/{}/ns/{}", guard.creator, detail::thread_link(kind));
      result.put(kind, detail::open_ns(AT_FDCWD, path.c_str(), kind, path));
    }
    if (kinds.contains(Kind::pid)) {
      if (!init) init = adopt_init(guard.creator, -1, std::move(lifeline.write));
      result.ns_[detail::index_of(Kind::pid)].keep_alive = std::move(init);
    }
    return result;
  }

  // (device, inode) of a pid namespace link, by stat(2); zero when it cannot be read.
  static Identity pid_ns_at(const std::string& path) noexcept {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return {};
    return Identity{Kind::pid, st.st_dev, st.st_ino};
  }

  // Whether /proc says `pid` is a child of `parent` (its main thread's).
  static bool is_child_of(pid_t parent, pid_t pid) {
    const std::string path = fmt::format("/proc/{0}/task/{0}/children", parent);
    detail::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return false;
    const std::string text = detail::read_to_end(fd.get());
    const char* at = text.data();
    const char* const end = text.data() + text.size();
    while (at < end) {
      pid_t child = 0;
      const auto [next, ec] = std::from_chars(at, end, child);
      if (ec != std::errc{}) return false;
      if (child == pid) return true;
      at = next;
      while (at < end && *at == ' ') ++at;
    }
    return false;
  }

  // `init` is the init's pid when the creator could tell it; otherwise the
  // init is the creator's only child.
  static std::shared_ptr<void> adopt_init(pid_t creator, pid_t init, detail::unique_fd lifeline) {
    const bool reported = init > 0;
    if (init <= 0) {
      const std::string path = fmt::format("/proc/{0}/task/{0}/children", creator);
      detail::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) throw detail::system_error(errno, "cannot open {}", path);
      const std::string text = detail::read_to_end(fd.get());
      const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), init);
      if (ec != std::errc{} || init <= 0) {
        throw detail::system_error(ESRCH, "cannot find the init of the new pid namespace in {}", path);
      }
    }
    detail::unique_fd pidfd(detail::pidfd_open(init));
    if (!pidfd)
      throw detail::system_error(errno, "cannot open a pidfd for the init of the new pid namespace (pid {})", init);
    // The pid came from the child: take it only if it is in the namespace
    // the creator's children go to, and, when reported by the creator, the
    // caller's own child (CLONE_PARENT), which the caller reaps.
    const Identity ns_of_init = pid_ns_at(fmt::format("/proc/{}/ns/pid", init));
    const Identity ns_made = pid_ns_at(fmt::format("/proc/{}/ns/pid_for_children", creator));
    siginfo_t info{};
    const bool own = ::waitid(P_PIDFD, static_cast<id_t>(pidfd.get()), &info, WEXITED | WNOHANG | WNOWAIT) == 0;
    if (ns_of_init.inode == 0 || ns_of_init.inode != ns_made.inode || (reported && !own)) {
      throw detail::system_error(EPROTO, "pid {} is not the init of the new pid namespace", init);
    }
    return std::make_shared<detail::pid_init>(std::move(lifeline), std::move(pidfd));
  }

  static unsigned long propagation_flag(Propagation p) noexcept {
    switch (p) {
      case Propagation::rprivate:
        return MS_PRIVATE;
      case Propagation::rslave:
        return MS_SLAVE;
      case Propagation::rshared:
        return MS_SHARED;
      case Propagation::unchanged:
        return 0;
    }
    return MS_PRIVATE;
  }

  // Runs on a worker thread that has joined this Set.
  static Set unshare_here(Kinds kinds, const UnshareOptions& options) {
    if (const int err = detail::unshare_ns(kinds.clone_flags()); err != 0) {
      throw detail::system_error(err, "cannot unshare {} namespaces", kinds);
    }
    if (kinds.contains(Kind::mnt) && options.propagation != Propagation::unchanged) {
      if (::mount(nullptr, "/", nullptr, MS_REC | propagation_flag(options.propagation), nullptr) != 0) {
        throw detail::system_error(errno, "cannot set mount propagation of / in the new mount namespace");
      }
    }
    return current(kinds);
  }

  friend class Executor;  // joins ns_ once, for good
  friend class Pool;      // hands out Sets with a lease_

  Kinds kinds_;
  detail::ns_handles ns_{};
  // The pidfd a Set came from (from_pidfd), shared by its copies; a hint for
  // joining, never trusted for identity.
  std::shared_ptr<const detail::unique_fd> pidfd_;
  // Set by the Pool whose get() handed this Set out, shared by its copies:
  // what lets that Pool take it back once, and no other Set.
  std::shared_ptr<detail::pool_lease> lease_;
};

}  // namespace gonso

/// Hashes the identities a Set holds, so that Sets can key unordered maps;
/// equal Sets hash alike.
template <>
struct std::hash<gonso::Set> {
  std::size_t operator()(const gonso::Set& set) const noexcept {
    std::size_t h = std::hash<std::uint32_t>{}(static_cast<std::uint32_t>(set.kinds().clone_flags()));
    for (gonso::Kind kind : set.kinds()) {
      h ^= std::hash<gonso::Identity>{}(set.identity(kind)) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    }
    return h;
  }
};

/// Prints "{net:[4026532008], uts:[4026531838]}"; "{}" when empty.
template <>
struct fmt::formatter<gonso::Set> {
  constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
  auto format(const gonso::Set& set, format_context& ctx) const {
    auto out = fmt::format_to(ctx.out(), "{{");
    const char* sep = "";
    for (gonso::Kind kind : set.kinds()) {
      out = fmt::format_to(out, "{}{}", sep, set.identity(kind));
      sep = ", ";
    }
    return fmt::format_to(out, "}}");
  }
};

// gonso: a set of Linux namespaces, and running code inside it.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include <gonso/detail/fs/propagation.hpp>
#include <gonso/detail/ns/kinds.hpp>
#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/process/creator.hpp>
#include <gonso/detail/process/in_process.hpp>
#include <gonso/detail/set_access.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/io.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/detail/thread/run.hpp>
#include <gonso/error.hpp>
#include <gonso/fd.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>
#include <gonso/options.hpp>
#include <gonso/run_context.hpp>
#include <gonso/thread_proc.hpp>
#include <gonso/workers.hpp>

namespace gonso {

/// A value type holding one namespace per kind, each as an owned,
/// close-on-exec fd. Holding the fd keeps the namespace alive. Copies share
/// the fds, one per namespace however many Sets hold it (copying is noexcept
/// and makes no system call; the fd closes with the last Set holding it);
/// moving is noexcept and leaves the source empty.
/// Const member functions may be called from many threads at once.
///
/// Running code inside a Set never moves the calling thread: run() uses a
/// dedicated worker thread (see workers.hpp).
class Set {
 public:
  /// An empty Set: holds no namespace.
  Set() noexcept = default;

  // Copies share the namespace fds (detail::shared_fd): no system call, no
  // failure. Moves leave the source empty.
  Set(const Set& other) noexcept = default;
  Set& operator=(const Set& other) noexcept = default;
  Set(Set&& other) noexcept
      : kinds_(std::exchange(other.kinds_, Kinds{})),
        ns_(std::move(other.ns_)),
        pidfd_(std::move(other.pidfd_)),
        lease_(std::move(other.lease_)) {}
  Set& operator=(Set&& other) noexcept {
    if (this != &other) {
      kinds_ = std::exchange(other.kinds_, Kinds{});
      ns_ = std::move(other.ns_);  // drops the fds held so far at once
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
    // EPERM: alive, only not ours to signal.
    if (::syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0U) != 0 && errno != EPERM) {
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
  [[nodiscard]] bool thread_joinable() const { return detail::thread_can_join(ns_, kinds_); }
  /// False for a value that is not a kind (is_kind).
  [[nodiscard]] bool contains(Kind kind) const noexcept { return kinds_.contains(kind); }
  [[nodiscard]] bool empty() const noexcept { return kinds_.empty(); }

  /// The fd of one kind, still owned by the Set and shared with its copies:
  /// never close it (Set::from_fd takes a duplicate of a caller's own fd, and
  /// F_DUPFD_CLOEXEC gives one to keep). Throws std::invalid_argument
  /// when the Set holds no namespace of that kind.
  [[nodiscard]] int fd(Kind kind) const { return handle(detail::checked(kind, "Set::fd")).fd.get(); }

  /// Which namespace of `kind` this Set holds; to_string() gives
  /// "net:[4026531840]". Throws std::invalid_argument when it holds none.
  [[nodiscard]] Identity identity(Kind kind) const { return handle(detail::checked(kind, "Set::identity")).id; }

  /// A copy holding only `kinds`, sharing their fds with this Set. Throws
  /// std::invalid_argument when the Set lacks one of them.
  [[nodiscard]] Set dup(Kinds kinds) const {
    detail::checked(kinds, "Set::dup");
    if (!kinds_.contains(kinds)) {
      throw std::invalid_argument(
          fmt::format("cannot copy {} out of a Set holding {}: {} missing", kinds, kinds_, kinds - kinds_));
    }
    Set subset;
    for (Kind kind : kinds) subset.put(kind, detail::ns_handle(ns_[detail::index_of(kind)]));
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
    options.check(kinds);
    require_not_empty("unshare from");
    // A child process makes what no thread can, and makes every kind in a
    // Set holding a foreign user or time namespace, which no thread can join
    // first: the new namespaces are then owned by the Set's user namespace.
    Set result = dup(kinds_ - kinds);
    if (!(kinds & detail::process_only_kinds).empty() || !thread_joinable()) {
      detail::ns_handles made = detail::create_in_process(ns_, kinds_, kinds, options);
      for (Kind kind : kinds) result.put(kind, std::move(made[detail::index_of(kind)]));
      return result;
    }
    Set fresh = run(true, [&] { return unshare_here(kinds, options); });
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
  /// Inside `fn`, `/proc/self` (and `/proc/net`, a link through it) names
  /// the process, whose main thread stays where it was: `/proc/net/dev`
  /// there lists the host's interfaces, not the Set's. Read
  /// `/proc/thread-self/...` instead (gonso::thread_proc_path), which is
  /// the worker's. In a run that joined a mount namespace, `/proc` is that
  /// namespace's own mount, which may show another pid namespace.
  ///
  /// Throws, before starting anything: std::logic_error for an empty Set;
  /// std::system_error(EINVAL) when the Set holds a user or time namespace
  /// other than the process's own, as no thread of a multithreaded process
  /// can join those (the README, "How namespaces behave"). Throws
  /// std::system_error when joining fails, e.g. "cannot join net namespace
  /// net:[4026532008]: Operation not permitted".
  template <typename F>
  auto run(bool restore, F&& fn) const -> detail::run_result_t<F> {
    using R = detail::run_result_t<F>;
    static_assert(!std::is_reference_v<R>,
                  "gonso::Set::run: the callable must return by value; its result crosses threads");
    require_not_empty("run in");
    return detail::run_on_worker(ns_, kinds_, detail::set_access::pidfd(*this), restore, std::forward<F>(fn));
  }

  /// Runs `fn` in a child process that has joined every namespace of this
  /// Set, user and time included, and returns its result in the caller.
  ///
  /// The child is forked from the calling thread; it joins the kinds it is
  /// not already in (without privilege the user namespace first, which grants
  /// it; with privilege last, since entering sheds it), and when it joined a
  /// pid or time namespace it forks once more, so that `fn` runs in a process
  /// that is inside them. `fn` returns void, std::string or a trivially
  /// copyable value, which is copied back through a pipe; or a gonso::Fd, a
  /// std::vector<gonso::Fd>, or a std::pair or std::tuple of those and such
  /// values (at most 253 fds in all), whose fds are sent over a Unix socket
  /// (SCM_RIGHTS) and arrive as new close-on-exec fds of the caller. An
  /// `int` fd number returned from the child means nothing in the caller:
  /// return a gonso::Fd.
  ///
  /// `fn` runs in a copy of a possibly multithreaded process in which only
  /// its own thread exists: memory allocation works (glibc resets its locks
  /// at fork), but locks that other threads of the caller held at the fork
  /// stay held, and no gonso worker or other thread of the caller is there.
  /// Calling run() from `fn` starts workers of the child's own. stdout and
  /// stderr are flushed before the fork and when `fn` returns.
  ///
  /// With options.etc_of_netns, /etc/netns/NAME's files are bound over /etc
  /// in a mount namespace of the child's own, as `ip netns exec` does; root,
  /// cwd, cgroup and user place the child as spawn() places a program; past
  /// options.timeout the child is killed and ProcessError(Cause::timeout)
  /// thrown.
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
                  "gonso::Set::run_in_process: the callable must return void, std::string, a trivially "
                  "copyable value, gonso::Fd, std::vector<gonso::Fd>, or a pair or tuple of those; its result "
                  "crosses between processes (an object owning an fd or memory cannot)");
    require_not_empty("run a process in");
    return detail::run_in_child(ns_, kinds_, options, std::forward<F>(fn));
  }

  /// A socket(2) of `domain`, `type` and `protocol` made inside this Set's
  /// network namespace, and usable from any thread: a socket keeps talking
  /// to the namespace it was made in (a netlink socket configures that
  /// namespace's links; an inet socket binds its addresses). Only the Set's
  /// net and user namespaces are joined, by a worker thread where one can
  /// join them (thread_joinable), else by a child process (a Set holding a
  /// user namespace that is not the caller's: rootless), which sends the
  /// socket back. Always close-on-exec. Throws std::invalid_argument when
  /// the Set holds no net namespace, std::system_error with socket(2)'s
  /// errno (EAFNOSUPPORT, EPERM for a raw socket without CAP_NET_RAW in the
  /// namespace's owner, ...) or the join's.
  [[nodiscard]] Fd socket(int domain, int type, int protocol = 0) const {
    if (!contains(Kind::net))
      throw std::invalid_argument(fmt::format("Set {} holds no net namespace to make a socket in", kinds_));
    auto [fd, err] = dup(kinds_ & (Kind::net | Kind::user)).make_fd_inside(true, [domain, type, protocol] {
      return Fd(::socket(domain, type | SOCK_CLOEXEC, protocol));
    });
    if (!fd) {
      throw detail::system_error(err, "cannot create a socket (domain {}, type {}, protocol {}) in net namespace {}",
                                 domain, type, protocol, identity(Kind::net));
    }
    return std::move(fd);
  }

  /// open(2) of `path` as seen from inside this Set: resolved in its mount
  /// namespace (a relative path from that namespace's root), with its other
  /// namespaces joined too, so that `/proc/thread-self/net/...` is the
  /// Set's. Kinds the Set does not hold are the caller's process's. A
  /// worker thread opens where one can join the Set, else a child process
  /// (rootless), which sends the fd back. O_CLOEXEC is always added. Throws
  /// std::invalid_argument for a path holding a NUL or an empty Set,
  /// std::system_error with open(2)'s errno or the join's.
  [[nodiscard]] Fd open(const std::filesystem::path& path, int flags, mode_t mode = 0) const {
    const std::string& name = path.native();
    if (name.empty() || name.find('\0') != std::string::npos) {
      throw std::invalid_argument("Set::open: the path is empty or holds a NUL");
    }
    require_not_empty("open a file in");
    // A worker that joined a mount namespace is never reused: end it at once,
    // so that its fds are gone when this returns.
    auto [fd, err] = make_fd_inside(!contains(Kind::mnt),
                                    [&name, flags, mode] { return Fd(::open(name.c_str(), flags | O_CLOEXEC, mode)); });
    if (!fd) throw detail::system_error(err, "cannot open {} inside namespaces {}", name, kinds_);
    return std::move(fd);
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

  // Runs `make` (which returns an Fd, invalid with errno set on failure)
  // inside this Set, on a worker where one can join it, else in a child
  // process that sends the fd back; returns it with make's errno.
  template <typename Make>
  [[nodiscard]] std::pair<Fd, int> make_fd_inside(bool restore, Make make) const {
    const auto inside = [&make] {
      Fd fd = make();
      const int err = fd ? 0 : errno;
      return std::pair<Fd, int>(std::move(fd), err);
    };
    return thread_joinable() ? run(restore, inside) : run_in_process(inside);
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

  // Adopts what was opened.
  explicit Set(detail::opened_ns&& opened) noexcept : kinds_(opened.kinds), ns_(std::move(opened.ns)) {}

  static Set from_proc_dir(int dirfd, std::string_view prefix, Kinds kinds, std::string_view whose) {
    return Set(detail::open_proc_ns(dirfd, prefix, kinds, whose));
  }
  static Set from_dir_impl(const std::filesystem::path& dir, Kinds kinds, bool missing_ok) {
    return Set(detail::open_ns_folder(dir, kinds, missing_ok));
  }

  // Runs on a worker thread that has joined this Set.
  static Set unshare_here(Kinds kinds, const UnshareOptions& options) {
    if (const int err = detail::unshare_ns(kinds.clone_flags()); err != 0) {
      throw detail::system_error(err, "cannot unshare {} namespaces", kinds);
    }
    if (kinds.contains(Kind::mnt) && options.propagation != Propagation::unchanged) {
      if (::mount(nullptr, "/", nullptr, MS_REC | detail::propagation_flag(options.propagation), nullptr) != 0) {
        throw detail::system_error(errno, "cannot set mount propagation of / in the new mount namespace");
      }
    }
    return current(kinds);
  }

  friend struct detail::set_access;  // the engines' one door (Executor, Pool, spawn)

  Kinds kinds_;
  detail::ns_handles ns_{};
  // The pidfd a Set came from (from_pidfd), shared by its copies; a hint for
  // joining, never trusted for identity.
  std::shared_ptr<const detail::unique_fd> pidfd_;
  // Set by the Pool whose get() handed this Set out, shared by its copies:
  // what lets that Pool take it back once, and no other Set.
  std::shared_ptr<detail::pool_lease> lease_;
};

inline Set RunContext::host(Kinds kinds) const {
  detail::checked(kinds, "RunContext::host");
  // The caller is blocked in run() until the callable returns: its links
  // are where it called from. Reached through the worker's procfs fd
  // (.../task/TID/ns), which a joined mount namespace does not change.
  const std::string dir = fmt::format("../../{}/ns", caller_tid_);
  detail::unique_fd fd(::openat(detail::worker_ns_dir, dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!fd) throw detail::system_error(errno, "cannot open the namespaces of thread {}, which called run", caller_tid_);
  return detail::set_access::adopt<Set>(detail::open_proc_ns(fd.get(), "", kinds, "the thread that called run"));
}

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
struct fmt::formatter<gonso::Set> : gonso::detail::text_formatter {
  auto format(const gonso::Set& set, format_context& ctx) const {
    return write(gonso::detail::describe(gonso::detail::set_access::handles(set), set.kinds()), ctx);
  }
};

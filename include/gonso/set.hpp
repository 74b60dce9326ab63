// gonso: a set of Linux namespaces, and running code inside it.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/types.h>

#include <cerrno>
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

#include <fmt/format.h>

#include <gonso/detail/child_process.hpp>
#include <gonso/detail/child_report.hpp>
#include <gonso/detail/error.hpp>
#include <gonso/detail/ns_file.hpp>
#include <gonso/detail/unique_fd.hpp>
#include <gonso/detail/worker_pool.hpp>
#include <gonso/identity.hpp>
#include <gonso/kind.hpp>
#include <gonso/process.hpp>
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

/// Options of Set::unshare.
struct UnshareOptions {
  /// Applied to `/` of a new mount namespace. util-linux unshare(1) also
  /// defaults to rprivate, so that mounts made inside never leak to the host.
  Propagation propagation = Propagation::rprivate;
};

namespace detail {

template <typename F>
inline constexpr bool takes_context = std::is_invocable_v<F&&, RunContext&>;

template <typename F>
using run_result_t =
    typename std::conditional_t<takes_context<F>, std::invoke_result<F&&, RunContext&>, std::invoke_result<F&&>>::type;

/// A run's callable and the place for its outcome, on the caller's stack.
template <typename F, typename R>
class run_job final : public job {
 public:
  run_job(const ns_handles& into, Kinds joining, bool restoring, F&& fn) noexcept
      : job(into, joining, restoring), fn_(std::addressof(fn)) {}

  void invoke(RunContext& ctx) noexcept override {
    try {
      if constexpr (std::is_void_v<R>) {
        call(ctx);
      } else {
        value_.emplace(call(ctx));
      }
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

  Set(const Set& other) : kinds_(other.kinds_) {
    for (Kind kind : other.kinds_) {
      const detail::ns_handle& from = other.ns_[index_of(kind)];
      detail::ns_handle& to = ns_[index_of(kind)];
      to.fd = from.fd.duplicate();
      if (!to.fd) throw detail::system_error(errno, "cannot duplicate the fd of {} namespace {}", kind, from.id);
      to.id = from.id;
    }
  }
  Set& operator=(const Set& other) {
    if (this != &other) *this = Set(other);
    return *this;
  }
  Set(Set&& other) noexcept : kinds_(std::exchange(other.kinds_, Kinds{})), ns_(std::move(other.ns_)) {}
  Set& operator=(Set&& other) noexcept {
    if (this != &other) {
      kinds_ = std::exchange(other.kinds_, Kinds{});
      ns_ = std::move(other.ns_);  // closes the fds held so far at once
    }
    return *this;
  }
  ~Set() = default;

  /// The calling thread's namespaces of `kinds`, read from /proc/thread-self/ns
  /// (never /proc/self/ns, which is the main thread's). For pid and time this
  /// is the namespace the thread itself is in, not the one its children get.
  /// Throws std::system_error naming the kind that could not be opened.
  [[nodiscard]] static Set current(Kinds kinds = default_kinds) {
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
    return from_dir_impl(dir, kinds, /*missing_ok=*/false);
  }
  /// As above, with whichever files of default_kinds (all kinds but user) the
  /// folder has. Throws std::system_error(ENOENT) when it has none.
  [[nodiscard]] static Set from_dir(const std::filesystem::path& dir) {
    return from_dir_impl(dir, default_kinds, /*missing_ok=*/true);
  }

  /// One namespace file, e.g. /run/netns/NAME for Kind::net. Throws
  /// std::system_error(EINVAL) when the file is not a namespace of `kind`.
  [[nodiscard]] static Set from_file(Kind kind, const std::filesystem::path& path) {
    Set set;
    set.put(kind, detail::open_ns(AT_FDCWD, path.c_str(), kind, path.native()));
    return set;
  }

  /// A namespace fd the caller owns; the Set keeps its own duplicate. Throws
  /// std::system_error: EBADF for a closed fd, EINVAL when it is not a
  /// namespace of `kind`.
  [[nodiscard]] static Set from_fd(Kind kind, int fd) {
    const std::string what = fmt::format("fd {}", fd);
    const Identity id = detail::validate_ns_fd(fd, kind, what);
    detail::unique_fd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!copy) throw detail::system_error(errno, "cannot duplicate {} as {} namespace", what, kind);
    Set set;
    set.put(kind, {std::move(copy), id});
    return set;
  }

  /// The kinds this Set holds.
  [[nodiscard]] Kinds kinds() const noexcept { return kinds_; }
  [[nodiscard]] bool contains(Kind kind) const noexcept { return kinds_.contains(kind); }
  [[nodiscard]] bool empty() const noexcept { return kinds_.empty(); }

  /// The fd of one kind, still owned by the Set. Throws std::invalid_argument
  /// when the Set holds no namespace of that kind.
  [[nodiscard]] int fd(Kind kind) const { return handle(kind).fd.get(); }

  /// Which namespace of `kind` this Set holds; to_string() gives
  /// "net:[4026531840]". Throws std::invalid_argument when it holds none.
  [[nodiscard]] Identity identity(Kind kind) const { return handle(kind).id; }

  /// A copy holding only `kinds`. Throws std::invalid_argument when the Set
  /// lacks one of them, std::system_error when an fd cannot be duplicated.
  [[nodiscard]] Set dup(Kinds kinds) const {
    if (!kinds_.contains(kinds)) {
      throw std::invalid_argument(
          fmt::format("cannot copy {} out of a Set holding {}: {} missing", kinds, kinds_, kinds - kinds_));
    }
    Set subset;
    for (Kind kind : kinds) {
      const detail::ns_handle& from = ns_[index_of(kind)];
      detail::unique_fd fd = from.fd.duplicate();
      if (!fd) throw detail::system_error(errno, "cannot duplicate the fd of {} namespace {}", kind, from.id);
      subset.put(kind, {std::move(fd), from.id});
    }
    return subset;
  }

  /// A new Set with fresh namespaces of `kinds`, created from this Set's
  /// namespaces, and the other kinds of this Set carried over. The calling
  /// thread does not move: a worker thread joins this Set, unshares, and
  /// returns to its own namespaces. A new mount namespace gets
  /// options.propagation on `/` (rprivate unless asked otherwise).
  ///
  /// Throws std::invalid_argument when `kinds` is empty, std::logic_error
  /// when this Set is empty, std::system_error(ENOTSUP) for user, pid and
  /// time, which need a process rather than a thread, and std::system_error
  /// with the kernel's errno when joining or unsharing fails.
  [[nodiscard]] Set unshare(Kinds kinds, UnshareOptions options = {}) const {
    if (kinds.empty()) throw std::invalid_argument("cannot unshare: no namespace kinds given");
    if (const Kinds needs_process = kinds & (Kind::user | Kind::pid | Kind::time); !needs_process.empty()) {
      throw detail::system_error(ENOTSUP,
                                 "cannot unshare {} namespaces on a thread: creating user, pid and time "
                                 "namespaces needs a child process, which gonso does not support yet",
                                 needs_process);
    }
    require_not_empty("unshare from");
    Set fresh = run(true, [&] { return unshare_here(kinds, options); });
    Set result = dup(kinds_ - kinds);
    for (Kind kind : kinds) result.put(kind, std::move(fresh.ns_[index_of(kind)]));
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
  [[nodiscard]] Set unshare(int clone_flags, UnshareOptions options = {}) const {
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
  /// can join those (kernel-rules.md). Throws
  /// std::system_error when joining fails, e.g. "cannot join net namespace
  /// net:[4026532008]: Operation not permitted".
  template <typename F>
  auto run(bool restore, F&& fn) const -> detail::run_result_t<F> {
    using R = detail::run_result_t<F>;
    static_assert(!std::is_reference_v<R>,
                  "gonso::Set::run: the callable must return by value; its result crosses threads");
    require_not_empty("run in");
    detail::require_own(Kind::user, kinds_, ns_);
    detail::require_own(Kind::time, kinds_, ns_);

    auto& pool = detail::worker_pool::instance();
    detail::run_job<F, R> job(ns_, kinds_, restore, std::forward<F>(fn));
    std::unique_ptr<detail::worker> worker = restore ? pool.acquire() : pool.spawn();
    if (worker->execute(job) && restore) pool.release(std::move(worker));
    worker.reset();  // a worker that may not run again has ended: join it now
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
  /// Throws std::logic_error for an empty Set; std::system_error with the
  /// child's errno when joining fails ("cannot join net namespace net:[...]:
  /// Operation not permitted") or the fork fails; gonso::ProcessError when
  /// `fn` threw (its type and what() text), or the process was killed by a
  /// signal or exited without a result.
  template <typename F>
  auto run_in_process(F&& fn) const -> std::invoke_result_t<F&&> {
    using R = std::invoke_result_t<F&&>;
    static_assert(detail::reportable<R>,
                  "gonso::Set::run_in_process: the callable must return void, std::string or a trivially "
                  "copyable value; its result is copied between processes");
    require_not_empty("run a process in");
    const detail::join_plan plan = detail::plan_join(ns_, kinds_);
    detail::pipe_fds report = detail::make_pipe();
    // Unflushed output would be written twice, once by each process.
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw detail::system_error(errno, "cannot fork a child process to run in {}", *this);
    if (pid == 0) {
      report.read.reset();
      run_child<R>(plan, report.write.get(), parent, fn);
    }
    report.write.reset();
    std::string data;
    try {
      data = detail::read_to_end(report.read.get());
    } catch (...) {
      ::kill(pid, SIGKILL);
      (void)detail::reap(pid);
      throw;
    }
    return detail::decode_report<R>(data, detail::reap(pid));
  }

  /// Same namespaces of the same kinds.
  friend bool operator==(const Set& a, const Set& b) noexcept {
    if (a.kinds_ != b.kinds_) return false;
    for (Kind kind : a.kinds_) {
      if (a.ns_[index_of(kind)].id != b.ns_[index_of(kind)].id) return false;
    }
    return true;
  }

 private:
  const detail::ns_handle& handle(Kind kind) const {
    if (!kinds_.contains(kind)) {
      throw std::invalid_argument(fmt::format("Set {} holds no {} namespace", kinds_, kind));
    }
    return ns_[index_of(kind)];
  }

  void put(Kind kind, detail::ns_handle&& ns) noexcept {
    ns_[index_of(kind)] = std::move(ns);
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
  // namespaces, run, report, and _exit without running the parent's exit
  // handlers.
  template <typename R, typename F>
  [[noreturn]] void run_child(const detail::join_plan& plan, int report, pid_t parent, F& fn) const noexcept {
    detail::die_with_parent(parent);
    std::size_t failed = 0;
    if (const int err = detail::join_in_child(plan, failed); err != 0) {
      const Kind kind = plan.steps[failed].kind;
      detail::report_join_error(report, err, fmt::format("cannot join {} namespace {}", kind, ns_[index_of(kind)].id));
      ::_exit(1);
    }
    if (plan.fork_after) {
      const pid_t inner = ::fork();
      if (inner < 0) {
        detail::report_join_error(report, errno, "cannot fork into the joined pid or time namespace");
        ::_exit(1);
      }
      if (inner > 0) {
        ::close(report);
        detail::exit_like(detail::reap(inner));
      }
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    }
    detail::run_and_report<R>(std::forward<F>(fn), report);
    std::fflush(nullptr);
    ::_exit(0);
  }

  // Runs on a worker thread that has joined this Set.
  static Set unshare_here(Kinds kinds, const UnshareOptions& options) {
    if (const int err = detail::unshare_ns(kinds.clone_flags()); err != 0) {
      throw detail::system_error(err, "cannot unshare {} namespaces", kinds);
    }
    if (kinds.contains(Kind::mnt) && options.propagation != Propagation::unchanged) {
      const unsigned long how = options.propagation == Propagation::rprivate ? MS_PRIVATE
                                : options.propagation == Propagation::rslave ? MS_SLAVE
                                                                             : MS_SHARED;
      if (::mount(nullptr, "/", nullptr, MS_REC | how, nullptr) != 0) {
        throw detail::system_error(errno, "cannot set mount propagation of / in the new mount namespace");
      }
    }
    return current(kinds);
  }

  Kinds kinds_;
  detail::ns_handles ns_{};
};

}  // namespace gonso

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

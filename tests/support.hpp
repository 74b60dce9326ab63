// Test helpers: reading namespace identities straight from /proc (never
// through gonso), counting fds and threads, and making foreign namespaces
// with plain system calls so that gonso is checked against the kernel.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <gonso/set.hpp>

// Failed comparisons print identities as the kernel's links read, with the device.
namespace Catch {
template <>
struct StringMaker<gonso::Identity> {
  static std::string convert(const gonso::Identity& id) { return fmt::format("{} (dev {:#x})", id, id.device); }
};
template <>
struct StringMaker<gonso::Kinds> {
  static std::string convert(gonso::Kinds kinds) { return fmt::format("{}", kinds); }
};
}  // namespace Catch

namespace test {

inline pid_t tid() { return static_cast<pid_t>(::syscall(SYS_gettid)); }

/// The link name a thread's joined state shows for a kind: joining pid or time
/// changes only the *_for_children links (the README's kernel rules).
inline std::string link_of(gonso::Kind kind) {
  if (kind == gonso::Kind::pid) return "pid_for_children";
  if (kind == gonso::Kind::time) return "time_for_children";
  return std::string(gonso::name(kind));
}

/// (device, inode) of a namespace file, read with stat(2).
inline gonso::Identity identity_at(gonso::Kind kind, const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw std::system_error(errno, std::generic_category(), "stat " + path);
  }
  return gonso::Identity{kind, st.st_dev, st.st_ino};
}

/// The calling thread's namespace of `kind` as setns(2) changes it.
/// Allocates nothing unless it fails: callables of run_in_process call it in
/// a fork of this multithreaded process, where AddressSanitizer's allocator
/// (GCC 12, no fork handlers) may be held locked by a thread that is not there.
inline gonso::Identity thread_ns(gonso::Kind kind) {
  const char* link = kind == gonso::Kind::pid    ? "pid_for_children"
                     : kind == gonso::Kind::time ? "time_for_children"
                                                 : gonso::name(kind).data();  // names are literals
  std::array<char, 64> path{};
  std::snprintf(path.data(), path.size(), "/proc/thread-self/ns/%s", link);
  struct stat st {};
  if (::stat(path.data(), &st) != 0) {
    throw std::system_error(errno, std::generic_category(), std::string("stat ") + path.data());
  }
  return gonso::Identity{kind, st.st_dev, st.st_ino};
}

/// readlink of the calling thread's namespace link, e.g. "net:[4026531840]".
inline std::string thread_ns_link(gonso::Kind kind) {
  return std::filesystem::read_symlink("/proc/thread-self/ns/" + std::string(gonso::name(kind))).string();
}

/// Every kind a thread can carry, as the thread sees it now.
using Snapshot = std::map<gonso::Kind, gonso::Identity>;

// Printable forms, so that a failed comparison of text(a) == text(b) shows
// both sides in full: kind, inode and device (an identity is the pair).
inline std::string text(const gonso::Identity& id) { return fmt::format("{} on dev {:#x}", id, id.device); }
inline std::string text(const Snapshot& snap) {
  std::string out;
  for (const auto& [kind, id] : snap) out += text(id) + "; ";
  return out;
}

inline constexpr gonso::Kind thread_kinds[] = {gonso::Kind::cgroup, gonso::Kind::ipc, gonso::Kind::mnt,
                                               gonso::Kind::net,    gonso::Kind::pid, gonso::Kind::time,
                                               gonso::Kind::uts,    gonso::Kind::user};
inline Snapshot snapshot() {
  Snapshot s;
  for (gonso::Kind k : thread_kinds) s[k] = thread_ns(k);
  return s;
}

inline std::size_t count_entries(const char* dir) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}
/// Open fds of the process (the directory iterator's own fd is counted every
/// time, so comparisons stay fair).
inline std::size_t count_fds() { return count_entries("/proc/self/fd"); }
// "fd -> target" for each open fd, to show what a leak check found.
inline std::string fd_list() {
  std::string out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    out += entry.path().filename().string() + " -> " + std::filesystem::read_symlink(entry.path(), ec).string() + "; ";
  }
  return out;
}
inline std::size_t count_threads() { return count_entries("/proc/self/task"); }

/// Polls `done` until it holds, for at most `limit`: the kernel releases an
/// ended thread or a killed process a moment after the call that ended it.
/// A bound, never a timing assertion: callers assert on the condition itself.
template <typename Done>
bool eventually(Done&& done, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

/// pthread_join returns once the kernel has cleared the thread's tid, before
/// the thread leaves /proc/self/task: waits, within a bound, until the
/// process has at most `expected` threads, and returns the last count seen,
/// or `expected` when it has fewer. Fewer is no leak: a thread of an earlier
/// test that was still on its way out when the baseline was counted (a
/// worker buried by run(false), an anchor) may end meanwhile.
inline std::size_t threads_settled_at(std::size_t expected) {
  std::size_t now = count_threads();
  (void)eventually([&] { return (now = count_threads()) <= expected; });
  return now < expected ? expected : now;
}
inline bool threads_back_to(std::size_t expected) { return threads_settled_at(expected) == expected; }

/// The thread count to come back to: idle workers retired, and one thread
/// started first, since the first thread a process starts can bring a
/// runtime's helper along for good (ThreadSanitizer's background thread).
inline std::size_t thread_baseline() {
  std::thread([] {}).join();
  gonso::retire_idle_workers();
  return count_threads();
}

/// Thread `tid` of this process has left /proc/self/task (waited for within
/// a bound, for the same reason).
inline bool thread_ended(pid_t tid) {
  return eventually([&] { return !std::filesystem::exists(fmt::format("/proc/self/task/{}", tid)); });
}

/// Every process that is a child of some thread of this process, zombies
/// included (/proc/self/task/*/children).
inline std::set<pid_t> children() {
  std::set<pid_t> out;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(task.path() / "children");
    for (pid_t pid = 0; in >> pid;) out.insert(pid);
  }
  return out;
}

/// A field of /proc/PID/status ("State", "NSpid", "PPid"), empty if gone.
inline std::string status_field(pid_t pid, const std::string& field) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0) {
      const auto from = line.find_first_not_of(" \t", field.size() + 1);
      return from == std::string::npos ? std::string() : line.substr(from);
    }
  }
  return {};
}

/// Processes whose pid namespace is `ns` (read with stat of /proc/PID/ns/pid,
/// which works for zombies too).
inline std::vector<pid_t> processes_in(const gonso::Identity& ns) {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name[0] < '0' || name[0] > '9') continue;
    struct stat st {};
    if (::stat((e.path() / "ns/pid").c_str(), &st) != 0) continue;
    if (st.st_dev == ns.device && st.st_ino == ns.inode) out.push_back(std::stoi(name));
  }
  return out;
}

/// The pid, in this namespace, of pid 1 of pid namespace `ns`; -1 if none.
inline pid_t init_of(const gonso::Identity& ns) {
  for (pid_t pid : processes_in(ns)) {
    const std::string nspid = status_field(pid, "NSpid");  // "4242\t1": the pid in each namespace
    const auto last = nspid.find_last_of(" \t");
    if (last != std::string::npos && nspid.substr(last + 1) == "1") return pid;
  }
  return -1;
}

/// Threads of this process (by tid) that are in a namespace other than the
/// one `reference` names for that kind.
inline std::vector<std::string> threads_outside(const Snapshot& reference) {
  std::vector<std::string> out;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    for (const auto& [kind, id] : reference) {
      const std::string path = task.path().string() + "/ns/" + link_of(kind);
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) continue;  // the thread ended meanwhile
      if (st.st_dev != id.device || st.st_ino != id.inode) {
        out.push_back(fmt::format("tid {} in {}:[{}]", task.path().filename().string(), gonso::name(kind), st.st_ino));
      }
    }
  }
  return out;
}

inline bool has_cap_sys_admin() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &header, data) != 0) return false;
  return (data[0].effective & (1u << CAP_SYS_ADMIN)) != 0;
}

/// Privileged tests fail loudly, never pass, without CAP_SYS_ADMIN.
inline void require_privilege() {
  if (!has_cap_sys_admin()) {
    FAIL(
        "this test needs CAP_SYS_ADMIN (run it as root), or exclude privileged tests: "
        "ctest -LE privileged");
  }
}

/// Drops CAP_SYS_ADMIN from the calling thread's effective and permitted
/// sets with the raw syscall aimed at its own tid: other threads keep theirs.
inline void drop_cap_sys_admin_on_this_thread() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, tid()};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &header, data) != 0) throw std::system_error(errno, std::generic_category(), "capget");
  data[0].effective &= ~(1u << CAP_SYS_ADMIN);
  data[0].permitted &= ~(1u << CAP_SYS_ADMIN);
  header.pid = tid();
  if (::syscall(SYS_capset, &header, data) != 0) throw std::system_error(errno, std::generic_category(), "capset");
}

/// Runs `fn` on a fresh std::thread and returns what it threw; assert on it
/// from the test's own thread.
template <typename Fn>
std::exception_ptr on_fresh_thread(Fn&& fn) {
  std::exception_ptr error;
  std::thread([&] {
    try {
      fn();
    } catch (...) {
      error = std::current_exception();
    }
  }).join();
  return error;
}

/// Runs `fn` on a fresh std::thread that has dropped CAP_SYS_ADMIN, so that
/// whatever it starts (workers, children) inherits the lack. Returns what
/// `fn` threw.
template <typename Fn>
std::exception_ptr on_unprivileged_thread(Fn&& fn) {
  return on_fresh_thread([&] {
    drop_cap_sys_admin_on_this_thread();
    fn();
  });
}

/// The std::system_error that `fn` threw on an unprivileged thread (see
/// on_unprivileged_thread): its code, empty when nothing was thrown, and its
/// message. Anything else thrown fails the test.
struct Refusal {
  std::error_code code;
  std::string message;
};
template <typename Fn>
Refusal refusal_on_unprivileged_thread(Fn&& fn) {
  Refusal refusal;
  const std::exception_ptr other = on_unprivileged_thread([&] {
    try {
      fn();
    } catch (const std::system_error& e) {
      refusal = {e.code(), e.what()};
    }
  });
  CHECK(other == nullptr);
  return refusal;
}

/// A child process that sits in namespaces of its own until destroyed,
/// created by a raw clone(2) with `flags`, so that it is born in them: user
/// and time work whatever threads the parent (or a sanitizer) runs, and with
/// CLONE_NEWPID the child is pid 1 of the new namespace.
/// With `hide_proc` (and CLONE_NEWNS), /proc is covered by an empty tmpfs in
/// its mount namespace, as in a container that has no /proc.
/// Made with raw syscalls only: no gonso code is involved.
class ForeignNamespaces {
 public:
  explicit ForeignNamespaces(int flags, bool hide_proc = false) {
    int ready[2];
    if (::pipe2(ready, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    const pid_t parent = ::getpid();
    // Like fork(), but the child starts in the new namespaces. clone(2) reads
    // its low byte as the exit signal, where CLONE_NEWTIME lies: the child
    // unshares that one itself (allowed whatever its threads, the README's kernel rules).
    const int clone_flags = flags & ~CLONE_NEWTIME;
    pid_ = static_cast<pid_t>(::syscall(SYS_clone, clone_flags | SIGCHLD, nullptr, nullptr, nullptr, 0));
    if (pid_ < 0) {
      const int err = errno;
      ::close(ready[0]);
      ::close(ready[1]);
      throw std::system_error(err, std::generic_category(), fmt::format("clone({:#x})", flags));
    }
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      // Outside a new pid namespace the parent can be checked directly; in
      // one, a dead parent shows as EPIPE on `ready` below.
      if ((flags & CLONE_NEWPID) == 0 && ::getppid() != parent) ::_exit(1);
      char ok = (flags & CLONE_NEWTIME) == 0 || ::unshare(CLONE_NEWTIME) == 0 ? 'y' : 'n';
      if (ok == 'y' && hide_proc &&
          (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
           ::mount("empty", "/proc", "tmpfs", 0, "size=4k") != 0)) {
        ok = 'n';
      }
      if (::write(ready[1], &ok, 1) != 1) ::_exit(1);
      for (;;) ::pause();
    }
    ::close(ready[1]);
    char ok = 'n';
    const ssize_t n = ::read(ready[0], &ok, 1);
    ::close(ready[0]);
    if (n != 1 || ok != 'y') {
      stop();
      throw std::runtime_error(fmt::format("helper child in new namespaces {:#x} failed to set up", flags));
    }
  }
  ForeignNamespaces(const ForeignNamespaces&) = delete;
  ForeignNamespaces& operator=(const ForeignNamespaces&) = delete;
  ~ForeignNamespaces() { stop(); }

  [[nodiscard]] pid_t pid() const { return pid_; }
  /// Path of the child's namespace file of `kind`, as a process joins it:
  /// for pid and time the *_for_children link.
  [[nodiscard]] std::string path(gonso::Kind kind) const { return fmt::format("/proc/{}/ns/{}", pid_, link_of(kind)); }

 private:
  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  pid_t pid_ = -1;
};

/// A fresh temporary folder, removed with its contents when destroyed.
class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "gonso-test-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp");
    path_ = templ;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// /etc/netns/NAME with the files given, as `ip netns exec NAME` reads them;
/// removed when destroyed, and /etc/netns too if that leaves it empty.
class EtcNetnsFiles {
 public:
  EtcNetnsFiles(const std::string& name, const std::map<std::string, std::string>& files)
      : dir_(std::filesystem::path("/etc/netns") / name) {
    std::filesystem::create_directories(dir_);
    for (const auto& [file, text] : files) std::ofstream(dir_ / file) << text;
  }
  EtcNetnsFiles(const EtcNetnsFiles&) = delete;
  EtcNetnsFiles& operator=(const EtcNetnsFiles&) = delete;
  ~EtcNetnsFiles() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    ::rmdir("/etc/netns");  // only if we left it empty
  }

 private:
  std::filesystem::path dir_;
};

/// A tmpfs on a fresh temporary folder, made a shared mount so that mount
/// propagation to and from it can be observed. Unmounted and removed when
/// destroyed, whatever the test did.
class SharedTmpfs {
 public:
  SharedTmpfs() {
    std::string templ = (std::filesystem::temp_directory_path() / "gonso-test-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp");
    path_ = templ;
    if (::mount("gonso-test", path_.c_str(), "tmpfs", 0, "size=1m") != 0 ||
        ::mount(nullptr, path_.c_str(), nullptr, MS_SHARED, nullptr) != 0) {
      const int err = errno;
      cleanup();
      throw std::system_error(err, std::generic_category(), "mount shared tmpfs on " + path_.string());
    }
    mounted_ = true;
  }
  SharedTmpfs(const SharedTmpfs&) = delete;
  SharedTmpfs& operator=(const SharedTmpfs&) = delete;
  ~SharedTmpfs() { cleanup(); }

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  void cleanup() {
    if (mounted_) {
      // Anything that propagated back onto it goes with a recursive lazy unmount.
      ::umount2(path_.c_str(), MNT_DETACH);
      mounted_ = false;
    }
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::filesystem::path path_;
  bool mounted_ = false;
};

/// True when `dir` is a mount point in the calling thread's mount namespace.
inline bool is_mount_point_here(const std::filesystem::path& dir) {
  std::ifstream info("/proc/thread-self/mountinfo");
  std::string line;
  const std::string needle = " " + dir.string() + " ";
  while (std::getline(info, line)) {
    if (line.find(needle) != std::string::npos) return true;
  }
  return false;
}

}  // namespace test

// ---------------------------------------------------------------------------
// Persisted and named namespaces (persist_test.cpp, netns_test.cpp): the real
// tools, folders of this test process, and the parts of the machine a test
// must leave as it found them.

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <exception>
#include <sstream>
#include <string_view>
#include <system_error>

namespace test {

/// What a command printed on stdout, and its wait status. Run by popen(3)
/// (mode "re") through /bin/sh, never through gonso.
struct ToolResult {
  std::string out;
  int status = -1;
  [[nodiscard]] bool ok() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
};
inline ToolResult run_tool(const std::string& command) {
  ToolResult result;
  FILE* pipe = ::popen(command.c_str(), "re");
  if (pipe == nullptr) return result;
  char buf[512];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) result.out.append(buf, n);
  result.status = ::pclose(pipe);
  return result;
}
inline std::string tool_output(const std::string& command) { return run_tool(command).out; }

/// The whole content of the file at `path`; empty when it cannot be read.
inline std::string file_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// The lines of `text`, each split into words at white space.
inline std::vector<std::vector<std::string>> words_by_line(const std::string& text) {
  std::vector<std::vector<std::string>> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::vector<std::string> words;
    for (std::string w; fields >> w;) words.push_back(w);
    lines.push_back(std::move(words));
  }
  return lines;
}

/// The std::system_error that `fn` throws; fails the test when it throws none.
template <typename Fn>
std::system_error system_error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::system_error& e) {
    return e;
  }
  FAIL("no std::system_error was thrown");
  throw std::logic_error("unreachable");
}

/// "gonso-test-<pid>-": how every name and folder this test process makes
/// begins, so that leftovers can be told apart from other processes'.
inline std::string own_prefix() { return fmt::format("gonso-test-{}-", ::getpid()); }

/// True when `text` holds a name made by another gonso test process
/// ("gonso-test-<other pid>-"): test processes may run at once (ctest -j),
/// and each checks only what is its own.
inline bool made_by_other_test(std::string_view text) {
  constexpr std::string_view tag = "gonso-test-";
  const std::string own = std::to_string(::getpid());
  for (auto at = text.find(tag); at != std::string_view::npos; at = text.find(tag, at + 1)) {
    const std::size_t from = at + tag.size();
    std::size_t to = from;
    while (to < text.size() && std::isdigit(static_cast<unsigned char>(text[to])) != 0) ++to;
    if (to > from && to < text.size() && text[to] == '-' && text.substr(from, to - from) != own) return true;
  }
  return false;
}

/// A tmpfs on a fresh folder of the temporary directory, made private
/// (MS_PRIVATE), so that mount namespace files can be bound in it (the kernel
/// refuses them on a shared mount). Unmounted lazily, with everything bound
/// beneath it, and removed when destroyed, whatever the test did.
class PrivateTmpfs {
 public:
  PrivateTmpfs() {
    std::string templ = (std::filesystem::temp_directory_path() / (own_prefix() + "XXXXXX")).string();
    if (::mkdtemp(templ.data()) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp");
    path_ = templ;
    if (::mount("gonso-test", path_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0700") != 0) {
      const int err = errno;
      cleanup();
      throw std::system_error(err, std::generic_category(), "mount tmpfs on " + path_.string());
    }
    mounted_ = true;
    if (::mount(nullptr, path_.c_str(), nullptr, MS_PRIVATE, nullptr) != 0) {
      const int err = errno;
      cleanup();
      throw std::system_error(err, std::generic_category(), "make " + path_.string() + " private");
    }
  }
  PrivateTmpfs(const PrivateTmpfs&) = delete;
  PrivateTmpfs& operator=(const PrivateTmpfs&) = delete;
  ~PrivateTmpfs() { cleanup(); }

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  void cleanup() {
    if (mounted_) {
      ::umount2(path_.c_str(), MNT_DETACH);  // takes the nsfs binds beneath along
      mounted_ = false;
    }
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::filesystem::path path_;
  bool mounted_ = false;
};

/// One mount of /proc/self/mountinfo: mount point, filesystem type, and the
/// root within it (for nsfs, which namespace: "net:[4026532177]").
struct MountEntry {
  std::string point, fstype, root;
};
inline std::vector<MountEntry> mounts() {
  std::vector<MountEntry> out;
  std::ifstream info("/proc/self/mountinfo");
  for (std::string line; std::getline(info, line);) {
    std::istringstream fields(line);
    std::vector<std::string> f;
    for (std::string w; fields >> w;) f.push_back(w);
    const auto dash = std::find(f.begin(), f.end(), "-");
    if (f.size() < 5 || dash == f.end() || dash + 1 == f.end()) continue;
    out.push_back({f[4], *(dash + 1), f[3]});
  }
  return out;
}

/// How many mounts sit on `point` exactly.
inline std::size_t mounts_at(const std::string& point) {
  const auto all = mounts();
  return static_cast<std::size_t>(
      std::count_if(all.begin(), all.end(), [&](const MountEntry& m) { return m.point == point; }));
}

/// The nsfs mounts on `point`, as "net:[4026532177]".
inline std::vector<std::string> nsfs_mounts_at(const std::string& point) {
  std::vector<std::string> out;
  for (const MountEntry& m : mounts()) {
    if (m.fstype == "nsfs" && m.point == point) out.push_back(m.root);
  }
  return out;
}

/// What a test of persisted or named namespaces may change, and must leave
/// as it found it.
struct MachineState {
  std::vector<std::string> mounts;        ///< nsfs mounts, and mounts on /run/netns or this process's folders
  std::vector<std::string> netns_files;   ///< entries of /run/netns
  std::vector<std::string> ip_netns;      ///< names `ip netns list` shows
  std::vector<std::string> temp_folders;  ///< this process's entries in the temporary directory
};

inline MachineState machine_state() {
  MachineState s;
  const std::string own = own_prefix();
  for (const MountEntry& m : mounts()) {
    const bool ours = m.fstype == "nsfs" || m.point == "/run/netns" || m.point.rfind("/run/netns/", 0) == 0 ||
                      m.point.find(own) != std::string::npos;
    if (ours && !made_by_other_test(m.point)) s.mounts.push_back(fmt::format("{} {} {}", m.point, m.fstype, m.root));
  }
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/run/netns", ec)) {
    const std::string name = e.path().filename().string();
    if (!made_by_other_test(name)) s.netns_files.push_back(name);
  }
  for (const auto& words : words_by_line(tool_output("ip netns list 2>&1"))) {
    if (!words.empty() && !made_by_other_test(words[0])) s.ip_netns.push_back(words[0]);
  }
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::temp_directory_path(), ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(own, 0) == 0) s.temp_folders.push_back(name);
  }
  for (auto* v : {&s.mounts, &s.netns_files, &s.ip_netns, &s.temp_folders}) std::sort(v->begin(), v->end());
  return s;
}

/// Runs `body` (the whole test, its RAII guards inside), then checks, also
/// when it failed, that the mount table, /run/netns, `ip netns list` and the
/// temporary directory are as they were before; rethrows what `body` threw.
template <typename Body>
void leaves_machine_as_found(Body&& body) {
  const MachineState before = machine_state();
  std::exception_ptr failure;
  try {
    body();
  } catch (...) {
    failure = std::current_exception();
  }
  const MachineState after = machine_state();
  CHECK(after.mounts == before.mounts);
  CHECK(after.netns_files == before.netns_files);
  CHECK(after.ip_netns == before.ip_netns);
  CHECK(after.temp_folders == before.temp_folders);
  if (failure) std::rethrow_exception(failure);
}

inline const std::string netns_dir = "/run/netns";  // NOLINT(cert-err58-cpp): a test constant

/// /run/netns as it was: gonso and `ip netns add` make it a mount of its own
/// (shared) the first time. When it was no mount point (or did not exist)
/// before and nothing is left in it, that mount (and the folder) goes again,
/// so that a test passes whatever state /run/netns starts in.
class RunNetnsAsFound {
 public:
  RunNetnsAsFound() : existed_(std::filesystem::exists(netns_dir)), mounts_(test::mounts_at(netns_dir)) {}
  RunNetnsAsFound(const RunNetnsAsFound&) = delete;
  RunNetnsAsFound& operator=(const RunNetnsAsFound&) = delete;
  ~RunNetnsAsFound() {
    if (!empty()) return;  // someone else's names: leave it be
    while (test::mounts_at(netns_dir) > mounts_) {
      if (::umount2(netns_dir.c_str(), MNT_DETACH) != 0) break;
    }
    if (!existed_) ::rmdir(netns_dir.c_str());
  }

 private:
  static bool empty() {
    std::error_code ec;
    return std::filesystem::directory_iterator(netns_dir, ec) == std::filesystem::directory_iterator();
  }
  bool existed_;
  std::size_t mounts_;
};

/// A case that touches /run/netns: `body` runs with /run/netns restored after
/// it, and the machine is then checked to be as it was.
template <typename Body>
void netns_case(Body&& body) {
  test::leaves_machine_as_found([&] {
    const RunNetnsAsFound restore;
    body();
  });
}

/// NS_GET_ID of a namespace fd, asked here with ioctl(2) rather than
/// through gonso; 0 when the kernel lacks it.
inline std::uint64_t kernel_ns_id(int fd) {
  std::uint64_t id = 0;
  return ::ioctl(fd, _IOR(0xb7, 13, std::uint64_t), &id) == 0 ? id : 0;
}
/// NS_GET_ID of the calling thread's mount namespace.
inline std::uint64_t own_mnt_id() {
  const int fd = ::open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC);
  const std::uint64_t id = fd < 0 ? 0 : kernel_ns_id(fd);
  if (fd >= 0) ::close(fd);
  return id;
}

/// from.unshare(kinds) (kinds holding mnt), made again until the kernel will
/// bind its mount namespace from the calling thread: it binds one only into
/// an older mount namespace (a lower id), and the ids come in per-CPU
/// batches, so inside a container a namespace made after the caller's may
/// still be older (gonso then refuses, as persist_test.cpp checks). Each try
/// runs on a worker the scheduler places anew; 200 tries bound it.
inline gonso::Set unshare_persistable(const gonso::Set& from, gonso::Kinds kinds) {
  const std::uint64_t own = own_mnt_id();
  if (!kinds.contains(gonso::Kind::mnt)) return from.unshare(kinds);
  for (int tries = 0;; ++tries) {
    gonso::Set fresh = from.unshare(kinds);
    if (own == 0 || kernel_ns_id(fresh.fd(gonso::Kind::mnt)) > own || tries == 200) return fresh;
  }
}

/// A thread that keeps swapping the name `victim_name` in `dir`: a symlink
/// to `target` renamed onto it, then removed, over and over, until
/// destroyed. Returns how many swaps it made.
class SymlinkSwapper {
 public:
  SymlinkSwapper(std::filesystem::path dir, std::string victim_name, std::filesystem::path target)
      : dir_(std::move(dir)), name_(std::move(victim_name)), target_(std::move(target)) {
    thread_ = std::thread([this] { run(); });
  }
  SymlinkSwapper(const SymlinkSwapper&) = delete;
  SymlinkSwapper& operator=(const SymlinkSwapper&) = delete;
  ~SymlinkSwapper() { stop(); }
  std::size_t stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return swaps_;
  }

 private:
  void run() {
    const std::string link = (dir_ / (name_ + ".swap")).string();
    const std::string victim = (dir_ / name_).string();
    while (!stop_) {
      ::unlink(link.c_str());
      if (::symlink(target_.c_str(), link.c_str()) != 0) continue;
      // Onto whatever is there (the file just made, or nothing); a mount
      // point refuses (EBUSY).
      if (::rename(link.c_str(), victim.c_str()) == 0) ++swaps_;
      std::this_thread::yield();
      // Only a symlink is taken away again, never a file of gonso's.
      struct stat st {};
      if (::lstat(victim.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) ::unlink(victim.c_str());
      // Every 8th round the name stays free a little, so that gonso gets to
      // create it now and then, and the swap lands after that too.
      if (swaps_ % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    ::unlink(link.c_str());
  }
  std::filesystem::path dir_;
  std::string name_;
  std::filesystem::path target_;
  std::atomic<bool> stop_{false};
  std::size_t swaps_ = 0;
  std::thread thread_;
};

}  // namespace test

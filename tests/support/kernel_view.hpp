// What the kernel shows of this process, read straight from /proc and with
// stat(2), never through gonso: namespace identities of threads and
// processes, open fds, threads, children (zombies included), fields of
// /proc/PID/status and the processes of a pid namespace.
#pragma once

#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <gonso/set.hpp>
#include <gonso/workers.hpp>

#include "poll.hpp"

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

/// The calling process's own namespace of `kind` (for pid and time the one
/// it is in, not its children's), read from /proc/self/ns.
inline gonso::Identity process_ns(gonso::Kind kind) {
  return identity_at(kind, "/proc/self/ns/" + std::string(gonso::name(kind)));
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

/// Whether the calling thread is in every namespace `set` holds.
inline bool inside(const gonso::Set& set) {
  for (gonso::Kind kind : set.kinds()) {
    if (thread_ns(kind) != set.identity(kind)) return false;
  }
  return true;
}

inline std::size_t count_entries(const char* dir) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}
/// Open fds of the process (the directory iterator's own fd is counted every
/// time, so comparisons stay fair).
inline std::size_t count_fds() { return count_entries("/proc/self/fd"); }
/// The fds of a process (its /proc folder): number to what its link names.
inline std::map<int, std::string> fds_of(const std::string& proc_dir) {
  std::map<int, std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(proc_dir + "/fd", ec)) {
    std::error_code link_ec;
    const auto target = std::filesystem::read_symlink(e.path(), link_ec);
    out[std::stoi(e.path().filename().string())] = link_ec ? std::string("?") : target.string();
  }
  return out;
}
inline std::string describe(const std::map<int, std::string>& fds) {
  std::string out;
  for (const auto& [fd, target] : fds) out += fmt::format("{} -> {}; ", fd, target);
  return out;
}
// "fd -> target" for each open fd, to show what a leak check found.
inline std::string fd_list() { return describe(fds_of("/proc/self")); }
/// What fd `fd` of this process names, as its /proc/self/fd link reads
/// ("net:[4026532008]" for a namespace).
inline std::string fd_link(int fd) {
  return std::filesystem::read_symlink(fmt::format("/proc/self/fd/{}", fd)).string();
}

inline std::size_t count_threads() { return count_entries("/proc/self/task"); }

/// The tids of this process's threads.
inline std::set<pid_t> thread_ids() {
  std::set<pid_t> out;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    out.insert(static_cast<pid_t>(std::stol(task.path().filename().string())));
  }
  return out;
}

/// Threads of this process now that are not among `before`: those started
/// since, whatever ended meanwhile.
inline std::set<pid_t> threads_started_since(const std::set<pid_t>& before) {
  std::set<pid_t> out;
  for (pid_t tid : thread_ids()) {
    if (!before.contains(tid)) out.insert(tid);
  }
  return out;
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
/// Threads of an earlier test still on their way out (joined, buried or
/// retired, but not yet gone from /proc/self/task) would make the count too
/// high and a later exact comparison fail, so the count is taken once it has
/// stopped falling for a while (bounded: a count that never settles is
/// returned as last seen).
inline std::size_t thread_baseline() {
  std::thread([] {}).join();
  gonso::retire_idle_workers();
  using clock = std::chrono::steady_clock;
  const auto give_up = clock::now() + std::chrono::seconds(2);
  std::size_t count = count_threads();
  auto steady_since = clock::now();
  while (clock::now() - steady_since < std::chrono::milliseconds(25) && clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const std::size_t now = count_threads();
    if (now != count) {
      count = now;
      steady_since = clock::now();
    }
  }
  return count;
}

/// Thread `tid` of this process has left /proc/self/task (waited for within
/// a bound, for the same reason).
inline bool thread_ended(pid_t tid) {
  return eventually([&] { return !std::filesystem::exists(fmt::format("/proc/self/task/{}", tid)); });
}

/// A process's /proc entry is gone: it was reaped (waited for within `limit`).
inline bool gone(pid_t pid, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  return eventually([&] { return !std::filesystem::exists(fmt::format("/proc/{}", pid)); }, limit);
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

/// The pid of a child that has ended and waits to be reaped (looked at with
/// waitid(WNOWAIT), not reaped); 0 when there is none.
inline pid_t reapable_child() {
  siginfo_t info{};
  if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT | __WALL) != 0) return 0;
  return info.si_pid;
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
inline std::vector<std::string> threads_outside_now(const Snapshot& reference) {
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

/// Bound for the kernel to finish tearing down threads that already ended.
/// A thread that has returned from its start routine, or was joined, still
/// holds its namespaces until do_exit(2) drops them, after the point where
/// pthread_join returns; a run(false) worker or a discarded one ends after
/// its caller has returned. Checks that no thread is left somewhere wait
/// this long for such threads, and fail on one that stays.
inline constexpr auto exit_bound = std::chrono::seconds(5);

/// threads_outside_now once threads on their way out are gone: a thread
/// that stays outside for exit_bound is reported.
inline std::vector<std::string> threads_outside(const Snapshot& reference) {
  std::vector<std::string> out;
  (void)eventually(
      [&] {
        out = threads_outside_now(reference);
        return out.empty();
      },
      exit_bound);
  return out;
}

/// No thread of the process is in `id`'s namespace (now: see exit_bound).
inline bool no_thread_in_now(const gonso::Identity& id) {
  const std::string link = link_of(id.kind);
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    struct stat st {};
    if (::stat((task.path() / "ns" / link).c_str(), &st) == 0 && st.st_dev == id.device && st.st_ino == id.inode) {
      return false;
    }
  }
  return true;
}

/// No thread of the process is in `id`'s namespace, once threads on their way
/// out are gone.
inline bool no_thread_in(const gonso::Identity& id) {
  return eventually([&] { return no_thread_in_now(id); }, exit_bound);
}

}  // namespace test

// The one leak check of the tests. A Baseline records, when it is made, what
// a test may change and must leave as it found it, and check() compares the
// process and the machine with that record, waiting within a bound where
// the kernel lets go a moment later (threads leaving /proc/self/task,
// children reaped by gonso's helpers), and saying what differs.
#pragma once

#include <algorithm>
#include <cctype>
#include <exception>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <gonso/workers.hpp>

#include "kernel_view.hpp"
#include "mounts.hpp"
#include "poll.hpp"
#include "tools.hpp"

namespace test {

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

/// What a Baseline records and checks; combine with |.
enum class Watch : unsigned {
  namespaces = 1U << 0,     ///< the caller's namespaces, and no thread of the process in another one
  fds = 1U << 1,            ///< the open fds of the process (idle workers retired first)
  threads = 1U << 2,        ///< the threads of the process (idle workers retired first)
  children = 1U << 3,       ///< child processes of every thread, zombies and reapable ones included
  worker_policy = 1U << 4,  ///< gonso's worker policy
  machine = 1U << 5,        ///< nsfs mounts, mounts on /run/netns and this process's folders, /run/netns,
                            ///< `ip netns list` and this process's entries in the temporary directory
  process = namespaces | fds | threads | children,
  everything = process | worker_policy | machine,
};
constexpr Watch operator|(Watch a, Watch b) {
  return static_cast<Watch>(static_cast<unsigned>(a) | static_cast<unsigned>(b));
}
constexpr bool watches(Watch set, Watch one) { return (static_cast<unsigned>(set) & static_cast<unsigned>(one)) != 0; }

/// What check() may wait for, within its bound, before it compares.
struct Settle {
  bool children = true;  ///< children to be reaped (gonso reaps some on other threads)
  bool fds = false;      ///< fds to be closed, idle workers retired on each look
};

/// Child processes of this process, running or zombie: what every thread's
/// children file lists, and what waitid(WNOHANG | WNOWAIT) still could reap.
inline std::vector<std::string> child_processes() {
  std::vector<std::string> out;
  for (const pid_t pid : children()) out.push_back(fmt::format("child {}", pid));
  if (const pid_t reapable = reapable_child(); reapable != 0) out.push_back(fmt::format("reapable {}", reapable));
  return out;
}

/// What of the machine a test of persisted or named namespaces may change:
/// each a sorted list of lines, other test processes' names left out.
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

/// "gone: ...; new: ..." between two lists, for a failure message.
inline std::string difference(std::vector<std::string> before, std::vector<std::string> now) {
  std::sort(before.begin(), before.end());
  std::sort(now.begin(), now.end());
  std::vector<std::string> gone, added;
  std::set_difference(before.begin(), before.end(), now.begin(), now.end(), std::back_inserter(gone));
  std::set_difference(now.begin(), now.end(), before.begin(), before.end(), std::back_inserter(added));
  return fmt::format("gone: [{}]; new: [{}]", fmt::join(gone, ", "), fmt::join(added, ", "));
}

class Baseline {
 public:
  /// Records what `watch` names. With threads, a first thread is started
  /// and idle workers are retired before anything is counted (see
  /// thread_baseline()).
  explicit Baseline(Watch watch = Watch::everything) : watch_(watch) {
    if (watches(watch_, Watch::threads)) {
      threads_ = thread_baseline();
      tids_ = thread_ids();
    }
    if (watches(watch_, Watch::fds)) gonso::retire_idle_workers();
    if (watches(watch_, Watch::namespaces)) caller_ = snapshot();
    if (watches(watch_, Watch::worker_policy)) policy_ = gonso::worker_policy();
    if (watches(watch_, Watch::fds)) {
      fds_ = count_fds();
      fd_list_ = fd_list();
    }
    if (watches(watch_, Watch::children)) children_ = child_processes();
    if (watches(watch_, Watch::machine)) machine_ = machine_state();
  }

  [[nodiscard]] const Snapshot& caller() const { return caller_; }
  [[nodiscard]] std::size_t fds() const { return fds_; }
  [[nodiscard]] std::size_t threads() const { return threads_; }
  /// Threads alive now that were not when the baseline was taken.
  [[nodiscard]] std::size_t threads_started() const { return threads_started_since(tids_).size(); }
  /// Every thread started since the baseline has ended (allowing exit_bound
  /// for threads on their way out).
  [[nodiscard]] bool no_thread_left() const {
    return eventually([&] { return threads_started_since(tids_).empty(); }, exit_bound);
  }
  [[nodiscard]] const std::vector<std::string>& children() const { return children_; }

  /// Checks that everything recorded is as it was; idle workers are retired
  /// first (they hold fds and threads of their own).
  void check(Settle settle = {}) const {
    if (watches(watch_, Watch::namespaces)) {
      const Snapshot now = snapshot();
      INFO("the caller's namespaces were " << text(caller_) << "\nand are now " << text(now));
      CHECK(now == caller_);
      const std::vector<std::string> elsewhere = threads_outside(caller_);
      INFO("threads in other namespaces than the caller's: " << fmt::format("{}", fmt::join(elsewhere, "; ")));
      CHECK(elsewhere.empty());
    }
    if (watches(watch_, Watch::worker_policy)) {
      const gonso::WorkerPolicy now = gonso::worker_policy();
      CHECK(now.max_idle == policy_.max_idle);
      CHECK(now.idle_timeout == policy_.idle_timeout);
      CHECK(now.spin == policy_.spin);
    }
    if (watches(watch_, Watch::fds) || watches(watch_, Watch::threads)) gonso::retire_idle_workers();
    if (watches(watch_, Watch::fds)) {
      if (settle.fds) {
        (void)eventually([&] {
          gonso::retire_idle_workers();
          return count_fds() == fds_;
        });
      }
      const std::size_t now = count_fds();
      INFO("open fds were " << fd_list_ << "\nand are now " << fd_list());
      CHECK(now == fds_);
    }
    if (watches(watch_, Watch::threads)) {
      // Compared by tid: a thread of an earlier test that ends meanwhile is
      // no leak, and must not hide one.
      (void)no_thread_left();
      const std::set<pid_t> started = threads_started_since(tids_);
      INFO("threads were " << threads_ << ", started since and still there: "
                           << fmt::format("{}", fmt::join(started, ", ")) << "; now " << task_list());
      CHECK(started.empty());
    }
    if (watches(watch_, Watch::children)) {
      if (settle.children) (void)eventually([&] { return child_processes() == children_; });
      const std::vector<std::string> now = child_processes();
      INFO("child processes " << difference(children_, now));
      CHECK(now == children_);
    }
    if (watches(watch_, Watch::machine)) {
      const MachineState now = machine_state();
      INFO("mounts " << difference(machine_.mounts, now.mounts));
      CHECK(now.mounts == machine_.mounts);
      INFO("/run/netns " << difference(machine_.netns_files, now.netns_files));
      CHECK(now.netns_files == machine_.netns_files);
      INFO("ip netns list " << difference(machine_.ip_netns, now.ip_netns));
      CHECK(now.ip_netns == machine_.ip_netns);
      INFO("temporary folders " << difference(machine_.temp_folders, now.temp_folders));
      CHECK(now.temp_folders == machine_.temp_folders);
    }
  }

 private:
  static std::string task_list() {
    std::string out;
    std::error_code ec;
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
      std::string name = file_text(task.path() / "comm");
      if (!name.empty() && name.back() == '\n') name.pop_back();
      out += fmt::format("{} ({}); ", task.path().filename().string(), name);
    }
    return out;
  }

  Watch watch_;
  Snapshot caller_;
  gonso::WorkerPolicy policy_;
  std::size_t fds_ = 0;
  std::string fd_list_;
  std::size_t threads_ = 0;
  std::set<pid_t> tids_;
  std::vector<std::string> children_;
  MachineState machine_;
};

/// Runs `body` (the whole test, its RAII guards inside), then checks, also
/// when it failed, that what `watch` names is as before; rethrows what
/// `body` threw.
template <typename Body>
void leaves_as_found(Watch watch, Body&& body) {
  const Baseline base(watch);
  std::exception_ptr failure;
  try {
    body();
  } catch (...) {
    failure = std::current_exception();
  }
  base.check();
  if (failure) std::rethrow_exception(failure);
}

/// The mount table, /run/netns, `ip netns list` and the temporary directory
/// are as they were after `body`, also when it failed.
template <typename Body>
void leaves_machine_as_found(Body&& body) {
  leaves_as_found(Watch::machine, std::forward<Body>(body));
}

}  // namespace test

// For tests whose work runs on many threads at once: Problems, where threads
// other than the test's write what went wrong (Catch2 asserts only on the
// test's own thread), and the Monitor that scans the namespaces of every
// thread of the process while they run.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <gonso/set.hpp>

#include "kernel_view.hpp"

namespace test {

/// What went wrong, from any thread; the test's thread asserts on it. The
/// list is capped (one broken invariant repeats); count() is every one.
class Problems {
 public:
  /// Runs `body`, adding what it threw as a problem of `what`.
  template <typename Body>
  void guard(const std::string& what, Body&& body) noexcept {
    try {
      body();
    } catch (const std::exception& e) {
      add(what + ": " + e.what());
    } catch (...) {
      add(what + ": a non-std exception");
    }
  }
  void expect(bool ok, const std::string& what) {
    if (!ok) add(what);
  }
  void add(std::string what) {
    const std::lock_guard lock(mutex_);
    ++count_;
    if (list_.size() < 20) list_.push_back(std::move(what));
  }
  [[nodiscard]] std::vector<std::string> list() const {
    const std::lock_guard lock(mutex_);
    return list_;
  }
  [[nodiscard]] std::size_t count() const {
    const std::lock_guard lock(mutex_);
    return count_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::string> list_;
  std::size_t count_ = 0;
};

/// The namespaces a thread of this process is in, for each kind where it
/// differs from `own`; nullopt when the thread ended while being read.
inline std::optional<std::vector<gonso::Identity>> foreign_namespaces_of(const std::string& task, const Snapshot& own) {
  std::vector<gonso::Identity> out;
  for (const auto& [kind, id] : own) {
    struct stat st {};
    if (::stat(fmt::format("{}/ns/{}", task, link_of(kind)).c_str(), &st) != 0) return std::nullopt;
    const gonso::Identity seen{kind, st.st_dev, st.st_ino};
    if (seen != id) out.push_back(seen);
  }
  return out;
}

/// A set that several threads add to and look up.
template <typename T>
class SharedSet {
 public:
  void add(const T& value) {
    const std::lock_guard lock(mutex_);
    values_.insert(value);
  }
  [[nodiscard]] bool contains(const T& value) const {
    const std::lock_guard lock(mutex_);
    return values_.count(value) != 0;
  }

 private:
  mutable std::mutex mutex_;
  std::set<T> values_;
};

/// The namespaces the test made, which gonso's threads may be in while they
/// serve a run; any other foreign namespace on any thread is a leak.
class KnownNamespaces : public SharedSet<std::pair<dev_t, ino_t>> {
 public:
  void add(const Snapshot& expected) {
    for (const auto& [kind, id] : expected) SharedSet::add({id.device, id.inode});
  }
};

/// The threads that call gonso: none of them may ever change namespace.
using CallerThreads = SharedSet<pid_t>;

/// Scans /proc/self/task until stopped. A caller thread in any foreign
/// namespace is a failure at once. Other threads (gonso's) may be in the
/// namespaces of Sets: those the test made, and those gonso is making while
/// unshare or a pool refill is under way, which the test learns of only once
/// they are made; so the namespaces seen are kept, and checked at the end.
class Monitor {
 public:
  Monitor(const Snapshot& own, const CallerThreads& callers, Problems& failures)
      : thread_([&, this](const std::stop_token& stop) {
          while (!stop.stop_requested()) {
            scan(own, callers, failures);
            std::this_thread::sleep_for(std::chrono::microseconds(200));
          }
        }) {}
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;
  ~Monitor() = default;

  /// Stops scanning; returns the foreign namespaces gonso's threads were seen in.
  std::map<std::pair<dev_t, ino_t>, std::string> stop() {
    thread_ = {};
    return seen_;
  }
  /// Holds the scans off while the test's thread counts fds: a scan has a
  /// directory of /proc open.
  [[nodiscard]] std::unique_lock<std::mutex> hold() { return std::unique_lock(scanning_); }
  [[nodiscard]] std::size_t scans() const noexcept { return scans_; }
  [[nodiscard]] std::size_t foreign_seen() const noexcept { return foreign_seen_; }

 private:
  void scan(const Snapshot& own, const CallerThreads& callers, Problems& failures) {
    const std::lock_guard lock(scanning_);
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
      const auto foreign = foreign_namespaces_of(task.path().string(), own);
      if (!foreign || foreign->empty()) continue;
      ++foreign_seen_;
      const pid_t tid = std::stoi(task.path().filename().string());
      if (callers.contains(tid)) failures.add(fmt::format("caller thread {} is in {}", tid, foreign->front()));
      for (const gonso::Identity& id : *foreign) {
        seen_.try_emplace({id.device, id.inode}, fmt::format("thread {} in {}", tid, id));
      }
    }
    ++scans_;
  }

  std::mutex scanning_;
  std::atomic<std::size_t> scans_{0};
  std::atomic<std::size_t> foreign_seen_{0};
  std::map<std::pair<dev_t, ino_t>, std::string> seen_;  // the monitor thread's alone until stop()
  std::jthread thread_;
};

}  // namespace test

// The Pool tests' tools: a test after_create hook (Hook) that counts its
// calls, records where and when each ran, can hold one call or throw from
// chosen ones; what a callable inside a pooled Set sees (its namespaces,
// hostname, whether lo is up); and the patience a broken pool runs out of.
#pragma once

#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <gonso/set.hpp>

#include "kernel_view.hpp"

namespace test {

/// Long enough for any number of namespace creations on a loaded machine
/// under a sanitizer; only a broken pool waits this long.
inline constexpr auto patience = std::chrono::seconds(60);

/// Whether `lo` of the calling thread's network namespace is up; with
/// `bring_up`, sets it up first.
inline bool lo_is_up(bool bring_up = false) {
  const int sock = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) throw std::system_error(errno, std::generic_category(), "socket");
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, "lo", 3);
  int err = ::ioctl(sock, SIOCGIFFLAGS, &ifr) == 0 ? 0 : errno;
  if (err == 0 && bring_up) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    err = ::ioctl(sock, SIOCSIFFLAGS, &ifr) == 0 ? 0 : errno;
  }
  ::close(sock);
  if (err != 0) throw std::system_error(err, std::generic_category(), "flags of lo");
  return (ifr.ifr_flags & IFF_UP) != 0;
}

inline std::string hostname_here() {
  std::array<char, 65> name{};
  if (::gethostname(name.data(), name.size() - 1) != 0) throw std::system_error(errno, std::generic_category());
  return name.data();
}

/// What a callable run inside a Set sees.
struct Inside {
  Snapshot ns;
  std::string hostname;
  bool lo_up = false;
};
inline Inside look_inside(const gonso::Set& set) {
  return set.run(true, [] { return Inside{snapshot(), hostname_here(), lo_is_up()}; });
}

/// What a test Hook does.
struct HookOptions {
  int hold_call = 0;        ///< this call (1-based) waits in the hook until release()
  int fail_call = 0;        ///< this call throws std::runtime_error
  bool fail_after = false;  ///< ... and so does every later one
  std::string hostname{};   ///< set inside (only for pools of uts namespaces)
  bool lo_up = false;       ///< bring lo up inside
};

/// An after_create hook for tests: counts its calls, records the network
/// namespace each call ran in and when it started, can hold one call until
/// released, and can throw from chosen calls. Thread-safe, as a hook must be.
/// It must outlive the pool; release it (HookRelease) before the pool goes.
class Hook {
 public:
  explicit Hook(HookOptions options = {}) : options_(std::move(options)) {}

  /// The callable for PoolOptions::after_create.
  std::function<void()> fn() {
    return [this] { call(); };
  }

  /// Waits until `n` calls have started; false after `patience`.
  bool wait_calls(int n) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, patience, [&] { return calls_ >= n; });
  }
  void release() {
    {
      const std::lock_guard lock(mutex_);
      released_ = true;
    }
    changed_.notify_all();
  }
  int calls() {
    const std::lock_guard lock(mutex_);
    return calls_;
  }
  /// The network namespace of every call so far, by call.
  std::vector<gonso::Identity> nets() {
    const std::lock_guard lock(mutex_);
    return nets_;
  }
  /// When every call so far started, by call.
  std::vector<std::chrono::steady_clock::time_point> starts() {
    const std::lock_guard lock(mutex_);
    return starts_;
  }

 private:
  void call() {
    const auto start = std::chrono::steady_clock::now();
    const gonso::Identity net = thread_ns(gonso::Kind::net);
    if (!options_.hostname.empty() && ::sethostname(options_.hostname.data(), options_.hostname.size()) != 0) {
      throw std::system_error(errno, std::generic_category(), "sethostname");
    }
    if (options_.lo_up) (void)lo_is_up(true);
    std::unique_lock lock(mutex_);
    const int n = ++calls_;
    nets_.push_back(net);
    starts_.push_back(start);
    changed_.notify_all();
    if (n == options_.hold_call) changed_.wait(lock, [this] { return released_; });
    if (n == options_.fail_call || (options_.fail_after && options_.fail_call > 0 && n > options_.fail_call)) {
      throw std::runtime_error(fmt::format("hook failed on call {}", n));
    }
  }

  const HookOptions options_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int calls_ = 0;
  bool released_ = false;
  std::vector<gonso::Identity> nets_;
  std::vector<std::chrono::steady_clock::time_point> starts_;
};

/// Releases a held hook when the test leaves, also when it fails: declared
/// after the pool, it runs before the pool's destructor waits for the refill
/// thread sitting in the hook.
class HookRelease {
 public:
  explicit HookRelease(Hook& hook) : hook_(hook) {}
  HookRelease(const HookRelease&) = delete;
  HookRelease& operator=(const HookRelease&) = delete;
  ~HookRelease() { hook_.release(); }

 private:
  Hook& hook_;
};

}  // namespace test

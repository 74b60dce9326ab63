// Fault injection: where the next run lands after a fault, too few fds on
// purpose (FdLimit) and the sweep that tries a call with room for 0, 1, 2...
// more fds, and signal dispositions an application may set.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <system_error>

#include <catch2/catch.hpp>

#include <gonso/executor.hpp>
#include <gonso/workers.hpp>

#include "baseline.hpp"
#include "kernel_view.hpp"
#include "privilege.hpp"

namespace test {

inline void check_errno(int rc, const char* what) {
  if (rc != 0) throw std::system_error(errno, std::generic_category(), what);
}

/// Where the next run lands and what it sees.
struct Landing {
  pid_t tid = -1;
  bool inside = false;
  bool privileged = false;
};
inline Landing land(const gonso::Set& set) {
  return set.run(true, [&] { return Landing{tid(), inside(set), has_cap_sys_admin()}; });
}
inline Landing land(const gonso::Executor& ex) {
  return ex.run([&] { return Landing{tid(), inside(ex.set()), has_cap_sys_admin()}; });
}

/// RLIMIT_NOFILE's soft limit set to leave `room` fd numbers above the
/// highest fd open now; the old limit is back when destroyed.
class FdLimit {
 public:
  explicit FdLimit(int room) {
    check_errno(::getrlimit(RLIMIT_NOFILE, &old_), "getrlimit");
    std::set<int> open;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
      open.insert(std::stoi(e.path().filename().string()));
    }
    // The smallest limit below which exactly `room` fd numbers are free (the
    // kernel hands out the lowest free one); fds above it stay usable.
    int limit = 0;
    for (int free = 0;; ++limit) {
      if (open.count(limit) != 0 && ::fcntl(limit, F_GETFD) != -1) continue;  // the listing's own fd is closed now
      if (free == room) break;
      ++free;
    }
    rlimit limited = old_;
    limited.rlim_cur = static_cast<rlim_t>(limit);
    check_errno(::setrlimit(RLIMIT_NOFILE, &limited), "setrlimit");
  }
  FdLimit(const FdLimit&) = delete;
  FdLimit& operator=(const FdLimit&) = delete;
  ~FdLimit() { ::setrlimit(RLIMIT_NOFILE, &old_); }

 private:
  rlimit old_{};
};

struct SweepCounts {
  int emfile = 0;
  int succeeded = 0;
};

/// Calls `make` with room for k = 0, 1, 2, ... more fds until it has
/// succeeded `wanted` times in a row. Every call either succeeds, and what
/// it made works (`works`, called with the limit lifted), or throws
/// std::system_error(EMFILE) naming what it could not do; either way, once
/// what it made is gone, the process is as before.
template <typename Make, typename Works>
SweepCounts sweep(const std::string& what, Make&& make, Works&& works, int wanted = 2) {
  SweepCounts counts;
  const Baseline base(Watch::process);
  int in_a_row = 0;
  for (int room = 0; room < 96 && in_a_row < wanted; ++room) {
    INFO(what << " with room for " << room << " more fds");
    gonso::retire_idle_workers();  // every run starts workers and the anchor anew
    std::optional<decltype(make())> made;
    std::optional<std::system_error> error;
    {
      const FdLimit limit(room);
      try {
        made.emplace(make());
      } catch (const std::system_error& e) {
        error = e;
      }
    }
    if (made) {
      CHECK(works(*made));
      made.reset();
      ++counts.succeeded;
      ++in_a_row;
    } else {
      INFO(error->what());
      CHECK(error->code() == std::errc::too_many_files_open);
      CHECK_THAT(error->what(), Catch::Contains("cannot"));
      ++counts.emfile;
      in_a_row = 0;
    }
    base.check();
  }
  INFO(what);
  CHECK(counts.emfile > 0);
  CHECK(in_a_row == wanted);
  return counts;
}

/// A disposition of `sig` for the lifetime of the object.
class SignalDisposition {
 public:
  SignalDisposition(int sig, void (*handler)(int), int flags) : sig_(sig) {
    struct sigaction action {};
    action.sa_handler = handler;
    action.sa_flags = flags;
    ::sigemptyset(&action.sa_mask);
    check_errno(::sigaction(sig, &action, &old_), "sigaction");
  }
  SignalDisposition(const SignalDisposition&) = delete;
  SignalDisposition& operator=(const SignalDisposition&) = delete;
  // Ignored for a moment first: that discards an instance still pending
  // (on a thread that had it blocked when a storm's last one came), which
  // the old disposition, if it is the default, would make fatal later.
  ~SignalDisposition() {
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    ::sigemptyset(&ignore.sa_mask);
    ::sigaction(sig_, &ignore, nullptr);
    ::sigaction(sig_, &old_, nullptr);
  }

 private:
  int sig_;
  struct sigaction old_ {};
};

}  // namespace test

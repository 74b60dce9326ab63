// Expected errors. A table of bad inputs (Case) that check_cases() calls one
// by one: each must throw the documented type, errno and a message naming
// what was being done, and change and leak nothing (the one Baseline, after
// every case). Also the error a single call throws, and inputs that are bad
// by construction: dead pids, names that no folder may have.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <gonso/persist.hpp>

#include "baseline.hpp"

namespace test {

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

/// The errno that `fn` failed with and its message: 0 when it did not
/// throw, -1 when it threw something else than std::system_error.
template <typename Fn>
std::pair<int, std::string> errno_and_message_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::system_error& e) {
    return {e.code().value(), e.what()};
  } catch (const std::exception& e) {
    return {-1, e.what()};
  }
  return {0, "succeeded"};
}

enum class Expect { invalid_argument, logic_error, system_error };

/// One bad input: the call, what it must throw, and what must be true after.
struct Case {
  std::string what;
  std::function<void()> call;
  Expect expect;
  std::errc code{};              // for system_error
  std::string message_part{};    // must appear in what()
  std::function<void()> then{};  // further checks that nothing was made or changed
};

inline Case invalid(std::string what, std::function<void()> call, std::string part, std::function<void()> then = {}) {
  return {std::move(what), std::move(call), Expect::invalid_argument, {}, std::move(part), std::move(then)};
}
inline Case logic(std::string what, std::function<void()> call, std::string part, std::function<void()> then = {}) {
  return {std::move(what), std::move(call), Expect::logic_error, {}, std::move(part), std::move(then)};
}
inline Case refused(std::string what, std::function<void()> call, std::errc code, std::string part,
                    std::function<void()> then = {}) {
  return {std::move(what), std::move(call), Expect::system_error, code, std::move(part), std::move(then)};
}

/// Calls every case, checks its exception, then that the caller's
/// namespaces, threads, worker policy, fds and children are as they were
/// before the first case, at once: no child and no zombie left to reap.
inline void check_cases(const std::vector<Case>& cases) {
  const Baseline base(Watch::process | Watch::worker_policy);
  REQUIRE(reapable_child() == 0);
  for (const Case& c : cases) {
    INFO(c.what);
    std::string message;
    try {
      c.call();
      FAIL_CHECK("no exception");
    } catch (const std::system_error& e) {
      CHECK(c.expect == Expect::system_error);
      CHECK(e.code() == c.code);
      message = e.what();
    } catch (const std::invalid_argument& e) {
      CHECK(c.expect == Expect::invalid_argument);
      message = e.what();
    } catch (const std::logic_error& e) {
      CHECK(c.expect == Expect::logic_error);
      message = e.what();
    }
    INFO(message);
    CHECK_THAT(message, Catch::Contains(c.message_part));
    if (c.then) c.then();
    // Nothing changed, nothing leaked, and nothing to wait for.
    base.check({.children = false});
  }
}

/// A child that exits at once; not reaped. Output is flushed first, so that
/// no copy of a buffer is written twice (ThreadSanitizer's _exit flushes).
inline pid_t exiting_child() {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  return pid;
}

/// The pid of a child that exited and was reaped.
inline pid_t reaped_pid() {
  const pid_t gone = exiting_child();
  ::waitpid(gone, nullptr, 0);
  return gone;
}

/// The names netns and /etc/netns refuse, and the words that say why.
inline std::vector<std::pair<std::string, std::string>> bad_names() {
  return {
      {"", "it is empty"},
      {".", "it names a folder"},
      {"..", "it names a folder"},
      {"a/b", "it holds a '/'"},
      {"../../etc", "it holds a '/'"},
      {std::string("blue\0red", 8), "it holds a NUL"},
      {std::string(300, 'n'), "longer than 255 bytes"},
  };
}

/// A file or folder that must not exist after the case.
inline std::function<void()> absent(std::filesystem::path path) {
  return [path = std::move(path)] {
    std::error_code ec;
    CHECK_FALSE(std::filesystem::exists(std::filesystem::symlink_status(path, ec)));
  };
}

/// Unpersists `file` when destroyed, if it is still persisted.
struct Unpersist {
  explicit Unpersist(std::filesystem::path f) : file(std::move(f)) {}
  Unpersist(const Unpersist&) = delete;
  Unpersist& operator=(const Unpersist&) = delete;
  ~Unpersist() {
    try {
      gonso::unpersist(file);
    } catch (...) {
    }
  }
  std::filesystem::path file;
};

}  // namespace test

// Programs spawned with gonso::spawn in tests: run to the end with their
// output, the error a spawn gave, and the wait (bounded, never reaping) for
// one to end. ExitStatus prints as gonso formats it in failed comparisons.
#pragma once

#include <poll.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <gonso/child.hpp>
#include <gonso/spawn.hpp>

namespace Catch {
template <>
struct StringMaker<gonso::ExitStatus> {
  static std::string convert(const gonso::ExitStatus& status) { return fmt::format("{}", status); }
};
}  // namespace Catch

namespace test {

struct Ran {
  gonso::ExitStatus status;
  std::string out;
};

/// Runs to the end with stdout on a pipe; stdin and stderr as given.
inline Ran run(const gonso::Set& set, const std::vector<std::string>& argv, gonso::SpawnOptions options = {}) {
  options.out = gonso::Stdio::pipe;
  gonso::Child child = gonso::spawn(set, argv, options);
  std::string out = child.read_stdout();
  const gonso::ExitStatus status = child.wait();
  return {status, std::move(out)};
}

inline std::string chomp(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

/// What the program printed, its last newlines cut; checks that it succeeded.
inline std::string output_of(const gonso::Set& set, const std::vector<std::string>& argv,
                             gonso::SpawnOptions options = {}) {
  const Ran ran = run(set, argv, std::move(options));
  INFO(fmt::format("{} {}", argv[0], ran.status));
  CHECK(ran.status.success());
  return chomp(ran.out);
}

/// Waits (bounded) until the pidfd says the process has ended, without reaping.
inline bool ended(const gonso::Child& child, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  pollfd p{child.pidfd(), POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(limit.count())) == 1;
}

/// The exception spawn() threw, or a failure.
inline std::system_error spawn_error(const gonso::Set& set, const std::vector<std::string>& argv,
                                     const gonso::SpawnOptions& options = {}) {
  try {
    gonso::Child child = gonso::spawn(set, argv, options);
    child.kill();
  } catch (const std::system_error& e) {
    return e;
  }
  FAIL("spawn of " << argv[0] << " did not fail");
  throw std::logic_error("not reached");
}

}  // namespace test

// The one polling helper of the tests: the kernel releases an ended thread,
// a reaped process or a closed namespace a moment after the call that ended
// it, so a test waits for such a condition within a bound, never for a time.
#pragma once

#include <chrono>
#include <thread>

namespace test {

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

}  // namespace test

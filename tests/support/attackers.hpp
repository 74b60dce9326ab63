// An attacker for race tests: a thread that keeps swapping a name for a
// symlink while gonso works on it, so that a check of gonso's that is not
// done through an fd it holds shows up as a mount or a file in the wrong place.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

namespace test {

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

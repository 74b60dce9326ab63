// Races on persisted namespaces: whoever can write the folder swaps names
// for symlinks while persist() and unpersist() work; no symlink's target ever
// gets a mount or loses one. Namespaces are checked against stat(2) of the files, NS_GET_ID
// asked here with ioctl(2), /proc and the real tools, never against gonso
// alone. Every case leaves the mount table and the temporary directory as it
// found them.
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "support/attackers.hpp"
#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/ns_files.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/persist.hpp>
#include <gonso/spawn.hpp>

using gonso::Kind;
using gonso::Set;
using test::link_text;
using test::nsfs_mounts_under;
using test::Raw;
using test::raw_of_fd;
using test::raw_of_file;
using test::same_file;
using test::stat_of;

// ---------------------------------------------------------------------------
// Races: whoever can write the folder swaps names for symlinks while gonso
// works. gonso acts only on what it created or checked, through fds, so a
// symlink's target never gets a mount and nothing of gonso's is left.

namespace {

constexpr int race_tries = 2000;

// The victim a symlink leads to: a regular file with known content.
struct Victim {
  explicit Victim(std::filesystem::path p) : path(std::move(p)) {
    std::ofstream(path) << "precious";
    before = stat_of(path);
  }
  // Never a mount, the same inode, the same content: as the kernel sees it.
  [[nodiscard]] bool untouched() const {
    return test::mounts_at(path.string()) == 0 && !test::is_nsfs(path) && same_file(stat_of(path), before) &&
           test::file_text(path) == "precious";
  }
  std::filesystem::path path;
  Raw before{};
};

}  // namespace

TEST_CASE("persist() races: a symlink swapped in for the file being made never gets the mount",
          "[persist][privileged][race]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    const Victim victim(fs.path() / "victim");
    const Set net = Set::current(Kind::net).unshare(Kind::net);
    const Raw net_raw = raw_of_fd(net.fd(Kind::net));
    const auto file = fs.path() / "ns";
    int bound = 0;
    int touched_at = -1;
    std::size_t swaps = 0;
    {
      test::SymlinkSwapper attacker(fs.path(), "ns", victim.path);
      for (int i = 0; i < race_tries && touched_at < 0; ++i) {
        try {
          gonso::persist(net, Kind::net, file);
        } catch (const std::system_error&) {
          // EEXIST (the symlink was there) or ENOENT (the new file was
          // renamed over before the mount): refused, nothing bound.
        }
        if (test::is_nsfs(victim.path)) touched_at = i;
        // A mount point's name cannot be renamed over or removed: still ours.
        if (test::nsfs_mounts_at(file.string()) == std::vector<std::string>{link_text(Kind::net, net_raw)}) {
          ++bound;
          CHECK(same_file(stat_of(file), net_raw));
          gonso::unpersist(file);
        }
      }
      swaps = attacker.stop();
    }
    INFO(fmt::format("{} binds and {} swaps in {} tries; the victim was mounted at try {}", bound, swaps, race_tries,
                     touched_at));
    CHECK(touched_at == -1);
    CHECK(victim.untouched());
    CHECK(bound > 0);
    CHECK(swaps > 0);
    CHECK(nsfs_mounts_under(fs.path()).empty());
    ::unlink(file.c_str());  // a symlink the attacker may have left
  });
}

TEST_CASE("persist() races: a folder on the path swapped for a symlink leads the mount onto no existing file",
          "[persist][privileged][race]") {
  // Folders on the way to the file are the caller's to choose and followed
  // as symlinks; the file is always a new one, so the worst a swap does is
  // send it to another folder, never onto something that exists.
  test::require_privilege();
  test::leaves_machine_as_found([] {
    namespace fs = std::filesystem;
    const test::PrivateTmpfs tmp;
    fs::create_directory(tmp.path() / "sub");
    fs::create_directory(tmp.path() / "elsewhere");
    const Victim victim(tmp.path() / "elsewhere" / "ns");
    fs::create_directory_symlink(tmp.path() / "elsewhere", tmp.path() / "sub.other");
    const Set net = Set::current(Kind::net).unshare(Kind::net);
    const auto file = tmp.path() / "sub" / "ns";
    std::atomic<bool> stop{false};
    std::atomic<std::size_t> swaps{0};
    std::thread attacker([&] {
      while (!stop) {
        if (::renameat2(AT_FDCWD, (tmp.path() / "sub").c_str(), AT_FDCWD, (tmp.path() / "sub.other").c_str(),
                        RENAME_EXCHANGE) == 0) {
          ++swaps;
        }
        std::this_thread::yield();
      }
    });
    int bound = 0;
    int touched_at = -1;
    // Until both sides of the swap were seen, at most ten times as long.
    int refused = 0;
    for (int i = 0; (i < race_tries || bound == 0 || refused == 0) && i < 10 * race_tries && touched_at < 0; ++i) {
      bool made = false;
      try {
        gonso::persist(net, Kind::net, file);
        made = true;
      } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::file_exists);  // it was sent to the victim's folder
        ++refused;
      }
      if (test::is_nsfs(victim.path) || test::mounts_at(victim.path.string()) != 0) touched_at = i;
      if (made) {
        ++bound;
        // Through whichever name the real folder has now; the victim's
        // folder has no persisted namespace to remove (EINVAL).
        bool gone = false;
        for (int tries = 0; tries < 10000 && !gone; ++tries) {
          try {
            gonso::unpersist(file);
            gone = true;
          } catch (const std::system_error& e) {
            CHECK(e.code() == std::errc::invalid_argument);
          }
        }
        CHECK(gone);
      }
    }
    stop = true;
    attacker.join();
    INFO(fmt::format("{} binds and {} swaps in {} tries; the victim was mounted at try {}", bound, swaps.load(),
                     race_tries, touched_at));
    CHECK(touched_at == -1);
    CHECK(victim.untouched());
    CHECK(bound > 0);
    CHECK(swaps > 0);
    CHECK(nsfs_mounts_under(tmp.path()).empty());
    const auto real = fs::is_symlink(tmp.path() / "sub") ? tmp.path() / "sub.other" : tmp.path() / "sub";
    CHECK_FALSE(fs::exists(real / "ns"));  // every file gonso made was removed again
  });
}

TEST_CASE("unpersist() races: a symlink to another persisted namespace swapped in is never unmounted",
          "[persist][privileged][race]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    const auto keep = fs.path() / "keep";
    const Set kept = Set::current(Kind::net).unshare(Kind::net);
    gonso::persist(kept, Kind::net, keep);
    const Raw kept_raw = raw_of_file(keep);
    const Set net = Set::current(Kind::net).unshare(Kind::net);
    const auto file = fs.path() / "ns";
    int removed = 0;
    int lost_at = -1;
    std::size_t swaps = 0;
    {
      test::SymlinkSwapper attacker(fs.path(), "ns", keep);
      for (int i = 0; i < race_tries && lost_at < 0; ++i) {
        try {
          gonso::persist(net, Kind::net, file);
        } catch (const std::system_error&) {
        }
        try {
          gonso::unpersist(file);
          ++removed;
        } catch (const std::system_error& e) {
          // The symlink (EINVAL: not followed, so no persisted namespace), or nothing there.
          CHECK((e.code() == std::errc::invalid_argument || e.code() == std::errc::no_such_file_or_directory));
        }
        if (test::nsfs_mounts_at(keep.string()) != std::vector<std::string>{link_text(Kind::net, kept_raw)}) {
          lost_at = i;
        }
      }
      swaps = attacker.stop();
    }
    INFO(fmt::format("{} removals and {} swaps in {} tries; keep lost at try {}", removed, swaps, race_tries, lost_at));
    CHECK(lost_at == -1);
    CHECK(raw_of_file(keep) == kept_raw);
    CHECK(removed > 0);
    CHECK(swaps > 0);
    if (test::is_nsfs(file) && !std::filesystem::is_symlink(file)) gonso::unpersist(file);
    ::unlink(file.c_str());
    gonso::unpersist(keep);
    CHECK(nsfs_mounts_under(fs.path()).empty());
  });
}

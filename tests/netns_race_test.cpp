// Races on /run/netns, in a child's own mount namespace with a tmpfs on /run
// (the machine's /run/netns is never touched): an attacker thread swaps the
// name, or /run/netns itself, for symlinks to /run/elsewhere while gonso
// adds and removes names. Nothing there ever gets a mount or an entry.
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/attackers.hpp"
#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/netns.hpp>
#include <gonso/persist.hpp>
#include <gonso/spawn.hpp>

using gonso::Kind;
using gonso::Set;

namespace {

const std::string run_netns = gonso::netns::directory;  // NOLINT(cert-err58-cpp): a test file's constant

struct RunNetnsRace {
  bool setup_failed = false;
  int name_bound = 0, name_touched_at = -1, name_last_errno = 0;
  int dir_added = 0, dir_refused = 0, dir_other_errno = 0, dir_touched_at = -1;
  std::size_t name_swaps = 0, dir_swaps = 0;
  bool elsewhere_clean = false;
  bool no_nsfs_left = false;
};

// /run/elsewhere: no mount on or under it, and only the victim in it, as it was.
bool elsewhere_untouched() {
  for (const test::MountEntry& m : test::mounts()) {
    if (m.point.rfind("/run/elsewhere", 0) == 0) return false;
  }
  return test::netns_entries().size() < 1000 && test::file_text("/run/elsewhere/victim") == "precious" &&
         !test::is_nsfs("/run/elsewhere/victim") &&
         std::distance(std::filesystem::directory_iterator("/run/elsewhere"), std::filesystem::directory_iterator()) ==
             1;
}

RunNetnsRace race_run_netns(int tries) {
  namespace fs = std::filesystem;
  RunNetnsRace r;
  if (::mount("gonso-test", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m") != 0) {
    r.setup_failed = true;
    return r;
  }
  fs::create_directories("/run/elsewhere");
  std::ofstream("/run/elsewhere/victim") << "precious";
  const Set net = Set::current(Kind::net);

  // 1. The name swapped for a symlink to the victim.
  fs::create_directories(run_netns);
  {
    test::SymlinkSwapper attacker(run_netns, "x", "/run/elsewhere/victim");
    for (int i = 0; (i < tries || r.name_bound == 0) && i < 10 * tries && r.name_touched_at < 0; ++i) {
      try {
        gonso::netns::add(net, "x");
      } catch (const std::system_error& e) {
        r.name_last_errno = e.code().value();
      }
      if (!test::nsfs_mounts_at(run_netns + "/x").empty()) {
        ++r.name_bound;
        gonso::netns::remove("x");
      }
      if (!elsewhere_untouched()) r.name_touched_at = i;
    }
    r.name_swaps = attacker.stop();
  }
  ::unlink((run_netns + "/x").c_str());

  // 2. /run/netns itself exchanged with a symlink to /run/elsewhere, while
  // it is a plain folder (once a mount point, it cannot be renamed).
  while (::umount2(run_netns.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0) {
  }
  fs::create_directory_symlink("/run/elsewhere", "/run/decoy");
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> swaps{0};
  std::thread attacker([&] {
    while (!stop) {
      if (::renameat2(AT_FDCWD, "/run/netns", AT_FDCWD, "/run/decoy", RENAME_EXCHANGE) == 0) ++swaps;
      std::this_thread::yield();
    }
  });
  for (int i = 0; (i < tries || r.dir_added == 0) && i < 10 * tries && r.dir_touched_at < 0; ++i) {
    try {
      gonso::netns::add(net, "y");
      ++r.dir_added;
    } catch (const std::system_error& e) {
      if (e.code() == std::errc::not_a_directory) {
        ++r.dir_refused;
      } else {
        r.dir_other_errno = e.code().value();
      }
    }
    // gonso made the name in the folder it opened and self-bound, whatever
    // that folder is called by now (the swap may have renamed it /run/decoy
    // just after): undone there, self-bind included. A mount point cannot
    // be renamed, so the names hold still until then.
    for (const std::string dir : {"/run/netns", "/run/decoy"}) {
      if (fs::is_symlink(dir)) continue;
      if (test::is_nsfs(dir + "/y")) gonso::unpersist(dir + "/y");
      if (test::is_mount_point_here(dir)) ::umount2(dir.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW);
    }
    if (!elsewhere_untouched()) r.dir_touched_at = i;
  }
  stop = true;
  attacker.join();
  r.dir_swaps = swaps;
  r.elsewhere_clean = elsewhere_untouched();
  r.no_nsfs_left = true;
  for (const test::MountEntry& m : test::mounts()) {
    if (m.fstype == "nsfs" && m.point.rfind("/run/", 0) == 0) r.no_nsfs_left = false;
  }
  return r;
}

}  // namespace

TEST_CASE("netns races: names and /run/netns swapped for symlinks lead gonso nowhere else",
          "[netns][privileged][process][race]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const Set box = Set::current().unshare(Kind::mnt);
    const RunNetnsRace r = box.run_in_process([] { return race_run_netns(2000); });
    REQUIRE_FALSE(r.setup_failed);
    INFO(fmt::format(
        "name: {} bound, {} swaps, touched at {}, last errno {}; /run/netns: {} added, {} refused, {} swaps, "
        "touched at {}, other errno {}",
        r.name_bound, r.name_swaps, r.name_touched_at, r.name_last_errno, r.dir_added, r.dir_refused, r.dir_swaps,
        r.dir_touched_at, r.dir_other_errno));
    CHECK(r.name_touched_at == -1);
    CHECK(r.dir_touched_at == -1);
    CHECK(r.dir_other_errno == 0);
    CHECK(r.elsewhere_clean);
    CHECK(r.no_nsfs_left);
    CHECK(r.name_bound > 0);
    CHECK(r.name_swaps > 0);
    CHECK(r.dir_added > 0);
    CHECK(r.dir_swaps > 0);
  });
}

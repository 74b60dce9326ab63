// Security: names of network namespaces stay in /run/netns, even through
// symlinks planted there (by gonso's side and iproute2's).
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <gonso/child.hpp>
#include <gonso/executor.hpp>
#include <gonso/netns.hpp>
#include <gonso/persist.hpp>
#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>
#include <gonso/workers.hpp>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

// ---------------------------------------------------------------------------
// Names of network namespaces stay in /run/netns.

TEST_CASE("security: network namespace names cannot escape /run/netns", "[security]") {
  test::leaves_machine_as_found([] {
    const gonso::Set here = gonso::Set::current(gonso::Kind::net);
    std::size_t refused = 0;
    const std::vector<std::string> names = {"..",
                                            ".",
                                            "",
                                            "../etc",
                                            "a/b",
                                            "/etc/passwd",
                                            "/run/netns/x",
                                            "x/..",
                                            std::string("a\0b", 3),
                                            std::string(256, 'n')};
    for (const std::string& bad : names) {
      INFO("name " << bad);
      CHECK_THROWS_AS(gonso::netns::path(bad), std::invalid_argument);
      CHECK_THROWS_AS(gonso::netns::check_name(bad), std::invalid_argument);
      CHECK_THROWS_AS((void)gonso::netns::create(bad), std::invalid_argument);
      CHECK_THROWS_AS(gonso::netns::add(here, bad), std::invalid_argument);
      CHECK_THROWS_AS((void)gonso::netns::open(bad), std::invalid_argument);
      CHECK_THROWS_AS(gonso::netns::remove(bad), std::invalid_argument);
      refused += 6;
    }
    CHECK(refused == 60);
  });
}

namespace {

/// What gonso and `ip netns` did with symlinks planted in /run/netns, seen
/// in a mount namespace of a child's own with a tmpfs on /run.
struct SymlinkFindings {
  int add_over_file_link = 0;            ///< errno of add() on a link to a file elsewhere
  int create_over_file_link = 0;         ///< errno of create() on it
  int remove_file_link = 0;              ///< errno of remove() on it
  bool file_untouched = false;           ///< the file: not a mount, same content, still linked to
  int add_over_dir_link = 0;             ///< errno of add() on a link to a folder elsewhere
  int remove_dir_link = 0;               ///< errno of remove() on it
  bool dir_untouched = false;            ///< the folder: not a mount, still empty
  int remove_ns_link = 0;                ///< errno of remove() on a link to a persisted namespace elsewhere
  int unpersist_ns_link = 0;             ///< errno of unpersist() on that link
  bool ns_untouched = false;             ///< that namespace file: still a mount of nsfs
  bool gonso_followed_dir_link = false;  ///< /run/netns a link: gonso's name landed in its target
  bool ip_followed_dir_link = false;     ///< same with `ip netns add`
  bool gonso_mounted_target = false;     ///< the target of the /run/netns link became a mount
  bool ip_mounted_target = false;
  int add_through_dir_link = 0;     ///< errno of add() with /run/netns a link
  int remove_through_dir_link = 0;  ///< errno of remove() of a name persisted in the link's target
};

SymlinkFindings plant_symlinks() {
  namespace fs = std::filesystem;
  SymlinkFindings f;
  if (::mount("gonso-test", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m") != 0) {
    throw std::system_error(errno, std::generic_category(), "mount tmpfs on /run");
  }
  fs::create_directories("/run/netns");
  fs::create_directories("/run/elsewhere/dir");
  std::ofstream("/run/elsewhere/file") << "precious";
  const gonso::Set net = gonso::Set::current(gonso::Kind::net).unshare(gonso::Kind::net);

  fs::create_symlink("/run/elsewhere/file", "/run/netns/file");
  f.add_over_file_link = test::errno_and_message_of([&] { gonso::netns::add(net, "file"); }).first;
  f.create_over_file_link = test::errno_and_message_of([&] { (void)gonso::netns::create("file"); }).first;
  f.remove_file_link = test::errno_and_message_of([&] { gonso::netns::remove("file"); }).first;
  f.file_untouched = !test::is_mount_point_here("/run/elsewhere/file") && !test::is_nsfs("/run/elsewhere/file") &&
                     test::file_text("/run/elsewhere/file") == "precious" && fs::is_symlink("/run/netns/file");

  fs::create_symlink("/run/elsewhere/dir", "/run/netns/dir");
  f.add_over_dir_link = test::errno_and_message_of([&] { gonso::netns::add(net, "dir"); }).first;
  f.remove_dir_link = test::errno_and_message_of([&] { gonso::netns::remove("dir"); }).first;
  f.dir_untouched = !test::is_mount_point_here("/run/elsewhere/dir") && fs::is_empty("/run/elsewhere/dir") &&
                    fs::is_symlink("/run/netns/dir");

  gonso::persist(net, gonso::Kind::net, "/run/elsewhere/ns");
  fs::create_symlink("/run/elsewhere/ns", "/run/netns/ns");
  f.remove_ns_link = test::errno_and_message_of([&] { gonso::netns::remove("ns"); }).first;
  f.unpersist_ns_link = test::errno_and_message_of([&] { gonso::unpersist("/run/netns/ns"); }).first;
  f.ns_untouched = test::is_nsfs("/run/elsewhere/ns") && test::is_mount_point_here("/run/elsewhere/ns") &&
                   fs::is_symlink("/run/netns/ns");

  // /run/netns itself a symlink to a folder elsewhere: gonso, then ip.
  for (const bool ip : {false, true}) {
    const std::string target = ip ? "/run/ip-target" : "/run/gonso-target";
    ::umount2("/run/netns", MNT_DETACH | UMOUNT_NOFOLLOW);  // gonso made it a mount of its own
    fs::remove_all("/run/netns");
    fs::create_directories(target);
    fs::create_symlink(target, "/run/netns");
    if (ip) {
      if (!test::run_tool("ip netns add linked 2>&1").ok()) throw std::runtime_error("ip netns add failed");
    } else {
      f.add_through_dir_link = test::errno_and_message_of([&] { gonso::netns::add(net, "linked"); }).first;
    }
    (ip ? f.ip_followed_dir_link : f.gonso_followed_dir_link) = test::is_nsfs((target + "/linked").c_str());
    (ip ? f.ip_mounted_target : f.gonso_mounted_target) = test::is_mount_point_here(target);
  }
  // What ip persisted in the link's target is not removed through the link.
  f.remove_through_dir_link = test::errno_and_message_of([&] { gonso::netns::remove("linked"); }).first;
  f.ns_untouched = f.ns_untouched && test::is_nsfs("/run/ip-target/linked");
  return f;
}

}  // namespace

TEST_CASE("security: symlinks planted in /run/netns lead gonso nowhere else", "[security][privileged][process]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    // Everything happens in a mount namespace of a child's own, with a tmpfs
    // on /run: the machine's /run/netns is never touched.
    const gonso::Set box = gonso::Set::current().unshare(gonso::Kind::mnt);
    const SymlinkFindings f = box.run_in_process([] { return plant_symlinks(); });
    // O_CREAT|O_EXCL never follows a symlink: the name is taken.
    CHECK(f.add_over_file_link == EEXIST);
    CHECK(f.create_over_file_link == EEXIST);
    CHECK(f.add_over_dir_link == EEXIST);
    // What the link leads to is not a persisted namespace: refused.
    CHECK(f.remove_file_link == EINVAL);
    CHECK(f.remove_dir_link == EINVAL);
    CHECK(f.file_untouched);
    CHECK(f.dir_untouched);
    // A link to a real persisted namespace: opened with O_NOFOLLOW, it is the
    // link itself, on tmpfs, which is no persisted namespace: EINVAL, and the
    // namespace elsewhere stays bound.
    CHECK(f.remove_ns_link == EINVAL);
    CHECK(f.unpersist_ns_link == EINVAL);
    CHECK(f.ns_untouched);
    // /run/netns itself a link (only root can make one in /run): iproute2's
    // `ip netns add` follows it; gonso owns that path and follows no
    // component of it, so it refuses, and the link's target gets nothing.
    CHECK(f.add_through_dir_link == ENOTDIR);
    CHECK(f.remove_through_dir_link == ENOTDIR);
    CHECK_FALSE(f.gonso_followed_dir_link);
    CHECK_FALSE(f.gonso_mounted_target);
    WARN("/run/netns a symlink: ip's name landed in its target: "
         << f.ip_followed_dir_link << "; the target made a mount by ip: " << f.ip_mounted_target);
  });
}

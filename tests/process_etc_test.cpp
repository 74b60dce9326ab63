// run_in_process with /etc/netns/NAME bound over /etc as `ip netns exec` does,
// following no symlink in /etc/netns/NAME, and covering an /etc file that is a
// symlink where it leads. Identities are read inside with stat(2) of
// /proc/self/ns/* (a process's own links), never through gonso.
#include <grp.h>
#include <linux/nsfs.h>
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>

using gonso::Kind;
using gonso::Set;

TEST_CASE("run_in_process binds /etc/netns/NAME over /etc when asked", "[privileged][process][netns]") {
  test::require_privilege();
  const std::string name = fmt::format("gonso-etc-run-{}", ::getpid());
  const test::EtcNetnsFiles etc(name, {{"hosts", "192.0.2.1 inside\n"}});
  const std::string host_hosts = test::file_text("/etc/hosts");
  const Set net = Set::current().unshare(Kind::net);
  gonso::ProcessOptions options;
  options.etc_of_netns = name;
  CHECK(net.run_in_process([] { return test::file_text("/etc/hosts"); }, options) == "192.0.2.1 inside\n");
  CHECK(net.run_in_process([] { return test::file_text("/etc/hosts"); }) == host_hosts);
  CHECK(test::file_text("/etc/hosts") == host_hosts);
  options.etc_of_netns = "..";
  CHECK_THROWS_AS(net.run_in_process([] {}, options), std::invalid_argument);
}

TEST_CASE("run_in_process follows no symlink in /etc/netns/NAME: the overlay is refused, the link's target not bound",
          "[privileged][process][netns]") {
  test::require_privilege();
  namespace fs = std::filesystem;
  const test::TempDir elsewhere;
  std::ofstream(elsewhere.path() / "hosts") << "192.0.2.66 from elsewhere\n";
  const std::string host_hosts = test::file_text("/etc/hosts");
  const Set net = Set::current().unshare(Kind::net);
  gonso::ProcessOptions options;
  // 1. An entry that is a symlink: iproute2 would bind what it leads to.
  const std::string name = fmt::format("gonso-etc-link-{}", ::getpid());
  const test::EtcNetnsFiles etc(name, {});
  fs::create_symlink(elsewhere.path() / "hosts", fs::path("/etc/netns") / name / "hosts");
  options.etc_of_netns = name;
  bool ran = false;
  auto e = test::system_error_of([&] { ran = net.run_in_process([] { return true; }, options); });
  CHECK_FALSE(ran);
  CHECK(e.code().value() == ELOOP);
  CHECK_THAT(e.what(), Catch::Contains("/etc/netns/" + name + "/hosts"));
  // 2. /etc/netns/NAME itself a symlink to a folder: refused before the fork.
  const std::string linked = fmt::format("gonso-etc-dirlink-{}", ::getpid());
  const fs::path link = fs::path("/etc/netns") / linked;
  fs::create_directory_symlink(elsewhere.path(), link);
  options.etc_of_netns = linked;
  const test::Baseline base(test::Watch::children);
  e = test::system_error_of([&] { ran = net.run_in_process([] { return true; }, options); });
  fs::remove(link);
  CHECK_FALSE(ran);
  CHECK(e.code().value() == ENOTDIR);  // not a folder of its own
  base.check({.children = false});     // no child was forked
  // Nothing of it reached this process's /etc either.
  CHECK(test::file_text("/etc/hosts") == host_hosts);
  CHECK(test::mounts_at("/etc/hosts") == 0);
}

// As `ip netns exec`: an /etc file that is a symlink (resolv.conf into /run
// is common) is covered where it leads, in the child's mount namespace only.
TEST_CASE("run_in_process covers an /etc file that is a symlink where it leads, in the child only",
          "[privileged][process][netns]") {
  test::require_privilege();
  namespace fs = std::filesystem;
  const test::TempDir elsewhere;
  const fs::path target = elsewhere.path() / "resolv.conf";
  std::ofstream(target) << "nameserver 192.0.2.1\n";
  const std::string file = fmt::format("gonso-test-{}-resolv.conf", ::getpid());
  const fs::path link = fs::path("/etc") / file;
  fs::create_symlink(target, link);
  struct Remove {
    fs::path path;
    ~Remove() { ::unlink(path.c_str()); }
  } remove_link{link};
  const std::string name = fmt::format("gonso-etc-target-{}", ::getpid());
  const test::EtcNetnsFiles etc(name, {{file, "nameserver 192.0.2.53\n"}});
  const Set net = Set::current().unshare(Kind::net);
  gonso::ProcessOptions options;
  options.etc_of_netns = name;
  CHECK(net.run_in_process([&] { return test::file_text(link); }, options) == "nameserver 192.0.2.53\n");
  CHECK(test::file_text(link) == "nameserver 192.0.2.1\n");  // the host's is untouched
  CHECK(test::mounts_at(target.native()) == 0);
}

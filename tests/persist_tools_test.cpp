// Persisted namespaces and util-linux: what `unshare --net=FILE` persisted
// gonso opens and unpersists, and `nsenter --net=FILE` enters what gonso
// persisted. Namespaces are checked against stat(2) of the files, NS_GET_ID
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
using gonso::Kinds;
using gonso::Set;
using test::link_text;
using test::nsfs_mounts_under;
using test::Raw;
using test::raw_of_fd;
using test::same_file;
using test::stat_of;

TEST_CASE("util-linux: what `unshare --net=FILE --mount=FILE` persisted, gonso opens and unpersists",
          "[persist][privileged][tools]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    const auto net_file = fs.path() / "net";
    const auto mnt_file = fs.path() / "mnt";
    test::make_empty_file(net_file);  // unshare(1) binds onto files that exist
    test::make_empty_file(mnt_file);
    // Inside a container the kernel refuses unshare(1) too when its new mount
    // namespace got a lower id than ours (ids come in per-CPU batches; a
    // mount namespace is bound only into an older one): it runs again, on
    // each CPU in turn (test::PinnedToCpu), until it is not refused.
    test::ToolResult made;
    for (int tries = 0; tries < 50 && !made.ok(); ++tries) {
      const test::PinnedToCpu pin(static_cast<unsigned>(tries));
      for (const auto& file : {net_file, mnt_file}) {
        while (::umount2(file.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0) {
        }
      }
      made = test::run_tool(fmt::format("unshare --net={} --mount={} true 2>&1", net_file.string(), mnt_file.string()));
    }
    INFO(made.out);
    REQUIRE(made.ok());

    const Raw net_raw = stat_of(net_file);
    const Raw mnt_raw = stat_of(mnt_file);
    CHECK_FALSE(same_file(net_raw, stat_of("/proc/self/ns/net")));
    CHECK_FALSE(same_file(mnt_raw, stat_of("/proc/self/ns/mnt")));

    const Set net = Set::from_file(Kind::net, net_file);
    CHECK(net.identity(Kind::net).inode == net_raw.ino);
    CHECK(net.identity(Kind::net).device == net_raw.dev);
    CHECK(net.identity(Kind::net).id != 0);
    CHECK(net.run(true, [] { return test::thread_ns(Kind::net); }).inode == net_raw.ino);
    const Set mnt = Set::from_file(Kind::mnt, mnt_file);
    CHECK(mnt.identity(Kind::mnt).inode == mnt_raw.ino);

    gonso::unpersist(net_file);
    gonso::unpersist(mnt_file);
    CHECK_FALSE(std::filesystem::exists(net_file));
    CHECK_FALSE(std::filesystem::exists(mnt_file));
    CHECK(nsfs_mounts_under(fs.path()).empty());
  });
}

TEST_CASE("util-linux: `nsenter --net=FILE` enters what gonso persisted, with its Set gone",
          "[persist][privileged][tools]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    const auto dir = fs.path() / "ns";
    std::string net_link, mnt_link;
    {
      const Kinds kinds = Kind::net | Kind::uts | Kind::mnt;
      const Set s = test::unshare_persistable(Set::current(kinds), kinds);
      s.dup(Kind::uts).run(true, [] { test::set_hostname("gonso-nsenter"); });
      net_link = link_text(Kind::net, raw_of_fd(s.fd(Kind::net)));
      mnt_link = link_text(Kind::mnt, raw_of_fd(s.fd(Kind::mnt)));
      gonso::persist(s, dir);
    }
    CHECK(test::tool_output(fmt::format("nsenter --net={} readlink /proc/self/ns/net", (dir / "net").string())) ==
          net_link + "\n");
    CHECK(test::tool_output(fmt::format("nsenter --uts={} hostname", (dir / "uts").string())) == "gonso-nsenter\n");
    CHECK(test::tool_output(fmt::format("nsenter --mount={} readlink /proc/self/ns/mnt", (dir / "mnt").string())) ==
          mnt_link + "\n");
    gonso::unpersist_dir(dir);
    CHECK(nsfs_mounts_under(fs.path()).empty());
  });
}

// The /proc parsers behind gonso::Target, on the kernel's own files and on
// hostile ones: what they accept is what the kernel says, what they refuse
// is EPROTO or ENOENT, never a path that leaves the cgroup2 mount.
#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <system_error>
#include <vector>

#include <catch2/catch.hpp>

#include <gonso/target.hpp>

#include "support/tools.hpp"

namespace d = gonso::detail;

namespace {

std::errc code_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::system_error& e) {
    return static_cast<std::errc>(e.code().value());
  }
  return std::errc{};
}

}  // namespace

TEST_CASE("parse_status reads this process's ids, groups and capabilities as the kernel wrote them", "[proc]") {
  const d::proc_status s = d::parse_status(test::file_text("/proc/self/status"));
  CHECK(s.uid == ::geteuid());
  CHECK(s.gid == ::getegid());
  std::vector<gid_t> groups(static_cast<std::size_t>(::getgroups(0, nullptr)));
  groups.resize(static_cast<std::size_t>(::getgroups(static_cast<int>(groups.size()), groups.data())));
  CHECK(std::vector<gid_t>(s.groups.begin(), s.groups.end()) == groups);
  // Malformed or missing lines are refused.
  CHECK(code_of([] { (void)d::parse_status("Uid:\t1 2 3\n"); }) == std::errc::protocol_error);
  CHECK(code_of([] { (void)d::parse_status("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n"); }) == std::errc::protocol_error);
  CHECK(code_of([] { (void)d::parse_status("CapEff:\tzz\n"); }) == std::errc::protocol_error);
}

TEST_CASE("id maps translate ids of the reader into ids inside", "[proc]") {
  const std::vector<d::id_line> map =
      d::parse_id_map("         0       1000          1\n         1     100000      65536\n");
  CHECK(d::map_to_inside(map, 1000) == 0U);
  CHECK(d::map_to_inside(map, 100000) == 1U);
  CHECK(d::map_to_inside(map, 165535) == 65536U);
  CHECK_FALSE(d::map_to_inside(map, 165536).has_value());
  CHECK_FALSE(d::map_to_inside(map, 999).has_value());
  CHECK(code_of([] { (void)d::parse_id_map("0 0\n"); }) == std::errc::protocol_error);
  CHECK(code_of([] { (void)d::parse_id_map("0 0 -1\n"); }) == std::errc::protocol_error);
}

TEST_CASE("environ keeps NAME=value entries only", "[proc]") {
  using namespace std::string_literals;
  CHECK(d::parse_environ("A=1\0=x\0junk\0B=\0C=a=b"s) == std::vector<std::string>{"A=1", "B=", "C=a=b"});
  CHECK(d::parse_environ("").empty());
}

TEST_CASE("cgroup2_path finds a cgroup under the cgroup2 mount, hybrid, unified or a subtree", "[proc]") {
  const std::string hybrid =
      "30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n"
      "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
  const std::string unified = "29 23 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw\n";
  const std::string subtree = "50 40 0:30 /pods /mnt/cg\\040x rw - cgroup2 none rw\n";
  CHECK(d::cgroup2_path("1:name=systemd:/x\n0::/a/b\n", hybrid, 1) == "/sys/fs/cgroup/unified/a/b");
  CHECK(d::cgroup2_path("0::/\n", hybrid, 1) == "/sys/fs/cgroup/unified");
  CHECK(d::cgroup2_path("0::/a\n", unified, 1) == "/sys/fs/cgroup/a");
  CHECK(d::cgroup2_path("0::/pods/p1\n", subtree, 1) == "/mnt/cg x/p1");
  // Outside the mount's subtree, removed, absent, or no mount at all.
  CHECK(code_of([&] { (void)d::cgroup2_path("0::/podsx\n", subtree, 1); }) == std::errc::no_such_file_or_directory);
  CHECK(code_of([&] { (void)d::cgroup2_path("0::/other\n", subtree, 1); }) == std::errc::no_such_file_or_directory);
  CHECK(code_of([&] { (void)d::cgroup2_path("0::/a (deleted)\n", unified, 1); }) ==
        std::errc::no_such_file_or_directory);
  CHECK(code_of([&] { (void)d::cgroup2_path("1:cpu:/\n", unified, 1); }) == std::errc::no_such_file_or_directory);
  CHECK(code_of([&] { (void)d::cgroup2_path("0::/a\n", "1 2 0:1 / / rw - ext4 x rw\n", 1); }) ==
        std::errc::no_such_file_or_directory);
  // What would leave the mount, or be cut short by open(2).
  CHECK(code_of([&] { (void)d::cgroup2_path("0::/../etc\n", unified, 1); }) == std::errc::protocol_error);
  CHECK(code_of([&] { (void)d::cgroup2_path("0::relative\n", unified, 1); }) == std::errc::protocol_error);
  CHECK(code_of([&] { (void)d::cgroup2_path("0::/a\n", "1 2 0:1 / /x\\000y rw - cgroup2 c rw\n", 1); }) ==
        std::errc::protocol_error);
  // This machine's own files agree with the kernel: the path is a directory.
  if (d::find_cgroup2(test::file_text("/proc/self/mountinfo"))) {
    const std::string mine =
        d::cgroup2_path(test::file_text("/proc/self/cgroup"), test::file_text("/proc/self/mountinfo"), ::getpid());
    CHECK(std::filesystem::is_directory(mine));
  }
}

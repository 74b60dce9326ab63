// Kinds and flags: pure values, no privilege needed.
#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <gonso/detail/ns/kinds.hpp>
#include <gonso/kind.hpp>
#include <gonso/options.hpp>

using gonso::Kind;
using gonso::Kinds;

TEST_CASE("a Kind is its CLONE_NEW* bit and its /proc name") {
  CHECK(gonso::clone_flag(Kind::cgroup) == CLONE_NEWCGROUP);
  CHECK(gonso::clone_flag(Kind::ipc) == CLONE_NEWIPC);
  CHECK(gonso::clone_flag(Kind::mnt) == CLONE_NEWNS);
  CHECK(gonso::clone_flag(Kind::net) == CLONE_NEWNET);
  CHECK(gonso::clone_flag(Kind::pid) == CLONE_NEWPID);
  CHECK(gonso::clone_flag(Kind::time) == CLONE_NEWTIME);
  CHECK(gonso::clone_flag(Kind::user) == CLONE_NEWUSER);
  CHECK(gonso::clone_flag(Kind::uts) == CLONE_NEWUTS);

  // The names are those of the files in /proc/PID/ns.
  for (Kind kind : gonso::all_kinds) {
    const std::string path = fmt::format("/proc/self/ns/{}", gonso::name(kind));
    INFO(path);
    CHECK(::access(path.c_str(), F_OK) == 0);
    CHECK(gonso::kind_from_name(gonso::name(kind)) == kind);
  }
  CHECK_FALSE(gonso::kind_from_name("pid_for_children").has_value());
  CHECK_FALSE(gonso::kind_from_name("").has_value());
}

TEST_CASE("Kinds combine, intersect, subtract and test membership") {
  const Kinds nu = Kind::net | Kind::uts;
  CHECK(nu.contains(Kind::net));
  CHECK(nu.contains(Kind::uts));
  CHECK_FALSE(nu.contains(Kind::mnt));
  CHECK(nu.size() == 2);
  CHECK((nu & Kind::net) == Kinds(Kind::net));
  CHECK((nu - Kind::net) == Kinds(Kind::uts));
  CHECK((nu | Kind::mnt).contains(nu));
  CHECK_FALSE(Kinds(Kind::net).contains(nu));
  CHECK(Kinds{}.empty());
  CHECK(Kinds::all().size() == 8);
  CHECK(gonso::default_kinds == Kinds::all() - Kind::user);

  Kinds k;
  k |= Kind::pid;
  k |= Kind::ipc;
  k &= Kinds(Kind::pid) | Kind::cgroup;
  CHECK(k == Kinds(Kind::pid));
  k -= Kind::pid;
  CHECK(k.empty());
}

TEST_CASE("Kinds iterate in /proc order and convert to and from raw flags") {
  const Kinds k = Kinds::from_clone_flags(CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWCGROUP);
  std::vector<Kind> seen(k.begin(), k.end());
  CHECK(seen == std::vector<Kind>{Kind::cgroup, Kind::net, Kind::uts});
  CHECK(k.clone_flags() == (CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWCGROUP));
  CHECK(Kinds::from_clone_flags(0).empty());

  std::vector<Kind> all(Kinds::all().begin(), Kinds::all().end());
  CHECK(all == std::vector<Kind>(gonso::all_kinds.begin(), gonso::all_kinds.end()));
}

TEST_CASE("unknown flag bits are refused by name") {
  try {
    (void)Kinds::from_clone_flags(CLONE_NEWNET | CLONE_VM);
    FAIL("CLONE_VM was accepted as a namespace flag");
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    INFO(what);
    CHECK(what.find("0x00000100 (CLONE_VM)") != std::string::npos);
    CHECK(what.find("unknown namespace flag") != std::string::npos);
  }
  CHECK_THROWS_WITH(Kinds::from_clone_flags(CLONE_FS | CLONE_THREAD | CLONE_NEWNET),
                    Catch::Contains("0x00010200 (CLONE_FS|CLONE_THREAD)"));
  CHECK_THROWS_AS(Kinds::from_clone_flags(CLONE_THREAD), std::invalid_argument);
  CHECK_THROWS_AS(Kinds::from_clone_flags(std::uint64_t{1} << 40), std::invalid_argument);
}

TEST_CASE("kinds format with fmt") {
  CHECK(fmt::format("{}", Kind::mnt) == "mnt");
  CHECK(fmt::format("{}", Kind::net | Kind::mnt) == "{mnt, net}");
  CHECK(fmt::format("{}", Kinds{}) == "{}");
  CHECK(fmt::format("{:>5}", Kind::ipc) == "  ipc");
  // Every gonso formatter takes a string's fill, align and width.
  CHECK(fmt::format("{:*<12}", Kind::net | Kind::mnt) == "{mnt, net}**");
  CHECK(fmt::format("{:^9}", static_cast<Kind>(0x10)) == "Kind(0x10)");  // wider than the width: as is
  CHECK(fmt::format("[{:>6}]", Kinds{}) == "[    {}]");
}

TEST_CASE("the table of kinds agrees with the kernel, and the orders derived from it hold the rules") {
  namespace detail = gonso::detail;
  for (Kind kind : gonso::all_kinds) {
    INFO(gonso::name(kind));
    // The kernel's type of the namespace file of that name is the kind's flag.
    const std::string path = fmt::format("/proc/thread-self/ns/{}", gonso::name(kind));
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    CHECK(::ioctl(fd, NS_GET_NSTYPE) == gonso::clone_flag(kind));
    ::close(fd);
    // The link that shows what a thread joined exists under that name.
    CHECK(::access(fmt::format("/proc/thread-self/ns/{}", detail::thread_link(kind)).c_str(), F_OK) == 0);
  }
  // Every kind once in the join order; user last, mnt after every other
  // kind a thread joins.
  Kinds seen;
  for (Kind kind : detail::join_order) seen |= kind;
  CHECK(seen == Kinds::all());
  CHECK(detail::join_order.back() == Kind::user);
  const auto at = [](Kind kind) {
    for (std::size_t i = 0; i < detail::join_order.size(); ++i) {
      if (detail::join_order[i] == kind) return i;
    }
    return detail::join_order.size();
  };
  for (Kind kind : detail::thread_join_order) {
    if (kind != Kind::mnt) CHECK(at(kind) < at(Kind::mnt));
  }
  CHECK(detail::thread_join_order.back() == Kind::mnt);
  CHECK(detail::thread_joinable_kinds == Kinds::all() - Kind::user - Kind::time);
  CHECK(detail::process_only_kinds == (Kind::pid | Kind::time | Kind::user));
  CHECK(detail::watched_kinds == Kinds::all() - Kind::user);
  CHECK_FALSE(detail::pidfd_kinds.contains(Kind::mnt));
}

TEST_CASE("UnshareOptions::check refuses what unshare would, before anything is made") {
  gonso::UnshareOptions maps;
  maps.uid_map = {{0, 1000, 1}};
  CHECK_THROWS_AS(maps.check(Kind::net), std::invalid_argument);  // maps without a user namespace
  CHECK_NOTHROW(maps.check(Kind::user | Kind::net));
  maps.uid_map = {{0, 1000, 10}, {5, 2000, 1}};  // inside ids 5 overlap
  CHECK_THROWS_AS(maps.check(Kind::user), std::invalid_argument);
  maps.uid_map = {{0, 1000, 0}};  // maps no ids
  CHECK_THROWS_AS(maps.check(Kind::user), std::invalid_argument);
  gonso::UnshareOptions offsets;
  offsets.monotonic_offset = std::chrono::seconds(5);
  CHECK_THROWS_AS(offsets.check(Kind::net), std::invalid_argument);
  CHECK_NOTHROW(offsets.check(Kind::time));
}

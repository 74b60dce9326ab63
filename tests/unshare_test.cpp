// Set::unshare: fresh namespaces made on a worker thread, checked against what
// the kernel shows in /proc/thread-self/ns (read with stat, never through
// gonso), with the calling thread left where it was.
#include <sched.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <gonso/set.hpp>
#include <gonso/workers.hpp>

#include "support/baseline.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/privilege.hpp"

namespace {

using Catch::Matchers::Contains;
using gonso::Kind;
using test::text;

std::string text(gonso::Kinds kinds) { return fmt::format("{}", kinds); }

/// The kinds a thread can unshare on its own (the README's kernel rules, "Per kind").
constexpr Kind thread_unshareable[] = {Kind::cgroup, Kind::ipc, Kind::mnt, Kind::net, Kind::uts};

/// What a worker running inside `set` sees, read from /proc by the callable.
test::Snapshot seen_inside(const gonso::Set& set) {
  return set.run(true, [] { return test::snapshot(); });
}

/// Every kind `set` holds is the namespace a callable run in it is in.
void check_inside(const gonso::Set& set) {
  const test::Snapshot inside = seen_inside(set);
  for (Kind kind : set.kinds()) {
    INFO("kind " << gonso::name(kind));
    CHECK(text(inside.at(kind)) == text(set.identity(kind)));
  }
}

/// The exception of type E that `fn` throws, or nullopt when it throws none.
/// An exception of another type escapes and fails the test.
template <typename E, typename F>
std::optional<E> thrown_by(F&& fn) {
  try {
    std::forward<F>(fn)();
  } catch (const E& e) {
    return e;
  }
  return std::nullopt;
}

/// What a callable saw of one mount point inside a mount namespace.
struct MountView {
  gonso::Identity mnt;
  int mount_errno = 0;  // of the mount(2) the callable made, if it made one
  bool is_mount_point = false;
};

MountView look_at(const gonso::Set& set, const std::filesystem::path& dir) {
  return set.run(true, [&] {
    MountView view;
    view.mnt = test::thread_ns(Kind::mnt);
    view.is_mount_point = test::is_mount_point_here(dir);
    return view;
  });
}

MountView mount_tmpfs_inside(const gonso::Set& set, const std::filesystem::path& dir) {
  return set.run(true, [&] {
    MountView view;
    view.mnt = test::thread_ns(Kind::mnt);
    if (::mount("gonso-inside", dir.c_str(), "tmpfs", 0, "size=64k") != 0) view.mount_errno = errno;
    view.is_mount_point = test::is_mount_point_here(dir);
    return view;
  });
}

}  // namespace

TEST_CASE("unshare: one kind gets a fresh namespace, the others are the source's", "[unshare][privileged]") {
  test::require_privilege();
  const Kind kind = GENERATE(from_range(std::begin(thread_unshareable), std::end(thread_unshareable)));
  INFO("unsharing " << gonso::name(kind));

  const test::Snapshot caller = test::snapshot();
  const gonso::Set source = gonso::Set::current();
  REQUIRE(text(source.identity(kind)) == text(caller.at(kind)));

  const gonso::Set fresh = source.unshare(kind);
  CHECK(text(test::snapshot()) == text(caller));

  CHECK(text(fresh.kinds()) == text(source.kinds()));
  CHECK(text(fresh.identity(kind)) != text(caller.at(kind)));
  for (Kind other : source.kinds()) {
    if (other == kind) continue;
    INFO("kept kind " << gonso::name(other));
    CHECK(text(fresh.identity(other)) == text(source.identity(other)));
  }

  // The new namespace is the one a callable run in the Set is in.
  check_inside(fresh);
  CHECK(text(test::snapshot()) == text(caller));
}

TEST_CASE("unshare: several kinds at once, typed or as raw CLONE_NEW* flags", "[unshare][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const gonso::Set source = gonso::Set::current();

  SECTION("net|uts|ipc in one call") {
    const gonso::Kinds three = Kind::net | Kind::uts | Kind::ipc;
    const gonso::Set fresh = source.unshare(three);
    CHECK(text(test::snapshot()) == text(caller));
    CHECK(text(fresh.kinds()) == text(source.kinds()));
    for (Kind kind : source.kinds()) {
      INFO("kind " << gonso::name(kind));
      if (three.contains(kind)) {
        CHECK(text(fresh.identity(kind)) != text(caller.at(kind)));
      } else {
        CHECK(text(fresh.identity(kind)) == text(source.identity(kind)));
      }
    }
    check_inside(fresh);
    CHECK(text(test::snapshot()) == text(caller));
  }

  SECTION("the raw-flag overload means the same kinds as the typed one") {
    const gonso::Set typed = source.unshare(Kind::net | Kind::uts);
    const gonso::Set raw = source.unshare(CLONE_NEWNET | CLONE_NEWUTS);
    CHECK(text(test::snapshot()) == text(caller));
    CHECK(text(raw.kinds()) == text(typed.kinds()));
    for (Kind kind : {Kind::net, Kind::uts}) {
      INFO("kind " << gonso::name(kind));
      CHECK(text(raw.identity(kind)) != text(caller.at(kind)));
      CHECK(text(typed.identity(kind)) != text(caller.at(kind)));
      // Each call makes namespaces of its own.
      CHECK(text(raw.identity(kind)) != text(typed.identity(kind)));
    }
    for (Kind kind : source.kinds() - (Kind::net | Kind::uts)) {
      INFO("kept kind " << gonso::name(kind));
      CHECK(text(raw.identity(kind)) == text(source.identity(kind)));
    }
    check_inside(raw);
    check_inside(typed);
    CHECK(text(test::snapshot()) == text(caller));
  }
}

TEST_CASE("unshare: from a Set that is not the caller's", "[unshare][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();

  const gonso::Set a = gonso::Set::current().unshare(Kind::uts);
  REQUIRE(text(a.identity(Kind::uts)) != text(caller.at(Kind::uts)));
  REQUIRE(text(a.identity(Kind::net)) == text(caller.at(Kind::net)));

  const gonso::Set b = a.unshare(Kind::net);
  CHECK(text(test::snapshot()) == text(caller));

  CHECK(text(b.kinds()) == text(a.kinds()));
  CHECK(text(b.identity(Kind::uts)) == text(a.identity(Kind::uts)));
  CHECK(text(b.identity(Kind::net)) != text(caller.at(Kind::net)));
  CHECK(text(b.identity(Kind::net)) != text(a.identity(Kind::net)));
  for (Kind kind : a.kinds() - Kind::net) {
    INFO("kept kind " << gonso::name(kind));
    CHECK(text(b.identity(kind)) == text(a.identity(kind)));
  }

  check_inside(b);
  check_inside(a);
  CHECK(text(test::snapshot()) == text(caller));
}

// Kernel fact relied on: a new mount namespace copies the creator's mounts with
// their propagation, so the copy of a shared mount is a peer of the original
// (the README's kernel rules, "Mount"). test::SharedTmpfs is such a shared mount, and
// its destructor detaches whatever propagated onto it.
TEST_CASE("unshare: mount propagation of a new mount namespace", "[unshare][mount][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  test::SharedTmpfs t;
  const std::filesystem::path sub = t.path() / "sub";
  const std::filesystem::path sub2 = t.path() / "sub2";
  // Made from the caller, outside: the tmpfs is the same in every namespace.
  std::filesystem::create_directory(sub);
  std::filesystem::create_directory(sub2);
  REQUIRE_FALSE(test::is_mount_point_here(sub));

  SECTION("rprivate, the default: a mount made inside stays inside") {
    const gonso::Set m = gonso::Set::current().unshare(Kind::mnt);
    REQUIRE(text(m.identity(Kind::mnt)) != text(caller.at(Kind::mnt)));
    const MountView inside = mount_tmpfs_inside(m, sub);
    INFO("mount inside: " << std::strerror(inside.mount_errno));
    REQUIRE(inside.mount_errno == 0);
    CHECK(text(inside.mnt) == text(m.identity(Kind::mnt)));
    CHECK(inside.is_mount_point);
    CHECK_FALSE(test::is_mount_point_here(sub));
    CHECK(text(test::snapshot()) == text(caller));
  }

  SECTION("unchanged: the same mount leaks to the host, so the test above would see a leak") {
    const gonso::Set m =
        gonso::Set::current().unshare(Kind::mnt, gonso::UnshareOptions{.propagation = gonso::Propagation::unchanged});
    REQUIRE(text(m.identity(Kind::mnt)) != text(caller.at(Kind::mnt)));
    const MountView inside = mount_tmpfs_inside(m, sub);
    INFO("mount inside: " << std::strerror(inside.mount_errno));
    REQUIRE(inside.mount_errno == 0);
    CHECK(text(inside.mnt) == text(m.identity(Kind::mnt)));
    CHECK(inside.is_mount_point);
    CHECK(test::is_mount_point_here(sub));
    CHECK(text(test::snapshot()) == text(caller));
  }

  SECTION("rslave: a host mount made afterwards shows up inside, not inside an rprivate one") {
    const gonso::Set slave =
        gonso::Set::current().unshare(Kind::mnt, gonso::UnshareOptions{.propagation = gonso::Propagation::rslave});
    const gonso::Set priv =
        gonso::Set::current().unshare(Kind::mnt, gonso::UnshareOptions{.propagation = gonso::Propagation::rprivate});
    REQUIRE(text(slave.identity(Kind::mnt)) != text(caller.at(Kind::mnt)));
    REQUIRE(text(priv.identity(Kind::mnt)) != text(caller.at(Kind::mnt)));
    REQUIRE_FALSE(look_at(slave, sub).is_mount_point);
    REQUIRE_FALSE(look_at(priv, sub).is_mount_point);

    // On the host, after both namespaces exist. SharedTmpfs unmounts it.
    REQUIRE(::mount("gonso-host", sub.c_str(), "tmpfs", 0, "size=64k") == 0);
    REQUIRE(test::is_mount_point_here(sub));

    const MountView in_slave = look_at(slave, sub);
    CHECK(text(in_slave.mnt) == text(slave.identity(Kind::mnt)));
    CHECK(in_slave.is_mount_point);

    const MountView in_private = look_at(priv, sub);
    CHECK(text(in_private.mnt) == text(priv.identity(Kind::mnt)));
    CHECK_FALSE(in_private.is_mount_point);

    // Slave means one way only: a mount made inside stays inside.
    const MountView made_in_slave = mount_tmpfs_inside(slave, sub2);
    INFO("mount inside: " << std::strerror(made_in_slave.mount_errno));
    REQUIRE(made_in_slave.mount_errno == 0);
    CHECK(made_in_slave.is_mount_point);
    CHECK_FALSE(test::is_mount_point_here(sub2));
    CHECK(text(test::snapshot()) == text(caller));
  }

  SECTION("rshared: mounts propagate both ways") {
    const gonso::Set shared =
        gonso::Set::current().unshare(Kind::mnt, gonso::UnshareOptions{.propagation = gonso::Propagation::rshared});
    REQUIRE(text(shared.identity(Kind::mnt)) != text(caller.at(Kind::mnt)));

    REQUIRE(::mount("gonso-host", sub.c_str(), "tmpfs", 0, "size=64k") == 0);
    const MountView in_shared = look_at(shared, sub);
    CHECK(text(in_shared.mnt) == text(shared.identity(Kind::mnt)));
    CHECK(in_shared.is_mount_point);

    const MountView made_inside = mount_tmpfs_inside(shared, sub2);
    INFO("mount inside: " << std::strerror(made_inside.mount_errno));
    REQUIRE(made_inside.mount_errno == 0);
    CHECK(made_inside.is_mount_point);
    CHECK(test::is_mount_point_here(sub2));
    CHECK(text(test::snapshot()) == text(caller));
  }
}

// None of these needs privilege: each request is refused before any system call.
TEST_CASE("unshare: refused requests throw and change nothing", "[unshare][errors]") {
  const gonso::Set source = gonso::Set::current();
  const test::Baseline base(test::Watch::namespaces | test::Watch::fds);

  SECTION("no kinds: std::invalid_argument") {
    const auto e = thrown_by<std::invalid_argument>([&] { (void)source.unshare(gonso::Kinds{}); });
    REQUIRE(e);
    CHECK_THAT(e->what(), Contains("no namespace kinds"));
    base.check();
  }

  SECTION("CLONE_VM is no namespace: std::invalid_argument naming the bit") {
    const auto e = thrown_by<std::invalid_argument>([&] { (void)source.unshare(CLONE_VM); });
    REQUIRE(e);
    CHECK_THAT(e->what(), Contains("0x00000100"));
    base.check();
  }

  SECTION("id maps without a new user namespace, time offsets without a new time namespace") {
    gonso::UnshareOptions maps;
    maps.uid_map = {{0, 0, 1}};
    auto e = thrown_by<std::invalid_argument>([&] { (void)source.unshare(Kind::net, maps); });
    REQUIRE(e);
    CHECK_THAT(e->what(), Contains("uid_map"));
    gonso::UnshareOptions offsets;
    offsets.boottime_offset = std::chrono::seconds(5);
    e = thrown_by<std::invalid_argument>([&] { (void)source.unshare(Kind::net | Kind::user, offsets); });
    REQUIRE(e);
    CHECK_THAT(e->what(), Contains("time offsets"));
    base.check();
  }

  SECTION("id maps that map nothing or overlap") {
    gonso::UnshareOptions empty_range;
    empty_range.uid_map = {{0, 0, 0}};
    auto e = thrown_by<std::invalid_argument>([&] { (void)source.unshare(Kind::user, empty_range); });
    REQUIRE(e);
    CHECK_THAT(e->what(), Contains("count 0"));
    gonso::UnshareOptions overlapping;
    overlapping.gid_map = {{0, 1000, 10}, {5, 2000, 10}};
    e = thrown_by<std::invalid_argument>([&] { (void)source.unshare(Kind::user, overlapping); });
    REQUIRE(e);
    CHECK_THAT(e->what(), Contains("gid_map") && Contains("overlap"));
    base.check();
  }

  SECTION("an empty or moved-from Set: std::logic_error") {
    gonso::Set moved_from = gonso::Set::current();
    const gonso::Set taker = std::move(moved_from);
    REQUIRE(moved_from.empty());  // NOLINT(bugprone-use-after-move): the point of the test
    const test::Baseline now(test::Watch::fds);

    const auto e1 = thrown_by<std::logic_error>([&] { (void)moved_from.unshare(Kind::net); });  // NOLINT
    REQUIRE(e1);
    CHECK_THAT(e1->what(), Contains("empty"));

    const gonso::Set empty;
    const auto e2 = thrown_by<std::logic_error>([&] { (void)empty.unshare(Kind::uts); });
    REQUIRE(e2);
    CHECK_THAT(e2->what(), Contains("empty"));
    now.check();
  }

  base.check();
}

TEST_CASE("unshare: Sets made and destroyed leave no fd behind", "[unshare][fds][privileged]") {
  test::require_privilege();
  constexpr std::size_t rounds = 50;
  const test::Snapshot caller = test::snapshot();
  const gonso::Set source = gonso::Set::current();

  // Idle workers hold fds of their own namespaces, not the Sets' to answer
  // for: the Baseline retires them before it counts, and so does its check.
  const test::Baseline base(test::Watch::namespaces | test::Watch::fds);
  {
    std::vector<gonso::Set> sets;
    std::size_t held = 0;
    std::vector<std::string> wrong;
    for (std::size_t i = 0; i < rounds; ++i) {
      const Kind kind = thread_unshareable[i % std::size(thread_unshareable)];
      gonso::Set fresh = source.unshare(kind);
      const gonso::Identity inside = fresh.run(true, [kind] { return test::thread_ns(kind); });
      if (fresh.identity(kind) == caller.at(kind) || inside != fresh.identity(kind)) {
        wrong.push_back(fmt::format("round {}: {} caller {} Set {} inside {}", i, gonso::name(kind),
                                    text(caller.at(kind)), text(fresh.identity(kind)), text(inside)));
      }
      ++held;  // the one new namespace; the kinds carried over share source's fds
      sets.push_back(std::move(fresh));
    }
    CHECK(wrong == std::vector<std::string>{});
    gonso::retire_idle_workers();
    // While they live, the Sets hold exactly one fd per namespace, however
    // many Sets hold it.
    CHECK(test::count_fds() == base.fds() + held);
    std::set<std::string> links;  // what the fds name, as the kernel says
    for (const gonso::Set& s : sets) {
      for (Kind k : s.kinds()) links.insert(test::fd_link(s.fd(k)));
    }
    for (Kind k : source.kinds()) links.insert(test::fd_link(source.fd(k)));
    CHECK(links.size() == source.kinds().size() + held);
  }
  base.check();
}

// Persisted mount namespaces: never the caller's own, never onto a shared
// mount, and inside a container (ids from per-CPU batches) one older than
// the caller's is refused first; from_file() opens only what was asked.
// Namespaces are checked against stat(2) of the files, NS_GET_ID
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
using test::nsfs_mounts_under;
using test::Raw;
using test::raw_of_fd;
using test::raw_of_file;

TEST_CASE("persist() of a mount namespace: from outside it, and never onto a shared mount", "[persist][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    SECTION("the caller's own mount namespace would be bound inside itself: EINVAL, nothing left") {
      const test::PrivateTmpfs fs;
      const auto file = fs.path() / "self";
      const auto e = test::system_error_of([&] { gonso::persist(Set::current(Kind::mnt), Kind::mnt, file); });
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK_FALSE(std::filesystem::exists(file));
      CHECK(nsfs_mounts_under(fs.path()).empty());
    }
    SECTION("a new one onto a shared mount that it holds a peer of: EINVAL, nothing left") {
      const test::SharedTmpfs shared;
      const auto file = shared.path() / "mnt";
      gonso::UnshareOptions keep;
      keep.propagation = gonso::Propagation::unchanged;  // its copy of the tmpfs is a peer of ours
      const Set fresh = Set::current(Kind::mnt).unshare(Kind::mnt, keep);
      const auto e = test::system_error_of([&] { gonso::persist(fresh, Kind::mnt, file); });
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK_FALSE(std::filesystem::exists(file));
      CHECK(nsfs_mounts_under(shared.path()).empty());
    }
    SECTION("a new private one onto a shared mount: refused as documented (EINVAL), nothing left") {
      // persist.hpp promises EINVAL for a mount namespace bound onto a shared
      // mount, and the rule says never to: util-linux refuses too.
      const test::SharedTmpfs shared;
      const auto file = shared.path() / "mnt";
      const Set fresh = Set::current(Kind::mnt).unshare(Kind::mnt);  // rprivate
      std::error_code code;
      try {
        gonso::persist(fresh, Kind::mnt, file);
      } catch (const std::system_error& e) {
        code = e.code();
      }
      const auto left = nsfs_mounts_under(shared.path());
      if (!left.empty()) ::umount2(file.c_str(), MNT_DETACH);  // undo what was wrongly made before checking
      CHECK(code == std::errc::invalid_argument);
      CHECK(left.empty());
    }
  });
}

TEST_CASE("Set::from_file() opens only a namespace file of the kind asked", "[persist][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    const auto regular = fs.path() / "regular";
    std::ofstream(regular) << "x";
    const auto net_file = fs.path() / "net";
    gonso::persist(Set::current(Kind::net).unshare(Kind::net), Kind::net, net_file);
    const test::Baseline base(test::Watch::fds);  // after the unshare, whose idle worker it retires

    auto e = test::system_error_of([&] { (void)Set::from_file(Kind::net, regular); });
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains(regular.string()) && Catch::Contains("not a namespace file"));

    e = test::system_error_of([&] { (void)Set::from_file(Kind::uts, net_file); });
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("it is a net namespace"));

    e = test::system_error_of([&] { (void)Set::from_file(Kind::net, fs.path() / "missing"); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);

    e = test::system_error_of([&] { (void)Set::from_dir(fs.path(), Kind::net | Kind::uts); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);

    base.check();
    CHECK(raw_of_fd(Set::from_file(Kind::net, net_file).fd(Kind::net)) == raw_of_file(net_file));
    gonso::unpersist(net_file);
  });
}

// ---------------------------------------------------------------------------
// Inside a container: a mount namespace that is not the initial one, as a
// monitoring agent's. The kernel binds a mount namespace only into an older
// one (by id), and ids come from per-CPU batches: there, a namespace made
// later can be older than the caller's. gonso says so before mounting.

namespace {

struct OrderFindings {
  bool in_box = false;         // the child's mount namespace is the box, not the initial one
  std::uint64_t own = 0;       // its id
  std::uint64_t older = 0;     // a mount namespace made later with a lower id, 0 if none came
  std::uint64_t newer = 0;     // one with a higher id
  int older_errno = 0;         // persist() of the older one
  bool older_message = false;  // ... named the rule
  bool older_left = true;      // ... left a file or a mount
  bool newer_bound = false;    // persist() of the newer one: an nsfs mount of it on the file
  bool newer_gone = false;     // ... and unpersist() took it away
  bool setup_failed = false;
};

// A mount namespace made on a thread pinned to the n-th CPU this one may
// use; its fd, or -1.
int mnt_ns_made_on(unsigned n) {
  int fd = -1;
  std::thread maker([&] {
    const test::PinnedToCpu pin(n);
    if (::unshare(CLONE_FS | CLONE_NEWNS) == 0) fd = ::open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC);
  });
  maker.join();
  return fd;
}

OrderFindings persist_by_mnt_order() {
  OrderFindings f;
  // Everything the child makes lives in its own mount namespace (the box).
  if (::mount("gonso-test", "/mnt", "tmpfs", MS_NOSUID | MS_NODEV, "size=64k") != 0 ||
      ::mount(nullptr, "/mnt", nullptr, MS_PRIVATE, nullptr) != 0) {
    f.setup_failed = true;
    return f;
  }
  f.own = test::own_mnt_id();
  f.in_box = f.own > 1;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  (void)::sched_getaffinity(0, sizeof allowed, &allowed);
  const auto cpus = static_cast<unsigned>(CPU_COUNT(&allowed));
  gonso::detail::unique_fd older, newer;
  for (int round = 0; round < 50 && (!older || !newer); ++round) {
    for (unsigned n = 0; n < cpus; ++n) {
      gonso::detail::unique_fd fd(mnt_ns_made_on(n));
      const std::uint64_t id = fd ? test::kernel_ns_id(fd.get()) : 0;
      if (id != 0 && id < f.own && !older) {
        f.older = id;
        older = std::move(fd);
      } else if (id > f.own && !newer) {
        f.newer = id;
        newer = std::move(fd);
      }
    }
  }
  if (older) {
    const Set set = Set::from_file(Kind::mnt, fmt::format("/proc/self/fd/{}", older.get()));
    try {
      gonso::persist(set, Kind::mnt, "/mnt/older");
    } catch (const std::system_error& e) {
      f.older_errno = e.code().value();
      f.older_message = std::string_view(e.what()).find("only into an older one") != std::string_view::npos;
    }
    f.older_left = ::access("/mnt/older", F_OK) == 0 || !nsfs_mounts_under("/mnt").empty();
  }
  if (newer) {
    const Set set = Set::from_file(Kind::mnt, fmt::format("/proc/self/fd/{}", newer.get()));
    gonso::persist(set, Kind::mnt, "/mnt/newer");
    f.newer_bound = test::nsfs_mounts_at("/mnt/newer") ==
                    std::vector<std::string>{fmt::format("mnt:[{}]", set.identity(Kind::mnt).inode)};
    gonso::unpersist("/mnt/newer");
    f.newer_gone = ::access("/mnt/newer", F_OK) != 0 && nsfs_mounts_under("/mnt").empty();
  }
  return f;
}

}  // namespace

TEST_CASE("persist() of a mount namespace in a container: older than the caller's is refused first, naming the rule",
          "[persist][privileged][process]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const Set box = Set::current().unshare(Kind::mnt);
    const OrderFindings f = box.run_in_process([] { return persist_by_mnt_order(); });
    REQUIRE_FALSE(f.setup_failed);
    INFO(fmt::format("box id {}, older {}, newer {}", f.own, f.older, f.newer));
    CHECK(f.in_box);
    REQUIRE(f.newer != 0);
    CHECK(f.newer_bound);
    CHECK(f.newer_gone);
    if (f.older == 0) {
      WARN("no mount namespace older than the box came in 50 rounds over every CPU: the refusal was not exercised");
    } else {
      CHECK(f.older_errno == EINVAL);
      CHECK(f.older_message);
      CHECK_FALSE(f.older_left);
    }
  });
}

// Bad input to a Set's members: Kind values that are no kind, unshare's flags
// and options (id maps, time offsets), members of a Set that lacks the kind or
// was moved from, and run_in_process. The cases are tables
// (support/cases.hpp): each call gives the documented error type, errno and a
// message naming what was being done, changes nothing and leaks nothing (the
// one Baseline after every case: fds, threads, child processes, namespaces),
// and the machine is left as found (mounts, names, folders).
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/executor.hpp>
#include <gonso/netns.hpp>
#include <gonso/persist.hpp>
#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>
#include <gonso/workers.hpp>

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;
using test::Case;
using test::check_cases;
using test::invalid;
using test::logic;
using test::refused;

namespace fs = std::filesystem;

// A Kind is an enum class, so a static_cast can give it any value: none,
// two kinds at once, a bit that is no kind. Each is refused by name, never
// used as an index (the identity of such a value read past a Set's array).
TEST_CASE("bad input: Kind values that are no kind, and Kinds with bits that are none", "[badinput][privileged]") {
  test::leaves_machine_as_found([] {
    const test::TempDir dir;
    const Set own = Set::current(Kind::net | Kind::uts | Kind::user);
    const Set fresh = Set::current(Kind::net).unshare(Kind::net);
    const gonso::detail::unique_fd self(gonso::detail::pidfd_open(::getpid()));
    REQUIRE(self);
    const std::vector<std::pair<Kind, std::string>> bad_kinds{
        {static_cast<Kind>(0), "0x0"},
        {static_cast<Kind>(CLONE_NEWNET | CLONE_NEWUTS), fmt::format("{:#x}", CLONE_NEWNET | CLONE_NEWUTS)},
        {static_cast<Kind>(CLONE_NEWUSER | CLONE_NEWPID), fmt::format("{:#x}", CLONE_NEWUSER | CLONE_NEWPID)},
        {static_cast<Kind>(CLONE_VM), "0x100"},
        {static_cast<Kind>(0x80000000U), "0x80000000"},
        {static_cast<Kind>(0xffffffffU), "0xffffffff"},
    };
    // Kinds made from a cast Kind: only bits that are no kind make them bad
    // (two kinds at once are a valid Kinds).
    const std::vector<std::pair<Kinds, std::string>> bad_sets{
        {Kinds(static_cast<Kind>(CLONE_VM)), "bits 0x100 (CLONE_VM)"},
        {Kinds(static_cast<Kind>(CLONE_NEWNET | CLONE_THREAD)), "(CLONE_THREAD)"},
        {Kind::net | static_cast<Kind>(0x1), "bits 0x1 are no"},
    };

    std::vector<Case> cases;
    // Copies, not structured bindings, which lambdas cannot capture in C++20.
    for (const auto& bad : bad_kinds) {
      const Kind kind = bad.first;
      const std::string& value = bad.second;
      const std::string named = "invalid namespace kind " + value;
      const auto add = [&](const std::string& where, std::function<void()> call) {
        cases.push_back(invalid(fmt::format("{} given to {}", value, where), std::move(call), named));
      };
      add("name", [kind] { (void)gonso::name(kind); });
      add("Set::fd", [&, kind] { (void)own.fd(kind); });
      add("Set::identity", [&, kind] { (void)own.identity(kind); });
      add("Set::owner", [&, kind] { (void)own.owner(kind); });
      add("Set::parent", [&, kind] { (void)own.parent(kind); });
      add("Set::from_file", [kind] { (void)Set::from_file(kind, "/proc/thread-self/ns/net"); });
      add("Set::from_fd", [&, kind] { (void)Set::from_fd(kind, own.fd(Kind::net)); });
      add("persist", [&, kind] { gonso::persist(fresh, kind, dir.path() / "file"); });
      CHECK_FALSE(own.contains(kind));
      CHECK_FALSE(Kinds::all().contains(kind));
      CHECK_FALSE(gonso::is_kind(kind));
      // Formatting one is total, so that messages about it can be written.
      CHECK(fmt::format("{}", kind) == fmt::format("Kind({})", value));
    }
    for (const auto& bad : bad_sets) {
      const Kinds kinds = bad.first;
      const std::string& part = bad.second;
      const auto add = [&](const std::string& where, std::function<void()> call) {
        cases.push_back(invalid(fmt::format("{} given to {}", part, where), std::move(call), part));
      };
      add("Set::current", [kinds] { (void)Set::current(kinds); });
      add("Set::from_pid", [kinds] { (void)Set::from_pid(::getpid(), kinds); });
      add("Set::from_pidfd", [&, kinds] { (void)Set::from_pidfd(self.get(), kinds); });
      add("Set::from_dir", [kinds] { (void)Set::from_dir("/proc/thread-self/ns", kinds); });
      add("Set::dup", [&, kinds] { (void)own.dup(kinds); });
      add("Set::unshare", [&, kinds] { (void)own.unshare(kinds); });
      add("Pool", [&, kinds] { gonso::Pool pool(own, kinds); });
      CHECK(kinds.unknown_bits() != 0);
    }
    check_cases(cases);
    CHECK(fs::is_empty(dir.path()));
    for (Kind kind : gonso::all_kinds) CHECK(gonso::is_kind(kind));
  });
}

TEST_CASE("bad input: Set members, unshare options and run_in_process", "[badinput][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const Set here = Set::current();
    const Set net = Set::current(Kind::net);
    Set source = Set::current(Kind::net);
    const Set& moved_from = source;  // named for what it will be
    const Set keeper = std::move(source);
    const test::ForeignNamespaces user_holder(CLONE_NEWUSER);
    const Set user = Set::from_file(Kind::user, user_holder.path(Kind::user));
    const test::ForeignNamespaces time_holder(CLONE_NEWTIME);
    const Set time = Set::from_file(Kind::time, time_holder.path(Kind::time));
    const Set own_user = Set::current(Kind::user);
    const Set own_pid = Set::current(Kind::pid);
    const auto map_of = [](std::vector<gonso::IdRange> map) {
      gonso::UnshareOptions options;
      options.uid_map = std::move(map);
      return options;
    };

    std::vector<Case> cases{
        invalid(
            "unknown flag bits to unshare", [&] { (void)here.unshare(CLONE_NEWNET | CLONE_FS); },
            "0x00000200 (CLONE_FS)"),
        invalid(
            "negative flags to unshare", [&] { (void)here.unshare(-1); }, "unknown namespace flag bits"),
        invalid(
            "zero flags to unshare", [&] { (void)here.unshare(0); }, "no namespace kinds"),
        invalid(
            "no kinds to unshare", [&] { (void)here.unshare(Kinds{}); }, "no namespace kinds"),
        invalid(
            "unknown flag bits to dup", [&] { (void)here.dup(CLONE_NEWNET | CLONE_VM); }, "CLONE_VM"),

        invalid(
            "overlapping uid_map inside",
            [&] {
              (void)here.unshare(Kind::user, map_of({{0, 0, 10}, {9, 100, 1}}));
            },
            "lines 0 and 1 overlap"),
        invalid(
            "overlapping uid_map outside",
            [&] {
              (void)here.unshare(Kind::user, map_of({{0, 100, 10}, {50, 105, 1}}));
            },
            "lines 0 and 1 overlap"),
        invalid(
            "overlapping gid_map",
            [&] {
              gonso::UnshareOptions options;
              options.gid_map = {{0, 0, 1}, {5, 7, 1}, {5, 9, 1}};
              (void)here.unshare(Kind::user, options);
            },
            "gid_map lines 1 and 2 overlap"),
        invalid(
            "a zero-length range",
            [&] {
              (void)here.unshare(Kind::user, map_of({{0, 0, 0}}));
            },
            "maps no ids (count 0)"),
        invalid(
            "a range inside past 2^32",
            [&] {
              (void)here.unshare(Kind::user, map_of({{UINT32_MAX - 4, 0, 10}}));
            },
            "runs past the largest id"),
        invalid(
            "a range outside past 2^32",
            [&] {
              (void)here.unshare(Kind::user, map_of({{0, UINT32_MAX, 1}}));
            },
            "runs past the largest id"),
        invalid(
            "341 lines",
            [&] {
              std::vector<gonso::IdRange> map;
              map.reserve(341);
              for (std::uint32_t i = 0; i < 341; ++i) map.push_back({i, 1000 + i, 1});
              (void)here.unshare(Kind::user, map_of(std::move(map)));
            },
            "341 lines"),
        invalid(
            "uid_map without a new user namespace",
            [&] {
              (void)here.unshare(Kind::net, map_of({{0, 0, 1}}));
            },
            "none is unshared"),
        invalid(
            "gid_map without a new user namespace",
            [&] {
              gonso::UnshareOptions options;
              options.gid_map = {{0, 0, 1}};
              (void)here.unshare(Kind::net | Kind::pid, options);
            },
            "none is unshared"),
        invalid(
            "monotonic offset without a new time namespace",
            [&] {
              gonso::UnshareOptions options;
              options.monotonic_offset = std::chrono::seconds(1);
              (void)here.unshare(Kind::net, options);
            },
            "time offsets"),
        invalid(
            "boottime offset without a new time namespace",
            [&] {
              gonso::UnshareOptions options;
              options.boottime_offset = -std::chrono::seconds(1);
              (void)here.unshare(Kind::user, options);
            },
            "time offsets"),

        invalid(
            "fd of a kind not in the Set", [&] { (void)net.fd(Kind::uts); }, "holds no uts namespace"),
        invalid(
            "identity of a kind not in the Set", [&] { (void)net.identity(Kind::uts); }, "holds no uts namespace"),
        invalid(
            "dup of kinds not in the Set", [&] { (void)net.dup(Kind::uts | Kind::net); }, "{uts} missing"),
        invalid(
            "owner of a kind not in the Set", [&] { (void)net.owner(Kind::uts); }, "holds no uts namespace"),
        invalid(
            "owner_uid without a user namespace", [&] { (void)net.owner_uid(); }, "holds no user namespace"),
        refused(
            "parent of a net namespace", [&] { (void)net.parent(Kind::net); }, std::errc::invalid_argument,
            "cannot open the parent of net namespace"),
        refused(
            "owner of the initial user namespace", [&] { (void)own_user.owner(Kind::user); },
            std::errc::operation_not_permitted, "cannot open the owner of user namespace"),
        refused(
            "parent of the initial pid namespace", [&] { (void)own_pid.parent(Kind::pid); },
            std::errc::operation_not_permitted, "cannot open the parent of pid namespace"),

        logic(
            "run on a moved-from Set", [&] { moved_from.run(true, [] {}); }, "cannot run in an empty Set"),
        logic(
            "run(false) on a moved-from Set", [&] { moved_from.run(false, [] {}); }, "cannot run in an empty Set"),
        logic(
            "run_in_process on a moved-from Set", [&] { moved_from.run_in_process([] {}); },
            "cannot run a process in an empty Set"),
        logic(
            "unshare from a moved-from Set", [&] { (void)moved_from.unshare(Kind::net); },
            "cannot unshare from an empty Set"),
        logic(
            "unshare of user from a moved-from Set", [&] { (void)moved_from.unshare(CLONE_NEWUSER); },
            "cannot unshare from an empty Set"),
        invalid(
            "dup from a moved-from Set", [&] { (void)moved_from.dup(Kind::net); }, "{net} missing"),
        invalid(
            "dup(flags) from a moved-from Set", [&] { (void)moved_from.dup(CLONE_NEWNET); }, "{net} missing"),
        invalid(
            "fd of a moved-from Set", [&] { (void)moved_from.fd(Kind::net); }, "holds no net namespace"),
        invalid(
            "identity of a moved-from Set", [&] { (void)moved_from.identity(Kind::net); }, "holds no net namespace"),
        invalid(
            "owner of a moved-from Set", [&] { (void)moved_from.owner(Kind::net); }, "holds no net namespace"),
        invalid(
            "parent of a moved-from Set", [&] { (void)moved_from.parent(Kind::pid); }, "holds no pid namespace"),
        invalid(
            "owner_uid of a moved-from Set", [&] { (void)moved_from.owner_uid(); }, "holds no user namespace"),

        refused(
            "run on a Set holding a foreign user namespace", [&] { user.run(true, [] {}); },
            std::errc::invalid_argument, "cannot join user namespace"),
        refused(
            "run on a Set holding a foreign time namespace", [&] { time.run(true, [] {}); },
            std::errc::invalid_argument, "cannot join time namespace"),
    };
    for (const auto& bad : test::bad_names()) {
      const std::string& name = bad.first;  // clang before 16 cannot capture structured bindings
      const std::string& why = bad.second;
      gonso::ProcessOptions options;
      options.etc_of_netns = name;
      cases.push_back(invalid(
          fmt::format("run_in_process with etc_of_netns of {} bytes", name.size()),
          [&here, options] { here.run_in_process([] {}, options); }, why));
    }
    check_cases(cases);
  });
}

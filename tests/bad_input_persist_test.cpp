// Bad input to persist(), unpersist() and netns: moved-from Sets, missing
// kinds, files and folders that are taken or missing, shared mounts, taken and
// bad names. The cases are tables (support/cases.hpp): each call gives the
// documented error type, errno and a message naming what was being done,
// changes nothing and leaks nothing (the one Baseline after every case: fds,
// threads, child processes, namespaces), and the machine is left as found
// (mounts, names, folders).
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
using gonso::Set;
using test::Case;
using test::check_cases;
using test::invalid;
using test::logic;
using test::refused;

namespace fs = std::filesystem;

TEST_CASE("bad input: persist and netns", "[badinput][privileged][persist][netns]") {
  test::require_privilege();
  // netns::add makes /run/netns a mount of its own when it is none yet: undone after.
  test::netns_case([] {
    const test::PrivateTmpfs dir;
    const test::SharedTmpfs shared;
    const fs::path regular = dir.path() / "regular";
    std::ofstream(regular) << "not a namespace";
    const fs::path folder = dir.path() / "folder";
    fs::create_directory(folder);
    const fs::path missing = dir.path() / "missing";
    const Set here = Set::current();
    const Set uts = Set::current(Kind::uts);
    Set source = Set::current(Kind::net);
    const Set& moved_from = source;
    const Set keeper = std::move(source);
    // A name that is taken, and one that names a uts namespace.
    const std::string taken = test::own_prefix() + "taken";
    gonso::netns::add(keeper, taken);
    const test::Unpersist taken_guard{gonso::netns::path(taken)};
    const std::string not_net = test::own_prefix() + "uts";
    gonso::persist(uts, Kind::uts, gonso::netns::path(not_net));
    const test::Unpersist not_net_guard{gonso::netns::path(not_net)};
    const std::string unknown = test::own_prefix() + "unknown";
    const auto unchanged_file = [regular] {
      CHECK(test::mounts_at(regular.native()) == 0);
      CHECK(test::file_text(regular) == "not a namespace");
    };

    std::vector<Case> cases{
        invalid(
            "persist a kind of a moved-from Set", [&] { gonso::persist(moved_from, Kind::net, missing); },
            "holds no net namespace", test::absent(missing)),
        logic(
            "persist a moved-from Set into a folder", [&] { gonso::persist(moved_from, missing); },
            "cannot persist an empty Set", test::absent(missing)),
        invalid(
            "persist a kind the Set lacks", [&] { gonso::persist(uts, Kind::net, missing); }, "holds no net namespace",
            test::absent(missing)),
        refused(
            "persist into a missing folder", [&] { gonso::persist(here, Kind::net, missing / "net"); },
            std::errc::no_such_file_or_directory, "cannot create " + (missing / "net").native(), test::absent(missing)),
        refused(
            "persist onto an existing file", [&] { gonso::persist(here, Kind::net, regular); }, std::errc::file_exists,
            "cannot create " + regular.native(), unchanged_file),
        refused(
            "persist onto an existing folder", [&] { gonso::persist(here, Kind::uts, folder); }, std::errc::file_exists,
            "cannot create " + folder.native(), [&] { CHECK(test::mounts_at(folder.native()) == 0); }),
        refused(
            "persist a mount namespace onto a shared mount",
            [&] { gonso::persist(here, Kind::mnt, shared.path() / "mnt"); }, std::errc::invalid_argument,
            "its mount is shared", test::absent(shared.path() / "mnt")),
        refused(
            "persist a Set into a regular file", [&] { gonso::persist(here, regular); }, std::errc::not_a_directory,
            "cannot create " + regular.native(), unchanged_file),

        refused(
            "unpersist a regular file", [&] { gonso::unpersist(regular); }, std::errc::invalid_argument,
            "it is not a persisted namespace", unchanged_file),
        refused(
            "unpersist a folder", [&] { gonso::unpersist(folder); }, std::errc::invalid_argument,
            "it is not a persisted namespace", [&] { CHECK(fs::is_directory(folder)); }),
        refused(
            "unpersist a missing file", [&] { gonso::unpersist(missing); }, std::errc::no_such_file_or_directory,
            "cannot remove persisted " + missing.native()),
        refused(
            "unpersist a namespace file that is no mount", [] { gonso::unpersist("/proc/thread-self/ns/net"); },
            std::errc::invalid_argument, "cannot remove /proc/thread-self/ns/net: it is not a persisted namespace"),
        refused(
            "unpersist_dir of a folder with none", [&] { gonso::unpersist_dir(folder); },
            std::errc::no_such_file_or_directory, "holds no persisted namespace",
            [&] { CHECK(fs::is_directory(folder)); }),
        refused(
            "unpersist_dir of a missing folder", [&] { gonso::unpersist_dir(missing); },
            std::errc::no_such_file_or_directory, "holds no persisted namespace"),

        refused(
            "netns::create of a taken name", [&] { (void)gonso::netns::create(taken); }, std::errc::file_exists,
            "cannot create " + gonso::netns::path(taken).native()),
        refused(
            "netns::add of a taken name", [&] { gonso::netns::add(here, taken); }, std::errc::file_exists,
            "cannot create " + gonso::netns::path(taken).native()),
        invalid(
            "netns::add of a moved-from Set", [&] { gonso::netns::add(moved_from, unknown); }, "holds none",
            test::absent(gonso::netns::path(unknown))),
        invalid(
            "netns::add of a Set without net", [&] { gonso::netns::add(uts, unknown); }, "holds none",
            test::absent(gonso::netns::path(unknown))),
        refused(
            "netns::open of an unknown name", [&] { (void)gonso::netns::open(unknown); },
            std::errc::no_such_file_or_directory, "cannot open net namespace " + gonso::netns::path(unknown).native()),
        refused(
            "netns::open of a name for a uts namespace", [&] { (void)gonso::netns::open(not_net); },
            std::errc::invalid_argument, "it is a uts namespace"),
        refused(
            "netns::remove of an unknown name", [&] { gonso::netns::remove(unknown); },
            std::errc::no_such_file_or_directory, "cannot remove persisted"),
    };
    for (const auto& bad : test::bad_names()) {
      const std::string& name = bad.first;  // clang before 16 cannot capture structured bindings
      const std::string& why = bad.second;
      const std::string size = fmt::format("a name of {} bytes", name.size());
      cases.push_back(invalid(
          "netns::check_name of " + size, [name] { gonso::netns::check_name(name); }, why));
      cases.push_back(invalid(
          "netns::path of " + size, [name] { (void)gonso::netns::path(name); }, why));
      cases.push_back(invalid(
          "netns::create of " + size, [name] { (void)gonso::netns::create(name); }, why));
      cases.push_back(invalid(
          "netns::add of " + size, [&here, name] { gonso::netns::add(here, name); }, why));
      cases.push_back(invalid(
          "netns::open of " + size, [name] { (void)gonso::netns::open(name); }, why));
      cases.push_back(invalid(
          "netns::remove of " + size, [name] { gonso::netns::remove(name); }, why));
    }
    check_cases(cases);
  });
}

TEST_CASE("bad input: netns::add of a Set without net leaves /run/netns untouched", "[badinput][privileged][process]") {
  test::require_privilege();
  // Seen where /run/netns does not exist: in a child process whose own mount
  // namespace has an empty tmpfs on /run.
  struct outcome {
    int setup_errno;
    bool refused;
    bool made_run_netns;
  };
  const Set uts = Set::current(Kind::uts);
  outcome got{};
  test::leaves_machine_as_found([&] {
    got = uts.run_in_process([&uts] {
      outcome out{0, false, false};
      if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
          ::mount("gonso-test", "/run", "tmpfs", 0, "size=64k") != 0) {
        out.setup_errno = errno;
        return out;
      }
      try {
        gonso::netns::add(uts, "gonso-test-never");
      } catch (const std::invalid_argument&) {
        out.refused = true;
      }
      out.made_run_netns = ::access("/run/netns", F_OK) == 0;
      return out;
    });
  });
  REQUIRE(got.setup_errno == 0);
  CHECK(got.refused);
  CHECK_FALSE(got.made_run_netns);
}

// Bad input to spawn() and gonso::Child: argv, env, cwd, programs that cannot
// run, pids to adopt, empty Children, bad signals. The cases are tables
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
using gonso::Set;
using test::Case;
using test::check_cases;
using test::invalid;
using test::logic;
using test::refused;

namespace fs = std::filesystem;

TEST_CASE("bad input: spawn and Child", "[badinput][spawn]") {
  test::leaves_machine_as_found([] {
    const test::TempDir dir;
    const fs::path regular = dir.path() / "not-executable";
    std::ofstream(regular) << "#!/bin/sh\n";
    const fs::path missing = dir.path() / "missing";
    const Set here = Set::current();
    Set source = Set::current(Kind::uts);
    const Set& moved_from = source;
    const Set keeper = std::move(source);
    const pid_t gone = test::reaped_pid();
    const std::vector<std::string> true_argv{"/bin/true"};
    const auto with_env = [](std::vector<std::string> env) {
      gonso::SpawnOptions options;
      options.env = std::move(env);
      return options;
    };
    const auto in_dir = [](fs::path cwd) {
      gonso::SpawnOptions options;
      options.cwd = std::move(cwd);
      return options;
    };

    std::vector<Case> cases{
        invalid(
            "empty argv", [&] { (void)gonso::spawn(here, {}); }, "argv is empty"),
        invalid(
            "empty argv[0]",
            [&] {
              (void)gonso::spawn(here, {"", "x"});
            },
            "argv[0] is empty"),
        invalid(
            "NUL in argv[0]", [&] { (void)gonso::spawn(here, {std::string("/bin/true\0x", 11)}); },
            "an argument holds a NUL"),
        invalid(
            "NUL in an argument",
            [&] {
              (void)gonso::spawn(here, {"/bin/echo", std::string("a\0b", 3)});
            },
            "an argument holds a NUL"),
        invalid(
            "NUL in an env entry", [&] { (void)gonso::spawn(here, true_argv, with_env({std::string("A=\0B", 4)})); },
            "an env entry holds a NUL"),
        invalid(
            "an env entry without '='",
            [&] {
              (void)gonso::spawn(here, true_argv, with_env({"A=1", "JUSTANAME"}));
            },
            "env entry \"JUSTANAME\" is not NAME=value"),
        invalid(
            "NUL in cwd", [&] { (void)gonso::spawn(here, true_argv, in_dir(std::string("/tmp\0/x", 7))); },
            "the cwd holds a NUL"),
        refused(
            "a cwd that does not exist", [&] { (void)gonso::spawn(here, true_argv, in_dir(missing)); },
            std::errc::no_such_file_or_directory, "cannot change directory to " + missing.native()),
        refused(
            "a cwd that is a file", [&] { (void)gonso::spawn(here, true_argv, in_dir(regular)); },
            std::errc::not_a_directory, "cannot change directory to " + regular.native()),
        refused(
            "a program that does not exist", [&] { (void)gonso::spawn(here, {missing.native()}); },
            std::errc::no_such_file_or_directory, "cannot execute " + missing.native()),
        refused(
            "a program found in no PATH entry",
            [&] {
              (void)gonso::spawn(here, {"gonso-no-such-program"},
                                 with_env({"PATH=" + dir.path().native() + ":" + missing.native()}));
            },
            std::errc::no_such_file_or_directory, "cannot execute gonso-no-such-program (searched PATH"),
        refused(
            "a program that is a folder", [&] { (void)gonso::spawn(here, {dir.path().native()}); },
            std::errc::permission_denied, "cannot execute " + dir.path().native()),
        refused(
            "a program that is not executable", [&] { (void)gonso::spawn(here, {regular.native()}); },
            std::errc::permission_denied, "cannot execute " + regular.native()),
        logic(
            "spawn in a moved-from Set", [&] { (void)gonso::spawn(moved_from, true_argv); },
            "cannot spawn a program in an empty Set"),

        invalid(
            "adopt pid 0", [] { (void)gonso::Child::adopt(0); }, "cannot adopt pid 0"),
        invalid(
            "adopt a negative pid", [] { (void)gonso::Child::adopt(-5); }, "cannot adopt pid -5"),
        refused(
            "adopt a dead pid", [&] { (void)gonso::Child::adopt(gone); }, std::errc::no_such_process,
            fmt::format("cannot open a pidfd for pid {}", gone)),
        refused(
            "adopt oneself", [] { (void)gonso::Child::adopt(::getpid()); }, std::errc::no_child_process,
            "not a child process of the caller"),
        logic(
            "wait on an empty Child", [] { (void)gonso::Child().wait(); }, "cannot wait for an empty gonso::Child"),
        logic(
            "poll an empty Child", [] { (void)gonso::Child().poll(); }, "cannot poll an empty gonso::Child"),
        logic(
            "kill an empty Child", [] { gonso::Child().kill(); }, "cannot signal an empty gonso::Child"),
        logic(
            "read stdout of an empty Child", [] { (void)gonso::Child().read_stdout(); }, "it is not a pipe"),
        logic(
            "read stderr of a Child without a pipe",
            [&] {
              gonso::Child child = gonso::spawn(here, true_argv);
              (void)child.read_stderr();
            },
            "cannot read the stderr of pid"),
        refused(
            "signal 1000",
            [&] {
              gonso::Child child = gonso::spawn(here, {"/bin/sleep", "100"});
              child.kill(1000);
            },
            std::errc::invalid_argument, "cannot send signal 1000"),
        refused(
            "a negative signal",
            [&] {
              gonso::Child child = gonso::spawn(here, {"/bin/sleep", "100"});
              child.kill(-1);
            },
            std::errc::invalid_argument, "cannot send signal -1"),
    };
    for (const auto& bad : test::bad_names()) {
      const std::string& name = bad.first;  // clang before 16 cannot capture structured bindings
      const std::string& why = bad.second;
      gonso::SpawnOptions options;
      options.etc_of_netns = name;
      cases.push_back(invalid(
          fmt::format("spawn with etc_of_netns of {} bytes", name.size()),
          [&here, &true_argv, options] { (void)gonso::spawn(here, true_argv, options); }, why));
    }
    check_cases(cases);
  });
}

// gonso::spawn's options: stdio, the environment, the working directory,
// signal handling, fds, /etc/netns files; its failures name the step and the
// errno, and nothing is left behind (the one Baseline).
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <gonso/child.hpp>
#include <gonso/spawn.hpp>

#include "support/baseline.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/privilege.hpp"
#include "support/programs.hpp"
#include "support/tools.hpp"

using gonso::Child;
using gonso::ExitStatus;
using gonso::Kind;
using gonso::Set;
using gonso::SpawnOptions;
using gonso::Stdio;
using test::output_of;
using test::Ran;
using test::run;
using test::spawn_error;

namespace {

std::vector<int> fd_listing(const std::string& text) {
  std::vector<int> fds;
  std::istringstream in(text);
  std::string word;
  while (in >> word) fds.push_back(std::stoi(word));
  std::sort(fds.begin(), fds.end());
  return fds;
}

}  // namespace

TEST_CASE("spawn(): the program starts with default signal handling", "[spawn]") {
  const Set own = Set::current(Kind::uts);
  const test::Baseline base(test::Watch::fds);
  // An ignored signal stays ignored across execve, and a non-interactive sh
  // may not undo that; gonso resets it. A blocked one is unblocked.
  struct sigaction ignore {};
  struct sigaction old {};
  ignore.sa_handler = SIG_IGN;
  REQUIRE(::sigaction(SIGUSR1, &ignore, &old) == 0);
  const Ran usr1 = run(own, {"sh", "-c", "kill -USR1 $$; exit 3"});
  ::sigaction(SIGUSR1, &old, nullptr);
  CHECK(usr1.status == ExitStatus::killed_by(SIGUSR1));

  sigset_t term;
  sigset_t mask;
  ::sigemptyset(&term);
  ::sigaddset(&term, SIGUSR2);
  ::pthread_sigmask(SIG_BLOCK, &term, &mask);
  const Ran usr2 = run(own, {"sh", "-c", "kill -USR2 $$; exit 3"});
  ::pthread_sigmask(SIG_SETMASK, &mask, nullptr);
  CHECK(usr2.status == ExitStatus::killed_by(SIGUSR2));
  base.check();
}

TEST_CASE("spawn(): a stdin pipe reaches the program, its stdout comes back", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    const Set fresh = Set::current().unshare(Kind::net | Kind::mnt);
    Child cat = gonso::spawn(fresh, {"cat"}, {.in = Stdio::pipe, .out = Stdio::pipe, .err = Stdio::pipe});
    REQUIRE(cat.stdin_fd() >= 0);
    REQUIRE(cat.stdout_fd() >= 0);
    REQUIRE(cat.stderr_fd() >= 0);
    const std::string text = "hello\nworld\n";
    REQUIRE(gonso::detail::write_all(cat.stdin_fd(), text.data(), text.size()));
    cat.close_stdin();
    CHECK(cat.read_stdout() == text);
    CHECK(cat.read_stderr().empty());
    CHECK(cat.wait().success());

    Child quiet = gonso::spawn(fresh, {"true"});
    CHECK(quiet.stdin_fd() == -1);
    CHECK(quiet.stdout_fd() == -1);
    CHECK(quiet.stderr_fd() == -1);
    CHECK_THROWS_AS(quiet.read_stdout(), std::logic_error);
    CHECK(quiet.wait().success());

    const Ran err = run(fresh, {"sh", "-c", "echo oops >&2"}, {.err = Stdio::null});
    CHECK(err.out.empty());
  }
  base.check();
}

TEST_CASE("spawn(): the environment is the caller's, or exactly the one given", "[privileged][spawn]") {
  test::require_privilege();
  const Set fresh = Set::current().unshare(Kind::uts);
  CHECK(output_of(fresh, {"sh", "-c", "echo $FOO"}, {.env = std::vector<std::string>{"FOO=bar"}}) == "bar");
  // No PATH given: the program is looked for in /bin:/usr/bin.
  CHECK(output_of(fresh, {"env"}, {.env = std::vector<std::string>{"FOO=bar", "A=b c"}}) == "FOO=bar\nA=b c");
  CHECK(output_of(fresh, {"env"}, {.env = std::vector<std::string>{}}).empty());
  const char* path = std::getenv("PATH");
  REQUIRE(path != nullptr);
  CHECK(output_of(fresh, {"sh", "-c", "echo \"$PATH\""}) == path);
  // A PATH in the given environment is the one searched.
  try {
    (void)gonso::spawn(fresh, {"sh"}, {.env = std::vector<std::string>{"PATH=/nonexistent"}});
    FAIL("sh was found in /nonexistent");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    CHECK_THAT(e.what(), Catch::Contains("cannot execute sh (searched PATH /nonexistent)"));
  }
}

TEST_CASE("spawn(): the working directory, inside the Set's mount namespace", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set net = Set::current().unshare(Kind::net);
    const Set mnt = Set::current().unshare(Kind::mnt | Kind::net);
    CHECK(output_of(net, {"pwd"}, {.cwd = "/proc"}) == "/proc");
    // Not joining a mount namespace keeps the caller's directory; joining one
    // starts at its root.
    CHECK(output_of(net, {"pwd"}) == std::filesystem::current_path().string());
    CHECK(output_of(mnt, {"pwd"}) == "/");

    // A folder that exists only in the Set's mount namespace.
    const test::TempDir dir;
    const std::filesystem::path inside = dir.path() / "inside";
    mnt.run(false, [&] {
      if (::mount("gonso-test", dir.path().c_str(), "tmpfs", 0, "size=64k") != 0) {
        throw std::system_error(errno, std::generic_category(), "mount tmpfs");
      }
      std::filesystem::create_directory(inside);
    });
    REQUIRE_FALSE(std::filesystem::exists(inside));
    CHECK(output_of(mnt, {"pwd"}, {.cwd = inside}) == inside.string());
    // The caller's mount namespace lacks it.
    const std::system_error e = spawn_error(net, {"pwd"}, {.cwd = inside});
    CHECK(e.code() == std::errc::no_such_file_or_directory);
  }
  base.check({.children = false});
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("spawn(): the program gets fds 0, 1 and 2 and nothing else of the caller's", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    const Set fresh = Set::current().unshare(Kind::net | Kind::uts);
    const Set own = Set::current(Kind::uts);
    // An fd opened without O_CLOEXEC would reach a plain fork+exec; put it
    // far above what ls opens for itself.
    gonso::detail::unique_fd devnull(::open("/dev/null", O_RDONLY));
    REQUIRE(devnull);
    gonso::detail::unique_fd leaky(::fcntl(devnull.get(), F_DUPFD, 100));
    REQUIRE(leaky.get() >= 100);
    REQUIRE((::fcntl(leaky.get(), F_GETFD) & FD_CLOEXEC) == 0);

    const SpawnOptions options{.in = Stdio::null, .err = Stdio::null};
    const std::vector<int> inside = fd_listing(output_of(fresh, {"ls", "/proc/self/fd"}, options));
    const std::vector<int> baseline = fd_listing(output_of(own, {"ls", "/proc/self/fd"}, options));
    INFO("inside: " << fmt::format("{}", fmt::join(inside, " "))
                    << "; own: " << fmt::format("{}", fmt::join(baseline, " ")));
    CHECK(inside == baseline);
    // 0, 1, 2 and the directory ls reads; that one is the lowest free fd.
    REQUIRE(inside.size() == 4);
    CHECK(inside[0] == 0);
    CHECK(inside[1] == 1);
    CHECK(inside[2] == 2);
    CHECK(inside[3] == 3);
    CHECK(std::find(inside.begin(), inside.end(), leaky.get()) == inside.end());
    // Nor does any fd of the Set's: what each of the program's fds names, as
    // its kernel links read.
    const std::string links =
        output_of(fresh, {"sh", "-c", "for f in /proc/self/fd/*; do readlink $f; done; true"}, options);
    for (Kind kind : fresh.kinds()) {
      INFO("the program's fds name: " << links);
      CHECK(links.find(test::fd_link(fresh.fd(kind))) == std::string::npos);
    }
  }
  base.check();
}

TEST_CASE("spawn() failures: the step and the errno, and nothing left behind", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set fresh = Set::current().unshare(Kind::net | Kind::uts);
    test::ForeignNamespaces holder(CLONE_NEWPID);
    const Set pidns = Set::from_file(Kind::pid, holder.path(Kind::pid));
    const test::TempDir dir;
    const std::filesystem::path plain = dir.path() / "not-executable";
    std::ofstream(plain) << "#!/bin/sh\n";
    std::filesystem::permissions(plain, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    for (const Set* set : {&fresh, &pidns}) {
      DYNAMIC_SECTION((set == &fresh ? "fresh net and uts" : "pid namespace")) {
        std::system_error e = spawn_error(*set, {"/no/such"});
        CHECK(e.code() == std::errc::no_such_file_or_directory);
        CHECK_THAT(e.what(), Catch::StartsWith("cannot execute /no/such: "));

        e = spawn_error(*set, {"gonso-no-such-program"});
        CHECK(e.code() == std::errc::no_such_file_or_directory);
        CHECK_THAT(e.what(), Catch::StartsWith("cannot execute gonso-no-such-program (searched PATH "));

        e = spawn_error(*set, {plain.string()});
        CHECK(e.code() == std::errc::permission_denied);
        CHECK_THAT(e.what(), Catch::StartsWith(fmt::format("cannot execute {}: ", plain.string())));

        e = spawn_error(*set, {"true"}, {.cwd = "/no/such/dir"});
        CHECK(e.code() == std::errc::no_such_file_or_directory);
        CHECK_THAT(e.what(), Catch::StartsWith("cannot change directory to /no/such/dir: "));

        // Every process spawn() made is reaped: only the helper remains.
        CHECK(test::children() == std::set<pid_t>{holder.pid()});
      }
    }
  }
  base.check({.children = false});
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("spawn() without CAP_SYS_ADMIN cannot join, and says which namespace", "[privileged][spawn]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set fresh = Set::current().unshare(Kind::uts | Kind::net);
    std::optional<std::system_error> error;
    bool spawned = false;
    std::optional<ExitStatus> own;
    const std::exception_ptr unexpected = test::on_unprivileged_thread([&] {
      // The caller's own namespaces need no privilege: nothing is joined.
      own = gonso::spawn(Set::current(Kind::uts | Kind::net), {"true"}).wait();
      try {
        Child child = gonso::spawn(fresh, {"true"});
        spawned = true;
      } catch (const std::system_error& e) {
        error = e;
      }
    });
    REQUIRE_FALSE(unexpected);
    CHECK(own == ExitStatus::exited_with(0));
    CHECK_FALSE(spawned);
    REQUIRE(error.has_value());
    CHECK(error->code() == std::errc::operation_not_permitted);
    // uts is joined before net.
    CHECK_THAT(error->what(),
               Catch::StartsWith(fmt::format("cannot join uts namespace {}: ", fresh.identity(Kind::uts))));
  }
  base.check({.children = false});
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("spawn() refuses bad arguments before starting anything", "[spawn]") {
  const Set own = Set::current(Kind::uts);
  Set moved = Set::current(Kind::uts);
  const Set keeper = std::move(moved);
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  CHECK_THROWS_AS(gonso::spawn(own, {}), std::invalid_argument);
  CHECK_THROWS_WITH(gonso::spawn(own, {""}), Catch::Contains("argv[0] is empty"));
  CHECK_THROWS_AS(gonso::spawn(own, {"echo", std::string("a\0b", 3)}), std::invalid_argument);
  CHECK_THROWS_AS(gonso::spawn(own, {"env"}, {.env = std::vector<std::string>{std::string("A=\0", 3)}}),
                  std::invalid_argument);
  CHECK_THROWS_AS(gonso::spawn(moved, {"true"}), std::logic_error);  // NOLINT(bugprone-use-after-move)
  CHECK_THROWS_WITH(gonso::spawn(Set{}, {"true"}), Catch::Contains("empty Set"));
  base.check({.children = false});
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("spawn: /etc/netns/NAME files are bound over /etc as ip netns exec does", "[privileged][spawn][netns]") {
  test::require_privilege();
  const std::string name = fmt::format("gonso-etc-{}", ::getpid());
  const test::EtcNetnsFiles etc(name, {{"resolv.conf", "nameserver 192.0.2.53\n"}});
  const std::string host_resolv = test::file_text("/etc/resolv.conf");

  const Set net = Set::current().unshare(Kind::net);
  SpawnOptions options;
  options.out = Stdio::pipe;
  options.etc_of_netns = name;
  Child cat = gonso::spawn(net, {"cat", "/etc/resolv.conf"}, options);
  CHECK(cat.read_stdout() == "nameserver 192.0.2.53\n");
  CHECK(cat.wait().success());
  // Only the program's own mount namespace saw the file.
  const std::string after = test::file_text("/etc/resolv.conf");
  CHECK(after == host_resolv);

  SpawnOptions bad;
  bad.etc_of_netns = "../etc";
  CHECK_THROWS_AS(gonso::spawn(net, {"true"}, bad), std::invalid_argument);
}

TEST_CASE("spawn(): the program gets the caller's environment as it is now", "[spawn]") {
  const Set own = Set::current(Kind::uts);
  REQUIRE(::setenv("GONSO_SPAWN_TEST", "now", 1) == 0);
  const Ran ran = run(own, {"sh", "-c", "echo $GONSO_SPAWN_TEST"});
  ::unsetenv("GONSO_SPAWN_TEST");
  CHECK(ran.status.success());
  CHECK(ran.out == "now\n");
  CHECK(run(own, {"sh", "-c", "echo ${GONSO_SPAWN_TEST-unset}"}).out == "unset\n");

  // After clearenv() environ is null: the program gets no variables.
  std::vector<std::string> saved;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) saved.emplace_back(*entry);
  REQUIRE(::clearenv() == 0);
  std::optional<Ran> empty;
  try {
    empty = run(own, {"/usr/bin/env"});
  } catch (...) {
  }
  for (const std::string& entry : saved) {
    const std::size_t eq = entry.find('=');
    ::setenv(entry.substr(0, eq).c_str(), entry.substr(eq + 1).c_str(), 1);
  }
  REQUIRE(empty.has_value());
  CHECK(empty->status.success());
  CHECK(empty->out.empty());
}

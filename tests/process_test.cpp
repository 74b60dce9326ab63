// The process half of gonso: Set::run_in_process, its values, errors and
// reports, and what it does with forks, SIGCHLD and the thread run().
// Identities are read inside with stat(2) of /proc/self/ns/* (a process's own
// links), never through gonso.
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
using gonso::Kinds;
using gonso::Set;

namespace {

struct Identities {
  std::array<gonso::Identity, 8> ids;
};

Identities identities_here() {
  Identities out{};
  for (std::size_t i = 0; i < gonso::all_kinds.size(); ++i) out.ids[i] = test::process_ns(gonso::all_kinds[i]);
  return out;
}

}  // namespace

TEST_CASE("run_in_process joins every kind, user, pid and time included", "[privileged][process]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::children);
  const test::Snapshot caller = test::snapshot();
  {
    const Set fresh = Set::current(Kinds::all()).unshare(Kinds::all());
    for (Kind kind : gonso::all_kinds) {
      INFO(gonso::name(kind));
      CHECK(fresh.identity(kind) != caller.at(kind));
    }
    struct Inside {
      Identities ns;
      pid_t pid;
      uid_t uid;
    };
    const Inside inside = fresh.run_in_process([] { return Inside{identities_here(), ::getpid(), ::getuid()}; });
    for (std::size_t i = 0; i < gonso::all_kinds.size(); ++i) {
      const Kind kind = gonso::all_kinds[i];
      INFO(gonso::name(kind));
      CHECK(inside.ns.ids[i] == fresh.identity(kind));
    }
    CHECK(inside.pid == 2);  // pid 1 is the namespace's init
    CHECK(inside.uid == 0);
    CHECK(test::snapshot() == caller);
  }
  // The Set was the last owner of its pid namespace's init, a child of ours.
  base.check();
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("run_in_process returns values and reports exceptions, signals and exits", "[privileged][process]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  struct Pair {
    int a;
    double b;
  };
  CHECK(net.run_in_process([] { return 42; }) == 42);
  const Pair p = net.run_in_process([] { return Pair{7, 2.5}; });
  CHECK(p.a == 7);
  CHECK(p.b == 2.5);
  CHECK(net.run_in_process([] { return std::string(100000, 'y'); }) == std::string(100000, 'y'));
  net.run_in_process([] {});

  try {
    net.run_in_process([]() -> int { throw std::out_of_range("too far"); });
    FAIL("nothing thrown");
  } catch (const gonso::ProcessError& e) {
    CHECK(e.cause() == gonso::ProcessError::Cause::exception);
    CHECK(e.exception_type() == "std::out_of_range");
    CHECK(e.message() == "too far");
    CHECK_THAT(e.what(), Catch::Contains("std::out_of_range") && Catch::Contains("too far"));
  }
  try {
    net.run_in_process([] { ::raise(SIGKILL); });
    FAIL("nothing thrown");
  } catch (const gonso::ProcessError& e) {
    CHECK(e.cause() == gonso::ProcessError::Cause::signal);
    CHECK(e.signal() == SIGKILL);
  }
  try {
    net.run_in_process([] { ::_exit(3); });
    FAIL("nothing thrown");
  } catch (const gonso::ProcessError& e) {
    CHECK(e.cause() == gonso::ProcessError::Cause::exit);
    CHECK(e.exit_code() == 3);
  }
  base.check();
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("run_in_process reports a failed join with its errno", "[privileged][process]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::children);
  const Set net = Set::current().unshare(Kind::net);
  std::error_code code;
  std::string message;
  std::thread([&] {
    test::drop_cap_sys_admin_on_this_thread();  // the forked child inherits this thread's credentials
    try {
      net.run_in_process([] {});
    } catch (const std::system_error& e) {
      code = e.code();
      message = e.what();
    }
  }).join();
  CHECK(code == std::errc::operation_not_permitted);
  CHECK_THAT(message, Catch::StartsWith(fmt::format("cannot join net namespace {}", net.identity(Kind::net))));
  base.check();
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("thread run() on a Set with a new user namespace names the process mode", "[privileged][process]") {
  test::require_privilege();
  const Set u = Set::current().unshare(Kind::user | Kind::net);
  try {
    u.run(true, [] {});
    FAIL("a thread joined a user namespace");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("child process"));
  }
  CHECK(u.run_in_process([] { return test::process_ns(Kind::net); }) == u.identity(Kind::net));
}

TEST_CASE("a forked copy that lets go of a pid namespace leaves it to the owner", "[privileged][process][fork]") {
  test::require_privilege();
  Set p = Set::current().unshare(Kind::pid);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    p = Set{};  // the child's copy of the last reference goes
    ::_exit(0);
  }
  REQUIRE(::waitpid(child, nullptr, 0) == child);
  CHECK(p.run_in_process([] { return ::getpid(); }) > 1);
}

TEST_CASE("run_in_process returns when the child ends, not when its forks let go", "[privileged][process]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  int hold[2];
  REQUIRE(::pipe2(hold, O_CLOEXEC) == 0);
  const auto started = std::chrono::steady_clock::now();
  // The grandchild keeps every fd of the child, the report's included, and
  // lives until this test closes its end of `hold` (at most 5 s).
  const pid_t grandchild = net.run_in_process([&] {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(hold[1]);
      pollfd wait{hold[0], POLLIN, 0};
      (void)::poll(&wait, 1, 5000);
      ::_exit(0);
    }
    return pid;
  });
  const auto took = std::chrono::steady_clock::now() - started;
  const bool alive = std::filesystem::exists(fmt::format("/proc/{}", grandchild));
  ::close(hold[1]);
  ::close(hold[0]);
  CHECK(grandchild > 0);
  CHECK(alive);
  CHECK(took < std::chrono::seconds(2));
  // Orphaned, it is reaped by the caller's init once it read end of file.
  CHECK(test::gone(grandchild, std::chrono::seconds(3)));
  base.check();
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("run_in_process carries reports larger than a pipe holds", "[privileged][process]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  std::optional<Set> pidns = Set::current().unshare(Kind::pid);
  for (const Set* set : {&net, static_cast<const Set*>(&*pidns)}) {
    std::string big(std::size_t{3} << 20, '\0');
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 23);
    CHECK(set->run_in_process([&] { return big; }) == big);
    struct Large {
      std::array<std::uint64_t, 40000> words;  // 320 KB, past the pipe's 64 KB
    };
    const auto large = std::make_unique<Large>(set->run_in_process([] {
      Large l{};
      for (std::size_t i = 0; i < l.words.size(); ++i) l.words[i] = i * 7;
      return l;
    }));
    CHECK(large->words[39999] == std::uint64_t{39999} * 7);
    try {
      set->run_in_process([&] { throw std::runtime_error(big); });
      FAIL("nothing thrown");
    } catch (const gonso::ProcessError& e) {
      CHECK(e.exception_type() == "std::runtime_error");
      CHECK(e.message() == big);
    }
  }
  pidns.reset();  // its init, a child of ours, goes with it
  base.check();
  CHECK(base.children().empty());  // none before, so none left
}

TEST_CASE("run_in_process returns its value when SIGCHLD is ignored", "[privileged][process]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  struct sigaction ignore {};
  struct sigaction old {};
  ignore.sa_handler = SIG_IGN;
  REQUIRE(::sigaction(SIGCHLD, &ignore, &old) == 0);
  // The kernel reaps the child by itself, maybe before its pidfd is opened.
  int values = 0;
  for (int i = 0; i < 20; ++i) values += net.run_in_process([] { return 1; });
  std::error_code error;
  try {
    net.run_in_process([] { ::_exit(0); });  // no report: only the lost exit status could tell
  } catch (const std::system_error& e) {
    error = e.code();
  }
  ::sigaction(SIGCHLD, &old, nullptr);
  CHECK(values == 20);
  CHECK(error == std::errc::no_child_process);
}

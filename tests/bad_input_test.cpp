// Every public entry point fed bad input: each gives the documented error
// type, errno and a message naming what was being done, changes nothing and
// leaks nothing (fds, threads, child processes, mounts, names, folders).
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

namespace {

namespace fs = std::filesystem;

enum class Expect { invalid_argument, logic_error, system_error };

struct Case {
  std::string what;
  std::function<void()> call;
  Expect expect;
  std::errc code{};              // for system_error
  std::string message_part{};    // must appear in what()
  std::function<void()> then{};  // further checks that nothing was made or changed
};

Case invalid(std::string what, std::function<void()> call, std::string part, std::function<void()> then = {}) {
  return {std::move(what), std::move(call), Expect::invalid_argument, {}, std::move(part), std::move(then)};
}
Case logic(std::string what, std::function<void()> call, std::string part, std::function<void()> then = {}) {
  return {std::move(what), std::move(call), Expect::logic_error, {}, std::move(part), std::move(then)};
}
Case refused(std::string what, std::function<void()> call, std::errc code, std::string part,
             std::function<void()> then = {}) {
  return {std::move(what), std::move(call), Expect::system_error, code, std::move(part), std::move(then)};
}

/// A child that exits at once; not reaped. Output is flushed first, so that
/// no copy of a buffer is written twice (ThreadSanitizer's _exit flushes).
pid_t exiting_child() {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  return pid;
}

pid_t reaped_pid() {
  const pid_t gone = exiting_child();
  ::waitpid(gone, nullptr, 0);
  return gone;
}

/// True when a child has ended and waits to be reaped (looked at, not reaped).
bool zombie_child() {
  siginfo_t info{};
  if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT | __WALL) != 0) return errno != ECHILD;
  return info.si_pid != 0;
}

/// Calls every case, checks its exception, then that the caller's
/// namespaces, threads, worker policy, fds and children are as they were.
void check_cases(const std::vector<Case>& cases) {
  const std::size_t threads = test::thread_baseline();
  const test::Snapshot caller = test::snapshot();
  const gonso::WorkerPolicy policy = gonso::worker_policy();
  const std::size_t fds = test::count_fds();
  const std::set<pid_t> kids = test::children();
  REQUIRE_FALSE(zombie_child());
  for (const Case& c : cases) {
    INFO(c.what);
    std::string message;
    try {
      c.call();
      FAIL_CHECK("no exception");
    } catch (const std::system_error& e) {
      CHECK(c.expect == Expect::system_error);
      CHECK(e.code() == c.code);
      message = e.what();
    } catch (const std::invalid_argument& e) {
      CHECK(c.expect == Expect::invalid_argument);
      message = e.what();
    } catch (const std::logic_error& e) {
      CHECK(c.expect == Expect::logic_error);
      message = e.what();
    }
    INFO(message);
    CHECK_THAT(message, Catch::Contains(c.message_part));
    if (c.then) c.then();
    // Nothing changed, nothing leaked. Idle workers hold fds of their own
    // (their original namespaces), so retire them before counting.
    CHECK(test::snapshot() == caller);
    CHECK(test::threads_outside(caller).empty());
    const gonso::WorkerPolicy now = gonso::worker_policy();
    CHECK(now.max_idle == policy.max_idle);
    CHECK(now.idle_timeout == policy.idle_timeout);
    CHECK(now.spin == policy.spin);
    gonso::retire_idle_workers();
    CHECK(test::count_fds() == fds);
    CHECK(test::threads_settled_at(threads) == threads);
    CHECK(test::children() == kids);
    CHECK_FALSE(zombie_child());
  }
}

/// The names netns and /etc/netns refuse, and the words that say why.
std::vector<std::pair<std::string, std::string>> bad_names() {
  return {
      {"", "it is empty"},
      {".", "it names a folder"},
      {"..", "it names a folder"},
      {"a/b", "it holds a '/'"},
      {"../../etc", "it holds a '/'"},
      {std::string("blue\0red", 8), "it holds a NUL"},
      {std::string(300, 'n'), "longer than 255 bytes"},
  };
}

/// A file or folder that must not exist after the case.
std::function<void()> absent(fs::path path) {
  return [path = std::move(path)] {
    std::error_code ec;
    CHECK_FALSE(fs::exists(fs::symlink_status(path, ec)));
  };
}

/// Unpersists `file` when destroyed, if it is still persisted.
struct Unpersist {
  explicit Unpersist(fs::path f) : file(std::move(f)) {}
  Unpersist(const Unpersist&) = delete;
  Unpersist& operator=(const Unpersist&) = delete;
  ~Unpersist() {
    try {
      gonso::unpersist(file);
    } catch (...) {
    }
  }
  fs::path file;
};

}  // namespace

TEST_CASE("bad input: Kinds, Set sources and kind_of", "[badinput]") {
  test::leaves_machine_as_found([] {
    const test::TempDir dir;
    const fs::path regular = dir.path() / "regular";
    std::ofstream(regular) << "not a namespace";
    const fs::path empty_dir = dir.path() / "empty";
    fs::create_directory(empty_dir);
    const fs::path fake_ns_dir = dir.path() / "fake";  // a regular file named "net"
    fs::create_directory(fake_ns_dir);
    std::ofstream(fake_ns_dir / "net") << "not a namespace";
    const fs::path missing = dir.path() / "missing";
    const pid_t gone = reaped_pid();
    const gonso::detail::unique_fd uts_fd(::open("/proc/thread-self/ns/uts", O_RDONLY | O_CLOEXEC));
    REQUIRE(uts_fd);
    const gonso::detail::unique_fd regular_fd(::open(regular.c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(regular_fd);
    // The number of an fd that was open a moment ago.
    const auto closed_fd = [] {
      const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      ::close(fd);
      return fd;
    };

    const std::vector<Case> cases{
        invalid(
            "unknown flag bit", [] { (void)Kinds::from_clone_flags(CLONE_VM); }, "0x00000100 (CLONE_VM)"),
        invalid(
            "a kind and a thread flag", [] { (void)Kinds::from_clone_flags(CLONE_NEWNET | CLONE_THREAD); },
            "CLONE_THREAD"),
        invalid(
            "a bit above 32", [] { (void)Kinds::from_clone_flags(std::uint64_t{1} << 40); },
            "unknown namespace flag bits"),

        invalid(
            "pid 0", [] { (void)Set::from_pid(0); }, "pid 0"),
        invalid(
            "negative pid", [] { (void)Set::from_pid(-1); }, "pid -1"),
        refused(
            "a dead pid", [&] { (void)Set::from_pid(gone); }, std::errc::no_such_process,
            fmt::format("cannot open namespaces of pid {}", gone)),

        refused(
            "pidfd -1", [] { (void)Set::from_pidfd(-1); }, std::errc::bad_file_descriptor, "cannot inspect pidfd -1"),
        refused(
            "a closed pidfd", [&] { (void)Set::from_pidfd(closed_fd()); }, std::errc::bad_file_descriptor,
            "cannot inspect pidfd"),
        refused(
            "a regular file as pidfd", [&] { (void)Set::from_pidfd(regular_fd.get()); }, std::errc::invalid_argument,
            "it is not one"),
        refused(
            "a namespace fd as pidfd", [&] { (void)Set::from_pidfd(uts_fd.get()); }, std::errc::invalid_argument,
            "it is not one"),
        refused(
            "the pidfd of a reaped process",
            [] {
              const pid_t pid = exiting_child();
              const gonso::detail::unique_fd pidfd(gonso::detail::pidfd_open(pid));
              ::waitpid(pid, nullptr, 0);
              REQUIRE(pidfd);
              (void)Set::from_pidfd(pidfd.get());
            },
            std::errc::no_such_process, "its process has ended"),
        refused(
            "the pidfd of a zombie",
            [] {
              const pid_t pid = exiting_child();
              struct reaper {
                pid_t pid;
                ~reaper() { ::waitpid(pid, nullptr, 0); }
              } reap{pid};
              siginfo_t info{};
              ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT);  // a zombie now
              const gonso::detail::unique_fd pidfd(gonso::detail::pidfd_open(pid));
              REQUIRE(pidfd);
              (void)Set::from_pidfd(pidfd.get());
            },
            std::errc::no_such_process, "it has exited"),

        refused(
            "a folder with no namespace files", [&] { (void)Set::from_dir(empty_dir); },
            std::errc::no_such_file_or_directory, "holds no namespace file"),
        refused(
            "a missing folder", [&] { (void)Set::from_dir(missing); }, std::errc::no_such_file_or_directory,
            "cannot open namespace folder " + missing.native()),
        refused(
            "a regular file as folder", [&] { (void)Set::from_dir(regular); }, std::errc::not_a_directory,
            "cannot open namespace folder"),
        refused(
            "a folder whose net file is no namespace", [&] { (void)Set::from_dir(fake_ns_dir); },
            std::errc::invalid_argument, "not a namespace file"),
        refused(
            "a folder lacking a kind asked for", [&] { (void)Set::from_dir(fake_ns_dir, Kind::uts); },
            std::errc::no_such_file_or_directory, "cannot open uts namespace"),
        refused(
            "no kinds from a folder", [] { (void)Set::from_dir("/proc/self/ns", Kinds{}); },
            std::errc::no_such_file_or_directory, "holds no namespace file"),

        refused(
            "a regular file", [&] { (void)Set::from_file(Kind::net, regular); }, std::errc::invalid_argument,
            "not a namespace file"),
        refused(
            "a folder as namespace file", [&] { (void)Set::from_file(Kind::net, empty_dir); },
            std::errc::invalid_argument, "not a namespace file"),
        refused(
            "a missing file", [&] { (void)Set::from_file(Kind::net, missing); }, std::errc::no_such_file_or_directory,
            "cannot open net namespace " + missing.native()),
        refused(
            "a file of the wrong kind", [] { (void)Set::from_file(Kind::net, "/proc/thread-self/ns/uts"); },
            std::errc::invalid_argument, "it is a uts namespace"),

        refused(
            "an fd of the wrong kind", [&] { (void)Set::from_fd(Kind::mnt, uts_fd.get()); },
            std::errc::invalid_argument, "it is a uts namespace"),
        refused(
            "a regular file's fd", [&] { (void)Set::from_fd(Kind::net, regular_fd.get()); },
            std::errc::invalid_argument, "not a namespace file"),
        refused(
            "a closed fd", [&] { (void)Set::from_fd(Kind::net, closed_fd()); }, std::errc::bad_file_descriptor,
            "cannot inspect fd"),
        refused(
            "an fd past the limit", [] { (void)Set::from_fd(Kind::net, 1'000'000); }, std::errc::bad_file_descriptor,
            "fd 1000000"),
        refused(
            "a negative fd", [] { (void)Set::from_fd(Kind::net, -1); }, std::errc::bad_file_descriptor,
            "cannot inspect fd -1"),

        refused(
            "kind_of a negative fd", [] { (void)gonso::kind_of(-1); }, std::errc::bad_file_descriptor,
            "cannot inspect fd -1"),
        refused(
            "kind_of a closed fd", [&] { (void)gonso::kind_of(closed_fd()); }, std::errc::bad_file_descriptor,
            "cannot inspect fd"),
        refused(
            "kind_of a regular file", [&] { (void)gonso::kind_of(regular_fd.get()); }, std::errc::invalid_argument,
            "is not a namespace"),
    };
    check_cases(cases);
    // A name that is no kind's is no error, only no kind.
    for (const std::string& text : {std::string(), std::string("NET"), std::string("net\0", 4), std::string("nett")}) {
      CHECK_FALSE(gonso::kind_from_name(text).has_value());
    }
  });
}

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
    for (const auto& bad : bad_names()) {
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
    const pid_t gone = reaped_pid();
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
    for (const auto& bad : bad_names()) {
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
    const Unpersist taken_guard{gonso::netns::path(taken)};
    const std::string not_net = test::own_prefix() + "uts";
    gonso::persist(uts, Kind::uts, gonso::netns::path(not_net));
    const Unpersist not_net_guard{gonso::netns::path(not_net)};
    const std::string unknown = test::own_prefix() + "unknown";
    const auto unchanged_file = [regular] {
      CHECK(test::mounts_at(regular.native()) == 0);
      CHECK(test::file_text(regular) == "not a namespace");
    };

    std::vector<Case> cases{
        invalid(
            "persist a kind of a moved-from Set", [&] { gonso::persist(moved_from, Kind::net, missing); },
            "holds no net namespace", absent(missing)),
        logic(
            "persist a moved-from Set into a folder", [&] { gonso::persist(moved_from, missing); },
            "cannot persist an empty Set", absent(missing)),
        invalid(
            "persist a kind the Set lacks", [&] { gonso::persist(uts, Kind::net, missing); }, "holds no net namespace",
            absent(missing)),
        refused(
            "persist into a missing folder", [&] { gonso::persist(here, Kind::net, missing / "net"); },
            std::errc::no_such_file_or_directory, "cannot create " + (missing / "net").native(), absent(missing)),
        refused(
            "persist onto an existing file", [&] { gonso::persist(here, Kind::net, regular); }, std::errc::file_exists,
            "cannot create " + regular.native(), unchanged_file),
        refused(
            "persist onto an existing folder", [&] { gonso::persist(here, Kind::uts, folder); }, std::errc::file_exists,
            "cannot create " + folder.native(), [&] { CHECK(test::mounts_at(folder.native()) == 0); }),
        refused(
            "persist a mount namespace onto a shared mount",
            [&] { gonso::persist(here, Kind::mnt, shared.path() / "mnt"); }, std::errc::invalid_argument,
            "its mount is shared", absent(shared.path() / "mnt")),
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
            absent(gonso::netns::path(unknown))),
        invalid(
            "netns::add of a Set without net", [&] { gonso::netns::add(uts, unknown); }, "holds none",
            absent(gonso::netns::path(unknown))),
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
    for (const auto& bad : bad_names()) {
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

TEST_CASE("bad input: Executor and Pool", "[badinput][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const Set here = Set::current();
    const Set uts = Set::current(Kind::uts);
    Set source = Set::current(Kind::net);
    const Set& moved_from = source;
    const Set keeper = std::move(source);
    const test::ForeignNamespaces user_holder(CLONE_NEWUSER);
    const Set user = Set::from_file(Kind::user, user_holder.path(Kind::user));
    const test::ForeignNamespaces time_holder(CLONE_NEWTIME);
    const Set time = Set::from_file(Kind::time, time_holder.path(Kind::time));
    const auto pool_options = [](auto&& change) {
      gonso::PoolOptions options;
      change(options);
      return options;
    };

    const std::vector<Case> cases{
        logic(
            "an Executor in a moved-from Set", [&] { const gonso::Executor ex(moved_from); },
            "cannot run an executor in an empty Set"),
        logic(
            "an unverified Executor in a moved-from Set",
            [&] { const gonso::Executor ex(moved_from, {.verify_each_run = false}); },
            "cannot run an executor in an empty Set"),
        refused(
            "an Executor in a foreign user namespace", [&] { const gonso::Executor ex(user); },
            std::errc::invalid_argument, "cannot join user namespace"),
        refused(
            "an Executor in a foreign time namespace", [&] { const gonso::Executor ex(time); },
            std::errc::invalid_argument, "cannot join time namespace"),
        logic(
            "run on a moved-from Executor",
            [&] {
              gonso::Executor ex(uts);
              const gonso::Executor& moved = ex;
              const gonso::Executor keeper_ex = std::move(ex);
              moved.run([] {});
            },
            "cannot run on a moved-from gonso::Executor"),
        logic(
            "set() of a moved-from Executor",
            [&] {
              gonso::Executor ex(uts);
              const gonso::Executor& moved = ex;
              const gonso::Executor keeper_ex = std::move(ex);
              (void)moved.set();
            },
            "has no Set"),

        logic(
            "a Pool of a moved-from Set", [&] { const gonso::Pool pool(moved_from, Kind::net); },
            "cannot make a Pool from an empty Set"),
        invalid(
            "a Pool of no kinds", [&] { const gonso::Pool pool(here, Kinds{}); }, "no namespace kinds"),
        invalid(
            "a Pool of size 0",
            [&] { const gonso::Pool pool(here, Kind::net, pool_options([](auto& o) { o.size = 0; })); }, "size 0"),
        invalid(
            "a zero retry delay",
            [&] {
              const gonso::Pool pool(here, Kind::net,
                                     pool_options([](auto& o) { o.retry_delay = std::chrono::milliseconds(0); }));
            },
            "retry_delay (0 ms) must be positive"),
        invalid(
            "a negative retry delay",
            [&] {
              const gonso::Pool pool(here, Kind::net,
                                     pool_options([](auto& o) { o.retry_delay = std::chrono::milliseconds(-5); }));
            },
            "must be positive"),
        invalid(
            "max_retry_delay below retry_delay",
            [&] {
              const gonso::Pool pool(here, Kind::net, pool_options([](auto& o) {
                                       o.retry_delay = std::chrono::milliseconds(50);
                                       o.max_retry_delay = std::chrono::milliseconds(20);
                                     }));
            },
            "at most max_retry_delay (20 ms)"),
        invalid(
            "a negative max_retry_delay",
            [&] {
              const gonso::Pool pool(here, Kind::net,
                                     pool_options([](auto& o) { o.max_retry_delay = std::chrono::milliseconds(-1); }));
            },
            "at most max_retry_delay (-1 ms)"),
        invalid(
            "a Pool with id maps and no user namespace",
            [&] {
              const gonso::Pool pool(here, Kind::net, pool_options([](auto& o) { o.unshare.uid_map = {{0, 0, 1}}; }));
            },
            "none is unshared"),
        invalid(
            "a Pool with time offsets and no time namespace",
            [&] {
              const gonso::Pool pool(here, Kind::uts,
                                     pool_options([](auto& o) { o.unshare.boottime_offset = std::chrono::hours(1); }));
            },
            "time offsets"),
        invalid(
            "a Pool with overlapping maps",
            [&] {
              const gonso::Pool pool(here, Kind::user | Kind::net, pool_options([](auto& o) {
                                       o.unshare.uid_map = {{0, 0, 5}, {4, 9, 1}};
                                     }));
            },
            "overlap"),
        invalid(
            "put a moved-from Set into a Pool",
            [&] {
              gonso::Pool pool(uts, Kind::uts, pool_options([](auto& o) { o.size = 1; }));
              Set taken = pool.get();
              const Set& gone = taken;
              const Set kept = std::move(taken);
              (void)pool.put(gone);
            },
            "cannot put an empty Set"),
    };
    check_cases(cases);
  });
}

TEST_CASE("bad input: the worker policy refuses negative durations and caps long ones", "[badinput]") {
  const gonso::WorkerPolicy before = gonso::worker_policy();
  struct restore_policy {
    gonso::WorkerPolicy policy;
    ~restore_policy() { gonso::set_worker_policy(policy); }
  } restore{before};
  const std::vector<Case> cases{
      invalid(
          "a negative idle timeout",
          [] { gonso::set_worker_policy({.max_idle = 1, .idle_timeout = std::chrono::milliseconds(-1)}); },
          "idle_timeout must not be negative"),
      invalid(
          "a negative spin", [] { gonso::set_worker_policy({.spin = std::chrono::microseconds(-1)}); },
          "spin must not be negative"),
      invalid(
          "both negative",
          [] {
            gonso::set_worker_policy(
                {.idle_timeout = std::chrono::milliseconds(-1), .spin = std::chrono::microseconds(-1)});
          },
          "must not be negative"),
  };
  check_cases(cases);

  // Out of range upwards is documented as capped, not refused.
  gonso::set_worker_policy(
      {.max_idle = before.max_idle, .idle_timeout = std::chrono::hours(24 * 400), .spin = std::chrono::seconds(1)});
  const gonso::WorkerPolicy capped = gonso::worker_policy();
  CHECK(capped.spin == gonso::detail::longest_spin);
  CHECK(capped.idle_timeout == gonso::detail::longest_wait);
  CHECK(capped.max_idle == before.max_idle);
}

namespace {

// clone3(2)'s arguments, as far as set_tid (linux/sched.h, which clashes
// with <sched.h>).
struct clone3_args {
  std::uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size;
};

/// A child born with exactly the pid `number` (clone3 with set_tid, which
/// needs CAP_SYS_ADMIN), in net and uts namespaces of its own, that sits
/// until destroyed. pid() is -1, error() the errno, when it could not be made
/// (EEXIST: the number is taken).
class ChildAtPid {
 public:
  explicit ChildAtPid(pid_t number) {
    pid_t tid = number;
    clone3_args args{};
    args.flags = CLONE_NEWNET | CLONE_NEWUTS;
    args.exit_signal = SIGCHLD;
    args.set_tid = reinterpret_cast<std::uintptr_t>(&tid);
    args.set_tid_size = 1;
    const pid_t parent = ::getpid();
    pid_ = static_cast<pid_t>(::syscall(SYS_clone3, &args, sizeof args));
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      for (;;) ::pause();
    }
    if (pid_ < 0) error_ = errno;
  }
  ChildAtPid(const ChildAtPid&) = delete;
  ChildAtPid& operator=(const ChildAtPid&) = delete;
  ~ChildAtPid() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] int error() const { return error_; }

 private:
  pid_t pid_ = -1;
  int error_ = 0;
};

}  // namespace

TEST_CASE("bad input: a pidfd does not follow its pid number to a new process", "[badinput][privileged]") {
  test::require_privilege();
  // The pid of a process that ended and was reaped, and its pidfd; then a new
  // process with that very number, in namespaces other than the caller's.
  // Another process of the machine may take the number first: try again.
  std::optional<ChildAtPid> reused;
  gonso::detail::unique_fd stale;
  pid_t number = -1;
  for (int attempt = 0; attempt < 20 && !(reused && reused->pid() > 0); ++attempt) {
    number = exiting_child();
    REQUIRE(number > 0);
    stale = gonso::detail::unique_fd(gonso::detail::pidfd_open(number));
    ::waitpid(number, nullptr, 0);
    REQUIRE(stale);
    reused.reset();
    reused.emplace(number);
    if (reused->pid() < 0) REQUIRE(reused->error() == EEXIST);
  }
  REQUIRE(reused->pid() == number);
  const std::string net_link = fmt::format("/proc/{}/ns/net", number);
  // The number names the new process now, which is in another net namespace.
  REQUIRE(test::identity_at(Kind::net, net_link) != test::thread_ns(Kind::net));
  CHECK(Set::from_pid(number, Kind::net).identity(Kind::net) == test::identity_at(Kind::net, net_link));

  const std::vector<Case> cases{
      refused(
          "the pidfd of a process whose pid was reused", [&] { (void)Set::from_pidfd(stale.get()); },
          std::errc::no_such_process, "its process has ended"),
      refused(
          "the same, for the net namespace alone", [&] { (void)Set::from_pidfd(stale.get(), Kind::net); },
          std::errc::no_such_process, "its process has ended"),
  };
  check_cases(cases);
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

// gonso::spawn and gonso::Child: the program runs inside exactly the Set's
// namespaces (as the kernel's links read), is the caller's own child, gets
// what the options say and nothing else, and nothing is left behind.
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

#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

using gonso::Child;
using gonso::ExitStatus;
using gonso::Kind;
using gonso::Set;
using gonso::SpawnOptions;
using gonso::Stdio;

namespace Catch {
template <>
struct StringMaker<ExitStatus> {
  static std::string convert(const ExitStatus& status) { return fmt::format("{}", status); }
};
}  // namespace Catch

namespace {

struct Ran {
  ExitStatus status;
  std::string out;
};

// Runs to the end with stdout on a pipe; stdin and stderr as given.
Ran run(const Set& set, const std::vector<std::string>& argv, SpawnOptions options = {}) {
  options.out = Stdio::pipe;
  Child child = gonso::spawn(set, argv, options);
  std::string out = child.read_stdout();
  const ExitStatus status = child.wait();
  return {status, std::move(out)};
}

std::string chomp(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

std::string output_of(const Set& set, const std::vector<std::string>& argv, SpawnOptions options = {}) {
  const Ran ran = run(set, argv, std::move(options));
  INFO(fmt::format("{} {}", argv[0], ran.status));
  CHECK(ran.status.success());
  return chomp(ran.out);
}

/// Child processes of this process, alive or zombie, from /proc/PID/stat.
struct Kid {
  pid_t pid;
  char state;
};
std::vector<Kid> children() {
  std::vector<Kid> kids;
  const pid_t me = ::getpid();
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;  // it ended meanwhile
    const std::size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state = '?';
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == me) kids.push_back({static_cast<pid_t>(std::stoi(name)), state});
  }
  return kids;
}
std::vector<pid_t> child_pids() {
  std::vector<pid_t> pids;
  for (const Kid& kid : children()) pids.push_back(kid.pid);
  std::sort(pids.begin(), pids.end());
  return pids;
}

// Open fds of the process once idle gonso workers (which hold namespace fds
// of their own) are gone.
std::size_t settled_fds() {
  gonso::retire_idle_workers();
  return test::count_fds();
}

// A reaped process's /proc entry goes at once; poll within a bound anyway.
bool gone(pid_t pid) {
  const std::string path = fmt::format("/proc/{}", pid);
  for (int i = 0; i < 200 && std::filesystem::exists(path); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return !std::filesystem::exists(path);
}

// Waits (bounded) until the pidfd says the process has ended, without reaping.
bool ended(const Child& child) {
  pollfd p{child.pidfd(), POLLIN, 0};
  return ::poll(&p, 1, 5000) == 1;
}

std::vector<int> fd_listing(const std::string& text) {
  std::vector<int> fds;
  std::istringstream in(text);
  std::string word;
  while (in >> word) fds.push_back(std::stoi(word));
  std::sort(fds.begin(), fds.end());
  return fds;
}

// The exception spawn() threw, or a failure.
std::system_error spawn_error(const Set& set, const std::vector<std::string>& argv, const SpawnOptions& options = {}) {
  try {
    Child child = gonso::spawn(set, argv, options);
    child.kill();
  } catch (const std::system_error& e) {
    return e;
  }
  FAIL("spawn of " << argv[0] << " did not fail");
  throw std::logic_error("not reached");
}

constexpr Kind unshareable[] = {Kind::cgroup, Kind::ipc, Kind::mnt, Kind::net, Kind::uts};

}  // namespace

TEST_CASE("ExitStatus: a value that says how a process ended", "[spawn]") {
  const ExitStatus three = ExitStatus::exited_with(3);
  CHECK(three.exited());
  CHECK_FALSE(three.signaled());
  CHECK(three.code() == 3);
  CHECK(three.signal() == 0);
  CHECK_FALSE(three.success());
  CHECK(ExitStatus::exited_with(0).success());
  CHECK(fmt::format("{}", three) == "exited 3");
  const ExitStatus killed = ExitStatus::killed_by(SIGKILL);
  CHECK(killed.signaled());
  CHECK_FALSE(killed.exited());
  CHECK(killed.signal() == SIGKILL);
  CHECK(killed.code() == -1);
  CHECK(fmt::format("{}", killed) == "killed by signal 9 (Killed)");
  CHECK(three == ExitStatus::exited_with(3));
  CHECK(three != ExitStatus::exited_with(4));
  CHECK(ExitStatus::exited_with(9) != ExitStatus::killed_by(9));
}

TEST_CASE("spawn(): the program sees exactly the Set's namespace of each kind", "[privileged][spawn]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const std::size_t fds = settled_fds();
  {
    const Set fresh = Set::current().unshare(Kind::net | Kind::uts | Kind::ipc | Kind::mnt | Kind::cgroup);
    for (Kind kind : unshareable) REQUIRE(fresh.identity(kind) != caller.at(kind));
    // Every kind the Set holds, the fresh ones and those carried over.
    for (Kind kind : fresh.kinds()) {
      INFO(gonso::name(kind));
      const std::string link = fmt::format("/proc/self/ns/{}", gonso::name(kind));
      CHECK(output_of(fresh, {"readlink", link}) == gonso::to_string(fresh.identity(kind)));
    }
  }
  CHECK(test::snapshot() == caller);
  CHECK(settled_fds() == fds);
  CHECK(children().empty());
}

TEST_CASE("spawn(): pid, time and user namespaces, which need a process", "[privileged][spawn]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const std::size_t fds = settled_fds();
  for (const auto& [kind, flag] : {std::pair{Kind::pid, CLONE_NEWPID}, std::pair{Kind::time, CLONE_NEWTIME},
                                   std::pair{Kind::user, CLONE_NEWUSER}}) {
    DYNAMIC_SECTION(gonso::name(kind)) {
      test::ForeignNamespaces holder(flag);
      const Set set = Set::from_file(kind, holder.path(kind));
      REQUIRE(set.identity(kind) != caller.at(kind));
      const std::string link = fmt::format("/proc/self/ns/{}", gonso::name(kind));
      CHECK(output_of(set, {"readlink", link}) == gonso::to_string(set.identity(kind)));
      // Only the helper is left a child of this process: the middle process
      // that joined was reaped, the program too.
      CHECK(child_pids() == std::vector<pid_t>{holder.pid()});
    }
  }
  CHECK(test::snapshot() == caller);
  CHECK(settled_fds() == fds);
}

TEST_CASE("spawn() into a pid namespace: the program is inside, and the caller's own child", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
  {
    test::ForeignNamespaces holder(CLONE_NEWPID);  // pid 1 there
    const Set pidns = Set::from_file(Kind::pid, holder.path(Kind::pid));

    Child child = gonso::spawn(pidns, {"sh", "-c", "echo $$; exec sleep 100"}, {.out = Stdio::pipe});
    // The pidfd, wait and kill must reach the program, not a relay.
    std::string inside_pid;
    char c = 0;
    while (::read(child.stdout_fd(), &c, 1) == 1 && c != '\n') inside_pid += c;
    REQUIRE_FALSE(inside_pid.empty());
    CHECK(std::stoi(inside_pid) >= 2);  // pid 1 is the holder's
    CHECK(std::stoi(inside_pid) != child.pid());
    CHECK(test::identity_at(Kind::pid, fmt::format("/proc/{}/ns/pid", child.pid())) == pidns.identity(Kind::pid));
    std::ifstream status(fmt::format("/proc/{}/status", child.pid()));
    std::string line;
    while (std::getline(status, line) && !line.starts_with("NSpid:")) {
    }
    CHECK(line == fmt::format("NSpid:\t{}\t{}", child.pid(), inside_pid));
    std::vector<pid_t> expected{holder.pid(), child.pid()};
    std::sort(expected.begin(), expected.end());
    CHECK(child_pids() == expected);  // no middle process, no zombie

    CHECK_FALSE(child.poll());
    child.kill();
    CHECK(child.wait() == ExitStatus::killed_by(SIGKILL));
    CHECK(gone(child.pid()));

    CHECK(run(pidns, {"sh", "-c", "exit 7"}).status == ExitStatus::exited_with(7));
    CHECK(run(pidns, {"sh", "-c", "kill -TERM $$"}).status == ExitStatus::killed_by(SIGTERM));
    CHECK(child_pids() == std::vector<pid_t>{holder.pid()});
  }
  CHECK(settled_fds() == fds);
}

TEST_CASE("spawn() from inside Set::run of a pid namespace", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
  {
    test::ForeignNamespaces holder(CLONE_NEWPID);
    test::ForeignNamespaces other(CLONE_NEWPID);
    const Set pidns = Set::from_file(Kind::pid, holder.path(Kind::pid));
    const Set elsewhere = Set::from_file(Kind::pid, other.path(Kind::pid));
    struct Seen {
      std::string link;
      pid_t pid;
      std::string refused;
    };
    const Seen seen = pidns.run(true, [&] {
      // This thread's children go to pidns already: nothing to join, and the
      // program is forked straight into it.
      Child child = gonso::spawn(pidns, {"readlink", "/proc/self/ns/pid"}, {.out = Stdio::pipe});
      Seen s{chomp(child.read_stdout()), child.pid(), {}};
      (void)child.wait();
      // A middle process here would number the program in pidns.
      try {
        (void)gonso::spawn(elsewhere, {"true"});
      } catch (const std::system_error& e) {
        s.refused = e.what();
      }
      return s;
    });
    CHECK(seen.link == gonso::to_string(pidns.identity(Kind::pid)));
    CHECK(seen.pid > 0);
    CHECK_THAT(seen.refused, Catch::StartsWith("cannot spawn true into the pid or time namespace") &&
                                 Catch::EndsWith(std::string(std::strerror(EINVAL))));
    CHECK(child_pids() == std::vector<pid_t>{std::min(holder.pid(), other.pid()), std::max(holder.pid(), other.pid())});
  }
  CHECK(settled_fds() == fds);
}

TEST_CASE("spawn(): exit codes and signals come back as they happened", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
  {
    const Set fresh = Set::current().unshare(Kind::net | Kind::uts);
    const Ran seven = run(fresh, {"sh", "-c", "exit 7"});
    CHECK(seven.status == ExitStatus::exited_with(7));
    CHECK(seven.status.code() == 7);
    CHECK(fmt::format("{}", seven.status) == "exited 7");
    const Ran term = run(fresh, {"sh", "-c", "kill -TERM $$"});
    CHECK(term.status == ExitStatus::killed_by(SIGTERM));
    CHECK(fmt::format("{}", term.status) == "killed by signal 15 (Terminated)");
    CHECK(run(fresh, {"true"}).status.success());
  }
  CHECK(settled_fds() == fds);
  CHECK(children().empty());
}

TEST_CASE("spawn(): the program starts with default signal handling", "[spawn]") {
  const Set own = Set::current(Kind::uts);
  const std::size_t fds = settled_fds();
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
  CHECK(settled_fds() == fds);
}

TEST_CASE("Child::poll() says nothing before the end and the status after it", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
  {
    const Set fresh = Set::current().unshare(Kind::net);
    Child cat = gonso::spawn(fresh, {"cat"}, {.in = Stdio::pipe, .out = Stdio::null});
    CHECK_FALSE(cat.poll().has_value());  // blocked on its stdin
    cat.close_stdin();
    CHECK(cat.stdin_fd() == -1);
    CHECK(cat.wait() == ExitStatus::exited_with(0));
    CHECK(cat.poll() == ExitStatus::exited_with(0));
    CHECK(cat.wait() == ExitStatus::exited_with(0));

    Child quick = gonso::spawn(fresh, {"sh", "-c", "exit 4"});
    REQUIRE(ended(quick));
    std::optional<ExitStatus> seen = quick.poll();
    REQUIRE(seen.has_value());
    CHECK(*seen == ExitStatus::exited_with(4));
    CHECK(gone(quick.pid()));  // poll() reaped it
  }
  CHECK(settled_fds() == fds);
  CHECK(children().empty());
}

TEST_CASE("Child::kill() signals the program, and never fails once it has ended", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
  {
    const Set fresh = Set::current().unshare(Kind::net);
    Child sleeper = gonso::spawn(fresh, {"sleep", "100"});
    sleeper.kill();
    CHECK(sleeper.wait() == ExitStatus::killed_by(SIGKILL));
    CHECK_NOTHROW(sleeper.kill());  // reaped: nothing to send

    Child polite = gonso::spawn(fresh, {"sleep", "100"});
    polite.kill(SIGTERM);
    CHECK(polite.wait() == ExitStatus::killed_by(SIGTERM));

    Child zombie = gonso::spawn(fresh, {"true"});
    REQUIRE(ended(zombie));
    CHECK_NOTHROW(zombie.kill());  // ended, not reaped yet
    CHECK(zombie.wait() == ExitStatus::exited_with(0));

    Child bad = gonso::spawn(fresh, {"sleep", "100"});
    try {
      bad.kill(12345);
      FAIL("a bad signal number was accepted");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
    }
  }
  CHECK(settled_fds() == fds);
  CHECK(children().empty());
}

TEST_CASE("spawn(): a stdin pipe reaches the program, its stdout comes back", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
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
  CHECK(settled_fds() == fds);
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
  const std::size_t fds = settled_fds();
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
  CHECK(settled_fds() == fds);
  CHECK(children().empty());
}

TEST_CASE("spawn(): the program gets fds 0, 1 and 2 and nothing else of the caller's", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
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
    for (Kind kind : fresh.kinds()) {
      CHECK(std::find(inside.begin(), inside.end(), fresh.fd(kind)) == inside.end());
    }
  }
  CHECK(settled_fds() == fds);
}

TEST_CASE("spawn() failures: the step and the errno, and nothing left behind", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
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
        CHECK(child_pids() == std::vector<pid_t>{holder.pid()});
      }
    }
  }
  CHECK(settled_fds() == fds);
  CHECK(children().empty());
}

TEST_CASE("spawn() without CAP_SYS_ADMIN cannot join, and says which namespace", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
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
  CHECK(settled_fds() == fds);
  CHECK(children().empty());
}

TEST_CASE("spawn() refuses bad arguments before starting anything", "[spawn]") {
  const Set own = Set::current(Kind::uts);
  Set moved = Set::current(Kind::uts);
  const Set keeper = std::move(moved);
  const std::size_t fds = settled_fds();
  CHECK_THROWS_AS(gonso::spawn(own, {}), std::invalid_argument);
  CHECK_THROWS_WITH(gonso::spawn(own, {""}), Catch::Contains("argv[0] is empty"));
  CHECK_THROWS_AS(gonso::spawn(own, {"echo", std::string("a\0b", 3)}), std::invalid_argument);
  CHECK_THROWS_AS(gonso::spawn(own, {"env"}, {.env = std::vector<std::string>{std::string("A=\0", 3)}}),
                  std::invalid_argument);
  CHECK_THROWS_AS(gonso::spawn(moved, {"true"}), std::logic_error);  // NOLINT(bugprone-use-after-move)
  CHECK_THROWS_WITH(gonso::spawn(Set{}, {"true"}), Catch::Contains("empty Set"));
  CHECK(settled_fds() == fds);
  CHECK(children().empty());
}

TEST_CASE("Child: destroying an unwaited one kills and reaps it", "[privileged][spawn]") {
  test::require_privilege();
  const Set fresh = Set::current().unshare(Kind::net);
  test::ForeignNamespaces holder(CLONE_NEWPID);
  const Set pidns = Set::from_file(Kind::pid, holder.path(Kind::pid));
  const std::size_t fds = settled_fds();
  for (const Set* set : {&fresh, &pidns}) {
    pid_t pid = -1;
    {
      Child child = gonso::spawn(*set, {"sleep", "100"}, {.in = Stdio::pipe, .out = Stdio::pipe});
      pid = child.pid();
      REQUIRE(std::filesystem::exists(fmt::format("/proc/{}", pid)));
    }
    CHECK(gone(pid));
  }
  // Move assignment ends the process held so far.
  Child a = gonso::spawn(fresh, {"sleep", "100"});
  Child b = gonso::spawn(fresh, {"sleep", "100"});
  const pid_t first = a.pid();
  const pid_t second = b.pid();
  a = std::move(b);
  CHECK(gone(first));
  CHECK(a.pid() == second);
  CHECK_FALSE(b.valid());                       // NOLINT(bugprone-use-after-move)
  CHECK(b.pid() == -1);                         // NOLINT(bugprone-use-after-move)
  CHECK_THROWS_AS(b.wait(), std::logic_error);  // NOLINT(bugprone-use-after-move)
  a.kill();
  CHECK(a.wait().signaled());
  CHECK(child_pids() == std::vector<pid_t>{holder.pid()});
  a = Child();
  CHECK(settled_fds() == fds);
}

TEST_CASE("Child::adopt() takes charge of a child the caller forked", "[spawn]") {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) ::_exit(5);
  Child child = Child::adopt(pid);
  CHECK(child.pid() == pid);
  CHECK(child.wait() == ExitStatus::exited_with(5));
  try {
    (void)Child::adopt(::getppid());
    FAIL("adopted the parent");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::no_child_process);
  }
  CHECK_THROWS_AS(Child::adopt(0), std::invalid_argument);
}

TEST_CASE("spawn() agrees with nsenter(1)", "[privileged][spawn]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const Set own = Set::current(Kind::uts);
  // nsenter opens the Set's fd through this process's /proc entry.
  const std::string file = fmt::format("/proc/{}/fd/{}", ::getpid(), net.fd(Kind::net));
  const std::string by_nsenter = output_of(own, {"nsenter", "--net=" + file, "readlink", "/proc/self/ns/net"});
  const std::string by_gonso = output_of(net, {"readlink", "/proc/self/ns/net"});
  CHECK(by_gonso == by_nsenter);
  CHECK(by_gonso == gonso::to_string(net.identity(Kind::net)));
}

TEST_CASE("spawn() from many threads at once", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
  {
    const Set here = Set::current();
    const std::vector<Set> sets{here.unshare(Kind::net), here.unshare(Kind::net | Kind::uts), here};
    constexpr int callers = 6;
    constexpr int spawns = 15;
    std::atomic<int> wrong{0}, failed{0}, done{0};
    std::vector<std::thread> threads;
    threads.reserve(callers);
    for (int c = 0; c < callers; ++c) {
      threads.emplace_back([&, c] {
        for (int i = 0; i < spawns; ++i) {
          const Set& set = sets[static_cast<std::size_t>(i + c) % sets.size()];
          try {
            Child child = gonso::spawn(set, {"readlink", "/proc/self/ns/net"}, {.out = Stdio::pipe});
            const std::string out = chomp(child.read_stdout());
            if (!child.wait().success() || out != gonso::to_string(set.identity(Kind::net))) ++wrong;
          } catch (...) {
            ++failed;
          }
          ++done;
        }
      });
    }
    for (auto& t : threads) t.join();
    CHECK(done == callers * spawns);
    CHECK(wrong == 0);
    CHECK(failed == 0);
  }
  CHECK(settled_fds() == fds);
  CHECK(children().empty());
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

TEST_CASE("spawn() without time: a child sharing our memory, seen in the Set while it runs", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
  {
    test::ForeignNamespaces holder(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNS);
    test::ForeignNamespaces pid_holder(CLONE_NEWPID);
    const Set fresh = Set::current().unshare(Kind::net | Kind::uts | Kind::ipc | Kind::mnt | Kind::cgroup);
    const Set foreign = Set::from_pid(holder.pid(), Kind::user | Kind::net | Kind::uts | Kind::ipc | Kind::mnt);
    const Set pidns = Set::from_pid(pid_holder.pid(), Kind::pid | Kind::net);
    for (const Set* set : {&fresh, &foreign, &pidns}) {
      // What spawn() picks: no fork, unless ThreadSanitizer is watching.
      const gonso::detail::join_plan plan = gonso::detail::plan_join(*set);
      gonso::detail::spawn_plan sp;
      sp.join = plan;
#if defined(__SANITIZE_THREAD__)
      CHECK_FALSE(gonso::detail::may_share_memory(sp));
#else
      CHECK(gonso::detail::may_share_memory(sp));
#endif
      Child sleeper = gonso::spawn(*set, {"sleep", "100"});
      // The kernel's view of the running program, not gonso's.
      for (Kind kind : set->kinds()) {
        INFO(gonso::name(kind));
        CHECK(test::identity_at(kind, fmt::format("/proc/{}/ns/{}", sleeper.pid(), gonso::name(kind))) ==
              set->identity(kind));
      }
      std::ifstream status(fmt::format("/proc/{}/status", sleeper.pid()));
      std::string line;
      while (std::getline(status, line) && !line.starts_with("PPid:")) {
      }
      CHECK(line == fmt::format("PPid:\t{}", ::getpid()));  // our own child, no helper between
      sleeper.kill();
      CHECK(sleeper.wait() == ExitStatus::killed_by(SIGKILL));
    }
    std::vector<pid_t> helpers{holder.pid(), pid_holder.pid()};
    std::sort(helpers.begin(), helpers.end());
    CHECK(child_pids() == helpers);  // no middle process, no zombie
  }
  CHECK(settled_fds() == fds);
}

TEST_CASE("spawn() into a pid namespace holds the program even when SIGCHLD is ignored", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
  {
    test::ForeignNamespaces holder(CLONE_NEWPID);
    const Set pidns = Set::from_file(Kind::pid, holder.path(Kind::pid));
    gonso::detail::spawn_plan sp;
    sp.join = gonso::detail::plan_join(pidns);
    // The pidfd comes from the program's clone only when the child shares
    // our memory; a forked child opens it afterwards, and may be too late.
    if (gonso::detail::may_share_memory(sp)) {
      struct sigaction ignore {};
      struct sigaction old {};
      ignore.sa_handler = SIG_IGN;
      REQUIRE(::sigaction(SIGCHLD, &ignore, &old) == 0);
      int held = 0;
      for (int i = 0; i < 20; ++i) {
        try {
          Child quick = gonso::spawn(pidns, {"true"});
          if (ended(quick)) ++held;  // the kernel reaps it, the pidfd still says so
        } catch (const std::exception& e) {
          UNSCOPED_INFO(e.what());
        }
      }
      ::sigaction(SIGCHLD, &old, nullptr);
      CHECK(held == 20);
    }
  }
  CHECK(settled_fds() == fds);
  CHECK(children().empty());
}

TEST_CASE("spawn() into pid and time namespaces forks, and the program is inside", "[privileged][spawn]") {
  test::require_privilege();
  const std::size_t fds = settled_fds();
  {
    // The process path makes them, with an init for the pid namespace.
    const Set set = Set::current().unshare(Kind::pid | Kind::time | Kind::net);
    gonso::detail::spawn_plan sp;
    sp.join = gonso::detail::plan_join(set);
    CHECK_FALSE(gonso::detail::may_share_memory(sp));
    Child sleeper = gonso::spawn(set, {"sleep", "100"});
    for (Kind kind : {Kind::net, Kind::pid, Kind::time}) {
      INFO(gonso::name(kind));
      CHECK(test::identity_at(kind, fmt::format("/proc/{}/ns/{}", sleeper.pid(), gonso::name(kind))) ==
            set.identity(kind));
    }
    sleeper.kill();
    CHECK(sleeper.wait() == ExitStatus::killed_by(SIGKILL));
    CHECK(child_pids().size() == 1);  // the namespace's init, and no zombie
  }
  CHECK(settled_fds() == fds);
  CHECK(children().empty());
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

TEST_CASE("spawn() forks when a sandbox refuses a child sharing memory", "[spawn][fork]") {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // A seccomp filter that answers EPERM to clone with CLONE_VM, as a
    // container runtime's might. Plain fork (clone without it) still works.
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])),  // low half, little-endian
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_VM, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    const sock_fprog program{static_cast<unsigned short>(std::size(filter)), filter};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) {
      ::_exit(2);
    }
    int code = 3;
    try {
      Child child = gonso::spawn(Set::current(Kind::uts), {"sh", "-c", "exit 7"});
      code = child.wait() == ExitStatus::exited_with(7) ? 0 : 4;
    } catch (...) {
      code = 5;
    }
    ::_exit(code);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

// Bad input to where a Set comes from: clone flags, pids, pidfds (also one
// whose pid number was reused), folders, files and fds, and kind_of(). The
// cases are tables (support/cases.hpp): each call gives the documented error
// type, errno and a message naming what was being done, changes nothing and
// leaks nothing (the one Baseline after every case: fds, threads, child
// processes, namespaces), and the machine is left as found (mounts, names,
// folders).
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
using test::refused;

namespace fs = std::filesystem;

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
    const pid_t gone = test::reaped_pid();
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
              const pid_t pid = test::exiting_child();
              const gonso::detail::unique_fd pidfd(gonso::detail::pidfd_open(pid));
              ::waitpid(pid, nullptr, 0);
              REQUIRE(pidfd);
              (void)Set::from_pidfd(pidfd.get());
            },
            std::errc::no_such_process, "its process has ended"),
        refused(
            "the pidfd of a zombie",
            [] {
              const pid_t pid = test::exiting_child();
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
    number = test::exiting_child();
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

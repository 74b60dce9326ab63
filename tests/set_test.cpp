// gonso::Set as a value: where it comes from, what it holds, copies, errors.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/privilege.hpp"

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;

namespace {

// The namespace a thread is itself in (for pid and time, not the one its
// children get): what Set::current() reads.
gonso::Identity own_ns(Kind kind, const std::string& proc_dir = "/proc/thread-self") {
  return test::identity_at(kind, proc_dir + "/ns/" + std::string(gonso::name(kind)));
}

bool cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

}  // namespace

TEST_CASE("Set is a value type with noexcept moves") {
  STATIC_REQUIRE(std::is_copy_constructible_v<Set>);
  STATIC_REQUIRE(std::is_nothrow_move_constructible_v<Set>);
  STATIC_REQUIRE(std::is_nothrow_move_assignable_v<Set>);
  STATIC_REQUIRE(std::is_nothrow_default_constructible_v<Set>);
}

TEST_CASE("current() holds the calling thread's namespaces, every kind but user by default") {
  const Set here = Set::current();
  CHECK(here.kinds() == gonso::default_kinds);
  CHECK_FALSE(here.contains(Kind::user));
  for (Kind kind : here.kinds()) {
    INFO(gonso::name(kind));
    CHECK(here.identity(kind) == own_ns(kind));
    CHECK(gonso::to_string(here.identity(kind)) == test::thread_ns_link(kind));
    CHECK(cloexec(here.fd(kind)));
  }
  const Set with_user = Set::current(Kinds::all());
  CHECK(with_user.identity(Kind::user) == own_ns(Kind::user));
}

TEST_CASE("current() reads the calling thread, not the main thread", "[privileged]") {
  test::require_privilege();
  const auto main_net = own_ns(Kind::net, "/proc/self");
  gonso::Identity seen{}, thread_net{};
  std::string error;
  std::thread([&] {
    // A plain thread may unshare its own net namespace (the README's kernel rules).
    if (::unshare(CLONE_NEWNET) != 0) {
      error = std::strerror(errno);
      return;
    }
    thread_net = own_ns(Kind::net);
    seen = Set::current(Kind::net).identity(Kind::net);
  }).join();
  REQUIRE(error.empty());
  CHECK(thread_net != main_net);
  CHECK(seen == thread_net);
}

TEST_CASE("copies share the fds; moves transfer them and empty the source") {
  const test::Baseline base(test::Watch::fds);
  {
    STATIC_REQUIRE(std::is_nothrow_copy_constructible_v<Set>);
    STATIC_REQUIRE(std::is_nothrow_copy_assignable_v<Set>);
    Set a = Set::current(Kind::net | Kind::uts);
    const std::size_t with_a = test::count_fds();
    Set b = a;
    CHECK(b == a);
    CHECK(b.kinds() == a.kinds());
    for (Kind kind : a.kinds()) {
      CHECK(b.fd(kind) == a.fd(kind));
      CHECK(b.identity(kind) == a.identity(kind));
      CHECK(cloexec(b.fd(kind)));
    }
    CHECK(test::count_fds() == with_a);  // the copy opened nothing
    const int net_fd = a.fd(Kind::net);
    Set c = std::move(a);
    CHECK(c.fd(Kind::net) == net_fd);
    CHECK(a.empty());  // NOLINT(bugprone-use-after-move): documented state
    CHECK(a.kinds() == Kinds{});
    CHECK(fmt::format("{}", a) == "{}");

    Set d;
    d = c;  // copy-assign into an empty Set
    CHECK(d == c);
    d = std::move(c);  // move-assign drops d's old references at once
    CHECK(d == b);
    CHECK(test::count_fds() == base.fds() + 2);  // one per namespace, however many Sets
    b = Set();
    // d alone holds them now: the fds stay open and name the same namespaces.
    CHECK(test::count_fds() == base.fds() + 2);
    for (Kind kind : d.kinds())
      CHECK(test::identity_at(kind, fmt::format("/proc/self/fd/{}", d.fd(kind))) == own_ns(kind));
  }
  base.check();
}

TEST_CASE("dup() copies a subset; fd() and identity() refuse kinds not held") {
  const Set here = Set::current();
  const Set sub = here.dup(Kind::net | Kind::ipc);
  CHECK(sub.kinds() == (Kind::net | Kind::ipc));
  CHECK(sub.identity(Kind::net) == here.identity(Kind::net));
  CHECK(sub.fd(Kind::net) == here.fd(Kind::net));  // shared, not duplicated

  CHECK_THROWS_AS(sub.dup(Kind::uts), std::invalid_argument);
  CHECK_THROWS_WITH(sub.dup(Kind::uts), Catch::Contains("uts"));
  CHECK_THROWS_AS(sub.fd(Kind::mnt), std::invalid_argument);
  CHECK_THROWS_WITH(sub.identity(Kind::mnt), Catch::Contains("holds no mnt namespace"));
  CHECK(here.dup(Kinds{}).empty());
  // Raw flags, as Go's Set.Dup takes them.
  CHECK(here.dup(CLONE_NEWNET | CLONE_NEWIPC) == sub);
  CHECK_THROWS_AS(here.dup(CLONE_NEWNET | CLONE_VM), std::invalid_argument);
}

TEST_CASE("Sets compare equal when they hold the same namespaces") {
  const Set a = Set::current(Kind::net | Kind::uts);
  const Set b = Set::current(Kind::net | Kind::uts);
  CHECK(a == b);
  CHECK_FALSE(a == a.dup(Kind::net));
  CHECK(Set{} == Set{});
}

TEST_CASE("Sets format as their identities") {
  const Set s = Set::current(Kind::uts | Kind::net);
  CHECK(fmt::format("{}", s) ==
        fmt::format("{{{}, {}}}", test::thread_ns_link(Kind::net), test::thread_ns_link(Kind::uts)));
  CHECK(fmt::format("{}", s.identity(Kind::net)) == test::thread_ns_link(Kind::net));
  // Padded as a string: the kernel's link text, right-aligned in 40.
  const std::string link = test::thread_ns_link(Kind::net);
  CHECK(fmt::format("{:>40}", s.identity(Kind::net)) == std::string(40 - link.size(), ' ') + link);
}

TEST_CASE("from_pid() reads /proc/PID/ns") {
  const Set self = Set::from_pid(::getpid());
  for (Kind kind : self.kinds()) {
    INFO(gonso::name(kind));
    CHECK(self.identity(kind) == own_ns(kind, "/proc/self"));
  }
  CHECK(Set::from_pid(::getpid(), Kind::user).identity(Kind::user) == own_ns(Kind::user, "/proc/self"));
}

TEST_CASE("from_pid() of another process sees that process's namespaces", "[privileged]") {
  test::require_privilege();
  test::ForeignNamespaces child(CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC);
  const Set theirs = Set::from_pid(child.pid());
  const std::string dir = fmt::format("/proc/{}", child.pid());
  for (Kind kind : theirs.kinds()) {
    INFO(gonso::name(kind));
    CHECK(theirs.identity(kind) == own_ns(kind, dir));
  }
  CHECK(theirs.identity(Kind::net) != own_ns(Kind::net));
  CHECK(theirs.identity(Kind::mnt) == own_ns(Kind::mnt));
  CHECK(Set::from_dir(dir + "/ns") == theirs);
}

TEST_CASE("from_pid() refuses bad and missing pids") {
  const test::Baseline base(test::Watch::fds);
  CHECK_THROWS_AS(Set::from_pid(0), std::invalid_argument);
  CHECK_THROWS_AS(Set::from_pid(-5), std::invalid_argument);

  // A pid that was just reaped is free (pids are not reused at once).
  const pid_t gone = ::fork();
  REQUIRE(gone >= 0);
  if (gone == 0) ::_exit(0);
  REQUIRE(::waitpid(gone, nullptr, 0) == gone);
  const auto e = test::system_error_of([&] { (void)Set::from_pid(gone); });
  CHECK(e.code() == std::errc::no_such_process);
  CHECK_THAT(e.what(), Catch::Contains(std::to_string(gone)));
  base.check();
}

TEST_CASE("from_dir() opens a folder of namespace files") {
  test::TempDir dir;
  SECTION("a /proc/PID/ns folder") {
    CHECK(Set::from_dir("/proc/self/ns") == Set::from_pid(::getpid()));
    CHECK(Set::from_dir("/proc/self/ns", Kind::net) == Set::from_pid(::getpid(), Kind::net));
  }
  SECTION("a folder holding some kinds") {
    std::filesystem::create_symlink("/proc/self/ns/net", dir.path() / "net");
    std::filesystem::create_symlink("/proc/self/ns/uts", dir.path() / "uts");
    const Set s = Set::from_dir(dir.path());
    CHECK(s.kinds() == (Kind::net | Kind::uts));
    CHECK(s.identity(Kind::net) == own_ns(Kind::net, "/proc/self"));
    const auto e = test::system_error_of([&] { (void)Set::from_dir(dir.path(), Kind::net | Kind::mnt); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    CHECK_THAT(e.what(), Catch::Contains("mnt"));
  }
  SECTION("an empty folder, a missing one, a regular file") {
    const test::Baseline base(test::Watch::fds);
    auto e = test::system_error_of([&] { (void)Set::from_dir(dir.path()); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    CHECK_THAT(e.what(), Catch::Contains("holds no namespace file"));
    e = test::system_error_of([&] { (void)Set::from_dir(dir.path() / "nope"); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    std::ofstream(dir.path() / "file") << "x";
    e = test::system_error_of([&] { (void)Set::from_dir(dir.path() / "file"); });
    CHECK(e.code() == std::errc::not_a_directory);
    base.check();
  }
  SECTION("a folder whose net file is not a namespace") {
    std::ofstream(dir.path() / "net") << "not a namespace";
    const auto e = test::system_error_of([&] { (void)Set::from_dir(dir.path()); });
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("not a namespace file"));
  }
}

TEST_CASE("from_file() and from_fd() validate what they are given") {
  const test::Baseline base(test::Watch::fds);
  test::TempDir dir;
  const auto regular = dir.path() / "plain";
  std::ofstream(regular) << "x";

  SECTION("a namespace file of the right kind") {
    const Set s = Set::from_file(Kind::uts, "/proc/thread-self/ns/uts");
    CHECK(s.kinds() == Kinds(Kind::uts));
    CHECK(s.identity(Kind::uts) == own_ns(Kind::uts));
  }
  SECTION("a regular file") {
    const auto e = test::system_error_of([&] { (void)Set::from_file(Kind::net, regular); });
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("not a namespace file") && Catch::Contains(regular.string()));
  }
  SECTION("a namespace of another kind") {
    const auto e = test::system_error_of([&] { (void)Set::from_file(Kind::net, "/proc/self/ns/uts"); });
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("it is a uts namespace"));
  }
  SECTION("a missing file") {
    const auto e = test::system_error_of([&] { (void)Set::from_file(Kind::net, dir.path() / "missing"); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);
  }
  SECTION("an fd of the wrong kind, a pipe, a closed fd") {
    gonso::detail::unique_fd uts(::open("/proc/self/ns/uts", O_RDONLY | O_CLOEXEC));
    REQUIRE(uts);
    auto e = test::system_error_of([&] { (void)Set::from_fd(Kind::net, uts.get()); });
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains(fmt::format("fd {}", uts.get())));

    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    e = test::system_error_of([&] { (void)Set::from_fd(Kind::net, p[0]); });
    CHECK(e.code() == std::errc::invalid_argument);
    ::close(p[0]);
    ::close(p[1]);

    const int closed = p[0];
    e = test::system_error_of([&] { (void)Set::from_fd(Kind::net, closed); });
    CHECK(e.code() == std::errc::bad_file_descriptor);
  }
  SECTION("from_fd() keeps a close-on-exec copy of its own") {
    int raw = ::open("/proc/self/ns/net", O_RDONLY);  // deliberately without O_CLOEXEC
    REQUIRE(raw >= 0);
    const Set s = Set::from_fd(Kind::net, raw);
    ::close(raw);
    CHECK(s.fd(Kind::net) >= 0);
    CHECK(cloexec(s.fd(Kind::net)));
    CHECK(s.identity(Kind::net) == own_ns(Kind::net, "/proc/self"));
  }
  base.check();
}

TEST_CASE("const member functions may be called from many threads at once") {
  const Set shared = Set::current();
  std::vector<std::thread> readers;
  readers.reserve(8);
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 8; ++t) {
    readers.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        const Set copy = shared;  // NOLINT(performance-unnecessary-copy-initialization): copying is the test
        const Set part = shared.dup(Kind::net | Kind::mnt);
        if (!(copy == shared) || part.identity(Kind::net) != shared.identity(Kind::net) ||
            fmt::format("{}", copy) != fmt::format("{}", shared)) {
          ++mismatches;
        }
      }
    });
  }
  for (auto& r : readers) r.join();
  CHECK(mismatches == 0);
}

TEST_CASE("from_pid() of a zombie says the process has exited") {
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) ::_exit(0);
  // Wait until it is a zombie, without reaping it.
  siginfo_t info{};
  REQUIRE(::waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOWAIT) == 0);
  const auto e = test::system_error_of([&] { (void)Set::from_pid(child); });
  CHECK(e.code() == std::errc::no_such_process);
  CHECK_THAT(e.what(), Catch::Contains(std::to_string(child)));
  ::waitpid(child, nullptr, 0);
}

TEST_CASE("kind_of() names the kind of a namespace fd and refuses other fds") {
  for (Kind kind : gonso::default_kinds) {
    INFO(gonso::name(kind));
    gonso::detail::unique_fd fd(
        ::open(fmt::format("/proc/self/ns/{}", gonso::name(kind)).c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(fd);
    CHECK(gonso::kind_of(fd.get()) == kind);
  }
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  auto e = test::system_error_of([&] { (void)gonso::kind_of(p[0]); });
  CHECK(e.code() == std::errc::invalid_argument);
  ::close(p[0]);
  ::close(p[1]);
  e = test::system_error_of([&] { (void)gonso::kind_of(p[0]); });
  CHECK(e.code() == std::errc::bad_file_descriptor);
}

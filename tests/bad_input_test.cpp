// Every public entry point fed bad input: each gives the documented error
// type and errno, changes nothing and leaks nothing.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "support.hpp"

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;

namespace {

enum class Expect { invalid_argument, logic_error, system_error };

struct Case {
  std::string what;
  std::function<void()> call;
  Expect expect;
  std::errc code{};            // for system_error
  std::string message_part{};  // must appear in what()
};

pid_t reaped_pid() {
  const pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  ::waitpid(gone, nullptr, 0);
  return gone;
}

}  // namespace

TEST_CASE("bad input: a clear error of the documented type, nothing changed, nothing leaked", "[privileged]") {
  test::require_privilege();
  gonso::retire_idle_workers();
  const test::Snapshot caller = test::snapshot();
  const test::TempDir dir;
  const auto regular = dir.path() / "regular";
  std::ofstream(regular) << "not a namespace";
  const auto empty_dir = dir.path() / "empty";
  std::filesystem::create_directory(empty_dir);
  const Set here = Set::current();
  Set source = Set::current(Kind::net);
  const Set& moved_from = source;  // named for what it will be
  const Set keeper = std::move(source);
  const pid_t gone = reaped_pid();
  gonso::detail::unique_fd uts_fd(::open("/proc/self/ns/uts", O_RDONLY | O_CLOEXEC));
  REQUIRE(uts_fd);
  test::ForeignNamespaces user_holder(CLONE_NEWUSER);
  const Set user = Set::from_file(Kind::user, user_holder.path(Kind::user));

  const std::vector<Case> cases{
      {"unknown flag bits",
       [] { (void)Kinds::from_clone_flags(CLONE_VM); },
       Expect::invalid_argument,
       {},
       "0x00000100"},
      {"unknown flag bits to unshare",
       [&] { (void)here.unshare(CLONE_NEWNET | CLONE_FS); },
       Expect::invalid_argument,
       {},
       "0x00000200"},
      {"no kinds to unshare", [&] { (void)here.unshare(Kinds{}); }, Expect::invalid_argument, {}, "no namespace kinds"},
      {"overlapping uid_map",
       [&] {
         (void)here.unshare(Kind::user, {.uid_map = {{0, 0, 10}, {9, 100, 1}}});
       },
       Expect::invalid_argument,
       {},
       "overlap"},
      {"pid 0", [] { (void)Set::from_pid(0); }, Expect::invalid_argument, {}, "pid 0"},
      {"negative pid", [] { (void)Set::from_pid(-1); }, Expect::invalid_argument, {}, "pid -1"},
      {"nonexistent pid", [&] { (void)Set::from_pid(gone); }, Expect::system_error, std::errc::no_such_process,
       std::to_string(gone)},
      {"folder with no namespace files", [&] { (void)Set::from_dir(empty_dir); }, Expect::system_error,
       std::errc::no_such_file_or_directory, empty_dir.string()},
      {"missing folder", [&] { (void)Set::from_dir(dir.path() / "missing"); }, Expect::system_error,
       std::errc::no_such_file_or_directory, "missing"},
      {"regular file as a namespace", [&] { (void)Set::from_file(Kind::net, regular); }, Expect::system_error,
       std::errc::invalid_argument, "not a namespace file"},
      {"file of the wrong kind", [&] { (void)Set::from_file(Kind::net, "/proc/self/ns/uts"); }, Expect::system_error,
       std::errc::invalid_argument, "it is a uts namespace"},
      {"fd of the wrong kind", [&] { (void)Set::from_fd(Kind::mnt, uts_fd.get()); }, Expect::system_error,
       std::errc::invalid_argument, "it is a uts namespace"},
      {"closed fd", [] { (void)Set::from_fd(Kind::net, 1'000'000); }, Expect::system_error,
       std::errc::bad_file_descriptor, "fd 1000000"},
      {"kind not in the Set", [&] { (void)keeper.fd(Kind::uts); }, Expect::invalid_argument, {}, "uts"},
      {"subset not in the Set", [&] { (void)keeper.dup(Kind::uts | Kind::net); }, Expect::invalid_argument, {}, "uts"},
      {"run on a moved-from Set", [&] { moved_from.run(true, [] {}); }, Expect::logic_error, {}, "empty Set"},
      {"unshare from a moved-from Set",
       [&] { (void)moved_from.unshare(Kind::net); },
       Expect::logic_error,
       {},
       "empty Set"},
      {"run on a Set holding a foreign user namespace", [&] { user.run(true, [] {}); }, Expect::system_error,
       std::errc::invalid_argument, "user namespace"},
      {"negative idle timeout",
       [] { gonso::set_worker_policy({.max_idle = 1, .idle_timeout = std::chrono::milliseconds(-1)}); },
       Expect::invalid_argument,
       {},
       "negative"},
  };

  const gonso::WorkerPolicy policy = gonso::worker_policy();
  gonso::retire_idle_workers();
  const std::size_t fds = test::count_fds();
  for (const Case& c : cases) {
    INFO(c.what);
    std::string message;
    try {
      c.call();
      FAIL_CHECK("no exception");
      continue;
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
    CHECK_THAT(message, Catch::Contains(c.message_part));
    // Nothing changed, nothing leaked. Idle workers hold fds of their own
    // (their original namespaces), so retire them before counting.
    CHECK(test::snapshot() == caller);
    CHECK(test::threads_outside(caller).empty());
    gonso::retire_idle_workers();
    CHECK(test::count_fds() == fds);
  }
  const gonso::WorkerPolicy after = gonso::worker_policy();
  CHECK(after.max_idle == policy.max_idle);
  CHECK(after.idle_timeout == policy.idle_timeout);
}

// Set::run_in_process's placement options (root, cwd, cgroup, user) and its
// timeout, read from the kernel inside the child; nothing is left behind.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <gonso/error.hpp>
#include <gonso/set.hpp>
#include <gonso/target.hpp>

#include "support/baseline.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

using gonso::Dir;
using gonso::Kind;
using gonso::ProcessError;
using gonso::ProcessOptions;
using gonso::Set;

namespace {

std::string file_id_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "none";
  return fmt::format("{}:{}", st.st_dev, st.st_ino);
}
std::string file_id_of(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return "none";
  return fmt::format("{}:{}", st.st_dev, st.st_ino);
}

}  // namespace

TEST_CASE("run_in_process(): a callable past its timeout is killed, and so is its process in a pid namespace",
          "[process][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set pid = Set::current().unshare(Kind::pid);
    const std::vector<pid_t> before = test::processes_in(pid.identity(Kind::pid));
    for (const Set* set : {&pid}) {
      ProcessOptions o;
      o.timeout = std::chrono::milliseconds(200);
      const auto start = std::chrono::steady_clock::now();
      try {
        set->run_in_process(
            [] {
              std::this_thread::sleep_for(std::chrono::seconds(30));
              return 1;
            },
            o);
        FAIL("the callable was not stopped");
      } catch (const ProcessError& e) {
        CHECK(e.cause() == ProcessError::Cause::timeout);
        CHECK_THAT(e.what(), Catch::Contains("200 ms"));
      }
      CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(25));
    }
    // The process that ran the callable inside the pid namespace is gone too.
    CHECK(test::eventually([&] { return test::processes_in(pid.identity(Kind::pid)) == before; }));
    // A quick callable is not held up by a timeout.
    ProcessOptions o;
    o.timeout = std::chrono::seconds(30);
    CHECK(pid.run_in_process([] { return ::getpid(); }, o) > 1);
  }
  base.check();
}

TEST_CASE("run_in_process(): root, cwd, cgroup and ids place the callable", "[process][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const test::TempDir dir;
    std::filesystem::create_directory(dir.path() / "sub");
    const auto mount = gonso::detail::find_cgroup2(test::file_text("/proc/self/mountinfo"));
    REQUIRE(mount.has_value());
    const std::string name = fmt::format("gonso-test-process-{}", ::getpid());
    const std::filesystem::path cg = std::filesystem::path(mount->mount_point) / name;
    std::filesystem::create_directory(cg);
    {
      ProcessOptions o;
      o.root = Dir::open(dir.path());
      o.cwd = "/sub";
      o.cgroup = Dir::open(cg);
      o.user = gonso::Credentials{4321, 4322, std::vector<gid_t>{9}};
      const Set uts = Set::current(Kind::uts);
      // Read in the child: "/" is the temporary folder, the cwd its sub,
      // the ids those given.
      const std::string seen = uts.run_in_process(
          [] {
            std::ifstream in("/proc/self/status");  // no /proc under the new root
            return fmt::format("{} {} {} {} {}", file_id_of("/"), file_id_of("."), ::getuid(), ::getgid(),
                               static_cast<bool>(in));
          },
          o);
      CHECK(seen ==
            fmt::format("{} {} 4321 4322 false", file_id_of(o.root->fd()), file_id_of((dir.path() / "sub").native())));
      const std::string where = uts.run_in_process([] { return test::file_text("/proc/self/cgroup"); },
                                                   [&] {
                                                     ProcessOptions c;
                                                     c.cgroup = Dir::open(cg);
                                                     return c;
                                                   }());
      CHECK(where.find("0::" + (mount->root == "/" ? std::string() : mount->root) + "/" + name + "\n") !=
            std::string::npos);
    }
    CHECK(test::eventually([&] { return ::rmdir(cg.c_str()) == 0; }));
  }
  // The caller never moved.
  CHECK(test::file_text("/proc/self/cgroup").find("gonso-test-process") == std::string::npos);
  CHECK(file_id_of("/proc/thread-self/root") == file_id_of("/"));
  base.check();
}

TEST_CASE("run_in_process(): bad placement options are refused before anything starts", "[process][bad-input]") {
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set uts = Set::current(Kind::uts);
    const auto refused = [&](const ProcessOptions& o, const std::string& part) {
      INFO(part);
      try {
        uts.run_in_process([] { return 0; }, o);
        FAIL("not refused: " << part);
      } catch (const std::invalid_argument& e) {
        CHECK_THAT(e.what(), Catch::Contains(part));
      }
    };
    ProcessOptions o;
    o.timeout = std::chrono::milliseconds(0);
    refused(o, "timeout 0 ms is not positive");
    o = {};
    o.cwd = std::string("/a\0b", 4);
    refused(o, "holds a NUL");
    o = {};
    o.root = Dir();
    refused(o, "an empty Dir");
    o = {};
    o.cgroup = Dir::open("/");
    refused(o, "not a cgroup v2 directory");
  }
  base.check();
}

// Set::run in mount namespaces: a worker that joined one keeps root, cwd and
// umask of its own, goes home through the anchor's pidfd, and serves later
// runs into mount namespaces only, each starting at that namespace's root
// with the caller's umask; runs without a mount namespace never get it.
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <utility>

#include "support/baseline.hpp"
#include "support/fault.hpp"
#include "support/kernel_view.hpp"
#include "support/privilege.hpp"
#include "support/workers.hpp"

using gonso::Kind;
using gonso::Set;

namespace {

/// What a callable saw of its thread, from the kernel: tid, mount namespace,
/// the inode of its root and its cwd as /proc shows them, and its umask.
struct Inside {
  pid_t tid = 0;
  gonso::Identity mnt;
  dev_t root_dev = 0;
  ino_t root_ino = 0;
  std::string cwd;
  int umask = -1;
};

int thread_umask() {
  std::ifstream in("/proc/thread-self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Umask:", 0) == 0) return std::stoi(line.substr(6), nullptr, 8);
  }
  return -1;
}

Inside look() {
  Inside in;
  in.tid = test::tid();
  in.mnt = test::thread_ns(Kind::mnt);
  struct stat root {};
  test::check_errno(::stat("/", &root), "stat /");
  in.root_dev = root.st_dev;
  in.root_ino = root.st_ino;
  in.cwd = std::filesystem::read_symlink("/proc/thread-self/cwd").string();
  in.umask = thread_umask();
  return in;
}

struct Root {
  dev_t dev;
  ino_t ino;
};
Root process_root() {
  struct stat st {};
  test::check_errno(::stat("/", &st), "stat /");
  return {st.st_dev, st.st_ino};
}

}  // namespace

TEST_CASE("runs into mount namespaces reuse one worker, each starting at the namespace's root",
          "[privileged][mount-run]") {
  test::require_privilege();
  const test::PoolGuard guard;
  gonso::set_worker_policy({4, test::long_timeout});
  const test::Baseline base(test::Watch::process);
  const std::string cwd = std::filesystem::current_path().string();
  const Root root = process_root();
  {
    const Set a = Set::current().unshare(Kind::mnt);
    const Set b = Set::current().unshare(Kind::mnt);
    REQUIRE(a.identity(Kind::mnt) != base.caller().at(Kind::mnt));

    // The first run moves its thread's cwd and root: nothing of it may reach
    // the next run.
    const Inside first = a.run(true, [] {
      Inside in = look();
      test::check_errno(::chdir("/proc"), "chdir /proc");
      test::check_errno(::chroot("/tmp"), "chroot /tmp");
      return in;
    });
    CHECK(first.mnt == a.identity(Kind::mnt));
    CHECK(first.cwd == "/");

    const Inside again = a.run(true, look);
    CHECK(again.tid == first.tid);
    CHECK(again.mnt == a.identity(Kind::mnt));
    CHECK(again.cwd == "/");
    CHECK(again.root_dev == root.dev);  // a copy of the process's mounts: the same root
    CHECK(again.root_ino == root.ino);

    const Inside other = b.run(true, look);
    CHECK(other.tid == first.tid);
    CHECK(other.mnt == b.identity(Kind::mnt));
    CHECK(other.cwd == "/");

    SECTION("a run without a mount namespace of its own gets a thread that shares root and cwd with the process") {
      const Set net = Set::current().unshare(Kind::net);
      const Inside in_net = net.run(true, look);
      CHECK(in_net.tid != first.tid);
      CHECK(in_net.cwd == cwd);
      CHECK(in_net.mnt == base.caller().at(Kind::mnt));
      // A Set holding the process's own mount namespace joins nothing for it:
      // the callable sees the process's cwd, not a namespace's root.
      const Inside in_here = Set::current(Kind::mnt | Kind::uts).run(true, look);
      CHECK(in_here.tid != first.tid);
      CHECK(in_here.cwd == cwd);
    }
    SECTION("each run gets the caller's umask of the moment, as a new thread would") {
      const mode_t saved = ::umask(027);
      const Inside strict = a.run(true, look);
      (void)::umask(077);
      const Inside stricter = b.run(true, look);
      (void)::umask(saved);
      const Inside restored = a.run(true, look);
      CHECK(strict.tid == first.tid);
      CHECK(strict.umask == 027);
      CHECK(stricter.tid == first.tid);
      CHECK(stricter.umask == 077);
      CHECK(restored.umask == static_cast<int>(saved));
      CHECK(thread_umask() == static_cast<int>(saved));
    }
    SECTION("a nested run into a mount namespace starts at its root too") {
      const Set net = Set::current().unshare(Kind::net);
      const Inside nested = net.run(true, [&] { return a.run(true, look); });
      CHECK(nested.mnt == a.identity(Kind::mnt));
      CHECK(nested.cwd == "/");
      CHECK(nested.root_ino == root.ino);
    }
  }
  CHECK(std::filesystem::current_path().string() == cwd);
  CHECK(process_root().ino == root.ino);
  base.check();
}

TEST_CASE("a callable that unshares, mounts or joins another mount namespace moves no later run",
          "[privileged][mount-run]") {
  test::require_privilege();
  const test::PoolGuard guard;
  gonso::set_worker_policy({4, test::long_timeout});
  const test::Baseline base(test::Watch::process);
  {
    const Set a = Set::current().unshare(Kind::mnt);
    const Set b = Set::current().unshare(Kind::mnt);
    const pid_t worker = a.run(true, [] { return test::tid(); });

    // A mount namespace of its own, with a tmpfs over /tmp in it.
    const auto [tid1, made] = a.run(true, [] {
      test::check_errno(::unshare(CLONE_NEWNS), "unshare mnt");
      test::check_errno(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), "make / private");
      test::check_errno(::mount("gonso-test", "/tmp", "tmpfs", 0, nullptr), "mount tmpfs on /tmp");
      return std::pair(test::tid(), test::thread_ns(Kind::mnt));
    });
    CHECK(tid1 == worker);
    CHECK(made != a.identity(Kind::mnt));
    CHECK(test::no_thread_in(made));
    const Inside after = a.run(true, look);
    CHECK(after.tid == worker);
    CHECK(after.mnt == a.identity(Kind::mnt));

    // A thread started by the callable shares the worker's root and cwd, and
    // outlives the run: the next runs still join, and it is left where it was.
    std::thread lingering;
    std::atomic<bool> release{false};
    std::atomic<pid_t> lingering_tid{0};
    const auto [tid_started, started_mnt] = a.run(true, [&] {
      lingering = std::thread([&] {
        lingering_tid = test::tid();
        while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      });
      while (lingering_tid.load() == 0) std::this_thread::yield();
      return std::pair(test::tid(), test::thread_ns(Kind::mnt));
    });
    CHECK(tid_started == worker);
    const Inside beside = b.run(true, look);
    CHECK(beside.tid == worker);
    CHECK(beside.mnt == b.identity(Kind::mnt));
    CHECK(beside.cwd == "/");
    CHECK(a.run(true, look).mnt == a.identity(Kind::mnt));
    // The callable's thread is still in `a`'s mount namespace.
    const auto lingering_mnt =
        test::identity_at(Kind::mnt, fmt::format("/proc/self/task/{}/ns/mnt", lingering_tid.load()));
    CHECK(lingering_mnt == started_mnt);
    release = true;
    lingering.join();

    // setns into another mount namespace by hand.
    const pid_t tid2 = a.run(true, [&] {
      test::check_errno(::setns(b.fd(Kind::mnt), CLONE_NEWNS), "setns b");
      return test::tid();
    });
    CHECK(tid2 == worker);
    CHECK(a.run(true, look).mnt == a.identity(Kind::mnt));
  }
  CHECK(test::snapshot() == base.caller());
  base.check();
}

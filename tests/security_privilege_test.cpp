// Security: a caller without privilege (a thread without CAP_SYS_ADMIN, or
// of uid 65534) reaches through gonso nothing it could not reach by hand,
// errno for errno, and gets no privileged worker gonso keeps idle.
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <gonso/child.hpp>
#include <gonso/executor.hpp>
#include <gonso/netns.hpp>
#include <gonso/persist.hpp>
#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>
#include <gonso/workers.hpp>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

namespace {

/// errno of a by-hand system call returning -1 on failure, 0 on success.
int errno_of(int result) { return result == 0 ? 0 : errno; }

struct Attempt {
  std::string what;
  int by_hand = 0;
  int errno_value = 0;
  std::string message;
};

}  // namespace

// ---------------------------------------------------------------------------
// An unprivileged caller reaches nothing through gonso.

namespace {

/// Everything gonso offers that needs privilege over `target`, tried on the
/// calling thread, each next to the same thing done by hand on this thread.
std::vector<Attempt> try_everything(const gonso::Set& target, pid_t root_process, const std::filesystem::path& dir,
                                    const std::string& name, std::atomic<bool>& ran) {
  const int net_fd = target.fd(gonso::Kind::net);
  const int setns_by_hand = errno_of(::setns(net_fd, CLONE_NEWNET));
  const int unshare_by_hand = errno_of(::unshare(CLONE_NEWNET));
  // Naming a namespace starts with making /run/netns a shared mount; by hand
  // on a folder that exists whatever state /run/netns is in (absent, a plain
  // folder, a mount already), so that the errno compared does not depend on it.
  const int shared_by_hand = errno_of(::mount("", dir.c_str(), "none", MS_SHARED | MS_REC, nullptr));
  int bind_by_hand = 0;
  {
    const auto file = dir / "by-hand";
    const int fd = ::open(file.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    bind_by_hand = fd < 0 ? errno
                          : errno_of(::mount(fmt::format("/proc/self/fd/{}", net_fd).c_str(), file.c_str(), nullptr,
                                             MS_BIND, nullptr));
    if (fd >= 0) ::close(fd);
    if (bind_by_hand == 0) ::umount2(file.c_str(), MNT_DETACH);
    ::unlink(file.c_str());
  }
  const std::string foreign_net = fmt::format("/proc/{}/ns/net", root_process);
  const int fd = ::open(foreign_net.c_str(), O_RDONLY | O_CLOEXEC);
  const int open_by_hand = fd < 0 ? errno : 0;
  if (fd >= 0) ::close(fd);

  std::vector<Attempt> out;
  const auto attempt = [&](const std::string& what, int by_hand, auto&& fn) {
    auto [err, message] = test::errno_and_message_of(fn);
    out.push_back({what, by_hand, err, std::move(message)});
  };
  attempt("run(true)", setns_by_hand, [&] { target.run(true, [&] { ran = true; }); });
  attempt("run(false)", setns_by_hand, [&] { target.run(false, [&] { ran = true; }); });
  attempt("run_in_process", setns_by_hand, [&] { target.run_in_process([] { return 1; }); });
  attempt("spawn", setns_by_hand, [&] { gonso::spawn(target, {"/bin/true"}).wait(); });
  attempt("unshare from the target", setns_by_hand, [&] { (void)target.unshare(gonso::Kind::net); });
  attempt("unshare from here", unshare_by_hand,
          [&] { (void)gonso::Set::current(gonso::Kind::net).unshare(gonso::Kind::net); });
  attempt("Executor", setns_by_hand, [&] {
    gonso::Executor ex(target);
    ex.run([&] { ran = true; });
  });
  attempt("Pool", unshare_by_hand, [&] {
    gonso::Pool pool(gonso::Set::current(gonso::Kind::net), gonso::Kind::net, {.size = 1});
    (void)pool.get();
  });
  attempt("persist", bind_by_hand, [&] { gonso::persist(target, gonso::Kind::net, dir / "net"); });
  attempt("netns::create", shared_by_hand, [&] { (void)gonso::netns::create(name); });
  attempt("netns::add", shared_by_hand, [&] { gonso::netns::add(target, name); });
  attempt("from_pid", open_by_hand, [&] { (void)gonso::Set::from_pid(root_process, gonso::Kind::net); });
  return out;
}

}  // namespace

TEST_CASE("security: an unprivileged caller cannot reach namespaces through gonso", "[security][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const gonso::Set target = gonso::Set::current().unshare(gonso::Kind::net | gonso::Kind::uts);
    const test::ForeignNamespaces root_process(CLONE_NEWNET);
    const test::TempDir dir;
    std::filesystem::permissions(dir.path(), std::filesystem::perms::all);  // uid 65534 may create files there
    const std::string name = test::own_prefix() + "unprivileged";
    const test::Baseline base(test::Watch::process);
    const auto dir_entries = [&] {
      std::set<std::string> names;
      for (const auto& e : std::filesystem::directory_iterator(dir.path())) names.insert(e.path().string());
      return names;
    };
    const std::set<std::string> before_dir = dir_entries();

    using Runner = std::function<std::exception_ptr(std::function<void()>)>;
    const std::vector<std::pair<std::string, Runner>> callers = {
        {"a thread without CAP_SYS_ADMIN", [](std::function<void()> fn) { return test::on_unprivileged_thread(fn); }},
        {"a thread of uid 65534", [](std::function<void()> fn) { return test::on_nobody_thread(fn); }},
    };
    for (const auto& [who, on] : callers) {
      INFO("caller: " << who);
      // A privileged worker idle in the pool, which the caller must not get.
      target.run(true, [] {});
      REQUIRE(gonso::idle_workers() >= 1);
      std::atomic<bool> ran{false};
      std::vector<Attempt> attempts;
      const std::exception_ptr failure =
          on([&] { attempts = try_everything(target, root_process.pid(), dir.path(), name, ran); });
      if (failure) std::rethrow_exception(failure);
      CHECK_FALSE(ran.load());
      REQUIRE(attempts.size() == 12);
      std::string summary;
      for (const Attempt& a : attempts) summary += fmt::format("{} {}/{}; ", a.what, a.by_hand, a.errno_value);
      WARN(who << ": errno by hand/through gonso: " << summary);
      for (const Attempt& a : attempts) {
        INFO(a.what << ": by hand errno " << a.by_hand << ", through gonso errno " << a.errno_value << " (" << a.message
                    << ")");
        CHECK(a.errno_value == a.by_hand);
        if (a.what != "from_pid") {
          // Everything but opening another process's file needs CAP_SYS_ADMIN.
          CHECK((a.by_hand == EPERM || a.by_hand == EACCES));
        }
      }
      // The privileged worker is still idle, untouched.
      CHECK(gonso::idle_workers() >= 1);
      // And a worker the unprivileged caller may have left idle is not handed
      // to this thread: a run here lands in the target as before.
      const gonso::Identity expected =
          test::identity_at(gonso::Kind::net, fmt::format("/proc/self/fd/{}", target.fd(gonso::Kind::net)));
      CHECK(target.run(true, [] { return test::thread_ns(gonso::Kind::net); }) == expected);
      base.check({.children = false});
      CHECK(dir_entries() == before_dir);
    }
  });
}

// A worker never acts with a credential its caller lacks, nor lacks one it
// has: for every per-thread credential the kernel keeps, a thread that
// changed its own gets, inside Set::run, a thread whose credentials the
// kernel shows equal to its own, even when idle workers made by other
// threads wait in the pool. Read from /proc/thread-self/status and prctl,
// never from gonso.
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/privilege.hpp"

#include <gonso/set.hpp>
#include <gonso/workers.hpp>

using gonso::Kind;
using gonso::Set;

namespace {

/// The calling thread's credentials as the kernel shows them.
std::string kernel_credentials() {
  std::ifstream in("/proc/thread-self/status");
  std::string line;
  std::string out;
  static constexpr std::array<const char*, 11> fields{
      "Uid:",    "Gid:",    "Groups:",     "CapInh:",  "CapPrm:",         "CapEff:",
      "CapBnd:", "CapAmb:", "NoNewPrivs:", "Seccomp:", "Seccomp_filters:"};
  while (std::getline(in, line)) {
    for (const char* field : fields) {
      if (line.rfind(field, 0) == 0) out += line + "\n";
    }
  }
  out += fmt::format("securebits:\t{}\n", ::prctl(PR_GET_SECUREBITS, 0, 0, 0, 0));
  return out;
}

void check(long result, const char* what) {
  if (result < 0) throw std::system_error(errno, std::generic_category(), what);
}

/// Sets the calling thread's capability sets through `change`.
void change_caps(const std::function<void(std::array<__user_cap_data_struct, 2>&)>& change) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, test::tid()};
  std::array<__user_cap_data_struct, 2> data{};
  check(::syscall(SYS_capget, &header, data.data()), "capget");
  change(data);
  header.pid = test::tid();
  check(::syscall(SYS_capset, &header, data.data()), "capset");
}

void drop_effective(std::initializer_list<int> caps) {
  change_caps([&](auto& data) {
    for (int cap : caps) data[static_cast<std::size_t>(cap / 32)].effective &= ~(1u << (cap % 32));
  });
}

/// A seccomp filter that allows everything: the thread gains one filter.
void add_allow_all_filter() {
  sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  sock_fprog program{1, &allow};
  check(::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program), "seccomp");
}

struct Change {
  const char* what;
  std::function<void()> apply;  // on the caller's own thread, which it alone changes
};

std::vector<Change> changes() {
  return {
      {"setfsuid and setfsgid",
       [] {
         (void)::setfsuid(1000);
         (void)::setfsgid(1000);
       }},
      {"real and saved uid (raw setresuid)", [] { check(::syscall(SYS_setresuid, 1000, -1, 1000), "setresuid"); }},
      {"real and saved gid (raw setresgid)", [] { check(::syscall(SYS_setresgid, 1001, -1, 1002), "setresgid"); }},
      {"supplementary groups (raw setgroups)",
       [] {
         const std::array<gid_t, 3> groups{4, 24, 27};
         check(::syscall(SYS_setgroups, groups.size(), groups.data()), "setgroups");
       }},
      {"effective capabilities",
       [] {
         drop_effective({CAP_DAC_OVERRIDE, CAP_CHOWN});
       }},
      {"permitted capabilities",
       [] {
         change_caps([](auto& data) {
           data[0].effective &= ~(1u << CAP_KILL);
           data[0].permitted &= ~(1u << CAP_KILL);
         });
       }},
      {"inheritable capabilities",
       [] { change_caps([](auto& data) { data[0].inheritable |= 1u << CAP_NET_BIND_SERVICE; }); }},
      {"ambient capabilities",
       [] {
         change_caps([](auto& data) { data[0].inheritable |= 1u << CAP_NET_BIND_SERVICE; });
         check(::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0), "ambient raise");
       }},
      {"bounding set", [] { check(::prctl(PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0), "bounding drop"); }},
      {"securebits", [] { check(::prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS, 0, 0, 0), "securebits"); }},
      {"no_new_privs", [] { check(::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs"); }},
      {"a seccomp filter", [] { add_allow_all_filter(); }},
  };
}

/// A changed uid makes the process not dumpable; put it back after.
struct KeepDumpable {
  int was = ::prctl(PR_GET_DUMPABLE);
  ~KeepDumpable() { ::prctl(PR_SET_DUMPABLE, was); }
};

}  // namespace

TEST_CASE("credentials: a thread that changed its own gets a worker with exactly them", "[credentials][privileged]") {
  test::require_privilege();
  const KeepDumpable dumpable;
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  const std::string root = kernel_credentials();
  for (const Change& change : changes()) {
    INFO(change.what);
    // Idle workers of the unchanged main thread wait in the pool, one of
    // them warm from a run.
    net.run(true, [] {});
    REQUIRE(gonso::idle_workers() > 0);
    std::string before;
    std::string inside;
    std::string again;
    std::string after;
    const test::Snapshot caller = test::snapshot();
    const std::exception_ptr error = test::on_fresh_thread([&] {
      change.apply();
      before = kernel_credentials();
      inside = net.run(true, [] { return kernel_credentials(); });
      again = net.run(true, [] { return kernel_credentials(); });  // a worker of this thread's, reused
      after = kernel_credentials();
    });
    REQUIRE(error == nullptr);
    CHECK(before != root);  // the change took
    CHECK(inside == before);
    CHECK(again == before);
    CHECK(after == before);
    // The main thread still gets its own.
    CHECK(net.run(true, [] { return kernel_credentials(); }) == root);
    CHECK(test::snapshot() == caller);
  }
  gonso::retire_idle_workers();
}

TEST_CASE("credentials: a thread with fewer file rights cannot open what it could not by hand",
          "[credentials][privileged]") {
  test::require_privilege();
  const KeepDumpable dumpable;
  const test::TempDir dir;
  const std::string secret = (dir.path() / "secret").native();
  {
    const gonso::detail::unique_fd fd(::open(secret.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
    REQUIRE(fd);
  }
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  net.run(true, [] {});  // an idle worker of the main thread, fsuid 0 and every capability
  const auto open_errno = [&] {
    const int fd = ::open(secret.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    ::close(fd);
    return 0;
  };
  int by_hand = -1;
  int inside = -1;
  const std::exception_ptr error = test::on_fresh_thread([&] {
    drop_effective({CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER});
    (void)::setfsuid(1000);
    (void)::setfsgid(1000);
    by_hand = open_errno();
    inside = net.run(true, open_errno);
  });
  REQUIRE(error == nullptr);
  CHECK(by_hand == EACCES);
  CHECK(inside == EACCES);
  CHECK(net.run(true, open_errno) == 0);  // the main thread still can
  gonso::retire_idle_workers();
}

TEST_CASE("credentials: a thread with one more seccomp filter, or another thread's, is matched by its own",
          "[credentials][privileged]") {
  test::require_privilege();
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  std::string first_thread;
  std::string first_inside;
  std::string second_inside;
  std::string second_own;
  const std::exception_ptr error = test::on_fresh_thread([&] {
    add_allow_all_filter();
    first_thread = kernel_credentials();
    CHECK(net.run(true, [] { return kernel_credentials(); }) == first_thread);  // leaves an idle worker, 1 filter
    add_allow_all_filter();
    first_inside = net.run(true, [] { return kernel_credentials(); });
    first_thread = kernel_credentials();
  });
  REQUIRE(error == nullptr);
  CHECK(first_inside == first_thread);
  // Another thread with as many filters, but its own, must not get the
  // idle workers of the first (their filters differ).
  const std::exception_ptr other = test::on_fresh_thread([&] {
    add_allow_all_filter();
    add_allow_all_filter();
    second_own = kernel_credentials();
    second_inside = net.run(true, [] { return kernel_credentials(); });
  });
  REQUIRE(other == nullptr);
  CHECK(second_inside == second_own);
  gonso::retire_idle_workers();
}

TEST_CASE("credentials: a callable that changes its worker's credentials leaves no worker that has them",
          "[credentials][privileged]") {
  test::require_privilege();
  const KeepDumpable dumpable;
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  const std::string mine = kernel_credentials();
  for (const Change& change : changes()) {
    INFO(change.what);
    const std::string changed = net.run(true, [&] {
      change.apply();
      return kernel_credentials();
    });
    CHECK(changed != mine);
    // Every later run, on whichever worker, has the caller's credentials.
    for (int i = 0; i < 3; ++i) CHECK(net.run(true, [] { return kernel_credentials(); }) == mine);
  }
  gonso::retire_idle_workers();
}

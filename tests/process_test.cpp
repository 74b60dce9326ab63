// The process half of gonso: Set::run_in_process, and unshare of user, pid and
// time namespaces. Identities are read inside with stat(2) of
// /proc/self/ns/* (a process's own links), never through gonso.
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

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A process's own namespace of `kind` (for pid and time the one it is in).
gonso::Identity own_ns(Kind kind) { return test::identity_at(kind, "/proc/self/ns/" + std::string(gonso::name(kind))); }

struct Identities {
  std::array<gonso::Identity, 8> ids;
};

Identities identities_here() {
  Identities out{};
  for (std::size_t i = 0; i < gonso::all_kinds.size(); ++i) out.ids[i] = own_ns(gonso::all_kinds[i]);
  return out;
}

// Processes (by host pid) whose pid namespace is `id`, and whether any is a zombie.
struct Members {
  std::vector<pid_t> pids;
  bool zombie = false;
};
Members members_of(const gonso::Identity& id) {
  Members m;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    struct stat st {};
    if (::stat((entry.path() / "ns/pid").c_str(), &st) != 0) {
      // A zombie's namespace links are gone; its status still says which it is.
      continue;
    }
    if (st.st_dev != id.device || st.st_ino != id.inode) continue;
    m.pids.push_back(std::stoi(name));
    const std::string status = slurp(entry.path() / "status");
    if (status.find("State:\tZ") != std::string::npos) m.zombie = true;
  }
  return m;
}

template <typename Pred>
bool within(std::chrono::milliseconds bound, Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

bool no_children_left() {
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    if (!slurp(task.path() / "children").empty()) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("run_in_process joins every kind, user, pid and time included", "[privileged][process]") {
  test::require_privilege();
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
  CHECK(within(std::chrono::seconds(2), no_children_left));
}

TEST_CASE("run_in_process returns values and reports exceptions, signals and exits", "[privileged][process]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const std::size_t fds = test::count_fds();
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
  CHECK(test::count_fds() == fds);
  CHECK(within(std::chrono::seconds(2), no_children_left));
}

TEST_CASE("run_in_process reports a failed join with its errno", "[privileged][process]") {
  test::require_privilege();
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
  CHECK(within(std::chrono::seconds(2), no_children_left));
}

TEST_CASE("a new user namespace maps the caller to root, or as asked", "[privileged][process][user]") {
  test::require_privilege();
  SECTION("map me to root") {
    const Set u = Set::current().unshare(Kind::user | Kind::net);
    const auto seen =
        u.run_in_process([] { return fmt::format("{} {}|{}", ::getuid(), ::getgid(), slurp("/proc/self/uid_map")); });
    std::istringstream fields(seen.substr(seen.find('|') + 1));
    std::uint64_t inside = 9, outside = 9, count = 9;
    fields >> inside >> outside >> count;
    CHECK(seen.substr(0, seen.find('|')) == "0 0");
    CHECK(inside == 0);
    CHECK(outside == ::geteuid());
    CHECK(count == 1);
  }
  SECTION("explicit ranges") {
    gonso::UnshareOptions options;
    options.uid_map = {{0, 100000, 1000}, {1000, 0, 1}};
    options.gid_map = {{0, 200000, 10}};
    const Set u = Set::current().unshare(Kind::user, options);
    const std::string maps =
        u.run_in_process([] { return slurp("/proc/self/uid_map") + "|" + slurp("/proc/self/gid_map"); });
    std::istringstream uid(maps.substr(0, maps.find('|')));
    std::istringstream gid(maps.substr(maps.find('|') + 1));
    std::vector<std::uint64_t> u_fields{std::istream_iterator<std::uint64_t>(uid), {}};
    std::vector<std::uint64_t> g_fields{std::istream_iterator<std::uint64_t>(gid), {}};
    CHECK(u_fields == std::vector<std::uint64_t>{0, 100000, 1000, 1000, 0, 1});
    CHECK(g_fields == std::vector<std::uint64_t>{0, 200000, 10});
  }
}

TEST_CASE("namespaces unshared with a user namespace are owned by it", "[privileged][process][user]") {
  test::require_privilege();
  const Set u = Set::current().unshare(Kind::user | Kind::net | Kind::uts | Kind::ipc | Kind::mnt);
  for (Kind kind : {Kind::net, Kind::uts, Kind::ipc, Kind::mnt}) {
    INFO(gonso::name(kind));
    gonso::detail::unique_fd owner(::ioctl(u.fd(kind), NS_GET_USERNS));
    REQUIRE(owner);
    struct stat st {};
    REQUIRE(::fstat(owner.get(), &st) == 0);
    CHECK(gonso::Identity{Kind::user, st.st_dev, st.st_ino} == u.identity(Kind::user));
  }
}

TEST_CASE("a new pid namespace has an init that reaps orphans and dies with the last Set",
          "[privileged][process][pid]") {
  test::require_privilege();
  gonso::Identity pidns{};
  {
    Set p = Set::current().unshare(Kind::pid);
    pidns = p.identity(Kind::pid);
    // Exactly the init lives there while nothing runs.
    REQUIRE(within(std::chrono::seconds(2), [&] { return members_of(pidns).pids.size() == 1; }));

    // The callable's child forks a grandchild and exits at once: the
    // grandchild is orphaned to the init, which must reap it.
    const pid_t orphan_parent_status = p.run_in_process([] {
      const pid_t child = ::fork();
      if (child == 0) {
        if (::fork() == 0) {
          ::usleep(50'000);
          ::_exit(0);
        }
        ::_exit(0);
      }
      int status = 0;
      ::waitpid(child, &status, 0);
      return status;
    });
    CHECK(orphan_parent_status == 0);
    CHECK(within(std::chrono::seconds(3), [&] {
      const Members m = members_of(pidns);
      return m.pids.size() == 1 && !m.zombie;
    }));

    // A copy keeps the namespace (and its init) alive after the original goes.
    const Set copy = p;
    { const Set gone = std::move(p); }  // the original's handle is closed here
    CHECK(copy.run_in_process([] { return ::getpid(); }) > 1);
  }
  // The last Set went: nothing of that namespace is left, zombies included.
  CHECK(within(std::chrono::seconds(3), [&] { return members_of(pidns).pids.empty(); }));
  CHECK(within(std::chrono::seconds(2), no_children_left));
}

TEST_CASE("a new time namespace runs its clocks ahead by the offsets given", "[privileged][process][time]") {
  test::require_privilege();
  gonso::UnshareOptions options;
  options.monotonic_offset = std::chrono::hours(24);
  options.boottime_offset = std::chrono::hours(48) + std::chrono::milliseconds(500);
  const Set t = Set::current().unshare(Kind::time, options);
  const auto seconds = [](clockid_t clock) {
    timespec ts{};
    ::clock_gettime(clock, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  };
  struct Clocks {
    double monotonic;
    double boottime;
  };
  const double mono_before = seconds(CLOCK_MONOTONIC);
  const double boot_before = seconds(CLOCK_BOOTTIME);
  const Clocks inside = t.run_in_process([&] { return Clocks{seconds(CLOCK_MONOTONIC), seconds(CLOCK_BOOTTIME)}; });
  const double mono_after = seconds(CLOCK_MONOTONIC);
  const double boot_after = seconds(CLOCK_BOOTTIME);
  // Inside was read between the two outside readings.
  CHECK(inside.monotonic - 86400.0 >= mono_before);
  CHECK(inside.monotonic - 86400.0 <= mono_after);
  CHECK(inside.boottime - 172800.5 >= boot_before - 0.001);
  CHECK(inside.boottime - 172800.5 <= boot_after + 0.001);
}

TEST_CASE("time offsets are written also from a mount namespace whose /proc shows another pid namespace",
          "[privileged][process][time]") {
  test::require_privilege();
  // A mount namespace with a /proc of a pid namespace the caller is not in:
  // there, /proc/self of a process outside that pid namespace names nobody.
  const Set box = Set::current().unshare(Kind::mnt | Kind::pid);
  box.run_in_process([] {
    if (::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
      throw std::system_error(errno, std::generic_category(), "mount proc");
  });
  const Set mounts_only = box.dup(Kind::mnt);
  CHECK(mounts_only.run_in_process([] {
    std::error_code ec;
    (void)std::filesystem::read_symlink("/proc/self", ec);
    return static_cast<bool>(ec);
  }));  // the condition under test holds
  gonso::UnshareOptions options;
  options.monotonic_offset = std::chrono::hours(24);
  const Set timed = mounts_only.unshare(Kind::time, options);
  const auto monotonic = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
  };
  const auto before = monotonic();
  const auto inside = timed.run_in_process(monotonic);
  CHECK(inside - 86400 >= before);
  CHECK(inside - 86400 <= monotonic() + 1);
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
  CHECK(u.run_in_process([] { return own_ns(Kind::net); }) == u.identity(Kind::net));
}

namespace {
/// Runs `body` in a forked child that has become uid and gid 65534 (and
/// stays dumpable, so that its own id maps can be written), and returns the
/// text it returns, or "error: " and what it threw.
std::string as_nobody_in_child(const std::function<std::string()>& body) {
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
  std::fflush(nullptr);
  const pid_t child = ::fork();
  if (child < 0) throw std::system_error(errno, std::generic_category(), "fork");
  if (child == 0) {
    ::alarm(20);
    std::string result;
    try {
      if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0)
        throw std::runtime_error("drop");
      ::prctl(PR_SET_DUMPABLE, 1);
      result = body();
    } catch (const std::exception& e) {
      result = std::string("error: ") + e.what();
    }
    (void)!::write(report[1], result.data(), result.size());
    ::_exit(0);
  }
  ::close(report[1]);
  std::string result;
  char buf[512];
  for (ssize_t n; (n = ::read(report[0], buf, sizeof buf)) > 0;) result.append(buf, static_cast<std::size_t>(n));
  ::close(report[0]);
  ::waitpid(child, nullptr, 0);
  return result;
}
}  // namespace

TEST_CASE("rootless: an unprivileged process makes and uses its own namespaces", "[privileged][process][rootless]") {
  test::require_privilege();  // to become unprivileged
  const std::string report = as_nobody_in_child([] {
    std::string result;
    const Set box = Set::current().unshare(Kind::user | Kind::net | Kind::uts | Kind::mnt | Kind::ipc);
    result = box.run_in_process([] {
      const std::string name = "rootless";
      if (::sethostname(name.data(), name.size()) != 0)
        throw std::system_error(errno, std::generic_category(), "sethostname");
      const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      ifreq ifr{};
      std::strcpy(ifr.ifr_name, "lo");
      if (s < 0 || ::ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
        throw std::system_error(errno, std::generic_category(), "SIOCGIFFLAGS");
      ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
      if (::ioctl(s, SIOCSIFFLAGS, &ifr) != 0) throw std::system_error(errno, std::generic_category(), "SIOCSIFFLAGS");
      ::ioctl(s, SIOCGIFFLAGS, &ifr);
      ::close(s);
      char host[64] = {};
      ::gethostname(host, sizeof host - 1);
      return fmt::format("uid={} host={} lo_up={} setgroups={}", ::getuid(), host, (ifr.ifr_flags & IFF_UP) != 0,
                         slurp("/proc/self/setgroups"));
    });
    result += fmt::format(" outside_uid={}", ::getuid());
    // A program spawned there, in a pid namespace of its own as well: pid 2
    // (1 is the namespace's init).
    const Set boxed_pid = box.unshare(Kind::pid);
    gonso::SpawnOptions out;
    out.out = gonso::Stdio::pipe;
    gonso::Child sh = gonso::spawn(boxed_pid, {"sh", "-c", "echo $(id -u) $$ $(hostname)"}, out);
    result += " spawned=" + sh.read_stdout();
    result += fmt::format(" {}", sh.wait());
    // Mapping ids that are not one's own needs privilege: a clear EPERM.
    try {
      (void)Set::current().unshare(Kind::user, {.uid_map = {{0, 0, 1}}});
      result += " mapped-root!";
    } catch (const std::system_error& e) {
      result += fmt::format(" map-other={}", e.code() == std::errc::operation_not_permitted);
    }
    return result;
  });
  INFO(report);
  CHECK(report ==
        "uid=0 host=rootless lo_up=true setgroups=deny\n outside_uid=65534 spawned=0 2 rootless\n exited 0 "
        "map-other=true");
}

TEST_CASE("the process path carries the other kinds over and nests in the source Set", "[privileged][process]") {
  test::require_privilege();
  const Set source = Set::current().unshare(Kind::pid | Kind::uts);
  // Made from a Set whose pid namespace is not the caller's: the creator is
  // forked into it first. Many rounds, since the order of its messages once raced.
  for (int i = 0; i < 30; ++i) {
    const Set made = source.unshare(Kind::user | Kind::net);
    CHECK(made.identity(Kind::uts) == source.identity(Kind::uts));
    CHECK(made.identity(Kind::pid) == source.identity(Kind::pid));
    CHECK(made.identity(Kind::net) != source.identity(Kind::net));
    const Set timed = source.unshare(Kind::time | Kind::ipc);
    CHECK(timed.identity(Kind::time) != source.identity(Kind::time));
    CHECK(timed.identity(Kind::ipc) != source.identity(Kind::ipc));
    CHECK(timed.identity(Kind::uts) == source.identity(Kind::uts));
  }
  // A pid namespace made from it nests inside it.
  const Set nested = source.unshare(Kind::pid);
  gonso::detail::unique_fd parent(::ioctl(nested.fd(Kind::pid), NS_GET_PARENT));
  REQUIRE(parent);
  struct stat st {};
  REQUIRE(::fstat(parent.get(), &st) == 0);
  CHECK(gonso::Identity{Kind::pid, st.st_dev, st.st_ino} == source.identity(Kind::pid));
  CHECK(nested.run_in_process([] { return ::getpid(); }) == 2);
}

TEST_CASE("joining a user namespace makes the process its root where 0 is mapped", "[privileged][process][user]") {
  test::require_privilege();
  gonso::UnshareOptions ids;
  ids.uid_map = {{0, 100000, 65536}};
  ids.gid_map = {{0, 100000, 65536}};
  const Set u = Set::current().unshare(Kind::user | Kind::uts, ids);
  const auto seen = u.run_in_process([] {
    const std::string name = "mapped";
    const bool named = ::sethostname(name.data(), name.size()) == 0;
    return fmt::format("{} {} {} {}", ::getuid(), ::geteuid(), ::getgid(), named);
  });
  CHECK(seen == "0 0 0 true");
}

namespace {
// The first line of an id map with its padding squeezed: "0 1000 10".
std::string first_map_line(const std::string& path) {
  const auto lines = test::words_by_line(slurp(path));
  std::string line;
  for (const std::string& word : lines.empty() ? std::vector<std::string>{} : lines.front())
    line += (line.empty() ? "" : " ") + word;
  return line;
}

// What a process inside a Set sees of its own user namespace, from the
// kernel: its identity, the owner of its ipc and uts namespaces
// (NS_GET_USERNS), its net namespace, its uid and uid_map (whose outside ids
// the kernel shows in the parent namespace's terms), commas for spaces.
std::string user_view_here() {
  const auto ino = [](int fd) {
    struct stat st {};
    const bool ok = fd >= 0 && ::fstat(fd, &st) == 0;
    if (fd >= 0) ::close(fd);
    return ok ? std::to_string(st.st_ino) : std::string("?");
  };
  const auto owner_ino = [&](const char* path) {
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    const int owner = fd >= 0 ? ::ioctl(fd, NS_GET_USERNS) : -1;
    if (fd >= 0) ::close(fd);
    return ino(owner);
  };
  std::string map = first_map_line("/proc/self/uid_map");
  std::replace(map.begin(), map.end(), ' ', ',');
  return fmt::format("user={} ipc_owner={} uts_owner={} net={} uid={} map={}",
                     ino(::open("/proc/self/ns/user", O_RDONLY | O_CLOEXEC)), owner_ino("/proc/self/ns/ipc"),
                     owner_ino("/proc/self/ns/uts"), ino(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)), ::getuid(),
                     map);
}

// The inode of the parent of the user namespace a program spawned into
// `set` is in, asked from outside (inside, the parent is out of its sight).
std::string user_parent_seen_from_outside(const Set& set) {
  gonso::Child sleeper = gonso::spawn(set, {"sleep", "30"});
  std::string result = "?";
  const int user = ::open(fmt::format("/proc/{}/ns/user", sleeper.pid()).c_str(), O_RDONLY | O_CLOEXEC);
  const int parent = user >= 0 ? ::ioctl(user, NS_GET_PARENT) : -1;
  struct stat st {};
  if (parent >= 0 && ::fstat(parent, &st) == 0) result = std::to_string(st.st_ino);
  if (parent >= 0) ::close(parent);
  if (user >= 0) ::close(user);
  sleeper.kill();
  (void)sleeper.wait();
  return result;
}

std::string field(const std::string& view, const std::string& name) {
  const auto at = view.find(name + "=");
  if (at == std::string::npos) return "missing " + name;
  const auto end = view.find(' ', at);
  return view.substr(at + name.size() + 1, end == std::string::npos ? std::string::npos : end - at - name.size() - 1);
}
}  // namespace

TEST_CASE("a user namespace nests in a Set's foreign one, owned by it", "[privileged][process][user]") {
  test::require_privilege();
  const test::Snapshot before = test::snapshot();
  // The outer namespace maps 65536 ids from 100000; the nested one maps ten
  // of those from the outer's 1000: the kernel shows 101000 from outside.
  gonso::UnshareOptions outer_ids;
  outer_ids.uid_map = outer_ids.gid_map = {{0, 100000, 65536}};
  const Set outer = Set::current(Kind::net).unshare(Kind::user | Kind::net, outer_ids);
  gonso::UnshareOptions nested_ids;
  nested_ids.uid_map = nested_ids.gid_map = {{0, 1000, 10}};
  const Set nested = outer.unshare(Kind::user | Kind::ipc | Kind::uts, nested_ids);
  const std::string out = outer.run_in_process([] { return user_view_here(); });
  const std::string in = nested.run_in_process([] { return user_view_here(); });
  INFO("outer: " << out << "\nnested: " << in);
  CHECK(field(in, "user") != field(out, "user"));
  CHECK(user_parent_seen_from_outside(nested) == field(out, "user"));
  CHECK(field(in, "ipc_owner") == field(in, "user"));
  CHECK(field(in, "uts_owner") == field(in, "user"));
  CHECK(field(in, "net") == field(out, "net"));  // carried over
  CHECK(field(in, "uid") == "0");
  CHECK(field(in, "map") == "0,1000,10");  // in the outer namespace's ids
  // From the caller's side, the nested namespace's ids are the host's 101000...
  gonso::SpawnOptions quiet;
  gonso::Child sleeper = gonso::spawn(nested, {"sleep", "30"}, quiet);
  CHECK(first_map_line(fmt::format("/proc/{}/uid_map", sleeper.pid())) == "0 101000 10");
  CHECK(first_map_line(fmt::format("/proc/{}/gid_map", sleeper.pid())) == "0 101000 10");
  sleeper.kill();
  (void)sleeper.wait();

  SECTION("default maps: the caller's id as the Set's namespace sees it becomes root") {
    const Set deeper = nested.unshare(Kind::user);  // a third level, nested in the nested one
    const std::string third = deeper.run_in_process([] { return user_view_here(); });
    INFO("third: " << third);
    CHECK(user_parent_seen_from_outside(deeper) == field(in, "user"));
    CHECK(field(third, "uid") == "0");
    CHECK(field(third, "map") == "0,0,1");  // root of the nested namespace, in its ids
    CHECK(field(third, "net") == field(out, "net"));
  }
  SECTION("ids the Set's namespace does not map are refused, naming it") {
    gonso::UnshareOptions unmapped;
    unmapped.uid_map = {{0, 20, 1}};  // the nested namespace maps only 0..9
    const std::system_error e = test::system_error_of([&] { (void)nested.unshare(Kind::user, unmapped); });
    CHECK_THAT(e.what(),
               Catch::Contains("nested in") && Catch::Contains(fmt::format("{}", nested.identity(Kind::user))));
    CHECK(e.code().value() != 0);
  }
  CHECK(test::snapshot() == before);  // the caller never moved
  CHECK(within(std::chrono::seconds(2), no_children_left));
}

TEST_CASE("rootless: a user namespace nests in one the caller made", "[privileged][process][rootless]") {
  test::require_privilege();  // to become unprivileged
  const std::string report = as_nobody_in_child([] {
    const Set outer = Set::current().unshare(Kind::user | Kind::net);
    const Set nested = outer.unshare(Kind::user | Kind::uts);
    const std::string out = outer.run_in_process([] { return user_view_here(); });
    const std::string in = nested.run_in_process([] {
      const std::string name = "nested";
      const bool named = ::sethostname(name.data(), name.size()) == 0;
      return fmt::format("{} named={}", user_view_here(), named);
    });
    return fmt::format("parent_is_outer={} same_net={} uid={} map={} named={} outside_uid={}",
                       user_parent_seen_from_outside(nested) == field(out, "user"),
                       field(in, "net") == field(out, "net"), field(in, "uid"), field(in, "map"), field(in, "named"),
                       ::getuid());
  });
  CHECK(report == "parent_is_outer=true same_net=true uid=0 map=0,0,1 named=true outside_uid=65534");
}

TEST_CASE("unshare refuses what it cannot do right, clearly", "[privileged][process]") {
  test::require_privilege();
  SECTION("from a thread whose children go to another pid namespace") {
    const Set pidns = Set::current().unshare(Kind::pid);
    const std::string error = pidns.run(true, [] {
      try {
        (void)Set::current().unshare(Kind::user);
        return std::string("none");
      } catch (const std::system_error& e) {
        return std::string(e.what());
      }
    });
    CHECK_THAT(error, Catch::Contains("another pid namespace"));
  }
  CHECK(within(std::chrono::seconds(2), no_children_left));
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

TEST_CASE("run_in_process binds /etc/netns/NAME over /etc when asked", "[privileged][process][netns]") {
  test::require_privilege();
  const std::string name = fmt::format("gonso-etc-run-{}", ::getpid());
  const test::EtcNetnsFiles etc(name, {{"hosts", "192.0.2.1 inside\n"}});
  const std::string host_hosts = slurp("/etc/hosts");
  const Set net = Set::current().unshare(Kind::net);
  gonso::ProcessOptions options;
  options.etc_of_netns = name;
  CHECK(net.run_in_process([] { return slurp("/etc/hosts"); }, options) == "192.0.2.1 inside\n");
  CHECK(net.run_in_process([] { return slurp("/etc/hosts"); }) == host_hosts);
  CHECK(slurp("/etc/hosts") == host_hosts);
  options.etc_of_netns = "..";
  CHECK_THROWS_AS(net.run_in_process([] {}, options), std::invalid_argument);
}

TEST_CASE("run_in_process follows no symlink in /etc/netns/NAME: the overlay is refused, the link's target not bound",
          "[privileged][process][netns]") {
  test::require_privilege();
  namespace fs = std::filesystem;
  const test::TempDir elsewhere;
  std::ofstream(elsewhere.path() / "hosts") << "192.0.2.66 from elsewhere\n";
  const std::string host_hosts = slurp("/etc/hosts");
  const Set net = Set::current().unshare(Kind::net);
  gonso::ProcessOptions options;
  // 1. An entry that is a symlink: iproute2 would bind what it leads to.
  const std::string name = fmt::format("gonso-etc-link-{}", ::getpid());
  const test::EtcNetnsFiles etc(name, {});
  fs::create_symlink(elsewhere.path() / "hosts", fs::path("/etc/netns") / name / "hosts");
  options.etc_of_netns = name;
  bool ran = false;
  auto e = test::system_error_of([&] { ran = net.run_in_process([] { return true; }, options); });
  CHECK_FALSE(ran);
  CHECK(e.code().value() == ELOOP);
  CHECK_THAT(e.what(), Catch::Contains("/etc/netns/" + name + "/hosts"));
  // 2. /etc/netns/NAME itself a symlink to a folder: refused before the fork.
  const std::string linked = fmt::format("gonso-etc-dirlink-{}", ::getpid());
  const fs::path link = fs::path("/etc/netns") / linked;
  fs::create_directory_symlink(elsewhere.path(), link);
  options.etc_of_netns = linked;
  const std::set<pid_t> children = test::children();
  e = test::system_error_of([&] { ran = net.run_in_process([] { return true; }, options); });
  fs::remove(link);
  CHECK_FALSE(ran);
  CHECK(e.code().value() == ENOTDIR);  // not a folder of its own
  CHECK(test::children() == children);
  // Nothing of it reached this process's /etc either.
  CHECK(slurp("/etc/hosts") == host_hosts);
  CHECK(test::mounts_at("/etc/hosts") == 0);
}

// As `ip netns exec`: an /etc file that is a symlink (resolv.conf into /run
// is common) is covered where it leads, in the child's mount namespace only.
TEST_CASE("run_in_process covers an /etc file that is a symlink where it leads, in the child only",
          "[privileged][process][netns]") {
  test::require_privilege();
  namespace fs = std::filesystem;
  const test::TempDir elsewhere;
  const fs::path target = elsewhere.path() / "resolv.conf";
  std::ofstream(target) << "nameserver 192.0.2.1\n";
  const std::string file = fmt::format("gonso-test-{}-resolv.conf", ::getpid());
  const fs::path link = fs::path("/etc") / file;
  fs::create_symlink(target, link);
  struct Remove {
    fs::path path;
    ~Remove() { ::unlink(path.c_str()); }
  } remove_link{link};
  const std::string name = fmt::format("gonso-etc-target-{}", ::getpid());
  const test::EtcNetnsFiles etc(name, {{file, "nameserver 192.0.2.53\n"}});
  const Set net = Set::current().unshare(Kind::net);
  gonso::ProcessOptions options;
  options.etc_of_netns = name;
  CHECK(net.run_in_process([&] { return slurp(link); }, options) == "nameserver 192.0.2.53\n");
  CHECK(slurp(link) == "nameserver 192.0.2.1\n");  // the host's is untouched
  CHECK(test::mounts_at(target.native()) == 0);
}

TEST_CASE("run_in_process returns when the child ends, not when its forks let go", "[privileged][process]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const std::size_t fds = test::count_fds();
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
  CHECK(test::count_fds() == fds);
  // Orphaned, it is reaped by the caller's init once it read end of file.
  CHECK(within(std::chrono::seconds(3), [&] { return !std::filesystem::exists(fmt::format("/proc/{}", grandchild)); }));
  CHECK(within(std::chrono::seconds(2), no_children_left));
}

TEST_CASE("run_in_process carries reports larger than a pipe holds", "[privileged][process]") {
  test::require_privilege();
  const Set net = Set::current().unshare(Kind::net);
  const std::size_t fds = test::count_fds();
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
  CHECK(within(std::chrono::seconds(2), no_children_left));
  CHECK(test::count_fds() == fds);
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

namespace {
/// The user namespace that owns the namespace of `fd`, by the kernel's
/// NS_GET_USERNS and fstat: never gonso's answer.
gonso::Identity owner_by_kernel(int fd) {
  gonso::detail::unique_fd owner(::ioctl(fd, NS_GET_USERNS));
  if (!owner) throw std::system_error(errno, std::generic_category(), "NS_GET_USERNS");
  struct stat st {};
  if (::fstat(owner.get(), &st) != 0) throw std::system_error(errno, std::generic_category(), "fstat");
  return gonso::Identity{Kind::user, st.st_dev, st.st_ino};
}
gonso::Identity identity_by_kernel(Kind kind, int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw std::system_error(errno, std::generic_category(), "fstat");
  return gonso::Identity{kind, st.st_dev, st.st_ino};
}

/// Unshares every thread kind, one after the other, from a Set holding a
/// user namespace of its own: each new one is owned by that user namespace,
/// the rest carried over. Returns "" or what was wrong.
std::string unshare_thread_kinds_under(const Set& box) {
  const gonso::Identity user = identity_by_kernel(Kind::user, box.fd(Kind::user));
  std::string wrong;
  Set current = box;
  for (Kind kind : {Kind::ipc, Kind::uts, Kind::net, Kind::cgroup, Kind::mnt}) {
    const Set next = current.unshare(kind);
    const gonso::Identity before =
        current.contains(kind) ? identity_by_kernel(kind, current.fd(kind)) : test::thread_ns(kind);
    if (identity_by_kernel(kind, next.fd(kind)) == before) {
      wrong += fmt::format(" {} not fresh;", kind);
    }
    if (owner_by_kernel(next.fd(kind)) != user)
      wrong += fmt::format(" {} not owned by the Set's user namespace;", kind);
    for (Kind other : current.kinds()) {
      if (other != kind && identity_by_kernel(other, next.fd(other)) != identity_by_kernel(other, current.fd(other))) {
        wrong += fmt::format(" {} not carried over;", other);
      }
    }
    current = next;
  }
  // And a process in the result sees them, user namespace and all.
  const bool seen = current.run_in_process([&] {
    for (Kind kind : current.kinds()) {
      if (own_ns(kind) != identity_by_kernel(kind, current.fd(kind))) return false;
    }
    return true;
  });
  if (!seen) wrong += " a process in the Set is elsewhere;";
  return wrong;
}
}  // namespace

TEST_CASE("thread kinds unshared from a Set with a foreign user namespace are owned by it",
          "[privileged][process][user]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set box = Set::current(Kind::net).unshare(Kind::user | Kind::net);
  CHECK_FALSE(box.thread_joinable());
  CHECK(Set::current().thread_joinable());
  CHECK(unshare_thread_kinds_under(box).empty());
  // A Pool of such Sets runs its hook in a child process, inside.
  gonso::PoolOptions options;
  options.size = 1;
  options.after_create = [] {
    if (::sethostname("pooled", 6) != 0) throw std::system_error(errno, std::generic_category(), "sethostname");
  };
  gonso::Pool pool(box, Kind::uts, options);
  const Set pooled = pool.get();
  CHECK(owner_by_kernel(pooled.fd(Kind::uts)) == identity_by_kernel(Kind::user, box.fd(Kind::user)));
  CHECK(test::snapshot() == caller);
}

TEST_CASE("rootless: thread kinds unshared under the process's own user namespace", "[privileged][process][rootless]") {
  test::require_privilege();  // to become unprivileged
  CHECK(as_nobody_in_child([] {
          const Set box = Set::current(Kind::net).unshare(Kind::user | Kind::net);
          return "ok:" + unshare_thread_kinds_under(box);
        }) == "ok:");
}

// Rootless and nested user namespaces: an unprivileged process makes and uses
// its own, a user namespace nests in a Set's foreign one, and thread kinds
// unshared under a foreign user namespace are owned by it. Identities are read
// inside with stat(2) of /proc/self/ns/* (a process's own links), never
// through gonso.
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
#include <array>
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

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>

using gonso::Kind;
using gonso::Set;

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
                         test::file_text("/proc/self/setgroups"));
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

namespace {
// The first line of an id map with its padding squeezed: "0 1000 10".
std::string first_map_line(const std::string& path) {
  const auto lines = test::words_by_line(test::file_text(path));
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
  const test::Baseline base(test::Watch::namespaces | test::Watch::children);
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
  base.check();                    // the caller never moved
  CHECK(base.children().empty());  // none before, so none left
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
      if (test::process_ns(kind) != identity_by_kernel(kind, current.fd(kind))) return false;
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

// gonso-sandbox: a rootless sandbox. An unprivileged user makes a user
// namespace that maps it to root, with net, uts, ipc, mnt and pid namespaces
// inside it; code run there can set a hostname and bring `lo` up, a
// program spawned there sees itself as root and as pid 2, and one started
// as pid 1 of a pid namespace of its own sees only its own processes in a
// fresh /proc (as `unshare --pid --fork --mount-proc`).
//
// Run it as any user. Run as root, it first drops to uid/gid 65534 (nobody)
// to show that no privilege is needed.
#include <grp.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <exception>
#include <string>
#include <system_error>

#include <fmt/format.h>
#include <gonso/set.hpp>
#include <gonso/spawn.hpp>

namespace {

void drop_root() {
  if (::geteuid() != 0) return;
  if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) {
    throw std::system_error(errno, std::generic_category(), "cannot drop to uid 65534");
  }
  // setuid() made us non-dumpable; our user namespace's maps need us dumpable.
  ::prctl(PR_SET_DUMPABLE, 1);
}

void bring_lo_up() {
  const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) throw std::system_error(errno, std::generic_category(), "socket");
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  const bool ok =
      ::ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && ((ifr.ifr_flags |= IFF_UP), ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0);
  const int err = errno;
  ::close(s);
  if (!ok) throw std::system_error(err, std::generic_category(), "cannot bring lo up");
}

}  // namespace

int main() try {
  drop_root();
  fmt::print("outside: uid {}\n", ::getuid());

  using gonso::Kind;
  const gonso::Set box =
      gonso::Set::current().unshare(Kind::user | Kind::net | Kind::uts | Kind::ipc | Kind::mnt | Kind::pid);
  fmt::print("sandbox: {}\n", box);

  const std::string inside = box.run_in_process([] {
    const std::string name = "sandbox";
    if (::sethostname(name.data(), name.size()) != 0)
      throw std::system_error(errno, std::generic_category(), "sethostname");
    bring_lo_up();
    return fmt::format("uid {} pid {} hostname {} lo up", ::getuid(), ::getpid(), name);
  });
  fmt::print("inside:  {}\n", inside);

  gonso::SpawnOptions options;
  options.out = gonso::Stdio::pipe;
  gonso::Child child =
      gonso::spawn(box, {"sh", "-c", "echo \"program: uid $(id -u) pid $$ hostname $(hostname)\""}, options);
  fmt::print("{}", child.read_stdout());
  if (!child.wait().success()) return 1;

  // A new pid namespace is made below the maker's own, so this program
  // joins every namespace of the box but its pid namespace.
  gonso::SpawnOptions init = options;
  init.new_pid_namespace = true;
  init.mount_proc = true;
  gonso::Child pid1 =
      gonso::spawn(box.dup(box.kinds() - Kind::pid),
                   {"sh", "-c", "echo \"init:    pid $$, /proc/1 is $(cat /proc/1/comm), ppid $PPID\""}, init);
  fmt::print("{}", pid1.read_stdout());
  return pid1.wait().success() ? 0 : 1;
} catch (const std::exception& e) {
  fmt::print(stderr, "gonso-sandbox: {}\n", e.what());
  return 1;
}

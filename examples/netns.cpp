// gonso-netns: a named network namespace that iproute2 sees. gonso creates
// it under /run/netns, configures it from a worker thread, then asks
// `ip netns` about it, and removes the name again.
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <gonso/netns.hpp>
#include <gonso/spawn.hpp>

namespace {

// Runs inside the namespace, on a gonso worker thread.
bool bring_lo_up() {
  const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) throw std::system_error(errno, std::generic_category(), "socket");
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  bool up = ::ioctl(s, SIOCGIFFLAGS, &ifr) == 0;
  if (up) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    up = ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
  }
  ::close(s);
  return up;
}

std::string ip(const std::vector<std::string>& args) {
  std::vector<std::string> argv{"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  gonso::SpawnOptions options;
  options.out = gonso::Stdio::pipe;
  gonso::Child child = gonso::spawn(gonso::Set::current(gonso::Kind::uts), argv, options);
  std::string out = child.read_stdout();
  (void)child.wait();
  return out;
}

}  // namespace

int main() try {
  const std::string name = fmt::format("gonso-demo-{}", ::getpid());
  const gonso::Set ns = gonso::netns::create(name);
  fmt::print("created {} as {}\n", name, ns.identity(gonso::Kind::net));

  const bool up = ns.run(true, bring_lo_up);
  fmt::print("lo is {} inside\n", up ? "up" : "still down");

  fmt::print("ip netns list:\n{}", ip({"netns", "list"}));
  fmt::print("ip netns exec {} readlink /proc/self/ns/net: {}", name,
             ip({"netns", "exec", name, "readlink", "/proc/self/ns/net"}));
  fmt::print("ip -n {} -brief link:\n{}", name, ip({"-n", name, "-brief", "link"}));

  gonso::netns::remove(name);
  const std::vector<std::string> names = gonso::netns::list();
  fmt::print("removed {}; gonso::netns::list() has it: {}\n", name,
             std::find(names.begin(), names.end(), name) != names.end());
  return up ? 0 : 1;
} catch (const std::exception& e) {
  fmt::print(stderr, "gonso-netns: {}\n", e.what());
  return 1;
}

// gonso's main job in one screen: make fresh net and uts namespaces, run code
// inside them on a worker thread, and show that the caller never moved.
// Run as root: creating namespaces needs CAP_SYS_ADMIN.
#include <net/if.h>
#include <unistd.h>

#include <exception>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gonso/set.hpp>

namespace {

std::string hostname() {
  char buf[256] = {};
  ::gethostname(buf, sizeof buf - 1);
  return buf;
}

// if_nameindex() asks the kernel over netlink, so it lists the interfaces of
// the calling thread's network namespace.
std::vector<std::string> interfaces() {
  std::vector<std::string> names;
  if (struct if_nameindex* list = ::if_nameindex()) {
    for (struct if_nameindex* i = list; i->if_index != 0; ++i) names.emplace_back(i->if_name);
    ::if_freenameindex(list);
  }
  return names;
}

struct View {
  std::string hostname;
  std::vector<std::string> interfaces;
  gonso::Set namespaces;
};

View look_around() { return {hostname(), interfaces(), gonso::Set::current(gonso::Kind::net | gonso::Kind::uts)}; }

void show(const char* who, const View& v) {
  fmt::print("{:<8} hostname {:<12} interfaces {:<28} {}\n", who, v.hostname,
             fmt::format("{}", fmt::join(v.interfaces, ",")), v.namespaces);
}

}  // namespace

int main() try {
  const View before = look_around();
  show("caller", before);

  const gonso::Set sandbox = gonso::Set::current().unshare(gonso::Kind::net | gonso::Kind::uts);

  const View inside = sandbox.run(true, [] {
    const std::string name = "gonso-demo";
    if (::sethostname(name.data(), name.size()) != 0)
      throw std::system_error(errno, std::generic_category(), "sethostname");
    return look_around();
  });
  show("inside", inside);

  const View after = look_around();
  show("caller", after);

  const bool moved = !(after.namespaces == before.namespaces) || after.hostname != before.hostname;
  const bool entered =
      inside.namespaces == sandbox.dup(gonso::Kind::net | gonso::Kind::uts) && inside.hostname == "gonso-demo";
  fmt::print("{}\n", entered && !moved ? "the code ran inside the new namespaces; the caller never moved"
                                       : "UNEXPECTED: see the identities above");
  return entered && !moved ? 0 : 1;
} catch (const std::exception& e) {
  fmt::print(stderr, "gonso-demo: {}\n", e.what());
  return 1;
}

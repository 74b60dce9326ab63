// A consumer of gonso: reads its own namespaces and runs a callable in them.
// Needs no privilege: the worker is already in every namespace of the Set.
#include <sys/stat.h>

#include <cstdio>
#include <string>

#include <fmt/format.h>
#include <gonso/set.hpp>

int main() {
  const gonso::Set here = gonso::Set::current(gonso::Kind::net | gonso::Kind::uts);
  const gonso::Identity inside = here.run(true, [] {
    struct stat st {};
    ::stat("/proc/thread-self/ns/net", &st);
    return gonso::Identity{gonso::Kind::net, st.st_dev, st.st_ino};
  });
  fmt::print("consumer: {} ran in {}\n", here, inside);
  return inside == here.identity(gonso::Kind::net) ? 0 : 1;
}

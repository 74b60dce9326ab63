// gonso and the real tools agree: namespaces gonso creates are the ones
// util-linux nsenter enters and lsns lists. The tools run through popen(3),
// not through gonso.
#include <signal.h>

#include <cstdio>
#include <string>

#include "support/kernel_view.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/spawn.hpp>

using gonso::Kind;
using gonso::Set;

TEST_CASE("nsenter --target and lsns see the namespaces gonso created", "[privileged][process][tools]") {
  test::require_privilege();
  const Set box = Set::current().unshare(Kind::user | Kind::net | Kind::uts | Kind::ipc | Kind::mnt | Kind::pid);
  gonso::Child sleeper = gonso::spawn(box, {"sleep", "60"});
  const pid_t pid = sleeper.pid();

  for (Kind kind : {Kind::user, Kind::net, Kind::uts, Kind::ipc, Kind::mnt, Kind::pid}) {
    const std::string name(gonso::name(kind));
    INFO(name);
    // nsenter --pid forks, so its program is inside the pid namespace too.
    const std::string option = kind == Kind::mnt ? "mount" : name;
    const std::string seen =
        test::tool_output(fmt::format("nsenter --target {} --{} readlink /proc/self/ns/{}", pid, option, name));
    CHECK(seen == gonso::to_string(box.identity(kind)) + "\n");
  }

  // lsns names a namespace by inode and one of its processes.
  const std::string listed = test::tool_output("lsns -t net -n -o NS");
  CHECK_THAT(listed, Catch::Contains(std::to_string(box.identity(Kind::net).inode)));
  const std::string users = test::tool_output(fmt::format("lsns -t user -n -o NS,PID"));
  CHECK_THAT(users, Catch::Contains(std::to_string(box.identity(Kind::user).inode)));

  sleeper.kill(SIGKILL);
  CHECK(sleeper.wait().signal() == SIGKILL);
}

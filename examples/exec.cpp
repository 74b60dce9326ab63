// gonso-exec: run a program inside a running container, as
// `nsenter -t PID -a -r -w -S UID -G GID` and `runc exec` do, in one call:
// the target's namespaces, root, working directory, ids, cgroup and
// environment, taken through a pidfd so that a reused pid is never entered.
//
//   gonso-exec --target PID [--all | --net --mnt ...] [--root] [--wd | --wdns DIR]
//              [--user UID] [--group GID] [--cgroup] [--env] -- PROGRAM [ARGS...]
//   gonso-exec --target PID --runc -- PROGRAM [ARGS...]   (everything runc exec takes)
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <gonso/spawn.hpp>
#include <gonso/target.hpp>

namespace {

[[noreturn]] void usage(const std::string& why) {
  fmt::print(stderr,
             "gonso-exec: {}\n"
             "usage: gonso-exec --target PID [--all | --cgroup-ns --ipc --mnt --net --pid --time --user-ns --uts] "
             "[--root] [--wd | --wdns DIR] [--user UID] [--group GID] [--cgroup] [--env] [--runc] "
             "-- PROGRAM [ARGS...]\n",
             why);
  std::exit(2);
}

std::uint32_t id_arg(const char* text, const char* what) {
  char* end = nullptr;
  const unsigned long v = std::strtoul(text, &end, 10);
  if (*text == '\0' || *end != '\0' || v >= 0xffffffffUL) usage(fmt::format("{} {:?} is not a number", what, text));
  return static_cast<std::uint32_t>(v);
}

}  // namespace

int main(int argc, char** argv) try {
  std::optional<pid_t> target;
  gonso::Kinds kinds;
  bool all = false, root = false, wd = false, cgroup = false, env = false, runc = false;
  std::optional<std::string> wdns;
  std::optional<std::uint32_t> uid, gid;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg == "--target" && has_value) {
      target = static_cast<pid_t>(id_arg(argv[++i], "pid"));
    } else if (arg == "--all") {
      all = true;
    } else if (arg == "--root") {
      root = true;
    } else if (arg == "--wd") {
      wd = true;
    } else if (arg == "--wdns" && has_value) {
      wdns = argv[++i];
    } else if (arg == "--user" && has_value) {
      uid = id_arg(argv[++i], "uid");
    } else if (arg == "--group" && has_value) {
      gid = id_arg(argv[++i], "gid");
    } else if (arg == "--cgroup") {
      cgroup = true;
    } else if (arg == "--env") {
      env = true;
    } else if (arg == "--runc") {
      runc = true;
    } else if (arg == "--cgroup-ns") {  // --cgroup is the cgroup directory, as docker exec uses it
      kinds |= gonso::Kind::cgroup;
    } else if (arg == "--user-ns") {
      kinds |= gonso::Kind::user;
    } else if (const auto kind =
                   arg.size() > 2 && arg.substr(0, 2) == "--" ? gonso::kind_from_name(arg.substr(2)) : std::nullopt) {
      kinds |= *kind;
    } else {
      usage(fmt::format("unknown option {}", arg));
    }
  }
  if (!target) usage("no --target given");
  if (i >= argc) usage("no program given");
  if (wd && wdns) usage("give one of --wd and --wdns");
  if (all || runc) kinds = gonso::Kinds::all();
  if (kinds.empty()) usage("no namespace kind given");

  const gonso::Target t = gonso::Target::of_pid(*target, kinds);
  gonso::SpawnOptions options;
  if (runc) {
    options = t.exec_options();
  } else {
    if (root) options.root = t.root();
    if (wd) options.cwd_dir = t.cwd();
    if (wdns) options.cwd = *wdns;
    // nsenter -S/-G: a missing one is 0; the groups are dropped where allowed.
    if (uid || gid) options.user = gonso::Credentials{uid.value_or(0), gid.value_or(0), std::nullopt};
    if (cgroup) options.cgroup = t.cgroup();
    if (env) options.env = t.environment();
  }
  const gonso::ExitStatus status = gonso::spawn(t.set(), {argv + i, argv + argc}, options).wait();
  return status.signaled() ? 128 + status.signal() : status.code();
} catch (const std::exception& e) {
  fmt::print(stderr, "gonso-exec: {}\n", e.what());
  return 1;
}

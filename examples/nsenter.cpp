// gonso-nsenter: run a program inside the namespaces of a process or of a
// folder of namespace files, as util-linux nsenter does, without a helper
// process of its own: gonso forks, joins and executes the program directly.
//
//   gonso-nsenter --target PID [--net --mnt ...] [--wd DIR] -- PROGRAM [ARGS...]
//   gonso-nsenter --dir /run/some/ns --all -- PROGRAM [ARGS...]
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <gonso/set.hpp>
#include <gonso/spawn.hpp>

namespace {

[[noreturn]] void usage(const char* why) {
  fmt::print(stderr,
             "gonso-nsenter: {}\n"
             "usage: gonso-nsenter (--target PID | --dir DIR) [--all | --cgroup --ipc --mnt --net --pid --time "
             "--user --uts] [--wd DIR] -- PROGRAM [ARGS...]\n",
             why);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) try {
  std::optional<pid_t> target;
  std::optional<std::string> dir;
  std::optional<std::string> wd;
  gonso::Kinds kinds;
  bool all = false;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg == "--target" && i + 1 < argc) {
      target = static_cast<pid_t>(std::stol(argv[++i]));
    } else if (arg == "--dir" && i + 1 < argc) {
      dir = argv[++i];
    } else if (arg == "--wd" && i + 1 < argc) {
      wd = argv[++i];
    } else if (arg == "--all") {
      all = true;
    } else if (arg == "--mount") {  // nsenter's spelling of --mnt
      kinds |= gonso::Kind::mnt;
    } else if (const auto kind =
                   arg.size() > 2 && arg.substr(0, 2) == "--" ? gonso::kind_from_name(arg.substr(2)) : std::nullopt) {
      kinds |= *kind;
    } else {
      usage(fmt::format("unknown option {}", arg).c_str());
    }
  }
  if (target.has_value() == dir.has_value()) usage("give one of --target and --dir");
  if (i >= argc) usage("no program given");
  if (all) kinds = gonso::Kinds::all();
  if (kinds.empty()) usage("no namespace kind given");

  // With --all, join what the target has; the user namespace only when it is
  // not ours (nsenter does the same).
  gonso::Set set = target ? gonso::Set::from_pid(*target, kinds) : gonso::Set::from_dir(*dir, kinds);

  gonso::SpawnOptions options;
  if (wd) options.cwd = *wd;
  const gonso::ExitStatus status = gonso::spawn(set, {argv + i, argv + argc}, options).wait();
  return status.signaled() ? 128 + status.signal() : status.code();
} catch (const std::exception& e) {
  fmt::print(stderr, "gonso-nsenter: {}\n", e.what());
  return 1;
}

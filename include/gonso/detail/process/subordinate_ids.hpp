// gonso: subordinate ids (UnshareOptions::subordinate_ids): reading the
// ranges /etc/subuid and /etc/subgid grant, turning them into id maps, and
// running the setuid helper (newuidmap, newgidmap) that writes such maps for
// a caller without CAP_SETUID or CAP_SETGID.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/process/child_code.hpp>
#include <gonso/detail/process/exec.hpp>
#include <gonso/detail/process/launch.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/io.hpp>
#include <gonso/detail/sys/unique_fd.hpp>
#include <gonso/options.hpp>

namespace gonso::detail {

/// One range a subordinate id file grants: ids [first, first + count).
struct subid_range {
  std::uint32_t first = 0;
  std::uint32_t count = 0;
};

/// A decimal number of at most 32 bits, digits only (no sign, no space).
[[nodiscard]] inline bool subid_number(std::string_view text, std::uint32_t& out) noexcept {
  if (text.empty() || text.size() > 10) return false;
  for (const char c : text) {
    if (c < '0' || c > '9') return false;
  }
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || value > UINT32_MAX) return false;
  out = static_cast<std::uint32_t>(value);
  return true;
}

/// The ranges that the text of /etc/subuid or /etc/subgid grants the user
/// named `user` (empty: a user without a name matches by number only) or
/// numbered `uid`, in file order. Lines are "owner:first:count"; the owner is
/// a name or a decimal uid. Blank lines, comments ('#') and every line that
/// is not exactly that are skipped rather than refused, so that one bad line
/// written by someone else costs only itself: wrong field counts, numbers
/// with signs or spaces or past 32 bits, count 0, and ranges that run past
/// the largest id (4294967294: -1 is no id). Pure, for the fuzzer.
[[nodiscard]] inline std::vector<subid_range> parse_subordinate_ids(std::string_view text, std::string_view user,
                                                                    std::uint32_t uid) {
  std::vector<subid_range> out;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    if (line.empty() || line.front() == '#') continue;
    const std::size_t a = line.find(':');
    const std::size_t b = a == std::string_view::npos ? a : line.find(':', a + 1);
    if (b == std::string_view::npos || line.find(':', b + 1) != std::string_view::npos) continue;
    const std::string_view owner = line.substr(0, a);
    subid_range r;
    if (owner.empty() || !subid_number(line.substr(a + 1, b - a - 1), r.first) ||
        !subid_number(line.substr(b + 1), r.count) || r.count == 0 || r.first > UINT32_MAX - r.count) {
      continue;
    }
    std::uint32_t numbered = 0;
    if ((!user.empty() && owner == user) || (subid_number(owner, numbered) && numbered == uid)) out.push_back(r);
  }
  return out;
}

/// Who the ranges belong to, for messages: "user NAME (uid N)" or "uid N".
[[nodiscard]] inline std::string subid_owner(std::string_view user, std::uint32_t uid) {
  return user.empty() ? fmt::format("uid {}", uid) : fmt::format("user {} (uid {})", user, uid);
}

/// The map of a new user namespace from the ranges `granted` (by `file`, to
/// `owner`): `self` as inside 0 when `self_as_root`, then `wanted` (checked
/// to lie within a granted range each; std::invalid_argument naming the
/// first that does not), or, when `wanted` is empty, every granted range
/// one after the other. Throws std::system_error: ENOENT when nothing is
/// granted, EINVAL when granted ranges overlap each other or `self`,
/// EOVERFLOW or E2BIG when they hold more ids or lines than a map takes.
/// `which` is "uid" or "gid". Pure, for the fuzzer.
[[nodiscard]] inline std::vector<IdRange> subordinate_map(const std::vector<subid_range>& granted,
                                                          const std::vector<IdRange>& wanted, bool self_as_root,
                                                          std::uint32_t self, const char* which, std::string_view file,
                                                          std::string_view owner) {
  if (granted.empty()) {
    throw system_error(ENOENT, "cannot map subordinate ids: {} grants {} no subordinate {}s", file, owner, which);
  }
  std::vector<IdRange> map;
  if (self_as_root && self == UINT32_MAX) {
    throw system_error(EINVAL, "cannot map subordinate ids: the caller's own {} is -1, no id to map", which);
  }
  if (self_as_root) map.push_back({0, self, 1});
  if (!wanted.empty()) {
    for (const IdRange& r : wanted) {
      bool inside_one = false;
      for (const subid_range& g : granted) {
        inside_one = inside_one || (r.outside >= g.first && std::uint64_t{r.outside} - g.first + r.count <= g.count);
      }
      if (!inside_one) {
        throw std::invalid_argument(
            fmt::format("subordinate {} range {}-{} (inside {}) lies outside the ranges {} grants {}", which, r.outside,
                        std::uint64_t{r.outside} + r.count - 1, r.inside, file, owner));
      }
      if (self_as_root && r.outside <= self && self - r.outside < r.count) {
        throw std::invalid_argument(fmt::format("subordinate {} range {}-{} holds the caller's own {} {}, mapped to 0",
                                                which, r.outside, std::uint64_t{r.outside} + r.count - 1, which, self));
      }
      map.push_back(r);
    }
    return map;
  }
  std::uint64_t next = self_as_root ? 1 : 0;
  for (const subid_range& g : granted) {
    for (const IdRange& m : map) {
      if (g.first < std::uint64_t{m.outside} + m.count && m.outside < std::uint64_t{g.first} + g.count) {
        throw system_error(EINVAL,
                           "cannot map subordinate ids: {} grants {} the {} range {}-{}, which overlaps {}-{} (its "
                           "own id or an earlier range)",
                           file, owner, which, g.first, std::uint64_t{g.first} + g.count - 1, m.outside,
                           std::uint64_t{m.outside} + m.count - 1);
      }
    }
    if (next + g.count > UINT32_MAX) {
      throw system_error(EOVERFLOW, "cannot map subordinate ids: {} grants {} more {}s than a user namespace holds",
                         file, owner, which);
    }
    if (map.size() == 340) {
      throw system_error(E2BIG, "cannot map subordinate ids: {} grants {} more {} ranges than a map takes (340 lines)",
                         file, owner, which);
    }
    map.push_back({static_cast<std::uint32_t>(next), g.first, g.count});
    next += g.count;
  }
  return map;
}

/// Where subordinate ids and their helpers are looked for: fixed paths,
/// never the caller's PATH (the helpers run setuid root). Tests point them
/// elsewhere, and only in a single-threaded child: nothing guards them.
struct subordinate_places {
  std::string subuid = "/etc/subuid";
  std::string subgid = "/etc/subgid";
  std::string helper_dirs = "/usr/bin:/bin:/usr/sbin:/sbin";
};
[[nodiscard]] inline subordinate_places& subordinate_id_places() {
  static subordinate_places places;
  return places;
}

/// The name of the caller's real uid, which the helpers check (not the
/// effective one); empty when the passwd database has no entry for it.
[[nodiscard]] inline std::string real_user_name() {
  std::vector<char> buf(1024);
  for (;;) {
    passwd pw{};
    passwd* found = nullptr;
    const int err = ::getpwuid_r(::getuid(), &pw, buf.data(), buf.size(), &found);
    if (err == ERANGE && buf.size() < (std::size_t{1} << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (err != 0 && err != ENOENT && err != ESRCH) throw system_error(err, "cannot look up uid {}", ::getuid());
    return found != nullptr && found->pw_name != nullptr ? std::string(found->pw_name) : std::string();
  }
}

/// The text of `path`; empty when it does not exist (which grants nothing).
[[nodiscard]] inline std::string read_subid_file(const std::string& path) {
  const unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    if (errno == ENOENT) return {};
    throw system_error(errno, "cannot map subordinate ids: cannot open {}", path);
  }
  return read_to_end(fd.get());
}

/// Both maps of UnshareOptions::subordinate_ids, as the caller's files grant.
struct subordinate_maps {
  std::vector<IdRange> uid;
  std::vector<IdRange> gid;
};
[[nodiscard]] inline subordinate_maps resolve_subordinate_ids(const SubordinateIds& ids) {
  const subordinate_places& places = subordinate_id_places();
  const std::string user = real_user_name();
  const std::uint32_t uid = ::getuid();
  const std::string owner = subid_owner(user, uid);
  // Both files name the owner by user name or uid: a subgid line belongs to
  // a user, not to a group.
  subordinate_maps maps;
  maps.uid = subordinate_map(parse_subordinate_ids(read_subid_file(places.subuid), user, uid), ids.uid_ranges,
                             ids.map_self_as_root, ::geteuid(), "uid", places.subuid, owner);
  maps.gid = subordinate_map(parse_subordinate_ids(read_subid_file(places.subgid), user, uid), ids.gid_ranges,
                             ids.map_self_as_root, ::getegid(), "gid", places.subgid, owner);
  return maps;
}

/// The absolute path of `helper` in the first of `dirs` (':'-separated)
/// where it is an executable file.
[[nodiscard]] inline std::string find_id_map_helper(const char* helper, std::string_view dirs) {
  while (!dirs.empty()) {
    const std::size_t colon = dirs.find(':');
    const std::string_view dir = dirs.substr(0, colon);
    dirs.remove_prefix(colon == std::string_view::npos ? dirs.size() : colon + 1);
    if (dir.empty() || dir.front() != '/') continue;
    std::string path = fmt::format("{}/{}", dir, helper);
    if (::access(path.c_str(), X_OK) == 0) return path;
  }
  throw system_error(ENOENT, "cannot map subordinate ids: {} not found (Debian package uidmap)", helper);
}

/// The helper's child: stdin from `in`, stdout and stderr into `out`, every
/// other fd closed at the exec, default signals, then execve(2). Only
/// system calls: the parent may have many threads. On failure, the errno
/// goes to `report` (close-on-exec, so an exec that works says nothing).
[[noreturn]] GONSO_CHILD_CODE inline void id_map_helper_child(const char* path, char* const* argv, char* const* envp,
                                                              int in, int out, int report) noexcept {
  default_all_signals();
  mask_signals(false);
  // Moved above 2 first, so that putting one in place cannot close another.
  const int in_fd = above(in, 2);
  const int out_fd = above(out, 2);
  const int report_fd = above(report, 2);
  int err = 0;
  if (in_fd < 0 || out_fd < 0 || report_fd < 0 || ::syscall(SYS_dup3, in_fd, 0, 0) < 0 ||
      ::syscall(SYS_dup3, out_fd, 1, 0) < 0 || ::syscall(SYS_dup3, out_fd, 2, 0) < 0 || (err = cloexec_from_3()) != 0) {
    err = err != 0 ? err : errno;
  } else {
    ::syscall(SYS_execve, path, argv, envp);
    err = errno;
  }
  (void)write_all(report_fd >= 0 ? report_fd : report, &err, sizeof err);
  child_exit(127);
}

/// Reads the helper `child`'s output (`out`) and exec report (`err`) until
/// it has ended, then what is left in them. Not until end of file: a child
/// that another thread forked meanwhile (without exec) holds copies of the
/// write ends, and would hold this up until it ends. At most 64 KiB of
/// output is kept.
inline void read_until_exit(pid_t child, int out, int err, std::string& out_text, std::string& err_text) {
  const unique_fd pidfd(pidfd_open(child));
  if (!pidfd && errno != ESRCH) throw system_error(errno, "cannot map subordinate ids: cannot watch the helper");
  for (const int fd : {out, err}) {
    if (::fcntl(fd, F_SETFL, O_NONBLOCK) != 0) throw system_error(errno, "cannot map subordinate ids: fcntl");
  }
  const auto drain = [](int fd, std::string& text) {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        if (text.size() < 65536) text.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n == 0 || errno == EAGAIN) return n == 0;
      throw system_error(errno, "cannot map subordinate ids: cannot read the helper's output");
    }
  };
  bool out_open = true;
  for (bool ended = !pidfd; !ended;) {
    pollfd wait[2] = {{pidfd.get(), POLLIN, 0}, {out, POLLIN, 0}};
    if (::poll(wait, out_open ? 2 : 1, -1) < 0) {
      if (errno == EINTR) continue;
      throw system_error(errno, "cannot map subordinate ids: cannot wait for the helper");
    }
    ended = (wait[0].revents & (POLLIN | POLLHUP)) != 0;
    if (out_open && wait[1].revents != 0) out_open = !drain(out, out_text);
  }
  (void)drain(out, out_text);
  (void)drain(err, err_text);
}

/// Has `helper` (newuidmap or newgidmap) write `map` for process `pid`, and
/// waits for it. The helper is forked and reaped here whatever happens.
/// `file` names the map ("uid_map"), read back when the application's
/// SIGCHLD disposition reaps the helper before we can.
inline void run_id_map_helper(const char* helper, pid_t pid, const std::vector<IdRange>& map, const char* file) {
  const std::string path = find_id_map_helper(helper, subordinate_id_places().helper_dirs);
  // Everything the child needs, made before the fork: it may not allocate.
  std::vector<std::string> args{path, std::to_string(pid)};
  for (const IdRange& r : map) {
    args.push_back(std::to_string(r.inside));
    args.push_back(std::to_string(r.outside));
    args.push_back(std::to_string(r.count));
  }
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // An empty environment but for the C locale, so that its messages are the
  // untranslated ones put into ours.
  std::string locale = "LC_ALL=C";
  std::array<char*, 2> envp{locale.data(), nullptr};
  const unique_fd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null) throw system_error(errno, "cannot map subordinate ids: cannot open /dev/null for {}", helper);
  pipe_fds said = make_pipe();
  pipe_fds failed = make_pipe();
  (void)bind_syscall();
  const pid_t child = raw_fork();
  if (child < 0) throw system_error(errno, "cannot map subordinate ids: cannot fork to run {}", path);
  if (child == 0) {
    id_map_helper_child(path.c_str(), argv.data(), envp.data(), null.get(), said.write.get(), failed.write.get());
  }
  child_guard guard(child);
  said.write.reset();
  failed.write.reset();
  std::string text;
  std::string report;
  read_until_exit(child, said.read.get(), failed.read.get(), text, report);
  int exec_err = 0;
  const int status = guard.reap_now();
  if (report.size() == sizeof exec_err) {
    std::memcpy(&exec_err, report.data(), sizeof exec_err);
    throw system_error(valid_errno(exec_err) ? exec_err : EIO, "cannot map subordinate ids: cannot run {}", path);
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (text.size() > 2000) text.resize(2000);
  if (status == -1) {
    // Reaped by the kernel for an application ignoring SIGCHLD: the map
    // itself says whether it worked.
    const unique_fd written(::open(fmt::format("/proc/{}/{}", pid, file).c_str(), O_RDONLY | O_CLOEXEC));
    if (written && !read_to_end(written.get()).empty()) return;
    throw system_error(EPERM, "cannot map subordinate ids: {} failed ({} of process {} is empty): {}", path, file, pid,
                       text);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  const std::string how = WIFEXITED(status) ? fmt::format("exited with status {}", WEXITSTATUS(status))
                                            : fmt::format("was killed by signal {}", WTERMSIG(status));
  throw system_error(EPERM, "cannot map subordinate ids: {} {}: {}", path, how, text.empty() ? "(no output)" : text);
}

}  // namespace gonso::detail

// gonso: what a Target reads from /proc (status, uid_map, cgroup, environ,
// mountinfo), parsed strictly: another process's files are its to shape
// (environ is whatever it wrote on its stack), so no line is trusted to be
// well formed, and nothing read indexes anything unchecked.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/io.hpp>
#include <gonso/detail/sys/unique_fd.hpp>

namespace gonso::detail {

/// /proc/PID, held open: it names that process alone from now on.
[[nodiscard]] inline unique_fd open_proc_dir(pid_t pid) {
  const std::string dir = fmt::format("/proc/{}", pid);
  unique_fd fd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!fd) throw system_error(errno == ENOENT ? ESRCH : errno, "cannot open {}", dir);
  return fd;
}

/// A whole file, or std::system_error naming it.
[[nodiscard]] inline std::string read_file(const char* path) {
  const unique_fd fd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) throw system_error(errno, "cannot read {}", path);
  try {
    return read_to_end(fd.get());
  } catch (const std::system_error& e) {
    throw system_error(e.code().value(), "cannot read {}", path);
  }
}

/// Whether `a` and `at`/`b` are one file (stat through the links).
[[nodiscard]] inline bool same_file(const char* a, int at, const char* b) {
  struct stat sa {};
  struct stat sb {};
  return ::stat(a, &sa) == 0 && ::fstatat(at, b, &sb, 0) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/// The lines of `text`, the last one with or without its newline.
template <typename F>
void for_each_line(std::string_view text, F&& fn) {
  while (!text.empty()) {
    const std::size_t end = text.find('\n');
    fn(text.substr(0, end));
    if (end == std::string_view::npos) break;
    text.remove_prefix(end + 1);
  }
}

/// The words of `line`, split at spaces and tabs.
[[nodiscard]] inline std::vector<std::string_view> words(std::string_view line) {
  std::vector<std::string_view> out;
  std::size_t at = 0;
  while (at < line.size()) {
    const std::size_t from = line.find_first_not_of(" \t", at);
    if (from == std::string_view::npos) break;
    const std::size_t to = std::min(line.find_first_of(" \t", from), line.size());
    out.push_back(line.substr(from, to - from));
    at = to;
  }
  return out;
}

/// A whole word as a number in `base`, or nullopt.
template <typename T>
[[nodiscard]] std::optional<T> number(std::string_view word, int base = 10) {
  T value{};
  const char* end = word.data() + word.size();
  const auto [ptr, ec] = std::from_chars(word.data(), end, value, base);
  if (ec != std::errc() || ptr != end || word.empty()) return std::nullopt;
  return value;
}

/// What a Target takes from /proc/PID/status.
struct proc_status {
  std::uint32_t uid = 0, gid = 0;
  std::vector<std::uint32_t> groups;
  std::uint64_t cap_inh = 0, cap_prm = 0, cap_eff = 0, cap_bnd = 0, cap_amb = 0;
  bool no_new_privs = false;
};

/// Parses /proc/PID/status: Uid and Gid (the effective, second, column),
/// Groups, the Cap* lines and NoNewPrivs. Throws std::system_error(EPROTO)
/// when one of those is missing or malformed.
[[nodiscard]] inline proc_status parse_status(std::string_view text) {
  proc_status out;
  unsigned seen = 0;
  const auto bad = [](std::string_view field) {
    return system_error(EPROTO, "malformed {} line in /proc/PID/status", field);
  };
  for_each_line(text, [&](std::string_view line) {
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) return;
    const std::string_view key = line.substr(0, colon);
    const std::vector<std::string_view> w = words(line.substr(colon + 1));
    const auto id = [&](unsigned bit) {
      if (w.size() != 4) throw bad(key);
      const std::optional<std::uint32_t> v = number<std::uint32_t>(w[1]);
      if (!v) throw bad(key);
      seen |= bit;
      return *v;
    };
    const auto caps = [&](unsigned bit) {
      const std::optional<std::uint64_t> v = w.size() == 1 ? number<std::uint64_t>(w[0], 16) : std::nullopt;
      if (!v) throw bad(key);
      seen |= bit;
      return *v;
    };
    if (key == "Uid") {
      out.uid = id(1U);
    } else if (key == "Gid") {
      out.gid = id(2U);
    } else if (key == "Groups") {
      for (const std::string_view g : w) {
        const std::optional<std::uint32_t> v = number<std::uint32_t>(g);
        if (!v) throw bad(key);
        out.groups.push_back(*v);
      }
      seen |= 4U;
    } else if (key == "CapInh") {
      out.cap_inh = caps(8U);
    } else if (key == "CapPrm") {
      out.cap_prm = caps(16U);
    } else if (key == "CapEff") {
      out.cap_eff = caps(32U);
    } else if (key == "CapBnd") {
      out.cap_bnd = caps(64U);
    } else if (key == "CapAmb") {
      out.cap_amb = caps(128U);
    } else if (key == "NoNewPrivs") {
      if (w.size() != 1 || (w[0] != "0" && w[0] != "1")) throw bad(key);
      out.no_new_privs = w[0] == "1";
      seen |= 256U;
    }
  });
  if (seen != 511U) throw system_error(EPROTO, "/proc/PID/status lacks an id, group, capability or NoNewPrivs line");
  return out;
}

/// One line of a uid_map or gid_map.
struct id_line {
  std::uint32_t inside = 0, outside = 0, count = 0;
};

/// Parses a uid_map or gid_map; throws std::system_error(EPROTO) for a
/// malformed line.
[[nodiscard]] inline std::vector<id_line> parse_id_map(std::string_view text) {
  std::vector<id_line> out;
  for_each_line(text, [&](std::string_view line) {
    const std::vector<std::string_view> w = words(line);
    if (w.empty()) return;
    const auto a = w.size() == 3 ? number<std::uint32_t>(w[0]) : std::nullopt;
    const auto b = w.size() == 3 ? number<std::uint32_t>(w[1]) : std::nullopt;
    const auto c = w.size() == 3 ? number<std::uint32_t>(w[2]) : std::nullopt;
    if (!a || !b || !c) throw system_error(EPROTO, "malformed id map line {:?}", line);
    out.push_back({*a, *b, *c});
  });
  return out;
}

/// The id inside a user namespace that maps to `outside` (an id of the
/// reader's), or nullopt.
[[nodiscard]] inline std::optional<std::uint32_t> map_to_inside(const std::vector<id_line>& map,
                                                                std::uint32_t outside) noexcept {
  for (const id_line& l : map) {
    if (outside >= l.outside && outside - l.outside < l.count) {
      const std::uint64_t inside = std::uint64_t{l.inside} + (outside - l.outside);
      if (inside <= UINT32_MAX) return static_cast<std::uint32_t>(inside);
    }
  }
  return std::nullopt;
}

/// /proc/PID/environ: NUL-separated entries, those with a '=' after a
/// non-empty name kept.
[[nodiscard]] inline std::vector<std::string> parse_environ(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    const std::size_t end = text.find('\0');
    const std::string_view entry = text.substr(0, end);
    const std::size_t eq = entry.find('=');
    if (eq != std::string_view::npos && eq > 0) out.emplace_back(entry);
    if (end == std::string_view::npos) break;
    text.remove_prefix(end + 1);
  }
  return out;
}

/// A mountinfo path with its octal escapes (\040 for a space, ...) undone;
/// nullopt for a broken escape.
[[nodiscard]] inline std::optional<std::string> unescape_mount_path(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    if (s.size() - i < 4) return std::nullopt;
    const std::optional<unsigned> v = number<unsigned>(s.substr(i + 1, 3), 8);
    if (!v || *v > 0377) return std::nullopt;
    out += static_cast<char>(*v);
    i += 3;
  }
  return out;
}

/// The first cgroup2 mount in `mountinfo`: its mount point and the path
/// within the cgroup tree it shows (its root). nullopt when there is none.
struct cgroup2_mount_point {
  std::string mount_point;
  std::string root;
};
[[nodiscard]] inline std::optional<cgroup2_mount_point> find_cgroup2(std::string_view mountinfo) {
  std::optional<cgroup2_mount_point> found;
  for_each_line(mountinfo, [&](std::string_view line) {
    if (found) return;
    const std::vector<std::string_view> w = words(line);
    // id parent major:minor root mount-point options [optional...] - type source super-options
    std::size_t dash = 6;
    while (dash < w.size() && w[dash] != "-") ++dash;
    if (w.size() < 5 || dash + 1 >= w.size() || w[dash + 1] != "cgroup2") return;
    std::optional<std::string> root = unescape_mount_path(w[3]);
    std::optional<std::string> point = unescape_mount_path(w[4]);
    if (root && point) found = cgroup2_mount_point{std::move(*point), std::move(*root)};
  });
  return found;
}

/// Where the cgroup v2 directory named in /proc/PID/cgroup (`cgroup`, its
/// "0::" line) is under the cgroup2 mount `mountinfo` lists. Throws
/// std::system_error: ENOENT without such a line or mount, or when the
/// cgroup is outside the mount (or removed); EPROTO for a malformed line.
[[nodiscard]] inline std::string cgroup2_path(std::string_view cgroup, std::string_view mountinfo, pid_t pid) {
  std::optional<std::string_view> path;
  for_each_line(cgroup, [&](std::string_view line) {
    if (!path && line.starts_with("0::")) path = line.substr(3);
  });
  if (!path) throw system_error(ENOENT, "pid {} is in no cgroup v2 (no 0:: line in /proc/{}/cgroup)", pid, pid);
  if (!path->starts_with('/') || path->find('\0') != std::string_view::npos) {
    throw system_error(EPROTO, "malformed cgroup path {:?} of pid {}", *path, pid);
  }
  if (path->ends_with(" (deleted)")) throw system_error(ENOENT, "the cgroup {} of pid {} was removed", *path, pid);
  const std::optional<cgroup2_mount_point> mount = find_cgroup2(mountinfo);
  if (!mount) throw system_error(ENOENT, "cannot find the cgroup of pid {}: no cgroup2 file system is mounted", pid);
  // The mount shows the subtree at its root; the cgroup must be inside it.
  std::string_view rest = *path;
  if (mount->root != "/") {
    if (!rest.starts_with(mount->root) || (rest.size() > mount->root.size() && rest[mount->root.size()] != '/')) {
      throw system_error(ENOENT, "the cgroup {} of pid {} is outside the cgroup2 mount at {}", *path, pid,
                         mount->mount_point);
    }
    rest.remove_prefix(mount->root.size());
  }
  std::string out = mount->mount_point;
  if (!rest.empty() && rest != "/") {
    if (out.ends_with('/')) out.pop_back();
    out += rest;
  }
  // ".." would climb out of the mount, and a NUL (raw, or escaped as \000
  // in mountinfo) would cut the path open(2) sees; the kernel writes neither.
  if (out.find("/../") != std::string::npos || out.ends_with("/..") || out.find('\0') != std::string::npos) {
    throw system_error(EPROTO, "malformed cgroup path {:?} of pid {}", *path, pid);
  }
  return out;
}

}  // namespace gonso::detail

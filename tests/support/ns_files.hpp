// A namespace file as the kernel names it, read without gonso: (device,
// inode) with stat(2) or fstat(2), the never-reused id with NS_GET_ID; and
// every thread and fd on the machine that still holds a namespace.
#pragma once

#include <fcntl.h>
#include <linux/types.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include <gonso/set.hpp>

#include "poll.hpp"

namespace test {

// NS_GET_ID (kernel 6.x; not in the installed headers), asked here rather
// than through gonso.
inline constexpr unsigned long ns_get_id = _IOR(0xb7, 13, __u64);

// A namespace as the kernel names it, read without gonso: (device, inode)
// with fstat(2), the never-reused id with NS_GET_ID.
struct Raw {
  dev_t dev = 0;
  ino_t ino = 0;
  std::uint64_t id = 0;
  friend bool operator==(const Raw&, const Raw&) = default;
};
inline std::string describe(const Raw& r) { return fmt::format("(dev {:#x}, ino {}, id {})", r.dev, r.ino, r.id); }
inline std::ostream& operator<<(std::ostream& os, const Raw& r) { return os << describe(r); }

inline Raw raw_of_fd(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw std::system_error(errno, std::generic_category(), "fstat");
  __u64 id = 0;
  if (::ioctl(fd, ns_get_id, &id) != 0) throw std::system_error(errno, std::generic_category(), "NS_GET_ID");
  return Raw{st.st_dev, st.st_ino, static_cast<std::uint64_t>(id)};
}

inline Raw raw_of_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "open " + path.string());
  try {
    const Raw raw = raw_of_fd(fd);
    ::close(fd);
    return raw;
  } catch (...) {
    ::close(fd);
    throw;
  }
}

// (device, inode) of a path, with stat(2).
inline Raw stat_of(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw std::system_error(errno, std::generic_category(), "stat " + path.string());
  return Raw{st.st_dev, st.st_ino, 0};
}
inline bool same_file(const Raw& a, const Raw& b) { return a.dev == b.dev && a.ino == b.ino; }

// What a namespace link reads, e.g. "net:[4026532177]", made from the inode.
inline std::string link_text(gonso::Kind kind, const Raw& raw) {
  return fmt::format("{}:[{}]", gonso::name(kind), raw.ino);
}

template <typename Fn>
void for_each_entry(const std::filesystem::path& dir, Fn&& fn) {
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) fn(it->path());
}

// Every thread (by its ns links) and every fd of every process on the machine
// that refers to the namespace whose link reads `link`.
inline std::vector<std::string> holders_of(const std::string& link) {
  std::vector<std::string> out;
  const auto refers = [&](const std::filesystem::path& p) {
    std::error_code ec;
    return std::filesystem::read_symlink(p, ec).string() == link;
  };
  const auto all_digits = [](const std::string& s) {
    return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
  };
  for_each_entry("/proc", [&](const std::filesystem::path& proc) {
    if (!all_digits(proc.filename().string())) return;
    for_each_entry(proc / "task", [&](const std::filesystem::path& task) {
      for_each_entry(task / "ns", [&](const std::filesystem::path& ns) {
        if (refers(ns)) out.push_back(fmt::format("tid {} ns/{}", task.filename().string(), ns.filename().string()));
      });
    });
    for_each_entry(proc / "fd", [&](const std::filesystem::path& fd) {
      if (refers(fd)) out.push_back(fmt::format("pid {} fd {}", proc.filename().string(), fd.filename().string()));
    });
  });
  return out;
}

// holders_of(), once the processes being killed (a pid namespace's init) are
// gone: waits up to two seconds for the list to empty.
inline std::vector<std::string> holders_after_exits(const std::string& link) {
  std::vector<std::string> holders;
  (void)eventually(
      [&] {
        holders = holders_of(link);
        return holders.empty();
      },
      std::chrono::seconds(2));
  return holders;
}

inline void make_empty_file(const std::filesystem::path& path) {
  std::ofstream touch(path);
  if (!touch) throw std::runtime_error("cannot create " + path.string());
}

inline std::string hostname() {
  char buf[65]{};
  if (::gethostname(buf, sizeof buf - 1) != 0) throw std::system_error(errno, std::generic_category(), "gethostname");
  return buf;
}
inline void set_hostname(const std::string& name) {
  if (::sethostname(name.c_str(), name.size()) != 0) {
    throw std::system_error(errno, std::generic_category(), "sethostname");
  }
}

}  // namespace test

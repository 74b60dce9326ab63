// The mount table as the kernel shows it (/proc/self/mountinfo), nsfs mounts
// (persisted namespaces), and a mount namespace's never-reused id
// (NS_GET_ID), asked here with ioctl(2) rather than through gonso.
#pragma once

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace test {

/// One mount of /proc/self/mountinfo: mount point, filesystem type, and the
/// root within it (for nsfs, which namespace: "net:[4026532177]").
struct MountEntry {
  std::string point, fstype, root;
};
inline std::vector<MountEntry> mounts() {
  std::vector<MountEntry> out;
  std::ifstream info("/proc/self/mountinfo");
  for (std::string line; std::getline(info, line);) {
    std::istringstream fields(line);
    std::vector<std::string> f;
    for (std::string w; fields >> w;) f.push_back(w);
    const auto dash = std::find(f.begin(), f.end(), "-");
    if (f.size() < 5 || dash == f.end() || dash + 1 == f.end()) continue;
    out.push_back({f[4], *(dash + 1), f[3]});
  }
  return out;
}

/// How many mounts sit on `point` exactly.
inline std::size_t mounts_at(const std::string& point) {
  const auto all = mounts();
  return static_cast<std::size_t>(
      std::count_if(all.begin(), all.end(), [&](const MountEntry& m) { return m.point == point; }));
}

/// The nsfs mounts on `point`, as "net:[4026532177]".
inline std::vector<std::string> nsfs_mounts_at(const std::string& point) {
  std::vector<std::string> out;
  for (const MountEntry& m : mounts()) {
    if (m.fstype == "nsfs" && m.point == point) out.push_back(m.root);
  }
  return out;
}

/// The nsfs mounts on `dir` or beneath it, as "POINT net:[4026532177]".
inline std::vector<std::string> nsfs_mounts_under(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  const std::string prefix = dir.string() + "/";
  for (const MountEntry& m : mounts()) {
    if (m.fstype == "nsfs" && (m.point == dir.string() || m.point.rfind(prefix, 0) == 0)) {
      out.push_back(m.point + " " + m.root);
    }
  }
  return out;
}

/// How many nsfs mounts the mount table holds.
inline std::size_t count_nsfs_mounts() {
  const auto all = mounts();
  return static_cast<std::size_t>(
      std::count_if(all.begin(), all.end(), [](const MountEntry& m) { return m.fstype == "nsfs"; }));
}

/// True when `dir` is a mount point in the calling thread's mount namespace.
inline bool is_mount_point_here(const std::filesystem::path& dir) {
  std::ifstream info("/proc/thread-self/mountinfo");
  std::string line;
  const std::string needle = " " + dir.string() + " ";
  while (std::getline(info, line)) {
    if (line.find(needle) != std::string::npos) return true;
  }
  return false;
}

/// True when `path` is a file of nsfs, the filesystem of namespace files
/// (statfs(2), whatever name it is reached by).
inline bool is_nsfs(const std::filesystem::path& path) {
  struct statfs fs {};
  return ::statfs(path.c_str(), &fs) == 0 && fs.f_type == static_cast<decltype(fs.f_type)>(0x6e736673);
}

/// NS_GET_ID of a namespace fd, asked here with ioctl(2) rather than
/// through gonso; 0 when the kernel lacks it.
inline std::uint64_t kernel_ns_id(int fd) {
  std::uint64_t id = 0;
  return ::ioctl(fd, _IOR(0xb7, 13, std::uint64_t), &id) == 0 ? id : 0;
}
/// NS_GET_ID of the calling thread's mount namespace.
inline std::uint64_t own_mnt_id() {
  const int fd = ::open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC);
  const std::uint64_t id = fd < 0 ? 0 : kernel_ns_id(fd);
  if (fd >= 0) ::close(fd);
  return id;
}

}  // namespace test

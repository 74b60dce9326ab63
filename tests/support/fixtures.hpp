// Fixtures made with plain system calls, never with gonso, each undone when
// destroyed whatever the test did: foreign namespaces held by a child,
// temporary folders, tmpfs mounts (shared or private), /etc/netns/NAME
// files, and /run/netns put back as it was found.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include <gonso/set.hpp>

#include "baseline.hpp"
#include "kernel_view.hpp"
#include "mounts.hpp"

namespace test {

/// A child process that sits in namespaces of its own until destroyed,
/// created by a raw clone(2) with `flags`, so that it is born in them: user
/// and time work whatever threads the parent (or a sanitizer) runs, and with
/// CLONE_NEWPID the child is pid 1 of the new namespace.
/// With `hide_proc` (and CLONE_NEWNS), /proc is covered by an empty tmpfs in
/// its mount namespace, as in a container that has no /proc.
/// Made with raw syscalls only: no gonso code is involved.
class ForeignNamespaces {
 public:
  explicit ForeignNamespaces(int flags, bool hide_proc = false) {
    int ready[2];
    if (::pipe2(ready, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    const pid_t parent = ::getpid();
    // Like fork(), but the child starts in the new namespaces. clone(2) reads
    // its low byte as the exit signal, where CLONE_NEWTIME lies: the child
    // unshares that one itself (allowed whatever its threads, the README's kernel rules).
    const int clone_flags = flags & ~CLONE_NEWTIME;
    pid_ = static_cast<pid_t>(::syscall(SYS_clone, clone_flags | SIGCHLD, nullptr, nullptr, nullptr, 0));
    if (pid_ < 0) {
      const int err = errno;
      ::close(ready[0]);
      ::close(ready[1]);
      throw std::system_error(err, std::generic_category(), fmt::format("clone({:#x})", flags));
    }
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      // Outside a new pid namespace the parent can be checked directly; in
      // one, a dead parent shows as EPIPE on `ready` below.
      if ((flags & CLONE_NEWPID) == 0 && ::getppid() != parent) ::_exit(1);
      char ok = (flags & CLONE_NEWTIME) == 0 || ::unshare(CLONE_NEWTIME) == 0 ? 'y' : 'n';
      if (ok == 'y' && hide_proc &&
          (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
           ::mount("empty", "/proc", "tmpfs", 0, "size=4k") != 0)) {
        ok = 'n';
      }
      if (::write(ready[1], &ok, 1) != 1) ::_exit(1);
      for (;;) ::pause();
    }
    ::close(ready[1]);
    char ok = 'n';
    const ssize_t n = ::read(ready[0], &ok, 1);
    ::close(ready[0]);
    if (n != 1 || ok != 'y') {
      stop();
      throw std::runtime_error(fmt::format("helper child in new namespaces {:#x} failed to set up", flags));
    }
  }
  ForeignNamespaces(const ForeignNamespaces&) = delete;
  ForeignNamespaces& operator=(const ForeignNamespaces&) = delete;
  ~ForeignNamespaces() { stop(); }

  [[nodiscard]] pid_t pid() const { return pid_; }
  /// Path of the child's namespace file of `kind`, as a process joins it:
  /// for pid and time the *_for_children link.
  [[nodiscard]] std::string path(gonso::Kind kind) const { return fmt::format("/proc/{}/ns/{}", pid_, link_of(kind)); }

 private:
  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  pid_t pid_ = -1;
};

/// A fresh temporary folder, removed with its contents when destroyed.
class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "gonso-test-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp");
    path_ = templ;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// /etc/netns/NAME with the files given, as `ip netns exec NAME` reads them;
/// removed when destroyed, and /etc/netns too if that leaves it empty.
class EtcNetnsFiles {
 public:
  EtcNetnsFiles(const std::string& name, const std::map<std::string, std::string>& files)
      : dir_(std::filesystem::path("/etc/netns") / name) {
    std::filesystem::create_directories(dir_);
    for (const auto& [file, text] : files) std::ofstream(dir_ / file) << text;
  }
  EtcNetnsFiles(const EtcNetnsFiles&) = delete;
  EtcNetnsFiles& operator=(const EtcNetnsFiles&) = delete;
  ~EtcNetnsFiles() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    ::rmdir("/etc/netns");  // only if we left it empty
  }

 private:
  std::filesystem::path dir_;
};

/// A tmpfs on a fresh temporary folder, made a shared mount so that mount
/// propagation to and from it can be observed. Unmounted and removed when
/// destroyed, whatever the test did.
class SharedTmpfs {
 public:
  SharedTmpfs() {
    std::string templ = (std::filesystem::temp_directory_path() / "gonso-test-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp");
    path_ = templ;
    if (::mount("gonso-test", path_.c_str(), "tmpfs", 0, "size=1m") != 0 ||
        ::mount(nullptr, path_.c_str(), nullptr, MS_SHARED, nullptr) != 0) {
      const int err = errno;
      cleanup();
      throw std::system_error(err, std::generic_category(), "mount shared tmpfs on " + path_.string());
    }
    mounted_ = true;
  }
  SharedTmpfs(const SharedTmpfs&) = delete;
  SharedTmpfs& operator=(const SharedTmpfs&) = delete;
  ~SharedTmpfs() { cleanup(); }

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  void cleanup() {
    if (mounted_) {
      // Anything that propagated back onto it goes with a recursive lazy unmount.
      ::umount2(path_.c_str(), MNT_DETACH);
      mounted_ = false;
    }
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::filesystem::path path_;
  bool mounted_ = false;
};

/// A tmpfs on a fresh folder of the temporary directory, made private
/// (MS_PRIVATE), so that mount namespace files can be bound in it (the kernel
/// refuses them on a shared mount). Unmounted lazily, with everything bound
/// beneath it, and removed when destroyed, whatever the test did.
class PrivateTmpfs {
 public:
  PrivateTmpfs() {
    std::string templ = (std::filesystem::temp_directory_path() / (own_prefix() + "XXXXXX")).string();
    if (::mkdtemp(templ.data()) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp");
    path_ = templ;
    if (::mount("gonso-test", path_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0700") != 0) {
      const int err = errno;
      cleanup();
      throw std::system_error(err, std::generic_category(), "mount tmpfs on " + path_.string());
    }
    mounted_ = true;
    if (::mount(nullptr, path_.c_str(), nullptr, MS_PRIVATE, nullptr) != 0) {
      const int err = errno;
      cleanup();
      throw std::system_error(err, std::generic_category(), "make " + path_.string() + " private");
    }
  }
  PrivateTmpfs(const PrivateTmpfs&) = delete;
  PrivateTmpfs& operator=(const PrivateTmpfs&) = delete;
  ~PrivateTmpfs() { cleanup(); }

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  void cleanup() {
    if (mounted_) {
      ::umount2(path_.c_str(), MNT_DETACH);  // takes the nsfs binds beneath along
      mounted_ = false;
    }
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::filesystem::path path_;
  bool mounted_ = false;
};

inline const std::string netns_dir = "/run/netns";  // NOLINT(cert-err58-cpp): a test constant

/// The names in /run/netns, sorted; none when it does not exist.
inline std::vector<std::string> netns_entries() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(netns_dir, ec))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

/// /run/netns as it was: gonso and `ip netns add` make it a mount of its own
/// (shared) the first time. When it was no mount point (or did not exist)
/// before and nothing is left in it, that mount (and the folder) goes again,
/// so that a test passes whatever state /run/netns starts in.
class RunNetnsAsFound {
 public:
  RunNetnsAsFound() : existed_(std::filesystem::exists(netns_dir)), mounts_(test::mounts_at(netns_dir)) {}
  RunNetnsAsFound(const RunNetnsAsFound&) = delete;
  RunNetnsAsFound& operator=(const RunNetnsAsFound&) = delete;
  ~RunNetnsAsFound() {
    if (!empty()) return;  // someone else's names: leave it be
    while (test::mounts_at(netns_dir) > mounts_) {
      if (::umount2(netns_dir.c_str(), MNT_DETACH) != 0) break;
    }
    if (!existed_) ::rmdir(netns_dir.c_str());
  }

 private:
  static bool empty() {
    std::error_code ec;
    return std::filesystem::directory_iterator(netns_dir, ec) == std::filesystem::directory_iterator();
  }
  bool existed_;
  std::size_t mounts_;
};

/// A case that touches /run/netns: `body` runs with /run/netns restored after
/// it, and the machine is then checked to be as it was.
template <typename Body>
void netns_case(Body&& body) {
  test::leaves_machine_as_found([&] {
    const RunNetnsAsFound restore;
    body();
  });
}

/// Pins the calling thread to the n-th CPU it may run on (n modulo their
/// number) until destroyed, and with it every thread and process it starts
/// meanwhile. Mount namespace ids come in per-CPU batches: a test that needs
/// a namespace made on another CPU than the last cannot count on the
/// scheduler to move it there (on a busy machine it keeps picking the idle
/// CPU), so it walks the CPUs itself.
class PinnedToCpu {
 public:
  explicit PinnedToCpu(unsigned n) {
    if (::sched_getaffinity(0, sizeof saved_, &saved_) != 0) return;
    const unsigned count = static_cast<unsigned>(CPU_COUNT(&saved_));
    if (count == 0) return;
    unsigned wanted = n % count;
    for (std::size_t cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &saved_) || wanted-- != 0) continue;
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      pinned_ = ::sched_setaffinity(0, sizeof one, &one) == 0;
      break;
    }
  }
  PinnedToCpu(const PinnedToCpu&) = delete;
  PinnedToCpu& operator=(const PinnedToCpu&) = delete;
  ~PinnedToCpu() {
    if (pinned_) (void)::sched_setaffinity(0, sizeof saved_, &saved_);
  }

 private:
  cpu_set_t saved_{};
  bool pinned_ = false;
};

/// from.unshare(kinds) (kinds holding mnt), made again until the kernel will
/// bind its mount namespace from the calling thread: it binds one only into
/// an older mount namespace (a lower id), and the ids come in per-CPU
/// batches, so inside a container a namespace made after the caller's may
/// still be older (gonso then refuses, as persist_test.cpp checks). The tries
/// go round the CPUs (a fresh worker starts where its creator is pinned);
/// 200 bound them.
inline gonso::Set unshare_persistable(const gonso::Set& from, gonso::Kinds kinds) {
  const std::uint64_t own = own_mnt_id();
  if (!kinds.contains(gonso::Kind::mnt)) return from.unshare(kinds);
  for (int tries = 0;; ++tries) {
    const PinnedToCpu pin(static_cast<unsigned>(tries));
    gonso::Set fresh = from.unshare(kinds);
    if (own == 0 || kernel_ns_id(fresh.fd(gonso::Kind::mnt)) > own || tries == 200) return fresh;
  }
}

}  // namespace test

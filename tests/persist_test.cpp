// Persisted namespaces: bind mounts of their files that keep them alive with
// no process or fd, reopened later; with util-linux unshare and nsenter on
// either side. Also identity (NS_GET_ID, hashing), pidfds and introspection.
// Namespaces are checked against stat(2) of the files, NS_GET_ID asked here
// with ioctl(2), /proc and the real tools, never against gonso alone. Every
// case leaves the mount table and the temporary directory as it found them.
#include <fcntl.h>
#include <linux/types.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "support/attackers.hpp"
#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/persist.hpp>
#include <gonso/spawn.hpp>

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;

namespace {

// NS_GET_ID (kernel 6.x; not in the installed headers), asked here rather
// than through gonso.
constexpr unsigned long ns_get_id = _IOR(0xb7, 13, __u64);

// A namespace as the kernel names it, read without gonso: (device, inode)
// with fstat(2), the never-reused id with NS_GET_ID.
struct Raw {
  dev_t dev = 0;
  ino_t ino = 0;
  std::uint64_t id = 0;
  friend bool operator==(const Raw&, const Raw&) = default;
};
std::string describe(const Raw& r) { return fmt::format("(dev {:#x}, ino {}, id {})", r.dev, r.ino, r.id); }
std::ostream& operator<<(std::ostream& os, const Raw& r) { return os << describe(r); }

Raw raw_of_fd(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw std::system_error(errno, std::generic_category(), "fstat");
  __u64 id = 0;
  if (::ioctl(fd, ns_get_id, &id) != 0) throw std::system_error(errno, std::generic_category(), "NS_GET_ID");
  return Raw{st.st_dev, st.st_ino, static_cast<std::uint64_t>(id)};
}

Raw raw_of_file(const std::filesystem::path& path) {
  gonso::detail::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw std::system_error(errno, std::generic_category(), "open " + path.string());
  return raw_of_fd(fd.get());
}

// (device, inode) of a path, with stat(2).
Raw stat_of(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw std::system_error(errno, std::generic_category(), "stat " + path.string());
  return Raw{st.st_dev, st.st_ino, 0};
}
bool same_file(const Raw& a, const Raw& b) { return a.dev == b.dev && a.ino == b.ino; }

// What a namespace link reads, e.g. "net:[4026532177]", made from the inode.
std::string link_text(Kind kind, const Raw& raw) { return fmt::format("{}:[{}]", gonso::name(kind), raw.ino); }

std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

template <typename Fn>
void for_each_entry(const std::filesystem::path& dir, Fn&& fn) {
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) fn(it->path());
}

bool all_digits(const std::string& s) { return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos; }

// Every thread (by its ns links) and every fd of every process on the machine
// that refers to the namespace whose link reads `link`.
std::vector<std::string> holders_of(const std::string& link) {
  std::vector<std::string> out;
  const auto refers = [&](const std::filesystem::path& p) {
    std::error_code ec;
    return std::filesystem::read_symlink(p, ec).string() == link;
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
std::vector<std::string> holders_after_exits(const std::string& link) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  std::vector<std::string> holders = holders_of(link);
  while (!holders.empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    holders = holders_of(link);
  }
  return holders;
}

// Whether any nsfs mount sits on `dir` or beneath it.
std::vector<std::string> nsfs_mounts_under(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  const std::string prefix = dir.string() + "/";
  for (const test::MountEntry& m : test::mounts()) {
    if (m.fstype == "nsfs" && (m.point == dir.string() || m.point.rfind(prefix, 0) == 0)) {
      out.push_back(m.point + " " + m.root);
    }
  }
  return out;
}

void make_empty_file(const std::filesystem::path& path) {
  std::ofstream touch(path);
  if (!touch) throw std::runtime_error("cannot create " + path.string());
}

std::string hostname() {
  char buf[65]{};
  if (::gethostname(buf, sizeof buf - 1) != 0) throw std::system_error(errno, std::generic_category(), "gethostname");
  return buf;
}
void set_hostname(const std::string& name) {
  if (::sethostname(name.c_str(), name.size()) != 0) {
    throw std::system_error(errno, std::generic_category(), "sethostname");
  }
}

}  // namespace

TEST_CASE("persist(set, dir): the namespaces outlive their Set and threads, and from_dir() reopens the same ones",
          "[persist][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const Kinds kinds = Kind::net | Kind::uts | Kind::ipc | Kind::mnt | Kind::cgroup;
    const test::PrivateTmpfs fs;
    const auto dir = fs.path() / "box";
    std::map<Kind, gonso::Identity> ids;
    std::map<Kind, Raw> raws;
    {
      const Set original = test::unshare_persistable(Set::current(kinds), kinds);
      original.dup(Kind::uts).run(true, [] { set_hostname("gonso-persisted"); });
      for (Kind kind : kinds) {
        ids[kind] = original.identity(kind);
        raws[kind] = raw_of_fd(original.fd(kind));
      }
      gonso::persist(original, dir);
    }
    for (Kind kind : kinds) {
      INFO(gonso::name(kind));
      const auto file = dir / std::string(gonso::name(kind));
      CHECK(ids[kind].id != 0);  // this kernel has NS_GET_ID
      CHECK(ids[kind].id == raws[kind].id);
      // Nothing holds them now but the bind mounts: no thread, process or fd.
      CHECK(holders_after_exits(link_text(kind, raws[kind])).empty());
      CHECK(test::nsfs_mounts_at(file.string()) == std::vector<std::string>{link_text(kind, raws[kind])});
      CHECK(same_file(stat_of(file), raws[kind]));
    }

    {
      const Set reopened = Set::from_dir(dir);
      CHECK(reopened.kinds() == kinds);
      for (Kind kind : kinds) {
        INFO(gonso::name(kind));
        CHECK(reopened.identity(kind) == ids[kind]);
        CHECK(reopened.identity(kind).id == ids[kind].id);
        CHECK(raw_of_fd(reopened.fd(kind)) == raws[kind]);
      }
      // Not only the same names: the same state, which nothing kept but the mounts.
      CHECK(reopened.dup(Kind::uts).run(true, [] { return hostname(); }) == "gonso-persisted");
      CHECK(reopened.dup(Kind::net).run(true, [] { return test::thread_ns(Kind::net); }).inode == raws[Kind::net].ino);

      gonso::unpersist_dir(dir);
      CHECK_FALSE(std::filesystem::exists(dir));
      CHECK(nsfs_mounts_under(fs.path()).empty());
      // The Set's fds keep the namespaces alive after that.
      CHECK(raw_of_fd(reopened.fd(Kind::net)) == raws[Kind::net]);
    }
  });
}

TEST_CASE("persist(set, dir): user, pid and time namespaces made in a process outlive it",
          "[persist][privileged][process]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const Kinds kinds = Kind::user | Kind::pid | Kind::time;
    const test::PrivateTmpfs fs;
    const auto dir = fs.path() / "made-in-a-process";
    std::map<Kind, gonso::Identity> ids;
    std::map<Kind, Raw> raws;
    {
      const Set made = Set::current().unshare(kinds);
      for (Kind kind : kinds) {
        ids[kind] = made.identity(kind);
        raws[kind] = raw_of_fd(made.fd(kind));
      }
      gonso::persist(made.dup(kinds), dir);
    }
    // The process that made them was reaped, and the pid namespace's init
    // was killed with the last Set holding it.
    for (Kind kind : kinds) {
      INFO(gonso::name(kind));
      CHECK(ids[kind].id != 0);
      CHECK(holders_after_exits(link_text(kind, raws[kind])).empty());
      CHECK(same_file(stat_of(dir / std::string(gonso::name(kind))), raws[kind]));
    }

    const Set reopened = Set::from_dir(dir, kinds);
    CHECK(reopened.kinds() == kinds);
    for (Kind kind : kinds) {
      INFO(gonso::name(kind));
      CHECK(reopened.identity(kind) == ids[kind]);
      CHECK(raw_of_fd(reopened.fd(kind)) == raws[kind]);
    }
    // Without kinds, from_dir() takes what it finds of every kind but user.
    CHECK(Set::from_dir(dir).kinds() == (Kind::pid | Kind::time));
    // Related as they were made: the new user namespace owns the others and
    // is a child of ours; the pid namespace is a child of ours.
    CHECK(reopened.owner(Kind::pid).identity(Kind::user) == ids[Kind::user]);
    CHECK(reopened.owner(Kind::time).identity(Kind::user) == ids[Kind::user]);
    CHECK(reopened.parent(Kind::user).identity(Kind::user) == test::identity_at(Kind::user, "/proc/self/ns/user"));
    CHECK(reopened.parent(Kind::pid).identity(Kind::pid) == test::identity_at(Kind::pid, "/proc/self/ns/pid"));

    gonso::unpersist_dir(dir);
    CHECK_FALSE(std::filesystem::exists(dir));
    CHECK(nsfs_mounts_under(fs.path()).empty());
  });
}

TEST_CASE("persist(set, kind, file) and unpersist(file): one namespace on one file", "[persist][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    for (Kind kind : {Kind::net, Kind::mnt, Kind::ipc}) {
      INFO(gonso::name(kind));
      const auto file = fs.path() / fmt::format("one-{}", gonso::name(kind));
      gonso::Identity id{};
      Raw raw{};
      {
        const Set fresh = test::unshare_persistable(Set::current(kind), kind);
        id = fresh.identity(kind);
        raw = raw_of_fd(fresh.fd(kind));
        gonso::persist(fresh, kind, file);
      }
      CHECK(holders_after_exits(link_text(kind, raw)).empty());
      CHECK(test::nsfs_mounts_at(file.string()) == std::vector<std::string>{link_text(kind, raw)});
      CHECK(same_file(stat_of(file), raw));

      const Set reopened = Set::from_file(kind, file);
      CHECK(reopened.kinds() == Kinds(kind));
      CHECK(reopened.identity(kind) == id);
      CHECK(raw_of_fd(reopened.fd(kind)) == raw);

      gonso::unpersist(file);
      CHECK_FALSE(std::filesystem::exists(file));
      CHECK(test::nsfs_mounts_at(file.string()).empty());
      CHECK(raw_of_fd(reopened.fd(kind)) == raw);  // alive through the fd
    }
    // A kind the Set does not hold: refused before any file is made.
    const auto missing = fs.path() / "no-uts";
    CHECK_THROWS_AS(gonso::persist(Set::current(Kind::net), Kind::uts, missing), std::invalid_argument);
    CHECK_FALSE(std::filesystem::exists(missing));
  });
}

TEST_CASE("persist() and unpersist() refuse what they must not touch, and leave it as it was",
          "[persist][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    const Set net = Set::current(Kind::net).unshare(Kind::net);
    const Raw net_raw = raw_of_fd(net.fd(Kind::net));

    SECTION("persist onto an existing file: EEXIST, and the file is untouched") {
      const auto file = fs.path() / "taken";
      std::ofstream(file) << "keep me";
      const Raw before = stat_of(file);
      const auto e = test::system_error_of([&] { gonso::persist(net, Kind::net, file); });
      CHECK(e.code() == std::errc::file_exists);
      CHECK_THAT(e.what(), Catch::Contains(file.string()));
      CHECK(slurp(file) == "keep me");
      CHECK(same_file(stat_of(file), before));
      CHECK(test::nsfs_mounts_at(file.string()).empty());
    }
    SECTION("persist onto a persisted file: EEXIST, and the first namespace stays") {
      const auto file = fs.path() / "persisted";
      gonso::persist(net, Kind::net, file);
      const auto e = test::system_error_of([&] { gonso::persist(Set::current(Kind::net), Kind::net, file); });
      CHECK(e.code() == std::errc::file_exists);
      CHECK(test::nsfs_mounts_at(file.string()) == std::vector<std::string>{link_text(Kind::net, net_raw)});
      CHECK(raw_of_file(file) == net_raw);
      gonso::unpersist(file);
    }
    SECTION("unpersist of a regular file: EINVAL, and the file is still there") {
      const auto file = fs.path() / "regular";
      std::ofstream(file) << "not a namespace";
      const auto e = test::system_error_of([&] { gonso::unpersist(file); });
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK_THAT(e.what(), Catch::Contains(file.string()));
      CHECK(slurp(file) == "not a namespace");
    }
    SECTION("unpersist of a /proc namespace link, which is no mount: EINVAL") {
      const auto e = test::system_error_of([&] { gonso::unpersist("/proc/self/ns/net"); });
      CHECK(e.code() == std::errc::invalid_argument);
    }
    SECTION("unpersist of a missing file: ENOENT") {
      const auto e = test::system_error_of([&] { gonso::unpersist(fs.path() / "missing"); });
      CHECK(e.code() == std::errc::no_such_file_or_directory);
    }
    SECTION("unpersist_dir of a folder with no namespace file: ENOENT, and the folder stays") {
      const auto dir = fs.path() / "plain";
      std::filesystem::create_directory(dir);
      std::ofstream((dir / "net").string()) << "a regular file named net";
      const auto e = test::system_error_of([&] { gonso::unpersist_dir(dir); });
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK(slurp((dir / "net").string()) == "a regular file named net");
    }
    SECTION("persist(set, dir) into a folder that holds a file of one kind: EEXIST; the file stays, the rest undone") {
      const auto dir = fs.path() / "busy";
      std::filesystem::create_directory(dir);
      std::ofstream((dir / "uts").string()) << "keep me";
      // net is bound before uts (all_kinds order), and must be undone.
      const Set both = Set::current(Kind::net | Kind::uts).unshare(Kind::net);
      const auto e = test::system_error_of([&] { gonso::persist(both, dir); });
      CHECK(e.code() == std::errc::file_exists);
      CHECK(slurp((dir / "uts").string()) == "keep me");
      CHECK_FALSE(std::filesystem::exists((dir / "net").string()));
      CHECK(nsfs_mounts_under(dir).empty());
    }
    SECTION("persist(set, dir) that fails makes nothing: no bind, no file, no folder") {
      // ipc is bound first, then the caller's own mount namespace is refused
      // (it would be bound inside itself).
      const auto dir = fs.path() / "new-folder";
      const Set both = Set::current(Kind::ipc | Kind::mnt).unshare(Kind::ipc);
      const auto e = test::system_error_of([&] { gonso::persist(both, dir); });
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK(nsfs_mounts_under(fs.path()).empty());
      CHECK_FALSE(std::filesystem::exists(dir / "ipc"));
      CHECK_FALSE(std::filesystem::exists(dir));
    }
  });
}

TEST_CASE("persist() of a mount namespace: from outside it, and never onto a shared mount", "[persist][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    SECTION("the caller's own mount namespace would be bound inside itself: EINVAL, nothing left") {
      const test::PrivateTmpfs fs;
      const auto file = fs.path() / "self";
      const auto e = test::system_error_of([&] { gonso::persist(Set::current(Kind::mnt), Kind::mnt, file); });
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK_FALSE(std::filesystem::exists(file));
      CHECK(nsfs_mounts_under(fs.path()).empty());
    }
    SECTION("a new one onto a shared mount that it holds a peer of: EINVAL, nothing left") {
      const test::SharedTmpfs shared;
      const auto file = shared.path() / "mnt";
      gonso::UnshareOptions keep;
      keep.propagation = gonso::Propagation::unchanged;  // its copy of the tmpfs is a peer of ours
      const Set fresh = Set::current(Kind::mnt).unshare(Kind::mnt, keep);
      const auto e = test::system_error_of([&] { gonso::persist(fresh, Kind::mnt, file); });
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK_FALSE(std::filesystem::exists(file));
      CHECK(nsfs_mounts_under(shared.path()).empty());
    }
    SECTION("a new private one onto a shared mount: refused as documented (EINVAL), nothing left") {
      // persist.hpp promises EINVAL for a mount namespace bound onto a shared
      // mount, and the rule says never to: util-linux refuses too.
      const test::SharedTmpfs shared;
      const auto file = shared.path() / "mnt";
      const Set fresh = Set::current(Kind::mnt).unshare(Kind::mnt);  // rprivate
      std::error_code code;
      try {
        gonso::persist(fresh, Kind::mnt, file);
      } catch (const std::system_error& e) {
        code = e.code();
      }
      const auto left = nsfs_mounts_under(shared.path());
      if (!left.empty()) ::umount2(file.c_str(), MNT_DETACH);  // undo what was wrongly made before checking
      CHECK(code == std::errc::invalid_argument);
      CHECK(left.empty());
    }
  });
}

TEST_CASE("Set::from_file() opens only a namespace file of the kind asked", "[persist][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    const auto regular = fs.path() / "regular";
    std::ofstream(regular) << "x";
    const auto net_file = fs.path() / "net";
    gonso::persist(Set::current(Kind::net).unshare(Kind::net), Kind::net, net_file);
    const std::size_t fds_before = test::count_fds();  // after unshare, whose worker may stay with its fds

    auto e = test::system_error_of([&] { (void)Set::from_file(Kind::net, regular); });
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains(regular.string()) && Catch::Contains("not a namespace file"));

    e = test::system_error_of([&] { (void)Set::from_file(Kind::uts, net_file); });
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("it is a net namespace"));

    e = test::system_error_of([&] { (void)Set::from_file(Kind::net, fs.path() / "missing"); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);

    e = test::system_error_of([&] { (void)Set::from_dir(fs.path(), Kind::net | Kind::uts); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);

    CHECK(test::count_fds() == fds_before);
    CHECK(raw_of_fd(Set::from_file(Kind::net, net_file).fd(Kind::net)) == raw_of_file(net_file));
    gonso::unpersist(net_file);
  });
}

TEST_CASE("util-linux: what `unshare --net=FILE --mount=FILE` persisted, gonso opens and unpersists",
          "[persist][privileged][tools]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    const auto net_file = fs.path() / "net";
    const auto mnt_file = fs.path() / "mnt";
    make_empty_file(net_file);  // unshare(1) binds onto files that exist
    make_empty_file(mnt_file);
    // Inside a container the kernel refuses unshare(1) too when its new mount
    // namespace got a lower id than ours (ids come in per-CPU batches; a
    // mount namespace is bound only into an older one): it runs again, on
    // whichever CPU it lands, until it is not refused.
    test::ToolResult made;
    for (int tries = 0; tries < 50 && !made.ok(); ++tries) {
      for (const auto& file : {net_file, mnt_file}) {
        while (::umount2(file.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0) {
        }
      }
      made = test::run_tool(fmt::format("unshare --net={} --mount={} true 2>&1", net_file.string(), mnt_file.string()));
    }
    INFO(made.out);
    REQUIRE(made.ok());

    const Raw net_raw = stat_of(net_file);
    const Raw mnt_raw = stat_of(mnt_file);
    CHECK_FALSE(same_file(net_raw, stat_of("/proc/self/ns/net")));
    CHECK_FALSE(same_file(mnt_raw, stat_of("/proc/self/ns/mnt")));

    const Set net = Set::from_file(Kind::net, net_file);
    CHECK(net.identity(Kind::net).inode == net_raw.ino);
    CHECK(net.identity(Kind::net).device == net_raw.dev);
    CHECK(net.identity(Kind::net).id != 0);
    CHECK(net.run(true, [] { return test::thread_ns(Kind::net); }).inode == net_raw.ino);
    const Set mnt = Set::from_file(Kind::mnt, mnt_file);
    CHECK(mnt.identity(Kind::mnt).inode == mnt_raw.ino);

    gonso::unpersist(net_file);
    gonso::unpersist(mnt_file);
    CHECK_FALSE(std::filesystem::exists(net_file));
    CHECK_FALSE(std::filesystem::exists(mnt_file));
    CHECK(nsfs_mounts_under(fs.path()).empty());
  });
}

TEST_CASE("util-linux: `nsenter --net=FILE` enters what gonso persisted, with its Set gone",
          "[persist][privileged][tools]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    const auto dir = fs.path() / "ns";
    std::string net_link, mnt_link;
    {
      const Kinds kinds = Kind::net | Kind::uts | Kind::mnt;
      const Set s = test::unshare_persistable(Set::current(kinds), kinds);
      s.dup(Kind::uts).run(true, [] { set_hostname("gonso-nsenter"); });
      net_link = link_text(Kind::net, raw_of_fd(s.fd(Kind::net)));
      mnt_link = link_text(Kind::mnt, raw_of_fd(s.fd(Kind::mnt)));
      gonso::persist(s, dir);
    }
    CHECK(test::tool_output(fmt::format("nsenter --net={} readlink /proc/self/ns/net", (dir / "net").string())) ==
          net_link + "\n");
    CHECK(test::tool_output(fmt::format("nsenter --uts={} hostname", (dir / "uts").string())) == "gonso-nsenter\n");
    CHECK(test::tool_output(fmt::format("nsenter --mount={} readlink /proc/self/ns/mnt", (dir / "mnt").string())) ==
          mnt_link + "\n");
    gonso::unpersist_dir(dir);
    CHECK(nsfs_mounts_under(fs.path()).empty());
  });
}

TEST_CASE("Sets of the same namespaces compare and hash equal and key one map entry; of others, not",
          "[persist][identity][privileged]") {
  test::require_privilege();
  const Kinds kinds = Kind::net | Kind::uts | Kind::ipc;
  const Set a = Set::current(kinds);
  const Set b = Set::from_dir("/proc/thread-self/ns", kinds);
  CHECK(a.fd(Kind::net) != b.fd(Kind::net));
  CHECK(a == b);
  CHECK(std::hash<Set>{}(a) == std::hash<Set>{}(b));
  for (Kind kind : kinds) {
    INFO(gonso::name(kind));
    const Raw raw = raw_of_fd(a.fd(kind));
    CHECK(a.identity(kind).id != 0);  // this kernel has NS_GET_ID
    CHECK(a.identity(kind).id == raw.id);
    CHECK(same_file(stat_of("/proc/thread-self/ns/" + std::string(gonso::name(kind))), raw));
    CHECK(std::hash<gonso::Identity>{}(a.identity(kind)) == std::hash<gonso::Identity>{}(b.identity(kind)));
  }

  std::unordered_map<Set, int> map;
  map.emplace(a, 1);
  REQUIRE(map.count(b) == 1);
  CHECK(map.at(b) == 1);

  const Set c = a.unshare(Kind::net);  // another network namespace, the same uts and ipc
  CHECK_FALSE(c == a);
  CHECK(c.identity(Kind::uts) == a.identity(Kind::uts));
  CHECK(c.identity(Kind::net) != a.identity(Kind::net));
  CHECK(map.count(c) == 0);
  map.emplace(c, 2);
  CHECK(map.size() == 2);
  CHECK(map.at(Set(c)) == 2);
  CHECK(map.at(b) == 1);

  const Set fewer = a.dup(Kind::net | Kind::uts);  // same namespaces, fewer kinds
  CHECK_FALSE(fewer == a);
  CHECK(map.count(fewer) == 0);
}

TEST_CASE("the id of a namespace born after another died differs, even on a reused inode number",
          "[persist][identity][privileged]") {
  test::require_privilege();
  constexpr int max_tries = 2000;
  std::map<ino_t, gonso::Identity> seen;
  std::optional<std::pair<gonso::Identity, gonso::Identity>> reused;  // the earlier one, the later one
  std::string mismatch;
  int tries = 0;
  while (tries < max_tries && !reused) {
    ++tries;
    const Set fresh = Set::current(Kind::net).unshare(Kind::net);
    const gonso::Identity id = fresh.identity(Kind::net);
    const Raw raw = raw_of_fd(fresh.fd(Kind::net));
    if (mismatch.empty() && (id.id != raw.id || id.inode != raw.ino || id.device != raw.dev)) {
      mismatch = fmt::format("gonso says inode {} id {}, the kernel {}", id.inode, id.id, describe(raw));
    }
    const auto [it, fresh_inode] = seen.emplace(raw.ino, id);
    if (!fresh_inode) reused.emplace(it->second, id);
  }  // each namespace dies with its Set
  CHECK(mismatch.empty());
  if (!reused) {
    FAIL(
        fmt::format("no inode number came back in {} network namespaces made and dropped one after another; "
                    "the id's reason to exist was not exercised",
                    tries));
  }
  INFO(fmt::format("inode {} came back after {} namespaces", reused->first.inode, tries));
  const auto& [earlier, later] = *reused;
  CHECK(earlier.inode == later.inode);
  CHECK(earlier.device == later.device);
  CHECK(earlier.id != 0);
  CHECK(later.id != 0);
  CHECK(earlier.id != later.id);
  CHECK(earlier != later);
  // An identity read with stat(2) has no id and cannot tell them apart.
  const gonso::Identity stat_only{Kind::net, later.device, later.inode, 0};
  CHECK(stat_only == earlier);
  CHECK(stat_only == later);
}

TEST_CASE("Set::from_pidfd(): the process's namespaces while it lives, ESRCH once it has ended",
          "[persist][pidfd][privileged]") {
  test::require_privilege();
  const Set box = Set::current().unshare(Kind::net | Kind::uts | Kind::ipc);
  gonso::Child sleeper = gonso::spawn(box, {"sleep", "60"});
  const int pidfd = sleeper.pidfd();
  const std::string proc = fmt::format("/proc/{}/ns/", sleeper.pid());

  const Set by_pidfd = Set::from_pidfd(pidfd);
  CHECK(by_pidfd == Set::from_pid(sleeper.pid()));
  CHECK(by_pidfd == box);
  for (Kind kind : by_pidfd.kinds()) {
    INFO(gonso::name(kind));
    CHECK(by_pidfd.identity(kind) == test::identity_at(kind, proc + std::string(gonso::name(kind))));
  }
  CHECK(Set::from_pidfd(pidfd, Kind::net | Kind::uts) == box.dup(Kind::net | Kind::uts));

  sleeper.kill(SIGKILL);
  // Ended but not reaped: a zombie has no namespaces any more.
  siginfo_t info{};
  REQUIRE(::waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED | WNOWAIT) == 0);
  auto e = test::system_error_of([&] { (void)Set::from_pidfd(pidfd); });
  CHECK(e.code() == std::errc::no_such_process);

  CHECK(sleeper.wait().signal() == SIGKILL);
  // Reaped: the pidfd names a process that is no more, whatever its pid is now.
  e = test::system_error_of([&] { (void)Set::from_pidfd(pidfd); });
  CHECK(e.code() == std::errc::no_such_process);
  CHECK_THAT(e.what(), Catch::Contains(std::to_string(pidfd)));
}

TEST_CASE("Set::from_pidfd() of the caller, and refusals of fds that are not pidfds or are closed",
          "[persist][pidfd]") {
  const std::size_t fds_before = test::count_fds();
  {
    gonso::detail::unique_fd self(static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0U)));
    REQUIRE(self);
    CHECK(Set::from_pidfd(self.get()) == Set::from_pid(::getpid()));
  }
  int pipe_fds[2];
  REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
  gonso::detail::unique_fd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  auto e = test::system_error_of([&] { (void)Set::from_pidfd(read_end.get()); });
  CHECK(e.code() == std::errc::invalid_argument);

  gonso::detail::unique_fd ns(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
  REQUIRE(ns);
  e = test::system_error_of([&] { (void)Set::from_pidfd(ns.get()); });
  CHECK(e.code() == std::errc::invalid_argument);

  // An fd number far above what is open, so that no other thread gets it meanwhile.
  const int closed = ::fcntl(read_end.get(), F_DUPFD_CLOEXEC, 900);
  REQUIRE(closed >= 900);
  REQUIRE(::close(closed) == 0);
  e = test::system_error_of([&] { (void)Set::from_pidfd(closed); });
  CHECK(e.code() == std::errc::bad_file_descriptor);

  read_end.reset();
  write_end.reset();
  ns.reset();
  CHECK(test::count_fds() == fds_before);
}

TEST_CASE("owner(), parent() and owner_uid() of the caller's namespaces", "[persist][introspection]") {
  const Set here = Set::current(gonso::Kinds::all());
  const gonso::Identity own_user = test::identity_at(Kind::user, "/proc/self/ns/user");
  // The initial namespaces are owned by the initial user namespace.
  for (Kind kind : {Kind::net, Kind::uts, Kind::ipc, Kind::mnt, Kind::cgroup, Kind::pid, Kind::time}) {
    INFO(gonso::name(kind));
    const Set owner = here.owner(kind);
    CHECK(owner.kinds() == Kinds(Kind::user));
    CHECK(owner.identity(Kind::user) == own_user);
  }
  // Above the caller's own user and pid namespaces it may not look.
  auto e = test::system_error_of([&] { (void)here.owner(Kind::user); });
  CHECK(e.code() == std::errc::operation_not_permitted);
  e = test::system_error_of([&] { (void)here.parent(Kind::user); });
  CHECK(e.code() == std::errc::operation_not_permitted);
  e = test::system_error_of([&] { (void)here.parent(Kind::pid); });
  CHECK(e.code() == std::errc::operation_not_permitted);
  // Only pid and user namespaces have parents.
  e = test::system_error_of([&] { (void)here.parent(Kind::net); });
  CHECK(e.code() == std::errc::invalid_argument);
  // Kinds not held.
  CHECK_THROWS_AS(here.dup(Kind::uts).owner(Kind::net), std::invalid_argument);
  CHECK_THROWS_AS(here.dup(Kind::net).owner_uid(), std::invalid_argument);
}

TEST_CASE("owner(), parent() and owner_uid() of namespaces gonso made",
          "[persist][introspection][privileged][process]") {
  test::require_privilege();
  const gonso::Identity own_user = test::identity_at(Kind::user, "/proc/self/ns/user");
  const gonso::Identity own_pid = test::identity_at(Kind::pid, "/proc/self/ns/pid");

  const Set made = Set::current().unshare(Kind::user | Kind::net | Kind::pid);
  // A program in the Set reads its user namespace from /proc, not from gonso.
  gonso::Child sleeper = gonso::spawn(made, {"sleep", "60"});
  const gonso::Identity seen_user = test::identity_at(Kind::user, fmt::format("/proc/{}/ns/user", sleeper.pid()));

  const Set net_owner = made.owner(Kind::net);
  CHECK(net_owner.kinds() == Kinds(Kind::user));
  CHECK(net_owner.identity(Kind::user) == seen_user);
  CHECK(net_owner.identity(Kind::user) == made.identity(Kind::user));
  CHECK(net_owner.identity(Kind::user) != own_user);
  CHECK(made.owner(Kind::pid).identity(Kind::user) == seen_user);
  // What it did not make is still owned by the caller's user namespace.
  CHECK(made.owner(Kind::uts).identity(Kind::user) == own_user);
  // A user namespace's owner is its parent.
  CHECK(made.owner(Kind::user).identity(Kind::user) == own_user);
  CHECK(made.parent(Kind::user).identity(Kind::user) == own_user);
  CHECK(made.parent(Kind::pid).identity(Kind::pid) == own_pid);
  CHECK(made.owner_uid() == ::geteuid());
  const auto e = test::system_error_of([&] { (void)made.parent(Kind::net); });
  CHECK(e.code() == std::errc::invalid_argument);

  // A pid namespace made alone is a child of the caller's too.
  const Set pid_only = Set::current().unshare(Kind::pid);
  CHECK(pid_only.parent(Kind::pid).identity(Kind::pid) == own_pid);
  CHECK(pid_only.parent(Kind::pid).kinds() == Kinds(Kind::pid));
  CHECK(pid_only.owner(Kind::pid).identity(Kind::user) == own_user);

  sleeper.kill(SIGKILL);
  CHECK(sleeper.wait().signal() == SIGKILL);
}

// ---------------------------------------------------------------------------
// Races: whoever can write the folder swaps names for symlinks while gonso
// works. gonso acts only on what it created or checked, through fds, so a
// symlink's target never gets a mount and nothing of gonso's is left.

namespace {

constexpr int race_tries = 2000;

bool is_nsfs_path(const std::filesystem::path& path) {
  struct statfs fs {};
  return ::statfs(path.c_str(), &fs) == 0 && fs.f_type == static_cast<decltype(fs.f_type)>(0x6e736673);
}

// The victim a symlink leads to: a regular file with known content.
struct Victim {
  explicit Victim(std::filesystem::path p) : path(std::move(p)) {
    std::ofstream(path) << "precious";
    before = stat_of(path);
  }
  // Never a mount, the same inode, the same content: as the kernel sees it.
  [[nodiscard]] bool untouched() const {
    return test::mounts_at(path.string()) == 0 && !is_nsfs_path(path) && same_file(stat_of(path), before) &&
           slurp(path) == "precious";
  }
  std::filesystem::path path;
  Raw before{};
};

}  // namespace

TEST_CASE("persist() races: a symlink swapped in for the file being made never gets the mount",
          "[persist][privileged][race]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    const Victim victim(fs.path() / "victim");
    const Set net = Set::current(Kind::net).unshare(Kind::net);
    const Raw net_raw = raw_of_fd(net.fd(Kind::net));
    const auto file = fs.path() / "ns";
    int bound = 0;
    int touched_at = -1;
    std::size_t swaps = 0;
    {
      test::SymlinkSwapper attacker(fs.path(), "ns", victim.path);
      for (int i = 0; i < race_tries && touched_at < 0; ++i) {
        try {
          gonso::persist(net, Kind::net, file);
        } catch (const std::system_error&) {
          // EEXIST (the symlink was there) or ENOENT (the new file was
          // renamed over before the mount): refused, nothing bound.
        }
        if (is_nsfs_path(victim.path)) touched_at = i;
        // A mount point's name cannot be renamed over or removed: still ours.
        if (test::nsfs_mounts_at(file.string()) == std::vector<std::string>{link_text(Kind::net, net_raw)}) {
          ++bound;
          CHECK(same_file(stat_of(file), net_raw));
          gonso::unpersist(file);
        }
      }
      swaps = attacker.stop();
    }
    INFO(fmt::format("{} binds and {} swaps in {} tries; the victim was mounted at try {}", bound, swaps, race_tries,
                     touched_at));
    CHECK(touched_at == -1);
    CHECK(victim.untouched());
    CHECK(bound > 0);
    CHECK(swaps > 0);
    CHECK(nsfs_mounts_under(fs.path()).empty());
    ::unlink(file.c_str());  // a symlink the attacker may have left
  });
}

TEST_CASE("persist() races: a folder on the path swapped for a symlink leads the mount onto no existing file",
          "[persist][privileged][race]") {
  // Folders on the way to the file are the caller's to choose and followed
  // as symlinks; the file is always a new one, so the worst a swap does is
  // send it to another folder, never onto something that exists.
  test::require_privilege();
  test::leaves_machine_as_found([] {
    namespace fs = std::filesystem;
    const test::PrivateTmpfs tmp;
    fs::create_directory(tmp.path() / "sub");
    fs::create_directory(tmp.path() / "elsewhere");
    const Victim victim(tmp.path() / "elsewhere" / "ns");
    fs::create_directory_symlink(tmp.path() / "elsewhere", tmp.path() / "sub.other");
    const Set net = Set::current(Kind::net).unshare(Kind::net);
    const auto file = tmp.path() / "sub" / "ns";
    std::atomic<bool> stop{false};
    std::atomic<std::size_t> swaps{0};
    std::thread attacker([&] {
      while (!stop) {
        if (::renameat2(AT_FDCWD, (tmp.path() / "sub").c_str(), AT_FDCWD, (tmp.path() / "sub.other").c_str(),
                        RENAME_EXCHANGE) == 0) {
          ++swaps;
        }
        std::this_thread::yield();
      }
    });
    int bound = 0;
    int touched_at = -1;
    // Until both sides of the swap were seen, at most ten times as long.
    int refused = 0;
    for (int i = 0; (i < race_tries || bound == 0 || refused == 0) && i < 10 * race_tries && touched_at < 0; ++i) {
      bool made = false;
      try {
        gonso::persist(net, Kind::net, file);
        made = true;
      } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::file_exists);  // it was sent to the victim's folder
        ++refused;
      }
      if (is_nsfs_path(victim.path) || test::mounts_at(victim.path.string()) != 0) touched_at = i;
      if (made) {
        ++bound;
        // Through whichever name the real folder has now; the victim's
        // folder has no persisted namespace to remove (EINVAL).
        bool gone = false;
        for (int tries = 0; tries < 10000 && !gone; ++tries) {
          try {
            gonso::unpersist(file);
            gone = true;
          } catch (const std::system_error& e) {
            CHECK(e.code() == std::errc::invalid_argument);
          }
        }
        CHECK(gone);
      }
    }
    stop = true;
    attacker.join();
    INFO(fmt::format("{} binds and {} swaps in {} tries; the victim was mounted at try {}", bound, swaps.load(),
                     race_tries, touched_at));
    CHECK(touched_at == -1);
    CHECK(victim.untouched());
    CHECK(bound > 0);
    CHECK(swaps > 0);
    CHECK(nsfs_mounts_under(tmp.path()).empty());
    const auto real = fs::is_symlink(tmp.path() / "sub") ? tmp.path() / "sub.other" : tmp.path() / "sub";
    CHECK_FALSE(fs::exists(real / "ns"));  // every file gonso made was removed again
  });
}

TEST_CASE("unpersist() races: a symlink to another persisted namespace swapped in is never unmounted",
          "[persist][privileged][race]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::PrivateTmpfs fs;
    const auto keep = fs.path() / "keep";
    const Set kept = Set::current(Kind::net).unshare(Kind::net);
    gonso::persist(kept, Kind::net, keep);
    const Raw kept_raw = raw_of_file(keep);
    const Set net = Set::current(Kind::net).unshare(Kind::net);
    const auto file = fs.path() / "ns";
    int removed = 0;
    int lost_at = -1;
    std::size_t swaps = 0;
    {
      test::SymlinkSwapper attacker(fs.path(), "ns", keep);
      for (int i = 0; i < race_tries && lost_at < 0; ++i) {
        try {
          gonso::persist(net, Kind::net, file);
        } catch (const std::system_error&) {
        }
        try {
          gonso::unpersist(file);
          ++removed;
        } catch (const std::system_error& e) {
          // The symlink (EINVAL: not followed, so no persisted namespace), or nothing there.
          CHECK((e.code() == std::errc::invalid_argument || e.code() == std::errc::no_such_file_or_directory));
        }
        if (test::nsfs_mounts_at(keep.string()) != std::vector<std::string>{link_text(Kind::net, kept_raw)}) {
          lost_at = i;
        }
      }
      swaps = attacker.stop();
    }
    INFO(fmt::format("{} removals and {} swaps in {} tries; keep lost at try {}", removed, swaps, race_tries, lost_at));
    CHECK(lost_at == -1);
    CHECK(raw_of_file(keep) == kept_raw);
    CHECK(removed > 0);
    CHECK(swaps > 0);
    if (is_nsfs_path(file) && !std::filesystem::is_symlink(file)) gonso::unpersist(file);
    ::unlink(file.c_str());
    gonso::unpersist(keep);
    CHECK(nsfs_mounts_under(fs.path()).empty());
  });
}

// ---------------------------------------------------------------------------
// Inside a container: a mount namespace that is not the initial one, as a
// monitoring agent's. The kernel binds a mount namespace only into an older
// one (by id), and ids come from per-CPU batches: there, a namespace made
// later can be older than the caller's. gonso says so before mounting.

namespace {

struct OrderFindings {
  bool in_box = false;         // the child's mount namespace is the box, not the initial one
  std::uint64_t own = 0;       // its id
  std::uint64_t older = 0;     // a mount namespace made later with a lower id, 0 if none came
  std::uint64_t newer = 0;     // one with a higher id
  int older_errno = 0;         // persist() of the older one
  bool older_message = false;  // ... named the rule
  bool older_left = true;      // ... left a file or a mount
  bool newer_bound = false;    // persist() of the newer one: an nsfs mount of it on the file
  bool newer_gone = false;     // ... and unpersist() took it away
  bool setup_failed = false;
};

// A mount namespace made on a thread pinned to `cpu`; its fd, or -1.
int mnt_ns_made_on(std::size_t cpu) {
  int fd = -1;
  std::thread maker([&] {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (::sched_setaffinity(0, sizeof set, &set) == 0 && ::unshare(CLONE_FS | CLONE_NEWNS) == 0) {
      fd = ::open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC);
    }
  });
  maker.join();
  return fd;
}

OrderFindings persist_by_mnt_order() {
  OrderFindings f;
  // Everything the child makes lives in its own mount namespace (the box).
  if (::mount("gonso-test", "/mnt", "tmpfs", MS_NOSUID | MS_NODEV, "size=64k") != 0 ||
      ::mount(nullptr, "/mnt", nullptr, MS_PRIVATE, nullptr) != 0) {
    f.setup_failed = true;
    return f;
  }
  f.own = test::own_mnt_id();
  f.in_box = f.own > 1;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  (void)::sched_getaffinity(0, sizeof allowed, &allowed);
  gonso::detail::unique_fd older, newer;
  for (int round = 0; round < 50 && (!older || !newer); ++round) {
    for (std::size_t cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &allowed) == 0) continue;
      gonso::detail::unique_fd fd(mnt_ns_made_on(cpu));
      const std::uint64_t id = fd ? test::kernel_ns_id(fd.get()) : 0;
      if (id != 0 && id < f.own && !older) {
        f.older = id;
        older = std::move(fd);
      } else if (id > f.own && !newer) {
        f.newer = id;
        newer = std::move(fd);
      }
    }
  }
  if (older) {
    const Set set = Set::from_file(Kind::mnt, fmt::format("/proc/self/fd/{}", older.get()));
    try {
      gonso::persist(set, Kind::mnt, "/mnt/older");
    } catch (const std::system_error& e) {
      f.older_errno = e.code().value();
      f.older_message = std::string_view(e.what()).find("only into an older one") != std::string_view::npos;
    }
    f.older_left = ::access("/mnt/older", F_OK) == 0 || !nsfs_mounts_under("/mnt").empty();
  }
  if (newer) {
    const Set set = Set::from_file(Kind::mnt, fmt::format("/proc/self/fd/{}", newer.get()));
    gonso::persist(set, Kind::mnt, "/mnt/newer");
    f.newer_bound = test::nsfs_mounts_at("/mnt/newer") ==
                    std::vector<std::string>{fmt::format("mnt:[{}]", set.identity(Kind::mnt).inode)};
    gonso::unpersist("/mnt/newer");
    f.newer_gone = ::access("/mnt/newer", F_OK) != 0 && nsfs_mounts_under("/mnt").empty();
  }
  return f;
}

}  // namespace

TEST_CASE("persist() of a mount namespace in a container: older than the caller's is refused first, naming the rule",
          "[persist][privileged][process]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const Set box = Set::current().unshare(Kind::mnt);
    const OrderFindings f = box.run_in_process([] { return persist_by_mnt_order(); });
    REQUIRE_FALSE(f.setup_failed);
    INFO(fmt::format("box id {}, older {}, newer {}", f.own, f.older, f.newer));
    CHECK(f.in_box);
    REQUIRE(f.newer != 0);
    CHECK(f.newer_bound);
    CHECK(f.newer_gone);
    if (f.older == 0) {
      WARN("no mount namespace older than the box came in 50 rounds over every CPU: the refusal was not exercised");
    } else {
      CHECK(f.older_errno == EINVAL);
      CHECK(f.older_message);
      CHECK_FALSE(f.older_left);
    }
  });
}

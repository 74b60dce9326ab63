// Persisted namespaces: bind mounts of their files that keep them alive with
// no process or fd, reopened later; one namespace on one file, and what
// persist() and unpersist() refuse. Namespaces are checked against stat(2) of the files, NS_GET_ID
// asked here with ioctl(2), /proc and the real tools, never against gonso
// alone. Every case leaves the mount table and the temporary directory as it
// found them.
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
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
#include "support/ns_files.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/persist.hpp>
#include <gonso/spawn.hpp>

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;
using test::holders_after_exits;
using test::link_text;
using test::nsfs_mounts_under;
using test::Raw;
using test::raw_of_fd;
using test::raw_of_file;
using test::same_file;
using test::stat_of;

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
      original.dup(Kind::uts).run(true, [] { test::set_hostname("gonso-persisted"); });
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
      CHECK(reopened.dup(Kind::uts).run(true, [] { return test::hostname(); }) == "gonso-persisted");
      CHECK(reopened.dup(Kind::net).run(true, [] { return test::thread_ns(Kind::net); }).inode == raws[Kind::net].ino);

      gonso::unpersist_dir(dir);
      CHECK_FALSE(std::filesystem::exists(dir));
      CHECK(nsfs_mounts_under(fs.path()).empty());
      // The Set's fds keep the namespaces alive after that.
      CHECK(raw_of_fd(reopened.fd(Kind::net)) == raws[Kind::net]);
    }
  });
}

TEST_CASE("persist_dir and unpersist_dir are a pair: the folder's files are the Set's namespaces, then gone",
          "[persist][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const Kinds kinds = Kind::net | Kind::uts;
    const test::PrivateTmpfs fs;
    const auto dir = fs.path() / "pair";
    const Set set = test::unshare_persistable(Set::current(kinds), kinds);
    gonso::persist_dir(set, dir);
    for (Kind kind : kinds) {
      INFO(gonso::name(kind));
      // The kernel's view of each file: an nsfs mount of the Set's namespace.
      const Raw raw = raw_of_fd(set.fd(kind));
      CHECK(same_file(stat_of(dir / std::string(gonso::name(kind))), raw));
      CHECK(test::nsfs_mounts_at((dir / std::string(gonso::name(kind))).string()) ==
            std::vector<std::string>{link_text(kind, raw)});
    }
    gonso::unpersist_dir(dir);
    CHECK_FALSE(std::filesystem::exists(dir));
    CHECK(nsfs_mounts_under(fs.path()).empty());
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
      CHECK(test::file_text(file) == "keep me");
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
      CHECK(test::file_text(file) == "not a namespace");
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
      CHECK(test::file_text((dir / "net").string()) == "a regular file named net");
    }
    SECTION("persist(set, dir) into a folder that holds a file of one kind: EEXIST; the file stays, the rest undone") {
      const auto dir = fs.path() / "busy";
      std::filesystem::create_directory(dir);
      std::ofstream((dir / "uts").string()) << "keep me";
      // net is bound before uts (all_kinds order), and must be undone.
      const Set both = Set::current(Kind::net | Kind::uts).unshare(Kind::net);
      const auto e = test::system_error_of([&] { gonso::persist(both, dir); });
      CHECK(e.code() == std::errc::file_exists);
      CHECK(test::file_text((dir / "uts").string()) == "keep me");
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

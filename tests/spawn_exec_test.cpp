// gonso::spawn's container-exec options (root, cwd_dir, pid 1, mount_proc,
// cgroup, ids, capabilities, no_new_privs, rlimits, umask, session, extra
// fds, redirection) and gonso::Target, each checked from the kernel's view:
// /proc/PID/{status,limits,stat,cgroup,fd,root,cwd,ns} of the program.
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <gonso/spawn.hpp>
#include <gonso/target.hpp>

#include "support/baseline.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"
#include "support/programs.hpp"
#include "support/tools.hpp"

using gonso::Capabilities;
using gonso::Child;
using gonso::Credentials;
using gonso::Dir;
using gonso::Kind;
using gonso::Set;
using gonso::SpawnOptions;
using gonso::Stdio;
using gonso::Target;
using test::output_of;

namespace {

/// Reads one line the program wrote on its stdout pipe.
std::string first_line(const Child& child) {
  std::string line;
  char c = 0;
  while (::read(child.stdout_fd(), &c, 1) == 1 && c != '\n') line += c;
  return line;
}

/// A program that waits to be looked at; the Child kills and reaps it when
/// the Sleeper goes. Looked at only once it has said "ready": spawn()
/// returns when the exec has replaced the program's memory, which is before
/// the kernel has closed its close-on-exec fds and set its new credentials.
struct Sleeper {
  Child child;
  Sleeper(const Set& set, SpawnOptions options) : child(start(set, std::move(options))) {
    REQUIRE(first_line(child) == "ready");
    // "ready" comes from sh just before it execs sleep: until the exec is
    // done, /proc/PID (environ, status) may still be the shell's, or between
    // the two. Every check below is of the sleep it became.
    REQUIRE(test::eventually([&] { return test::file_text(proc("comm")) == "sleep\n"; }));
  }
  static Child start(const Set& set, SpawnOptions options) {
    options.out = Stdio::pipe;
    return gonso::spawn(set, {"sh", "-c", "echo ready; exec sleep 60"}, options);
  }
  [[nodiscard]] pid_t pid() const { return child.pid(); }
  [[nodiscard]] std::string proc(const std::string& file) const { return fmt::format("/proc/{}/{}", pid(), file); }
  [[nodiscard]] std::string status(const std::string& field) const { return test::status_field(pid(), field); }
};

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.pop_back();
  return s;
}

std::uint64_t hex(const std::string& s) { return std::stoull(s, nullptr, 16); }

std::pair<dev_t, ino_t> file_id(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return {st.st_dev, st.st_ino};
}
std::pair<dev_t, ino_t> file_id(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return {st.st_dev, st.st_ino};
}

/// Fields of /proc/PID/stat after the command name: [0] is the state.
std::vector<std::string> stat_fields(pid_t pid) {
  const std::string text = test::file_text(fmt::format("/proc/{}/stat", pid));
  std::istringstream in(text.substr(text.rfind(')') + 2));
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

/// A directory with /usr bound in (and the merged-/usr links), in a private
/// mount namespace: a root a program can run in, which the caller's
/// namespace does not see.
struct ChrootBox {
  test::TempDir dir;
  Set box = Set::current().unshare(Kind::mnt);
  Dir root;
  ChrootBox() {
    root = box.run(true, [&] {
      const std::string p = dir.path().native();
      test_mount("tmpfs", p, "tmpfs", 0);
      for (const char* d : {"usr", "work", "proc"}) std::filesystem::create_directory(dir.path() / d);
      for (const char* l : {"bin", "lib", "lib64", "sbin"}) {
        std::filesystem::create_directory_symlink(fmt::format("usr/{}", l), dir.path() / l);
      }
      test_mount("/usr", p + "/usr", nullptr, MS_BIND | MS_REC);
      std::ofstream(dir.path() / "work" / "marker") << "in the box\n";
      return Dir::open(dir.path());
    });
  }
  static void test_mount(const std::string& from, const std::string& to, const char* type, unsigned long flags) {
    if (::mount(from.c_str(), to.c_str(), type, flags, nullptr) != 0) {
      throw std::system_error(errno, std::generic_category(), "mount " + to);
    }
  }
};

}  // namespace

TEST_CASE("spawn(): root and cwd_dir are entered after joining, as nsenter -r -w", "[spawn][exec][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    const ChrootBox box;
    {
      SpawnOptions o;
      o.root = box.root;
      // The program sees the box's tree, not the caller's.
      CHECK(output_of(box.box, {"/bin/sh", "-c", "ls /; cat /work/marker; pwd"}, o) ==
            "bin\nlib\nlib64\nproc\nsbin\nusr\nwork\nin the box\n/");
      const Sleeper s(box.box, o);
      CHECK(file_id(s.proc("root")) == file_id(box.root.fd()));
      CHECK(file_id(s.proc("cwd")) == file_id(box.root.fd()));
    }
    {
      // --wdns: a path inside the new root.
      SpawnOptions o;
      o.root = box.root;
      o.cwd = "/work";
      CHECK(output_of(box.box, {"/bin/sh", "-c", "pwd; cat marker"}, o) == "/work\nin the box");
    }
    {
      // -w: a directory held open, entered after the root.
      const Dir work = box.box.run(true, [&] { return Dir::open(box.dir.path() / "work"); });
      SpawnOptions o;
      o.root = box.root;
      o.cwd_dir = work;
      const Sleeper s(box.box, o);
      CHECK(file_id(s.proc("cwd")) == file_id(work.fd()));
      CHECK(file_id(s.proc("root")) == file_id(box.root.fd()));
    }
    // The caller never moved.
    CHECK(file_id("/proc/thread-self/root") == file_id("/"));
  }
  base.check();
}

TEST_CASE("spawn(): new_pid_namespace makes the program pid 1, and mount_proc gives it its own /proc",
          "[spawn][exec][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    const Set own = Set::current();
    SpawnOptions o;
    o.new_pid_namespace = true;
    {
      Sleeper s(own, o);
      const std::string nspid = s.status("NSpid");
      CHECK(nspid == fmt::format("{}\t1", s.pid()));
      // The Child's pidfd holds a Set of that namespace, a child of ours.
      const Set pid_ns = Set::from_pidfd(s.child.pidfd(), Kind::pid);
      CHECK(pid_ns.identity(Kind::pid) == test::identity_at(Kind::pid, s.proc("ns/pid")));
      CHECK(pid_ns.identity(Kind::pid) != test::identity_at(Kind::pid, "/proc/self/ns/pid"));
      CHECK(pid_ns.parent(Kind::pid).identity(Kind::pid) == test::identity_at(Kind::pid, "/proc/self/ns/pid"));
      CHECK(test::status_field(s.pid(), "PPid") == std::to_string(::getpid()));
    }
    o.mount_proc = true;
    const std::string caller_mounts = test::file_text("/proc/self/mountinfo");
    // /proc shows the new namespace: the shell is 1, and there is no pid of ours.
    CHECK(output_of(
              own,
              {"sh", "-c",
               "echo $$; cat /proc/1/comm; test -e /proc/" + std::to_string(::getpid()) + " && echo leaked; echo end"},
              o) == "1\nsh\nend");
    {
      const Sleeper s(own, o);
      CHECK(test::identity_at(Kind::mnt, s.proc("ns/mnt")) != test::identity_at(Kind::mnt, "/proc/self/ns/mnt"));
    }
    CHECK(test::file_text("/proc/self/mountinfo") == caller_mounts);
  }
  base.check();
}

TEST_CASE("spawn(): the program's ids, groups, capabilities and no_new_privs", "[spawn][exec][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    const Set own = Set::current(Kind::uts);
    {
      SpawnOptions o;
      o.user = Credentials{1234, 2345, std::vector<gid_t>{7, 3000}};
      const Sleeper s(own, o);
      CHECK(s.status("Uid") == "1234\t1234\t1234\t1234");
      CHECK(s.status("Gid") == "2345\t2345\t2345\t2345");
      CHECK(trimmed(s.status("Groups")) == "7 3000");
      CHECK(hex(s.status("CapEff")) == 0);  // root's capabilities go with the uid
      CHECK(s.status("NoNewPrivs") == "0");
    }
    {
      // A non-root program keeps ambient capabilities across execve.
      const std::uint64_t bind = gonso::capability_mask({CAP_NET_BIND_SERVICE});
      const std::uint64_t both = gonso::capability_mask({CAP_NET_BIND_SERVICE, CAP_NET_RAW});
      SpawnOptions o;
      o.user = Credentials{1000, 1000, std::vector<gid_t>{}};
      o.capabilities = Capabilities{both, both, both, both, bind};
      o.no_new_privs = true;
      const Sleeper s(own, o);
      CHECK(s.status("Uid") == "1000\t1000\t1000\t1000");
      CHECK(s.status("Groups").empty());
      CHECK(hex(s.status("CapAmb")) == bind);
      CHECK(hex(s.status("CapPrm")) == bind);
      CHECK(hex(s.status("CapEff")) == bind);
      CHECK(hex(s.status("CapInh")) == both);
      CHECK(hex(s.status("CapBnd")) == both);
      CHECK(s.status("NoNewPrivs") == "1");
    }
    {
      // Root gets inheritable | bounding at execve: the bounding set rules.
      const std::uint64_t admin = gonso::capability_mask({CAP_NET_ADMIN});
      SpawnOptions o;
      o.capabilities = Capabilities{admin, admin, 0, admin, 0};
      const Sleeper s(own, o);
      CHECK(s.status("Uid") == "0\t0\t0\t0");
      CHECK(hex(s.status("CapBnd")) == admin);
      CHECK(hex(s.status("CapEff")) == admin);
    }
    // The caller kept its own.
    CHECK(test::status_field(::getpid(), "Uid") == "0\t0\t0\t0");
  }
  base.check();
}

TEST_CASE("spawn(): rlimits, umask and a new session", "[spawn][exec]") {
  const test::Baseline base(test::Watch::fds);
  {
    const Set own = Set::current(Kind::uts);
    SpawnOptions o;
    o.rlimits = {{RLIMIT_NOFILE, 100, 200}, {RLIMIT_CORE, 0, 0}};
    o.umask = 027;
    o.new_session = true;
    const Sleeper s(own, o);
    std::map<std::string, std::string> limits;
    std::ifstream in(s.proc("limits"));
    for (std::string line; std::getline(in, line);) limits[line.substr(0, 26)] = line.substr(26);
    CHECK(test::words_by_line(limits["Max open files            "])[0] ==
          std::vector<std::string>{"100", "200", "files"});
    CHECK(test::words_by_line(limits["Max core file size        "])[0] == std::vector<std::string>{"0", "0", "bytes"});
    CHECK(s.status("Umask") == "0027");
    const std::vector<std::string> f = stat_fields(s.pid());
    CHECK(f.at(2) == std::to_string(s.pid()));  // process group
    CHECK(f.at(3) == std::to_string(s.pid()));  // session
    CHECK(stat_fields(::getpid()).at(3) != std::to_string(s.pid()));
  }
  base.check();
}

TEST_CASE("spawn(): extra fds land at their numbers, swapped ones too, and nothing else", "[spawn][exec]") {
  const test::Baseline base(test::Watch::fds);
  {
    const Set own = Set::current(Kind::uts);
    // Two pipes whose write ends trade numbers: a naive dup2 in order would
    // overwrite one with the other.
    auto a = gonso::detail::make_pipe();
    auto b = gonso::detail::make_pipe();
    const int fa = a.write.get();
    const int fb = b.write.get();
    const Set net = Set::current(Kind::net);
    SpawnOptions o;
    o.fds = {{fa, fb}, {fb, fa}, {net.fd(Kind::net), 40}};
    {
      Child c = gonso::spawn(own, {"sh", "-c", fmt::format("echo to-a >&{}; echo to-b >&{}", fb, fa)}, o);
      a.write.reset();
      b.write.reset();
      CHECK(gonso::detail::read_to_end(a.read.get()) == "to-a\n");
      CHECK(gonso::detail::read_to_end(b.read.get()) == "to-b\n");
      CHECK(c.wait().success());
    }
    {
      auto p = gonso::detail::make_pipe();
      SpawnOptions o2;
      o2.fds = {{p.write.get(), 5}, {net.fd(Kind::net), 40}};
      // Listed by the program itself, after its exec: ls's own fd of the
      // folder is the lowest free one, 3.
      CHECK(output_of(own, {"ls", "/proc/self/fd"}, o2) == "0\n1\n2\n3\n40\n5");
      const Sleeper s(own, o2);
      CHECK(std::filesystem::read_symlink(s.proc("fd/5")) ==
            std::filesystem::read_symlink(fmt::format("/proc/self/fd/{}", p.write.get())));
      CHECK(file_id(s.proc("fd/40")) == file_id(net.fd(Kind::net)));
      // Close-on-exec clear: the program really holds them.
      for (const char* fd : {"5", "40"}) {
        std::istringstream info(test::file_text(s.proc(std::string("fdinfo/") + fd)));
        std::string key, flags;
        while (info >> key >> flags && key != "flags:") {
        }
        INFO(fd << " flags " << flags);
        CHECK((std::stoul(flags, nullptr, 8) & O_CLOEXEC) == 0);
      }
    }
  }
  base.check();
}

TEST_CASE("spawn(): a stream redirected to an fd, and stderr merged into stdout", "[spawn][exec]") {
  const test::Baseline base(test::Watch::fds);
  {
    const Set own = Set::current(Kind::uts);
    const test::TempDir dir;
    const std::string file = (dir.path() / "out").native();
    {
      const gonso::detail::unique_fd f(::open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
      REQUIRE(f);
      SpawnOptions o;
      o.fds = {{f.get(), 1}};
      CHECK(gonso::spawn(own, {"echo", "into the file"}, o).wait().success());
    }
    CHECK(test::file_text(file) == "into the file\n");
    SpawnOptions o;
    o.err = Stdio::to_stdout;
    CHECK(output_of(own, {"sh", "-c", "echo one; echo two >&2; echo three"}, o) == "one\ntwo\nthree");
  }
  base.check();
}

TEST_CASE("spawn(): the program starts in a given cgroup v2 directory", "[spawn][exec][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    const auto mount = gonso::detail::find_cgroup2(test::file_text("/proc/self/mountinfo"));
    REQUIRE(mount.has_value());
    const std::string name = fmt::format("gonso-test-{}", ::getpid());
    const std::filesystem::path dir = std::filesystem::path(mount->mount_point) / name;
    std::filesystem::create_directory(dir);
    {
      SpawnOptions o;
      o.cgroup = Dir::open(dir);
      Sleeper s(Set::current(Kind::uts), o);
      const std::string cg = test::file_text(s.proc("cgroup"));
      INFO(cg);
      CHECK(cg.find(fmt::format("0::{}/{}\n", mount->root == "/" ? "" : mount->root, name)) != std::string::npos);
      CHECK(test::file_text(dir / "cgroup.procs") == fmt::format("{}\n", s.pid()));
      // Target reads it back.
      CHECK(file_id(Target::of_pid(s.pid()).cgroup().fd()) == file_id(dir.native()));
      s.child.kill();
    }
    // The caller stayed where it was.
    CHECK(test::file_text("/proc/self/cgroup").find(name) == std::string::npos);
    CHECK(test::eventually([&] { return ::rmdir(dir.c_str()) == 0; }));
  }
  base.check();
}

TEST_CASE("Target: a process's namespaces, root, cwd, ids and environment, as nsenter -a -r -w and runc exec",
          "[spawn][exec][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    const ChrootBox box;
    // The container: its own uts and mount namespaces, chrooted into the box,
    // in /work, as uid 1000 with groups 5 and 6 and a capability.
    SpawnOptions o;
    o.root = box.root;
    o.cwd = "/work";
    o.user = Credentials{1000, 1001, std::vector<gid_t>{5, 6}};
    const std::uint64_t raw = gonso::capability_mask({CAP_NET_RAW});
    o.capabilities = Capabilities{raw, raw, raw, std::nullopt, raw};
    o.env = std::vector<std::string>{"PATH=/usr/bin:/bin", "CONTAINER=box"};
    const Set container = box.box.unshare(Kind::uts);
    container.run(true, [] {
      if (::sethostname("boxed", 5) != 0) throw std::system_error(errno, std::generic_category(), "sethostname");
    });
    const Sleeper init(container, o);

    const Target t = Target::of_pid(init.pid());
    CHECK(t.pid() == init.pid());
    CHECK(t.set().identity(Kind::uts) == test::identity_at(Kind::uts, init.proc("ns/uts")));
    CHECK(file_id(t.root().fd()) == file_id(init.proc("root")));
    CHECK(file_id(t.cwd().fd()) == file_id(init.proc("cwd")));
    const Credentials c = t.credentials();
    CHECK(c.uid == 1000);
    CHECK(c.gid == 1001);
    CHECK(c.groups == std::vector<gid_t>{5, 6});
    CHECK(t.capabilities().ambient == raw);
    // sh adds PWD before it execs sleep; what we gave is there as given.
    const std::vector<std::string> env = t.environment();
    for (const char* entry : {"PATH=/usr/bin:/bin", "CONTAINER=box"}) {
      CHECK(std::find(env.begin(), env.end(), entry) != env.end());
    }

    // exec: same namespaces, root, cwd, ids, capabilities and environment.
    Child c2 = [&] {
      SpawnOptions e = t.exec_options();
      e.out = Stdio::pipe;
      return gonso::spawn(t.set(), {"sh", "-c", "hostname; pwd; id -u; id -G; echo $CONTAINER; cat marker"}, e);
    }();
    CHECK(c2.read_stdout() == "boxed\n/work\n1000\n1001 5 6\nbox\nin the box\n");
    CHECK(c2.wait().success());
    {
      // exec() alone: the options runc exec takes.
      CHECK(t.exec({"sh", "-c", "test \"$(id -u) $(hostname) $(pwd) $CONTAINER\" = '1000 boxed /work box'"})
                .wait()
                .success());
      const Sleeper ex(t.set(), t.exec_options());
      const pid_t p = ex.pid();
      CHECK(test::status_field(p, "Uid") == "1000\t1000\t1000\t1000");
      CHECK(hex(test::status_field(p, "CapAmb")) == raw);
      CHECK(test::identity_at(Kind::mnt, fmt::format("/proc/{}/ns/mnt", p)) ==
            test::identity_at(Kind::mnt, init.proc("ns/mnt")));
      CHECK(file_id(fmt::format("/proc/{}/root", p)) == file_id(init.proc("root")));
    }
    // The caller never moved.
    CHECK(test::identity_at(Kind::uts, "/proc/thread-self/ns/uts") != t.set().identity(Kind::uts));
  }
  base.check();
}

TEST_CASE("rootless: the program as pid 1 with its own /proc, as uid 65534 in a user namespace",
          "[spawn][exec][privileged][rootless]") {
  test::require_privilege();
  std::string out;
  const std::exception_ptr error = test::on_nobody_thread([&] {
    const Set user = Set::current().unshare(Kind::user);
    SpawnOptions o;
    o.new_pid_namespace = true;
    o.mount_proc = true;
    o.out = Stdio::pipe;
    Child c = gonso::spawn(user, {"sh", "-c", "echo $$; id -u; ls /proc | grep -c '^[0-9]'"}, o);
    out = c.read_stdout();
    if (!c.wait().success()) throw std::runtime_error("the program failed");
  });
  if (error) std::rethrow_exception(error);
  // sh is 1 and its ls and grep are the only other processes it sees.
  CHECK(out == "1\n0\n3\n");
}

TEST_CASE("spawn(): bad container options are refused before anything starts", "[spawn][exec][bad-input]") {
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set own = Set::current(Kind::uts);
    const std::vector<std::string> argv{"true"};
    const auto invalid = [&](const SpawnOptions& o, const std::string& part) {
      INFO(part);
      try {
        (void)gonso::spawn(own, argv, o);
        FAIL("spawn did not refuse: " << part);
      } catch (const std::invalid_argument& e) {
        CHECK_THAT(e.what(), Catch::Contains(part));
      }
    };
    SpawnOptions o;
    o.cwd = "/";
    o.cwd_dir = Dir::open("/");
    invalid(o, "cwd and cwd_dir");
    o = {};
    o.rlimits = {{RLIMIT_NLIMITS, 1, 1}};
    invalid(o, "is no resource");
    o.rlimits = {{RLIMIT_NOFILE, 10, 5}};
    invalid(o, "soft 10 above hard 5");
    o.rlimits = {{RLIMIT_NOFILE, 5, 10}, {RLIMIT_NOFILE, 5, 10}};
    invalid(o, "given twice");
    o = {};
    o.umask = 01777;
    invalid(o, "beyond 0777");
    o = {};
    o.fds = {{1, 7}, {2, 7}};
    invalid(o, "two fds are to become fd 7");
    o.fds = {{1, -1}};
    invalid(o, "not an fd number");
    o.fds = {{1, 1 << 30}};
    invalid(o, "beyond the fd limit");
    {
      // Just below the limit: no room for the child's own copies above it.
      rlimit nofile{};
      REQUIRE(::getrlimit(RLIMIT_NOFILE, &nofile) == 0);
      REQUIRE(nofile.rlim_cur < (rlim_t{1} << 30));
      o.fds = {{1, static_cast<int>(nofile.rlim_cur) - 2}};
      invalid(o, "leaves no room above it");
    }
    o.fds = {{2, 1}};
    o.out = Stdio::pipe;
    invalid(o, "clashes with a standard stream");
    o = {};
    o.err = Stdio::to_stdout;
    o.fds = {{1, 2}};
    invalid(o, "fd 2 clashes with a standard stream");
    o = {};
    o.out = Stdio::to_stdout;
    invalid(o, "standard error only");
    o = {};
    o.controlling_terminal = 9;
    invalid(o, "none of the program's fds");
    o = {};
    o.capabilities = Capabilities{0, 0, 0, std::nullopt, 0};
    o.capabilities->permitted = std::uint64_t{1} << 63;
    invalid(o, "beyond this kernel's last capability");
    o.capabilities = Capabilities{1, 0, 0, std::nullopt, 0};
    invalid(o, "effective capabilities must lie within permitted");
    o.capabilities = Capabilities{0, 1, 0, std::nullopt, 1};
    invalid(o, "ambient capabilities must lie within permitted and inheritable");
    o = {};
    o.user = Credentials{static_cast<uid_t>(-1), 0, std::nullopt};
    invalid(o, "no id");
    o = {};
    o.root = Dir();
    invalid(o, "an empty Dir");
    o = {};
    o.cgroup = Dir::open(std::filesystem::temp_directory_path());
    invalid(o, "not a cgroup v2 directory");
    CHECK_THROWS_AS(gonso::capability_mask({64}), std::invalid_argument);
    {
      // A closed fd: EBADF, before starting.
      int closed = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      ::close(closed);
      o = {};
      o.fds = {{closed, 5}};
      const std::system_error e = test::spawn_error(own, argv, o);
      CHECK(e.code() == std::errc::bad_file_descriptor);
    }
    CHECK_THROWS_AS(Target::of_pid(0), std::invalid_argument);
    CHECK_THROWS_AS(Dir::open("/no/such/dir"), std::system_error);
  }
  base.check();
}

TEST_CASE("spawn(): an id the program's user namespace does not map fails in the child, naming it",
          "[spawn][exec][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    // A user namespace that maps only root.
    const Set user = Set::current().unshare(Kind::user);
    SpawnOptions o;
    o.user = Credentials{1000, 0, std::nullopt};
    const std::system_error e = test::spawn_error(user, {"true"}, o);
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("cannot set uid 1000"));
  }
  base.check(test::Settle{.children = true});
}

TEST_CASE("spawn(): pid 1 of a new pid namespace cannot also join a Set's pid namespace", "[spawn][exec][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  {
    const Set pid = Set::current().unshare(Kind::pid);
    const std::vector<pid_t> before = test::processes_in(pid.identity(Kind::pid));
    SpawnOptions o;
    o.new_pid_namespace = true;
    const std::system_error e = test::spawn_error(pid, {"true"}, o);
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("leave Kind::pid out of the Set"));
    // Nothing started in the namespace.
    CHECK(test::processes_in(pid.identity(Kind::pid)) == before);
    // Without the pid kind the same Set works.
    CHECK(output_of(pid.dup(pid.kinds() - Kind::pid), {"sh", "-c", "echo $$"}, o) == "1");
  }
  base.check();
}

TEST_CASE("spawn(): root with mount_proc mounts the fresh /proc under the new root", "[spawn][exec][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    const ChrootBox box;
    SpawnOptions o;
    o.root = box.root;
    o.new_pid_namespace = true;
    o.mount_proc = true;
    CHECK(output_of(box.box, {"/bin/sh", "-c", "echo $$; cat /proc/1/comm; cat /work/marker"}, o) ==
          "1\nsh\nin the box");
  }
  base.check();
}

TEST_CASE("spawn(): stderr merged into stdout follows stdout's mapped fd", "[spawn][exec]") {
  const test::Baseline base(test::Watch::fds);
  {
    auto p = gonso::detail::make_pipe();
    SpawnOptions o;
    o.fds = {{p.write.get(), 1}};
    o.err = Stdio::to_stdout;
    Child c = gonso::spawn(Set::current(Kind::uts), {"sh", "-c", "echo out; echo err >&2"}, o);
    p.write.reset();
    CHECK(gonso::detail::read_to_end(p.read.get()) == "out\nerr\n");
    CHECK(c.wait().success());
  }
  base.check();
}

TEST_CASE("spawn(): changing the program's ids leaves the caller dumpable", "[spawn][exec][privileged]") {
  test::require_privilege();
  // Whatever an earlier test left (a thread that changed its ids makes the
  // whole process undumpable), start dumpable, and leave as found.
  const int found = ::prctl(PR_GET_DUMPABLE);
  REQUIRE(::prctl(PR_SET_DUMPABLE, 1) == 0);
  SpawnOptions o;
  o.user = Credentials{1000, 1000, std::vector<gid_t>{}};
  CHECK(output_of(Set::current(Kind::uts), {"id", "-u"}, o) == "1000");
  // The ids changed in a process of its own memory: ours stayed dumpable,
  // so our /proc files are still ours and a debugger may still attach.
  CHECK(::prctl(PR_GET_DUMPABLE) == 1);
  CHECK(test::status_field(::getpid(), "Uid") == "0\t0\t0\t0");
  ::prctl(PR_SET_DUMPABLE, found);
}

TEST_CASE("Target: groups its user namespace does not map are left out", "[spawn][exec][privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds);
  {
    // A process in a user namespace of its own that holds groups 0 and 5,
    // mapped root alone by us (with CAP_SETGID: setgroups stays allowed).
    Child target =
        gonso::spawn(Set::current(Kind::uts), {"setpriv", "--groups", "0,5", "unshare", "--user", "sleep", "60"});
    const std::string proc = fmt::format("/proc/{}/", target.pid());
    REQUIRE(test::eventually([&] {
      return test::file_text(proc + "comm") == "sleep\n" &&
             test::identity_at(Kind::user, proc + "ns/user") != test::identity_at(Kind::user, "/proc/self/ns/user");
    }));
    std::ofstream(proc + "uid_map") << "0 0 1\n";
    std::ofstream(proc + "gid_map") << "0 0 1\n";
    REQUIRE(test::file_text(proc + "setgroups") == "allow\n");
    REQUIRE(trimmed(test::status_field(target.pid(), "Groups")) == "0 5");  // as we, outside, see them
    const Target t = Target::of_pid(target.pid());
    const Credentials c = t.credentials();
    CHECK(c.uid == 0);
    CHECK(c.groups == std::vector<gid_t>{0});
    CHECK(t.exec({"true"}).wait().success());
  }
  base.check();
}

// Security: what gonso must never give away. No fd of gonso reaches a spawned
// program; names of network namespaces stay in /run/netns, even through
// symlinks planted there; a caller without privilege reaches through gonso
// nothing it could not reach by hand; the init of a pid namespace cannot be
// signalled into leaving orphans unreaped.
#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <sys/statfs.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <thread>

#include <gonso/child.hpp>
#include <gonso/executor.hpp>
#include <gonso/netns.hpp>
#include <gonso/persist.hpp>
#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>
#include <gonso/workers.hpp>

namespace {

constexpr uid_t nobody = 65534;

/// The fds of a process: number to what its link names.
std::map<int, std::string> fds_of(const std::string& proc_dir) {
  std::map<int, std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(proc_dir + "/fd", ec)) {
    std::error_code link_ec;
    const auto target = std::filesystem::read_symlink(e.path(), link_ec);
    out[std::stoi(e.path().filename().string())] = link_ec ? std::string("?") : target.string();
  }
  return out;
}

std::string describe(const std::map<int, std::string>& fds) {
  std::string out;
  for (const auto& [fd, target] : fds) out += fmt::format("{} -> {}; ", fd, target);
  return out;
}

/// What an fd of this process names, as /proc/self/fd shows it.
std::string link_of_fd(int fd) { return std::filesystem::read_symlink(fmt::format("/proc/self/fd/{}", fd)).string(); }

/// How many fds of this process inheritable_fds() has looked at.
std::atomic<std::size_t> fds_examined{0};

/// Open fds of this process that are not close-on-exec, but for `allowed`.
std::vector<std::string> inheritable_fds(const std::set<int>& allowed) {
  std::vector<std::string> out;
  for (const auto& [fd, target] : fds_of("/proc/self")) {
    if (allowed.count(fd) != 0) continue;
    ++fds_examined;
    const int flags = ::fcntl(fd, F_GETFD);
    if (flags >= 0 && (flags & FD_CLOEXEC) == 0) out.push_back(fmt::format("fd {} -> {}", fd, target));
  }
  return out;
}

/// The fds open now that are not close-on-exec: the test's own (stdio, what
/// ctest handed down), never gonso's.
std::set<int> inheritable_now() {
  std::set<int> out;
  for (const auto& entry : fds_of("/proc/self")) {
    const int flags = ::fcntl(entry.first, F_GETFD);
    if (flags >= 0 && (flags & FD_CLOEXEC) == 0) out.insert(entry.first);
  }
  return out;
}

/// Zombies in pid namespace `ns`, or children of `init` (it reaps them).
std::vector<pid_t> zombies_in(const gonso::Identity& ns, pid_t init) {
  std::vector<pid_t> out;
  std::set<pid_t> candidates;
  for (pid_t pid : test::processes_in(ns)) candidates.insert(pid);
  std::ifstream in(fmt::format("/proc/{0}/task/{0}/children", init));
  for (pid_t pid = 0; in >> pid;) candidates.insert(pid);
  for (pid_t pid : candidates) {
    if (test::status_field(pid, "State").rfind('Z', 0) == 0) out.push_back(pid);
  }
  return out;
}

/// Runs `fn` on a fresh thread that has become uid and gid 65534 with the raw
/// per-thread system calls (glibc's wrappers would change every thread), so
/// that what it starts inherits those credentials. Returns what `fn` threw.
template <typename Fn>
std::exception_ptr on_nobody_thread(Fn&& fn) {
  const int dumpable = ::prctl(PR_GET_DUMPABLE);
  std::exception_ptr error = test::on_fresh_thread([&] {
    if (::syscall(SYS_setgroups, 0, nullptr) != 0 || ::syscall(SYS_setresgid, nobody, nobody, nobody) != 0 ||
        ::syscall(SYS_setresuid, nobody, nobody, nobody) != 0) {
      throw std::system_error(errno, std::generic_category(), "cannot become uid 65534 on this thread");
    }
    fn();
  });
  // Changing a uid made the whole process not dumpable; make it as it was.
  ::prctl(PR_SET_DUMPABLE, dumpable);
  return error;
}

/// errno of a by-hand system call returning -1 on failure, 0 on success.
int errno_of(int result) { return result == 0 ? 0 : errno; }

/// The errno that `fn` failed with through gonso: 0 when it did not throw,
/// -1 when it threw something else than std::system_error.
template <typename Fn>
std::pair<int, std::string> gonso_errno(Fn&& fn) {
  try {
    fn();
  } catch (const std::system_error& e) {
    return {e.code().value(), e.what()};
  } catch (const std::exception& e) {
    return {-1, e.what()};
  }
  return {0, "succeeded"};
}

struct Attempt {
  std::string what;
  int by_hand = 0;
  int errno_value = 0;
  std::string message;
};

}  // namespace

// ---------------------------------------------------------------------------
// 3. An unprivileged caller reaches nothing through gonso.

namespace {

/// Everything gonso offers that needs privilege over `target`, tried on the
/// calling thread, each next to the same thing done by hand on this thread.
std::vector<Attempt> try_everything(const gonso::Set& target, pid_t root_process, const std::filesystem::path& dir,
                                    const std::string& name, std::atomic<bool>& ran) {
  const int net_fd = target.fd(gonso::Kind::net);
  const int setns_by_hand = errno_of(::setns(net_fd, CLONE_NEWNET));
  const int unshare_by_hand = errno_of(::unshare(CLONE_NEWNET));
  // Naming a namespace starts with making /run/netns a shared mount; by hand
  // on a folder that exists whatever state /run/netns is in (absent, a plain
  // folder, a mount already), so that the errno compared does not depend on it.
  const int shared_by_hand = errno_of(::mount("", dir.c_str(), "none", MS_SHARED | MS_REC, nullptr));
  int bind_by_hand = 0;
  {
    const auto file = dir / "by-hand";
    const int fd = ::open(file.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    bind_by_hand = fd < 0 ? errno
                          : errno_of(::mount(fmt::format("/proc/self/fd/{}", net_fd).c_str(), file.c_str(), nullptr,
                                             MS_BIND, nullptr));
    if (fd >= 0) ::close(fd);
    if (bind_by_hand == 0) ::umount2(file.c_str(), MNT_DETACH);
    ::unlink(file.c_str());
  }
  const std::string foreign_net = fmt::format("/proc/{}/ns/net", root_process);
  const int fd = ::open(foreign_net.c_str(), O_RDONLY | O_CLOEXEC);
  const int open_by_hand = fd < 0 ? errno : 0;
  if (fd >= 0) ::close(fd);

  std::vector<Attempt> out;
  const auto attempt = [&](const std::string& what, int by_hand, auto&& fn) {
    auto [err, message] = gonso_errno(fn);
    out.push_back({what, by_hand, err, std::move(message)});
  };
  attempt("run(true)", setns_by_hand, [&] { target.run(true, [&] { ran = true; }); });
  attempt("run(false)", setns_by_hand, [&] { target.run(false, [&] { ran = true; }); });
  attempt("run_in_process", setns_by_hand, [&] { target.run_in_process([] { return 1; }); });
  attempt("spawn", setns_by_hand, [&] { gonso::spawn(target, {"/bin/true"}).wait(); });
  attempt("unshare from the target", setns_by_hand, [&] { (void)target.unshare(gonso::Kind::net); });
  attempt("unshare from here", unshare_by_hand,
          [&] { (void)gonso::Set::current(gonso::Kind::net).unshare(gonso::Kind::net); });
  attempt("Executor", setns_by_hand, [&] {
    gonso::Executor ex(target);
    ex.run([&] { ran = true; });
  });
  attempt("Pool", unshare_by_hand, [&] {
    gonso::Pool pool(gonso::Set::current(gonso::Kind::net), gonso::Kind::net, {.size = 1});
    (void)pool.get();
  });
  attempt("persist", bind_by_hand, [&] { gonso::persist(target, gonso::Kind::net, dir / "net"); });
  attempt("netns::create", shared_by_hand, [&] { (void)gonso::netns::create(name); });
  attempt("netns::add", shared_by_hand, [&] { gonso::netns::add(target, name); });
  attempt("from_pid", open_by_hand, [&] { (void)gonso::Set::from_pid(root_process, gonso::Kind::net); });
  return out;
}

}  // namespace

TEST_CASE("security: an unprivileged caller cannot reach namespaces through gonso", "[security][privileged]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::Snapshot mine = test::snapshot();
    const gonso::Set target = gonso::Set::current().unshare(gonso::Kind::net | gonso::Kind::uts);
    const test::ForeignNamespaces root_process(CLONE_NEWNET);
    const test::TempDir dir;
    std::filesystem::permissions(dir.path(), std::filesystem::perms::all);  // uid 65534 may create files there
    const std::string name = test::own_prefix() + "unprivileged";
    gonso::retire_idle_workers();
    const std::size_t fds = test::count_fds();
    const std::size_t threads = test::count_threads();
    const std::set<pid_t> children = test::children();
    const auto dir_entries = [&] {
      std::set<std::string> names;
      for (const auto& e : std::filesystem::directory_iterator(dir.path())) names.insert(e.path().string());
      return names;
    };
    const std::set<std::string> before_dir = dir_entries();

    using Runner = std::function<std::exception_ptr(std::function<void()>)>;
    const std::vector<std::pair<std::string, Runner>> callers = {
        {"a thread without CAP_SYS_ADMIN", [](std::function<void()> fn) { return test::on_unprivileged_thread(fn); }},
        {"a thread of uid 65534", [](std::function<void()> fn) { return on_nobody_thread(fn); }},
    };
    for (const auto& [who, on] : callers) {
      INFO("caller: " << who);
      // A privileged worker idle in the pool, which the caller must not get.
      target.run(true, [] {});
      REQUIRE(gonso::idle_workers() >= 1);
      std::atomic<bool> ran{false};
      std::vector<Attempt> attempts;
      const std::exception_ptr failure =
          on([&] { attempts = try_everything(target, root_process.pid(), dir.path(), name, ran); });
      if (failure) std::rethrow_exception(failure);
      CHECK_FALSE(ran.load());
      REQUIRE(attempts.size() == 12);
      std::string summary;
      for (const Attempt& a : attempts) summary += fmt::format("{} {}/{}; ", a.what, a.by_hand, a.errno_value);
      WARN(who << ": errno by hand/through gonso: " << summary);
      for (const Attempt& a : attempts) {
        INFO(a.what << ": by hand errno " << a.by_hand << ", through gonso errno " << a.errno_value << " (" << a.message
                    << ")");
        CHECK(a.errno_value == a.by_hand);
        if (a.what != "from_pid") {
          // Everything but opening another process's file needs CAP_SYS_ADMIN.
          CHECK((a.by_hand == EPERM || a.by_hand == EACCES));
        }
      }
      // The privileged worker is still idle, untouched.
      CHECK(gonso::idle_workers() >= 1);
      // And a worker the unprivileged caller may have left idle is not handed
      // to this thread: a run here lands in the target as before.
      const gonso::Identity expected =
          test::identity_at(gonso::Kind::net, fmt::format("/proc/self/fd/{}", target.fd(gonso::Kind::net)));
      CHECK(target.run(true, [] { return test::thread_ns(gonso::Kind::net); }) == expected);
      CHECK(test::threads_outside(mine).empty());
      CHECK(test::snapshot() == mine);
      CHECK(test::children() == children);
      gonso::retire_idle_workers();
      CHECK(test::count_fds() == fds);
      CHECK(test::count_threads() == threads);
      CHECK(dir_entries() == before_dir);
    }
  });
}

// ---------------------------------------------------------------------------
// 1. No fd of gonso's reaches a spawned program, and every one is close-on-exec.

namespace {

/// Spawns `cat` into `set` with stdin and stdout pipes and stderr inherited,
/// a given environment and working directory; once a line has gone through
/// it (so the program runs: its exec is over), checks from outside that it
/// holds exactly fds 0, 1 and 2, each where it was asked, and that its
/// environment and cwd are those asked for. Returns how many fds of the
/// program were checked.
std::size_t check_spawned_fds(const gonso::Set& set, const std::filesystem::path& cwd) {
  gonso::SpawnOptions options;
  options.in = gonso::Stdio::pipe;
  options.out = gonso::Stdio::pipe;
  options.env = std::vector<std::string>{"GONSO_SECURITY=1", "PATH=/usr/bin:/bin"};
  options.cwd = cwd;
  gonso::Child child = gonso::spawn(set, {"cat"}, options);
  // spawn() returns when the exec closed its report pipe, and the kernel may
  // still be closing the other close-on-exec fds then (before the program
  // runs any code): look once the program has answered.
  REQUIRE(::write(child.stdin_fd(), "x\n", 2) == 2);
  std::string echo;
  for (char c = 0; echo.size() < 2 && ::read(child.stdout_fd(), &c, 1) == 1;) echo += c;
  REQUIRE(echo == "x\n");
  const std::string proc = fmt::format("/proc/{}", child.pid());
  const std::map<int, std::string> fds = fds_of(proc);
  INFO("spawned into " << fmt::format("{}", set) << ", fds " << describe(fds));
  CHECK(fds.size() == 3);
  CHECK(fds.count(0) == 1);
  CHECK(fds.count(1) == 1);
  CHECK(fds.count(2) == 1);
  if (fds.count(0) != 0) CHECK(fds.at(0) == link_of_fd(child.stdin_fd()));  // the same pipe
  if (fds.count(1) != 0) CHECK(fds.at(1) == link_of_fd(child.stdout_fd()));
  if (fds.count(2) != 0) CHECK(fds.at(2) == link_of_fd(STDERR_FILENO));
  // And the program is in the Set's namespaces, as the kernel shows them.
  for (gonso::Kind kind : set.kinds()) {
    INFO("kind " << gonso::name(kind));
    CHECK(test::identity_at(kind, proc + "/ns/" + std::string(gonso::name(kind))) == set.identity(kind));
  }
  const std::string env = test::file_text(proc + "/environ");
  CHECK(env == std::string("GONSO_SECURITY=1\0PATH=/usr/bin:/bin\0", 36));
  struct stat there {
  }, here{};
  REQUIRE(::stat((proc + "/cwd").c_str(), &there) == 0);
  REQUIRE(::stat(cwd.c_str(), &here) == 0);
  CHECK(there.st_dev == here.st_dev);
  CHECK(there.st_ino == here.st_ino);
  child.kill();
  CHECK(child.wait().signal() == SIGKILL);
  return fds.size();
}

}  // namespace

TEST_CASE("security: every fd gonso holds is close-on-exec, and none reaches a spawned program",
          "[security][privileged][process]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    gonso::retire_idle_workers();
    fds_examined = 0;
    const std::set<int> own = inheritable_now();  // the test's: stdio and what ctest handed down
    std::size_t checked_fds = 0;
    std::size_t objects = 0;
    // Each object made, then the fds it brought checked.
    const auto made = [&](const char* what) {
      INFO("after making " << what);
      CHECK(inheritable_fds(own).empty());
      ++objects;
      checked_fds = std::max(checked_fds, test::count_fds());
    };
    const test::TempDir cwd;
    const test::PrivateTmpfs persisted;
    std::optional<gonso::Set> all;  // fresh namespaces of every kind a thread may be in
    all.emplace(gonso::Set::current().unshare(gonso::Kind::net | gonso::Kind::uts | gonso::Kind::ipc |
                                              gonso::Kind::cgroup | gonso::Kind::mnt));
    made("a Set of cgroup, ipc, mnt, net, uts");
    const gonso::Set user = gonso::Set::current().unshare(gonso::Kind::user | gonso::Kind::net);
    made("a Set of a user namespace");
    const gonso::Set pid = gonso::Set::current().unshare(gonso::Kind::pid);
    made("a Set of a pid namespace, with its init");
    const gonso::Set time = gonso::Set::current().unshare(gonso::Kind::time);
    made("a Set of a time namespace");
    gonso::Kinds kinds;
    for (gonso::Kind kind : gonso::all_kinds) kinds |= kind;
    const gonso::Set every = gonso::Set::current(kinds).unshare(kinds);
    made("a Set of every kind");
    all->run(true, [] {});
    (void)every.run_in_process([] { return 0; });
    made("an idle worker and its anchor");
    gonso::Executor executor(all->dup(gonso::Kind::net | gonso::Kind::uts));
    executor.run([] {});
    made("an Executor");
    gonso::Pool pool(gonso::Set::current(gonso::Kind::net), gonso::Kind::net, {.size = 2});
    REQUIRE(pool.wait_ready(std::chrono::seconds(20)));
    made("a Pool");
    gonso::persist(all->dup(gonso::Kind::net | gonso::Kind::uts), persisted.path() / "box");
    made("persisted namespaces");
    const gonso::Set reopened = gonso::Set::from_dir(persisted.path() / "box");
    made("a Set opened from persisted files");

    // Other threads make and drop fds all the while: a spawn must not catch
    // one in flight.
    std::atomic<int> rounds{0};
    std::mutex errors_lock;
    std::vector<std::string> errors;
    // Stopped and joined however the test leaves this scope (a REQUIRE throws).
    std::vector<std::jthread> busy;
    busy.reserve(2);
    for (int i = 0; i < 2; ++i) {
      busy.emplace_back([&, i](const std::stop_token& stop) {
        try {
          while (!stop.stop_requested()) {
            if (i == 0) {
              reopened.run(true, [] {});
              (void)gonso::Set::current(gonso::Kind::uts).unshare(gonso::Kind::uts);
            } else {
              gonso::SpawnOptions quiet;
              quiet.out = gonso::Stdio::pipe;
              (void)gonso::spawn(reopened, {"/bin/true"}, quiet).wait();
            }
            ++rounds;
          }
        } catch (const std::exception& e) {
          const std::lock_guard lock(errors_lock);
          errors.emplace_back(e.what());
        }
      });
    }
    std::size_t program_fds = 0;
    std::size_t spawns = 0;
    std::size_t scans = 0;
    for (const gonso::Set* set :
         std::initializer_list<const gonso::Set*>{&*all, &user, &pid, &time, &every, &reopened}) {
      for (int i = 0; i < 3; ++i) {
        // Every kind but mnt leaves the same tree: the program starts where asked.
        const bool own_tree = set->kinds().contains(gonso::Kind::mnt);
        program_fds += check_spawned_fds(*set, own_tree ? std::filesystem::path("/") : cwd.path());
        ++spawns;
        CHECK(inheritable_fds(own).empty());
        ++scans;
      }
    }
    busy.clear();
    CHECK(errors.empty());
    CHECK(rounds.load() > 0);
    made("Sets, workers and children of the busy threads");
    // The init of the pid namespace holds its lifeline alone (pid_init.hpp).
    const pid_t init = test::init_of(pid.identity(gonso::Kind::pid));
    REQUIRE(init > 0);
    const std::map<int, std::string> init_fds = fds_of(fmt::format("/proc/{}", init));
    INFO("the init's fds: " << describe(init_fds));
    CHECK(init_fds.size() == 1);
    CHECK(init_fds.count(3) == 1);
    if (init_fds.count(3) != 0) CHECK(init_fds.at(3).rfind("pipe:[", 0) == 0);
    all.reset();
    gonso::unpersist_dir(persisted.path() / "box");
    WARN("checked " << objects << " objects, " << fds_examined.load() << " fds of this process in all (up to "
                    << checked_fds << " open at once), " << spawns << " spawned programs (" << program_fds
                    << " of their fds), " << scans << " scans during " << rounds.load() << " rounds of busy threads");
  });
}

// ---------------------------------------------------------------------------
// 2. Names of network namespaces stay in /run/netns.

TEST_CASE("security: network namespace names cannot escape /run/netns", "[security]") {
  test::leaves_machine_as_found([] {
    const gonso::Set here = gonso::Set::current(gonso::Kind::net);
    std::size_t refused = 0;
    const std::vector<std::string> names = {"..",
                                            ".",
                                            "",
                                            "../etc",
                                            "a/b",
                                            "/etc/passwd",
                                            "/run/netns/x",
                                            "x/..",
                                            std::string("a\0b", 3),
                                            std::string(256, 'n')};
    for (const std::string& bad : names) {
      INFO("name " << bad);
      CHECK_THROWS_AS(gonso::netns::path(bad), std::invalid_argument);
      CHECK_THROWS_AS(gonso::netns::check_name(bad), std::invalid_argument);
      CHECK_THROWS_AS((void)gonso::netns::create(bad), std::invalid_argument);
      CHECK_THROWS_AS(gonso::netns::add(here, bad), std::invalid_argument);
      CHECK_THROWS_AS((void)gonso::netns::open(bad), std::invalid_argument);
      CHECK_THROWS_AS(gonso::netns::remove(bad), std::invalid_argument);
      refused += 6;
    }
    CHECK(refused == 60);
  });
}

namespace {

/// What gonso and `ip netns` did with symlinks planted in /run/netns, seen
/// in a mount namespace of a child's own with a tmpfs on /run.
struct SymlinkFindings {
  int add_over_file_link = 0;            ///< errno of add() on a link to a file elsewhere
  int create_over_file_link = 0;         ///< errno of create() on it
  int remove_file_link = 0;              ///< errno of remove() on it
  bool file_untouched = false;           ///< the file: not a mount, same content, still linked to
  int add_over_dir_link = 0;             ///< errno of add() on a link to a folder elsewhere
  int remove_dir_link = 0;               ///< errno of remove() on it
  bool dir_untouched = false;            ///< the folder: not a mount, still empty
  int remove_ns_link = 0;                ///< errno of remove() on a link to a persisted namespace elsewhere
  int unpersist_ns_link = 0;             ///< errno of unpersist() on that link
  bool ns_untouched = false;             ///< that namespace file: still a mount of nsfs
  bool gonso_followed_dir_link = false;  ///< /run/netns a link: gonso's name landed in its target
  bool ip_followed_dir_link = false;     ///< same with `ip netns add`
  bool gonso_mounted_target = false;     ///< the target of the /run/netns link became a mount
  bool ip_mounted_target = false;
  int add_through_dir_link = 0;     ///< errno of add() with /run/netns a link
  int remove_through_dir_link = 0;  ///< errno of remove() of a name persisted in the link's target
};

bool is_nsfs(const char* path) {
  struct statfs fs {};
  return ::statfs(path, &fs) == 0 && fs.f_type == static_cast<decltype(fs.f_type)>(0x6e736673);
}

SymlinkFindings plant_symlinks() {
  namespace fs = std::filesystem;
  SymlinkFindings f;
  if (::mount("gonso-test", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m") != 0) {
    throw std::system_error(errno, std::generic_category(), "mount tmpfs on /run");
  }
  fs::create_directories("/run/netns");
  fs::create_directories("/run/elsewhere/dir");
  std::ofstream("/run/elsewhere/file") << "precious";
  const gonso::Set net = gonso::Set::current(gonso::Kind::net).unshare(gonso::Kind::net);

  fs::create_symlink("/run/elsewhere/file", "/run/netns/file");
  f.add_over_file_link = gonso_errno([&] { gonso::netns::add(net, "file"); }).first;
  f.create_over_file_link = gonso_errno([&] { (void)gonso::netns::create("file"); }).first;
  f.remove_file_link = gonso_errno([&] { gonso::netns::remove("file"); }).first;
  f.file_untouched = !test::is_mount_point_here("/run/elsewhere/file") && !is_nsfs("/run/elsewhere/file") &&
                     test::file_text("/run/elsewhere/file") == "precious" && fs::is_symlink("/run/netns/file");

  fs::create_symlink("/run/elsewhere/dir", "/run/netns/dir");
  f.add_over_dir_link = gonso_errno([&] { gonso::netns::add(net, "dir"); }).first;
  f.remove_dir_link = gonso_errno([&] { gonso::netns::remove("dir"); }).first;
  f.dir_untouched = !test::is_mount_point_here("/run/elsewhere/dir") && fs::is_empty("/run/elsewhere/dir") &&
                    fs::is_symlink("/run/netns/dir");

  gonso::persist(net, gonso::Kind::net, "/run/elsewhere/ns");
  fs::create_symlink("/run/elsewhere/ns", "/run/netns/ns");
  f.remove_ns_link = gonso_errno([&] { gonso::netns::remove("ns"); }).first;
  f.unpersist_ns_link = gonso_errno([&] { gonso::unpersist("/run/netns/ns"); }).first;
  f.ns_untouched =
      is_nsfs("/run/elsewhere/ns") && test::is_mount_point_here("/run/elsewhere/ns") && fs::is_symlink("/run/netns/ns");

  // /run/netns itself a symlink to a folder elsewhere: gonso, then ip.
  for (const bool ip : {false, true}) {
    const std::string target = ip ? "/run/ip-target" : "/run/gonso-target";
    ::umount2("/run/netns", MNT_DETACH | UMOUNT_NOFOLLOW);  // gonso made it a mount of its own
    fs::remove_all("/run/netns");
    fs::create_directories(target);
    fs::create_symlink(target, "/run/netns");
    if (ip) {
      if (!test::run_tool("ip netns add linked 2>&1").ok()) throw std::runtime_error("ip netns add failed");
    } else {
      f.add_through_dir_link = gonso_errno([&] { gonso::netns::add(net, "linked"); }).first;
    }
    (ip ? f.ip_followed_dir_link : f.gonso_followed_dir_link) = is_nsfs((target + "/linked").c_str());
    (ip ? f.ip_mounted_target : f.gonso_mounted_target) = test::is_mount_point_here(target);
  }
  // What ip persisted in the link's target is not removed through the link.
  f.remove_through_dir_link = gonso_errno([&] { gonso::netns::remove("linked"); }).first;
  f.ns_untouched = f.ns_untouched && is_nsfs("/run/ip-target/linked");
  return f;
}

}  // namespace

TEST_CASE("security: symlinks planted in /run/netns lead gonso nowhere else", "[security][privileged][process]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    // Everything happens in a mount namespace of a child's own, with a tmpfs
    // on /run: the machine's /run/netns is never touched.
    const gonso::Set box = gonso::Set::current().unshare(gonso::Kind::mnt);
    const SymlinkFindings f = box.run_in_process([] { return plant_symlinks(); });
    // O_CREAT|O_EXCL never follows a symlink: the name is taken.
    CHECK(f.add_over_file_link == EEXIST);
    CHECK(f.create_over_file_link == EEXIST);
    CHECK(f.add_over_dir_link == EEXIST);
    // What the link leads to is not a persisted namespace: refused.
    CHECK(f.remove_file_link == EINVAL);
    CHECK(f.remove_dir_link == EINVAL);
    CHECK(f.file_untouched);
    CHECK(f.dir_untouched);
    // A link to a real persisted namespace: opened with O_NOFOLLOW, it is the
    // link itself, on tmpfs, which is no persisted namespace: EINVAL, and the
    // namespace elsewhere stays bound.
    CHECK(f.remove_ns_link == EINVAL);
    CHECK(f.unpersist_ns_link == EINVAL);
    CHECK(f.ns_untouched);
    // /run/netns itself a link (only root can make one in /run): iproute2's
    // `ip netns add` follows it; gonso owns that path and follows no
    // component of it, so it refuses, and the link's target gets nothing.
    CHECK(f.add_through_dir_link == ENOTDIR);
    CHECK(f.remove_through_dir_link == ENOTDIR);
    CHECK_FALSE(f.gonso_followed_dir_link);
    CHECK_FALSE(f.gonso_mounted_target);
    WARN("/run/netns a symlink: ip's name landed in its target: "
         << f.ip_followed_dir_link << "; the target made a mount by ip: " << f.ip_mounted_target);
  });
}

// ---------------------------------------------------------------------------
// 4. The init of a pid namespace made by gonso keeps reaping, whatever it is sent.

namespace {

/// In `set`'s pid namespace: a process forks a child that forks a
/// grandchild and exits, so that the grandchild is reparented to the init.
/// With `linger`, the grandchild stays (until the namespace ends); else it
/// exits at once and only the init can reap it.
void make_orphan(const gonso::Set& set, bool linger) {
  set.run_in_process([linger] {
    const pid_t child = ::fork();
    if (child < 0) throw std::system_error(errno, std::generic_category(), "fork");
    if (child == 0) {
      const pid_t grandchild = ::fork();
      if (grandchild == 0) {
        if (linger) {
          for (;;) ::pause();
        }
        ::_exit(0);
      }
      ::_exit(grandchild > 0 ? 0 : 1);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error("the child could not fork");
  });
}

/// Every signal a process may catch: all but SIGKILL and SIGSTOP.
std::vector<int> catchable_signals() {
  std::vector<int> out;
  for (int sig = 1; sig <= SIGRTMAX; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP && (sig < 32 || sig >= SIGRTMIN)) out.push_back(sig);
  }
  return out;
}

/// A pidfd on a process, to tell later whether it is gone for good (reaped),
/// whoever its parent is, without the risk of pid reuse.
class Watch {
 public:
  explicit Watch(pid_t pid) : fd_(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0U))) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), fmt::format("pidfd_open({})", pid));
  }
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;
  ~Watch() { ::close(fd_); }
  /// Signal 0 reaches a live process and a zombie; ESRCH once it is reaped.
  [[nodiscard]] bool reaped() const {
    return ::syscall(SYS_pidfd_send_signal, fd_, 0, nullptr, 0U) != 0 && errno == ESRCH;
  }

 private:
  int fd_;
};

}  // namespace

TEST_CASE("security: signals cannot make the init of a pid namespace leave orphans unreaped",
          "[security][privileged][process]") {
  test::require_privilege();
  const std::set<pid_t> children = test::children();
  std::optional<gonso::Set> set(gonso::Set::current().unshare(gonso::Kind::pid));
  const gonso::Identity ns = set->identity(gonso::Kind::pid);
  const pid_t init = test::init_of(ns);
  REQUIRE(init > 0);
  const Watch init_watch(init);
  const auto no_zombies = [&] { return zombies_in(ns, init).empty(); };
  const auto running = [&] { return test::status_field(init, "State").rfind('S', 0) == 0; };

  // Every catchable signal from outside: pending for ever, never acted on,
  // but SIGCHLD, which makes it reap.
  std::size_t sent = 0;
  for (int sig : catchable_signals()) {
    INFO("signal " << sig);
    CHECK(::kill(init, sig) == 0);
    ++sent;
  }
  make_orphan(*set, false);
  make_orphan(*set, true);
  CHECK(test::eventually(no_zombies));
  CHECK(zombies_in(ns, init).empty());
  CHECK(running());
  CHECK(set->run_in_process([] { return ::getpid(); }) > 1);  // forks still land inside

  // Every signal from inside, SIGKILL and SIGSTOP too: pid 1 gets only
  // those it handles (SIGCHLD), so each kill(1, sig) succeeds and does nothing.
  const int delivered = set->run_in_process([] {
    int ok = 0;
    for (int sig = 1; sig <= SIGRTMAX; ++sig) {
      if ((sig < 32 || sig >= SIGRTMIN) && ::kill(1, sig) == 0) ++ok;
    }
    return ok;
  });
  CHECK(delivered == static_cast<int>(catchable_signals().size()) + 2);
  make_orphan(*set, false);
  CHECK(test::eventually(no_zombies));
  CHECK(running());

  // SIGSTOP from outside is forced on it: while stopped it reaps nothing, and
  // an orphan that exits stays a zombie; SIGCONT lets it catch up.
  REQUIRE(::kill(init, SIGSTOP) == 0);
  CHECK(test::eventually([&] { return test::status_field(init, "State").rfind('T', 0) == 0; }));
  make_orphan(*set, false);
  CHECK(test::eventually([&] { return !zombies_in(ns, init).empty(); }));
  const std::size_t stopped_zombies = zombies_in(ns, init).size();
  CHECK(stopped_zombies >= 1);
  REQUIRE(::kill(init, SIGCONT) == 0);
  CHECK(test::eventually(no_zombies));
  CHECK(running());

  // The last Set goes: the init and the lingering orphans are killed, and
  // all of them reaped, not left as zombies of this process.
  // An orphan that is to exit may not have run yet (no zombie so far, but
  // alive): wait until the init and the lingering one are all that is left.
  CHECK(test::eventually([&] { return test::processes_in(ns).size() == 2; }));
  std::vector<std::unique_ptr<Watch>> inside;
  for (pid_t pid : test::processes_in(ns)) {
    if (pid != init) inside.push_back(std::make_unique<Watch>(pid));
  }
  CHECK(inside.size() == 1);  // the lingering grandchild
  set.reset();
  CHECK(init_watch.reaped());
  for (const auto& w : inside) CHECK(w->reaped());
  CHECK(test::processes_in(ns).empty());
  CHECK(test::children() == children);
  WARN("sent " << sent << " signals from outside and " << delivered << " from inside; " << stopped_zombies
               << " zombie(s) waited while the init was stopped");
}

TEST_CASE("security: a pid namespace whose init was killed from outside fails clearly and leaves no zombie",
          "[security][privileged][process]") {
  test::require_privilege();
  const std::set<pid_t> children = test::children();
  std::optional<gonso::Set> set(gonso::Set::current().unshare(gonso::Kind::pid));
  const gonso::Identity ns = set->identity(gonso::Kind::pid);
  const pid_t init = test::init_of(ns);
  REQUIRE(init > 0);
  const Watch init_watch(init);
  make_orphan(*set, true);
  const std::vector<pid_t> before = test::processes_in(ns);
  REQUIRE(before.size() == 2);
  REQUIRE(::kill(init, SIGKILL) == 0);
  // The namespace dies with it; the init stays a zombie child of this
  // process until gonso reaps it, when the last Set goes.
  CHECK(test::eventually([&] { return test::status_field(init, "State").rfind('Z', 0) == 0; }));
  CHECK_FALSE(init_watch.reaped());
  const std::system_error in_process = test::system_error_of([&] { set->run_in_process([] { return 0; }); });
  CHECK(in_process.code() == std::errc::not_enough_memory);
  const std::system_error spawned = test::system_error_of([&] { (void)gonso::spawn(*set, {"/bin/true"}); });
  CHECK(spawned.code() == std::errc::not_enough_memory);
  WARN("after SIGKILL of the init: run_in_process: " << in_process.what() << "; spawn: " << spawned.what());
  set.reset();
  CHECK(init_watch.reaped());
  CHECK(test::children() == children);
}

// Fault injection: too few fds (RLIMIT_NOFILE) at every step of every
// operation; each fails cleanly with EMFILE or works, and leaves the process
// as it was (the one Baseline, in test::sweep).
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <gonso/executor.hpp>
#include <gonso/persist.hpp>
#include <gonso/pool.hpp>
#include <gonso/spawn.hpp>
#include <gonso/workers.hpp>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fault.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;
using test::inside;
using test::land;

// ---------------------------------------------------------------------------
// Too few fds.

TEST_CASE("fault: too few fds fail cleanly with EMFILE at every step", "[fault][privileged]") {
  test::require_privilege();
  const test::Snapshot caller = test::snapshot();
  const Set box = Set::current().unshare(Kind::net | Kind::uts);
  const Set pidset = Set::current().unshare(Kind::pid);
  const auto same_as_caller = [&](const Set& s) {
    for (Kind kind : s.kinds()) {
      if (s.identity(kind) != caller.at(kind)) return false;
    }
    return !s.kinds().empty();
  };
  std::vector<std::pair<std::string, test::SweepCounts>> report;
  const auto note = [&](const std::string& what, test::SweepCounts c) { report.emplace_back(what, c); };

  SECTION("Set::current, from_pid, from_dir; copies and dup need no fd") {
    note("current", test::sweep(
                        "Set::current()", [] { return Set::current(); }, same_as_caller));
    note("from_pid", test::sweep(
                         "Set::from_pid()", [] { return Set::from_pid(::getpid()); }, same_as_caller));
    note("from_dir", test::sweep(
                         "Set::from_dir()", [] { return Set::from_dir("/proc/self/ns"); }, same_as_caller));
    const Set all = Set::current();
    {
      // Copies and subsets share the fds they hold: they need no fd, so no
      // limit stops them.
      const std::size_t fds = test::count_fds();
      std::optional<Set> copy;
      std::optional<Set> subset;
      {
        const test::FdLimit limit(0);
        copy.emplace(all);
        subset.emplace(all.dup(gonso::default_kinds));
      }
      CHECK(same_as_caller(*copy));
      CHECK(same_as_caller(*subset));
      for (Kind kind : subset->kinds()) CHECK(subset->fd(kind) == all.fd(kind));
      CHECK(test::count_fds() == fds);
    }
  }
  SECTION("Set::unshare, thread and process paths") {
    const auto fresh = [&](Kinds kinds) {
      return [&, kinds](const Set& s) {
        for (Kind kind : kinds) {
          if (s.identity(kind) == caller.at(kind)) return false;
        }
        return s.run_in_process([&] { return inside(s); });
      };
    };
    note("unshare net", test::sweep(
                            "Set::unshare(net)", [] { return Set::current().unshare(Kind::net); }, fresh(Kind::net)));
    note("unshare pid", test::sweep(
                            "Set::unshare(pid)", [] { return Set::current().unshare(Kind::pid); }, fresh(Kind::pid)));
  }
  SECTION("run, run_in_process, spawn") {
    note("run",
         test::sweep(
             "Set::run()", [&] { return box.run(true, [&] { return inside(box); }); }, [](bool in) { return in; }));
    note("run_in_process", test::sweep(
                               "Set::run_in_process()", [&] { return box.run_in_process([&] { return inside(box); }); },
                               [](bool in) { return in; }));
    note("run_in_process pid",
         test::sweep(
             "Set::run_in_process() into a pid namespace",
             [&] { return pidset.run_in_process([&] { return inside(pidset); }); }, [](bool in) { return in; }));
    // The program inherits the limit too, and its dynamic loader needs fds:
    // only a spawn with room to spare exits 0.
    note("spawn", test::sweep(
                      "gonso::spawn()", [&] { return gonso::spawn(box, {"/bin/true"}); },
                      [](gonso::Child& c) { return c.wait().exited(); }, 4));
    note("spawn pid", test::sweep(
                          "gonso::spawn() into a pid namespace", [&] { return gonso::spawn(pidset, {"/bin/true"}); },
                          [](gonso::Child& c) { return c.wait().exited(); }, 4));
  }
  SECTION("Executor, Pool, persist") {
    note("executor", test::sweep(
                         "gonso::Executor", [&] { return gonso::Executor(box); },
                         [](const gonso::Executor& ex) { return land(ex).inside; }));
    gonso::PoolOptions options;
    options.size = 2;
    note("pool", test::sweep(
                     "gonso::Pool", [&] { return std::make_unique<gonso::Pool>(Set::current(), Kind::net, options); },
                     [&](std::unique_ptr<gonso::Pool>& pool) {
                       // A refill that failed under the limit is reported by one get().
                       for (int tries = 0; tries < 2; ++tries) {
                         try {
                           const Set s = pool->get();
                           return s.identity(Kind::net) != caller.at(Kind::net) && land(s).inside;
                         } catch (const std::system_error& e) {
                           if (e.code() != std::errc::too_many_files_open) return false;
                         }
                       }
                       return false;
                     }));
    test::leaves_machine_as_found([&] {
      // Not the caller's mount namespace: the kernel binds none inside itself.
      const Set netuts = box.dup(Kind::net | Kind::uts);
      const test::PrivateTmpfs tmp;
      const auto dir = tmp.path() / "box";
      note("persist", test::sweep(
                          "gonso::persist()",
                          [&] {
                            gonso::persist(netuts, dir);
                            return std::filesystem::path(dir);
                          },
                          [&](const std::filesystem::path& d) {
                            const bool same = Set::from_dir(d) == netuts;
                            gonso::unpersist_dir(d);
                            return same;
                          }));
      CHECK(test::mounts_at(dir / "net") == 0);
    });
  }
  for (const auto& [what, c] : report) {
    UNSCOPED_INFO(what << ": " << c.emfile << " x EMFILE, " << c.succeeded << " x success");
  }
}

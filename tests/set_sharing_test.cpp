// Copies of a Set share one fd per namespace: how many fds Sets hold, that a
// shared fd outlives the Set it came from, and that sharing is thread-safe.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstddef>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "support/baseline.hpp"
#include "support/kernel_view.hpp"
#include "support/ns_files.hpp"
#include "support/privilege.hpp"

using gonso::Kind;
using gonso::Set;

namespace {

// The namespace an fd names, as the kernel says through its /proc/self/fd link.
gonso::Identity named_by(Kind kind, int fd) { return test::identity_at(kind, fmt::format("/proc/self/fd/{}", fd)); }

// RLIMIT_NOFILE's soft limit at `limit` while alive, as a default login has it.
class SoftFdLimit {
 public:
  explicit SoftFdLimit(rlim_t limit) {
    if (::getrlimit(RLIMIT_NOFILE, &old_) != 0) throw std::system_error(errno, std::generic_category(), "getrlimit");
    rlimit lowered = old_;
    lowered.rlim_cur = limit;
    if (::setrlimit(RLIMIT_NOFILE, &lowered) != 0) {
      throw std::system_error(errno, std::generic_category(), "setrlimit");
    }
  }
  SoftFdLimit(const SoftFdLimit&) = delete;
  SoftFdLimit& operator=(const SoftFdLimit&) = delete;
  ~SoftFdLimit() { ::setrlimit(RLIMIT_NOFILE, &old_); }

 private:
  rlimit old_{};
};

}  // namespace

TEST_CASE("a thousand copies of a Set hold the fds of one") {
  const test::Baseline base(test::Watch::fds);
  {
    const Set here = Set::current();
    const std::size_t with_one = test::count_fds();
    CHECK(with_one == base.fds() + here.kinds().size());
    std::vector<Set> copies(1000, here);
    std::vector<Set> subsets;
    subsets.reserve(1000);
    for (int i = 0; i < 1000; ++i) subsets.push_back(here.dup(Kind::net | Kind::mnt));
    CHECK(test::count_fds() == with_one);
    for (Kind kind : here.kinds()) {
      INFO(gonso::name(kind));
      CHECK(copies.back().fd(kind) == here.fd(kind));
      CHECK(named_by(kind, copies.back().fd(kind)) == here.identity(kind));
    }
    CHECK(named_by(Kind::net, subsets.front().fd(Kind::net)) == test::thread_ns(Kind::net));
  }
  base.check();
}

TEST_CASE("a shared fd stays open and names its namespace after the Set it came from is gone") {
  const test::Baseline base(test::Watch::fds);
  {
    Set copy;
    int fd = -1;
    {
      const Set original = Set::current(Kind::net | Kind::uts | Kind::ipc);
      copy = original.dup(Kind::net | Kind::uts);
      fd = original.fd(Kind::net);
    }
    // ipc had no other holder: closed with the original.
    CHECK(test::count_fds() == base.fds() + 2);
    CHECK(copy.fd(Kind::net) == fd);
    CHECK(::fcntl(fd, F_GETFD) == FD_CLOEXEC);
    CHECK(named_by(Kind::net, fd) == test::thread_ns(Kind::net));
    CHECK(named_by(Kind::uts, copy.fd(Kind::uts)) == test::thread_ns(Kind::uts));
  }
  base.check();
}

TEST_CASE("Sets opened apart share the fds of the namespaces they both hold, until the last one goes") {
  const test::Baseline base(test::Watch::fds);
  {
    std::optional<Set> first(Set::current(Kind::net | Kind::uts));
    const std::size_t with_first = test::count_fds();
    const Set second = Set::from_dir("/proc/thread-self/ns", Kind::net | Kind::ipc);
    CHECK(second.fd(Kind::net) == first->fd(Kind::net));
    CHECK(test::count_fds() == with_first + 1);  // ipc alone is new
    const int net_fd = first->fd(Kind::net);
    first.reset();
    // second holds net still; uts, held by first alone, is closed.
    CHECK(test::count_fds() == with_first);
    CHECK(named_by(Kind::net, net_fd) == test::thread_ns(Kind::net));
    const Set third = Set::current(Kind::net);
    CHECK(third.fd(Kind::net) == second.fd(Kind::net));
  }
  base.check();
}

TEST_CASE("1000 Sets made with Set::current().unshare(net) fit under the default limit of 1024 fds, one fd each",
          "[privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::namespaces);
  {
    const Set here = Set::current();
    const std::size_t before = test::count_fds();
    REQUIRE(before < 20);  // room for what the Sets need, under the limit below
    std::vector<Set> sets;
    sets.reserve(1000);
    {
      const SoftFdLimit limit(1024);
      // Each from a Set of its own, opened anew: what they carry is still
      // shared, since gonso shares what it opens with the Sets holding it.
      for (int i = 0; i < 1000; ++i) sets.push_back(Set::current().unshare(Kind::net));
    }
    gonso::retire_idle_workers();
    CHECK(test::count_fds() == before + sets.size());
    std::unordered_set<gonso::Identity> nets;
    for (const Set& s : sets) {
      nets.insert(named_by(Kind::net, s.fd(Kind::net)));
      CHECK(s.fd(Kind::uts) == here.fd(Kind::uts));  // carried over, shared
    }
    CHECK(nets.size() == sets.size());  // each its own, as the kernel names them
    CHECK(nets.count(test::thread_ns(Kind::net)) == 0);
    // A carried kind still joins the caller's namespace from any of them.
    CHECK(sets[500].run(true, [] { return test::thread_ns(Kind::uts); }) == test::thread_ns(Kind::uts));
  }
  base.check();
}

TEST_CASE("threads copying, dropping and running in copies of one Set share it safely", "[privileged]") {
  test::require_privilege();
  const test::Baseline base(test::Watch::fds | test::Watch::namespaces | test::Watch::threads);
  {
    const Set box = Set::current().unshare(Kind::net);
    const gonso::Identity inside = named_by(Kind::net, box.fd(Kind::net));
    gonso::retire_idle_workers();  // the unshare's worker holds fds of its own
    const std::size_t with_box = test::count_fds();
    std::vector<std::jthread> threads;
    std::vector<int> wrong(4, 0);
    for (std::size_t t = 0; t < wrong.size(); ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 200; ++i) {
          Set copy = box;
          Set moved = std::move(copy);
          copy = moved;
          if (i % 20 == 0 && moved.run(true, [] { return test::thread_ns(Kind::net); }) != inside) ++wrong[t];
          if (copy.fd(Kind::net) != box.fd(Kind::net)) ++wrong[t];
        }
      });
    }
    threads.clear();
    for (int w : wrong) CHECK(w == 0);
    gonso::retire_idle_workers();
    CHECK(test::count_fds() == with_box);
    CHECK(named_by(Kind::net, box.fd(Kind::net)) == inside);
  }
  base.check();
}

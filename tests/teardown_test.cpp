// Destroying gonso objects never hangs (issue 11, class 2): Sets holding a
// pid namespace made by gonso, their copies, Executors and Children, in
// every order and from any thread, with programs and run_in_process children
// alive, dead, waited or not. Each destruction runs under a watchdog that
// fails the test instead of hanging it, and what is left is read from the
// kernel: /proc/self/task/*/children, /proc/self/fd, /proc/self/task.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gonso/child.hpp>
#include <gonso/executor.hpp>
#include <gonso/spawn.hpp>

#include "support/baseline.hpp"
#include "support/kernel_view.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"
#include "support/programs.hpp"

using gonso::Child;
using gonso::ExitStatus;
using gonso::Kind;
using gonso::Set;

namespace {

// Far above any teardown's cost on a loaded 2-CPU machine: a bound that turns
// a hang into a failure, never a timing assertion.
constexpr auto watchdog = std::chrono::seconds(60);

/// Runs `fn` on a thread of its own and reports whether it returned within
/// the watchdog's bound. On a hang the thread is left behind (with whatever
/// `fn` owns) so that the test fails instead of hanging.
template <typename Fn>
bool returns(Fn fn) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> finished = done->get_future();
  std::thread([done, fn = std::move(fn)]() mutable {
    fn();
    done->set_value();
  }).detach();
  return finished.wait_for(watchdog) == std::future_status::ready;
}

/// What the process holds, from the kernel's view: child processes and
/// zombies, fds and threads, after a case no more than before.
constexpr test::Watch held = test::Watch::children | test::Watch::fds | test::Watch::threads;

/// Waits, without reaping it here, until the program has ended: its pidfd
/// is readable (a zombie, or reaped already by another thread's teardown).
bool ended_unreaped(const Child& child) { return test::ended(child, watchdog); }

Set pid_set() { return Set::current().unshare(Kind::pid | Kind::net); }

}  // namespace

TEST_CASE("teardown: the last pid Set destroyed while a program in it is unwaited", "[privileged][spawn][teardown]") {
  test::require_privilege();
  const test::Baseline base(held);
  pid_t init = -1;
  pid_t program = -1;
  {
    auto owner = std::make_shared<std::optional<Set>>(pid_set());
    init = test::init_of((*owner)->identity(Kind::pid));
    REQUIRE(init > 0);
    Child child = gonso::spawn(**owner, {"/bin/sleep", "100"});
    program = child.pid();
    // The instance of issue 11: this destructor waited for an init that
    // waited for this thread to reap the program.
    REQUIRE(returns([owner] { owner->reset(); }));
    CHECK(test::gone(init));
    CHECK(child.wait() == ExitStatus::killed_by(SIGKILL));
    CHECK(child.wait() == ExitStatus::killed_by(SIGKILL));  // the same, again
  }
  CHECK(test::gone(program));
  base.check();
}

TEST_CASE("teardown: every order of Set and Child, program alive or ended", "[privileged][spawn][teardown]") {
  test::require_privilege();
  const test::Baseline base(held);
  struct Order {
    const char* name;
    bool program_ends;  // `true` instead of `sleep`
    bool set_first;
    bool wait_child;  // wait() before it is destroyed
  };
  for (const Order order :
       {Order{"Set first, alive, waited", false, true, true}, Order{"Set first, alive, not waited", false, true, false},
        Order{"Set first, ended, waited", true, true, true}, Order{"Set first, ended, not waited", true, true, false},
        Order{"Child first, alive, not waited", false, false, false},
        Order{"Child first, ended, waited", true, false, true},
        Order{"Child first, ended, not waited", true, false, false}}) {
    DYNAMIC_SECTION(order.name) {
      auto owner = std::make_shared<std::optional<Set>>(pid_set());
      auto child = std::make_shared<Child>(gonso::spawn(**owner, order.program_ends
                                                                     ? std::vector<std::string>{"/bin/true"}
                                                                     : std::vector<std::string>{"/bin/sleep", "100"}));
      const pid_t program = child->pid();
      if (order.program_ends) REQUIRE(ended_unreaped(*child));
      const auto destroy_child = [&] {
        if (order.wait_child) {
          CHECK(child->wait() == (order.program_ends ? ExitStatus::exited_with(0) : ExitStatus::killed_by(SIGKILL)));
        }
        CHECK(returns([child] { *child = Child(); }));
      };
      if (order.set_first) {
        CHECK(returns([owner] { owner->reset(); }));
        destroy_child();
      } else {
        destroy_child();
        CHECK(returns([owner] { owner->reset(); }));
      }
      CHECK(test::gone(program));
    }
  }
  base.check();
}

TEST_CASE("teardown: a Child waited on one thread while another destroys the Set", "[privileged][spawn][teardown]") {
  test::require_privilege();
  const test::Baseline base(held);
  {
    std::optional<Set> owner(pid_set());
    Child child = gonso::spawn(*owner, {"/bin/sleep", "100"});
    std::promise<ExitStatus> status;
    std::future<ExitStatus> got = status.get_future();
    std::thread waiter([&] { status.set_value(child.wait()); });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it block (not required)
    std::thread([&] { owner.reset(); }).join();
    REQUIRE(got.wait_for(watchdog) == std::future_status::ready);
    waiter.join();
    CHECK(got.get() == ExitStatus::killed_by(SIGKILL));
  }
  base.check();
}

TEST_CASE("teardown: copies of a pid Set destroyed from other threads while programs run",
          "[privileged][spawn][teardown]") {
  test::require_privilege();
  const test::Baseline base(held);
  {
    auto original = std::make_shared<std::optional<Set>>(pid_set());
    auto copy = std::make_shared<std::optional<Set>>(**original);
    std::vector<Child> children;
    children.reserve(3);
    for (int i = 0; i < 3; ++i) children.push_back(gonso::spawn(**copy, {"/bin/sleep", "100"}));
    CHECK(returns([copy] { copy->reset(); }));
    // The original still holds the namespace: a program starts and runs.
    CHECK_FALSE(children.front().poll());
    CHECK(gonso::spawn(**original, {"/bin/true"}).wait() == ExitStatus::exited_with(0));
    CHECK(returns([original] { original->reset(); }));
    for (Child& child : children) CHECK(child.wait() == ExitStatus::killed_by(SIGKILL));
  }
  base.check();
}

TEST_CASE("teardown: a program spawned through a Set that does not own the namespace",
          "[privileged][spawn][teardown]") {
  test::require_privilege();
  const test::Baseline base(held);
  {
    auto owner = std::make_shared<std::optional<Set>>(pid_set());
    const pid_t init = test::init_of((*owner)->identity(Kind::pid));
    REQUIRE(init > 0);
    const Set borrowed = Set::from_pid(init, Kind::pid | Kind::net);
    Child child = gonso::spawn(borrowed, {"/bin/sleep", "100"});
    CHECK(returns([owner] { owner->reset(); }));
    CHECK(child.wait() == ExitStatus::killed_by(SIGKILL));
  }
  base.check();
}

TEST_CASE("teardown: run_in_process children, and Executors, in every order", "[privileged][process][teardown]") {
  test::require_privilege();
  const test::Baseline base(held);
  SECTION("a callable that leaves a process running in the namespace, then the Set") {
    auto owner = std::make_shared<std::optional<Set>>(pid_set());
    const pid_t left = (*owner)->run_in_process([] {
      const pid_t pid = ::fork();
      if (pid == 0) {
        ::execl("/bin/sleep", "sleep", "100", nullptr);
        ::_exit(127);
      }
      return pid;  // in the namespace's numbering
    });
    CHECK(left > 1);
    CHECK(returns([owner] { owner->reset(); }));
  }
  SECTION("a run_in_process still running through a borrowed Set when the owner goes") {
    auto owner = std::make_shared<std::optional<Set>>(pid_set());
    const pid_t init = test::init_of((*owner)->identity(Kind::pid));
    REQUIRE(init > 0);
    const Set borrowed = Set::from_pid(init, Kind::pid | Kind::net);
    std::promise<void> started;
    std::future<std::string> outcome = std::async(std::launch::async, [&] {
      try {
        borrowed.run_in_process([] {
          ::sleep(100);
          return 0;
        });
        return std::string("returned");
      } catch (const gonso::ProcessError& e) {
        return fmt::format("signal {}", e.signal());
      }
    });
    // The child is in the namespace once the namespace has two members.
    REQUIRE(test::eventually([&] { return test::processes_in((*owner)->identity(Kind::pid)).size() == 2; }));
    CHECK(returns([owner] { owner->reset(); }));
    REQUIRE(outcome.wait_for(watchdog) == std::future_status::ready);
    CHECK(outcome.get() == fmt::format("signal {}", SIGKILL));
  }
  SECTION("an Executor in the Set, destroyed before and after the Set, with a program alive") {
    for (const bool executor_first : {true, false}) {
      auto owner = std::make_shared<std::optional<Set>>(pid_set());
      auto executor = std::make_shared<std::optional<gonso::Executor>>(**owner);
      Child child = gonso::spawn(**owner, {"/bin/sleep", "100"});
      CHECK((*executor)->run([] { return 1; }) == 1);
      if (executor_first) CHECK(returns([executor] { executor->reset(); }));
      CHECK(returns([owner] { owner->reset(); }));  // the Executor's copy may still hold it
      if (!executor_first) CHECK(returns([executor] { executor->reset(); }));
      CHECK(child.wait() == ExitStatus::killed_by(SIGKILL));
    }
  }
  base.check();
}

TEST_CASE("teardown: a zombie of the caller's own in the namespace delays the destructor only boundedly",
          "[privileged][teardown]") {
  test::require_privilege();
  const test::Baseline base(held);
  {
    auto owner = std::make_shared<std::optional<Set>>(pid_set());
    // A child forked by a callable of Set::run is the caller's own, inside
    // the namespace, and owned by no gonso object: nobody reaps it here.
    const pid_t zombie = (*owner)->run(true, [] {
      const pid_t pid = ::fork();
      if (pid == 0) ::_exit(0);
      return pid;
    });
    REQUIRE(zombie > 0);
    CHECK(returns([owner] { owner->reset(); }));
    // Once the caller reaps its own child, the init it held is reaped too,
    // by the next gonso object that ends.
    REQUIRE(::waitpid(zombie, nullptr, 0) == zombie);
    CHECK(gonso::spawn(Set::current(Kind::net), {"/bin/true"}).wait() == ExitStatus::exited_with(0));
  }
  CHECK(test::eventually([&] {
    // Let another Child end now and then, so the deferred init is swept.
    (void)gonso::spawn(Set::current(Kind::net), {"/bin/true"}).wait();
    return test::child_processes() == base.children();
  }));
  base.check();
}

// ---------------------------------------------------------------------------
// The churn soak: threads that spawn into pid Sets and destroy them, their
// copies and their Children in every order, while others wait. Bounded in
// count, not time.

namespace {

struct Churn {
  std::mutex lock;
  std::condition_variable changed;
  std::deque<std::optional<Set>> handed_over;  // Sets for another thread to destroy
  std::atomic<int> busy{0};                    // destructions under way
  int finished = 0;                            // threads done
  std::vector<std::string> errors;
  std::atomic<long> destroyed{0};

  void fail(std::string what) {
    const std::lock_guard<std::mutex> hold(lock);
    errors.push_back(std::move(what));
  }
};

// Destroys one Set another thread handed over, if there is one.
void take_one(Churn& churn) {
  std::optional<Set> foreign;
  {
    const std::lock_guard<std::mutex> hold(churn.lock);
    if (churn.handed_over.empty()) return;
    foreign = std::move(churn.handed_over.front());
    churn.handed_over.pop_front();
  }
  foreign.reset();
}

void churn_round(Churn& churn, int thread, int round) {
  const int order = (thread + round) % 8;
  std::optional<Set> set(pid_set());
  const bool ends = order % 2 == 1;
  std::optional<Child> child(
      gonso::spawn(*set, ends ? std::vector<std::string>{"/bin/true"} : std::vector<std::string>{"/bin/sleep", "100"}));
  const ExitStatus expected = ends ? ExitStatus::exited_with(0) : ExitStatus::killed_by(SIGKILL);
  if (ends) (void)ended_unreaped(*child);
  // Another thread's Set, destroyed here while this one's program runs.
  take_one(churn);
  ++churn.destroyed;
  switch (order / 2) {
    case 0:  // Set first, Child waited afterwards
      set.reset();
      if (child->wait() != expected) churn.fail(fmt::format("order {}: {}", order, child->wait()));
      child.reset();
      break;
    case 1:  // Set first, Child destroyed unwaited
      set.reset();
      child.reset();
      break;
    case 2:  // Child first (waited when it ended), then the Set
      if (ends && child->wait() != expected) churn.fail(fmt::format("order {}: {}", order, child->wait()));
      child.reset();
      set.reset();
      break;
    default: {  // a copy here; the original to another thread, destroyed there while we wait
      std::optional<Set> copy(*set);
      {
        const std::lock_guard<std::mutex> hold(churn.lock);
        churn.handed_over.push_back(std::move(set));
      }
      copy.reset();
      if (!ends) {
        // Ended by whichever thread destroys the last Set: another one, or
        // this one when no other is left to.
        while (!child->poll()) {
          take_one(churn);
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (*child->poll() != expected) churn.fail(fmt::format("order {}: {}", order, *child->poll()));
      }
      child.reset();
      break;
    }
  }
  churn.destroyed += 2;
}

}  // namespace

TEST_CASE("teardown soak: threads spawn into pid Sets and destroy them in every order", "[privileged][stress]") {
  test::require_privilege();
  const test::Baseline base(held);
  constexpr int threads = 4;
  constexpr int rounds = 48;  // 192 Sets, 192 programs, every order 24 times
  auto churn = std::make_shared<Churn>();
  for (int t = 0; t < threads; ++t) {
    std::thread([churn, t] {
      try {
        for (int r = 0; r < rounds; ++r) churn_round(*churn, t, r);
      } catch (const std::exception& e) {
        churn->fail(fmt::format("thread {}: {}", t, e.what()));
      }
      const std::lock_guard<std::mutex> hold(churn->lock);
      ++churn->finished;
      churn->changed.notify_all();
    }).detach();
  }
  {
    std::unique_lock<std::mutex> hold(churn->lock);
    // A hang fails here; the threads and what they own are left behind.
    REQUIRE(churn->changed.wait_for(hold, std::chrono::minutes(5), [&] { return churn->finished == threads; }));
    CHECK(churn->errors.empty());
    for (const std::string& error : churn->errors) UNSCOPED_INFO(error);
  }
  // Sets handed over last are destroyed here, on yet another thread.
  CHECK(returns([churn] { churn->handed_over.clear(); }));
  CHECK(churn->destroyed.load() == static_cast<long>(threads) * rounds * 3);
  base.check();
}

// gonso-bench: what gonso's operations cost next to the system calls and
// tools they stand for, measured in one run on one machine, and whether the
// targets set as ratios between them are met. Run it as root: it creates
// namespaces. `--json` prints one object of median nanoseconds per operation.
//
// Not a test: nothing here fails on a slow figure. The numbers come from a
// small harness of its own so that the output is exactly what is specified.
// SPDX-License-Identifier: MIT
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <gonso/executor.hpp>
#include <gonso/namespaces.hpp>
#include <gonso/persist.hpp>
#include <gonso/pool.hpp>
#include <gonso/set.hpp>
#include <gonso/spawn.hpp>
#include <gonso/workers.hpp>

#ifndef GONSO_BENCH_BUILD_TYPE
#define GONSO_BENCH_BUILD_TYPE "unknown"
#endif

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// Small system helpers

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

/// An owned file descriptor.
class Fd {
 public:
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&&) = delete;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] int get() const noexcept { return fd_; }

 private:
  int fd_;
};

/// The calling thread's net namespace, as an fd to setns(2) back into.
Fd own_net_namespace() {
  Fd fd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw_errno("cannot open /proc/thread-self/ns/net");
  return fd;
}

std::string read_text(const char* path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(fmt::format("cannot read {}", path));
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Waits for child `pid` and throws unless it exited with 0.
void expect_success(pid_t pid, std::string_view what) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw_errno(fmt::format("cannot wait for {}", what));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(fmt::format("{} failed (wait status {:#x})", what, status));
  }
}

/// fork + execv + waitpid, as a shell or a CNI plugin starts a tool.
void fork_exec_wait(std::vector<std::string>& argv) {
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (std::string& arg : argv) args.push_back(arg.data());
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw_errno(fmt::format("cannot fork to run {}", argv[0]));
  if (pid == 0) {
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  expect_success(pid, argv[0]);
}

/// Open fds of this process, not counting the one that lists them.
long count_open_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) throw_errno("cannot list /proc/self/fd");
  const std::string own = std::to_string(::dirfd(dir));
  long count = 0;
  while (const dirent* entry = ::readdir(dir)) {
    const std::string_view name = entry->d_name;
    if (name != "." && name != ".." && name != own) ++count;
  }
  ::closedir(dir);
  return count;
}

long count_threads() {
  long count = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator("/proc/self/task")) ++count;
  return count;
}

/// utime + stime of the whole process, every thread that ever ran included,
/// in clock ticks (sysconf(_SC_CLK_TCK) per second).
long long process_cpu_ticks() {
  const std::string stat = read_text("/proc/self/stat");
  // The command name (field 2) may hold spaces and ')': count from the last ')'.
  std::istringstream fields(stat.substr(stat.rfind(')') + 2));
  std::vector<std::string> field{std::istream_iterator<std::string>(fields), std::istream_iterator<std::string>()};
  constexpr std::size_t utime = 14 - 3;  // fields 14 and 15, counted from field 3 (state)
  if (field.size() <= utime + 1) throw std::runtime_error("cannot parse /proc/self/stat");
  return std::stoll(field[utime]) + std::stoll(field[utime + 1]);
}

/// Busy and total jiffies of the whole machine, from /proc/stat.
struct MachineTime {
  long long busy = 0;
  long long total = 0;
};

MachineTime machine_time() {
  std::istringstream line(read_text("/proc/stat"));
  std::string cpu;
  long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  line >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  const long long busy = user + nice + system + irq + softirq;
  return {busy, busy + idle + iowait + steal};
}

// ---------------------------------------------------------------------------
// Interruption

// A signal only sets this flag; the harness turns it into an exception
// between batches, so that destructors run and the nsenter figure's bind
// mount is undone after a Ctrl-C as after any error.
std::atomic<int> pending_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "used from a signal handler");

void on_signal(int sig) { pending_signal.store(sig); }

void install_signal_handlers() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  // SA_RESTART: gonso's and our own blocking calls carry on; the flag is
  // looked at between batches.
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &action, nullptr);
}

struct Interrupted : std::runtime_error {
  explicit Interrupted(int sig) : std::runtime_error(fmt::format("interrupted by signal {}", sig)), signal(sig) {}
  int signal;
};

void check_interrupted() {
  if (const int sig = pending_signal.load(); sig != 0) throw Interrupted(sig);
}

// ---------------------------------------------------------------------------
// Harness

/// How much to measure.
struct Plan {
  int warmup_ops = 3;                            // untimed, before the batch size is found
  int batches = 31;                              // K: the median is taken over this many batches
  std::int64_t max_ops = std::int64_t{1} << 20;  // cap on M, the ops per batch
  Clock::duration min_batch = 2ms;               // M grows until one batch lasts this long
  int single_samples = 201;                      // for figures timed one op at a time

  [[nodiscard]] Plan with_warmup(int ops) const {
    Plan plan = *this;
    plan.warmup_ops = std::max(warmup_ops, ops);
    return plan;
  }
};

// Shorter batches would be dominated by the clock and by this VM's noise.
constexpr Plan full_plan{};
// Enough to run every code path once; the numbers mean nothing.
constexpr Plan quick_plan{.warmup_ops = 1, .batches = 3, .max_ops = 1, .min_batch = 0ms, .single_samples = 3};

/// One reported figure: a median in ns per op, or a count.
struct Value {
  double number = 0;
  std::string shape;  // "K×M" of the batches behind a median; empty for counts
};
using Result = std::optional<Value>;  // nullopt: not measured

double nanoseconds(Clock::duration d) { return std::chrono::duration<double, std::nano>(d).count(); }

double median(std::vector<double> samples) {
  if (samples.empty()) throw std::logic_error("median of no samples");
  const auto mid = samples.begin() + static_cast<std::ptrdiff_t>(samples.size() / 2);
  std::nth_element(samples.begin(), mid, samples.end());
  if (samples.size() % 2 == 1) return *mid;
  return (*mid + *std::max_element(samples.begin(), mid)) / 2;
}

template <typename Op>
Clock::duration time_batch(Op& op, std::int64_t ops) {
  const auto start = Clock::now();
  for (std::int64_t i = 0; i < ops; ++i) op();
  return Clock::now() - start;
}

/// Warms up, then finds M: the ops per batch that make a batch last
/// plan.min_batch. The batches timed on the way are warmup too.
template <typename Op>
std::int64_t batch_size(const Plan& plan, Op& op) {
  for (int i = 0; i < plan.warmup_ops; ++i) op();
  std::int64_t ops = 1;
  for (;;) {
    check_interrupted();
    // The shortest of three: one batch slowed down by a neighbour on this
    // shared machine must not settle M at a value far too small.
    Clock::duration took = Clock::duration::max();
    for (int i = 0; i < 3 && ops < plan.max_ops; ++i) took = std::min(took, time_batch(op, ops));
    if (took >= plan.min_batch || ops >= plan.max_ops) return ops;
    // Aim a little past the target; grow at most tenfold at a time, as the
    // first ops may have been slow ones.
    const double scale = took.count() > 0 ? 1.1 * nanoseconds(plan.min_batch) / nanoseconds(took) : 10.0;
    const auto wanted = static_cast<std::int64_t>(std::ceil(static_cast<double>(ops) * scale));
    ops = std::clamp(wanted, ops + 1, std::max(ops + 1, std::min(ops * 10, plan.max_ops)));
  }
}

/// ns per op of each of plan.batches batches of `ops` ops.
template <typename Op>
std::vector<double> per_op_samples(const Plan& plan, std::int64_t ops, Op& op) {
  std::vector<double> samples;
  for (int b = 0; b < plan.batches; ++b) {
    check_interrupted();
    samples.push_back(nanoseconds(time_batch(op, ops)) / static_cast<double>(ops));
  }
  return samples;
}

/// The median ns per call of `op`, from K batches of M calls.
template <typename Op>
Value measure(const Plan& plan, Op&& op) {
  const std::int64_t ops = batch_size(plan, op);
  return {median(per_op_samples(plan, ops, op)), fmt::format("{}×{}", plan.batches, ops)};
}

/// Runs `fn` on a new thread of its own and hands back its value or exception.
template <typename F>
auto on_helper_thread(F&& fn) {
  std::optional<std::invoke_result_t<F&>> result;
  std::exception_ptr error;
  std::thread helper([&] {
    try {
      result.emplace(fn());
    } catch (...) {
      error = std::current_exception();
    }
  });
  helper.join();
  if (error) std::rethrow_exception(error);
  return std::move(*result);
}

// Net namespaces die in kernel workers after their last fd is closed, at
// ~250 µs of CPU each (the README's kernel rules), and a figure may have dropped
// hundreds: on 2 vCPUs that work would be billed to the next figure. Waits
// until the machine is quiet (under 10% busy for 100 ms), but not for long on
// one busy for other reasons. Returns whether it got quiet.
bool settle() {
  const auto deadline = Clock::now() + 1s;
  MachineTime last = machine_time();
  while (Clock::now() < deadline) {
    std::this_thread::sleep_for(100ms);
    const MachineTime now = machine_time();
    if (const long long total = now.total - last.total; total > 0 && (now.busy - last.busy) * 10 <= total) return true;
    last = now;
  }
  return false;
}

// ---------------------------------------------------------------------------
// What the figures share

/// A namespace bound onto a file in a fresh folder under /tmp, as
/// `unshare --net=FILE` makes one for nsenter; unbound and removed on
/// destruction, whatever happened in between.
class BoundNamespace {
 public:
  BoundNamespace(const gonso::Set& set, gonso::Kind kind, std::vector<fs::path>& made) {
    std::string dir = "/tmp/gonso-bench-XXXXXX";
    if (::mkdtemp(dir.data()) == nullptr) throw_errno("cannot create a folder under /tmp");
    dir_ = dir;
    file_ = dir_ / std::string(gonso::name(kind));
    made.push_back(file_);  // checked at exit even if persist() fails half-way
    try {
      gonso::persist(set, kind, file_);
    } catch (...) {
      ::rmdir(dir_.c_str());
      throw;
    }
  }
  BoundNamespace(const BoundNamespace&) = delete;
  BoundNamespace& operator=(const BoundNamespace&) = delete;
  ~BoundNamespace() {
    try {
      gonso::unpersist(file_);
    } catch (const std::exception& e) {
      fmt::print(stderr, "gonso-bench: {}\n", e.what());  // and the exit check fails
    }
    ::rmdir(dir_.c_str());
  }
  [[nodiscard]] const fs::path& file() const noexcept { return file_; }

 private:
  fs::path dir_;
  fs::path file_;
};

/// `count` extra processes that only wait, for the figures that list the
/// host's processes: children made with clone(CLONE_VM), so that 10,000 of
/// them cost kernel memory but no copy of this process's page tables. Each
/// closes the copy of the fd table it got (sharing this one would slow
/// every fd this process opens, and keep its namespaces alive), then only
/// waits in pause(), with raw system calls;
/// PR_SET_PDEATHSIG kills it should this program die without the destructor,
/// which kills and reaps them all.
class Crowd {
 public:
  explicit Crowd(int count) {
    check_room(count);
    stacks_ = ::mmap(nullptr, stack_size * static_cast<std::size_t>(count), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (stacks_ == MAP_FAILED) throw_errno("cannot map the stacks of the waiting processes");
    mapped_ = stack_size * static_cast<std::size_t>(count);
    pids_.reserve(static_cast<std::size_t>(count));
    parent_ = ::getpid();
    for (int i = 0; i < count; ++i) {
      char* top = static_cast<char*>(stacks_) + stack_size * static_cast<std::size_t>(i + 1);
      const int pid = start_one(top);
      if (pid < 0) {
        const int err = errno;
        stop();
        throw std::system_error(err, std::generic_category(), fmt::format("cannot start waiting process {}", i + 1));
      }
      pids_.push_back(pid);
      if (i % 1000 == 999) check_interrupted();  // the destructor kills what was started
    }
  }
  Crowd(const Crowd&) = delete;
  Crowd& operator=(const Crowd&) = delete;
  ~Crowd() { stop(); }

  [[nodiscard]] std::size_t size() const noexcept { return pids_.size(); }

 private:
  static constexpr std::size_t stack_size = std::size_t{16} * 1024;

  // ThreadSanitizer keeps per-thread state where the child of a CLONE_VM
  // clone would share it with this still-running thread (and crash): under
  // it each child is a copy instead, which costs page tables but measures
  // nothing anyway (sanitizer figures mislead, and say so in the header).
  int start_one(char* stack_top) {
#if defined(__SANITIZE_THREAD__)
    (void)stack_top;
    const auto pid = static_cast<int>(::syscall(SYS_clone, SIGCHLD, nullptr, nullptr, nullptr, 0));
    if (pid == 0) wait_forever(&parent_);
    return pid;
#else
    return ::clone(wait_forever, stack_top, CLONE_VM | SIGCHLD, &parent_);
#endif
  }

  static int wait_forever(void* parent) {
    ::syscall(SYS_close_range, 0U, ~0U, 0U);
    ::syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (::syscall(SYS_getppid) != *static_cast<const pid_t*>(parent)) ::syscall(SYS_exit, 0);
    for (;;) ::syscall(SYS_pause);
  }

  // pid_max, threads-max and, without root, RLIMIT_NPROC must leave room for
  // them beside what runs already (with a margin for the rest of the host).
  static void check_room(int count) {
    const auto read_number = [](const char* path) { return std::stoll(read_text(path)); };
    const long long pid_max = read_number("/proc/sys/kernel/pid_max");
    const long long threads_max = read_number("/proc/sys/kernel/threads-max");
    // /proc/loadavg: "0.00 0.01 0.05 RUNNING/TOTAL LAST", TOTAL counting threads.
    const std::string load = read_text("/proc/loadavg");
    const auto slash = load.find('/');
    const long long running = slash == std::string::npos ? 0 : std::stoll(load.substr(slash + 1));
    const long long wanted = running + count + 1000;
    if (wanted > pid_max || wanted > threads_max) {
      throw std::runtime_error(fmt::format("{} more processes do not fit: {} tasks run, pid_max is {}, threads-max {}",
                                           count, running, pid_max, threads_max));
    }
    rlimit procs{};
    if (::geteuid() != 0 && ::getrlimit(RLIMIT_NPROC, &procs) == 0 && procs.rlim_cur != RLIM_INFINITY &&
        static_cast<long long>(procs.rlim_cur) < wanted) {
      throw std::runtime_error(fmt::format("{} more processes exceed RLIMIT_NPROC ({})", count, procs.rlim_cur));
    }
  }

  void stop() noexcept {
    for (const pid_t pid : pids_) ::kill(pid, SIGKILL);
    for (const pid_t pid : pids_) {
      while (::waitpid(pid, nullptr, __WALL) < 0 && errno == EINTR) {
      }
    }
    pids_.clear();
    if (mapped_ != 0) ::munmap(stacks_, mapped_);
    mapped_ = 0;
  }

  void* stacks_ = nullptr;
  std::size_t mapped_ = 0;
  pid_t parent_ = 0;
  std::vector<pid_t> pids_;
};

struct Context {
  Plan plan = full_plan;
  int crowd_size = 10'000;            // the extra processes of the listing figures (20 with --quick)
  std::unique_ptr<Crowd> crowd;       // and those processes, while the figures run
  gonso::Set base;                    // this thread's namespaces
  gonso::Set net;                     // base with a fresh net namespace: what most figures run in
  std::vector<gonso::Set> net_sets;   // distinct net Sets for the round-robin figures
  std::vector<fs::path> bound_files;  // every namespace file this program bound, for the exit check
  // Second figures of one measurement (a concurrent run's wall time), by name.
  std::map<std::string, Value, std::less<>> stored;

  void open() {
    base = gonso::Set::current();
    net = base.unshare(gonso::Kind::net);
  }

  /// The first n of the distinct net Sets, made as `net` is.
  std::span<const gonso::Set> distinct_net_sets(std::size_t n) {
    net_sets.reserve(n);
    while (net_sets.size() < n) net_sets.push_back(base.unshare(gonso::Kind::net));
    return {net_sets.data(), n};
  }
};

// ---------------------------------------------------------------------------
// The figures, one function each, in the order they run and are printed.
// A gonso figure follows the floor it is compared with, so that both see
// the same moment of a noisy machine.

constexpr auto noop = [] {};

// The kernel's price for what run(true) adds around the callable: joining
// and going back. On this thread, since that is all a thread can do faster.
Result floor_setns_net(Context& ctx) {
  const Fd here = own_net_namespace();
  const int there = ctx.net.fd(gonso::Kind::net);
  return measure(ctx.plan, [&] {
    if (::setns(there, CLONE_NEWNET) != 0) throw_errno("cannot join the net Set");
    // Failing here would strand the main thread: the exception ends the program.
    if (::setns(here.get(), CLONE_NEWNET) != 0) throw_errno("cannot go back to this thread's net namespace");
  });
}

Result run_restore_net(Context& ctx) {
  return measure(ctx.plan, [&] { ctx.net.run(true, noop); });
}

// What matching a caller to an idle worker costs it: reading every
// credential of its own thread (the worker reads its own after each run).
Result credentials_read(Context& ctx) {
  return measure(ctx.plan, [] { (void)gonso::detail::this_thread_credentials(-1, 1); });
}

Result executor_net(Context& ctx) {
  const gonso::Executor executor(ctx.net);
  return measure(ctx.plan, [&] { executor.run(noop); });
}

Result executor_net_unverified(Context& ctx) {
  const gonso::Executor executor(ctx.net, gonso::ExecutorOptions{.verify_each_run = false});
  return measure(ctx.plan, [&] { executor.run(noop); });
}

Result run_restore_net_uts_ipc(Context& ctx) {
  const gonso::Set set = ctx.base.unshare(gonso::Kind::net | gonso::Kind::uts | gonso::Kind::ipc);
  return measure(ctx.plan, [&] { set.run(true, noop); });
}

/// `callers` threads at once, each calling the op that make_op() makes for
/// it (on that thread): the median per call each sees, and the wall time per
/// op of all of them (from the batch's start to the last caller's end, over
/// callers × M ops), which is what throughput costs. Every batch starts with
/// all callers at once; M is found by the first caller alone, so contended
/// batches only last longer.
struct Concurrent {
  Value per_call;
  Value wall_per_op;
};

template <typename MakeOp>
Concurrent measure_concurrent(const Plan& plan, std::size_t callers, MakeOp make_op) {
  std::barrier start(static_cast<std::ptrdiff_t>(callers));
  std::int64_t ops = 0;
  std::vector<std::vector<double>> samples(callers);
  // Per batch and caller: when it started and ended, for the wall time.
  std::vector<std::vector<std::pair<Clock::time_point, Clock::time_point>>> spans(
      static_cast<std::size_t>(plan.batches), std::vector<std::pair<Clock::time_point, Clock::time_point>>(callers));
  std::vector<std::exception_ptr> errors(callers);
  const auto caller = [&](std::size_t c) {
    try {
      auto op = make_op();
      if (c == 0) {
        ops = batch_size(plan, op);
      } else {
        for (int i = 0; i < plan.warmup_ops; ++i) op();
      }
      for (int b = 0; b < plan.batches; ++b) {
        start.arrive_and_wait();  // also publishes `ops` to the others
        check_interrupted();
        const auto begun = Clock::now();
        for (std::int64_t i = 0; i < ops; ++i) op();
        const auto ended = Clock::now();
        spans[static_cast<std::size_t>(b)][c] = {begun, ended};
        samples[c].push_back(nanoseconds(ended - begun) / static_cast<double>(ops));
      }
    } catch (...) {
      errors[c] = std::current_exception();
      start.arrive_and_drop();  // the others must not wait for this one
    }
  };
  {
    std::vector<std::jthread> threads;
    try {
      for (std::size_t c = 0; c < callers; ++c) threads.emplace_back(caller, c);
    } catch (...) {
      // Nor for a caller that could not start.
      for (std::size_t missing = callers - threads.size(); missing > 0; --missing) start.arrive_and_drop();
      throw;
    }
  }
  std::vector<double> all;
  for (std::size_t c = 0; c < callers; ++c) {
    if (errors[c]) std::rethrow_exception(errors[c]);
    all.insert(all.end(), samples[c].begin(), samples[c].end());
  }
  std::vector<double> walls;
  for (const auto& batch : spans) {
    const auto first = std::min_element(batch.begin(), batch.end())->first;
    const auto last = std::max_element(batch.begin(), batch.end(), [](const auto& a, const auto& b) {
                        return a.second < b.second;
                      })->second;
    walls.push_back(nanoseconds(last - first) / static_cast<double>(ops * static_cast<std::int64_t>(callers)));
  }
  const std::string shape = fmt::format("{}×{}×{}", callers, plan.batches, ops);
  return {Value{median(std::move(all)), shape}, Value{median(std::move(walls)), shape}};
}

// The floor of N callers: N threads, each doing setns(2) into the net Set and
// back on its own thread, at once. Its wall figure is stored for the next.
template <std::size_t N>
Result floor_setns_net_threads(Context& ctx) {
  const int there = ctx.net.fd(gonso::Kind::net);
  const Concurrent c = measure_concurrent(ctx.plan, N, [there] {
    return [there, here = std::make_shared<Fd>(own_net_namespace())] {
      if (::setns(there, CLONE_NEWNET) != 0) throw_errno("cannot join the net Set");
      if (::setns(here->get(), CLONE_NEWNET) != 0) throw_errno("cannot go back to this thread's net namespace");
    };
  });
  ctx.stored[fmt::format("floor_setns_net_{}threads_wall", N)] = c.wall_per_op;
  return c.per_call;
}

// N callers of one Set at once: the latency each sees when workers are
// contended for, and (stored for the next figure) the throughput.
template <std::size_t N>
Result run_restore_net_callers(Context& ctx) {
  const Concurrent c = measure_concurrent(ctx.plan, N, [&] { return [&] { ctx.net.run(true, noop); }; });
  ctx.stored[fmt::format("run_restore_net_{}callers_wall", N)] = c.wall_per_op;
  return c.per_call;
}

/// A figure measured with the one before it (see Context::stored).
template <const char* Name>
Result stored_figure(Context& ctx) {
  const auto it = ctx.stored.find(Name);
  if (it == ctx.stored.end()) return std::nullopt;
  return it->second;
}

Result floor_thread(Context& ctx) {
  return measure(ctx.plan, [] {
    std::jthread thread(noop);
    thread.join();
  });
}

// What run(false) must at least do: a thread that joins, and its join.
Result floor_thread_setns_net(Context& ctx) {
  const int there = ctx.net.fd(gonso::Kind::net);
  return measure(ctx.plan, [there] {
    std::jthread thread([there] {
      if (::setns(there, CLONE_NEWNET) != 0) throw_errno("cannot join the net Set");  // ends the program
    });
    thread.join();
  });
}

Result run_norestore_net(Context& ctx) {
  return measure(ctx.plan, [&] { ctx.net.run(false, noop); });
}

// A mount namespace is joined only by a thread with root and cwd of its own:
// the floor is that thread's setns(2) in and back.
Result floor_setns_mnt(Context& ctx) {
  const gonso::Set mnt = ctx.base.unshare(gonso::Kind::mnt);
  const int there = mnt.fd(gonso::Kind::mnt);
  Result result;
  std::exception_ptr error;
  std::jthread([&] {
    try {
      if (::unshare(CLONE_FS) != 0) throw_errno("cannot unshare CLONE_FS");
      const Fd here(::open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC));
      if (here.get() < 0) throw_errno("cannot open /proc/thread-self/ns/mnt");
      result = measure(ctx.plan, [&] {
        if (::setns(there, CLONE_NEWNS) != 0) throw_errno("cannot join the mnt Set");
        if (::setns(here.get(), CLONE_NEWNS) != 0) throw_errno("cannot go back to this thread's mount namespace");
      });
    } catch (...) {
      error = std::current_exception();
    }
  }).join();
  if (error) std::rethrow_exception(error);
  return result;
}

Result run_restore_mnt(Context& ctx) {
  const gonso::Set mnt = ctx.base.unshare(gonso::Kind::mnt);
  return measure(ctx.plan, [&] { mnt.run(true, noop); });
}

// A new thread for every run, as every run in a mount namespace had before
// workers with root and cwd of their own were kept.
Result run_norestore_mnt(Context& ctx) {
  const gonso::Set mnt = ctx.base.unshare(gonso::Kind::mnt);
  return measure(ctx.plan, [&] { mnt.run(false, noop); });
}

// What run_in_process must at least do: a child that joins, and its reaping.
Result floor_fork_net(Context& ctx) {
  const int fd = ctx.net.fd(gonso::Kind::net);
  return measure(ctx.plan, [&] {
    const pid_t pid = ::fork();
    if (pid < 0) throw_errno("cannot fork");
    if (pid == 0) ::_exit(::setns(fd, CLONE_NEWNET) == 0 ? 0 : 1);
    expect_success(pid, "a forked child joining the net Set");
  });
}

Result process_run_net(Context& ctx) {
  return measure(ctx.plan, [&] { ctx.net.run_in_process(noop); });
}

// Starting a program, no namespace involved: what spawn must at least cost.
Result floor_spawn_true(Context& ctx) {
  std::string path = "/usr/bin/true";
  std::array<char*, 2> argv{path.data(), nullptr};
  return measure(ctx.plan, [&] {
    pid_t pid = 0;
    if (const int err = ::posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ); err != 0) {
      throw std::system_error(err, std::generic_category(), "cannot posix_spawn /usr/bin/true");
    }
    expect_success(pid, "/usr/bin/true");
  });
}

Result spawn_true_net(Context& ctx) {
  const std::vector<std::string> argv{"/usr/bin/true"};
  return measure(ctx.plan, [&] {
    if (const gonso::ExitStatus status = gonso::spawn(ctx.net, argv).wait(); !status.success()) {
      throw std::runtime_error(fmt::format("/usr/bin/true in the net Set {}", status));
    }
  });
}

// The classic way: nsenter forks and executes itself before the program.
Result nsenter_true_net(Context& ctx) {
  const BoundNamespace bound(ctx.net, gonso::Kind::net, ctx.bound_files);
  std::vector<std::string> argv{"/usr/bin/nsenter", fmt::format("--net={}", bound.file().native()), "/usr/bin/true"};
  return measure(ctx.plan, [&] { fork_exec_wait(argv); });
}

// What Set::unshare does on its worker, done inline; on a thread of its own
// so that the main thread never leaves its namespace, as gonso's caller
// never does.
Result floor_unshare_net(Context& ctx) {
  return on_helper_thread([&] {
    const Fd here = own_net_namespace();
    return measure(ctx.plan, [&] {
      if (::unshare(CLONE_NEWNET) != 0) throw_errno("cannot unshare(CLONE_NEWNET)");
      const Fd fresh = own_net_namespace();
      if (::setns(here.get(), CLONE_NEWNET) != 0) throw_errno("cannot go back to the helper's net namespace");
    });
  });
}

Result unshare_net(Context& ctx) {
  // The new Set is destroyed at once, and its namespace with it.
  return measure(ctx.plan, [&] { (void)ctx.base.unshare(gonso::Kind::net); });
}

Result pool_get_net(Context& ctx) {
  constexpr std::size_t pool_size = 4;
  gonso::Pool pool(ctx.base, gonso::Kind::net, gonso::PoolOptions{.size = pool_size});
  const auto wait_full = [&] {
    if (!pool.wait_ready(std::chrono::milliseconds(10s))) {
      throw std::runtime_error(fmt::format("the pool did not reach {} Sets in 10 s", pool_size));
    }
  };
  // Only get() is timed, one at a time on a full pool: the latency a caller
  // sees while the pool keeps up. Refilling is the pool's background work,
  // whose cost unshare_net shows.
  for (int i = 0; i < ctx.plan.warmup_ops; ++i) {
    wait_full();
    (void)pool.get();
  }
  std::vector<double> samples;
  for (int i = 0; i < ctx.plan.single_samples; ++i) {
    check_interrupted();
    wait_full();
    const auto start = Clock::now();
    const gonso::Set taken = pool.get();
    samples.push_back(nanoseconds(Clock::now() - start));
  }  // each Set is destroyed untimed
  return Value{median(std::move(samples)), fmt::format("{}×1", ctx.plan.single_samples)};
}

// run(true) over n distinct Sets in turn, as a CNI plugin or a monitoring
// agent serving many containers does: each run joins another namespace than
// the last, so any per-Set state gonso might keep is exercised.
Value run_round_robin(Context& ctx, std::size_t n) {
  const std::span<const gonso::Set> sets = ctx.distinct_net_sets(n);
  std::size_t next = 0;
  // One full round first: the batches time the steady state.
  return measure(ctx.plan.with_warmup(static_cast<int>(n)), [&] {
    sets[next].run(true, noop);
    next = (next + 1) % n;
  });
}

Result run_restore_net_1set(Context& ctx) { return run_round_robin(ctx, 1); }
Result run_restore_net_10sets(Context& ctx) { return run_round_robin(ctx, 10); }

Result run_restore_net_1000sets(Context& ctx) {
  // 1000 Sets with a net namespace of their own hold 1000 fds (the kinds they
  // carry are shared): just under the usual 1024, with the fds of the rest.
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) != 0) throw_errno("cannot read RLIMIT_NOFILE");
  files.rlim_cur = files.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &files) != 0) throw_errno("cannot raise RLIMIT_NOFILE");
  // So that threads_at_1000_sets counts what these runs keep, not what the
  // figures before left idle.
  gonso::retire_idle_workers();
  return run_round_robin(ctx, 1000);
}

Result fds_at_1000_sets(Context& ctx) {
  (void)ctx.distinct_net_sets(1000);
  return Value{static_cast<double>(count_open_fds()), {}};
}

// Copying a Set of every kind and dropping the copy: what passing Sets by
// value costs.
Result copy_set(Context& ctx) {
  std::size_t kinds = 0;
  const Value v = measure(ctx.plan, [&] {
    const gonso::Set copy = ctx.base;  // NOLINT(performance-unnecessary-copy-initialization): the copy is the figure
    kinds += copy.kinds().size();
  });
  if (kinds == 0) throw std::logic_error("the copies held nothing");
  return v;
}

Result threads_at_1000_sets(Context& ctx) {
  (void)ctx.distinct_net_sets(1000);
  return Value{static_cast<double>(count_threads()), {}};
}

// Idle workers must cost nothing. The first second lets any spinning after
// the last run stop; the second must then show no CPU time at all.
// The listing figures: the host's namespaces with 10,000 more processes
// alive (20 with --quick), started once for both.
Crowd& crowd(Context& ctx) {
  if (!ctx.crowd) ctx.crowd = std::make_unique<Crowd>(ctx.crowd_size);
  return *ctx.crowd;
}

Result scan_namespaces_10000_procs(Context& ctx) {
  (void)crowd(ctx);
  std::size_t found = 0;
  const Value v = measure(ctx.plan, [&] { found += gonso::scan_namespaces().namespaces.size(); });
  if (found == 0) throw std::logic_error("the scans found no namespace");
  return v;
}

// util-linux lsns -J (every kind, its default columns as JSON), all its
// output read through a pipe, then waited for. Each run lasts seconds, so
// fewer samples are taken than for the other figures.
Result lsns_json_10000_procs(Context& ctx) {
  (void)crowd(ctx);
  std::string path = "/usr/bin/lsns";
  std::string json = "-J";
  std::array<char*, 3> argv{path.data(), json.data(), nullptr};
  std::vector<char> chunk(std::size_t{64} * 1024);
  const auto run = [&] {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw_errno("cannot make a pipe for lsns");
    const Fd read_end(out[0]);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    pid_t pid = 0;
    const int err = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    if (err != 0) throw std::system_error(err, std::generic_category(), "cannot posix_spawn /usr/bin/lsns -J");
    std::size_t total = 0;
    for (ssize_t n; (n = ::read(read_end.get(), chunk.data(), chunk.size())) != 0;) {
      if (n < 0 && errno != EINTR) throw_errno("cannot read the output of lsns -J");
      if (n > 0) total += static_cast<std::size_t>(n);
    }
    expect_success(pid, "lsns -J");
    if (total == 0) throw std::runtime_error("lsns -J printed nothing");
  };
  const int samples = std::min(ctx.plan.single_samples, 11);
  run();  // warmup
  std::vector<double> times;
  for (int i = 0; i < samples; ++i) {
    check_interrupted();
    const auto start = Clock::now();
    run();
    times.push_back(nanoseconds(Clock::now() - start));
  }
  ctx.crowd.reset();  // the last figure that needs them
  return Value{median(std::move(times)), fmt::format("{}×1", samples)};
}

Result idle_cpu_ticks([[maybe_unused]] Context& ctx) {
  std::this_thread::sleep_for(1s);
  const long long before = process_cpu_ticks();
  std::this_thread::sleep_for(1s);
  return Value{static_cast<double>(process_cpu_ticks() - before), {}};
}

// ---------------------------------------------------------------------------
// The registry

/// ns: a median per operation. The others are single readings, not medians.
enum class Unit { ns, fds, threads, ticks };

struct Figure {
  std::string_view name;
  Unit unit;
  std::string_view about;
  Result (*measure)(Context&);
};

// Names of the stored figures, as template arguments.
constexpr char floor_2_wall[] = "floor_setns_net_2threads_wall";
constexpr char run_2_wall[] = "run_restore_net_2callers_wall";
constexpr char floor_4_wall[] = "floor_setns_net_4threads_wall";
constexpr char run_4_wall[] = "run_restore_net_4callers_wall";
constexpr char floor_8_wall[] = "floor_setns_net_8threads_wall";
constexpr char run_8_wall[] = "run_restore_net_8callers_wall";

constexpr std::array figures{
    Figure{"floor_setns_net", Unit::ns, "setns(2) into a net namespace and back, inline", floor_setns_net},
    Figure{"run_restore_net", Unit::ns, "net.run(true, []{}): a kept worker joins and goes back", run_restore_net},
    Figure{"credentials_read", Unit::ns, "every credential of the calling thread, as run(true) reads them",
           credentials_read},
    Figure{"executor_net", Unit::ns, "Executor(net).run([]{}): a thread that stays in the Set", executor_net},
    Figure{"executor_net_unverified", Unit::ns, "the same with verify_each_run = false: no setns at all",
           executor_net_unverified},
    Figure{"run_restore_net_uts_ipc", Unit::ns, "run(true, []{}) in fresh net+uts+ipc", run_restore_net_uts_ipc},
    Figure{"floor_setns_net_2threads", Unit::ns, "2 threads at once, each setns(2) in and back, per op",
           floor_setns_net_threads<2>},
    Figure{"floor_setns_net_2threads_wall", Unit::ns, "the same, wall time over all ops", stored_figure<floor_2_wall>},
    Figure{"run_restore_net_2callers", Unit::ns, "run(true, []{}) from 2 threads at once on one Set, per call",
           run_restore_net_callers<2>},
    Figure{"run_restore_net_2callers_wall", Unit::ns, "the same, wall time over all calls", stored_figure<run_2_wall>},
    Figure{"floor_setns_net_4threads", Unit::ns, "4 threads at once, each setns(2) in and back, per op",
           floor_setns_net_threads<4>},
    Figure{"floor_setns_net_4threads_wall", Unit::ns, "the same, wall time over all ops", stored_figure<floor_4_wall>},
    Figure{"run_restore_net_4callers", Unit::ns, "run(true, []{}) from 4 threads at once on one Set, per call",
           run_restore_net_callers<4>},
    Figure{"run_restore_net_4callers_wall", Unit::ns, "the same, wall time over all calls", stored_figure<run_4_wall>},
    Figure{"floor_setns_net_8threads", Unit::ns, "8 threads at once, each setns(2) in and back, per op",
           floor_setns_net_threads<8>},
    Figure{"floor_setns_net_8threads_wall", Unit::ns, "the same, wall time over all ops", stored_figure<floor_8_wall>},
    Figure{"run_restore_net_8callers", Unit::ns, "run(true, []{}) from 8 threads at once on one Set, per call",
           run_restore_net_callers<8>},
    Figure{"run_restore_net_8callers_wall", Unit::ns, "the same, wall time over all calls", stored_figure<run_8_wall>},
    Figure{"floor_thread", Unit::ns, "std::jthread create + join, empty body", floor_thread},
    Figure{"floor_thread_setns_net", Unit::ns, "std::jthread that setns(2) into the net Set, + join",
           floor_thread_setns_net},
    Figure{"run_norestore_net", Unit::ns, "net.run(false, []{}): a new worker, ended after", run_norestore_net},
    Figure{"floor_setns_mnt", Unit::ns, "setns(2) into a mount namespace and back, on a thread with its own root/cwd",
           floor_setns_mnt},
    Figure{"run_restore_mnt", Unit::ns, "mnt.run(true, []{}): a kept worker with its own root and cwd",
           run_restore_mnt},
    Figure{"run_norestore_mnt", Unit::ns, "mnt.run(false, []{}): a new thread each run, as before mount workers",
           run_norestore_mnt},
    Figure{"floor_fork_net", Unit::ns, "fork, the child setns(2) into the net Set, _exit, waitpid", floor_fork_net},
    Figure{"process_run_net", Unit::ns, "net.run_in_process([]{})", process_run_net},
    Figure{"floor_spawn_true", Unit::ns, "posix_spawn /usr/bin/true + waitpid, no namespace", floor_spawn_true},
    Figure{"spawn_true_net", Unit::ns, "gonso::spawn(net, {\"/usr/bin/true\"}).wait()", spawn_true_net},
    Figure{"nsenter_true_net", Unit::ns, "fork + exec nsenter --net=FILE /usr/bin/true + waitpid", nsenter_true_net},
    Figure{"floor_unshare_net", Unit::ns, "unshare(CLONE_NEWNET) + open, setns(2) back + close, inline",
           floor_unshare_net},
    Figure{"unshare_net", Unit::ns, "Set::unshare(Kind::net), the new Set destroyed", unshare_net},
    Figure{"pool_get_net", Unit::ns, "Pool::get() from a full pool of 4 fresh net Sets", pool_get_net},
    Figure{"run_restore_net_1set", Unit::ns, "run(true, []{}) round-robin over 1 net Set", run_restore_net_1set},
    Figure{"run_restore_net_10sets", Unit::ns, "run(true, []{}) round-robin over 10 net Sets", run_restore_net_10sets},
    Figure{"run_restore_net_1000sets", Unit::ns, "run(true, []{}) round-robin over 1000 net Sets",
           run_restore_net_1000sets},
    Figure{"fds_at_1000_sets", Unit::fds, "open fds, 1000 net Sets alive (copies share the fds they carry)",
           fds_at_1000_sets},
    Figure{"copy_set", Unit::ns, "copy of a Set of every kind, then its destruction", copy_set},
    Figure{"threads_at_1000_sets", Unit::threads, "threads, 1000 net Sets alive, after their runs",
           threads_at_1000_sets},
    Figure{"scan_namespaces_10000_procs", Unit::ns, "gonso::scan_namespaces(), 10,000 more processes alive",
           scan_namespaces_10000_procs},
    Figure{"lsns_json_10000_procs", Unit::ns, "util-linux lsns -J, its output read, 10,000 more processes alive",
           lsns_json_10000_procs},
    Figure{"idle_cpu_ticks", Unit::ticks, "CPU time of this process in 1 s, 1 s after the last run", idle_cpu_ticks},
};

constexpr std::size_t figure_index(std::string_view name) {
  for (std::size_t i = 0; i < figures.size(); ++i) {
    if (figures[i].name == name) return i;
  }
  throw std::logic_error("no such figure");
}

/// A target, as the ratio of two figures of the same run (or one figure as is).
struct Target {
  enum class Bound { at_most, at_least, equal };
  std::size_t measured;
  std::optional<std::size_t> against;
  Bound bound;
  double limit;
};

constexpr Target ratio(std::string_view measured, std::string_view against, Target::Bound bound, double limit) {
  return {figure_index(measured), figure_index(against), bound, limit};
}

constexpr std::array targets{
    ratio("run_restore_net", "floor_setns_net", Target::Bound::at_most, 1.3),
    ratio("run_restore_net_2callers_wall", "floor_setns_net_2threads_wall", Target::Bound::at_most, 1.5),
    ratio("run_restore_net_4callers_wall", "floor_setns_net_4threads_wall", Target::Bound::at_most, 1.5),
    ratio("run_restore_net_8callers_wall", "floor_setns_net_8threads_wall", Target::Bound::at_most, 1.5),
    Target{figure_index("run_restore_net_8callers"), std::nullopt, Target::Bound::at_most, 10'000},
    ratio("executor_net", "floor_setns_net", Target::Bound::at_most, 1),
    ratio("executor_net_unverified", "floor_setns_net", Target::Bound::at_most, 1),
    ratio("run_norestore_net", "floor_thread_setns_net", Target::Bound::at_most, 1.15),
    ratio("run_restore_mnt", "floor_setns_mnt", Target::Bound::at_most, 2),
    ratio("run_norestore_mnt", "run_restore_mnt", Target::Bound::at_least, 5),
    ratio("nsenter_true_net", "process_run_net", Target::Bound::at_least, 10),
    ratio("nsenter_true_net", "spawn_true_net", Target::Bound::at_least, 10),
    // Where the kernel's own cost makes the two above unreachable, what
    // gonso adds to a bare fork or posix_spawn.
    ratio("process_run_net", "floor_fork_net", Target::Bound::at_most, 1.1),
    ratio("spawn_true_net", "floor_spawn_true", Target::Bound::at_most, 1.05),
    ratio("unshare_net", "floor_unshare_net", Target::Bound::at_most, 1.1),
    ratio("pool_get_net", "unshare_net", Target::Bound::at_most, 0.001),
    ratio("run_restore_net_1000sets", "run_restore_net_1set", Target::Bound::at_most, 1.1),
    Target{figure_index("fds_at_1000_sets"), std::nullopt, Target::Bound::at_most, 1100},
    Target{figure_index("idle_cpu_ticks"), std::nullopt, Target::Bound::equal, 0},
    ratio("lsns_json_10000_procs", "scan_namespaces_10000_procs", Target::Bound::at_least, 5),
};

// ---------------------------------------------------------------------------
// Output

std::string human(const Figure& figure, const Result& result) {
  if (!result) return "n/a";
  const double v = result->number;
  switch (figure.unit) {
    case Unit::fds:
      return fmt::format("{:.0f} fds", v);
    case Unit::threads:
      return fmt::format("{:.0f} threads", v);
    case Unit::ticks:
      return fmt::format("{:.0f} ticks", v);
    case Unit::ns:
      break;
  }
  if (v < 1e3) return fmt::format("{:.0f} ns", v);
  if (v < 1e6) return fmt::format("{:.1f} µs", v / 1e3);
  return fmt::format("{:.2f} ms", v / 1e6);
}

std::string machine() {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  const int nproc = ::sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 0;
  std::string model = "unknown CPU";
  std::istringstream cpuinfo(read_text("/proc/cpuinfo"));
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.starts_with("model name")) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  utsname uts{};
  ::uname(&uts);
  return fmt::format("{} CPUs, {}, {} {} {}", nproc, model, uts.sysname, uts.release, uts.machine);
}

std::string build() {
  std::string text = fmt::format("{}, g++ {}", GONSO_BENCH_BUILD_TYPE, __VERSION__);
#ifdef __SANITIZE_ADDRESS__
  text += ", AddressSanitizer";
#endif
#ifdef __SANITIZE_THREAD__
  text += ", ThreadSanitizer";
#endif
  return text;
}

void print_header(const Plan& plan, bool quick) {
  fmt::print("gonso-bench\n");
  fmt::print("machine  {}\n", machine());
  fmt::print("build    {}\n", build());
  if (quick) {
    fmt::print("method   --quick: {} batches of 1 op; checks that every figure runs, measures nothing\n", plan.batches);
  } else {
    fmt::print("method   median over K batches of M ops (shape K×M), M such that a batch lasts ≥ {} ms\n",
               std::chrono::duration_cast<std::chrono::milliseconds>(plan.min_batch).count());
  }
  fmt::print("counts   fds, threads and ticks (1/{} s of CPU) are single readings, not medians\n",
             ::sysconf(_SC_CLK_TCK));
  fmt::print("\n{:<26} {:>10}  {:<10}  {}\n", "figure", "median", "shape", "one op");
}

void print_row(const Figure& figure, const Result& result) {
  const std::string about = result ? std::string(figure.about) : fmt::format("{}: not measured", figure.about);
  fmt::print("{:<26} {:>10}  {:<10}  {}\n", figure.name, human(figure, result), result ? result->shape : "", about);
  std::fflush(stdout);  // rows show up as they are measured, also through a pipe
}

/// A target evaluated on one run's results.
struct Verdict {
  std::string label;  // "measured / against", or the figure alone
  std::string goal;   // "≤ 1.3"
  std::optional<double> value;
  bool met = false;
};

Verdict judge(const Target& t, const std::vector<Result>& results) {
  Verdict v;
  v.label = figures[t.measured].name;
  if (t.against) v.label += fmt::format(" / {}", figures[*t.against].name);
  const char* op = t.bound == Target::Bound::at_most ? "≤" : t.bound == Target::Bound::at_least ? "≥" : "=";
  v.goal = fmt::format("{} {:g}", op, t.limit);
  const Result& measured = results[t.measured];
  const Result* against = t.against ? &results[*t.against] : nullptr;
  if (!measured || (against && !*against)) return v;
  v.value = against ? measured->number / (*against)->number : measured->number;
  v.met = t.bound == Target::Bound::at_most    ? *v.value <= t.limit
          : t.bound == Target::Bound::at_least ? *v.value >= t.limit
                                               : *v.value == t.limit;
  return v;
}

void print_ratios(const std::vector<Result>& results) {
  fmt::print("\ntargets (ratios of figures of this run, or a figure as is)\n");
  for (const Target& t : targets) {
    const Verdict v = judge(t, results);
    if (!v.value) {
      fmt::print("{:<62} {:>8}  {:<8} {}\n", v.label, "n/a", v.goal, "not measured");
      continue;
    }
    const std::string shown = *v.value >= 100 ? fmt::format("{:.0f}", *v.value) : fmt::format("{:.3g}", *v.value);
    fmt::print("{:<62} {:>8}  {:<8} {}\n", v.label, shown, v.goal, v.met ? "met" : "missed");
  }
}

// Figures at the top level, name -> number; the targets under "targets".
void print_json(const std::vector<Result>& results) {
  std::string text = "{";
  const char* separator = "\n";
  for (std::size_t i = 0; i < figures.size(); ++i) {
    if (!results[i]) continue;  // an API not in this build
    const double v = results[i]->number;
    const std::string number = figures[i].unit == Unit::ns ? fmt::format("{:.1f}", v) : fmt::format("{:.0f}", v);
    text += fmt::format("{}  \"{}\": {}", separator, figures[i].name, number);
    separator = ",\n";
  }
  text += fmt::format("{}  \"targets\": [", separator);
  separator = "\n";
  for (const Target& t : targets) {
    const Verdict v = judge(t, results);
    const char* bound = t.bound == Target::Bound::at_most    ? "at_most"
                        : t.bound == Target::Bound::at_least ? "at_least"
                                                             : "equal";
    text += fmt::format(R"({}    {{"target": "{}", "bound": "{}", "limit": {:g}, "value": {}, "met": {}}})", separator,
                        v.label, bound, t.limit, v.value ? fmt::format("{:.4g}", *v.value) : "null", v.met);
    separator = ",\n";
  }
  text += "\n  ]\n}\n";
  fmt::print("{}", text);
}

// ---------------------------------------------------------------------------
// Leaving nothing behind

/// Nsfs mounts among `files` that are still mounted.
std::vector<std::string> still_bound(const std::vector<fs::path>& files) {
  std::vector<std::string> left;
  std::istringstream mountinfo(read_text("/proc/self/mountinfo"));
  for (std::string line; std::getline(mountinfo, line);) {
    // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER"
    std::istringstream fields(line);
    std::string skip, mount_point;
    fields >> skip >> skip >> skip >> skip >> mount_point;
    const auto dash = line.find(" - ");
    if (dash == std::string::npos || !line.substr(dash + 3).starts_with("nsfs ")) continue;
    for (const fs::path& file : files) {
      if (mount_point == file.native()) left.push_back(mount_point);
    }
  }
  return left;
}

/// Ends what gonso keeps and checks that the run left no mount and no
/// process behind. Returns false, having said why, when it did.
bool clean_up(Context& ctx) {
  ctx.crowd.reset();  // after an error or a signal during the listing figures
  gonso::retire_idle_workers();
  bool clean = true;
  for (const std::string& file : still_bound(ctx.bound_files)) {
    fmt::print(stderr, "gonso-bench: left a namespace mounted on {}; unmounting it\n", file);
    ::umount2(file.c_str(), MNT_DETACH);
    clean = false;
  }
  siginfo_t info{};
  if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0) {
    fmt::print(stderr, "gonso-bench: left child processes behind (pid {})\n", info.si_pid);
    clean = false;
  }
  return clean;
}

// ---------------------------------------------------------------------------

struct Options {
  bool quick = false;
  bool json = false;
  bool help = false;
  std::vector<std::string> only;  // --only: these figures alone; the targets of others show n/a
};

constexpr std::string_view usage =
    "usage: gonso-bench [--quick] [--json] [--only FIGURE,...] [--help]\n"
    "  Measures gonso against the system calls and tools it stands for. Run as root.\n"
    "  --quick  tiny counts: runs every figure once or so, measures nothing\n"
    "  --json   print only one JSON object: figure name -> median ns per op (or count),\n"
    "           and \"targets\": each target's ratio, limit and whether it was met\n"
    "  --only   measure only the figures named (comma-separated), e.g.\n"
    "           --only scan_namespaces_10000_procs,lsns_json_10000_procs\n";

std::optional<Options> parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      options.help = true;
    } else if (arg == "--quick") {
      options.quick = true;
    } else if (arg == "--json") {
      options.json = true;
    } else if (arg == "--only" && i + 1 < argc) {
      std::string_view list = argv[++i];
      while (!list.empty()) {
        const std::size_t comma = std::min(list.find(','), list.size());
        const std::string_view name = list.substr(0, comma);
        if (std::none_of(figures.begin(), figures.end(), [&](const Figure& f) { return f.name == name; })) {
          return std::nullopt;
        }
        options.only.emplace_back(name);
        list.remove_prefix(std::min(comma + 1, list.size()));
      }
    } else {
      return std::nullopt;
    }
  }
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  const std::optional<Options> options = parse(argc, argv);
  if (!options) {
    fmt::print(stderr, "{}", usage);
    return 2;
  }
  if (options->help) {
    fmt::print("{}", usage);
    return 0;
  }
  install_signal_handlers();

  Context ctx;
  ctx.plan = options->quick ? quick_plan : full_plan;
  if (options->quick) ctx.crowd_size = 20;
  std::vector<Result> results(figures.size());
  int status = 0;
  int busy_starts = 0;  // figures that began while the machine was busy with other work
  std::string_view current = "setup";
  try {
    ctx.open();
    if (!options->json) print_header(ctx.plan, options->quick);
    for (std::size_t i = 0; i < figures.size(); ++i) {
      current = figures[i].name;
      if (!options->only.empty() &&
          std::find(options->only.begin(), options->only.end(), figures[i].name) == options->only.end()) {
        continue;
      }
      if (!options->quick && !settle()) ++busy_starts;
      results[i] = figures[i].measure(ctx);
      if (!options->json) print_row(figures[i], results[i]);
    }
    if (options->json) {
      print_json(results);
    } else {
      print_ratios(results);
      if (busy_starts > 0) {
        fmt::print("\nnote: {} of {} figures began while the machine was busy with other work; expect noise\n",
                   busy_starts, figures.size());
      }
    }
  } catch (const Interrupted& e) {
    fmt::print(stderr, "gonso-bench: {}\n", e.what());
    status = 128 + e.signal;
  } catch (const std::system_error& e) {
    const bool not_root = e.code() == std::errc::operation_not_permitted;
    fmt::print(stderr, "gonso-bench: {}: {}{}\n", current, e.what(), not_root ? " (run it as root)" : "");
    status = 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "gonso-bench: {}: {}\n", current, e.what());
    status = 1;
  }
  if (!clean_up(ctx) && status == 0) status = 1;
  return status;
}

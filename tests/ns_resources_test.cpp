// Resources made inside a Set and used outside it: fds handed back by
// run_in_process (SCM_RIGHTS), Set::socket and Set::open, /proc/thread-self
// inside run, RunContext::host, and netns names in a folder of the caller's.
// Where a socket or a file lives is asked of the kernel (SIOCGSKNS, fstat,
// `ip -n`), never of gonso.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fault.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/executor.hpp>
#include <gonso/netns.hpp>
#include <gonso/set.hpp>

using gonso::Fd;
using gonso::Kind;
using gonso::Set;

namespace {

// The inode of the network namespace a socket lives in, as the kernel says
// (SIOCGSKNS opens it).
ino_t socket_netns(int sock) {
  const Fd ns(::ioctl(sock, SIOCGSKNS));
  if (!ns) throw std::system_error(errno, std::generic_category(), "SIOCGSKNS");
  struct stat st {};
  if (::fstat(ns.get(), &st) != 0) throw std::system_error(errno, std::generic_category(), "fstat");
  return st.st_ino;
}

// The names of the links a NETLINK_ROUTE socket's namespace has (an
// RTM_GETLINK dump), sorted.
std::vector<std::string> netlink_links(int sock) {
  struct {
    nlmsghdr header;
    ifinfomsg info;
  } request{};
  request.header.nlmsg_len = sizeof request;
  request.header.nlmsg_type = RTM_GETLINK;
  request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  request.header.nlmsg_seq = 1;
  request.info.ifi_family = AF_UNSPEC;
  if (::send(sock, &request, sizeof request, 0) != static_cast<ssize_t>(sizeof request)) {
    throw std::system_error(errno, std::generic_category(), "netlink send");
  }
  std::vector<std::string> names;
  alignas(nlmsghdr) std::array<char, 32768> buf{};
  for (;;) {
    const ssize_t n = ::recv(sock, buf.data(), buf.size(), 0);
    if (n < 0) throw std::system_error(errno, std::generic_category(), "netlink recv");
    auto left = static_cast<unsigned>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_type == NLMSG_DONE) {
        std::sort(names.begin(), names.end());
        return names;
      }
      if (h->nlmsg_type == NLMSG_ERROR) throw std::runtime_error("netlink error reply");
      if (h->nlmsg_type != RTM_NEWLINK) continue;
      auto* info = static_cast<ifinfomsg*>(NLMSG_DATA(h));
      auto attr_left = static_cast<unsigned>(IFLA_PAYLOAD(h));
      for (auto* a = IFLA_RTA(info); RTA_OK(a, attr_left); a = RTA_NEXT(a, attr_left)) {
        if (a->rta_type == IFLA_IFNAME) names.emplace_back(static_cast<const char*>(RTA_DATA(a)));
      }
    }
  }
}

// The link names `ip -n NAME -o link` prints, sorted ("2: d0@NONE: ..." a line).
std::vector<std::string> ip_links(const std::string& netns) {
  std::vector<std::string> names;
  for (const auto& words : test::words_by_line(test::tool_output(fmt::format("ip -n {} -o link 2>&1", netns)))) {
    if (words.size() < 2) continue;
    std::string name = words[1].substr(0, words[1].find_first_of("@:"));
    names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The interface names a /proc/.../net/dev text lists, sorted.
std::vector<std::string> net_dev_names(const std::string& text) {
  std::vector<std::string> names;
  for (const auto& words : test::words_by_line(text)) {
    if (words.empty() || words[0].back() != ':') continue;
    names.push_back(words[0].substr(0, words[0].size() - 1));
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(out.size()))) > 0;) {
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

bool cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

// The errno of the std::system_error `call` throws; 0 when it throws none.
template <typename Call>
int errno_of(Call&& call) {
  try {
    std::forward<Call>(call)();
  } catch (const std::system_error& e) {
    return e.code().value();
  }
  return 0;
}

// Names of the veth pair inside, short enough for IFNAMSIZ; each namespace
// has its own. (veth, not dummy: a container may lack the dummy module.)
constexpr const char* link_prefix = "gonso-v";
constexpr const char* dummy = "gonso-v0";

// A named network namespace made with gonso, with a veth pair added by
// iproute2 and lo up, removed (idempotently) when destroyed.
class NamedNetns {
 public:
  NamedNetns() : name_(fmt::format("{}res{}", test::own_prefix(), counter_++)) {
    set_ = gonso::netns::create(name_);
    const auto made = test::run_tool(fmt::format(
        "ip -n {0} link add {1}0 type veth peer {1}1 2>&1 && ip -n {0} link set lo up 2>&1", name_, link_prefix));
    if (!made.ok()) {
      (void)gonso::netns::remove_if_exists(name_);
      throw std::runtime_error("ip link add: " + made.out);
    }
  }
  NamedNetns(const NamedNetns&) = delete;
  NamedNetns& operator=(const NamedNetns&) = delete;
  ~NamedNetns() { (void)gonso::netns::remove_if_exists(name_); }
  [[nodiscard]] const std::string& name() const { return name_; }
  [[nodiscard]] const Set& set() const { return set_; }

 private:
  static inline int counter_ = 0;
  std::string name_;
  Set set_;
};

}  // namespace

TEST_CASE("Fd owns one fd: moved, released, reset, duplicated close-on-exec", "[fd]") {
  const std::size_t fds = test::count_fds();
  {
    Fd a(::open("/dev/null", O_RDONLY));
    REQUIRE(a.valid());
    const int n = a.get();
    Fd b = std::move(a);
    CHECK_FALSE(a);  // NOLINT(bugprone-use-after-move): the moved-from state is the point
    CHECK(b.get() == n);
    const Fd c = b.duplicate();
    REQUIRE(c);
    CHECK(c.get() != n);
    CHECK(cloexec(c.get()));
    const int raw = b.release();
    CHECK_FALSE(b);
    CHECK(::close(raw) == 0);
    Fd d(::open("/dev/null", O_RDONLY));
    d.reset();
    CHECK_FALSE(d);
  }
  CHECK(test::count_fds() == fds);
  static_assert(!std::is_copy_constructible_v<Fd>);
}

// What run_in_process can hand back, decided at compile time.
struct HoldsAnFd {
  Fd fd;
};
static_assert(gonso::detail::reportable<Fd>);
static_assert(gonso::detail::reportable<std::vector<Fd>>);
static_assert(gonso::detail::reportable<std::pair<Fd, int>>);
static_assert(gonso::detail::reportable<std::tuple<Fd, std::string, double, std::vector<Fd>>>);
static_assert(gonso::detail::reportable<std::pair<int, std::string>>);
static_assert(!gonso::detail::reportable<HoldsAnFd>, "an object owning an fd cannot cross as bytes");
static_assert(!gonso::detail::reportable<std::tuple<Fd, std::vector<int>>>);
static_assert(!gonso::detail::reportable<std::pair<Fd, int*>>);

TEST_CASE("run_in_process hands back fds the child opened, with other values", "[privileged][process][fd]") {
  test::require_privilege();
  const Set here = Set::current();
  const std::size_t fds = test::count_fds();
  {
    // A pipe the child made and wrote into: only a real fd of the caller reads it.
    Fd read_end = here.run_in_process([] {
      int p[2];
      if (::pipe2(p, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
      (void)!::write(p[1], "from the child", 14);
      ::close(p[1]);
      return Fd(p[0]);
    });
    REQUIRE(read_end);
    CHECK(cloexec(read_end.get()));
    char buf[32] = {};
    CHECK(::read(read_end.get(), buf, sizeof buf) == 14);
    CHECK(std::string(buf) == "from the child");

    auto [file, number, text, none] = here.run_in_process([] {
      // A memfd only the child ever had a number for, holding its pid.
      Fd memfd(::memfd_create("gonso-child", MFD_CLOEXEC));
      const std::string pid = std::to_string(::getpid());
      (void)!::write(memfd.get(), pid.data(), pid.size());
      return std::tuple<Fd, int, std::string, Fd>(std::move(memfd), static_cast<int>(::getpid()), "text", Fd());
    });
    REQUIRE(file);
    CHECK_FALSE(none);
    CHECK(text == "text");
    CHECK(test::fd_link(file.get()).rfind("/memfd:gonso-child", 0) == 0);
    CHECK(read_all(file.get()) == std::to_string(number));
    CHECK(number != ::getpid());

    const std::vector<Fd> many = here.run_in_process([] {
      std::vector<Fd> out;
      out.reserve(6);
      for (int i = 0; i < 5; ++i) out.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      out.emplace_back();
      return out;
    });
    REQUIRE(many.size() == 6);
    for (int i = 0; i < 5; ++i) CHECK(test::fd_link(many[static_cast<std::size_t>(i)].get()) == "/dev/null");
    CHECK_FALSE(many[5]);
  }
  CHECK(test::count_fds() == fds);
}

TEST_CASE("run_in_process: a callable that throws after opening fds leaks none", "[privileged][process][fd]") {
  test::require_privilege();
  const std::size_t fds = test::count_fds();
  CHECK_THROWS_AS(Set::current().run_in_process([]() -> Fd { throw std::runtime_error("no"); }), gonso::ProcessError);
  // More fds than one message carries: refused in the child, with a message.
  CHECK_THROWS_WITH(Set::current().run_in_process([] {
    std::vector<Fd> out;
    out.reserve(300);
    for (int i = 0; i < 300; ++i) out.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    return out;
  }),
                    Catch::Contains("cannot send the callable's 300 fds"));
  CHECK(test::count_fds() == fds);
}

TEST_CASE("fds from a child are untrusted: a lying body or stray messages close them all", "[fd]") {
  using gonso::detail::result_reader;
  const std::size_t fds = test::count_fds();
  const auto two_fds = [] {
    std::vector<Fd> v;
    v.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    v.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    return v;
  };
  {
    auto v = two_fds();
    CHECK(errno_of([&] { (void)result_reader("\1", v).read_all<Fd>(); }) == EPROTO);  // one more fd than used
  }
  {
    std::vector<Fd> v;
    CHECK(errno_of([&] { (void)result_reader("\1", v).read_all<Fd>(); }) == EPROTO);  // an fd never sent
  }
  {
    auto v = two_fds();
    CHECK(errno_of([&] { (void)result_reader("\2", v).read_all<Fd>(); }) == EPROTO);  // neither 0 nor 1
  }
  {
    auto v = two_fds();
    const std::string lie("\xff\xff\xff\x7f\1\1", 6);  // a vector far longer than its body
    CHECK(errno_of([&] { (void)result_reader(lie, v).read_all<std::vector<Fd>>(); }) == EPROTO);
  }
  {
    auto v = two_fds();
    CHECK(errno_of([&] { (void)result_reader(std::string("\1\1x", 3), v).read_all<std::pair<Fd, Fd>>(); }) == EPROTO);
  }
  {
    auto v = two_fds();
    const auto pair = result_reader(std::string("\1\1", 2), v).read_all<std::pair<Fd, Fd>>();
    CHECK((pair.first && pair.second));
  }
  // Two messages where one is sent: both sets of fds are closed.
  {
    gonso::detail::fd_channel channel = gonso::detail::make_fd_channel();
    const Fd a(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    REQUIRE(gonso::detail::send_fds(channel.send.get(), {a.get(), a.get()}) == 0);
    REQUIRE(gonso::detail::send_fds(channel.send.get(), {a.get()}) == 0);
    CHECK(errno_of([&] { (void)gonso::detail::receive_fds(channel.receive.get()); }) == EPROTO);
  }
  CHECK(test::count_fds() == fds);
}

TEST_CASE("Set::socket: a netlink socket made inside lists exactly the Set's links", "[privileged][netns][tools]") {
  test::require_privilege();
  test::netns_case([] {
    const test::Snapshot before = test::snapshot();
    const NamedNetns ns;
    const Fd sock = ns.set().socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    REQUIRE(sock);
    CHECK(cloexec(sock.get()));
    CHECK(socket_netns(sock.get()) == ns.set().identity(Kind::net).inode);
    const auto links = netlink_links(sock.get());
    CHECK(links == ip_links(ns.name()));
    CHECK(std::find(links.begin(), links.end(), std::string(dummy)) != links.end());
    // The caller's own socket sees the caller's links: not the dummy.
    const Fd own(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
    const auto host = netlink_links(own.get());
    CHECK(std::find(host.begin(), host.end(), std::string(dummy)) == host.end());
    CHECK(test::snapshot() == before);
  });
}

TEST_CASE("Set::socket: an inet socket bound inside receives a datagram sent inside", "[privileged][netns][tools]") {
  test::require_privilege();
  test::netns_case([] {
    const NamedNetns ns;
    const Fd receiver = ns.set().socket(AF_INET, SOCK_DGRAM);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(receiver.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(receiver.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    CHECK(socket_netns(receiver.get()) == ns.set().identity(Kind::net).inode);
    // The same port is free on the host's loopback: another namespace's.
    const Fd host(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    const int host_bind = ::bind(host.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    if (host_bind != 0) CHECK(errno == EADDRINUSE);  // someone on the host holds it: tells nothing
    const Fd sender = ns.set().socket(AF_INET, SOCK_DGRAM);
    REQUIRE(::sendto(sender.get(), "ping", 4, 0, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 4);
    pollfd wait{receiver.get(), POLLIN, 0};
    REQUIRE(::poll(&wait, 1, 10'000) == 1);
    char buf[8] = {};
    CHECK(::recv(receiver.get(), buf, sizeof buf, 0) == 4);
    CHECK(std::string(buf) == "ping");
  });
}

TEST_CASE("Set::socket rootless: uid 65534 with a user+net Set gets a socket in that namespace",
          "[privileged][process]") {
  test::require_privilege();
  // All in a child that is uid 65534 and no more: the Set's user namespace
  // is then foreign to its process, so the socket comes from a grandchild.
  gonso::ProcessOptions as_nobody;
  as_nobody.user = gonso::Credentials{65534, 65534, std::vector<gid_t>{}};
  const std::string out = Set::current().run_in_process(
      [] {
        const Set inside = Set::current(Kind::user | Kind::net).unshare(Kind::user | Kind::net);
        if (inside.thread_joinable()) return std::string("joinable?");
        const Fd sock = inside.socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
        const Fd dev = inside.open(gonso::thread_proc_path("net/dev"), O_RDONLY);
        std::string text = fmt::format("{} {} {}|", socket_netns(sock.get()) == inside.identity(Kind::net).inode,
                                       fmt::join(netlink_links(sock.get()), ","), ::geteuid());
        return text + fmt::format("{}", fmt::join(net_dev_names(read_all(dev.get())), ","));
      },
      as_nobody);
  CHECK(out == "true lo 65534|lo");
}

TEST_CASE("Set::open opens the file of the Set's mount namespace", "[privileged][process]") {
  test::require_privilege();
  const test::TempDir dir;
  const gonso::Identity caller_mnt = test::thread_ns(Kind::mnt);
  const Set box = Set::current().unshare(Kind::mnt);
  // A tmpfs mounted over the folder inside only (/ is rprivate there).
  const auto seen = box.run_in_process([d = dir.path().string()] {
    if (::mount("tmpfs", d.c_str(), "tmpfs", 0, "size=64k") != 0)
      throw std::system_error(errno, std::generic_category(), "mount");
    const Fd f(::open((d + "/inside").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
    (void)!::write(f.get(), "inside", 6);
    struct stat st {};
    ::fstat(f.get(), &st);
    return std::pair<dev_t, ino_t>(st.st_dev, st.st_ino);
  });
  (void)Set::current().run(true, [] {});  // the pool's own fds, made once
  const std::size_t fds = test::count_fds();
  {
    const Fd f = box.open(dir.path() / "inside", O_RDONLY);
    struct stat st {};
    REQUIRE(::fstat(f.get(), &st) == 0);
    CHECK(std::pair<dev_t, ino_t>(st.st_dev, st.st_ino) == seen);
    CHECK(read_all(f.get()) == "inside");
    CHECK(cloexec(f.get()));
    CHECK_FALSE(std::filesystem::exists(dir.path() / "inside"));  // not the caller's
    // Relative paths start at the namespace's root.
    const Fd root_rel = box.open(dir.path().relative_path() / "inside", O_RDONLY);
    CHECK(read_all(root_rel.get()) == "inside");
    try {
      (void)box.open(dir.path() / "absent", O_RDONLY);
      FAIL("opened a file that is not there");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK_THAT(e.what(), Catch::Contains("absent"));
    }
  }
  CHECK(test::count_fds() == fds);
  CHECK(test::thread_ns(Kind::mnt) == caller_mnt);
}

TEST_CASE("Set::socket and Set::open refuse bad input before starting anything", "[fd]") {
  const Set uts = Set::current(Kind::uts);
  const std::size_t fds = test::count_fds();
  const std::size_t threads = test::count_threads();
  CHECK_THROWS_AS((void)uts.socket(AF_INET, SOCK_DGRAM), std::invalid_argument);
  CHECK_THROWS_AS((void)Set().open("/etc/hostname", O_RDONLY), std::logic_error);
  CHECK_THROWS_AS((void)uts.open(std::string("/etc\0x", 6), O_RDONLY), std::invalid_argument);
  CHECK_THROWS_AS((void)uts.open("", O_RDONLY), std::invalid_argument);
  CHECK_THROWS_AS(gonso::thread_proc_path("/etc"), std::invalid_argument);
  CHECK_THROWS_AS(gonso::thread_proc_path("../1/status"), std::invalid_argument);
  CHECK(test::count_fds() == fds);
  CHECK(test::count_threads() <= threads);
}

TEST_CASE("Set::socket reports socket(2)'s errno", "[privileged][netns]") {
  test::require_privilege();
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  try {
    (void)net.socket(AF_INET, SOCK_STREAM, IPPROTO_UDP);
    FAIL("made a stream socket of UDP");
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == EPROTONOSUPPORT);
    CHECK_THAT(e.what(), Catch::Contains("cannot create a socket"));
  }
}

TEST_CASE("inside run, /proc/thread-self shows the Set's interfaces and /proc/self the host's",
          "[privileged][netns][tools]") {
  test::require_privilege();
  test::netns_case([] {
    const NamedNetns ns;
    const auto [own, main] = ns.set().run(true, [] {
      return std::pair(test::file_text(gonso::thread_proc_path("net/dev")), test::file_text("/proc/self/net/dev"));
    });
    CHECK(net_dev_names(own) == ip_links(ns.name()));
    const auto host = net_dev_names(main);
    CHECK(std::find(host.begin(), host.end(), std::string(dummy)) == host.end());
    CHECK(host == net_dev_names(test::file_text("/proc/self/net/dev")));
  });
}

TEST_CASE("RunContext::host is where the worker came from, usable after the run", "[privileged][netns]") {
  test::require_privilege();
  const gonso::Identity caller = test::thread_ns(Kind::net);
  const Set net = Set::current(Kind::net).unshare(Kind::net);
  for (const bool restore : {true, false}) {
    CAPTURE(restore);
    const auto [host, inside] =
        net.run(restore, [](gonso::RunContext& ctx) { return std::pair(ctx.host(), test::thread_ns(Kind::net)); });
    CHECK(inside == net.identity(Kind::net));
    CHECK(host.identity(Kind::net) == caller);
    CHECK(host.identity(Kind::uts) == test::thread_ns(Kind::uts));
    // Still open after the run: a callable may keep it.
    CHECK(host.run(true, [] { return test::thread_ns(Kind::net); }) == caller);
  }
  CHECK(test::thread_ns(Kind::net) == caller);
}

TEST_CASE("netns in a base folder of the caller's: made, listed, removed twice", "[privileged][netns]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::TempDir tmp;
    const std::filesystem::path base = tmp.path() / "var" / "netns";  // made with its parents
    const std::string name = "ctr0";
    const Set made = gonso::netns::create(name, base);
    struct stat st {};
    REQUIRE(::stat((base / name).c_str(), &st) == 0);
    CHECK(st.st_ino == made.identity(Kind::net).inode);
    CHECK(test::mounts_at((base / name).string()) == 1);
    CHECK(gonso::netns::list(base) == std::vector<std::string>{name});
    CHECK(gonso::netns::open(name, base) == made);
    CHECK_THROWS_AS(gonso::netns::create(name, base), std::system_error);  // taken
    CHECK(gonso::netns::remove_if_exists(name, base));
    CHECK(test::mounts_at((base / name).string()) == 0);
    CHECK_FALSE(std::filesystem::exists(base / name));
    CHECK_FALSE(gonso::netns::remove_if_exists(name, base));  // a repeated CNI DEL
    CHECK_FALSE(gonso::netns::remove_if_exists(name, tmp.path() / "never"));
    try {
      gonso::netns::remove(name, base);
      FAIL("removed a name twice");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
    }
    // The base folder is no mount of gonso's.
    CHECK(test::mounts_at(base.string()) == 0);
  });
}

TEST_CASE("netns base folders: bad ones are refused, symlinks never followed", "[privileged][netns]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::TempDir tmp;
    CHECK_THROWS_AS(gonso::netns::create("x", "relative/netns"), std::invalid_argument);
    CHECK_THROWS_AS(gonso::netns::create("x", tmp.path() / ".." / "netns"), std::invalid_argument);
    CHECK_THROWS_AS(gonso::netns::remove_if_exists("x", "relative"), std::invalid_argument);
    CHECK_THROWS_AS(gonso::netns::list("relative"), std::invalid_argument);
    const std::filesystem::path target = tmp.path() / "target";
    std::filesystem::create_directory(target);
    std::filesystem::create_symlink(target, tmp.path() / "link");
    try {
      (void)gonso::netns::create("x", tmp.path() / "link" / "netns");
      FAIL("followed a symlink in the base folder");
    } catch (const std::system_error& e) {
      CHECK((e.code().value() == ENOTDIR || e.code().value() == ELOOP));
    }
    CHECK(std::filesystem::is_empty(target));
    // A name that the default folder lacks (whatever state /run/netns is in).
    CHECK_FALSE(gonso::netns::remove_if_exists(test::own_prefix() + "never-made"));
  });
}

TEST_CASE("a run_in_process callable cannot read another run's channels", "[privileged][process][fd]") {
  test::require_privilege();
  const Set sandbox = Set::current(Kind::net).unshare(Kind::net);
  const Set victim_set = Set::current(Kind::net).unshare(Kind::net);
  std::atomic<bool> stop{false};
  std::atomic<int> victim_ok{0};
  std::atomic<int> victim_failed{0};
  std::thread victim([&] {
    while (!stop.load()) {
      try {
        const Fd fd = victim_set.run_in_process([] { return Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); });
        ++(fd ? victim_ok : victim_failed);
      } catch (const std::exception&) {
        ++victim_failed;
      }
    }
  });
  // Each callable looks for what it inherited of the caller: Unix sockets
  // and pipes it did not make, and tries to take what is queued on them.
  int taken = 0;
  for (int round = 0; round < 20; ++round) {
    taken += sandbox.run_in_process([] {
      int got = 0;
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
      while (std::chrono::steady_clock::now() < until) {
        for (int fd = 3; fd < 512; ++fd) {
          int type = 0;
          socklen_t len = sizeof type;
          if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_SEQPACKET) {
            alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
            char byte = 0;
            iovec iov{&byte, 1};
            msghdr m{};
            m.msg_iov = &iov;
            m.msg_iovlen = 1;
            m.msg_control = control;
            m.msg_controllen = sizeof control;
            if (::recvmsg(fd, &m, MSG_DONTWAIT) > 0) ++got;
          }
        }
      }
      return got;
    });
  }
  stop.store(true);
  victim.join();
  CHECK(taken == 0);
  CHECK(victim_failed.load() == 0);
  CHECK(victim_ok.load() > 0);
}

TEST_CASE("run_in_process: fds that do not fit the caller's fd table are EMFILE, none left",
          "[privileged][process][fd]") {
  test::require_privilege();
  const Set here = Set::current();
  const std::size_t fds = test::count_fds();
  {
    const test::FdLimit limit(12);  // room for the channels, not for 100 fds more
    try {
      (void)here.run_in_process([] {
        std::vector<Fd> out;
        out.reserve(100);
        for (int i = 0; i < 100; ++i) out.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
        return out;
      });
      FAIL("100 fds fit a table with room for 12");
    } catch (const std::system_error& e) {
      CHECK(e.code().value() == EMFILE);
    }
  }
  CHECK(test::count_fds() == fds);
}

TEST_CASE("RunContext::host is the calling thread's, on an Executor and in a nested run too", "[privileged][netns]") {
  test::require_privilege();
  const gonso::Identity caller = test::thread_ns(Kind::net);
  const Set a = Set::current(Kind::net).unshare(Kind::net);
  const Set b = Set::current(Kind::net).unshare(Kind::net);
  const gonso::Executor in_a(a);
  CHECK(in_a.run([](gonso::RunContext& ctx) { return ctx.host(Kind::net).identity(Kind::net); }) == caller);
  // Called from inside a, the host of a run in b is a, whichever worker runs it.
  for (int i = 0; i < 2; ++i) {
    const gonso::Identity host = a.run(true, [&] {
      return b.run(true, [](gonso::RunContext& ctx) { return ctx.host(Kind::net).identity(Kind::net); });
    });
    CHECK(host == a.identity(Kind::net));
  }
  CHECK(test::thread_ns(Kind::net) == caller);
}

TEST_CASE("netns in a base folder: open and list follow no symlink, and open no FIFO", "[privileged][netns]") {
  test::require_privilege();
  test::leaves_machine_as_found([] {
    const test::TempDir tmp;
    const std::filesystem::path base = tmp.path() / "netns";
    const Set made = gonso::netns::create("ctr0", base);
    std::filesystem::create_directory_symlink(base, tmp.path() / "link");
    CHECK(errno_of([&] { (void)gonso::netns::open("ctr0", tmp.path() / "link"); }) == ENOTDIR);
    CHECK(errno_of([&] { (void)gonso::netns::list(tmp.path() / "link"); }) == ENOTDIR);
    // A name that is a symlink to another namespace file is not followed.
    std::filesystem::create_symlink("/proc/self/ns/net", base / "alias");
    CHECK(errno_of([&] { (void)gonso::netns::open("alias", base); }) == EINVAL);  // the link itself: no namespace
    REQUIRE(::mkfifo((base / "fifo").c_str(), 0600) == 0);
    CHECK(errno_of([&] { (void)gonso::netns::open("fifo", base); }) == EINVAL);  // and returns at once
    CHECK(gonso::netns::open("ctr0", base) == made);
    ::unlink((base / "alias").c_str());
    ::unlink((base / "fifo").c_str());
    CHECK(gonso::netns::remove_if_exists("ctr0", base));
  });
}

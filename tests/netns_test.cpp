// Named network namespaces under /run/netns, against iproute2 (`ip netns`)
// and util-linux (`lsns`) in both directions: what one makes, the other
// sees. The tools run through popen(3), not through gonso, and identities are
// compared with stat(2) of the files. Every case leaves /run/netns, `ip netns
// list` and the mount table as it found them, also when it fails.
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/attackers.hpp"
#include "support/baseline.hpp"
#include "support/cases.hpp"
#include "support/fixtures.hpp"
#include "support/kernel_view.hpp"
#include "support/mounts.hpp"
#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/netns.hpp>
#include <gonso/persist.hpp>
#include <gonso/spawn.hpp>

using gonso::Kind;
using gonso::Kinds;
using gonso::Set;

namespace {

const std::string run_netns = gonso::netns::directory;  // NOLINT(cert-err58-cpp): a test file's constant

// A name under /run/netns unique to this test process and case,
// "gonso-test-<pid>-<n>" (padded with 'x' to `length` when given). Whatever
// is on /run/netns/NAME when it is destroyed, made by gonso or by `ip netns
// add`, is unmounted and removed.
class NetnsName {
 public:
  explicit NetnsName(std::size_t length = 0) : name_(fmt::format("{}{}", test::own_prefix(), counter_++)) {
    if (name_.size() < length) name_.append(length - name_.size(), 'x');
  }
  NetnsName(const NetnsName&) = delete;
  NetnsName& operator=(const NetnsName&) = delete;
  ~NetnsName() {
    const std::string file = path();
    while (::umount2(file.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0) {
    }
    ::unlink(file.c_str());
  }
  [[nodiscard]] const std::string& str() const { return name_; }
  [[nodiscard]] std::string path() const { return run_netns + "/" + name_; }

 private:
  static inline std::atomic<int> counter_{0};
  std::string name_;
};

// The names `ip netns list` shows, sorted ("NAME" or "NAME (id: N)" a line).
std::vector<std::string> ip_netns_names() {
  std::vector<std::string> names;
  for (const auto& words : test::words_by_line(test::tool_output("ip netns list 2>&1"))) {
    if (!words.empty()) names.push_back(words[0]);
  }
  std::sort(names.begin(), names.end());
  return names;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// What `ip netns exec NAME readlink /proc/self/ns/net` prints.
std::string ip_exec_net_link(const std::string& name) {
  return test::tool_output(fmt::format("ip netns exec {} readlink /proc/self/ns/net 2>&1", name));
}

// What a namespace link reads, from (device, inode) of a file, with stat(2).
std::string net_link_of_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw std::system_error(errno, std::generic_category(), "stat " + path);
  return fmt::format("net:[{}]", st.st_ino);
}
bool same_file(const gonso::Identity& id, const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && st.st_dev == id.device && st.st_ino == id.inode;
}

}  // namespace

TEST_CASE("iproute2 to gonso: `ip netns add X`, then gonso opens X and runs inside it", "[netns][privileged][tools]") {
  test::require_privilege();
  test::netns_case([] {
    const NetnsName x;
    const auto added = test::run_tool(fmt::format("ip netns add {} 2>&1", x.str()));
    INFO(added.out);
    REQUIRE(added.ok());

    const Set opened = gonso::netns::open(x.str());
    CHECK(opened.kinds() == Kinds(Kind::net));
    CHECK(opened.identity(Kind::net).id != 0);
    CHECK(same_file(opened.identity(Kind::net), x.path()));
    CHECK(opened.identity(Kind::net) != test::identity_at(Kind::net, "/proc/self/ns/net"));

    // Inside, the thread's own link: stat(2), not gonso.
    const gonso::Identity inside = opened.run(true, [] { return test::thread_ns(Kind::net); });
    const std::string ip_says = ip_exec_net_link(x.str());
    CHECK(ip_says == fmt::format("net:[{}]\n", inside.inode));
    CHECK(ip_says == net_link_of_file(x.path()) + "\n");
    CHECK(inside == opened.identity(Kind::net));

    // `ip netns delete` undoes it; gonso then finds no such name.
    REQUIRE(test::run_tool(fmt::format("ip netns delete {} 2>&1", x.str())).ok());
    const auto e = test::system_error_of([&] { (void)gonso::netns::open(x.str()); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);
  });
}

TEST_CASE("gonso to iproute2: netns::create(Y) is listed and entered by `ip netns`, and remove(Y) unlists it",
          "[netns][privileged][tools]") {
  test::require_privilege();
  test::netns_case([] {
    const NetnsName y;
    const Set created = gonso::netns::create(y.str());
    CHECK(created.kinds() == Kinds(Kind::net));
    const gonso::Identity id = created.identity(Kind::net);
    CHECK(id.id != 0);
    CHECK(id != test::identity_at(Kind::net, "/proc/self/ns/net"));
    CHECK(same_file(id, y.path()));
    CHECK(test::nsfs_mounts_at(y.path()) == std::vector<std::string>{fmt::format("net:[{}]", id.inode)});

    CHECK(contains(ip_netns_names(), y.str()));
    CHECK(ip_exec_net_link(y.str()) == fmt::format("net:[{}]\n", id.inode));
    // A fresh namespace: `ip netns exec` sees its loopback and nothing else.
    const auto links = test::words_by_line(test::tool_output(fmt::format("ip netns exec {} ip -o link", y.str())));
    REQUIRE(links.size() == 1);
    CHECK(links[0].size() > 1);
    CHECK(links[0].at(1) == "lo:");
    CHECK(gonso::netns::open(y.str()) == created);

    // Taken: a second create fails and the first namespace keeps the name.
    auto e = test::system_error_of([&] { (void)gonso::netns::create(y.str()); });
    CHECK(e.code() == std::errc::file_exists);
    CHECK(ip_exec_net_link(y.str()) == fmt::format("net:[{}]\n", id.inode));

    gonso::netns::remove(y.str());
    CHECK_FALSE(contains(ip_netns_names(), y.str()));
    CHECK_FALSE(std::filesystem::exists(y.path()));
    CHECK(test::nsfs_mounts_at(y.path()).empty());
    CHECK_FALSE(test::run_tool(fmt::format("ip netns exec {} true 2>&1", y.str())).ok());
    // The namespace itself lives on while the Set holds it.
    CHECK(created.run(true, [] { return test::thread_ns(Kind::net); }) == id);

    // Deleting twice: the second time there is no such name.
    e = test::system_error_of([&] { gonso::netns::remove(y.str()); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);
  });
}

TEST_CASE("netns::list() names what `ip netns list` shows", "[netns][privileged][tools]") {
  test::require_privilege();
  test::netns_case([] {
    const NetnsName a, b, by_ip;
    (void)gonso::netns::create(a.str());
    (void)gonso::netns::create(b.str());
    REQUIRE(test::run_tool(fmt::format("ip netns add {} 2>&1", by_ip.str())).ok());

    const std::vector<std::string> listed = gonso::netns::list();
    CHECK(std::is_sorted(listed.begin(), listed.end()));
    CHECK(listed == ip_netns_names());
    CHECK(listed == test::netns_entries());
    for (const NetnsName* n : {&a, &b, &by_ip}) CHECK(contains(listed, n->str()));

    gonso::netns::remove(a.str());
    REQUIRE(test::run_tool(fmt::format("ip netns delete {} 2>&1", by_ip.str())).ok());
    const std::vector<std::string> after = gonso::netns::list();
    CHECK(after == ip_netns_names());
    CHECK_FALSE(contains(after, a.str()));
    CHECK_FALSE(contains(after, by_ip.str()));
    CHECK(contains(after, b.str()));
    gonso::netns::remove(b.str());
  });
}

TEST_CASE("netns::add() names a namespace that exists already", "[netns][privileged][tools]") {
  test::require_privilege();
  test::netns_case([] {
    const NetnsName first, second;
    const Set existing = Set::current(Kind::net).unshare(Kind::net);
    const gonso::Identity id = existing.identity(Kind::net);

    gonso::netns::add(existing, first.str());
    gonso::netns::add(existing, second.str());  // one namespace, two names
    for (const NetnsName* n : {&first, &second}) {
      INFO(n->str());
      CHECK(contains(ip_netns_names(), n->str()));
      CHECK(ip_exec_net_link(n->str()) == fmt::format("net:[{}]\n", id.inode));
      CHECK(same_file(id, n->path()));
      CHECK(gonso::netns::open(n->str()) == existing);
    }
    // A name that is taken: EEXIST, and it still names the same namespace.
    const Set other = Set::current(Kind::net).unshare(Kind::net);
    const auto e = test::system_error_of([&] { gonso::netns::add(other, first.str()); });
    CHECK(e.code() == std::errc::file_exists);
    CHECK(ip_exec_net_link(first.str()) == fmt::format("net:[{}]\n", id.inode));
    // A Set without a network namespace: refused, no name made.
    const NetnsName unused;
    CHECK_THROWS_AS(gonso::netns::add(Set::current(Kind::uts), unused.str()), std::invalid_argument);
    CHECK_FALSE(std::filesystem::exists(unused.path()));

    gonso::netns::remove(first.str());
    gonso::netns::remove(second.str());
    CHECK_FALSE(contains(ip_netns_names(), first.str()));
    CHECK_FALSE(contains(ip_netns_names(), second.str()));
  });
}

TEST_CASE("netns: bad names are refused before anything is touched", "[netns]") {
  test::netns_case([] {
    const std::string escape = test::own_prefix() + "escaped";
    const std::vector<std::string> bad = {
        "",
        ".",
        "..",
        "a/b",
        "/",
        "../" + escape,
        escape + "/..",
        "/etc",
        std::string("gonso\0evil", 10),
        std::string(1, '\0'),
        std::string(256, 'n'),
        std::string(300, 'n'),
    };
    const std::vector<std::string> before = test::netns_entries();
    const bool dir_existed = std::filesystem::exists(run_netns);
    const Set here = Set::current(Kind::net);
    for (const std::string& name : bad) {
      INFO(fmt::format("name {:?} ({} bytes)", name, name.size()));
      CHECK_THROWS_AS(gonso::netns::check_name(name), std::invalid_argument);
      CHECK_THROWS_AS(gonso::netns::path(name), std::invalid_argument);
      CHECK_THROWS_AS(gonso::netns::create(name), std::invalid_argument);
      CHECK_THROWS_AS(gonso::netns::add(here, name), std::invalid_argument);
      CHECK_THROWS_AS(gonso::netns::open(name), std::invalid_argument);
      CHECK_THROWS_AS(gonso::netns::remove(name), std::invalid_argument);
    }
    CHECK(test::netns_entries() == before);
    CHECK(std::filesystem::exists(run_netns) == dir_existed);
    CHECK_FALSE(std::filesystem::exists("/run/" + escape));
    // The message says what is wrong with it.
    CHECK_THROWS_WITH(gonso::netns::create("a/b"), Catch::Contains("'/'"));
    CHECK_THROWS_WITH(gonso::netns::create(std::string(300, 'n')), Catch::Contains("255"));
  });
}

TEST_CASE("netns: the longest name that fits, 255 bytes, is a good one", "[netns][privileged][tools]") {
  test::require_privilege();
  test::netns_case([] {
    const NetnsName longest(255);
    REQUIRE(longest.str().size() == 255);
    const Set created = gonso::netns::create(longest.str());
    CHECK(contains(ip_netns_names(), longest.str()));
    CHECK(contains(gonso::netns::list(), longest.str()));
    CHECK(gonso::netns::open(longest.str()) == created);
    gonso::netns::remove(longest.str());
    CHECK_FALSE(contains(ip_netns_names(), longest.str()));
  });
}

TEST_CASE("netns: unknown names, files that are no network namespace, deleting twice", "[netns][privileged]") {
  test::require_privilege();
  test::netns_case([] {
    const NetnsName missing;
    auto e = test::system_error_of([&] { (void)gonso::netns::open(missing.str()); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    CHECK_THAT(e.what(), Catch::Contains(missing.str()));
    e = test::system_error_of([&] { gonso::netns::remove(missing.str()); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    CHECK_FALSE(std::filesystem::exists(missing.path()));

    const NetnsName twice;
    (void)gonso::netns::create(twice.str());
    gonso::netns::remove(twice.str());
    e = test::system_error_of([&] { gonso::netns::remove(twice.str()); });
    CHECK(e.code() == std::errc::no_such_file_or_directory);

    // A regular file under /run/netns: not a namespace, and remove leaves it.
    const NetnsName regular;
    std::ofstream(regular.path()) << "not a namespace";
    e = test::system_error_of([&] { (void)gonso::netns::open(regular.str()); });
    CHECK(e.code() == std::errc::invalid_argument);
    e = test::system_error_of([&] { gonso::netns::remove(regular.str()); });
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK(std::filesystem::is_regular_file(regular.path()));

    // A namespace of another kind under a name: not a network namespace.
    const NetnsName uts;
    gonso::persist(Set::current(Kind::uts).unshare(Kind::uts), Kind::uts, uts.path());
    e = test::system_error_of([&] { (void)gonso::netns::open(uts.str()); });
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("it is a uts namespace"));
  });
}

TEST_CASE("util-linux: `lsns -t net` lists gonso's named namespace", "[netns][privileged][tools]") {
  test::require_privilege();
  test::netns_case([] {
    const NetnsName name;
    const Set created = gonso::netns::create(name.str());
    const std::string inode = std::to_string(created.identity(Kind::net).inode);
    // lsns finds namespaces through processes (util-linux 2.38): one sits in
    // it. Its NSFS column then names the file under /run/netns.
    gonso::Child sleeper = gonso::spawn(created, {"sleep", "60"});
    const std::string listed = test::tool_output("lsns -t net -n -o NS,NSFS");
    INFO(listed);
    bool found = false;
    for (const auto& words : test::words_by_line(listed)) {
      if (!words.empty() && words[0] == inode) {
        found = true;
        CHECK(words.size() == 2);
        CHECK(words.back() == name.path());
      }
    }
    CHECK(found);
    CHECK_THAT(test::tool_output("lsns -t net -n -o NS"), Catch::Contains(inode));
    sleeper.kill(SIGKILL);
    CHECK(sleeper.wait().signal() == SIGKILL);
    gonso::netns::remove(name.str());
  });
}

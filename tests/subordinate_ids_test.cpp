// Subordinate ids (UnshareOptions::subordinate_ids): a user made for the test
// with ranges in /etc/subuid and /etc/subgid (by name and by number) makes a
// user namespace rootless, through newuidmap and newgidmap; root writes the
// same maps itself. What was mapped is read from the kernel inside the new
// namespace (/proc/self/uid_map) and compared with the files as this test
// reads them, never through gonso's parser.
#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include "support/privilege.hpp"
#include "support/tools.hpp"

#include <gonso/detail/process/subordinate_ids.hpp>
#include <gonso/set.hpp>

using gonso::IdRange;
using gonso::Kind;
using gonso::Set;

namespace {

constexpr const char* user_name = "gonso-subid-test";
// Ranges far from what useradd hands out (100000 up), so that a leftover
// line of a crashed run is recognised by its start alone.
constexpr std::uint32_t uid_by_name = 1610612736;    // count 100, owner named
constexpr std::uint32_t uid_by_number = 1610613736;  // count 50, owner as decimal uid
constexpr std::uint32_t gid_by_name = 1610614736;    // count 100
constexpr std::uint32_t gid_by_number = 1610615736;  // count 20
constexpr std::uint32_t our_firsts[] = {uid_by_name, uid_by_number, gid_by_name, gid_by_number};

std::string whole_file(const char* path) { return test::file_text(path); }

/// Rewrites `path` in place (same inode and mode) without the lines whose
/// owner is `name` or `uid`, or that start one of this test's ranges.
void drop_lines(const char* path, const std::string& name, long uid) {
  std::istringstream in(whole_file(path));
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    const std::string owner = line.substr(0, line.find(':'));
    bool ours = owner == name || (uid >= 0 && owner == std::to_string(uid));
    for (const std::uint32_t first : our_firsts) {
      ours = ours || line.find(fmt::format(":{}:", first)) != std::string::npos;
    }
    if (!ours) kept += line + "\n";
  }
  std::ofstream out(path, std::ios::trunc);
  out << kept;
}

void append(const char* path, const std::string& text) {
  std::ofstream out(path, std::ios::app);
  out << text;
  if (!out) FAIL("cannot append to " << path);
}

long uid_of(const char* name) {
  const passwd* pw = ::getpwnam(name);
  return pw == nullptr ? -1 : static_cast<long>(pw->pw_uid);
}

/// The test user, with two uid and two gid ranges (one line naming it, one
/// its uid), removed with its lines however the test ends. A leftover of a
/// crashed run is removed first.
struct TestUser {
  uid_t uid = 0;
  gid_t gid = 0;
  TestUser() {
    remove();
    const test::ToolResult made = test::run_tool(
        fmt::format("useradd --system --no-create-home --user-group --shell /usr/sbin/nologin {} 2>&1", user_name));
    if (!made.ok()) FAIL("useradd " << user_name << ": " << made.out);
    const passwd* pw = ::getpwnam(user_name);
    if (pw == nullptr) FAIL("no passwd entry for " << user_name << " after useradd");
    uid = pw->pw_uid;
    gid = pw->pw_gid;
    append("/etc/subuid", fmt::format("{}:{}:100\n{}:{}:50\n", user_name, uid_by_name, uid, uid_by_number));
    append("/etc/subgid", fmt::format("{}:{}:100\n{}:{}:20\n", user_name, gid_by_name, uid, gid_by_number));
  }
  TestUser(const TestUser&) = delete;
  TestUser& operator=(const TestUser&) = delete;
  ~TestUser() { remove(); }

  static void remove() {
    const long old = uid_of(user_name);
    drop_lines("/etc/subuid", user_name, old);
    drop_lines("/etc/subgid", user_name, old);
    if (old >= 0) (void)test::run_tool(fmt::format("userdel {} 2>&1", user_name));
  }
};

/// (inside, outside, count) lines of a kernel id map or of an expectation.
using Lines = std::vector<std::vector<std::string>>;

Lines map_lines(const std::string& text) {
  Lines out;
  for (auto& words : test::words_by_line(text)) {
    if (!words.empty()) out.push_back(std::move(words));
  }
  return out;
}

Lines lines_of(const std::vector<IdRange>& map) {
  Lines out;
  for (const IdRange& r : map)
    out.push_back({std::to_string(r.inside), std::to_string(r.outside), std::to_string(r.count)});
  return out;
}

/// What the file grants `name` (or `uid`), in order: (first, count).
std::vector<std::pair<std::uint32_t, std::uint32_t>> granted(const char* path, const std::string& name, uid_t uid) {
  std::vector<std::pair<std::uint32_t, std::uint32_t>> out;
  std::istringstream in(whole_file(path));
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string owner, first, count;
    if (!std::getline(fields, owner, ':') || !std::getline(fields, first, ':') || !std::getline(fields, count))
      continue;
    if (owner == name || owner == std::to_string(uid)) {
      out.emplace_back(static_cast<std::uint32_t>(std::stoul(first)), static_cast<std::uint32_t>(std::stoul(count)));
    }
  }
  return out;
}

/// The map every granted range makes, packed from 1 (self at 0) or from 0.
Lines packed(const char* path, const std::string& name, uid_t uid, bool self_as_root, std::uint32_t self) {
  std::vector<IdRange> map;
  std::uint32_t next = 0;
  if (self_as_root) map.push_back({next++, self, 1});
  for (const auto& [first, count] : granted(path, name, uid)) {
    map.push_back({next, first, count});
    next += count;
  }
  return lines_of(map);
}

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

/// What the process left behind: "" or a complaint about fds or children.
std::string leftovers(std::size_t fds_before) {
  std::string out;
  const std::size_t fds = open_fds();
  if (fds != fds_before) out += fmt::format("fds {} -> {}; ", fds_before, fds);
  const std::string children = whole_file(fmt::format("/proc/self/task/{}/children", ::getpid()).c_str());
  if (!children.empty()) out += "children left: " + children;
  return out;
}

/// What a rootless attempt ended in, as text: the namespace's maps and
/// setgroups, or the exception, then what it left behind.
struct Outcome {
  std::string uid_map;
  std::string gid_map;
  std::string setgroups;
  std::string error;  // "ENOENT: ..." style, or empty
  std::string left;   // leftovers(), empty when clean
};

std::string encode(const Outcome& o) {
  return fmt::format("{}\x1f{}\x1f{}\x1f{}\x1f{}", o.uid_map, o.gid_map, o.setgroups, o.error, o.left);
}
Outcome decode(const std::string& text) {
  Outcome o;
  std::vector<std::string> parts;
  std::size_t at = 0;
  for (std::size_t sep; (sep = text.find('\x1f', at)) != std::string::npos; at = sep + 1) {
    parts.push_back(text.substr(at, sep - at));
  }
  parts.push_back(text.substr(at));
  if (parts.size() != 5) FAIL("child said: " << text);
  o.uid_map = parts[0];
  o.gid_map = parts[1];
  o.setgroups = parts[2];
  o.error = parts[3];
  o.left = parts[4];
  return o;
}

/// In a child running as `who` (nullopt: as root), with `prepare` run first
/// (hooks, in that single-threaded child only): Set::unshare(user | net)
/// with `ids`, then the new namespace's maps as the kernel shows them inside.
Outcome attempt(std::optional<gonso::Credentials> who, const gonso::SubordinateIds& ids,
                const std::function<void()>& prepare = {}) {
  gonso::ProcessOptions po;
  po.user = std::move(who);
  po.timeout = std::chrono::seconds(30);
  const std::string said = Set::current().run_in_process(
      [&] {
        if (prepare) prepare();
        Outcome o;
        const std::size_t fds = open_fds();
        try {
          gonso::UnshareOptions opts;
          opts.subordinate_ids = ids;
          const Set made = Set::current().unshare(Kind::user | Kind::net, opts);
          const std::string inside = made.run_in_process([] {
            return test::file_text("/proc/self/uid_map") + "\x1f" + test::file_text("/proc/self/gid_map") + "\x1f" +
                   test::file_text("/proc/self/setgroups");
          });
          const std::size_t a = inside.find('\x1f');
          const std::size_t b = inside.find('\x1f', a + 1);
          o.uid_map = inside.substr(0, a);
          o.gid_map = inside.substr(a + 1, b - a - 1);
          o.setgroups = inside.substr(b + 1);
        } catch (const std::system_error& e) {
          o.error = fmt::format("{}: {}", e.code().value(), e.what());
        } catch (const std::invalid_argument& e) {
          o.error = fmt::format("invalid_argument: {}", e.what());
        }
        o.left = leftovers(fds);
        return encode(o);
      },
      po);
  return decode(said);
}

gonso::Credentials as(const TestUser& u) { return gonso::Credentials{u.uid, u.gid, std::vector<gid_t>{}}; }

}  // namespace

TEST_CASE("subordinate ids: every granted range mapped by newuidmap and newgidmap",
          "[privileged][process][rootless][subids]") {
  test::require_privilege();
  const TestUser user;
  // Both layouts in one case (not SECTIONs, whose bodies would assert nothing).
  for (const bool self_as_root : {true, false}) {
    CAPTURE(self_as_root);  // true: own ids as root, then the ranges; false: the ranges from 0 up
    gonso::SubordinateIds ids;
    ids.map_self_as_root = self_as_root;
    const Outcome o = attempt(as(user), ids);
    INFO(o.error);
    REQUIRE(o.error.empty());
    CHECK(o.left.empty());
    // One line naming the user and one its uid, in each file.
    CHECK(granted("/etc/subuid", user_name, user.uid).size() == 2);
    CHECK(map_lines(o.uid_map) == packed("/etc/subuid", user_name, user.uid, ids.map_self_as_root, user.uid));
    CHECK(map_lines(o.gid_map) == packed("/etc/subgid", user_name, user.uid, ids.map_self_as_root, user.gid));
    // Subordinate gids are mapped: newgidmap leaves setgroups(2) allowed.
    CHECK(o.setgroups == "allow\n");
  }
}

TEST_CASE("subordinate ids: explicit ranges within the granted ones", "[privileged][process][rootless][subids]") {
  test::require_privilege();
  const TestUser user;
  gonso::SubordinateIds ids;
  ids.uid_ranges = {{1, uid_by_name + 10, 5}, {6, uid_by_number, 50}};
  ids.gid_ranges = {{1000, gid_by_number + 19, 1}};
  const Outcome o = attempt(as(user), ids);
  INFO(o.error);
  REQUIRE(o.error.empty());
  CHECK(o.left.empty());
  std::vector<IdRange> uids{{0, user.uid, 1}};
  uids.insert(uids.end(), ids.uid_ranges.begin(), ids.uid_ranges.end());
  std::vector<IdRange> gids{{0, user.gid, 1}};
  gids.insert(gids.end(), ids.gid_ranges.begin(), ids.gid_ranges.end());
  CHECK(map_lines(o.uid_map) == lines_of(uids));
  CHECK(map_lines(o.gid_map) == lines_of(gids));
}

TEST_CASE("subordinate ids: a range outside the granted ones starts nothing",
          "[privileged][process][rootless][subids]") {
  test::require_privilege();
  const TestUser user;
  // Wholly outside, and running past a granted range.
  for (const IdRange& range : {IdRange{1, 500000, 10}, IdRange{1, uid_by_number + 40, 11}}) {
    CAPTURE(range.outside, range.count);
    gonso::SubordinateIds ids;
    ids.uid_ranges = {range};
    const Outcome o = attempt(as(user), ids);
    CHECK_THAT(o.error, Catch::Contains("invalid_argument: subordinate uid range") &&
                            Catch::Contains("lies outside the ranges /etc/subuid grants user gonso-subid-test"));
    CHECK_THAT(o.error, Catch::Contains(fmt::format("{}-{}", range.outside, range.outside + range.count - 1)));
    CHECK(o.left.empty());
  }
}

TEST_CASE("subordinate ids: a user the files grant nothing", "[privileged][process][rootless][subids]") {
  test::require_privilege();
  const passwd* nobody = ::getpwnam("nobody");
  REQUIRE(nobody != nullptr);
  REQUIRE(granted("/etc/subuid", "nobody", nobody->pw_uid).empty());
  const Outcome o = attempt(gonso::Credentials{nobody->pw_uid, nobody->pw_gid, std::vector<gid_t>{}}, {});
  CHECK(o.error == fmt::format("{}: cannot map subordinate ids: /etc/subuid grants user nobody (uid {}) no "
                               "subordinate uids: {}",
                               ENOENT, nobody->pw_uid, std::strerror(ENOENT)));
  CHECK(o.left.empty());
}

TEST_CASE("subordinate ids: no helper where gonso looks", "[privileged][process][rootless][subids]") {
  test::require_privilege();
  const TestUser user;
  char dir[] = "/tmp/gonso-subids-empty-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  ::chmod(dir, 0755);
  const Outcome o = attempt(as(user), {}, [&] { gonso::detail::subordinate_id_places().helper_dirs = dir; });
  ::rmdir(dir);
  CHECK(o.error == fmt::format("{}: cannot map subordinate ids: newuidmap not found (Debian package uidmap): {}",
                               ENOENT, std::strerror(ENOENT)));
  CHECK(o.left.empty());
}

TEST_CASE("subordinate ids: the helper's refusal comes back with its status and words",
          "[privileged][process][rootless][subids]") {
  test::require_privilege();
  const TestUser user;
  // newuidmap takes only a caller whose real gid is its passwd entry's.
  const Outcome o = attempt(gonso::Credentials{user.uid, 65534, std::vector<gid_t>{}}, {});
  CHECK_THAT(o.error, Catch::StartsWith(fmt::format("{}: cannot map subordinate ids: /usr/bin/newuidmap exited with "
                                                    "status 1: newuidmap: ",
                                                    EPERM)));
  CHECK(o.left.empty());
}

TEST_CASE("subordinate ids: with CAP_SETUID and CAP_SETGID the maps are written directly",
          "[privileged][process][subids]") {
  test::require_privilege();
  char dir[] = "/tmp/gonso-subids-root-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string subuid = std::string(dir) + "/subuid";
  const std::string subgid = std::string(dir) + "/subgid";
  append(subuid.c_str(), "# root's ranges for this test\n\nroot:300000:65536\nbroken line\n0:500000:10\n");
  append(subgid.c_str(), "root:400000:1000\n");
  gonso::SubordinateIds ids;
  // No helper can be found: the maps must not need one.
  const Outcome o = attempt(std::nullopt, ids, [&] {
    gonso::detail::subordinate_places& places = gonso::detail::subordinate_id_places();
    places.subuid = subuid;
    places.subgid = subgid;
    places.helper_dirs = dir;
  });
  std::filesystem::remove_all(dir);
  INFO(o.error);
  REQUIRE(o.error.empty());
  CHECK(o.left.empty());
  CHECK(map_lines(o.uid_map) == lines_of({{0, 0, 1}, {1, 300000, 65536}, {65537, 500000, 10}}));
  CHECK(map_lines(o.gid_map) == lines_of({{0, 0, 1}, {1, 400000, 1000}}));
  CHECK(o.setgroups == "allow\n");
}

TEST_CASE("subordinate ids: options that cannot work are refused before anything starts", "[subids]") {
  gonso::UnshareOptions opts;
  opts.subordinate_ids = gonso::SubordinateIds{};
  SECTION("without a new user namespace") {
    CHECK_THROWS_WITH(Set::current().unshare(Kind::net, opts),
                      "subordinate_ids apply to a new user namespace, and none is unshared");
  }
  SECTION("with an explicit map") {
    opts.uid_map = {{0, 0, 1}};
    CHECK_THROWS_WITH(Set::current().unshare(Kind::user, opts),
                      "subordinate_ids make the id maps; give no uid_map or gid_map with them");
  }
  SECTION("a range for inside 0 while the caller's own id is root") {
    opts.subordinate_ids->gid_ranges = {{0, 100000, 10}};
    CHECK_THROWS_WITH(Set::current().unshare(Kind::user, opts),
                      "subordinate_ids: a range maps inside id 0, which map_self_as_root gives the caller's own id");
  }
  SECTION("overlapping ranges") {
    opts.subordinate_ids->map_self_as_root = false;
    opts.subordinate_ids->uid_ranges = {{0, 100000, 10}, {5, 200000, 10}};
    CHECK_THROWS_WITH(Set::current().unshare(Kind::user, opts), "subordinate_ids.uid_ranges lines 0 and 1 overlap");
  }
}

TEST_CASE("subordinate ids: not for a user namespace nested in a Set's foreign one", "[privileged][process][subids]") {
  test::require_privilege();
  const Set outer = Set::current().unshare(Kind::user);
  gonso::UnshareOptions opts;
  opts.subordinate_ids = gonso::SubordinateIds{};
  CHECK_THROWS_AS(outer.unshare(Kind::user, opts), std::invalid_argument);
  CHECK_THROWS_WITH(outer.unshare(Kind::user, opts), Catch::Contains("this Set holds another user namespace"));
}

TEST_CASE("subordinate ids: the test user is gone afterwards", "[privileged][subids]") {
  test::require_privilege();
  { const TestUser user; }
  CHECK(uid_of(user_name) == -1);
  for (const char* path : {"/etc/subuid", "/etc/subgid"}) {
    const std::string text = whole_file(path);
    CHECK(text.find(user_name) == std::string::npos);
    for (const std::uint32_t first : our_firsts) CHECK(text.find(std::to_string(first)) == std::string::npos);
  }
}

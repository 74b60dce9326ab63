// Bytes from a child are decoded as untrusted input (issue 11, class 9):
// each decoder (run_in_process reports, spawn records, the namespace
// creator's messages) refuses truncated, oversized and mistagged bytes with
// std::system_error(EPROTO) and reads nothing beyond what it was given; and a
// callable that writes into its own report pipe gets a clear error, with
// nothing left behind (read from /proc, not from gonso).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include <gonso/detail/process/creator.hpp>
#include <gonso/detail/process/report.hpp>
#include <gonso/spawn.hpp>

#include "support/baseline.hpp"
#include "support/kernel_view.hpp"
#include "support/poll.hpp"
#include "support/privilege.hpp"

using gonso::Kind;
using gonso::Set;
namespace detail = gonso::detail;

namespace {

std::string report(char tag, const std::string& body) {
  std::string out(1, tag);
  const auto length = static_cast<std::uint32_t>(body.size());
  out.append(reinterpret_cast<const char*>(&length), sizeof length);
  return out + body;
}
template <typename T>
std::string bytes_of(const T& value) {
  return {reinterpret_cast<const char*>(&value), sizeof value};
}

/// The errno of the std::system_error `fn` throws; 0 when it throws none.
template <typename Fn>
int errno_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::system_error& e) {
    return e.code().value();
  }
  return 0;
}

std::vector<std::byte> records(std::initializer_list<detail::spawn_record> list) {
  std::vector<std::byte> out(list.size() * sizeof(detail::spawn_record));
  std::size_t at = 0;
  for (const detail::spawn_record& r : list) {
    std::memcpy(out.data() + at, &r, sizeof r);
    at += sizeof r;
  }
  return out;
}

std::vector<std::byte> message(detail::creator_says tag, std::int32_t value, std::int32_t error) {
  detail::creator_message m{};
  m.what = tag;
  m.value = value;
  m.err = error;
  std::vector<std::byte> out(sizeof m);
  std::memcpy(out.data(), &m, sizeof m);
  return out;
}

}  // namespace

TEST_CASE("untrusted: run_in_process reports that are not whole and well-formed are refused", "[untrusted]") {
  const int exited_0 = W_EXITCODE(0, 0);
  // Well-formed ones decode.
  CHECK(detail::decode_report<int>(report('V', bytes_of(42)), exited_0) == 42);
  CHECK(detail::decode_report<std::string>(report('V', "text"), exited_0) == "text");
  CHECK_NOTHROW(detail::decode_report<void>(report('V', ""), exited_0));
  CHECK_THROWS_AS(detail::decode_report<int>(std::string(), W_EXITCODE(3, 0)), gonso::ProcessError);

  const std::string valid = report('V', bytes_of(42));
  const std::vector<std::string> bad = {
      std::string(1, 'V'),                                   // cut short in the header
      valid.substr(0, valid.size() - 1),                     // cut short in the body
      valid + "x",                                           // trailing bytes
      report('Q', bytes_of(42)),                             // unknown tag
      std::string("V\xff\xff\xff\xff", 5),                   // a body length over the limit
      report('V', bytes_of(std::int16_t{1})),                // a value of the wrong size
      report('E', bytes_of(std::uint32_t{1000}) + "short"),  // a type name longer than the body
      report('E', "ab"),                                     // no room for the type's length
      report('J', bytes_of(std::int32_t{0}) + "message"),    // errno 0
      report('J', bytes_of(std::int32_t{-5}) + "message"),   // negative errno
      report('J', bytes_of(std::int32_t{100000}) + "msg"),   // errno above the kernel's largest
      report('J', "ab"),                                     // no room for the errno
  };
  for (const std::string& bytes : bad) {
    INFO("report bytes: " << Catch::StringMaker<std::string>::convert(bytes));
    CHECK(errno_of([&] { (void)detail::decode_report<int>(bytes, exited_0); }) == EPROTO);
  }
  CHECK(errno_of([&] { (void)detail::decode_report<bool>(report('V', std::string(1, '\2')), exited_0); }) == EPROTO);
  CHECK(errno_of([&] { detail::decode_report<void>(report('V', "x"), exited_0); }) == EPROTO);
  // A malformed report from a child that a signal killed is that signal.
  try {
    (void)detail::decode_report<int>(valid.substr(0, 3), SIGKILL);
    FAIL("no exception");
  } catch (const gonso::ProcessError& e) {
    CHECK(e.signal() == SIGKILL);
  }
  // Valid errnos and exceptions come back as they were sent.
  CHECK(errno_of([&] { (void)detail::decode_report<int>(report('J', bytes_of(std::int32_t{EPERM}) + "no"), 0); }) ==
        EPERM);
  try {
    (void)detail::decode_report<int>(report('E', bytes_of(std::uint32_t{4}) + "Typewhat"), exited_0);
    FAIL("no exception");
  } catch (const gonso::ProcessError& e) {
    CHECK(e.exception_type() == "Type");
    CHECK(e.message() == "what");
  }
}

TEST_CASE("untrusted: spawn records with bad steps, indexes, errnos or pids are refused", "[untrusted][spawn]") {
  using detail::spawn_record;
  using detail::spawn_step;
  const detail::spawn_limits limits{.join_steps = 2, .etc_files = 4, .expect_pid = true};
  const auto decode = [&](const std::vector<std::byte>& bytes, const detail::spawn_limits& l) {
    return detail::decode_spawn_records(bytes, l);
  };
  // Well-formed ones decode.
  const detail::spawn_outcome ok = decode(records({{spawn_step::pid, 1234, 0}, {spawn_step::exec, 0, ENOENT}}), limits);
  CHECK(ok.program == 1234);
  REQUIRE(ok.failure);
  CHECK(ok.failure->err == ENOENT);
  CHECK(decode(records({{spawn_step::join, 1, EPERM}}), limits).failure->value == 1);
  CHECK(decode(records({{spawn_step::etc, 2, ENOENT}}), limits).failure->value == 2);
  CHECK(decode(records({{spawn_step::etc, -1, EPERM}}), limits).failure);
  CHECK(decode({}, limits).program == -1);

  const std::vector<std::vector<std::byte>> bad = {
      std::vector<std::byte>(5),                                                                // cut short
      records({{spawn_step::exec, 0, 1}, {spawn_step::exec, 0, 1}, {spawn_step::exec, 0, 1}}),  // too many
      records({{static_cast<spawn_step>(99), 0, EPERM}}),                                       // unknown step
      records({{static_cast<spawn_step>(0), 0, EPERM}}),
      records({{spawn_step::join, 2, EPERM}}),    // a join step past the plan
      records({{spawn_step::join, -1, EPERM}}),   // negative index
      records({{spawn_step::stdio, 3, EBADF}}),   // stream 3
      records({{spawn_step::stdio, -7, EBADF}}),  // negative stream (was streams[-7 % 3])
      records({{spawn_step::etc, 3, ENOENT}}),    // odd: not the first of a pair
      records({{spawn_step::etc, 4, ENOENT}}),    // past the plan's files
      records({{spawn_step::exec, 0, 0}}),        // errno 0
      records({{spawn_step::exec, 0, 5000}}),     // errno out of range
      records({{spawn_step::chdir, 9, ENOENT}}),  // a value where none belongs
      records({{spawn_step::pid, 0, 0}}),         // no process id
      records({{spawn_step::pid, -1, 0}}),
      records({{spawn_step::pid, 5, 0}, {spawn_step::pid, 6, 0}}),           // two pids
      records({{spawn_step::exec, 0, ENOENT}, {spawn_step::exec, 0, EIO}}),  // two failures
  };
  for (const auto& bytes : bad) {
    CHECK(errno_of([&] { (void)decode(bytes, limits); }) == EPROTO);
  }
  // The program may fail before the middle process reports its pid: both
  // are taken, so that the program is reaped.
  const detail::spawn_outcome raced = decode(records({{spawn_step::exec, 0, ENOENT}, {spawn_step::pid, 5, 0}}), limits);
  CHECK(raced.program == 5);
  CHECK(raced.failure.has_value());
  // A pid where none is expected (no pid or time namespace joined).
  CHECK(errno_of([&] { (void)decode(records({{spawn_step::pid, 5, 0}}), {.join_steps = 2}); }) == EPROTO);
}

TEST_CASE("untrusted: namespace-creator messages are checked one by one and in order", "[untrusted]") {
  using M = detail::creator_says;
  // Well-formed ones decode.
  CHECK(detail::decode_creator_message(message(M::ready, 0, 0), 3).what == M::ready);
  CHECK(detail::decode_creator_message(message(M::failed, 2, EPERM), 3).value == 2);
  CHECK(detail::decode_creator_message(message(M::failed, detail::step_fork_init, ENOMEM), 3).err == ENOMEM);

  std::vector<std::byte> padded = message(M::ready, 0, 0);
  padded[1] = std::byte{0x7f};
  std::vector<std::byte> longer = message(M::ready, 0, 0);
  longer.push_back(std::byte{0});
  const std::vector<std::vector<std::byte>> bad = {
      std::vector<std::byte>(5),           // cut short
      longer,                              // more than one message
      padded,                              // a tag with stray high bytes
      message(static_cast<M>('z'), 0, 0),  // unknown tag
      message(M::failed, 3, EPERM),        // a join step past the plan
      message(M::failed, -1, EPERM),       // a step below 0
      message(M::failed, 50, EPERM),       // between the join steps and step_fork
      message(M::failed, detail::step_write_maps + 1, EPERM),
      message(M::failed, detail::step_fork, 0),     // errno 0
      message(M::failed, detail::step_fork, 4096),  // errno out of range
      message(M::creator_pid, 0, 0),                // no process id
      message(M::init_pid, -3, 0),
      message(M::ready, 1, 0),  // a value where none belongs
  };
  for (const auto& bytes : bad) CHECK(errno_of([&] { (void)detail::decode_creator_message(bytes, 3); }) == EPROTO);

  const auto m = [](M tag) {
    detail::creator_message out{};
    out.what = tag;
    out.value = tag == M::creator_pid || tag == M::init_pid ? 7 : 0;
    return out;
  };
  // In order, the conversation ends with ready.
  detail::creator_protocol fine(true, true, false);
  CHECK_FALSE(fine.accept(m(M::creator_pid)));
  CHECK_FALSE(fine.accept(m(M::user_created)));
  CHECK(fine.accept(m(M::ready)));
  CHECK(errno_of([&] { (void)fine.accept(m(M::ready)); }) == EPROTO);  // after the last
  // Out of order.
  CHECK(errno_of([&] {
          detail::creator_protocol p(false, true, false);
          (void)p.accept(m(M::ready));  // before user_created
        }) == EPROTO);
  CHECK(errno_of([&] {
          detail::creator_protocol p(false, true, false);
          (void)p.accept(m(M::user_created));
          (void)p.accept(m(M::user_created));  // twice: would write the maps twice
        }) == EPROTO);
  CHECK(errno_of([&] {
          detail::creator_protocol p(true, false, false);
          (void)p.accept(m(M::ready));  // before the creator's pid
        }) == EPROTO);
  CHECK(errno_of([&] {
          detail::creator_protocol p(false, false, false);
          (void)p.accept(m(M::init_pid));  // no pid namespace asked for
        }) == EPROTO);
  CHECK(errno_of([&] {
          detail::creator_protocol p(false, false, true);
          (void)p.accept(m(M::ready));  // before the init's pid
        }) == EPROTO);
}

TEST_CASE("untrusted: a callable that writes into its own report pipe gets EPROTO, and nothing leaks",
          "[untrusted][privileged][process]") {
  test::require_privilege();
  const Set fresh = Set::current().unshare(Kind::net);
  const test::Baseline base(test::Watch::fds | test::Watch::children);
  for (const std::string& junk : {std::string("V\x01\x00\x00\x00", 5), std::string("J\xff\xff\xff\x7f", 5),
                                  std::string("garbage that is no report")}) {
    const int err = errno_of([&] {
      (void)fresh.run_in_process([junk] {
        // Every fd that writes to a pipe: the report's is one of them.
        for (int fd = 3; fd < 64; ++fd) {
          struct stat st {};
          const int flags = ::fcntl(fd, F_GETFL);
          if (flags >= 0 && (flags & O_ACCMODE) == O_WRONLY && ::fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode)) {
            (void)!::write(fd, junk.data(), junk.size());
          }
        }
        return 42;
      });
    });
    CHECK(err == EPROTO);
  }
  base.check();
}

TEST_CASE("untrusted: a string result over the limit is refused in the child, clearly", "[untrusted][privileged]") {
  test::require_privilege();
  const Set fresh = Set::current().unshare(Kind::uts);
  const test::Baseline base(test::Watch::children);
  try {
    (void)fresh.run_in_process([] { return std::string(detail::max_report_body + 1, 'x'); });
    FAIL("no exception");
  } catch (const gonso::ProcessError& e) {
    CHECK(e.exception_type() == "std::length_error");
    CHECK_THAT(e.message(), Catch::Contains("exceeds run_in_process's limit"));
  }
  base.check();
}

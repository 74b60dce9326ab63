// gonso: what the child creating namespaces tells its parent, decoded and
// checked as the untrusted bytes it is.
// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include <gonso/detail/process/launch.hpp>
#include <gonso/detail/process/report.hpp>
#include <gonso/detail/sys/error.hpp>

namespace gonso::detail {

/// What the creating child tells the parent, in a child_record.
enum class creator_says : std::int32_t {
  creator_pid = 'p',   // value: pid (in the parent's view) of the process that creates
  init_pid = 'i',      // value: pid (in the parent's view) of the new pid namespace's init
  user_created = 'u',  // waits for the parent to write uid_map and gid_map
  ready = 'r',         // every namespace exists; the parent may open them
  failed = 'e',        // value: which step, err: errno
};
using creator_message = child_record<creator_says>;

/// The steps a creator can fail at, for the parent's message.
enum creator_step : std::int32_t {
  step_join = 0,  // + index in the join plan
  step_fork = 100,
  step_unshare_user,
  step_wait_maps,
  step_unshare,
  step_time_offsets,
  step_propagation,
  step_fork_init,
  step_write_maps,  // by the helper in the Set's user namespace (nested user namespaces)
};

/// Decodes one message of the creating child. Pure: exactly one message's
/// bytes; a known tag; a failed step that exists (a join step
/// below `join_steps`) with an errno in range; a pid above 0; no value on
/// the others. Throws std::system_error(EPROTO) otherwise. A pid is only a
/// claim the parent then checks (Set::adopt_init, creator_protocol).
[[nodiscard]] inline creator_message decode_creator_message(std::span<const std::byte> bytes, std::size_t join_steps) {
  const auto bad = [](const char* why) {
    throw system_error(EPROTO, "malformed message from the child creating namespaces: {}", why);
  };
  creator_message m;
  if (bytes.size() != sizeof m) bad("not one whole message");
  std::memcpy(&m, bytes.data(), sizeof m);
  switch (m.what) {
    case creator_says::creator_pid:
    case creator_says::init_pid:
      if (m.value <= 0 || m.err != 0) bad("a pid that is no process id");
      return m;
    case creator_says::user_created:
    case creator_says::ready:
      if (m.value != 0 || m.err != 0) bad("a value where none belongs");
      return m;
    case creator_says::failed: {
      const bool join =
          m.value >= step_join && static_cast<std::int64_t>(m.value) < static_cast<std::int64_t>(join_steps);
      if (!join && (m.value < step_fork || m.value > step_write_maps)) bad("a step that does not exist");
      if (!valid_errno(m.err)) bad("an errno out of range");
      return m;
    }
    default:
      bad("an unknown tag");
  }
  return m;  // not reached
}

/// The order the creating child speaks in, checked message by message: at
/// most one of each, the creator's pid first and only when it had to fork,
/// the init's pid only when a pid namespace is made by the creator itself,
/// user_created only with a user namespace, and `ready` after it. Bounds the
/// conversation: a child cannot make the parent loop or write maps twice.
class creator_protocol {
 public:
  creator_protocol(bool forks, bool user, bool init_reported) noexcept
      : forks_(forks), user_(user), init_reported_(init_reported) {}

  /// Throws std::system_error(EPROTO) for a message out of order. Returns
  /// true once the conversation is over (ready or failed).
  bool accept(const creator_message& m) {
    const auto bad = [](const char* why) {
      throw system_error(EPROTO, "the child creating namespaces spoke out of order: {}", why);
    };
    if (over_) bad("a message after the last");
    switch (m.what) {
      case creator_says::creator_pid:
        if (!forks_ || seen_ != 0) bad("the creator's pid, not first or not expected");
        break;
      case creator_says::init_pid:
        if (!init_reported_ || init_) bad("the init's pid, unexpected or twice");
        init_ = true;
        break;
      case creator_says::user_created:
        if (!user_ || user_seen_) bad("user_created, unexpected or twice");
        user_seen_ = true;
        break;
      case creator_says::ready:
        if (user_ != user_seen_ || init_reported_ != init_) bad("ready before every step");
        over_ = true;
        break;
      default:
        over_ = true;  // failed
        break;
    }
    if (forks_ && seen_ == 0 && m.what != creator_says::creator_pid && m.what != creator_says::failed) {
      bad("a message before the creator's pid");
    }
    ++seen_;
    return over_;
  }

 private:
  bool forks_;
  bool user_;
  bool init_reported_;
  bool init_ = false;
  bool user_seen_ = false;
  bool over_ = false;
  int seen_ = 0;
};

}  // namespace gonso::detail

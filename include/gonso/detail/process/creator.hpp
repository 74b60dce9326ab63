// gonso: the parent half of creating namespaces in a child process: the
// plan, the conversation with the creator (creator_child.hpp), id maps, and
// the init of a new pid namespace.
// SPDX-License-Identifier: MIT
#pragma once

#include <fcntl.h>
#include <linux/capability.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <gonso/detail/fs/propagation.hpp>
#include <gonso/detail/ns/join.hpp>
#include <gonso/detail/ns/ns_file.hpp>
#include <gonso/detail/process/creator_child.hpp>
#include <gonso/detail/process/creator_wire.hpp>
#include <gonso/detail/process/launch.hpp>
#include <gonso/detail/process/pid_init.hpp>
#include <gonso/detail/process/subordinate_ids.hpp>
#include <gonso/detail/sys/error.hpp>
#include <gonso/detail/sys/io.hpp>
#include <gonso/detail/sys/syscalls.hpp>
#include <gonso/options.hpp>

namespace gonso::detail {

inline std::string map_text(const std::vector<IdRange>& map, std::uint32_t own_id) {
  if (map.empty()) return fmt::format("0 {} 1\n", own_id);
  std::string text;
  for (const IdRange& r : map) text += fmt::format("{} {} {}\n", r.inside, r.outside, r.count);
  return text;
}

inline std::string offsets_text(const UnshareOptions& options) {
  std::string text;
  const auto line = [&](const char* clock, std::chrono::nanoseconds offset) {
    if (offset.count() == 0) return;
    const auto secs = std::chrono::floor<std::chrono::seconds>(offset);
    text += fmt::format("{} {} {}\n", clock, secs.count(), (offset - secs).count());
  };
  line("monotonic", options.monotonic_offset);
  line("boottime", options.boottime_offset);
  return text;
}

inline void write_proc_file(pid_t pid, const char* file, const std::string& text) {
  const std::string path = fmt::format("/proc/{}/{}", pid, file);
  unique_fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) throw system_error(errno, "cannot open {}", path);
  // These files take one write(2) holding every line.
  const ssize_t n = ::write(fd.get(), text.data(), text.size());
  if (n != static_cast<ssize_t>(text.size())) {
    throw system_error(n < 0 ? errno : EIO, "cannot write {} to {}", text.substr(0, text.find('\n')), path);
  }
}

inline bool has_capability(int cap) noexcept {
  return (capabilities()[static_cast<std::size_t>(cap / 32)].effective & (1u << (cap % 32))) != 0;
}

[[nodiscard]] inline std::string creator_error(const creator_message& m, const join_plan& plan, const ns_handles& ns,
                                               Kinds kinds) {
  if (m.value >= step_join && m.value < step_fork) return join_failure(plan, ns, static_cast<std::size_t>(m.value));
  switch (m.value) {
    case step_fork:
      return "cannot fork into the joined pid or time namespace";
    case step_unshare_user:
      return "cannot unshare user namespace";
    case step_wait_maps:
      return "cannot wait for the user namespace's id maps";
    case step_unshare:
      return fmt::format("cannot unshare {} namespaces", kinds - Kind::user);
    case step_time_offsets:
      return "cannot write the time namespace's offsets";
    case step_propagation:
      return "cannot set mount propagation of / in the new mount namespace";
    case step_fork_init:
      return "cannot start the init of the new pid namespace";
    case step_write_maps:
      return fmt::format("cannot write the id maps of a user namespace nested in {} from inside it",
                         ns[index_of(Kind::user)].id);
    default:
      return "cannot create namespaces";
  }
}

/// (device, inode) of a pid namespace link, by stat(2); zero when it cannot be read.
inline Identity pid_ns_at(const std::string& path) noexcept {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  return Identity{Kind::pid, st.st_dev, st.st_ino};
}

/// Whether /proc says `pid` is a child of `parent` (its main thread's).
inline bool is_child_of(pid_t parent, pid_t pid) {
  const std::string path = fmt::format("/proc/{0}/task/{0}/children", parent);
  unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  const std::string text = read_to_end(fd.get());
  const char* at = text.data();
  const char* const end = text.data() + text.size();
  while (at < end) {
    pid_t child = 0;
    const auto [next, ec] = std::from_chars(at, end, child);
    if (ec != std::errc{}) return false;
    if (child == pid) return true;
    at = next;
    while (at < end && *at == ' ') ++at;
  }
  return false;
}

/// `init` is the init's pid when the creator could tell it; otherwise the
/// init is the creator's only child.
inline std::shared_ptr<void> adopt_init(pid_t creator, pid_t init, unique_fd lifeline) {
  const bool reported = init > 0;
  if (init <= 0) {
    const std::string path = fmt::format("/proc/{0}/task/{0}/children", creator);
    unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw system_error(errno, "cannot open {}", path);
    const std::string text = read_to_end(fd.get());
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), init);
    if (ec != std::errc{} || init <= 0) {
      throw system_error(ESRCH, "cannot find the init of the new pid namespace in {}", path);
    }
  }
  unique_fd pidfd(pidfd_open(init));
  if (!pidfd) throw system_error(errno, "cannot open a pidfd for the init of the new pid namespace (pid {})", init);
  // The pid came from the child: take it only if it is in the namespace
  // the creator's children go to, and, when reported by the creator, the
  // caller's own child (CLONE_PARENT), which the caller reaps.
  const Identity ns_of_init = pid_ns_at(fmt::format("/proc/{}/ns/pid", init));
  const Identity ns_made = pid_ns_at(fmt::format("/proc/{}/ns/pid_for_children", creator));
  siginfo_t info{};
  const bool own = ::waitid(P_PIDFD, static_cast<id_t>(pidfd.get()), &info, WEXITED | WNOHANG | WNOWAIT) == 0;
  if (ns_of_init.inode == 0 || ns_of_init.inode != ns_made.inode || (reported && !own)) {
    throw system_error(EPROTO, "pid {} is not the init of the new pid namespace", init);
  }
  return std::make_shared<pid_init>(std::move(lifeline), std::move(pidfd));
}

/// Everything one creation needs, made before the fork: the child may not
/// allocate. Not movable: the task points into it.
struct creation {
  join_plan plan;
  Kinds kinds;
  // A user namespace nested in the Set's, when that is not the caller's:
  // the caller may not write its maps, a helper in the Set's does.
  bool nested_user = false;
  bool deny_setgroups = false;
  // Subordinate ids: the map lines, and which maps the setuid helpers
  // write because the caller lacks the capability to write them itself.
  std::vector<IdRange> uid_lines;
  std::vector<IdRange> gid_lines;
  bool uid_by_helper = false;
  bool gid_by_helper = false;
  pipe_fds report = make_pipe();
  pipe_fds go = make_pipe();
  pipe_fds lifeline;
  std::string offsets;
  std::string uid_map;
  std::string gid_map;
  creator_task task;

  creation(const ns_handles& from, Kinds from_kinds, Kinds new_kinds, const UnshareOptions& options)
      : plan(plan_join(from, from_kinds)), kinds(new_kinds), offsets(offsets_text(options)) {
    if (kinds.contains(Kind::user) && from_kinds.contains(Kind::user)) {
      Identity own{};
      nested_user =
          stat_ns(AT_FDCWD, "/proc/thread-self/ns/user", Kind::user, own) != 0 || own != from[index_of(Kind::user)].id;
    }
    if (kinds.contains(Kind::pid)) lifeline = make_pipe();
    // Maps in the ids of the new namespace's parent; for a nested one the
    // helper fills in its own id there when none are given.
    if (options.subordinate_ids) {
      // The files and helpers speak of the caller's user namespace; one
      // nested in a foreign Set's has another parent, whose ids they do not know.
      if (nested_user) {
        throw std::invalid_argument(
            "subordinate_ids map a user namespace whose parent is the caller's; this Set holds another user "
            "namespace");
      }
      subordinate_maps maps = resolve_subordinate_ids(*options.subordinate_ids);
      uid_lines = std::move(maps.uid);
      gid_lines = std::move(maps.gid);
      uid_map = map_text(uid_lines, 0);
      gid_map = map_text(gid_lines, 0);
      uid_by_helper = !has_capability(CAP_SETUID);
      gid_by_helper = !has_capability(CAP_SETGID);
    } else {
      if (!nested_user || !options.uid_map.empty()) uid_map = map_text(options.uid_map, ::geteuid());
      if (!nested_user || !options.gid_map.empty()) gid_map = map_text(options.gid_map, ::getegid());
    }
    // newgidmap sets setgroups itself, to deny only when no subordinate gid
    // is mapped; a "deny" written first would also take setgroups(2) from
    // a namespace that maps whole ranges.
    deny_setgroups = !nested_user && !options.subordinate_ids && !has_capability(CAP_SETGID);
    task.plan = plan;
    task.kinds = kinds;
    task.report = report.write.get();
    task.go = go.read.get();
    task.lifeline = lifeline.read.get();
    task.propagation = propagation_flag(options.propagation);
    task.time_offsets = &offsets;
    task.maps_from_inside = nested_user;
    task.uid_map = &uid_map;
    task.gid_map = &gid_map;
  }
  creation(const creation&) = delete;
  creation& operator=(const creation&) = delete;
};

/// The process that creates, when it is not the child but the child's own
/// child (forked into a joined pid or time namespace): not ours to reap, so
/// only killed, before the child's guard kills and reaps the child.
struct grandchild {
  pid_t pid = -1;
  grandchild() noexcept = default;
  grandchild(const grandchild&) = delete;
  grandchild& operator=(const grandchild&) = delete;
  ~grandchild() {
    if (pid > 0) ::kill(pid, SIGKILL);
  }
};

/// The parent's side of the conversation with the creator `child`, until it
/// is ready: every message is untrusted bytes, decoded and checked for its
/// place in the conversation, and pids in them against the kernel's view.
/// Returns the pid of the process that created (the child or `inner`), and
/// sets `init` once the new pid namespace's init is known.
[[nodiscard]] inline pid_t converse(creation& c, pid_t child, const ns_handles& from, grandchild& inner,
                                    std::shared_ptr<void>& init) {
  pid_t creator = child;
  creator_protocol protocol(c.plan.fork_after, c.kinds.contains(Kind::user) && !c.nested_user,
                            c.kinds.contains(Kind::pid) && !c.plan.fork_after);
  for (bool over = false; !over;) {
    std::array<std::byte, sizeof(creator_message)> bytes{};
    const std::size_t got = read_records(c.report.read.get(), bytes, /*one=*/true);
    if (got == 0) throw system_error(ECHILD, "the child creating {} namespaces ended early", c.kinds);
    const creator_message m = decode_creator_message(std::span(bytes.data(), got), c.plan.count);
    over = protocol.accept(m);
    if (m.what == creator_says::creator_pid) {
      if (!is_child_of(child, m.value)) {
        throw system_error(EPROTO, "the child creating {} namespaces named pid {}, not its own child", c.kinds,
                           m.value);
      }
      creator = inner.pid = m.value;
    } else if (m.what == creator_says::init_pid) {
      init = adopt_init(creator, m.value, std::move(c.lifeline.write));
    } else if (m.what == creator_says::user_created) {
      if (c.deny_setgroups) write_proc_file(creator, "setgroups", "deny");
      if (c.uid_by_helper) {
        run_id_map_helper("newuidmap", creator, c.uid_lines, "uid_map");
      } else {
        write_proc_file(creator, "uid_map", c.uid_map);
      }
      if (c.gid_by_helper) {
        run_id_map_helper("newgidmap", creator, c.gid_lines, "gid_map");
      } else {
        write_proc_file(creator, "gid_map", c.gid_map);
      }
      const char byte = 'g';
      if (!write_all(c.go.write.get(), &byte, 1))
        throw system_error(errno, "cannot wake the child creating {} namespaces", c.kinds);
    } else if (m.what == creator_says::failed) {
      throw std::system_error(m.err, std::generic_category(), creator_error(m, c.plan, from, c.kinds));
    }
  }
  return creator;
}

/// Set::unshare's engine where a thread cannot do it: a child joins `from`
/// (user and time included), creates `kinds` there (a new user namespace
/// first, the rest inside it, so owned by it) and waits while the caller
/// opens them. Returns their handles, the pid namespace's owning its init;
/// the child is killed and reaped however this returns.
[[nodiscard]] inline ns_handles create_in_process(const ns_handles& from, Kinds from_kinds, Kinds kinds,
                                                  const UnshareOptions& options) {
  if (!children_share_pid_ns()) {
    // Its children would be numbered in another pid namespace than ours.
    throw system_error(EINVAL,
                       "cannot create {} namespaces from a thread whose children go to another pid "
                       "namespace (as inside Set::run of a Set holding one); call unshare outside",
                       kinds);
  }
  creation c(from, from_kinds, kinds, options);
  const pid_t parent = ::getpid();
  const pid_t child = raw_fork();
  if (child < 0) throw system_error(errno, "cannot fork a child process to create {} namespaces", kinds);
  if (child == 0) creator_main(c.task, parent);
  const child_guard guard(child);
  grandchild inner;
  c.report.write.reset();
  c.go.read.reset();
  c.lifeline.read.reset();

  std::shared_ptr<void> init;  // owns the new pid namespace's init as soon as it exists
  const pid_t creator = converse(c, child, from, inner, init);
  ns_handles made{};
  for (Kind kind : kinds) {
    const std::string path = fmt::format("/proc/{}/ns/{}", creator, thread_link(kind));
    made[index_of(kind)] = open_ns(AT_FDCWD, path.c_str(), kind, path);
  }
  if (kinds.contains(Kind::pid)) {
    if (!init) init = adopt_init(creator, -1, std::move(c.lifeline.write));
    made[index_of(Kind::pid)].keep_alive = std::move(init);
  }
  return made;
}

}  // namespace gonso::detail

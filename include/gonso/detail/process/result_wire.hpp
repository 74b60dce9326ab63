// gonso: results of run_in_process that are more than bytes: fds, and
// several values at once. The fds cross by SCM_RIGHTS on a socket of their
// own; the rest is encoded into the report's body.
// SPDX-License-Identifier: MIT
#pragma once

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <gonso/detail/sys/error.hpp>
#include <gonso/fd.hpp>

namespace gonso::detail {

/// The most fds one result may carry: what the kernel passes in one
/// SCM_RIGHTS message (SCM_MAX_FD).
inline constexpr std::size_t max_result_fds = 253;

/// A value copied as its bytes.
template <typename T>
inline constexpr bool byte_value = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T>;

template <typename T>
struct is_pair_or_tuple : std::false_type {};
template <typename A, typename B>
struct is_pair_or_tuple<std::pair<A, B>> : std::true_type {};
template <typename... T>
struct is_pair_or_tuple<std::tuple<T...>> : std::true_type {};

/// One part of an encoded result: an Fd, a vector of them, a string or a
/// value copied as bytes.
template <typename T>
inline constexpr bool result_part =
    std::is_same_v<T, Fd> || std::is_same_v<T, std::vector<Fd>> || std::is_same_v<T, std::string> || byte_value<T>;

template <typename R>
constexpr bool tuple_of_parts() {
  if constexpr (is_pair_or_tuple<R>::value) {
    return []<std::size_t... I>(std::index_sequence<I...>) { return (result_part<std::tuple_element_t<I, R>> && ...); }
    (std::make_index_sequence<std::tuple_size_v<R>>{});
  } else {
    return false;
  }
}

/// Results that take the encoded path: an Fd, a vector of Fds, or a pair
/// or tuple of parts. (A pair of ints is not trivially copyable either.)
template <typename R>
inline constexpr bool encoded_result = std::is_same_v<R, Fd> || std::is_same_v<R, std::vector<Fd>> ||
                                       tuple_of_parts<R>();

// The body: the parts in order. An Fd is one byte, 1 when it held an fd
// (the next one received) and 0 when empty; a vector is its u32 length,
// then one such byte per element; a string its u32 length, then its bytes;
// any other value its bytes.
template <typename T>
void encode_part(const T& part, std::string& body, std::vector<int>& fds) {
  const auto put_u32 = [&](std::size_t n) {
    const auto v = static_cast<std::uint32_t>(n);
    body.append(reinterpret_cast<const char*>(&v), sizeof v);
  };
  if constexpr (std::is_same_v<T, Fd>) {
    body.push_back(part.valid() ? '\1' : '\0');
    if (part.valid()) fds.push_back(part.get());
  } else if constexpr (std::is_same_v<T, std::vector<Fd>>) {
    put_u32(part.size());
    for (const Fd& fd : part) encode_part(fd, body, fds);
  } else if constexpr (std::is_same_v<T, std::string>) {
    put_u32(part.size());
    body += part;
  } else {
    body.append(reinterpret_cast<const char*>(&part), sizeof(T));
  }
}

/// Encodes `value` (child side): its body, and the fds to send, still
/// owned by `value`.
template <typename R>
void encode_result(const R& value, std::string& body, std::vector<int>& fds) {
  if constexpr (is_pair_or_tuple<R>::value) {
    std::apply([&](const auto&... parts) { (encode_part(parts, body, fds), ...); }, value);
  } else {
    encode_part(value, body, fds);
  }
}

[[noreturn]] inline void malformed_result(const char* why) {
  throw system_error(EPROTO, "malformed result from a gonso child process: {}", why);
}

/// Reads an encoded body back (parent side), taking fds from `fds` in
/// order. The body and the fds are untrusted: every length is checked
/// against what is left, an fd byte must be 0 or 1, a bool 0 or 1, and the
/// body and the fds must both be used up exactly; else
/// std::system_error(EPROTO), and every fd received is closed.
class result_reader {
 public:
  result_reader(std::string_view body, std::vector<Fd>& fds) noexcept : body_(body), fds_(fds) {}

  template <typename R>
  R read_all() {
    R value = read_whole<R>();
    if (!body_.empty()) malformed_result("trailing bytes");
    if (next_fd_ != fds_.size()) malformed_result("more fds than its value holds");
    return value;
  }

 private:
  template <typename R>
  R read_whole() {
    if constexpr (is_pair_or_tuple<R>::value) {
      return [&]<std::size_t... I>(std::index_sequence<I...>) {
        // Braced: the parts are read left to right.
        return R{read_part<std::tuple_element_t<I, R>>()...};
      }
      (std::make_index_sequence<std::tuple_size_v<R>>{});
    } else {
      return read_part<R>();
    }
  }

  std::string_view take(std::size_t n) {
    if (body_.size() < n) malformed_result("cut short");
    const std::string_view out = body_.substr(0, n);
    body_.remove_prefix(n);
    return out;
  }
  std::uint32_t take_u32() {
    std::uint32_t v = 0;
    std::memcpy(&v, take(sizeof v).data(), sizeof v);
    return v;
  }

  template <typename T>
  T read_part() {
    if constexpr (std::is_same_v<T, Fd>) {
      const char mark = take(1)[0];
      if (mark == '\0') return Fd();
      if (mark != '\1') malformed_result("an fd mark that is neither 0 nor 1");
      if (next_fd_ == fds_.size()) malformed_result("fewer fds than its value holds");
      return std::move(fds_[next_fd_++]);
    } else if constexpr (std::is_same_v<T, std::vector<Fd>>) {
      const std::uint32_t n = take_u32();
      // Each element has its byte: a length beyond the body is a lie.
      if (n > body_.size()) malformed_result("a vector longer than the body");
      std::vector<Fd> out;
      out.reserve(n);
      for (std::uint32_t i = 0; i < n; ++i) out.push_back(read_part<Fd>());
      return out;
    } else if constexpr (std::is_same_v<T, std::string>) {
      const std::uint32_t n = take_u32();
      return std::string(take(n));
    } else {
      const std::string_view bytes = take(sizeof(T));
      if constexpr (std::is_same_v<T, bool>) {
        if (bytes[0] != 0 && bytes[0] != 1) malformed_result("a bool that is neither 0 nor 1");
      }
      T v;
      std::memcpy(&v, bytes.data(), sizeof(T));
      return v;
    }
  }

  std::string_view body_;
  std::vector<Fd>& fds_;
  std::size_t next_fd_ = 0;
};

/// A socket pair for a result's fds: SOCK_SEQPACKET, so that one send is
/// one message; close-on-exec and non-blocking (the parent reads it once the
/// child has ended: everything sent is queued by then).
struct fd_channel {
  Fd receive;
  Fd send;
};
[[nodiscard]] inline fd_channel make_fd_channel() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) != 0) {
    throw system_error(errno, "cannot create a socket pair for the callable's fds");
  }
  return {Fd(fds[0]), Fd(fds[1])};
}

/// Sends `fds` in one message (child side). Returns 0 or an errno.
inline int send_fds(int socket, const std::vector<int>& fds) noexcept {
  if (fds.empty()) return 0;
  if (fds.size() > max_result_fds) return ETOOMANYREFS;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_result_fds)] = {};
  char byte = 'F';
  iovec iov{&byte, 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  for (;;) {
    if (::syscall(SYS_sendmsg, socket, &msg, MSG_NOSIGNAL) == 1) return 0;
    if (errno != EINTR) return errno;
  }
}

/// Takes every fd queued on `socket` (parent side), close-on-exec. Each
/// arrives owned, so that whatever is thrown next closes it. A child that
/// sent more than one message, or more fds than fit, or anything but fds,
/// is refused with std::system_error(EPROTO) after its fds are closed.
[[nodiscard]] inline std::vector<Fd> receive_fds(int socket) {
  std::vector<Fd> out;
  out.reserve(max_result_fds);  // no allocation between receiving an fd and owning it
  bool malformed = false;
  bool truncated = false;
  // One message is a whole result. Past it, a child could queue thousands
  // of fds: later messages are taken with no room for fds, so that the
  // kernel closes theirs instead of installing them here; the count is bounded,
  // so that a child (or a process it left running) cannot keep this busy.
  for (int messages = 0; messages < 64; ++messages) {
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_result_fds)] = {};
    char byte = 0;
    iovec iov{&byte, 1};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (messages == 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
    }
    const ssize_t n = ::recvmsg(socket, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      throw system_error(errno, "cannot receive the callable's fds");
    }
    if (n == 0 && messages > 0) break;  // the peer is closed, nothing more queued
    if (messages > 0) {
      malformed = true;
      continue;
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) {
        malformed = true;
        continue;
      }
      const std::size_t count = std::min<std::size_t>((c->cmsg_len - CMSG_LEN(0)) / sizeof(int), max_result_fds);
      for (std::size_t i = 0; i < count; ++i) {
        int fd = -1;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        out.emplace_back(fd);
      }
    }
    if ((msg.msg_flags & MSG_CTRUNC) != 0) truncated = true;
    if ((msg.msg_flags & MSG_TRUNC) != 0) malformed = true;
    if (n == 0) break;
  }
  // The kernel cuts the fds short when the caller has no room for them:
  // the result was whole, the caller's fd table was not.
  if (truncated) {
    throw system_error(EMFILE, "cannot receive the callable's fds: the caller has run out of fds (RLIMIT_NOFILE)");
  }
  if (malformed) malformed_result("its fds came as more than one whole message");
  return out;
}

}  // namespace gonso::detail

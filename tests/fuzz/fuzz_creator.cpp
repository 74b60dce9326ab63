// libFuzzer target: the messages of the child that creates namespaces
// (detail::decode_creator_message, detail::creator_protocol). The first byte
// chooses the plan (join steps, and whether the creator forks, makes a user
// namespace, reports an init); the rest is cut into messages, decoded and fed
// to the protocol in order until it ends or refuses. No crash, and never more
// messages than a conversation can hold.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <system_error>

#include <gonso/detail/process/creator.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t join_steps = data[0] & 7;
  gonso::detail::creator_protocol protocol((data[0] & 8) != 0, (data[0] & 16) != 0, (data[0] & 32) != 0);
  const std::size_t chunk =
      (data[0] & 64) != 0 ? sizeof(gonso::detail::creator_message) - 1 : sizeof(gonso::detail::creator_message);
  int accepted = 0;
  try {
    for (std::size_t at = 1; at < size; at += chunk) {
      const std::size_t n = at + chunk <= size ? chunk : size - at;
      const auto m = gonso::detail::decode_creator_message(std::as_bytes(std::span(data + at, n)), join_steps);
      ++accepted;
      const bool over = protocol.accept(m);
      // creator pid, init pid, user_created, and the last: at most four.
      if (accepted > 4) std::abort();
      if (over) break;
    }
  } catch (const std::system_error&) {
  }
  return 0;
}

// libFuzzer target: what the child of spawn() writes on its pipe
// (detail::decode_spawn_records). The first three bytes choose the plan's
// limits (join steps, /etc files, pid, rlimits, extra fds), the rest are
// the records. Every input must end in an outcome whose indexes lie inside
// those limits, or in a std::system_error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <system_error>

#include <gonso/spawn.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  gonso::detail::spawn_limits limits;
  limits.join_steps = data[0] % 9;
  limits.etc_files = data[1] % 9;
  limits.expect_pid = (data[2] & 1) != 0;
  limits.rlimits = (data[2] >> 1) % 4;
  limits.fds = (data[2] >> 3) % 4;
  limits.last_cap = 40;
  const auto bytes = std::as_bytes(std::span(data + 3, size - 3));
  try {
    const gonso::detail::spawn_outcome outcome = gonso::detail::decode_spawn_records(bytes, limits);
    if (outcome.program != -1 && (!limits.expect_pid || outcome.program <= 0)) std::abort();
    if (outcome.failure) {
      const gonso::detail::spawn_record& r = *outcome.failure;
      if (!gonso::detail::valid_errno(r.err)) std::abort();
      using gonso::detail::spawn_step;
      if (r.what == spawn_step::join && (r.value < 0 || static_cast<std::size_t>(r.value) >= limits.join_steps)) {
        std::abort();
      }
      if (r.what == spawn_step::stdio && (r.value < 0 || r.value > 2)) std::abort();
      if (r.what == spawn_step::etc && r.value != -1 &&
          (r.value < 0 || static_cast<std::size_t>(r.value) + 1 >= limits.etc_files)) {
        std::abort();
      }
      if (r.what == spawn_step::rlimit && (r.value < 0 || static_cast<std::size_t>(r.value) >= limits.rlimits)) {
        std::abort();
      }
      if (r.what == spawn_step::fds && (r.value < 0 || static_cast<std::size_t>(r.value) >= limits.fds)) std::abort();
      if ((r.what == spawn_step::bounding || r.what == spawn_step::ambient) &&
          (r.value < -1 || r.value > limits.last_cap)) {
        std::abort();
      }
      if (r.what == spawn_step::pid) std::abort();
    }
  } catch (const std::system_error&) {
  }
  return 0;
}

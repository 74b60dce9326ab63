// libFuzzer target: run_in_process reports (detail::parse_report and
// detail::decode_report) over arbitrary bytes. Every input must end in a
// value or a std::system_error / gonso::ProcessError: no crash, no read
// outside the input, no allocation beyond max_report_body.
#include <sys/wait.h>

#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <system_error>

#include <gonso/detail/process/report.hpp>

namespace {

template <typename R>
void decode(std::span<const char> bytes, int status) {
  try {
    if constexpr (std::is_void_v<R>) {
      gonso::detail::decode_report<R>(bytes, status);
    } else {
      (void)gonso::detail::decode_report<R>(bytes, status);
    }
  } catch (const gonso::ProcessError&) {
  } catch (const std::system_error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const char> bytes(reinterpret_cast<const char*>(data), size);
  try {
    const gonso::detail::parsed_report parsed = gonso::detail::parse_report(bytes);
    // Every view lies inside the input.
    for (const std::string_view view : {parsed.body, parsed.type, parsed.text}) {
      if (!view.empty() && (view.data() < bytes.data() || view.data() + view.size() > bytes.data() + bytes.size())) {
        std::abort();
      }
    }
    if (parsed.what == gonso::detail::parsed_report::kind::join && !gonso::detail::valid_errno(parsed.err))
      std::abort();
  } catch (const std::system_error&) {
  }
  for (const int status : {W_EXITCODE(0, 0), W_EXITCODE(3, 0), SIGKILL, -1}) {
    decode<void>(bytes, status);
    decode<int>(bytes, status);
    decode<bool>(bytes, status);
    decode<std::string>(bytes, status);
  }
  return 0;
}

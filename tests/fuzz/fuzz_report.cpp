// libFuzzer target: run_in_process reports (detail::parse_report and
// detail::decode_report) over arbitrary bytes, results holding fds
// (detail::result_reader) included, with a few fds "received" alongside.
// Every input must end in a value or a std::system_error /
// gonso::ProcessError: no crash, no read outside the input, no allocation
// beyond max_report_body, and no fd left open.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include <gonso/detail/process/report.hpp>

namespace {

// `fds` as the child would have sent them: fresh ones each time, since a
// decode that succeeds hands them to its value and one that fails closes them.
std::vector<gonso::Fd> received(std::size_t fds) {
  std::vector<gonso::Fd> out;
  for (std::size_t i = 0; i < fds; ++i) out.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  return out;
}

template <typename R>
void decode(std::span<const char> bytes, int status, std::size_t fds = 0) {
  try {
    if constexpr (std::is_void_v<R>) {
      gonso::detail::decode_report<R>(bytes, status, received(fds));
    } else {
      (void)gonso::detail::decode_report<R>(bytes, status, received(fds));
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
  const int open_before = ::fcntl(0, F_DUPFD_CLOEXEC, 0);  // the lowest free fd now
  ::close(open_before);
  for (std::size_t fds = 0; fds < 4; ++fds) {
    decode<gonso::Fd>(bytes, 0, fds);
    decode<std::vector<gonso::Fd>>(bytes, 0, fds);
    decode<std::pair<int, std::string>>(bytes, 0, fds);
    decode<std::tuple<gonso::Fd, bool, std::string, std::vector<gonso::Fd>, double>>(bytes, 0, fds);
  }
  const int open_after = ::fcntl(0, F_DUPFD_CLOEXEC, 0);
  ::close(open_after);
  if (open_after != open_before) std::abort();  // an fd was left open
  return 0;
}

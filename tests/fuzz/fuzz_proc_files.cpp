// libFuzzer target: what a Target reads from another process's /proc files
// (detail::parse_status, parse_id_map, parse_environ, cgroup2_path with
// find_cgroup2). The first byte chooses the parser; the rest is the file
// (for cgroup2_path: /proc/PID/cgroup, a NUL, then mountinfo). Every input
// must end in a result that keeps the parser's promises, or in a
// std::system_error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <system_error>

#include <gonso/target.hpp>

namespace d = gonso::detail;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    switch (data[0] % 4) {
      case 0: {
        const d::proc_status s = d::parse_status(text);
        if (s.groups.size() > text.size()) std::abort();
        break;
      }
      case 1: {
        for (const d::id_line& l : d::parse_id_map(text)) {
          // Whatever the map says, a translated id stays a 32-bit id in its line.
          if (const auto in = d::map_to_inside({l}, l.outside); in && l.count == 0) std::abort();
        }
        break;
      }
      case 2: {
        for (const std::string& entry : d::parse_environ(text)) {
          if (entry.find('\0') != std::string::npos) std::abort();
          const std::size_t eq = entry.find('=');
          if (eq == std::string::npos || eq == 0) std::abort();
        }
        break;
      }
      default: {
        const std::size_t nul = text.find('\0');
        if (nul == std::string_view::npos) return 0;
        const std::string path = d::cgroup2_path(text.substr(0, nul), text.substr(nul + 1), 1);
        // Never a climb out of the mount, never a NUL for open(2) to cut.
        if (path.find('\0') != std::string::npos || path.find("/../") != std::string::npos || path.ends_with("/..")) {
          std::abort();
        }
        break;
      }
    }
  } catch (const std::system_error&) {
  }
  return 0;
}

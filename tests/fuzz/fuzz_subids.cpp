// libFuzzer target: the subordinate id files (/etc/subuid, /etc/subgid) as
// detail::parse_subordinate_ids reads them, and the map subordinate_map
// makes of what they grant. The first byte holds options (bit 0: map the
// caller's own id to 0; bit 1: ask for the granted ranges back as explicit
// lines), the next four the caller's uid (little-endian); the rest is the
// user's name, a NUL, then the file. Every input must end in ranges and a
// map that keep the promises below, or in std::system_error or
// std::invalid_argument.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <vector>

#include <gonso/detail/process/subordinate_ids.hpp>

namespace d = gonso::detail;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 5) return 0;
  const bool self_as_root = (data[0] & 1) != 0;
  const bool explicit_lines = (data[0] & 2) != 0;
  const std::uint32_t uid = std::uint32_t{data[1]} | std::uint32_t{data[2]} << 8 | std::uint32_t{data[3]} << 16 |
                            std::uint32_t{data[4]} << 24;
  const std::string_view rest(reinterpret_cast<const char*>(data + 5), size - 5);
  const std::size_t nul = rest.find('\0');
  const std::string_view name = nul == std::string_view::npos ? std::string_view() : rest.substr(0, nul);
  const std::string_view file = nul == std::string_view::npos ? rest : rest.substr(nul + 1);
  const std::vector<d::subid_range> granted = d::parse_subordinate_ids(file, name, uid);
  std::vector<gonso::IdRange> wanted;
  for (const d::subid_range& g : granted) {
    // Never a range of no ids, never one past the largest id.
    if (g.count == 0 || g.first > UINT32_MAX - g.count) std::abort();
    if (explicit_lines && wanted.size() < 8)
      wanted.push_back({static_cast<std::uint32_t>(wanted.size() + 1), g.first, 1});
  }
  try {
    const std::vector<gonso::IdRange> map =
        d::subordinate_map(granted, wanted, self_as_root, uid, "uid", "/etc/subuid", d::subid_owner(name, uid));
    if (map.empty() || map.size() > 340) std::abort();
    std::uint64_t next = 0;
    for (std::size_t i = 0; i < map.size(); ++i) {
      const gonso::IdRange& m = map[i];
      if (m.count == 0 || m.inside > UINT32_MAX - m.count || m.outside > UINT32_MAX - m.count) std::abort();
      const bool own = self_as_root && i == 0;
      if (own && (m.inside != 0 || m.outside != uid || m.count != 1)) std::abort();
      if (!own) {
        // Every line but the caller's own lies within one granted range.
        bool within = false;
        for (const d::subid_range& g : granted) {
          within = within || (m.outside >= g.first && std::uint64_t{m.outside} - g.first + m.count <= g.count);
        }
        if (!within) std::abort();
      }
      // All granted ranges are packed one after the other inside.
      if (!explicit_lines && m.inside != next) std::abort();
      next = std::uint64_t{m.inside} + m.count;
      for (std::size_t j = 0; j < i; ++j) {
        const gonso::IdRange& o = map[j];
        if (!explicit_lines && m.outside < std::uint64_t{o.outside} + o.count &&
            o.outside < std::uint64_t{m.outside} + m.count) {
          std::abort();
        }
      }
    }
  } catch (const std::system_error&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}

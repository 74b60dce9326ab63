// gonso: the base of gonso's fmt formatters, which print a type as text.
// SPDX-License-Identifier: MIT
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include <fmt/core.h>

namespace gonso::detail {

/// Writes a value's text, padded as a string would be ("{:>12}"). The text
/// is built with fmt::format and padded with fmt::vformat, both compiled
/// once in the fmt library: formatting into the context's output here (with
/// fmt::format_to, or by deriving from fmt::formatter<std::string_view>)
/// would compile fmt's formatting engine into every translation unit that
/// includes gonso, which more than doubled its compile time. Error messages
/// are never on a fast path.
class text_formatter {
 public:
  constexpr auto parse(fmt::format_parse_context& ctx) {
    auto it = ctx.begin();
    for (; it != ctx.end() && *it != '}'; ++it) {
      if (*it == '{' || size_ == spec_.size()) ctx.on_error("gonso types take only fill, align and width");
      spec_[size_++] = *it;
    }
    return it;
  }

 protected:
  auto write(std::string_view text, fmt::format_context& ctx) const {
    if (size_ == 0) return std::copy(text.begin(), text.end(), ctx.out());
    const std::string padded = fmt::vformat("{:" + std::string(spec_.data(), size_) + "}", fmt::make_format_args(text));
    return std::copy(padded.begin(), padded.end(), ctx.out());
  }

 private:
  std::array<char, 16> spec_{};
  std::size_t size_ = 0;
};

}  // namespace gonso::detail

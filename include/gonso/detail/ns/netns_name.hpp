// gonso: what may name a network namespace under /run/netns and /etc/netns.
// SPDX-License-Identifier: MIT
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace gonso::detail {

/// Throws std::invalid_argument unless `name` can name a file directly in
/// /run/netns: not empty, not "." or "..", no '/', no NUL, at most 255 bytes.
/// Names that would escape /run/netns or /etc/netns are refused before
/// anything is touched.
inline void check_netns_name(std::string_view name) {
  const auto refuse = [&](const char* why) {
    throw std::invalid_argument(fmt::format("invalid network namespace name {:?}: {}", std::string(name), why));
  };
  if (name.empty()) refuse("it is empty");
  if (name == "." || name == "..") refuse("it names a folder");
  if (name.find('/') != std::string_view::npos) refuse("it holds a '/'");
  if (name.find('\0') != std::string_view::npos) refuse("it holds a NUL");
  if (name.size() > 255) refuse("it is longer than 255 bytes");
}

}  // namespace gonso::detail

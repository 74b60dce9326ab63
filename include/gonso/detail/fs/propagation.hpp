// gonso: the mount(2) flag of each Propagation, for a new mount namespace's /.
// SPDX-License-Identifier: MIT
#pragma once

#include <sys/mount.h>

#include <gonso/options.hpp>

namespace gonso::detail {

/// The mount(2) flag of a propagation, 0 for unchanged.
[[nodiscard]] inline unsigned long propagation_flag(Propagation p) noexcept {
  switch (p) {
    case Propagation::rprivate:
      return MS_PRIVATE;
    case Propagation::rslave:
      return MS_SLAVE;
    case Propagation::rshared:
      return MS_SHARED;
    case Propagation::unchanged:
      return 0;
  }
  return MS_PRIVATE;
}

}  // namespace gonso::detail

// gonso: owning file descriptor, inside the library.
// SPDX-License-Identifier: MIT
#pragma once

#include <gonso/fd.hpp>

namespace gonso::detail {

/// The engines' name for the public gonso::Fd: one owned-fd type, so that
/// an fd made inside (Set::socket, a result of run_in_process) is handed
/// out as it is.
using unique_fd = ::gonso::Fd;

}  // namespace gonso::detail

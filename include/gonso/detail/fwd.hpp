// gonso: the library's own types that public headers name as friends.
// SPDX-License-Identifier: MIT
#pragma once

namespace gonso::detail {
class worker;
}  // namespace gonso::detail

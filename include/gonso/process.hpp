// gonso: the old name of <gonso/error.hpp>, kept for one release.
// SPDX-License-Identifier: MIT
#pragma once

#include <gonso/error.hpp>

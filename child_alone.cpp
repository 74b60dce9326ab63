#include <gonso/child.hpp>

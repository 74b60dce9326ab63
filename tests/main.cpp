// The Catch2 main, alone in its file so that the test files build quickly.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

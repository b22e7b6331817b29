// The Catch2 main of all pyvisor test executables, plus printing of caf::error
// in assertion messages.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

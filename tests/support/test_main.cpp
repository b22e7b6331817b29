// The Catch2 main of all pyvisor test executables. pyvisor's log level in
// tests comes from $PYVISOR_TEST_LOG (default: critical) to keep output readable.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdlib>

#include <spdlog/logger.h>

#include "messages/log.hpp"

int main(int argc, char* argv[]) {
  auto level = std::getenv("PYVISOR_TEST_LOG");
  pyvisor::log().set_level(spdlog::level::from_str(level ? level : "critical"));
  return Catch::Session().run(argc, argv);
}

// pyvisor's log level in the test executables: $PYVISOR_TEST_LOG (default
// critical, to keep output readable), set as the run starts. Catch2's own
// main comes prebuilt (Debian's libCatch2WithMain.a), so no test tree
// compiles Catch2's implementation; this listener is an object file, not an
// archive member, so that the linker keeps its registration.
// The listener base class is among Catch2 v2's external interfaces.
#define CATCH_CONFIG_EXTERNAL_INTERFACES
#include <catch2/catch.hpp>

#include <cstdlib>

#include <spdlog/logger.h>

#include "messages/log.hpp"

namespace {

struct log_level_listener : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;

  void testRunStarting(const Catch::TestRunInfo& info) override {
    auto level = std::getenv("PYVISOR_TEST_LOG");
    pyvisor::log().set_level(spdlog::level::from_str(level ? level : "critical"));
    TestEventListenerBase::testRunStarting(info);
  }
};

} // namespace

CATCH_REGISTER_LISTENER(log_level_listener)

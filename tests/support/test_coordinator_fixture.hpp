// A fixture running an actor system on CAF's deterministic test coordinator:
// nothing runs until the test calls run(), and time only moves through
// advance(), so tests of timers and back-off never sleep. The system is the
// installed fixture's (pyvisor/mock_pool_fixture.hpp); what is here asserts
// with Catch2.
#pragma once

#include "support/catch_caf.hpp"

#include "caf/sec.hpp"

#include "pyvisor/mock_pool_fixture.hpp"
#include "pyvisor/payload.hpp"

namespace pyvisor::test {

struct test_coordinator_fixture : pyvisor::testing::test_coordinator_base {
  /// Sends `xs...` to `dst`, runs everything and returns the reply as `T`.
  template <class T, class Handle, class... Ts>
  T ask(const Handle& dst, Ts&&... xs) {
    self->send(dst, std::forward<Ts>(xs)...);
    run();
    T result{};
    bool got = false;
    self->receive([&](T& x) {
      result = std::move(x);
      got = true;
    },
                  [&](caf::error& err) { FAIL("request failed: " << sys.render(err)); },
                  caf::after(std::chrono::seconds(0)) >> [&] { FAIL("no reply"); });
    REQUIRE(got);
    return result;
  }

  /// The reply `who` has received (a payload or an error), or the CAF error
  /// request_timeout when nothing has arrived yet. Never waits.
  static caf::expected<payload> next_reply(caf::scoped_actor& who) {
    caf::expected<payload> result{caf::make_error(caf::sec::request_timeout)};
    who->receive([&](payload& p) { result = std::move(p); },
                 [&](caf::error& e) { result = std::move(e); },
                 caf::after(std::chrono::seconds(0)) >> [] {});
    return result;
  }

  caf::expected<payload> next_reply() {
    return next_reply(self);
  }

  /// Monitors `hdl` so that next_down() sees its exit.
  template <class Handle>
  void watch(const Handle& hdl) {
    self->monitor(hdl);
  }

  /// The exit reason of the next watched actor that terminated, or nothing
  /// if none did.
  caf::optional<caf::error> next_down() {
    caf::optional<caf::error> result;
    self->receive([&](caf::down_msg& dm) { result = dm.reason; },
                  caf::after(std::chrono::seconds(0)) >> [] {});
    return result;
  }
};

} // namespace pyvisor::test

// pyvisor::testing::mock_pool_fixture: what an application's actor test
// needs to run its own actors against a pyvisor pool without Python, in a
// few lines (installed as <pyvisor/mock_pool_fixture.hpp>).
//
// It owns an actor system on CAF's deterministic test coordinator (nothing
// runs until run(), time moves only through advance(): a mock command's
// latency of seconds costs no real time) and a pool of mock workers serving
// the mock's built-ins (ping, echo, session.put/get/keys/drop, sleep, crash,
// hang, raise) and the commands the test registers with `command()`:
//
//   struct my_test : pyvisor::testing::mock_pool_fixture {};
//   TEST_CASE_METHOD(my_test, "the greeter greets", "[app]") {
//     command("greet", [](const pyvisor::payload& args, const std::string&) {
//       return pyvisor::pack("hello " + *pyvisor::unpack<std::string>(args));
//     });
//     auto g = sys.spawn(greeter, start());
//     auto reply = ask<std::string>(g, greet_atom::value, std::string{"ada"});
//     CHECK(*reply == "hello ada");
//   }
//
// Test-framework neutral (Catch2's TEST_CASE_METHOD, GoogleTest's TEST_F,
// plain main() alike): outcomes are returned, never asserted here. The
// fixture stops the pool and every actor it spawned when it is destroyed.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/exit_reason.hpp"
#include "caf/scheduler/test_coordinator.hpp"
#include "caf/scoped_actor.hpp"
#include "caf/send.hpp"

#include "pyvisor/mock_worker.hpp"
#include "pyvisor/pool.hpp"

namespace pyvisor::testing {

/// CAF's deterministic test coordinator, quiet, with pyvisor's message types.
struct test_coordinator_config : caf::actor_system_config {
  test_coordinator_config() {
    set("scheduler.policy", caf::atom("testing"));
    set("logger.verbosity", caf::atom("quiet"));
    add_pool_types(*this);
  }
};

/// An actor system on the test coordinator and an actor to talk from.
class test_coordinator_base {
public:
  test_coordinator_config cfg;
  caf::actor_system sys{cfg};
  caf::scheduler::test_coordinator& sched{
    dynamic_cast<caf::scheduler::test_coordinator&>(sys.scheduler())};
  caf::scoped_actor self{sys};

  /// Runs until no actor has anything left to do (timers do not fire).
  void run() {
    sched.run();
  }

  /// Moves the clock forward, fires the timers due and runs what they
  /// trigger.
  void advance(caf::timespan d) {
    sched.advance_time(d);
    sched.run();
  }
};

class mock_pool_fixture : public test_coordinator_base {
public:
  /// The pool's settings: a mock backend of 2 workers without latency;
  /// change them before start().
  pool_config pool_settings = [] {
    pool_config pc;
    pc.size = 2;
    pc.backend = backend_kind::mock;
    return pc;
  }();
  pool_actor pool;

  ~mock_pool_fixture() {
    if (pool)
      caf::anon_send_exit(pool, caf::exit_reason::kill);
    sched.run();
  }

  /// Registers a command the mock workers serve (shadowing a built-in of
  /// the same name), with a latency of its own; before start().
  void command(std::string name,
               std::function<caf::expected<payload>(const payload& args,
                                                    const std::string& session)>
                 run,
               caf::timespan latency = caf::timespan{0}) {
    pool_settings.mock.commands[std::move(name)] = mock_command{std::move(run), latency};
  }

  /// Starts the pool (once) and runs until its workers are ready.
  pool_actor start() {
    if (!pool) {
      pool = spawn_pool(sys, pool_settings);
      sched.run();
    }
    return pool;
  }

  /// Sends `xs...` to `dst` and runs, moving the clock in steps of `step`
  /// up to `limit` until a reply arrives: the reply as `T`, the error it
  /// got, or sec::request_timeout when none came within `limit`.
  template <class T, class Handle, class... Ts>
  caf::expected<T> ask(const Handle& dst, Ts&&... xs) {
    return ask_within<T>(std::chrono::seconds(60), dst, std::forward<Ts>(xs)...);
  }

  template <class T, class Handle, class... Ts>
  caf::expected<T> ask_within(caf::timespan limit, const Handle& dst, Ts&&... xs) {
    self->send(dst, std::forward<Ts>(xs)...);
    run();
    auto step = std::chrono::milliseconds(1);
    for (caf::timespan waited{0};; waited += step) {
      std::optional<caf::expected<T>> result;
      self->receive([&](T& x) { result = std::move(x); },
                    [&](caf::error& err) { result = std::move(err); },
                    caf::after(std::chrono::seconds(0)) >> [] {});
      if (result)
        return std::move(*result);
      if (waited >= limit)
        return caf::make_error(caf::sec::request_timeout);
      advance(step);
    }
  }
};

} // namespace pyvisor::testing

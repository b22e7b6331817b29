// Example 3: testing your own actor that calls pyvisor, with the mock
// backend instead of real Python (10-100x faster, deterministic, with
// injectable latency, errors, crashes and hangs).
//
// The actor under test, `greeter`, asks the pool to echo a greeting and
// counts failures; the test runs it against a mock pool on CAF's
// deterministic test coordinator, so simulated latency costs no real time.
#include <cstdlib>
#include <iostream>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/event_based_actor.hpp"
#include "caf/exit_reason.hpp"
#include "caf/scheduler/test_coordinator.hpp"
#include "caf/scoped_actor.hpp"
#include "caf/send.hpp"

#include <pyvisor/pool.hpp>

using greet_atom = caf::atom_constant<caf::atom("greet")>;

// Your actor: greets through Python, answers with the greeting or "(failed)".
caf::behavior greeter(caf::event_based_actor* self, pyvisor::pool_actor pool) {
  return {
    [=](greet_atom, std::string name) {
      auto rp = self->make_response_promise<std::string>();
      self->request(pool, std::chrono::seconds(5), pyvisor::make_execute("echo", "hello " + name))
        .then([rp](pyvisor::payload& p) mutable { rp.deliver(*pyvisor::unpack<std::string>(p)); },
              [rp](caf::error&) mutable { rp.deliver(std::string{"(failed)"}); });
      return rp;
    },
  };
}

#define EXPECT(cond)                                                                               \
  if (!(cond)) {                                                                                   \
    std::cerr << "FAILED: " #cond "\n";                                                            \
    return EXIT_FAILURE;                                                                           \
  }

int main() {
  caf::actor_system_config cfg;
  pyvisor::add_pool_types(cfg);
  cfg.set("scheduler.policy", caf::atom("testing"));
  caf::actor_system sys{cfg};
  auto& sched = dynamic_cast<caf::scheduler::test_coordinator&>(sys.scheduler());
  pyvisor::pool_config pc;
  pc.size = 2;
  pc.backend = pyvisor::backend_kind::mock;
  pc.mock.latency_min = pc.mock.latency_max = std::chrono::milliseconds(50);
  auto pool = pyvisor::spawn_pool(sys, pc);
  auto g = sys.spawn(greeter, pool);
  caf::scoped_actor self{sys};
  self->send(g, greet_atom::value, std::string{"ada"});
  sched.run();
  sched.advance_time(std::chrono::milliseconds(50)); // the mock's latency
  sched.run();
  std::string reply;
  self->receive([&](std::string& s) { reply = s; }, caf::after(std::chrono::seconds(0)) >> [] {});
  EXPECT(reply == "hello ada");
  caf::anon_send_exit(g, caf::exit_reason::kill);
  caf::anon_send_exit(pool, caf::exit_reason::kill);
  sched.run();
  std::cout << "test_with_mock: greeter answered through the mock pool\n";
  return EXIT_SUCCESS;
}

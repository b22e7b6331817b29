// Example 3: testing your own actor that calls pyvisor, with the mock
// backend instead of real Python (10-100x faster, deterministic, with
// injectable latency, errors, crashes and hangs), in Catch2 with the
// installed fixture <pyvisor/mock_pool_fixture.hpp>.
//
// The actor under test, `greeter`, asks the pool to run the command
// "greet" and answers "(failed)" when that fails; the test stands in for the
// Python command with a C++ one of 2 s latency, which costs no real time on
// CAF's test coordinator.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include "caf/event_based_actor.hpp"

#include <pyvisor/mock_pool_fixture.hpp>

using greet_atom = caf::atom_constant<caf::atom("greet")>;

// Your actor: greets through Python, answers with the greeting or "(failed)".
caf::behavior greeter(caf::event_based_actor* self, pyvisor::pool_actor pool) {
  return {
    [=](greet_atom, std::string name) {
      auto rp = self->make_response_promise<std::string>();
      self->request(pool, std::chrono::seconds(5), pyvisor::make_execute("greet", name))
        .then([rp](pyvisor::payload& p) mutable { rp.deliver(*pyvisor::unpack<std::string>(p)); },
              [rp](caf::error&) mutable { rp.deliver(std::string{"(failed)"}); });
      return rp;
    },
  };
}

struct greeter_test : pyvisor::testing::mock_pool_fixture {
  greeter_test() {
    // Stands in for the Python command the greeter calls.
    command(
      "greet",
      [](const pyvisor::payload& args, const std::string&) -> caf::expected<pyvisor::payload> {
        auto name = pyvisor::unpack<std::string>(args);
        if (!name)
          return pyvisor::make_error(pyvisor::error_code::bad_request, "a name, please");
        return pyvisor::pack("hello " + *name);
      },
      std::chrono::seconds(2)); // 2 s of latency, no real time
  }
};

TEST_CASE_METHOD(greeter_test, "the greeter answers through the pool", "[example]") {
  auto g = sys.spawn(greeter, start());
  auto reply = ask<std::string>(g, greet_atom::value, std::string{"ada"});
  REQUIRE(reply);
  CHECK(*reply == "hello ada");
  caf::anon_send_exit(g, caf::exit_reason::kill);
}

TEST_CASE_METHOD(greeter_test, "the greeter says so when Python fails", "[example]") {
  pool_settings.mock.error_rate = 1.0; // every request: python_error
  auto g = sys.spawn(greeter, start());
  auto reply = ask<std::string>(g, greet_atom::value, std::string{"ada"});
  REQUIRE(reply);
  CHECK(*reply == "(failed)");
  caf::anon_send_exit(g, caf::exit_reason::kill);
}

// Unit tests of the mock worker (actors/worker/mock_worker.hpp) as a user's
// actor test uses it: commands registered by the test, with their latency on
// the test clock, and the built-ins taking what the Python ones take.
#include <map>
#include <stdexcept>
#include <string>

#include "support/test_coordinator_fixture.hpp"

#include "caf/send.hpp"

#include "pyvisor/mock_worker.hpp"
#include "pyvisor/pool.hpp"

using namespace pyvisor;
using namespace std::chrono_literals;

namespace {

/// A stand-in for a user's Python command: counts words per session.
mock_config word_counter() {
  mock_config cfg;
  auto counts = std::make_shared<std::map<std::string, int>>();
  cfg.commands["wc.feed"] = {[counts](const payload& args, const std::string& session)
                               -> caf::expected<payload> {
                               auto text = unpack<std::string>(args);
                               if (!text)
                                 return make_error(error_code::bad_request, "expected a string");
                               int words = 0;
                               bool in_word = false;
                               for (char c : *text) {
                                 bool space = c == ' ';
                                 words += !space && !in_word ? 1 : 0;
                                 in_word = !space;
                               }
                               return pack((*counts)[session] += words);
                             },
                             20ms};
  cfg.commands["wc.fail"] = {[](const payload&, const std::string&) -> caf::expected<payload> {
    throw std::runtime_error("boom");
  }};
  return cfg;
}

struct fixture : test::test_coordinator_fixture {
  worker_actor worker;

  ~fixture() {
    if (worker)
      caf::anon_send_exit(worker, caf::exit_reason::kill);
    run();
  }
};

} // namespace

TEST_CASE_METHOD(fixture, "a test registers its own commands on the mock", "[unit][mock]") {
  worker = spawn_mock_worker(sys, word_counter());
  run();
  self->send(worker, make_execute("wc.feed", std::string{"two words"}, "doc-1"));
  run();
  // Its latency runs on the test clock.
  advance(10ms);
  CHECK_FALSE(next_reply());
  advance(10ms);
  auto first = next_reply();
  REQUIRE(first);
  CHECK(*unpack<int>(*first) == 2);
  self->send(worker, make_execute("wc.feed", std::string{"and three more"}, "doc-1"));
  run();
  advance(20ms);
  auto second = next_reply();
  REQUIRE(second);
  CHECK(*unpack<int>(*second) == 5); // per session, as the user's command keeps it
  // Errors it returns, and exceptions it throws, reach the caller typed.
  self->send(worker, make_execute("wc.feed", 42, "doc-1"));
  run();
  advance(20ms);
  auto bad = next_reply();
  REQUIRE_FALSE(bad);
  CHECK(code_of(bad.error()) == error_code::bad_request);
  self->send(worker, make_execute("wc.fail", 0));
  run();
  auto failed = next_reply();
  REQUIRE_FALSE(failed);
  CHECK(code_of(failed.error()) == error_code::python_error);
  // And the worker lists them among its commands.
  auto st = ask<worker_status>(worker, status_atom::value);
  CHECK(std::count(st.commands.begin(), st.commands.end(), "wc.feed") == 1);
}

TEST_CASE_METHOD(fixture, "a pool of mocks serves the registered commands", "[unit][mock]") {
  pool_config cfg;
  cfg.size = 2;
  cfg.backend = backend_kind::mock;
  cfg.mock = word_counter();
  auto pool = spawn_pool(sys, cfg);
  run();
  ask<pool_stats>(pool, ready_atom::value);
  self->send(pool, make_execute("wc.feed", std::string{"a b c"}, "s"));
  run();
  advance(20ms);
  auto r = next_reply();
  REQUIRE(r);
  CHECK(*unpack<int>(*r) == 3);
  caf::anon_send_exit(pool, caf::exit_reason::kill);
  run();
}

TEST_CASE_METHOD(fixture, "the mock's sleep takes a float, as the Python one does",
                 "[unit][mock]") {
  worker = spawn_mock_worker(sys, mock_config{});
  run();
  self->send(worker, make_execute("sleep", std::map<std::string, double>{{"ms", 2.5}}));
  run();
  advance(2ms);
  CHECK_FALSE(next_reply());
  advance(1ms);
  auto r = next_reply();
  REQUIRE(r);
  CHECK(*unpack<double>(*r) == 2.5);
}

// Unit tests of the error vocabulary and its CAF category registration.
#include "support/catch_caf.hpp"

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/exit_reason.hpp"
#include "caf/sec.hpp"

#include "pyvisor/registry.hpp"

using namespace pyvisor;

TEST_CASE("every error code has a wire name that parses back", "[unit][errors]") {
  const std::vector<std::string> names{
    "bad_request",  "unknown_command", "python_error", "worker_crashed", "timeout",
    "session_expired", "session_lost", "overloaded",   "shutting_down",  "protocol_error",
    "unknown_method", "unavailable"};
  for (size_t i = 0; i < names.size(); ++i) {
    auto code = static_cast<error_code>(i + 1);
    CHECK(to_string(code) == names[i]);
    error_code parsed = error_code::none;
    CHECK(from_string(names[i], parsed));
    CHECK(parsed == code);
  }
  error_code x = error_code::none;
  CHECK_FALSE(from_string("no_such_code", x));
}

TEST_CASE("pyvisor errors carry message, Python type and traceback", "[unit][errors]") {
  auto err = make_error(error_code::python_error, "division by zero", "ZeroDivisionError",
                        "Traceback (most recent call last): ...");
  CHECK(err == error_code::python_error);
  CHECK(err != error_code::timeout);
  auto info = info_of(err);
  CHECK(info.code == error_code::python_error);
  CHECK(info.message == "division by zero");
  CHECK(info.python_type == "ZeroDivisionError");
  CHECK(info.traceback == "Traceback (most recent call last): ...");
  CHECK(to_string_readable(err) == "python_error: ZeroDivisionError: division by zero");
  caf::error plain = error_code::overloaded;
  CHECK(code_of(plain) == error_code::overloaded);
  CHECK(to_string_readable(plain) == "overloaded");
  CHECK(code_of(caf::error{}) == error_code::none);
}

TEST_CASE("CAF's own errors map onto the runtime's codes without CAF's text", "[unit][errors]") {
  CHECK(code_of(caf::make_error(caf::sec::request_timeout)) == error_code::timeout);
  CHECK(code_of(caf::make_error(caf::sec::request_receiver_down)) == error_code::unavailable);
  CHECK(code_of(caf::make_error(caf::sec::unexpected_message)) == error_code::bad_request);
  CHECK(code_of(caf::make_error(caf::sec::cannot_connect_to_node)) == error_code::unavailable);
  CHECK(code_of(caf::make_error(caf::exit_reason::kill)) == error_code::unavailable);
  for (auto e : {caf::sec::request_timeout, caf::sec::request_receiver_down,
                 caf::sec::unexpected_message, caf::sec::unexpected_response,
                 caf::sec::runtime_error, caf::sec::no_actor_published_at_port}) {
    auto info = info_of(caf::make_error(e));
    CAPTURE(caf::to_string(e), info.message);
    CHECK(!info.message.empty());
    CHECK(info.message.find("system_error") == std::string::npos);
    CHECK(info.message.find(caf::to_string(e)) == std::string::npos);
  }
}

TEST_CASE("the registered category renders pyvisor errors readably", "[unit][errors]") {
  caf::actor_system_config cfg;
  add_message_types(cfg);
  cfg.set("scheduler.max-threads", 1);
  caf::actor_system sys{cfg};
  auto rendered = sys.render(make_error(error_code::timeout, "request 3 timed out"));
  CHECK(rendered == "pyvisor.timeout: request 3 timed out");
}

TEST_CASE("a Python error reads once: its type is not said twice", "[unit][errors]") {
  // The worker's message starts with the type already (worker_link's
  // error_of): "python_error: KeyError: KeyError: 'x'" was seen.
  auto err = make_error(error_code::python_error, "KeyError: 'x'", "KeyError", "Traceback...");
  CHECK(to_string_readable(err) == "python_error: KeyError: 'x'");
  // A message without it still names the type.
  auto bare = make_error(error_code::python_error, "'x'", "KeyError", "");
  CHECK(to_string_readable(bare) == "python_error: KeyError: 'x'");
}

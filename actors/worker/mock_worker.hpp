// The in-process mock worker: worker_actor without Python.
//
// For actor-level tests (pyvisor's own and users'): it answers the built-in
// commands (ping, echo, worker.info, session.put/get/keys/drop) and the
// misbehaving ones of pyvisor.testing (sleep, crash, hang, raise) like a real
// worker, 10-100x faster and on CAF's clock, so a test coordinator drives it
// deterministically. Faults can also be injected at random: per request, with
// the given probabilities, it replies with python_error, dies (failing its
// in-flight requests with worker_crashed, idempotent ones handed back to its
// pool), or hangs (the request times out and the mock quits with
// `timeout`, exactly as a real worker is recycled). Latency is uniform in
// [latency_min, latency_max]. The same seed gives the same behaviour.
//
// A test registers its own commands on it (`mock_config::commands`): C++
// callables that take the request's args (and session) and return a result
// or an error, with an optional latency of their own, so an actor test of
// user code can stand in for the user's Python commands, streaming ones
// too (mock_command::chunks). They shadow the built-ins of the same name;
// the built-in `stream.count {n, ms}` yields 0..n-1, one every ms, and
// returns n, as pyvisor.testing's does.
//
// Unknown commands fail with unknown_command; a hung or slow reply is
// delivered through CAF timers, never by blocking.

#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "caf/expected.hpp"
#include "caf/fwd.hpp"
#include "caf/timespan.hpp"

#include "pyvisor/worker_actor.hpp"

namespace pyvisor {

/// A command a test registers on the mock: args (msgpack bytes, e.g. read
/// with pyvisor::unpack) and the request's session id (empty for none) in,
/// a result (e.g. pyvisor::pack(value)) or an error out (make_error with
/// any error_code; python_error for what a Python exception would give).
struct mock_command {
  std::function<caf::expected<payload>(const payload& args, const std::string& session)> run;
  /// Added to the mock's own latency for this command.
  caf::timespan latency{0};
  /// A stand-in for a generator handler: the values it yields. For a
  /// caller that asked for a stream (execute::stream) they go out as chunks,
  /// one every `latency`, paced by the stream window as a Python worker's
  /// (worker_settings::stream_window), and the response is `run`'s result
  /// (nil without one); for any other caller they are the result, as one
  /// list.
  std::function<std::vector<payload>(const payload& args, const std::string& session)> chunks;
};

/// Settings of one mock worker (worker_settings: id, deadlines, stop
/// grace).
struct mock_config : worker_settings {
  caf::timespan latency_min{0};
  caf::timespan latency_max{0};
  /// Probability that a request fails with python_error.
  double error_rate = 0;
  /// Probability that a request makes the worker die.
  double crash_rate = 0;
  /// Probability that a request never gets an answer (then times out).
  double hang_rate = 0;
  uint64_t seed = 1;
  /// Time from spawn to ready.
  caf::timespan startup_delay{0};
  /// The test's own commands, by name (see mock_command).
  std::map<std::string, mock_command> commands;
};

worker_actor spawn_mock_worker(caf::actor_system& sys, mock_config cfg);

} // namespace pyvisor

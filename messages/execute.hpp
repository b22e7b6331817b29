// The request and status records that travel between pyvisor's actors.
//
// `execute` is what a caller sends to a worker (or, later, to the pool): a
// command name, msgpack-encoded arguments that are never re-encoded on their
// way to Python, and the optional session and deadline. The reply is a
// `payload` holding the command's msgpack-encoded result, or a caf::error
// with a pyvisor::error_code.

#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "caf/meta/type_name.hpp"
#include "caf/timespan.hpp"

#include "pyvisor/names.hpp"
#include "pyvisor/payload.hpp"

namespace pyvisor {

/// Largest request deadline: the pool clamps longer ones to it and the RPC
/// gateway refuses them, so that `now + timeout` can never overflow. The
/// operator's own bound (pool.max-request-timeout) is at most this.
constexpr caf::timespan max_request_timeout = std::chrono::hours(24 * 30);

/// Deadlines of requests that name none, by command (a command missing here
/// gets the receiver's request timeout).
using command_timeout_map = std::map<std::string, caf::timespan>;

/// How long a request of `command` that asks for `asked` (0: nothing) may
/// take: what it asked, else its command's default, else `default_timeout`;
/// clamped to the receiver's bound.
inline caf::timespan effective_timeout(caf::timespan asked, const std::string& command,
                                       const command_timeout_map& per_command,
                                       caf::timespan default_timeout, caf::timespan bound) {
  bound = std::min(bound, max_request_timeout);
  if (asked.count() > 0)
    return std::min(asked, bound);
  if (auto i = per_command.find(command); i != per_command.end())
    return std::min(i->second, bound);
  return std::min(default_timeout, bound);
}

/// Runs `command` with `args` in a Python worker.
struct execute {
  /// Name under which the Python handler was registered.
  std::string command;
  /// Arguments: exactly one msgpack value (nil by default).
  payload args;
  /// Session id; empty means stateless.
  std::string session;
  /// Deadline for this request; zero means the receiver's default.
  caf::timespan timeout{0};
  /// Whether running the command twice is harmless (allows retries).
  bool idempotent = false;
  /// Set by the runtime: how often this request was already retried.
  uint32_t attempts = 0;
  /// The caller's own name for this request (0: none), unique among its
  /// requests in flight: what it passes to cancel it (cancel_atom, pool.hpp).
  uint64_t tag = 0;
  /// The caller takes a generator handler's values as they come: each as a
  /// (chunk_atom, tag, payload) message to the caller before the response,
  /// which carries the generator's return value; the caller acknowledges
  /// what it took with (taken_atom, tag, n) to the pool (README,
  /// "Streaming"). Without it a generator's values are the result, as one
  /// list.
  bool stream = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, execute& x) {
  return f(caf::meta::type_name("pyvisor::execute"), x.command, x.args, x.session,
           x.timeout, x.idempotent, x.attempts, x.tag, x.stream);
}

/// Convenience: builds an execute request from any msgpack-adaptable value.
template <class T>
execute make_execute(std::string command, const T& args);

/// Convenience: as above, for session `session`.
template <class T>
execute make_execute(std::string command, const T& args, std::string session) {
  execute result;
  result.command = std::move(command);
  result.args = pack(args);
  result.session = std::move(session);
  return result;
}

template <class T>
execute make_execute(std::string command, const T& args) {
  return make_execute(std::move(command), args, std::string{});
}

/// Convenience: an execute request without arguments (args = nil).
inline execute make_execute(std::string command) {
  execute result;
  result.command = std::move(command);
  return result;
}

/// The life cycle of a worker: one vocabulary for what a worker reports of
/// itself (worker_status::phase: starting, ready, stopping) and for what the
/// pool reports of its slot (worker_stats::state: also down, between
/// incarnations, and draining, being recycled once its requests finish).
enum class worker_phase : uint8_t {
  down,
  starting,
  ready,
  draining,
  stopping,
  // Add new phases above this line and their names to the table below.
};

constexpr size_t worker_phase_count = static_cast<size_t>(worker_phase::stopping) + 1;

template <>
struct enum_names<worker_phase> {
  static constexpr name_table<worker_phase, worker_phase_count> table{{{
    {worker_phase::down, "down"},
    {worker_phase::starting, "starting"},
    {worker_phase::ready, "ready"},
    {worker_phase::draining, "draining"},
    {worker_phase::stopping, "stopping"},
  }}};
};

/// A snapshot of one worker.
struct worker_status {
  /// Id assigned by whoever spawned it (pool slot).
  uint32_t id = 0;
  /// OS pid of the Python process (0 for in-process backends).
  int64_t pid = 0;
  worker_phase phase = worker_phase::starting;
  /// Requests sent and not yet answered.
  uint32_t in_flight = 0;
  /// Requests answered (successfully or with a Python error).
  uint64_t served = 0;
  /// Python version as announced in the hello frame.
  std::string python;
  /// Commands the worker announced.
  std::vector<std::string> commands;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_status& x) {
  return f(caf::meta::type_name("pyvisor::worker_status"), x.id, x.pid, x.phase,
           x.in_flight, x.served, x.python, x.commands);
}

} // namespace pyvisor

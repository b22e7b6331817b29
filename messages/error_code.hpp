// pyvisor::error_code: the one error vocabulary of the whole runtime.
//
// Every failure a caller can see is a caf::error whose category is the atom
// "pyvisor" and whose code is one of these values; the same names are the
// `code` strings on every wire (MessagePack-RPC responses, Python replies).
// The error's context message always starts with a human-readable string; a
// Python error adds the exception type and the traceback (see error_info).
//
// Register the category with an actor_system_config through
// pyvisor::add_message_types (messages/registry.hpp) so that
// actor_system::render prints these errors readably; pyvisor::to_string does
// the same without a system.

#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "caf/atom.hpp"
#include "caf/error.hpp"

#include "pyvisor/names.hpp"

namespace pyvisor {

enum class error_code : uint8_t {
  /// Not an error; never used in a caf::error (CAF reserves code 0).
  none = 0,
  /// The request itself is malformed: bad arguments, oversized, no session.
  bad_request,
  /// The worker has no handler registered under the requested name.
  unknown_command,
  /// The Python handler raised; the context carries type and traceback.
  python_error,
  /// The worker process died (or was recycled) while the request was in flight.
  worker_crashed,
  /// The request did not complete before its deadline.
  timeout,
  /// The named session was idle longer than the session timeout.
  session_expired,
  /// The worker that held the session's state died; the state is gone.
  session_lost,
  /// The pool's wait queue is full; retry later.
  overloaded,
  /// The runtime is stopping and accepts no new work.
  shutting_down,
  /// A peer broke the wire protocol (bad frame, oversized frame, unknown id).
  protocol_error,
  /// RPC only: no such method (never produced by the actors themselves).
  unknown_method,
  /// No pool can serve now (it is restarting after giving up); retry later.
  unavailable,
  /// The caller (or its connection) cancelled the request.
  cancelled,
  /// RPC only: the connection has not authenticated (`auth` with the
  /// node's token) or gave a wrong token; it is closed after this answer.
  unauthenticated,
  // Add new codes above this line, and their names to the table below
  // (name_of checks both).
};

/// Number of error codes, none included (the last one + 1).
constexpr size_t error_code_count = static_cast<size_t>(error_code::unauthenticated) + 1;

/// The wire names (name_of, from_string, to_string; names.hpp).
template <>
struct enum_names<error_code> {
  static constexpr name_table<error_code, error_code_count> table{{{
    {error_code::none, "none"},
    {error_code::bad_request, "bad_request"},
    {error_code::unknown_command, "unknown_command"},
    {error_code::python_error, "python_error"},
    {error_code::worker_crashed, "worker_crashed"},
    {error_code::timeout, "timeout"},
    {error_code::session_expired, "session_expired"},
    {error_code::session_lost, "session_lost"},
    {error_code::overloaded, "overloaded"},
    {error_code::shutting_down, "shutting_down"},
    {error_code::protocol_error, "protocol_error"},
    {error_code::unknown_method, "unknown_method"},
    {error_code::unavailable, "unavailable"},
    {error_code::cancelled, "cancelled"},
    {error_code::unauthenticated, "unauthenticated"},
  }}};
};

/// The category atom under which pyvisor errors travel in caf::error.
constexpr caf::atom_value error_category = caf::atom("pyvisor");

/// Makes a pyvisor error without further context (enables `caf::error e = error_code::timeout`).
caf::error make_error(error_code x);

/// Makes a pyvisor error with a human-readable message.
caf::error make_error(error_code x, std::string message);

/// session_lost for `session`, worded one way wherever it is noticed:
/// "session 'ID' was lost: WHY" (WHY names what happened to its worker).
caf::error session_lost_error(const std::string& session, const std::string& why);

/// The `python_type` of a worker_crashed error that restarting cannot fix:
/// the interpreter cannot run pyvisor at all (no such interpreter, no
/// msgpack). A pool gives up at once on it instead of spending its restart
/// budget.
constexpr const char* configuration_error_type = "ConfigurationError";

/// Makes a python_error (or another code a Python worker reported) with the
/// exception type and traceback as context.
caf::error make_error(error_code x, std::string message, std::string python_type,
                      std::string traceback);

/// The parts of a pyvisor error, for callers that render or forward it.
struct error_info {
  error_code code = error_code::none;
  std::string message;
  std::string python_type;
  std::string traceback;
};

/// Decomposes `err`. A non-pyvisor error (e.g. a CAF system error such as
/// request_receiver_down) maps to the closest pyvisor code with a readable
/// message of pyvisor's own: no CAF-internal text reaches a user. An empty
/// error yields code none.
error_info info_of(const caf::error& err);

/// Shorthand for info_of(err).code.
error_code code_of(const caf::error& err);

/// Renders any caf::error readably, e.g. "python_error: ZeroDivisionError: division by zero".
std::string to_string_readable(const caf::error& err);

} // namespace pyvisor

// worker_actor: the typed interface of one Python worker.
//
// Every backend (a real Python process, the in-process mock) implements it,
// so pools, tests and users' own actors depend only on this contract:
// - execute -> payload or caf::error (pyvisor::error_code); several requests
//   may be in flight; each is answered exactly once, directly to its sender.
// - ready_atom -> worker_status, answered once the worker is ready (or with
//   its start-up error).
// - status_atom -> worker_status, at once.
// - drop_session_atom, id: forget that session's state (no reply).
// A worker terminates when its process dies, breaks the protocol or a request
// times out; its exit reason is a pyvisor error a supervisor can read.

#pragma once

#include <chrono>

#include "caf/replies_to.hpp"
#include "caf/timespan.hpp"
#include "caf/typed_actor.hpp"

#include "pyvisor/atoms.hpp"
#include "pyvisor/execute.hpp"

namespace pyvisor {

/// What a worker reports to whoever dispatches to it (the pool), so that the
/// dispatcher need not sit on the reply path:
/// - (done_atom, worker actor id, code, service_ns, session, command) after each
///   request is answered; code is an error_code as uint8_t (CAF would turn the
///   enum into a caf::error), code is error_code::none for success; session is
///   the request's (empty for stateless ones), command its command name. A
///   listener that gave a Python worker's link a completion inbox
///   (actors/worker/worker_link.hpp, report_to) gets these reports there
///   instead of as messages, posted before each answer likewise.
/// - (retry_atom, execute) delegated, with the original requester, for each
///   idempotent request in flight when the worker dies.
/// - (requeue_atom, execute) delegated likewise for each request that
///   provably never started on the worker (it reached the worker after it
///   began to retire, or waited behind the request that was running when the
///   worker died): run it elsewhere, idempotent or not, without counting an
///   attempt; its timeout is what is left of its deadline.
/// - (dying_atom, worker actor id, deliberate) -> bool when the worker dies:
///   the worker quits only after this answer, and until then hands every
///   request that still reaches it back (retry) or fails it, so that nothing
///   dispatched to a dying worker is lost in its mailbox. `deliberate` says
///   the worker recycles itself on purpose (a request outlived its deadline
///   on it) rather than crashing: the listener need not count it as a crash.
using worker_listener_actor = caf::typed_actor<
  caf::reacts_to<done_atom, uint64_t, uint8_t, int64_t, std::string, std::string>,
  caf::replies_to<retry_atom, execute>::with<payload>,
  caf::replies_to<requeue_atom, execute>::with<payload>,
  caf::replies_to<dying_atom, uint64_t, bool>::with<bool>>;

/// What every worker backend is configured with; a pool sets these for each
/// worker it starts (from pool_config), whatever the backend.
struct worker_settings {
  /// Id used in logs and status (the pool's slot number, from 1).
  uint32_t id = 0;
  /// Default deadline of a request that names none.
  caf::timespan request_timeout = std::chrono::seconds(30);
  /// Limit of one attempt of an idempotent request (0: its whole deadline).
  /// A worker that exceeds it is recycled and the request retried elsewhere.
  caf::timespan attempt_timeout{0};
  /// How long a stopping worker may take to finish what it holds: the Python
  /// worker gets this between EOF, SIGTERM and SIGKILL each, the mock this
  /// in all; what is still unanswered then fails with shutting_down.
  caf::timespan stop_grace = std::chrono::seconds(2);
  /// Optional: told of every completed request and handed idempotent
  /// requests for a retry when the worker dies (the pool sets itself).
  worker_listener_actor listener;
};

using worker_actor = caf::typed_actor<
  caf::replies_to<execute>::with<payload>,
  caf::replies_to<ready_atom>::with<worker_status>,
  caf::replies_to<status_atom>::with<worker_status>,
  caf::reacts_to<drop_session_atom, std::string>>;

} // namespace pyvisor

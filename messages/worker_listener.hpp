// worker_listener_actor: what a worker reports to the pool that dispatches
// to it, so that the pool need not sit on the reply path. Internal: the pool
// gives it to the workers it starts (actors/worker/reporting_worker.hpp);
// not installed, and not part of worker_actor's public contract.

#pragma once

#include <cstdint>
#include <string>

#include "caf/replies_to.hpp"
#include "caf/typed_actor.hpp"

#include "messages/internal_atoms.hpp"
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

} // namespace pyvisor

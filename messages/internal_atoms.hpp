// The atoms pyvisor's parts send one another (pool, workers, session
// affinity, keeper): not part of the API, not installed. Names continue the
// public ones' (messages/atoms.hpp) and must not repeat any of them.

#pragma once

#include "caf/atom.hpp"

#include "pyvisor/atoms.hpp"

namespace pyvisor {

/// Timer: periodic cleanup of expired sessions.
using cleanup_atom = caf::atom_constant<caf::atom("pv_cleanup")>;
/// A worker tells its listener (the pool) that a request completed.
using done_atom = caf::atom_constant<caf::atom("pv_done")>;
/// A dying worker hands an idempotent request back to its listener.
using retry_atom = caf::atom_constant<caf::atom("pv_retry")>;
/// A dying worker hands back a request that never started on it.
using requeue_atom = caf::atom_constant<caf::atom("pv_requeue")>;
/// A dying worker tells its listener it is gone (the listener acknowledges).
using dying_atom = caf::atom_constant<caf::atom("pv_dying")>;
/// Asks the session-affinity actor which worker serves a session.
using route_atom = caf::atom_constant<caf::atom("pv_route")>;
/// Tells the session-affinity actor that a worker came up / went down.
using worker_up_atom = caf::atom_constant<caf::atom("pv_wup")>;
using worker_down_atom = caf::atom_constant<caf::atom("pv_wdown")>;
/// A request of this session that the affinity routed has ended (the
/// session is active from its route to its end: it never expires meanwhile).
using session_done_atom = caf::atom_constant<caf::atom("pv_sessdn")>;
/// Lists the live sessions of a session-affinity actor / seeds it with ids
/// that a lost pool held (they answer session_lost).
using sessions_atom = caf::atom_constant<caf::atom("pv_sesslst")>;
using sessions_lost_atom = caf::atom_constant<caf::atom("pv_seslost")>;
/// The pool cancels a requester's requests on a worker it delegates to
/// (cancel_for_atom, requester, tag; see pool_actor's cancel_atom).
using cancel_for_atom = caf::atom_constant<caf::atom("pv_cancfor")>;
/// The pool passes a stream consumer's taken_atom on to a worker it
/// delegates to (taken_for_atom, requester, tag, n).
using taken_for_atom = caf::atom_constant<caf::atom("pv_takefor")>;
/// A pool tells its keeper that it gave up (cause, its sessions).
using pool_failed_atom = caf::atom_constant<caf::atom("pv_pfailed")>;

} // namespace pyvisor

// The atoms of pyvisor's typed interfaces (CAF 0.17: at most 10 characters).
//
// Names are prefixed where CAF 0.17 already defines an atom of the same C++
// name (get_atom, ok_atom, ...): a same-named atom with different text would
// be ambiguous under `using namespace caf`.

#pragma once

#include "caf/atom.hpp"

namespace pyvisor {

/// Asks for a snapshot of an actor's state (worker_status, pool_stats).
using status_atom = caf::atom_constant<caf::atom("pv_status")>;
/// Tells a worker to drop one session's state.
using drop_session_atom = caf::atom_constant<caf::atom("pv_drop")>;
/// A worker announces that its process said hello (to its ready listener).
using ready_atom = caf::atom_constant<caf::atom("pv_ready")>;
/// Ends a session explicitly.
using end_session_atom = caf::atom_constant<caf::atom("pv_endsess")>;
/// Timer: periodic cleanup of expired sessions.
using cleanup_atom = caf::atom_constant<caf::atom("pv_cleanup")>;
/// Asks whether a pool can serve now (true, or the error `unavailable`).
using health_atom = caf::atom_constant<caf::atom("pv_health")>;
/// Changes a runtime setting (e.g. the session timeout) while running.
using configure_atom = caf::atom_constant<caf::atom("pv_config")>;

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
/// Lists the live sessions of a session-affinity actor / seeds it with ids
/// that a lost pool held (they answer session_lost).
using sessions_atom = caf::atom_constant<caf::atom("pv_sesslst")>;
using sessions_lost_atom = caf::atom_constant<caf::atom("pv_seslost")>;
/// A pool tells its keeper that it gave up (cause, its sessions).
using pool_failed_atom = caf::atom_constant<caf::atom("pv_pfailed")>;

} // namespace pyvisor

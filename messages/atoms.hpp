// The atoms of pyvisor's public typed interfaces (pool_actor, worker_actor;
// CAF 0.17: at most 10 characters). The atoms the runtime's parts use among
// themselves are in messages/internal_atoms.hpp, which is not installed.
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
/// Asks whether a pool can serve now (true, or the error `unavailable`).
using health_atom = caf::atom_constant<caf::atom("pv_health")>;
/// Changes a runtime setting (e.g. the session timeout) while running.
using configure_atom = caf::atom_constant<caf::atom("pv_config")>;
/// Cancels the sender's request that it tagged so (execute::tag; 0: all of
/// its requests): answered `cancelled` now, interrupted if it runs.
using cancel_atom = caf::atom_constant<caf::atom("pv_cancel")>;
/// One chunk of a streaming request's output, sent to its caller before the
/// response: (chunk_atom, tag, payload), tag as in execute::tag.
using chunk_atom = caf::atom_constant<caf::atom("pv_chunk")>;
/// A stream's caller has taken this many of its chunks so far:
/// (taken_atom, tag, n) to the pool; the worker sends more only as far as
/// the stream window allows beyond it (pool.stream-window).
using taken_atom = caf::atom_constant<caf::atom("pv_taken")>;

} // namespace pyvisor

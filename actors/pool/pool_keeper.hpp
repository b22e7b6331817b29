// The pool keeper: the parent that decides when a pool gives up.
//
// OTP's answer to a supervisor that gives up is that its parent decides; a
// pool's parent is its keeper. spawn_pool (pool.hpp) returns the keeper's
// handle, a pool_actor like any other, which stays valid for the keeper's
// whole life while the working pool behind it (pool_core.hpp: supervisor,
// workers, session affinity) may be replaced.
//
// States (pool_stats::state):
// - starting:   the first pool is starting; requests wait in its queue.
// - serving:    requests are delegated to the pool (replies go straight to
//               the caller; the keeper is not on the reply path).
// - restarting: the pool gave up; a new one starts after the back-off
//               (pool_config::restart) and until it is ready every execute
//               and end_session fails at once with `unavailable` naming the
//               cause, health_atom answers `unavailable`, status_atom answers
//               with the state and the cause. Sessions of the lost pool
//               answer `session_lost` once the new one serves.
// - stopping:   an exit message arrived; requests get `shutting_down`.
// A pool that gives up before it was ever ready (a broken configuration) is
// not restarted, nor is any with restart.enabled = false: the keeper then
// quits with the cause (an `unavailable` error), so that its own parent (a
// process manager, through pyvisor-node's exit status) decides.
// Back-off: restart n in a row waits restart.backoff.delay(n); a pool that
// served for restart.backoff.reset_after starts over at n = 1.

#pragma once

#include "caf/fwd.hpp"

#include "pyvisor/pool.hpp"

namespace pyvisor {

/// Spawns a keeper that starts and keeps a pool of `cfg` (what spawn_pool does).
pool_actor spawn_pool_keeper(caf::actor_system& sys, pool_config cfg);

} // namespace pyvisor

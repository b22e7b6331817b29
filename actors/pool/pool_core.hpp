// The working pool behind a keeper (private to the library).
//
// A pool core is what pool.hpp describes minus the escalation: it owns the
// worker supervisor, the workers and the session-affinity actor. When its
// supervisor gives up, the core does not quit: it fails everything waiting
// with `unavailable`, tells its keeper (pool_failed_atom, cause, the ids of
// its live sessions) and from then on answers every request with
// `unavailable` until the keeper stops it. Staying alive until then is what
// keeps callers from ever seeing CAF's request_receiver_down: the keeper
// stops delegating before it sends the exit message, so every request it
// delegated is answered first (one sender's messages arrive in order).

#pragma once

#include <string>
#include <vector>

#include "caf/actor.hpp"

#include "pyvisor/pool.hpp"

namespace pyvisor {

/// Spawns a pool core reporting its give-up to `keeper`; `lost_sessions`
/// are ids of a previous core's sessions, which answer session_lost.
pool_actor spawn_pool_core(caf::actor_system& sys, pool_config cfg, caf::actor keeper,
                           std::vector<std::string> lost_sessions);

} // namespace pyvisor

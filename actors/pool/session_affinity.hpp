// The session-affinity actor: which worker holds which session's state.
//
// The pool asks it (route_atom, session, candidate slot) before dispatching a
// request that names a session; it answers with the slot that must serve it,
// binding a new session to the candidate (the pool's least-loaded worker).
// Guarantees:
// - A session with a request routed and not yet ended (session_done_atom)
//   is active and never expires; its idle time counts from the end of its
//   last request.
// - Idle expiry has one source of truth: `session_settings::timeout`, read by
//   both the lookup (exact: a session idle for longer than the timeout is
//   expired when looked up, even between cleanup ticks) and the periodic
//   cleanup (cleanup_atom every cleanup_interval). configure_atom changes it
//   at run time and takes effect for the very next lookup.
// - On expiry the owning worker is told to drop the session's state.
// - An expired session's id is remembered for `remember`: requests naming it
//   get session_expired; afterwards it is new again. A session whose worker
//   died (or was recycled) gets session_lost, also remembered. end_session
//   forgets an id at once (its state is dropped in the worker).
// - At most `max_sessions` live sessions (more: `overloaded`) and as many
//   remembered ids (the oldest forgotten first), so a client inventing ids
//   cannot exhaust the node's or a worker's memory.
// - O(1) lookups; cleanup costs what expires (see expiring_index.hpp).
// Time is the actor clock, so CAF's test coordinator drives expiry exactly.
// Internal to the pool (not installed); its settings, part of pool_config,
// are in session_settings.hpp.

#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "caf/fwd.hpp"
#include "caf/meta/type_name.hpp"
#include "caf/replies_to.hpp"
#include "caf/timespan.hpp"
#include "caf/typed_actor.hpp"

#include "pyvisor/session_settings.hpp"
#include "messages/internal_atoms.hpp"
#include "pyvisor/worker_actor.hpp"

namespace pyvisor {

/// No worker slot (e.g. no candidate available).
constexpr uint32_t no_slot = std::numeric_limits<uint32_t>::max();

struct affinity_stats {
  uint64_t sessions = 0;
  uint64_t remembered = 0;
  uint64_t bound = 0;
  uint64_t expired = 0;
  uint64_t lost = 0;
  uint64_t ended = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, affinity_stats& x) {
  return f(caf::meta::type_name("pyvisor::affinity_stats"), x.sessions, x.remembered, x.bound,
           x.expired, x.lost, x.ended);
}

using session_affinity_actor = caf::typed_actor<
  /// (session, candidate slot or no_slot) -> (serving slot, the incarnation
  /// of that slot's worker that holds the state); no_slot when the session
  /// is new and there is no candidate; or session_expired / session_lost.
  /// The caller must not dispatch to a different incarnation: the reply may
  /// race with that worker's death.
  caf::replies_to<route_atom, std::string, uint32_t>::with<uint32_t, uint32_t>,
  /// (slot, incarnation, worker): a worker is ready; sessions bound from now
  /// on live in it. Every new worker in a slot must bring a new incarnation.
  caf::reacts_to<worker_up_atom, uint32_t, uint32_t, worker_actor>,
  /// A worker died or is being replaced: its sessions are lost.
  caf::reacts_to<worker_down_atom, uint32_t>,
  /// Ends a session; true if it existed (or was remembered).
  caf::replies_to<end_session_atom, std::string>::with<bool>,
  /// Sets the idle timeout at run time; replies with the previous one.
  caf::replies_to<configure_atom, caf::timespan>::with<caf::timespan>,
  caf::replies_to<status_atom>::with<affinity_stats>,
  /// A request of this session that route_atom answered with a slot ended.
  caf::reacts_to<session_done_atom, std::string>,
  /// Runs the cleanup now (the timer sends it too).
  caf::reacts_to<cleanup_atom>,
  /// The ids of all live (bound, unexpired) sessions.
  caf::replies_to<sessions_atom>::with<std::vector<std::string>>,
  /// Remembers these ids as lost (sessions of a pool that was replaced).
  caf::reacts_to<sessions_lost_atom, std::vector<std::string>>>;

session_affinity_actor spawn_session_affinity(caf::actor_system& sys, session_settings settings);

} // namespace pyvisor

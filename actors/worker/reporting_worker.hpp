// Spawning a worker that reports to its dispatcher: how a pool starts each
// of its workers (both backends), giving it the pool as listener
// (messages/worker_listener.hpp: a done report per request, idempotent and
// never-started requests handed back when it dies, a dying handshake).
// Internal, not installed: the public spawn_python_worker and
// spawn_mock_worker start a worker that reports to no one.

#pragma once

#include "caf/fwd.hpp"

#include "messages/worker_listener.hpp"
#include "pyvisor/mock_worker.hpp"
#include "pyvisor/worker.hpp"

namespace pyvisor {

/// A Python worker that reports to `listener`.
worker_actor spawn_python_worker(caf::actor_system& sys, worker_config cfg,
                                 worker_listener_actor listener);

/// A mock worker that reports to `listener`.
worker_actor spawn_mock_worker(caf::actor_system& sys, mock_config cfg,
                               worker_listener_actor listener);

} // namespace pyvisor

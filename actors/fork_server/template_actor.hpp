// The template actor: one fork-server template process of a pool
// (pool.start-method = fork-server), as a supervised CAF actor.
//
// It starts python/pyvisor/forkserver.py with the pool's interpreter,
// modules and import paths, and once the template said hello attaches it to
// the pool's fork_channel, from which the pool's workers are forked. The
// pool runs it under a supervisor of its own (restart with back-off, the
// pool's intensity); a supervisor that gives up fails the pool.
//
// Guarantees:
// - A template that cannot start (a user module that does not import, one
//   that leaves threads running, no msgpack, the start-up timeout) marks the
//   channel failed with that error, traceback included, so that every
//   worker's start fails with exactly what a spawned worker would have
//   reported; the actor quits with the same error.
// - A template that dies is detached at once (workers wait for the next
//   one) and the actor quits with worker_crashed naming the exit; its
//   workers die with it (their parent-death signal), and the pool restarts
//   them from the next template.
// - An exit message stops it: EOF to the template, which kills what is left
//   of its workers and exits (SIGTERM, SIGKILL after the stop grace). The
//   process never outlives the actor.

#pragma once

#include <memory>

#include "caf/fwd.hpp"

#include "actors/fork_server/fork_server.hpp"
#include "pyvisor/worker.hpp"

namespace pyvisor {

/// Spawns the actor of one template: `cfg` as for the pool's workers (its
/// python, modules, python_path, startup_timeout, stop_grace and
/// max_frame_size apply), attached to `channel` once ready.
caf::actor spawn_template(caf::actor_system& sys, worker_config cfg,
                          std::shared_ptr<fork_channel> channel);

} // namespace pyvisor

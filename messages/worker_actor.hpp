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
// times out; its exit reason is a pyvisor error a supervisor can read. A
// pool's workers also report to the pool through an internal interface
// (messages/worker_listener.hpp, not installed); a worker spawned with the
// public spawn functions reports to no one.

#pragma once

#include <chrono>

#include "caf/replies_to.hpp"
#include "caf/timespan.hpp"
#include "caf/typed_actor.hpp"

#include "pyvisor/atoms.hpp"
#include "pyvisor/execute.hpp"

namespace pyvisor {

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
  /// A request past its deadline (or cancelled) is interrupted, not killed:
  /// the worker gets this long to stop it (pyvisor.Interrupted raised in the
  /// handler) before it is killed, its stack dumped to the log first.
  caf::timespan interrupt_grace = std::chrono::seconds(1);
  /// A stream's output sent and not yet taken by its consumer: at most this
  /// many chunks and bytes (one chunk always), so that a slow consumer slows
  /// the generator and the node holds little of it (pool.stream-window,
  /// pool.stream-window-bytes).
  uint32_t stream_window = 16;
  uint64_t stream_window_bytes = uint64_t{4} << 20;
};

using worker_actor = caf::typed_actor<
  caf::replies_to<execute>::with<payload>,
  caf::replies_to<ready_atom>::with<worker_status>,
  caf::replies_to<status_atom>::with<worker_status>,
  caf::reacts_to<drop_session_atom, std::string>>;

} // namespace pyvisor

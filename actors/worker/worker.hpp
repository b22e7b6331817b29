// The Python worker actor: one actor owns one Python process.
//
// It implements worker_actor (messages/worker_actor.hpp) over the pipe
// protocol (docs/protocol.md). Guarantees:
// - Never blocks a scheduler thread: all pipe I/O runs on the process's own
//   I/O thread (actors/process/python_process.hpp), which hands decoded frames over.
// - Requests may be pipelined; replies are matched by id and answered
//   straight to each requester, on the I/O thread (actors/worker/worker_link.hpp
//   owns that path; this actor keeps the life cycle, worker_lifecycle.hpp).
// - Ready only after the hello frame; `ready_atom` requests are answered then
//   (or with the start-up error).
// - A request that exceeds its deadline fails with `timeout` and the worker is
//   recycled at once: its process is killed and the actor quits with reason
//   `timeout`, so a late reply can never reach the next caller. Of its other
//   in-flight requests, those that waited behind the timed-out one in the
//   pipe never started and are handed back to the pool to run elsewhere
//   (requeue); session requests fail with `session_lost`. An idempotent
//   request may have a shorter per-attempt limit (attempt_timeout); past it,
//   it goes back to the pool for a retry while its deadline allows (a
//   worker outside a pool fails them instead, see request_ledger.hpp).
// - Process death fails the request it was running with `worker_crashed`
//   (naming exit code or signal; retried if idempotent) and hands back what
//   waited behind it (it never started); the actor quits with that error. A
//   protocol violation gives up everything with `protocol_error`. Requests
//   that named a session fail with `session_lost` instead (the state died
//   too). The rules: actors/worker/request_ledger.hpp.
// - An exit message (e.g. a supervisor's user_shutdown) stops the worker
//   gracefully: no new requests, queued ones are answered, the process gets
//   EOF, then SIGTERM and SIGKILL after `stop_grace` each.
// - The process dies with the actor, whatever ends it.

#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "caf/fwd.hpp"
#include "caf/timespan.hpp"

#include "pyvisor/wire_limits.hpp"
#include "pyvisor/worker_actor.hpp"

namespace pyvisor {

class fork_channel;

/// Settings of one Python worker (worker_settings: id, deadlines, stop
/// grace).
struct worker_config : worker_settings {
  /// Interpreter; Debian's /usr/bin/python3 has python3-msgpack.
  std::string python = "/usr/bin/python3";
  /// User modules imported at start-up (they register commands).
  std::vector<std::string> modules;
  /// Extra import paths, searched before the pyvisor package's directory.
  std::vector<std::string> python_path;
  caf::timespan startup_timeout = std::chrono::seconds(10);
  /// Largest frame body in either direction: a request whose frame would be
  /// larger is refused with bad_request, a larger reply is a protocol error.
  size_t max_frame_size = wire::default_max_frame_size;
  /// Hard limit of the worker process's data (RLIMIT_DATA: its heap and
  /// private mappings, what a forked worker shares with its template
  /// included), 0: none. A handler that allocates beyond it gets a
  /// MemoryError, answered as python_error, and the pool replaces the worker
  /// after its requests.
  uint64_t max_memory = 0;
  /// Requests the worker may run at once (pool.worker-concurrency): with
  /// more than 1 it serves from an event loop, async handlers interleaving
  /// at their awaits, sync ones still one at a time (python/pyvisor/aio.py).
  uint32_t concurrency = 1;
  /// How long the process's I/O thread busy-polls after a reply before it
  /// sleeps (0: never), only while requests come one at a time from a
  /// caller that sends its next one within the spin, and one thread per
  /// process at a time. That caller then has its reply read without a
  /// thread wake-up (a small request's round trip took about half as long
  /// on a 2-core machine, docs/architecture.md); the price is up to this
  /// much CPU per reply on that thread meanwhile, none when idle, for slow
  /// callers or under a pipelined load.
  caf::timespan reply_spin = std::chrono::microseconds(200);
  /// Bytes of each of the worker's two shared rings (node -> worker and
  /// back, actors/process/shared_ring.hpp), 0: none. A value of at least
  /// `shared_threshold` bytes (arguments, a result, a chunk) goes through
  /// them when the ring has room, else by pipe as any other. Pages cost
  /// memory once a value touched them, and are then reused.
  size_t shared_memory = size_t{64} << 20;
  size_t shared_threshold = size_t{64} << 10;
  /// Set by a pool whose start method is fork-server: the worker is forked
  /// from the pool's template (which imported `modules`) instead of
  /// spawned. Unset: a new interpreter is started.
  std::shared_ptr<fork_channel> fork_from;
};

/// Directory holding the `pyvisor` Python package, the first of these that
/// has it: $PYVISOR_PYTHON_DIR; the installed copy relative to the running
/// program (<bin>/../share/pyvisor/python, whatever the prefix, also after
/// the installation moved); where the CMake package the program was built
/// against lives (<prefix>/share/pyvisor/python, for an application
/// installed anywhere); the source tree the library was built from; the
/// configure-time installation directory. None: the first of them (a
/// worker then fails to start saying where it looked).
std::string default_python_dir();

/// The places default_python_dir() looks, in order.
std::vector<std::string> python_dir_candidates();

/// Spawns a worker actor that starts a Python process.
worker_actor spawn_python_worker(caf::actor_system& sys, worker_config cfg);

} // namespace pyvisor

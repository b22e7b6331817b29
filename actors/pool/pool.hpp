// The worker pool: what users talk to.
//
// A pool owns a simple_one_for_one supervisor (supervision/) whose children
// are workers of one backend (real Python processes or the in-process mock)
// and a session-affinity actor. Requests flow: caller -> pool -> (affinity,
// for session requests) -> worker, and the worker answers the caller
// directly. For the Python backend the pool writes each request into the
// worker's pipe itself, through the worker's link
// (actors/worker/worker_link.hpp), and the process's I/O thread answers the
// caller; for the mock, and for whatever a worker's link does not admit,
// the pool delegates the request to the worker actor. Either way the pool
// learns of each completion from the worker's done report, so it never sits
// on the reply path.
//
// Process-wide effects of linking and using pyvisor (an embedding
// application should know them):
// - SIGPIPE is ignored process-wide from the first worker's start (a write
//   to a dead worker's pipe must fail with EPIPE, not kill the host); the
//   host must not set SIGCHLD to SIG_IGN, or workers could not be reaped.
// - Each Python worker has one thread of its own (named `pyvisor.io`) for
//   its process's I/O, and a fork-server template one more.
// - Replies are delivered to callers from those threads, outside CAF's
//   scheduler, as a message from outside the actor system would be.
// - Workers are children of the process (their own process groups, a
//   parent-death signal): they die with it.
// - Nothing here touches OpenSSL's functions; the caf-openssl mend that the
//   node links (pyvisor::caf_openssl_mend) does, and only when linked.
//
// Guarantees:
// - Workers start concurrently; ready_atom is answered once all said hello.
// - Dispatch goes to the least-loaded ready worker, at most max_in_flight
//   requests per worker; beyond that requests wait in a bounded queue. A full
//   queue fails a request at once with `overloaded`, and so does a requester
//   already holding its share of the queue (queue_share); a request still queued
//   at its deadline fails with `timeout`; a requester that terminated loses
//   its queued requests (they no longer hold places).
// - A worker's death fails its in-flight requests with `worker_crashed`,
//   except idempotent ones, which are retried on another worker after a short
//   back-off (retry_backoff, doubling), at most max_attempts times:
//   at-least-once for idempotent requests, at-most-once for all others.
//   Requests that provably never started on the dead worker are requeued
//   instead, idempotent or not (see actors/worker/request_ledger.hpp,
//   docs/protocol.md).
// - Sessions: the first request naming a session binds it to a worker; later
//   ones go to that worker (mode strict: they wait for it; mode hint: they
//   may run elsewhere when the owner is busy, without the owner's state).
//   Expiry, session_expired and session_lost: see session_affinity.hpp.
// - Recycling after max_requests requests or max_age: the worker gets no new
//   requests, finishes what it has, and is replaced; no request fails (its
//   sessions are lost, as with any replacement).
// - Restart intensity counts what restarting does not fix: a worker that said
//   hello, answered a request and stayed up for `healthy_after` proved that
//   its restart fixed it, and its death does not count (nor does a deliberate
//   recycle: a timeout, max_requests, max_age). A user module that does not
//   import, or a worker that dies right after every hello, still exhausts
//   the intensity (max_restarts within restart_period).
// - Escalation reaches the top: spawn_pool returns a *keeper* (see
//   pool_keeper.hpp) that owns the working pool. When the pool's supervisor
//   gives up, the pool logs the cause once with the Python traceback, fails
//   what waits with `unavailable` and the keeper restarts the whole pool
//   (supervisor, workers, session affinity) after `restart.backoff`, for as
//   long as it lives; meanwhile requests fail at once with `unavailable`,
//   health_atom answers `unavailable`, status_atom still answers (state
//   "restarting" and the cause), and sessions of the lost pool answer
//   `session_lost` once it is back. A pool that never became ready at its
//   first start (a broken configuration) is not restarted: the keeper quits
//   with the cause, as does any give-up with restart.enabled = false.
// - Streams (execute::stream; stream.hpp): a generator handler's values reach
//   the caller as chunk messages before the response, in order; the worker
//   runs at most the stream window ahead of what the caller said it took
//   (taken_atom), so nothing in between holds more; a stream whose caller
//   saw a chunk is never retried.
// - Concurrent workers (worker_concurrency > 1): async handlers of one worker
//   interleave at their awaits, sync handlers and a session's requests still
//   run one at a time; what a dead worker never began is requeued exactly
//   (it says what began).
// - The handle never dies under a caller: every error a caller receives is a
//   pyvisor error (never CAF's request_receiver_down). An exit message stops
//   the pool gracefully.

#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "caf/fwd.hpp"
#include "caf/meta/type_name.hpp"
#include "caf/replies_to.hpp"
#include "caf/timespan.hpp"
#include "caf/typed_actor.hpp"

#include "pyvisor/latency_histogram.hpp"
#include "pyvisor/mock_worker.hpp"
#include "pyvisor/node_stats.hpp"
#include "pyvisor/session_settings.hpp"
#include "pyvisor/supervisor.hpp"
#include "pyvisor/worker.hpp"
#include "pyvisor/worker_actor.hpp"

namespace pyvisor {

enum class backend_kind : uint8_t { python, mock };

enum class affinity_mode : uint8_t { strict, hint };

/// How a pool of Python workers starts them (pool.start-method).
enum class start_method : uint8_t {
  /// One template interpreter per pool imports the modules once and forks
  /// every worker (start, restart, recycle) from that warm state.
  fork_server,
  /// Every worker is a new interpreter that imports the modules itself.
  spawn,
  // Add new methods above this line and their names to the table below.
};

template <>
struct enum_names<start_method> {
  static constexpr name_table<start_method, static_cast<size_t>(start_method::spawn) + 1> table{{{
    {start_method::fork_server, "fork-server"},
    {start_method::spawn, "spawn"},
  }}};
};

/// What the keeper does when the pool gives up (see pool_keeper.hpp).
struct pool_restart_policy {
  /// Restart the pool (true) or quit with the cause (false), so that a
  /// process manager can restart the whole process.
  bool enabled = true;
  /// Delay before each restart: 1 s, doubling per give-up in a row up to
  /// 30 s, +-10 %; a pool that served for reset_after starts over at 1 s.
  backoff_policy backoff{std::chrono::seconds(1), 2.0, std::chrono::seconds(30), 0.1,
                         std::chrono::seconds(60)};
};

struct pool_config {
  /// Number of workers.
  size_t size = 2;
  backend_kind backend = backend_kind::python;
  /// Python backend: fork workers from a template (README, "Start-up") or
  /// spawn each.
  start_method start = start_method::fork_server;
  /// Template of each Python worker. The pool sets its id and listener, and
  /// from its own fields request_timeout, attempt_timeout and stop_grace
  /// (half of shutdown_timeout): those are set here, once, for both backends.
  worker_config worker;
  /// Template of each mock worker (id, seed, listener and the timeouts as
  /// for `worker`).
  mock_config mock;
  /// Requests in flight per worker (at least worker_concurrency).
  uint32_t max_in_flight = 4;
  /// Requests a Python worker runs at once: async handlers (`async def`)
  /// interleave at their awaits, up to this many per worker; sync handlers
  /// still run one at a time. 1: one request at a time, as always.
  uint32_t worker_concurrency = 1;
  /// Requests waiting for a worker; more fail with `overloaded`.
  size_t queue_size = 1024;
  /// Share of the queue one requester (one connection) may hold, so that a
  /// burst from one client cannot crowd out everyone else.
  double queue_share = 0.5;
  /// Bytes of arguments the queue may hold (0: any); a request beyond it
  /// fails with `overloaded` (the first waiting one is always taken).
  size_t max_queued_bytes = size_t{256} << 20;
  /// How often the pool looks at its queue for deadlines and retry
  /// back-offs while requests wait: a queued request's deadline fires at
  /// most this late. Dispatch does not wait for it (a reply wakes the pool).
  caf::timespan sweep_interval = std::chrono::milliseconds(10);
  /// Deadline of a request that names none (queueing plus execution).
  caf::timespan request_timeout = std::chrono::seconds(30);
  /// Deadlines by command for requests that name none (instead of
  /// request_timeout), so that callers need not know each command's budget.
  command_timeout_map command_timeouts;
  /// Longest deadline a caller may ask for: longer ones are clamped to it,
  /// so that no client holds a worker beyond the operator's policy.
  caf::timespan max_request_timeout = std::chrono::minutes(10);
  /// Limit of one attempt of an idempotent request (0: its whole deadline):
  /// past it, the request is interrupted there (interrupt_grace) and
  /// retried elsewhere while its deadline allows.
  caf::timespan attempt_timeout = std::chrono::seconds(5);
  /// A request past its deadline or attempt limit, or cancelled, is
  /// interrupted (pyvisor.Interrupted in its handler) and its worker lives
  /// on; only a handler still running this long after is killed (its stack
  /// logged first), and with it the worker's sessions.
  caf::timespan interrupt_grace = std::chrono::seconds(1);
  /// A stream's output sent and not yet taken by its consumer: at most this
  /// many chunks and bytes (one chunk always), so that a slow consumer slows
  /// the generator (it waits in `yield`) and the node holds little of it.
  uint32_t stream_window = 16;
  uint64_t stream_window_bytes = uint64_t{4} << 20;
  /// A stateless request written to a worker behind one that has run this
  /// long is taken back (if the worker has not begun it) when another
  /// worker is idle, and runs there: no request waits behind a slow one
  /// while a worker could run it.
  caf::timespan take_back_after = std::chrono::milliseconds(20);
  /// Attempts of an idempotent request whose worker died (first one included).
  uint32_t max_attempts = 3;
  /// Delay before the first retry; it doubles for each further one (at most
  /// 16x). Queued requests are swept every 10 ms, so delays round up to that.
  caf::timespan retry_backoff = std::chrono::milliseconds(10);
  /// Recycle a worker after this many requests (0: never).
  uint64_t max_requests = 0;
  /// Each worker's own max_requests is max_requests plus a number drawn
  /// uniformly from [0, max_requests_jitter] when it starts (gunicorn's
  /// max_requests_jitter), so that workers started together are not all
  /// recycled at once. 0: exactly max_requests.
  uint64_t max_requests_jitter = 0;
  /// Seed of those draws (0: a random one): a test sets it to get the same
  /// limits every run.
  uint64_t jitter_seed = 0;
  /// Recycle a worker after this long (0: never).
  caf::timespan max_age{0};
  /// Recycle a worker whose resident set size exceeds this many bytes (0:
  /// never), after its requests in flight, as max_requests does (Celery's
  /// worker_max_memory_per_child). Checked every second; RSS counts the
  /// pages a forked worker shares with its template too.
  uint64_t max_rss = 0;
  /// How often the pool looks whether a worker's process is stopped
  /// (SIGSTOP, a debugger's stop): one found stopped at two looks in a row
  /// serves nothing while it looks ready, and is killed and replaced (its
  /// requests that had not started go to others). 0: never.
  caf::timespan stopped_check = std::chrono::milliseconds(500);
  session_settings session;
  affinity_mode mode = affinity_mode::strict;
  /// Restart intensity of the worker supervisor: more than max_restarts
  /// counted restarts within restart_period make the pool give up.
  size_t max_restarts = 10;
  caf::timespan restart_period = std::chrono::seconds(10);
  /// A worker that answered a request and has been ready this long proved
  /// itself: its death no longer counts toward intensity.
  caf::timespan healthy_after = std::chrono::milliseconds(50);
  /// What happens when the pool gives up anyway.
  pool_restart_policy restart;
  backoff_policy backoff;
  /// Time a worker gets to stop before it is killed.
  caf::timespan shutdown_timeout = std::chrono::seconds(5);
};

/// One worker in pool_stats (and in the RPC `stats` reply: every member
/// travels under its own name, the enums as their names).
struct worker_stats {
  uint32_t id = 0;
  int64_t pid = 0;
  /// down, starting, ready or draining (stopping while the pool stops).
  worker_phase state = worker_phase::down;
  uint32_t in_flight = 0;
  uint64_t served = 0;
  uint64_t restarts = 0;
  /// Unix time in milliseconds at which this incarnation started.
  int64_t started_at = 0;

  MSGPACK_DEFINE_MAP(id, pid, state, in_flight, served, restarts, started_at);
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_stats& x) {
  return f(caf::meta::type_name("pyvisor::worker_stats"), x.id, x.pid, x.state, x.in_flight,
           x.served, x.restarts, x.started_at);
}

/// The pool as a whole.
enum class pool_state : uint8_t {
  /// Its workers are starting (first start, or after a restart).
  starting,
  serving,
  /// It gave up and its keeper restarts it after a back-off.
  restarting,
  stopping,
  // Add new states above this line and their names to the table below.
};

constexpr size_t pool_state_count = static_cast<size_t>(pool_state::stopping) + 1;

template <>
struct enum_names<pool_state> {
  static constexpr name_table<pool_state, pool_state_count> table{{{
    {pool_state::starting, "starting"},
    {pool_state::serving, "serving"},
    {pool_state::restarting, "restarting"},
    {pool_state::stopping, "stopping"},
  }}};
};

/// One command's requests in pool_stats (by the command name requests gave).
struct command_stats {
  /// Replies by outcome: "ok" and each error code name.
  std::map<std::string, uint64_t> replies;
  /// Estimated from `histogram` (see latency_histogram.hpp).
  latency_percentiles latency_us;
  /// Worker service time of the replies that came from a worker.
  latency_histogram histogram;
  /// Streams answered (execute::stream), and the chunks and bytes of them
  /// that reached their callers.
  uint64_t streams = 0;
  uint64_t chunks = 0;
  uint64_t chunk_bytes = 0;

  MSGPACK_DEFINE_MAP(replies, latency_us, histogram, streams, chunks, chunk_bytes);
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, command_stats& x) {
  return f(caf::meta::type_name("pyvisor::command_stats"), x.replies, x.latency_us, x.histogram,
           x.streams, x.chunks, x.chunk_bytes);
}

/// Distinct command names a pool keeps apart in its statistics; the
/// requests of any further names, and of names that are not UTF-8, count
/// under `other_commands`, so that clients sending arbitrary names cannot
/// grow the node's memory or a metrics scrape without bound, nor make them
/// unreadable.
constexpr size_t max_tracked_commands = 64;
constexpr const char* other_commands = "(other)";

/// The fork-server template in pool_stats (pool.start-method=fork-server;
/// zeros with spawn).
struct fork_template_stats {
  /// The template workers are forked from now (0: none is ready).
  int64_t pid = 0;
  /// Templates started after the first (crashes, failed starts are not
  /// counted: only templates that said hello).
  uint64_t restarts = 0;

  MSGPACK_DEFINE_MAP(pid, restarts);
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, fork_template_stats& x) {
  return f(caf::meta::type_name("pyvisor::fork_template_stats"), x.pid, x.restarts);
}

/// The pool's status; the RPC `stats` reply is this record as a msgpack map.
struct pool_stats {
  pool_state state = pool_state::starting;
  /// Why the pool last gave up (empty: never), with the Python traceback.
  std::string last_failure;
  /// How often the keeper restarted the whole pool.
  uint64_t pool_restarts = 0;
  std::vector<worker_stats> workers;
  uint64_t queue = 0;
  uint64_t sessions = 0;
  /// Replies by outcome: "ok" and each error code name.
  std::map<std::string, uint64_t> replies;
  uint64_t retries = 0;
  /// Requests handed back by a dying worker on which they never started.
  uint64_t requeued = 0;
  /// Workers replaced after they died (crashes, failed starts).
  uint64_t restarts = 0;
  /// Workers replaced on purpose: max_requests, max_age, max_rss, and a
  /// worker recycled because a request outlived its deadline on it.
  uint64_t recycled = 0;
  /// Worker service time of every command (estimated, see
  /// latency_histogram.hpp).
  latency_percentiles latency_us;
  /// Per command: replies by outcome and service time.
  std::map<std::string, command_stats> commands;
  fork_template_stats fork_template;
  /// Requests the pool can run at once now: ready workers x max_in_flight
  /// (what a cluster front weighs a node's load against).
  uint64_t capacity = 0;
  /// A cluster front's nodes (empty for a pool).
  std::vector<node_stats> nodes;
  /// Streams taken in and not answered yet.
  uint64_t streams_open = 0;

  /// Requests running on workers now.
  uint64_t in_flight() const {
    uint64_t n = 0;
    for (auto& w : workers)
      n += w.in_flight;
    return n;
  }

  /// Workers in state `s`.
  size_t workers_in(worker_phase s) const {
    size_t n = 0;
    for (auto& w : workers)
      n += w.state == s ? 1 : 0;
    return n;
  }

  MSGPACK_DEFINE_MAP(state, last_failure, pool_restarts, workers, queue, sessions, replies,
                     retries, requeued, restarts, recycled, latency_us, commands,
                     fork_template, capacity, nodes, streams_open);
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pool_stats& x) {
  return f(caf::meta::type_name("pyvisor::pool_stats"), x.state, x.last_failure, x.pool_restarts,
           x.workers, x.queue, x.sessions, x.replies, x.retries, x.requeued, x.restarts, x.recycled,
           x.latency_us, x.commands, x.fork_template, x.capacity, x.nodes, x.streams_open);
}

using pool_actor = caf::typed_actor<
  caf::replies_to<execute>::with<payload>,
  /// Answered once every worker is ready (or with the failure).
  caf::replies_to<ready_atom>::with<pool_stats>,
  caf::replies_to<status_atom>::with<pool_stats>,
  /// true while the pool can serve (it is not restarting and some worker is
  /// ready), else the error `unavailable` (health checks, RPC `ping`).
  caf::replies_to<health_atom>::with<bool>,
  caf::replies_to<end_session_atom, std::string>::with<bool>,
  /// Sets the session idle timeout at run time; replies with the previous one.
  caf::replies_to<configure_atom, caf::timespan>::with<caf::timespan>,
  /// Cancels the sender's request tagged `tag` (execute::tag; 0: every
  /// request of the sender): still queued, it is answered `cancelled` and
  /// never runs; written to a worker, it is answered `cancelled` at once and
  /// the worker revokes it (not begun) or interrupts it (running); already
  /// answered or unknown, nothing happens. The requests of a requester
  /// actor that terminates are cancelled the same way.
  caf::reacts_to<cancel_atom, uint64_t>,
  /// The sender has taken `n` chunks so far of its stream tagged `tag`
  /// (execute::stream): the worker may send up to the stream window beyond
  /// them. Unknown or answered already: nothing happens.
  caf::reacts_to<taken_atom, uint64_t, uint64_t>>;

/// Spawns a pool behind its keeper (the handle stays valid across restarts).
pool_actor spawn_pool(caf::actor_system& sys, pool_config cfg);

/// Registers the pool's and its parts' message types (includes
/// add_message_types and add_supervisor_types).
void add_pool_types(caf::actor_system_config& cfg);

/// Selects CAF's `sharing` scheduler (one shared queue; idle threads wake at
/// once) instead of the default work stealing, which polls with sleeps and
/// costs each actor hop of a request tens of microseconds on a quiet system.
/// pyvisor-node runs with it (measured in README "Benchmarks"); call it on
/// your actor_system_config before constructing the actor system. An
/// explicit --scheduler.policy on the command line still wins.
void use_sharing_scheduler(caf::actor_system_config& cfg);

} // namespace pyvisor

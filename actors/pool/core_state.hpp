// The pool core's state and the functions its two translation units share
// (private to the library): actors/pool/pool.cpp has the request path
// (admission, queue, dispatch, routing, retries) and the behavior;
// actors/pool/pool_workers.cpp the workers' life cycle (supervisor and
// template, child up and down, proof of health, recycling, give-up) and the
// stats.
//
// The state is a shell over named parts: the fair queue (fair_queue.hpp),
// the worker slots (slot_table.hpp) and the counters (pool_counters.hpp).
// Everything here runs on the core's own thread; the one thing other
// threads touch is the completion inbox, which has its own lock.
//
// The inbox rule: every handler and every response continuation that reads
// or changes load, stats or slots runs inside an `activation`, which first
// takes the done reports the workers' I/O threads left in the inbox and at
// its end tells the inbox whether a report must wake the core. `guarded()`
// wraps a handler or a continuation in one, so the rule is applied by
// construction, not by hand.

#pragma once

#include <map>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "caf/actor.hpp"
#include "caf/stateful_actor.hpp"
#include "caf/typed_event_based_actor.hpp"

#include "actors/fork_server/fork_server.hpp"
#include "actors/pool/fair_queue.hpp"
#include "actors/pool/pool_counters.hpp"
#include "actors/pool/pool_core.hpp"
#include "actors/pool/slot_table.hpp"
#include "actors/sweep_timer.hpp"
#include "actors/worker/completion_inbox.hpp"
#include "messages/worker_listener.hpp"
#include "pyvisor/pool.hpp"

namespace pyvisor {

using age_tick_atom = caf::atom_constant<caf::atom("pl_agetick")>;
/// Timer: look again for requests to take back (try_take_back).
using take_back_atom = caf::atom_constant<caf::atom("pl_takebk")>;
/// Timer: (slot, incarnation) has been ready for healthy_after.
using proven_tick_atom = caf::atom_constant<caf::atom("pl_proven")>;

using pool_impl = pool_actor::extend_with<worker_listener_actor>::extend<
  caf::reacts_to<child_up_atom, std::string, caf::actor>,
  caf::reacts_to<child_down_atom, std::string, caf::error>,
  caf::reacts_to<sweep_atom>, caf::reacts_to<age_tick_atom>, caf::reacts_to<take_inbox_atom>,
  caf::reacts_to<proven_tick_atom, uint32_t, uint32_t>, caf::reacts_to<take_back_atom>>;

struct core_state {
  core_state()
    : queue(0, 1.0), slots(0, 1) {
    // nop: pool_fun sizes both from the configuration
  }

  pool_config cfg;
  /// Draws each worker's max_requests jitter.
  std::mt19937_64 jitter;
  supervisor_actor sup;
  /// Start method fork-server: the template's supervisor and the channel
  /// the workers are forked through.
  supervisor_actor template_sup;
  std::shared_ptr<fork_channel> forks;
  session_affinity_actor affinity;
  fair_queue queue;
  slot_table slots;
  pool_counters counters;
  /// The done reports of replies answered on the workers' I/O threads.
  std::shared_ptr<completion_inbox> inbox = std::make_shared<completion_inbox>();
  std::vector<caf::typed_response_promise<pool_stats>> ready_waiters;
  /// Stats requests waiting for the affinity actor's session count, by a
  /// number of their own: a core that quits meanwhile answers them with
  /// what it has (quit_core), never leaves them waiting.
  std::map<uint64_t, std::pair<caf::typed_response_promise<pool_stats>, pool_stats>> stats_waiters;
  uint64_t next_stats_waiter = 0;
  /// Watches the queue's deadlines and back-offs while anything waits.
  sweep_timer sweep;
  /// Requesters monitored (once each, until they go down): the requests of
  /// one that terminates are cancelled, queued or running.
  std::unordered_set<caf::actor_addr> watched;
  /// A take_back_atom is pending.
  bool take_back_armed = false;
  /// Session requests out of line while the affinity routes them: a cancel
  /// marks them, and their continuation answers `cancelled`.
  std::unordered_set<queued_ptr> routing;
  /// Session ends waiting for the requests of their session admitted before
  /// them (queued or being routed): an end is ordered after those, which are
  /// then in their worker's pipe ahead of its drop, so that the worker
  /// forgets the state they make.
  struct pending_end {
    size_t waiting = 0;
    std::vector<caf::typed_response_promise<bool>> promises;
  };
  std::unordered_map<std::string, pending_end> ending;
  bool stopping = false;
  /// The supervisor gave up; everything is answered `unavailable` until the
  /// keeper stops this core.
  bool failed = false;
  /// Every worker was ready at least once (the first start is over).
  bool started = false;
  caf::actor keeper;
  caf::error stop_reason;
  /// Stopping: the core quits once its template supervisor is down.
  bool quit_after_template = false;
  /// The last worker failure, with its Python traceback if any.
  std::string last_failure;

  static inline const char* name = "pyvisor.pool";
};

using self_ptr = pool_impl::stateful_pointer<core_state>;

// -- shared between pool.cpp and pool_workers.cpp ------------------------------------

/// Answers `q` with `err`, counted.
void fail(self_ptr self, queued& q, caf::error err);

/// A routed request of `session` (may be empty: nothing) ended: its
/// session is idle from now on unless others of its requests are not.
void session_done(self_ptr self, const std::string& session);

/// Dispatches what waits as far as workers have room; then takes back
/// requests stuck behind a slow one when a worker is idle.
void try_dispatch(self_ptr self);

/// Cancels the requests of `requester` (its request tagged `tag`, or all of
/// them with 0): queued ones are answered `cancelled`, those on workers are
/// answered and stopped there (worker_link::cancel).
void cancel_requests(self_ptr self, const caf::actor_addr& requester, uint64_t tag);

/// A stream's requester has taken `n` of its chunks: passed to the worker
/// that runs it (worker_link::taken).
void pass_taken(self_ptr self, const caf::actor_addr& requester, uint64_t tag, uint64_t n);

/// Monitors `requester` unless it is already.
void watch(self_ptr self, const caf::actor_addr& requester);

/// A worker answered a request (its done report): load, stats, proof of
/// health, recycling (`retire`: the worker ran out of memory, replace it
/// after its requests).
void on_done(self_ptr self, const completion& c);

caf::error unavailable_error(const std::string& why);

/// Starts the supervisor (and the fork-server template) and every worker.
void start_workers(self_ptr self);

/// Drains a worker that reached a recycle limit; recycles it once idle.
void maybe_recycle(self_ptr self, uint32_t slot, bool check_rss = false);

/// How often max_age and max_rss are checked (0: neither is set).
caf::timespan recycle_tick(const pool_config& cfg);

/// Kills the worker in `slot` if its process was found stopped at this look
/// and the one before (pool_config::stopped_check).
void kill_if_stopped(self_ptr self, uint32_t slot);

void prove(self_ptr self, uint32_t slot, bool excuse = false);

void deliver_ready_if_all(self_ptr self);

pool_stats make_stats(self_ptr self);

/// Answers pending stats requests, then quits with `reason`.
void quit_core(self_ptr self, caf::error reason);

void on_child_up(self_ptr self, const std::string& id, caf::actor& hdl);
void on_child_down(self_ptr self, const std::string& id, caf::error& reason);
void on_down(self_ptr self, caf::down_msg& dm);
void on_exit(self_ptr self, caf::exit_msg& msg);

// -- the inbox rule ------------------------------------------------------------------

/// See the top. Constructed first thing in a handler or continuation.
class activation {
public:
  explicit activation(self_ptr self) : self_(self) {
    for (auto& c : self->state.inbox->take())
      on_done(self, c);
  }

  ~activation() {
    auto& st = self_->state;
    // A report matters now when something waits, a worker drains, or a
    // worker holds requests behind the one it runs (one that becomes idle
    // may take them back: try_take_back).
    bool wanted = !st.queue.empty() || st.slots.any_draining() || st.slots.any_backlog();
    // Reports that came in since the take above were not told to wake us.
    if (st.inbox->wake_when_posted(wanted))
      self_->send(self_, take_inbox_atom::value);
  }

  activation(const activation&) = delete;
  activation& operator=(const activation&) = delete;

private:
  self_ptr self_;
};

namespace detail {

template <class F, class R, class... Ts>
auto guard_with(self_ptr self, F f, R (F::*)(Ts...) const) {
  return [self, f](Ts... xs) -> R {
    activation act{self};
    return f(std::forward<Ts>(xs)...);
  };
}

template <class F, class R, class... Ts>
auto guard_with(self_ptr self, F f, R (F::*)(Ts...)) {
  return [self, f](Ts... xs) mutable -> R {
    activation act{self};
    return f(std::forward<Ts>(xs)...);
  };
}

} // namespace detail

/// `f` (a handler or a response continuation, with its signature kept for
/// CAF) run inside an activation.
template <class F>
auto guarded(self_ptr self, F f) {
  return detail::guard_with(self, std::move(f), &F::operator());
}

} // namespace pyvisor

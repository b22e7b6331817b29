#include "pyvisor/pool.hpp"
#include "actors/pool/outcome_counts.hpp"
#include "actors/pool/pool_core.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <unordered_map>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/event_based_actor.hpp"
#include "caf/exit_reason.hpp"
#include "caf/send.hpp"
#include "caf/stateful_actor.hpp"
#include "caf/typed_event_based_actor.hpp"

#include "actors/fork_server/fork_server.hpp"
#include "actors/fork_server/template_actor.hpp"
#include "actors/sweep_timer.hpp"
#include "actors/worker/worker_link.hpp"
#include "messages/log.hpp"
#include "pyvisor/registry.hpp"

namespace pyvisor {

void use_sharing_scheduler(caf::actor_system_config& cfg) {
  cfg.set("scheduler.policy", caf::atom("sharing"));
}

void add_pool_types(caf::actor_system_config& cfg) {
  add_message_types(cfg);
  add_supervisor_types(cfg);
  cfg.add_message_type<worker_stats>("pyvisor::worker_stats");
  cfg.add_message_type<std::vector<worker_stats>>("std::vector<pyvisor::worker_stats>");
  cfg.add_message_type<node_stats>("pyvisor::node_stats");
  cfg.add_message_type<std::vector<node_stats>>("std::vector<pyvisor::node_stats>");
  cfg.add_message_type<pool_stats>("pyvisor::pool_stats");
  cfg.add_message_type<affinity_stats>("pyvisor::affinity_stats");
  cfg.add_message_type<pool_actor>("pyvisor::pool_actor");
  cfg.add_message_type<session_affinity_actor>("pyvisor::session_affinity_actor");
  cfg.add_message_type<supervisor_actor>("pyvisor::supervisor_actor");
}

namespace {

using age_tick_atom = caf::atom_constant<caf::atom("pl_agetick")>;
/// Timer: (slot, incarnation) has been ready for healthy_after.
using proven_tick_atom = caf::atom_constant<caf::atom("pl_proven")>;

using pool_impl = pool_actor::extend_with<worker_listener_actor>::extend<
  caf::reacts_to<child_up_atom, std::string, caf::actor>,
  caf::reacts_to<child_down_atom, std::string, caf::error>,
  caf::reacts_to<sweep_atom>, caf::reacts_to<age_tick_atom>, caf::reacts_to<take_inbox_atom>,
  caf::reacts_to<proven_tick_atom, uint32_t, uint32_t>>;

// Worker slots and the supervisor's children: slot i (0-based) holds child
// "i + 1", and i + 1 is the worker's id in logs, stats and the protocol.
uint32_t slot_of(const std::string& child_id) {
  return static_cast<uint32_t>(std::stoul(child_id) - 1);
}

uint32_t worker_id_of(uint32_t slot) {
  return slot + 1;
}

std::string child_id_of(uint32_t slot) {
  return std::to_string(worker_id_of(slot));
}

struct slot_rec {
  worker_actor handle;
  /// The Python backend's request path (actors/worker/worker_link.hpp), once
  /// the worker shared it; without it requests are delegated.
  worker_link_ptr link;
  caf::actor_id actor = 0;
  worker_phase state = worker_phase::down;
  uint32_t in_flight = 0;
  /// Requests dispatched to the current incarnation.
  uint64_t dispatched = 0;
  uint64_t served = 0;
  uint64_t restarts = 0;
  int64_t pid = 0;
  int64_t started_at_ms = 0;
  caf::actor_clock::time_point started;
  /// Bumped whenever the slot gets a new worker; a session routed to an
  /// older incarnation has lost its state.
  uint32_t incarnation = 0;
  bool recycling = false;
  /// This incarnation answered a request / was told to the supervisor as
  /// proven (its death then does not count toward restart intensity).
  bool served_ok = false;
  bool proven = false;
  caf::actor_clock::time_point ready_at;
  /// Hint mode: requests in flight here per session, so that a session's
  /// request runs on another worker only when none of its earlier ones is
  /// still running (its requests then still run in the order sent).
  std::unordered_map<std::string, uint32_t> running_sessions;
};

/// A place in the queue: requests are served by round, then by arrival.
/// Each requester's requests get consecutive rounds, so requesters with
/// waiting work take turns (round-robin) instead of being served in the
/// order of arrival, where one client's burst would make all others wait.
struct queue_key {
  int64_t round = 0;
  int64_t seq = 0;
  friend bool operator<(const queue_key& x, const queue_key& y) {
    return x.round != y.round ? x.round < y.round : x.seq < y.seq;
  }
};

/// Retries and requeues go before every round.
constexpr int64_t front_round = std::numeric_limits<int64_t>::min();

/// A request waiting for a worker (or for its session's route).
struct queued {
  execute req;
  caf::typed_response_promise<payload> rp;
  caf::actor_clock::time_point deadline;
  caf::actor_addr requester;
  uint32_t slot = no_slot;
  uint32_t incarnation = 0;
  bool routed = false;
  /// A retry waits for its back-off before it is dispatched again.
  caf::actor_clock::time_point not_before;
  /// Place in the queue, fixed at admission: a session request that leaves
  /// the queue to be routed comes back to the same place, so the requests
  /// of one session keep the order in which they were sent.
  queue_key key;
};

using queued_ptr = std::shared_ptr<queued>;

struct core_state {
  pool_config cfg;
  supervisor_actor sup;
  /// Start method fork-server: the template's supervisor and the channel
  /// the workers are forked through.
  supervisor_actor template_sup;
  std::shared_ptr<fork_channel> forks;
  session_affinity_actor affinity;
  std::vector<slot_rec> slots;
  /// The done reports of replies answered on the workers' I/O threads
  /// (see activation).
  std::shared_ptr<completion_inbox> inbox = std::make_shared<completion_inbox>();
  /// Ordered by queue_key; retries before everything else.
  std::map<queue_key, queued_ptr> queue;
  int64_t next_back = 1;
  int64_t next_front = 0;
  /// The highest round dispatched so far: a requester with nothing waiting
  /// joins at this round, so it is next in turn, not behind every backlog.
  int64_t round = 0;
  struct requester_rec {
    /// Its requests in the queue (its share, see admit).
    size_t queued = 0;
    /// The round of its latest request (queued or dispatched). Kept while
    /// it matters: while it is not behind `round`, or requests wait.
    int64_t last_round = 0;
  };
  std::unordered_map<caf::actor_addr, requester_rec> requesters;
  /// The latest key given to a request of each session with requests
  /// waiting: a session's later request never gets an earlier place, even
  /// from another requester. Pruned by the sweep.
  std::unordered_map<std::string, queue_key> session_tail;
  std::vector<caf::typed_response_promise<pool_stats>> ready_waiters;
  /// Replies by outcome, indexed by error_code (none = ok).
  std::array<uint64_t, error_code_count> replies{};
  uint64_t retries = 0;
  uint64_t requeued = 0;
  uint64_t restarts = 0;
  uint64_t recycled = 0;
  /// Per command name (at most max_tracked_commands, then other_commands):
  /// replies by outcome and service time.
  struct command_rec {
    std::array<uint64_t, error_code_count> replies{};
    latency_histogram histogram;
  };
  std::unordered_map<std::string, command_rec> commands;
  size_t rr = 0;
  /// Watches the queue's deadlines and back-offs while anything waits.
  sweep_timer sweep;
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

/// True for well-formed UTF-8 (no overlong forms, surrogates or code points
/// above U+10FFFF).
bool valid_utf8(const std::string& x) {
  auto* p = reinterpret_cast<const unsigned char*>(x.data());
  auto* end = p + x.size();
  while (p < end) {
    unsigned c = *p++;
    if (c < 0x80)
      continue;
    size_t more = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC2 ? 1 : 0;
    if (more == 0 || c > 0xF4 || static_cast<size_t>(end - p) < more)
      return false;
    unsigned first = *p;
    if ((c == 0xE0 && first < 0xA0) || (c == 0xED && first > 0x9F)
        || (c == 0xF0 && first < 0x90) || (c == 0xF4 && first > 0x8F))
      return false;
    for (size_t i = 0; i < more; ++i)
      if ((*p++ & 0xC0) != 0x80)
        return false;
  }
  return true;
}

/// A command's record. Names that are not UTF-8 (a C++ caller or an RPC
/// client may send any bytes) count under other_commands too: a map key in
/// `stats` and a Prometheus label must be text, or one hostile request would
/// make both unreadable for everyone.
core_state::command_rec& command_rec_of(core_state& st, const std::string& command) {
  auto i = st.commands.find(command);
  if (i != st.commands.end())
    return i->second;
  if (st.commands.size() >= max_tracked_commands || !valid_utf8(command))
    return st.commands[other_commands];
  return st.commands[command];
}

/// Counts a reply by outcome, overall and for its command; `service_ns`
/// (negative: the request never reached a worker) goes to the command's
/// latency histogram.
void count_reply(self_ptr self, const std::string& command, error_code code,
                 int64_t service_ns = -1) {
  auto i = static_cast<size_t>(code);
  if (i >= error_code_count)
    return;
  auto& st = self->state;
  ++st.replies[i];
  auto& rec = command_rec_of(st, command);
  ++rec.replies[i];
  if (service_ns >= 0)
    rec.histogram.observe(static_cast<double>(service_ns) / 1000.0);
}

void fail(self_ptr self, queued& q, caf::error err) {
  count_reply(self, q.req.command, code_of(err));
  q.rp.deliver(std::move(err));
}

// -- requester bookkeeping -------------------------------------------------------

/// Who sent the request: the original caller, kept through delegation.
caf::actor_addr requester_of(queued& q) {
  return caf::actor_cast<caf::actor_addr>(static_cast<caf::response_promise&>(q.rp).source());
}

void track(self_ptr self, queued& q) {
  if (!q.requester)
    return;
  auto& r = self->state.requesters[q.requester];
  if (r.queued++ == 0)
    self->monitor(q.requester);
  r.last_round = std::max(r.last_round, q.key.round);
}

void untrack(self_ptr self, const queued& q) {
  if (!q.requester)
    return;
  auto& rs = self->state.requesters;
  auto i = rs.find(q.requester);
  if (i == rs.end())
    return;
  if (--i->second.queued == 0) {
    self->demonitor(q.requester);
    if (i->second.last_round < self->state.round)
      rs.erase(i);
  }
}

// -- worker selection ---------------------------------------------------------------

bool accepts(const core_state& st, const slot_rec& s) {
  return s.state == worker_phase::ready && s.in_flight < st.cfg.max_in_flight;
}

/// The least-loaded ready worker with room, or no_slot. Ties rotate.
uint32_t pick_worker(self_ptr self) {
  auto& st = self->state;
  auto n = st.slots.size();
  uint32_t best = no_slot;
  for (size_t k = 0; k < n; ++k) {
    auto i = (st.rr + k) % n;
    auto& s = st.slots[i];
    if (!accepts(st, s))
      continue;
    if (best == no_slot || s.in_flight < st.slots[best].in_flight)
      best = static_cast<uint32_t>(i);
  }
  if (best != no_slot)
    st.rr = (best + 1) % n;
  return best;
}

/// Whether some worker could take a request now: a new one (ready workers
/// only), or, with `draining`, one of a session a draining worker still holds.
bool has_room(const core_state& st, bool draining = false) {
  return std::any_of(st.slots.begin(), st.slots.end(), [&](const slot_rec& s) {
    return accepts(st, s)
           || (draining && s.state == worker_phase::draining && s.in_flight < st.cfg.max_in_flight);
  });
}

// -- dispatch -----------------------------------------------------------------------

void recycle_now(self_ptr self, uint32_t slot);

void dispatch(self_ptr self, queued& q, uint32_t slot) {
  auto& st = self->state;
  auto& s = st.slots[slot];
  auto remaining = q.deadline - self->clock().now();
  if (remaining <= caf::timespan{0}) {
    fail(self, q, make_error(error_code::timeout, "request deadline passed before dispatch"));
    return;
  }
  q.req.timeout = std::chrono::duration_cast<caf::timespan>(remaining);
  if (st.cfg.mode == affinity_mode::hint && !q.req.session.empty())
    ++s.running_sessions[q.req.session];
  ++s.in_flight;
  ++s.dispatched;
  // Written to the worker's process from here when its link takes it;
  // the worker actor answers whatever it does not take, as it would.
  if (s.link && s.link->submit(q.req, q.rp) == admission::accepted)
    return;
  q.rp.delegate(s.handle, std::move(q.req));
}

caf::error unavailable_error(const std::string& why) {
  return make_error(error_code::unavailable, "no worker can serve: " + why + "; retry later");
}

/// Why this pool takes no request now (it gave up, or it is stopping), or
/// an empty error when it does.
caf::error refusal(const core_state& st) {
  if (st.failed)
    return unavailable_error("the pool gave up and is being restarted");
  if (st.stopping)
    return make_error(error_code::shutting_down, "the pool is stopping");
  return caf::error{};
}

/// A session id longer than session.max-id-size is refused before it costs
/// anything (ids are kept by the node and by a worker while they live).
caf::error check_session_id(const core_state& st, const std::string& id) {
  if (id.size() <= st.cfg.session.max_id_size)
    return caf::error{};
  return make_error(error_code::bad_request,
                    "session id of " + std::to_string(id.size()) + " bytes is longer than "
                      + std::to_string(st.cfg.session.max_id_size)
                      + " (session.max-id-size)");
}

/// The absolute deadline of a request admitted now: its own timeout (clamped
/// so that `now + timeout` cannot overflow, see pool.hpp) or the default.
caf::actor_clock::time_point deadline_of(self_ptr self, const execute& req) {
  auto timeout = req.timeout.count() > 0 ? std::min(req.timeout, max_request_timeout)
                                         : self->state.cfg.request_timeout;
  return self->clock().now() + timeout;
}

void route(self_ptr self, queued_ptr q);

void enqueue(self_ptr self, queued_ptr q) {
  auto& st = self->state;
  auto key = q->key;
  track(self, *q);
  st.queue.emplace(key, std::move(q));
  st.sweep.arm(self);
}

/// A request is dispatched: its requester has had its turn in that round
/// (also when it did not have to wait for it).
void note_turn(self_ptr self, queued& q) {
  auto& st = self->state;
  st.round = std::max(st.round, q.key.round);
  if (!q.requester)
    return;
  auto& r = st.requesters[q.requester];
  r.last_round = std::max(r.last_round, q.key.round);
}

/// Forgets requesters whose last turn no longer matters (everything they
/// sent has left the queue and the rounds have moved past them); `all`
/// forgets every requester without waiting requests.
void prune_requesters(core_state& st, bool all) {
  for (auto i = st.requesters.begin(); i != st.requesters.end();) {
    if (i->second.queued == 0 && (all || i->second.last_round < st.round))
      i = st.requesters.erase(i);
    else
      ++i;
  }
}

queued_ptr take(self_ptr self, std::map<queue_key, queued_ptr>::iterator i) {
  auto q = std::move(i->second);
  self->state.queue.erase(i);
  untrack(self, *q);
  return q;
}

/// Whether a request of `session` is in flight on any worker (hint mode).
bool session_running(const core_state& st, const std::string& session) {
  return std::any_of(st.slots.begin(), st.slots.end(), [&](const slot_rec& s) {
    return s.running_sessions.count(session) > 0;
  });
}

void try_dispatch(self_ptr self) {
  auto& st = self->state;
  // Every dispatch needs a worker with room (the hint fallback too): when
  // none has any, the queue need not be scanned at all.
  if (st.queue.empty() || !has_room(st, true))
    return;
  for (auto i = st.queue.begin(); i != st.queue.end();) {
    auto& q = *i->second;
    if (!q.req.session.empty() && !q.routed) {
      // Route only when a worker could take a new session right away;
      // otherwise routing would answer "no candidate" again and again.
      if (!has_room(st)) {
        ++i;
        continue;
      }
      route(self, take(self, i++));
      continue;
    }
    if (q.not_before > self->clock().now()) {
      ++i; // still backing off; the sweep comes back to it
      continue;
    }
    uint32_t target = no_slot;
    if (q.routed) {
      auto& s = st.slots[q.slot];
      if (s.incarnation != q.incarnation) {
        fail(self, q,
             session_lost_error(q.req.session, "its worker was replaced"));
        take(self, i++);
        continue;
      }
      // A draining worker still serves the sessions it holds.
      bool owner_has_room = (s.state == worker_phase::ready || s.state == worker_phase::draining)
                            && s.in_flight < st.cfg.max_in_flight;
      if (owner_has_room)
        target = q.slot;
      else if (st.cfg.mode == affinity_mode::hint && s.state == worker_phase::ready
               && !session_running(st, q.req.session))
        target = pick_worker(self);
    } else {
      target = pick_worker(self);
    }
    if (target == no_slot) {
      ++i;
      continue;
    }
    auto item = take(self, i++);
    note_turn(self, *item);
    dispatch(self, *item, target);
  }
}

/// Accepts a new (or retried) request.
/// The place of a request admitted now (see queue_key).
queue_key place_of(self_ptr self, queued& q, bool is_retry) {
  auto& st = self->state;
  if (is_retry)
    return {front_round, st.next_front--};
  auto round = st.round;
  if (auto i = st.requesters.find(q.requester); i != st.requesters.end())
    round = std::max(round, i->second.last_round + 1);
  queue_key key{round, st.next_back++};
  if (!q.req.session.empty()) {
    auto& tail = st.session_tail[q.req.session];
    if (key < tail)
      key.round = tail.round;
    tail = key;
  }
  return key;
}

void admit(self_ptr self, queued_ptr q, bool is_retry) {
  auto& st = self->state;
  q->requester = requester_of(*q);
  if (!is_retry && st.queue.size() >= st.cfg.queue_size) {
    fail(self, *q,
         make_error(error_code::overloaded, "the pool's queue is full ("
                                              + std::to_string(st.cfg.queue_size)
                                              + " requests waiting); retry later"));
    return;
  }
  if (!is_retry && !st.queue.empty()) {
    // Fair share: one requester may not hold more than its part of the queue.
    auto i = st.requesters.find(q->requester);
    auto share = std::max<size_t>(1, static_cast<size_t>(st.cfg.queue_share
                                                         * static_cast<double>(st.cfg.queue_size)));
    if (i != st.requesters.end() && i->second.queued >= share) {
      fail(self, *q,
           make_error(error_code::overloaded, "this client already has "
                                                + std::to_string(i->second.queued)
                                                + " requests waiting (its share of the queue); "
                                                  "retry later"));
      return;
    }
  }
  q->key = place_of(self, *q, is_retry);
  if (!q->req.session.empty()) {
    if (is_retry || st.queue.empty()) {
      route(self, std::move(q));
    } else {
      // Behind earlier requests, which may be of the same session.
      enqueue(self, std::move(q));
      try_dispatch(self);
    }
    return;
  }
  // Fast path: nothing waits, a worker has room.
  if (st.queue.empty() && q->not_before <= self->clock().now()) {
    auto target = pick_worker(self);
    if (target != no_slot) {
      note_turn(self, *q);
      // Bounded however many requesters come and go.
      if (st.requesters.size() > 2 * st.cfg.queue_size + 64)
        prune_requesters(st, true);
      dispatch(self, *q, target);
      return;
    }
  }
  enqueue(self, std::move(q));
  try_dispatch(self);
}

void route(self_ptr self, queued_ptr q) {
  auto& st = self->state;
  auto candidate = pick_worker(self);
  // Routing is a round trip to the affinity actor; the candidate is only
  // used if the session is new.
  self->request(st.affinity, caf::infinite, route_atom::value, q->req.session, candidate)
    .then(
      [self, q](uint32_t slot, uint32_t incarnation) mutable {
        auto& st = self->state;
        if (auto err = refusal(st)) {
          fail(self, *q, std::move(err));
          return;
        }
        if (slot != no_slot) {
          // The incarnation that holds the state, as the affinity knows it:
          // if that worker died meanwhile, try_dispatch reports session_lost
          // instead of running the request on its successor.
          if (st.slots[slot].incarnation != incarnation) {
            fail(self, *q,
                 session_lost_error(q->req.session, "its worker was replaced"));
            return;
          }
          q->slot = slot;
          q->incarnation = incarnation;
          q->routed = true;
        }
        // Back in line at its place of admission: behind what came before
        // it (its own session's earlier requests included), ahead of the rest.
        enqueue(self, std::move(q));
        try_dispatch(self);
      },
      [self, q](caf::error& err) { fail(self, *q, std::move(err)); });
}

// -- life cycle of workers ----------------------------------------------------

void deliver_ready_if_all(self_ptr self);

pool_stats make_stats(self_ptr self) {
  auto& st = self->state;
  pool_stats result;
  for (size_t i = 0; i < st.slots.size(); ++i) {
    auto& s = st.slots[i];
    result.workers.push_back(worker_stats{worker_id_of(static_cast<uint32_t>(i)), s.pid,
                                          s.state, s.in_flight, s.served, s.restarts,
                                          s.started_at_ms});
    if (s.state == worker_phase::ready)
      result.capacity += st.cfg.max_in_flight;
  }
  result.state = st.failed     ? pool_state::restarting
                 : st.stopping ? pool_state::stopping
                 : st.started  ? pool_state::serving
                               : pool_state::starting;
  result.queue = st.queue.size();
  result.replies = outcome_map(st.replies);
  result.retries = st.retries;
  result.requeued = st.requeued;
  result.restarts = st.restarts;
  result.recycled = st.recycled;
  latency_histogram all;
  for (auto& [name, rec] : st.commands) {
    auto& cs = result.commands[name];
    cs.replies = outcome_map(rec.replies);
    cs.histogram = rec.histogram;
    cs.latency_us = rec.histogram.percentiles();
    all.merge(rec.histogram);
  }
  result.latency_us = all.percentiles();
  if (st.forks) {
    auto t = st.forks->view();
    result.fork_template = {t.pid, t.hellos > 0 ? t.hellos - 1 : 0};
  }
  return result;
}

void deliver_ready_if_all(self_ptr self) {
  auto& st = self->state;
  if (st.started && st.ready_waiters.empty())
    return;
  for (auto& s : st.slots)
    if (s.state != worker_phase::ready)
      return;
  st.started = true;
  auto stats = make_stats(self);
  for (auto& rp : st.ready_waiters)
    rp.deliver(stats);
  st.ready_waiters.clear();
}

void recycle_now(self_ptr self, uint32_t slot) {
  auto& st = self->state;
  auto& s = st.slots[slot];
  if (s.recycling)
    return;
  s.recycling = true;
  ++st.recycled;
  log().info("pool: recycling worker {} (pid {}) after {} requests", worker_id_of(slot), s.pid,
             s.dispatched);
  self->request(st.sup, caf::infinite, terminate_child_atom::value, child_id_of(slot))
    .then([](bool) {}, [slot](caf::error& err) {
      log().warn("pool: could not recycle worker {}: {}", worker_id_of(slot),
                 to_string_readable(err));
    });
}

/// Resident set size of process `pid` in bytes (0 if unknown).
uint64_t rss_of(int64_t pid) {
  if (pid <= 0)
    return 0;
  std::ifstream statm{"/proc/" + std::to_string(pid) + "/statm"};
  uint64_t size = 0;
  uint64_t resident = 0;
  if (!(statm >> size >> resident))
    return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

/// How often max_age and max_rss are checked (0: neither is set).
caf::timespan recycle_tick(const pool_config& cfg) {
  caf::timespan tick{0};
  if (cfg.max_age.count() > 0)
    tick = cfg.max_age / 4;
  if (cfg.max_rss > 0 && (tick.count() == 0 || tick > std::chrono::seconds(1)))
    tick = std::chrono::seconds(1);
  return tick;
}

void maybe_recycle(self_ptr self, uint32_t slot, bool check_rss = false) {
  auto& st = self->state;
  auto& s = st.slots[slot];
  if (s.state == worker_phase::ready) {
    bool too_many = st.cfg.max_requests > 0 && s.dispatched >= st.cfg.max_requests;
    bool too_old = st.cfg.max_age.count() > 0
                   && self->clock().now() - s.started >= st.cfg.max_age;
    bool too_big = false;
    if (check_rss && st.cfg.max_rss > 0) {
      auto rss = rss_of(s.pid);
      too_big = rss > st.cfg.max_rss;
      if (too_big)
        log().info("pool: worker {} (pid {}) uses {} MiB, more than pool.max-rss ({} MiB): "
                   "recycling it after its requests",
                   worker_id_of(slot), s.pid, rss >> 20, st.cfg.max_rss >> 20);
    }
    if (too_many || too_old || too_big)
      s.state = worker_phase::draining;
  }
  if (s.state == worker_phase::draining && s.in_flight == 0)
    recycle_now(self, slot);
}

// Tells the supervisor that the worker in `slot` proved itself, so that its
// death does not count toward restart intensity. Why these conditions: a
// worker that answered a request and stayed up for healthy_after was fixed by
// its restart; one that dies right after its hello (or never says it) was
// not, and restarting it again and again is what intensity exists to stop.
// `excuse` skips the conditions: the worker recycles itself on purpose.
void prove(self_ptr self, uint32_t slot, bool excuse = false) {
  auto& st = self->state;
  auto& s = st.slots[slot];
  if (s.proven || !s.handle)
    return;
  if (!excuse) {
    if (!s.served_ok || (s.state != worker_phase::ready && s.state != worker_phase::draining)
        || self->clock().now() - s.ready_at < st.cfg.healthy_after)
      return;
  }
  s.proven = true;
  self->send(st.sup, child_healthy_atom::value, child_id_of(slot),
             caf::actor_cast<caf::actor>(s.handle));
}

/// Whether a done report with `code` means the worker itself answered.
bool answered_by_worker(error_code code) {
  switch (code) {
    case error_code::none:
    case error_code::bad_request:
    case error_code::unknown_command:
    case error_code::python_error:
      return true;
    default:
      return false;
  }
}

void fail_all_queued(self_ptr self, const caf::error& err) {
  auto& st = self->state;
  while (!st.queue.empty()) {
    auto q = take(self, st.queue.begin());
    fail(self, *q, err);
  }
}

void give_up(self_ptr self, std::string cause);

// Quits with `reason` once nothing of the pool runs any more: with a
// fork-server template, after its supervisor stopped it (and so its process
// was reaped), so that no Python process outlives the pool's handle.
void quit_when_done(self_ptr self, caf::error reason) {
  auto& st = self->state;
  if (!st.template_sup) {
    self->quit(std::move(reason));
    return;
  }
  st.stop_reason = std::move(reason);
  st.quit_after_template = true;
  self->send_exit(st.template_sup, caf::exit_reason::user_shutdown);
}

void on_supervisor_down(self_ptr self, const caf::error& reason) {
  auto& st = self->state;
  if (st.failed)
    return; // gave up already (its template failed); the keeper ends this core
  if (st.stopping) {
    log().info("pool: all workers stopped");
    if (st.affinity)
      self->send_exit(st.affinity, caf::exit_reason::user_shutdown);
    quit_when_done(self, st.stop_reason);
    return;
  }
  if (reason && reason.category() == supervisor_error_category
      && reason.code() == static_cast<uint8_t>(supervisor_error::max_restart_intensity))
    give_up(self, "more than " + std::to_string(st.cfg.max_restarts) + " worker restarts within "
                    + std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                       st.cfg.restart_period)
                                       .count())
                    + " ms");
  else
    give_up(self, "its worker supervisor stopped ("
                    + (reason ? self->system().render(reason) : std::string{"normal"}) + ")");
}

// The pool cannot serve any more (`cause`): it fails what waits and reports
// to its keeper, which restarts it with back-off (or ends the node).
void give_up(self_ptr self, std::string cause) {
  auto& st = self->state;
  if (st.failed)
    return;
  if (st.forks)
    st.forks->close();
  if (!st.last_failure.empty())
    cause += "; last failure: " + st.last_failure;
  log().error("the pool gave up: {}", cause);
  st.failed = true;
  st.stopping = true; // no restarts, no dispatch: nothing runs any more
  auto err = unavailable_error("the pool gave up, " + cause);
  fail_all_queued(self, err);
  for (auto& rp : st.ready_waiters)
    rp.deliver(err);
  st.ready_waiters.clear();
  // The keeper learns the sessions that die with this pool, so that they
  // answer session_lost (not "new session") once a new pool serves.
  auto report = [self, cause](std::vector<std::string> ids) {
    auto& st = self->state;
    if (st.affinity)
      self->send_exit(st.affinity, caf::exit_reason::user_shutdown);
    st.affinity = nullptr;
    caf::send_as(caf::actor_cast<caf::actor>(self), st.keeper, pool_failed_atom::value, cause,
                 std::move(ids));
  };
  if (!st.affinity) {
    report({});
    return;
  }
  self->request(st.affinity, std::chrono::seconds(2), sessions_atom::value)
    .then([report](std::vector<std::string>& ids) { report(std::move(ids)); },
          [report](caf::error&) { report({}); });
}

// A request handed back by a dying worker: a retry (`attempt`: it ran, or
// may have, and counts toward max_attempts, after a back-off) or a requeue
// (it never started there). Either way it keeps what is left of its deadline
// and goes ahead of new arrivals.
/// The back-off of idempotent retries: retry_backoff, doubling per attempt,
/// at most 16 times it, no jitter (the supervisor's policy type).
backoff_policy retry_backoff(const pool_config& cfg) {
  return backoff_policy{cfg.retry_backoff, 2.0, cfg.retry_backoff * 16, 0.0, caf::timespan{0}};
}

caf::result<payload> readmit(self_ptr self, execute req, bool attempt) {
  auto& st = self->state;
  auto rp = self->make_response_promise<payload>();
  auto q = std::make_shared<queued>();
  q->rp = rp;
  q->req.command = req.command; // for the statistics, should it fail here
  if (attempt) {
    ++req.attempts;
    ++st.retries;
  } else {
    ++st.requeued;
  }
  if (auto err = refusal(st)) {
    fail(self, *q, std::move(err));
    return rp;
  }
  if (attempt && req.attempts >= st.cfg.max_attempts) {
    fail(self, *q,
         make_error(error_code::worker_crashed, "workers died during all "
                                                  + std::to_string(req.attempts)
                                                  + " attempts of this idempotent request"));
    return rp;
  }
  auto now = self->clock().now();
  q->deadline = deadline_of(self, req);
  // Back-off: a request that keeps killing workers must not do so at full speed.
  if (attempt)
    q->not_before = now + retry_backoff(st.cfg).delay(req.attempts, 0.0);
  q->req = std::move(req);
  admit(self, std::move(q), true);
  return rp;
}

// The pool's supervisors (workers, template) restart with the pool's
// intensity and back-off.
supervisor_flags supervisor_flags_of(const pool_config& cfg, supervision_strategy strategy,
                                     std::string name) {
  supervisor_flags flags;
  flags.strategy = strategy;
  flags.max_restarts = cfg.max_restarts;
  flags.period = cfg.restart_period;
  flags.backoff = cfg.backoff;
  flags.name = std::move(name);
  return flags;
}

// Start method fork-server: the template runs under a supervisor of its own
// (the pool's intensity and back-off); workers are forked through `forks`
// and wait for a template while none is ready.
void start_template(self_ptr self) {
  auto& st = self->state;
  st.forks = std::make_shared<fork_channel>();
  child_spec spec;
  spec.id = "template";
  spec.restart = restart_type::permanent;
  spec.shutdown = shutdown_spec::after(st.cfg.shutdown_timeout);
  auto wc = st.cfg.worker;
  wc.stop_grace = st.cfg.shutdown_timeout / 2;
  spec.start = [wc, forks = st.forks](caf::actor_system& sys, const std::string&) {
    return spawn_template(sys, wc, forks);
  };
  auto flags = supervisor_flags_of(st.cfg, supervision_strategy::one_for_one,
                                   "template supervisor");
  st.template_sup = spawn_supervisor(self->system(), flags, {spec});
  self->monitor(st.template_sup);
}

/// A worker answered a request (its done report, by message or through the
/// inbox): load, stats, proof of health, recycling.
void on_done(self_ptr self, uint64_t worker, uint8_t code, int64_t ns,
             const std::string& session, const std::string& command) {
  auto& st = self->state;
  count_reply(self, command, static_cast<error_code>(code), ns);
  for (uint32_t i = 0; i < st.slots.size(); ++i) {
    auto& s = st.slots[i];
    if (s.actor != worker)
      continue;
    if (s.in_flight > 0)
      --s.in_flight;
    if (!session.empty()) {
      auto j = s.running_sessions.find(session);
      if (j != s.running_sessions.end() && --j->second == 0)
        s.running_sessions.erase(j);
    }
    ++s.served;
    if (!s.served_ok && answered_by_worker(static_cast<error_code>(code))) {
      s.served_ok = true;
      prove(self, i);
    }
    maybe_recycle(self, i);
    break;
  }
}

/// Brackets every handler that reads or changes load, stats or slots: it
/// first takes the done reports the workers' I/O threads left in the inbox
/// (so decisions and stats count every reply a caller already has), and
/// last tells the inbox whether a report must wake this actor: only while
/// requests wait for a worker or a draining worker waits to be recycled.
class activation {
public:
  explicit activation(self_ptr self) : self_(self) {
    for (auto& c : self->state.inbox->take())
      on_done(self, c.worker, c.code, c.service_ns, c.session, c.command);
  }

  ~activation() {
    auto& st = self_->state;
    bool wanted = !st.queue.empty()
                  || std::any_of(st.slots.begin(), st.slots.end(), [](const slot_rec& s) {
                       return s.state == worker_phase::draining;
                     });
    // Reports that came in since the take above were not told to wake us.
    if (st.inbox->wake_when_posted(wanted))
      self_->send(self_, take_inbox_atom::value);
  }

  activation(const activation&) = delete;
  activation& operator=(const activation&) = delete;

private:
  self_ptr self_;
};

pool_impl::behavior_type pool_fun(self_ptr self, pool_config cfg, caf::actor keeper,
                                  std::vector<std::string> lost_sessions) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.keeper = std::move(keeper);
  st.slots.resize(st.cfg.size);
  st.affinity = spawn_session_affinity(self->system(), st.cfg.session);
  if (!lost_sessions.empty())
    self->send(st.affinity, sessions_lost_atom::value, std::move(lost_sessions));
  // The worker template: every child is one backend worker reporting here.
  child_spec worker_spec;
  worker_spec.id = "worker";
  worker_spec.restart = restart_type::permanent;
  worker_spec.shutdown = shutdown_spec::after(st.cfg.shutdown_timeout);
  auto listener = caf::actor_cast<worker_listener_actor>(self);
  auto incarnations = std::make_shared<uint64_t>(0);
  if (st.cfg.backend == backend_kind::python && st.cfg.start == start_method::fork_server)
    start_template(self);
  worker_spec.start = [cfg = st.cfg, listener, incarnations,
                       forks = st.forks](caf::actor_system& sys, const std::string& id) {
    worker_settings common;
    common.id = worker_id_of(slot_of(id));
    common.request_timeout = cfg.request_timeout;
    common.attempt_timeout = cfg.attempt_timeout;
    common.stop_grace = cfg.shutdown_timeout / 2;
    common.listener = listener;
    if (cfg.backend == backend_kind::mock) {
      auto mc = cfg.mock;
      static_cast<worker_settings&>(mc) = common;
      mc.seed = cfg.mock.seed * 1000003 + (*incarnations)++;
      return caf::actor_cast<caf::actor>(spawn_mock_worker(sys, mc));
    }
    auto wc = cfg.worker;
    static_cast<worker_settings&>(wc) = common;
    wc.fork_from = forks;
    return caf::actor_cast<caf::actor>(spawn_python_worker(sys, wc));
  };
  auto flags = supervisor_flags_of(st.cfg, supervision_strategy::simple_one_for_one,
                                   "pool supervisor");
  flags.observer = caf::actor_cast<caf::actor>(self);
  st.sup = spawn_supervisor(self->system(), flags, {worker_spec});
  self->monitor(st.sup);
  // However the pool ends (even killed, which skips the exit handler), its
  // supervisor, and so every worker, and the affinity actor end with it.
  self->attach_functor([sup = st.sup, aff = st.affinity, tsup = st.template_sup,
                        forks = st.forks](const caf::error&) {
    caf::anon_send_exit(sup, caf::exit_reason::kill);
    caf::anon_send_exit(aff, caf::exit_reason::kill);
    if (tsup)
      caf::anon_send_exit(tsup, caf::exit_reason::kill);
    if (forks)
      forks->close();
  });
  // All workers start at once; their Python start-ups overlap.
  for (size_t i = 0; i < st.slots.size(); ++i) {
    st.slots[i].state = worker_phase::starting;
    self->request(st.sup, caf::infinite, start_child_atom::value,
                  child_id_of(static_cast<uint32_t>(i)))
      .then([](caf::actor&) {}, [i](caf::error& err) {
        log().error("pool: cannot start worker {}: {}", worker_id_of(static_cast<uint32_t>(i)),
                    to_string_readable(err));
      });
  }
  if (auto tick = recycle_tick(st.cfg); tick.count() > 0)
    self->delayed_send(self, tick, age_tick_atom::value);
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    if (dm.source == st.sup.address()) {
      on_supervisor_down(self, dm.reason);
      return;
    }
    if (st.template_sup && dm.source == st.template_sup.address()) {
      if (st.quit_after_template) {
        self->quit(st.stop_reason);
        return;
      }
      // The template kept failing: no worker can start any more.
      if (!st.stopping) {
        self->send_exit(st.sup, caf::exit_reason::user_shutdown);
        give_up(self, "its fork-server template failed more than "
                        + std::to_string(st.cfg.max_restarts) + " times within "
                        + std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           st.cfg.restart_period)
                                           .count())
                        + " ms");
      }
      return;
    }
    // A requester went away: its queued requests give up their places.
    st.requesters.erase(dm.source);
    for (auto i = st.queue.begin(); i != st.queue.end();) {
      if (i->second->requester == dm.source)
        i = st.queue.erase(i);
      else
        ++i;
    }
  });
  self->set_exit_handler([self](caf::exit_msg& msg) {
    auto& st = self->state;
    if (st.failed) {
      // No worker runs any more (the supervisor gave up); the keeper is
      // done with this core.
      if (!st.quit_after_template)
        quit_when_done(self, msg.reason);
      return;
    }
    if (st.stopping)
      return;
    log().info("pool: stopping ({})", msg.reason ? self->system().render(msg.reason) : "normal");
    st.stopping = true;
    st.stop_reason = msg.reason;
    fail_all_queued(self, make_error(error_code::shutting_down, "the pool is stopping"));
    for (auto& rp : st.ready_waiters)
      rp.deliver(make_error(error_code::shutting_down, "the pool is stopping"));
    st.ready_waiters.clear();
    // Workers still waiting for a template to fork them stop waiting; the
    // template itself stops after the workers (its end kills them).
    if (st.forks)
      st.forks->close();
    self->send_exit(st.sup, caf::exit_reason::user_shutdown);
  });
  return {
    [self](execute& req) -> caf::result<payload> {
      activation act{self};
      auto& st = self->state;
      auto rp = self->make_response_promise<payload>();
      auto q = std::make_shared<queued>();
      q->rp = rp;
      q->deadline = deadline_of(self, req);
      q->req = std::move(req);
      if (auto err = refusal(st)) {
        fail(self, *q, std::move(err));
        return rp;
      }
      if (auto err = check_session_id(st, q->req.session)) {
        fail(self, *q, std::move(err));
        return rp;
      }
      admit(self, std::move(q), false);
      return rp;
    },
    [self](retry_atom, execute& req) {
      activation act{self};
      return readmit(self, std::move(req), true);
    },
    [self](requeue_atom, execute& req) {
      activation act{self};
      return readmit(self, std::move(req), false);
    },
    [self](done_atom, uint64_t worker, uint8_t code, int64_t ns, const std::string& session,
           const std::string& command) {
      activation act{self};
      on_done(self, worker, code, ns, session, command);
      try_dispatch(self);
    },
    [self](take_inbox_atom) {
      activation act{self};
      try_dispatch(self);
    },
    [self](dying_atom, uint64_t worker, bool deliberate) {
      // Learned before the supervisor's report: stop dispatching there now.
      // A worker recycling itself (a timeout) did not crash: excused before
      // this answer lets it quit, so the supervisor hears of it first.
      activation act{self};
      auto& st = self->state;
      for (uint32_t i = 0; i < st.slots.size(); ++i) {
        auto& s = st.slots[i];
        if (s.actor != worker)
          continue;
        if (deliberate)
          prove(self, i, true);
        s.state = worker_phase::down;
        s.in_flight = 0;
        s.running_sessions.clear();
      }
      return true;
    },
    [self](health_atom) -> caf::result<bool> {
      activation act{self};
      auto& st = self->state;
      if (auto err = refusal(st))
        return err;
      // Healthy only while some worker can take a request: during a storm
      // every worker may be restarting at once, and then no request can run.
      for (auto& s : st.slots)
        if (s.state == worker_phase::ready || s.state == worker_phase::draining)
          return true;
      return make_error(error_code::unavailable,
                        "no worker can serve right now: all " + std::to_string(st.slots.size())
                          + " workers are (re)starting; retry later");
    },
    [self](proven_tick_atom, uint32_t slot, uint32_t incarnation) {
      activation act{self};
      if (slot < self->state.slots.size() && self->state.slots[slot].incarnation == incarnation)
        prove(self, slot);
    },
    [self](ready_atom) -> caf::result<pool_stats> {
      activation act{self};
      if (self->state.failed)
        return unavailable_error("the pool gave up and is being restarted");
      auto rp = self->make_response_promise<pool_stats>();
      self->state.ready_waiters.push_back(rp);
      deliver_ready_if_all(self);
      return rp;
    },
    [self](status_atom) -> caf::result<pool_stats> {
      activation act{self};
      auto rp = self->make_response_promise<pool_stats>();
      auto stats = make_stats(self);
      if (!self->state.affinity)
        return stats;
      self->request(self->state.affinity, caf::infinite, status_atom::value)
        .then(
          [rp, stats](affinity_stats& as) mutable {
            stats.sessions = as.sessions;
            rp.deliver(std::move(stats));
          },
          [rp, stats](caf::error&) mutable { rp.deliver(std::move(stats)); });
      return rp;
    },
    [self](end_session_atom, std::string& id) -> caf::result<bool> {
      if (!self->state.affinity)
        return unavailable_error("the pool gave up and is being restarted");
      if (auto err = check_session_id(self->state, id))
        return err;
      return self->delegate(self->state.affinity, end_session_atom::value, std::move(id));
    },
    [self](configure_atom, caf::timespan timeout) -> caf::result<caf::timespan> {
      auto& st = self->state;
      auto previous = st.cfg.session.timeout;
      st.cfg.session.timeout = timeout;
      if (!st.affinity)
        return previous;
      return self->delegate(st.affinity, configure_atom::value, timeout);
    },
    [self](child_up_atom, std::string& id, caf::actor& hdl) {
      activation act{self};
      auto& st = self->state;
      auto slot = slot_of(id);
      if (slot >= st.slots.size())
        return;
      auto& s = st.slots[slot];
      s.handle = caf::actor_cast<worker_actor>(hdl);
      s.actor = hdl.id();
      s.state = worker_phase::starting;
      s.in_flight = 0;
      s.running_sessions.clear();
      s.dispatched = 0;
      s.pid = 0;
      s.recycling = false;
      s.served_ok = false;
      s.proven = false;
      ++s.incarnation;
      s.started = self->clock().now();
      s.started_at_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
      s.link = nullptr;
      auto actor = s.actor;
      if (st.cfg.backend == backend_kind::python)
        self->request(hdl, caf::infinite, link_atom::value)
          .then(
            [self, slot, actor](worker_link_ptr& link) {
              auto& s = self->state.slots[slot];
              if (s.actor != actor)
                return;
              link->report_to(self->state.inbox, self->address());
              s.link = std::move(link);
            },
            [](caf::error&) {
              // Gone already: child_down follows.
            });
      self->request(s.handle, caf::infinite, ready_atom::value)
        .then(
          [self, slot, actor](worker_status& ws) {
            auto& st = self->state;
            auto& s = st.slots[slot];
            if (s.actor != actor || s.state != worker_phase::starting)
              return;
            s.state = worker_phase::ready;
            s.pid = ws.pid;
            s.ready_at = self->clock().now();
            self->delayed_send(self, st.cfg.healthy_after, proven_tick_atom::value, slot,
                               s.incarnation);
            self->send(st.affinity, worker_up_atom::value, slot, s.incarnation, s.handle);
            deliver_ready_if_all(self);
            try_dispatch(self);
          },
          [](caf::error&) {
            // The worker failed to start; its exit reaches us as child_down.
          });
    },
    [self](child_down_atom, std::string& id, caf::error& reason) {
      activation act{self};
      auto& st = self->state;
      auto slot = slot_of(id);
      if (slot >= st.slots.size())
        return;
      auto& s = st.slots[slot];
      bool recycling = s.recycling;
      s.state = worker_phase::down;
      s.handle = nullptr;
      s.link = nullptr;
      s.actor = 0;
      s.in_flight = 0;
      s.running_sessions.clear();
      s.pid = 0;
      ++s.incarnation;
      self->send(st.affinity, worker_down_atom::value, slot);
      auto info = info_of(reason);
      // A worker the supervisor stopped (giving up, shutting down) did not
      // fail: keep the failure that led there.
      bool stopped = reason && reason.category() == caf::atom("exit");
      if (reason && !stopped && !recycling && !st.stopping) {
        st.last_failure = reason.category() == error_category && !info.message.empty()
                            ? info.message
                            : "worker " + id + ": " + self->system().render(reason);
        if (!info.traceback.empty())
          st.last_failure += "\n" + info.traceback;
      }
      // Requests routed to this worker's sessions cannot be served any more.
      for (auto i = st.queue.begin(); i != st.queue.end();) {
        auto& q = *i->second;
        if (q.routed && q.slot == slot) {
          fail(self, q,
               session_lost_error(q.req.session, "worker " + id + " died"));
          take(self, i++);
        } else {
          ++i;
        }
      }
      if (st.stopping)
        return;
      if (info.code == error_code::worker_crashed
          && info.python_type == configuration_error_type) {
        // No restart fixes the interpreter: give up now, budget untouched.
        give_up(self, "its workers cannot start");
        self->send_exit(st.sup, caf::exit_reason::user_shutdown);
        return;
      }
      if (recycling) {
        self->request(st.sup, caf::infinite, start_child_atom::value, id)
          .then([](caf::actor&) {}, [id](caf::error& err) {
            log().error("pool: cannot restart recycled worker {}: {}", id,
                        to_string_readable(err));
          });
      } else {
        ++s.restarts;
        ++st.restarts;
      }
    },
    [self](sweep_atom) {
      activation act{self};
      auto& st = self->state;
      st.sweep.fired();
      auto now = self->clock().now();
      for (auto i = st.queue.begin(); i != st.queue.end();) {
        if (i->second->deadline <= now) {
          auto q = take(self, i++);
          fail(self, *q,
               make_error(error_code::timeout, "request waited in the queue past its deadline"));
        } else {
          ++i;
        }
      }
      try_dispatch(self); // retries whose back-off has passed
      prune_requesters(st, false);
      // A session whose latest place is before everything waiting has no
      // request left in the queue.
      for (auto i = st.session_tail.begin(); i != st.session_tail.end();) {
        if (st.queue.empty() || i->second < st.queue.begin()->first)
          i = st.session_tail.erase(i);
        else
          ++i;
      }
      if (!st.queue.empty())
        st.sweep.arm(self);
    },
    [self](age_tick_atom) {
      activation act{self};
      auto& st = self->state;
      for (uint32_t i = 0; i < st.slots.size(); ++i)
        maybe_recycle(self, i, true);
      if (!st.stopping && !st.failed)
        self->delayed_send(self, recycle_tick(st.cfg), age_tick_atom::value);
    },
  };
}

} // namespace

pool_actor spawn_pool_core(caf::actor_system& sys, pool_config cfg, caf::actor keeper,
                           std::vector<std::string> lost_sessions) {
  return sys.spawn(pool_fun, std::move(cfg), std::move(keeper), std::move(lost_sessions));
}

} // namespace pyvisor

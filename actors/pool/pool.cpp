// The pool core's request path (admission, the fair queue, dispatch,
// session routing, retries and requeues) and its behavior; the workers'
// life cycle is in pool_workers.cpp (core_state.hpp says how they split).
#include "actors/pool/core_state.hpp"

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/send.hpp"

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

/// `q` leaves the pool (written to its worker, or answered): an end of its
/// session waiting for it runs once nothing else it waits for remains.
void release_end(self_ptr self, queued& q, const std::string& session) {
  if (!q.holds_end)
    return;
  q.holds_end = false;
  auto& st = self->state;
  auto i = st.ending.find(session);
  if (i == st.ending.end() || --i->second.waiting > 0)
    return;
  auto promises = std::move(i->second.promises);
  auto id = i->first;
  st.ending.erase(i);
  if (!st.affinity) {
    for (auto& rp : promises)
      rp.deliver(unavailable_error("the pool gave up and is being restarted"));
    return;
  }
  self->request(st.affinity, caf::infinite, end_session_atom::value, std::move(id))
    .then(
      [promises](bool existed) mutable {
        for (auto& rp : promises)
          rp.deliver(existed);
      },
      [promises](caf::error& err) mutable {
        for (auto& rp : promises)
          rp.deliver(err);
      });
}

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
  q.state = request_state::written;
  // Written to the worker's process from here when its link takes it;
  // the worker actor answers whatever it does not take, with the same
  // admission rule (worker_link.hpp). A waiting end of its session is
  // released only after that, so that its drop comes behind it.
  if (s.link && s.link->submit(q.req, q.rp) == admission::accepted) {
    release_end(self, q, q.req.session);
    return;
  }
  auto session = q.holds_end ? q.req.session : std::string{};
  q.rp.delegate(s.handle, std::move(q.req));
  release_end(self, q, session);
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
  auto& cfg = self->state.cfg;
  return self->clock().now()
         + effective_timeout(req.timeout, req.command, cfg.command_timeouts, cfg.request_timeout,
                             cfg.max_request_timeout);
}

/// Who sent the request: the original caller, kept through delegation.
caf::actor_addr requester_of(queued& q) {
  return caf::actor_cast<caf::actor_addr>(static_cast<caf::response_promise&>(q.rp).source());
}

void route(self_ptr self, queued_ptr q);

void enqueue(self_ptr self, queued_ptr q) {
  auto& st = self->state;
  st.queue.push(std::move(q));
  st.sweep.arm(self);
}

/// Dispatches `q` to `slot`: its requester had its turn.
void dispatch_in_turn(self_ptr self, queued& q, uint32_t slot) {
  self->state.queue.note_turn(q);
  dispatch(self, q, slot);
}

void admit(self_ptr self, queued_ptr q, bool is_retry) {
  auto& st = self->state;
  q->requester = requester_of(*q);
  if (!is_retry) {
    watch(self, q->requester);
    if (auto err = st.queue.refusal(q->requester, q->req.args.bytes.size())) {
      fail(self, *q, std::move(err));
      return;
    }
  }
  q->key = st.queue.place(*q, is_retry);
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
    auto target = st.slots.pick();
    if (target != no_slot) {
      // Bounded however many requesters come and go.
      if (st.queue.too_many_requesters())
        st.queue.prune(true);
      dispatch_in_turn(self, *q, target);
      return;
    }
  }
  enqueue(self, std::move(q));
  try_dispatch(self);
}

void route(self_ptr self, queued_ptr q) {
  auto& st = self->state;
  auto candidate = st.slots.pick();
  st.routing.insert(q);
  // Routing is a round trip to the affinity actor; the candidate is only
  // used if the session is new. The continuation runs inside an activation
  // (guarded): the request it queues is dispatched on the next reply, not
  // on the next sweep.
  self->request(st.affinity, caf::infinite, route_atom::value, q->req.session, candidate)
    .then(guarded(self,
                  [self, q](uint32_t slot, uint32_t incarnation) mutable {
                    auto& st = self->state;
                    st.routing.erase(q);
                    // Routed to a slot: the session is active until this
                    // request ends (fail() or its worker's report say so).
                    q->routed = slot != no_slot;
                    if (q->cancelled) {
                      fail(self, *q,
                           make_error(error_code::cancelled,
                                      "the request was cancelled while queued"));
                      return;
                    }
                    if (auto err = refusal(st)) {
                      fail(self, *q, std::move(err));
                      return;
                    }
                    if (slot != no_slot) {
                      // The incarnation that holds the state, as the affinity
                      // knows it: if that worker died meanwhile, the request
                      // fails with session_lost instead of running on its
                      // successor.
                      if (st.slots[slot].incarnation != incarnation) {
                        fail(self, *q,
                             session_lost_error(q->req.session, "its worker was replaced"));
                        return;
                      }
                      q->slot = slot;
                      q->incarnation = incarnation;
                      q->routed = true;
                    }
                    // Back in line at its place of admission: behind what came
                    // before it (its own session's earlier requests included),
                    // ahead of the rest.
                    enqueue(self, std::move(q));
                    try_dispatch(self);
                  }),
          guarded(self, [self, q](caf::error& err) {
            self->state.routing.erase(q);
            fail(self, *q, std::move(err));
          }));
}

/// The back-off of idempotent retries: retry_backoff, doubling per attempt,
/// at most 16 times it, no jitter (the supervisor's policy type).
backoff_policy retry_backoff(const pool_config& cfg) {
  return backoff_policy{cfg.retry_backoff, 2.0, cfg.retry_backoff * 16, 0.0, caf::timespan{0}};
}

// A request handed back by a dying worker: a retry (`attempt`: it ran, or
// may have, and counts toward max_attempts, after a back-off) or a requeue
// (it never started there). Either way it keeps what is left of its deadline
// and goes ahead of new arrivals.
caf::result<payload> readmit(self_ptr self, execute req, bool attempt) {
  auto& st = self->state;
  auto rp = self->make_response_promise<payload>();
  auto q = std::make_shared<queued>();
  q->rp = rp;
  q->req.command = req.command; // for the statistics, should it fail here
  if (attempt) {
    ++req.attempts;
    ++st.counters.retries;
  } else {
    ++st.counters.requeued;
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

/// The sweep: queue deadlines, retries whose back-off passed, pruning.
void sweep_queue(self_ptr self) {
  auto& st = self->state;
  st.sweep.fired();
  auto now = self->clock().now();
  for (auto i = st.queue.begin(); i != st.queue.end();) {
    if (i->second->deadline <= now) {
      auto q = st.queue.take(i++);
      q->state = request_state::expired;
      fail(self, *q,
           make_error(error_code::timeout, "request waited in the queue past its deadline"));
    } else {
      ++i;
    }
  }
  try_dispatch(self); // retries whose back-off has passed
  st.queue.prune(false);
  st.queue.prune_session_tails();
  if (!st.queue.empty())
    st.sweep.arm(self);
}

pool_impl::behavior_type pool_fun(self_ptr self, pool_config cfg, caf::actor keeper,
                                  std::vector<std::string> lost_sessions) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.jitter.seed(st.cfg.jitter_seed != 0 ? st.cfg.jitter_seed : std::random_device{}());
  st.keeper = std::move(keeper);
  st.slots = slot_table{st.cfg.size, st.cfg.max_in_flight};
  st.queue = fair_queue{st.cfg.queue_size, st.cfg.queue_share, st.cfg.max_queued_bytes};
  // Requesters are watched until they go down (watch()), not only while
  // requests of theirs wait: running ones are cancelled too.
  st.queue.on_watch = [self](const caf::actor_addr& who, bool on) {
    if (on)
      watch(self, who);
  };
  st.sweep = sweep_timer{st.cfg.sweep_interval};
  st.affinity = spawn_session_affinity(self->system(), st.cfg.session);
  if (!lost_sessions.empty())
    self->send(st.affinity, sessions_lost_atom::value, std::move(lost_sessions));
  start_workers(self);
  if (auto tick = recycle_tick(st.cfg); tick.count() > 0)
    self->delayed_send(self, tick, age_tick_atom::value);
  self->set_down_handler([self](caf::down_msg& dm) { on_down(self, dm); });
  self->set_exit_handler([self](caf::exit_msg& msg) { on_exit(self, msg); });
  // Every handler that touches load, stats, slots or the queue is guarded
  // (the inbox rule, core_state.hpp).
  return {
    guarded(self,
            [self](execute& req) -> caf::result<payload> {
              auto& st = self->state;
              auto rp = self->make_response_promise<payload>();
              auto q = std::make_shared<queued>();
              q->rp = rp;
              q->deadline = deadline_of(self, req);
              q->req = std::move(req);
              if (q->req.stream)
                st.counters.opened(); // until its answer is counted
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
            }),
    guarded(self,
            [self](retry_atom, execute& req) { return readmit(self, std::move(req), true); }),
    guarded(self,
            [self](requeue_atom, execute& req) { return readmit(self, std::move(req), false); }),
    guarded(self,
            [self](done_atom, uint64_t worker, uint8_t code, int64_t ns,
                   const std::string& session, const std::string& command) {
              completion c;
              c.worker = worker;
              c.code = code;
              c.service_ns = ns;
              c.session = session;
              c.command = command;
              on_done(self, c);
              try_dispatch(self);
            }),
    guarded(self, [self](take_inbox_atom) { try_dispatch(self); }),
    guarded(self,
            [self](cancel_atom, uint64_t tag) {
              auto who = caf::actor_cast<caf::actor_addr>(self->current_sender());
              if (who)
                cancel_requests(self, who, tag);
            }),
    guarded(self,
            [self](taken_atom, uint64_t tag, uint64_t n) {
              auto who = caf::actor_cast<caf::actor_addr>(self->current_sender());
              if (who && tag != 0)
                pass_taken(self, who, tag, n);
            }),
    guarded(self,
            [self](take_back_atom) {
              self->state.take_back_armed = false;
              try_dispatch(self);
            }),
    guarded(self,
            [self](dying_atom, uint64_t worker, bool deliberate) {
              // Learned before the supervisor's report: stop dispatching there
              // now. A worker recycling itself (a timeout) did not crash:
              // excused before this answer lets it quit, so the supervisor
              // hears of it first.
              auto& st = self->state;
              if (auto i = st.slots.find(worker)) {
                auto& s = st.slots[*i];
                if (deliberate) {
                  prove(self, *i, true);
                  if (!s.self_recycled) {
                    s.self_recycled = true;
                    ++st.counters.recycled;
                  }
                }
                s.state = worker_phase::down;
                s.in_flight = 0;
                s.running_sessions.clear();
              }
              return true;
            }),
    guarded(self,
            [self](health_atom) -> caf::result<bool> {
              auto& st = self->state;
              if (auto err = refusal(st))
                return err;
              // Healthy only while some worker can take a request: during a
              // storm every worker may be restarting at once, and then no
              // request can run.
              for (auto& s : st.slots)
                if (s.state == worker_phase::ready || s.state == worker_phase::draining)
                  return true;
              return make_error(error_code::unavailable,
                                "no worker can serve right now: all "
                                  + std::to_string(st.slots.size())
                                  + " workers are (re)starting; retry later");
            }),
    guarded(self,
            [self](proven_tick_atom, uint32_t slot, uint32_t incarnation) {
              auto& st = self->state;
              if (slot < st.slots.size() && st.slots[slot].incarnation == incarnation)
                prove(self, slot);
            }),
    guarded(self,
            [self](ready_atom) -> caf::result<pool_stats> {
              if (self->state.failed)
                return unavailable_error("the pool gave up and is being restarted");
              auto rp = self->make_response_promise<pool_stats>();
              self->state.ready_waiters.push_back(rp);
              deliver_ready_if_all(self);
              return rp;
            }),
    guarded(self,
            [self](status_atom) -> caf::result<pool_stats> {
              auto& st = self->state;
              auto stats = make_stats(self);
              // A core that gave up or stops has no sessions to count.
              if (!st.affinity || st.failed || st.stopping)
                return stats;
              auto rp = self->make_response_promise<pool_stats>();
              auto n = st.next_stats_waiter++;
              st.stats_waiters.emplace(n, std::make_pair(rp, std::move(stats)));
              auto answer = [self, n](uint64_t sessions) {
                auto& waiters = self->state.stats_waiters;
                auto i = waiters.find(n);
                if (i == waiters.end())
                  return;
                i->second.second.sessions = sessions;
                i->second.first.deliver(std::move(i->second.second));
                waiters.erase(i);
              };
              self->request(st.affinity, caf::infinite, status_atom::value)
                .then([answer](affinity_stats& as) { answer(as.sessions); },
                      [answer](caf::error&) { answer(0); });
              return rp;
            }),
    [self](end_session_atom, std::string& id) -> caf::result<bool> {
      auto& st = self->state;
      if (!st.affinity)
        return unavailable_error("the pool gave up and is being restarted");
      if (auto err = check_session_id(st, id))
        return err;
      // In the session's order: after its requests that wait here (they
      // run, then the worker drops the state, theirs included).
      size_t waiting = 0;
      auto hold = [&](queued& q) {
        if (q.req.session == id && !q.holds_end) {
          q.holds_end = true;
          ++waiting;
        }
      };
      for (auto& kv : st.queue)
        hold(*kv.second);
      for (auto& q : st.routing)
        hold(*q);
      auto i = st.ending.find(id);
      if (waiting == 0 && i == st.ending.end())
        return self->delegate(st.affinity, end_session_atom::value, std::move(id));
      auto& e = st.ending[id];
      e.waiting += waiting;
      auto rp = self->make_response_promise<bool>();
      e.promises.push_back(rp);
      return rp;
    },
    [self](configure_atom, caf::timespan timeout) -> caf::result<caf::timespan> {
      auto& st = self->state;
      auto previous = st.cfg.session.timeout;
      st.cfg.session.timeout = timeout;
      if (!st.affinity)
        return previous;
      return self->delegate(st.affinity, configure_atom::value, timeout);
    },
    guarded(self, [self](child_up_atom, std::string& id,
                         caf::actor& hdl) { on_child_up(self, id, hdl); }),
    guarded(self, [self](child_down_atom, std::string& id,
                         caf::error& reason) { on_child_down(self, id, reason); }),
    guarded(self, [self](sweep_atom) { sweep_queue(self); }),
    guarded(self,
            [self](age_tick_atom) {
              auto& st = self->state;
              for (uint32_t i = 0; i < st.slots.size(); ++i) {
                maybe_recycle(self, i, true);
                if (st.cfg.stopped_check.count() > 0)
                  kill_if_stopped(self, i);
              }
              if (!st.stopping && !st.failed)
                self->delayed_send(self, recycle_tick(st.cfg), age_tick_atom::value);
            }),
  };
}

} // namespace

void fail(self_ptr self, queued& q, caf::error err) {
  stream_tally nothing; // what reached its caller came in a worker's report
  self->state.counters.count(q.req.command, code_of(err), -1,
                             q.req.stream ? &nothing : nullptr);
  if (q.routed)
    session_done(self, q.req.session);
  q.rp.deliver(std::move(err));
  release_end(self, q, q.req.session);
}

void session_done(self_ptr self, const std::string& session) {
  auto& st = self->state;
  if (!session.empty() && st.affinity)
    self->send(st.affinity, session_done_atom::value, session);
}

void watch(self_ptr self, const caf::actor_addr& requester) {
  if (requester && self->state.watched.insert(requester).second)
    self->monitor(requester);
}

namespace {

/// Tells every worker: through its link (`on_link`), or, a worker the pool
/// has no link to, as the message `xs...` (the worker that has the request
/// acts, the others find no such request).
template <class OnLink, class... Ts>
void tell_workers(self_ptr self, OnLink on_link, const Ts&... xs) {
  for (auto& s : self->state.slots) {
    if (s.link)
      on_link(*s.link);
    else if (s.handle)
      caf::anon_send(caf::actor_cast<caf::actor>(s.handle), xs...);
  }
}

} // namespace

void cancel_requests(self_ptr self, const caf::actor_addr& requester, uint64_t tag) {
  auto& st = self->state;
  for (auto& q : st.queue.take_of(requester, tag)) {
    q->state = request_state::answered;
    fail(self, *q, make_error(error_code::cancelled, "the request was cancelled while queued"));
  }
  for (auto& q : st.routing)
    if (q->requester == requester && (tag == 0 || q->req.tag == tag))
      q->cancelled = true;
  tell_workers(
    self, [&](worker_link& link) { link.cancel(requester, tag); }, cancel_for_atom::value,
    requester, tag);
}

void pass_taken(self_ptr self, const caf::actor_addr& requester, uint64_t tag, uint64_t n) {
  tell_workers(
    self, [&](worker_link& link) { link.taken(requester, tag, n); }, taken_for_atom::value,
    requester, tag, n);
}

namespace {

// No request waits behind a slow one on a busy worker while another worker
// is idle: a worker with requests written behind the one it runs (for
// take_back_after, or being interrupted) is asked to give back those it has
// not begun; they are requeued (and dispatched here) when it answers. While
// the one it runs is younger than that, look again when it will not be.
void try_take_back(self_ptr self) {
  auto& st = self->state;
  if (!st.queue.empty() || st.stopping || st.failed)
    return;
  bool idle = false;
  bool backlog = false;
  for (auto& s : st.slots) {
    idle |= s.state == worker_phase::ready && s.in_flight == 0;
    backlog |= s.link && s.in_flight >= 2;
  }
  if (!idle || !backlog)
    return;
  // Looked at again only where a request could be taken once its head is
  // older: a worker that holds nothing else but session requests (or
  // requests asked for already) arms no timer.
  bool young = false;
  for (auto& s : st.slots) {
    bool later = false;
    if (s.link && s.in_flight >= 2)
      s.link->take_back(st.cfg.take_back_after, &later);
    young |= later;
  }
  if (young && !st.take_back_armed) {
    st.take_back_armed = true;
    self->delayed_send(self, st.cfg.take_back_after, take_back_atom::value);
  }
}

void dispatch_queue(self_ptr self);

} // namespace

void try_dispatch(self_ptr self) {
  dispatch_queue(self);
  try_take_back(self);
}

namespace {

void dispatch_queue(self_ptr self) {
  auto& st = self->state;
  // Every dispatch needs a worker with room (the hint fallback too): when
  // none has any, the queue need not be scanned at all.
  if (st.queue.empty() || !st.slots.has_room(true))
    return;
  for (auto i = st.queue.begin(); i != st.queue.end();) {
    auto& q = *i->second;
    if (!q.req.session.empty() && !q.routed) {
      // Route only when a worker could take a new session right away;
      // otherwise routing would answer "no candidate" again and again.
      if (!st.slots.has_room()) {
        ++i;
        continue;
      }
      route(self, st.queue.take(i++));
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
        fail(self, q, session_lost_error(q.req.session, "its worker was replaced"));
        st.queue.take(i++);
        continue;
      }
      if (st.slots.accepts_own(s))
        target = q.slot;
      else if (st.cfg.mode == affinity_mode::hint && s.state == worker_phase::ready
               && !st.slots.session_running(q.req.session))
        target = st.slots.pick();
    } else {
      target = st.slots.pick();
    }
    if (target == no_slot) {
      ++i;
      continue;
    }
    auto item = st.queue.take(i++);
    dispatch_in_turn(self, *item, target);
  }
}

} // namespace

pool_actor spawn_pool_core(caf::actor_system& sys, pool_config cfg, caf::actor keeper,
                           std::vector<std::string> lost_sessions) {
  return sys.spawn(pool_fun, std::move(cfg), std::move(keeper), std::move(lost_sessions));
}

} // namespace pyvisor

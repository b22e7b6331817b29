#include "actors/pool/pool_keeper.hpp"

#include <algorithm>
#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "caf/actor_system.hpp"
#include "caf/event_based_actor.hpp"
#include "caf/exit_reason.hpp"
#include "caf/stateful_actor.hpp"
#include "caf/typed_event_based_actor.hpp"

#include "actors/pool/pool_core.hpp"
#include "messages/internal_atoms.hpp"
#include "messages/log.hpp"

namespace pyvisor {

namespace {

using restart_pool_atom = caf::atom_constant<caf::atom("pk_restart")>;

using keeper_impl = pool_actor::extend<
  caf::reacts_to<pool_failed_atom, std::string, std::vector<std::string>>,
  caf::reacts_to<restart_pool_atom, uint64_t>>;


struct keeper_state {
  pool_config cfg;
  pool_actor core;
  /// The same handle for the clean-up functor, which may run after the
  /// state is gone.
  std::shared_ptr<pool_actor> current = std::make_shared<pool_actor>();
  pool_state now = pool_state::starting;
  /// Bumped with every core; replies and timers of older ones are ignored.
  uint64_t generation = 0;
  caf::actor_clock::time_point serving_since;
  /// Give-ups in a row without serving for restart.backoff.reset_after.
  size_t consecutive = 0;
  uint64_t pool_restarts = 0;
  std::string last_failure;
  /// Sessions of lost pools (id, when lost), handed to every new pool while
  /// they are remembered (session.remember).
  std::vector<std::pair<std::string, caf::actor_clock::time_point>> lost;
  std::vector<caf::typed_response_promise<pool_stats>> ready_waiters;
  caf::error stop_reason;
  std::minstd_rand rng{0x5eed};

  static inline const char* name = "pyvisor.pool_keeper";
};

using self_ptr = keeper_impl::stateful_pointer<keeper_state>;

caf::error not_serving(self_ptr self) {
  auto& st = self->state;
  switch (st.now) {
    case pool_state::starting:
      return make_error(error_code::unavailable, "no worker can serve yet: the pool is starting");
    case pool_state::restarting:
      return make_error(error_code::unavailable,
                        "no worker can serve: the pool is restarting after it gave up ("
                          + st.last_failure + "); retry later");
    default:
      return make_error(error_code::shutting_down, "the pool is stopping");
  }
}

void stamp(self_ptr self, pool_stats& stats) {
  auto& st = self->state;
  stats.state = st.now;
  stats.last_failure = st.last_failure;
  stats.pool_restarts = st.pool_restarts;
}

void start_core(self_ptr self) {
  auto& st = self->state;
  auto gen = ++st.generation;
  std::vector<std::string> lost;
  auto cutoff = self->clock().now() - st.cfg.session.remember;
  std::vector<std::pair<std::string, caf::actor_clock::time_point>> keep;
  for (auto& [id, when] : st.lost)
    if (when >= cutoff) {
      lost.push_back(id);
      keep.emplace_back(id, when);
    }
  st.lost = std::move(keep);
  st.core = spawn_pool_core(self->system(), st.cfg, caf::actor_cast<caf::actor>(self),
                            std::move(lost));
  *st.current = st.core;
  self->monitor(st.core);
  self->request(st.core, caf::infinite, ready_atom::value)
    .then(
      [self, gen](pool_stats& stats) {
        auto& st = self->state;
        if (gen != st.generation || st.now == pool_state::stopping)
          return;
        if (st.now == pool_state::restarting)
          log().info("pool restarted: {} workers ready; serving again", stats.workers.size());
        st.now = pool_state::serving;
        st.serving_since = self->clock().now();
        stamp(self, stats);
        for (auto& rp : st.ready_waiters)
          rp.deliver(stats);
        st.ready_waiters.clear();
      },
      [](caf::error&) {
        // The core gave up before it was ready: its failure notice follows.
      });
}

// Ends the keeper with `reason`: now, or (`now` false) once its core is
// down (the down handler quits with stop_reason).
void quit_with(self_ptr self, caf::error reason, bool now = true) {
  auto& st = self->state;
  st.now = pool_state::stopping;
  for (auto& rp : st.ready_waiters)
    rp.deliver(reason);
  st.ready_waiters.clear();
  if (now)
    self->quit(std::move(reason));
  else
    st.stop_reason = std::move(reason);
}

// The current core gave up (or died): replace it, or give up in turn.
void on_core_failed(self_ptr self, std::string cause, std::vector<std::string> sessions) {
  auto& st = self->state;
  auto now = self->clock().now();
  bool ever_served = st.now == pool_state::serving || st.pool_restarts > 0;
  bool was_serving = st.now == pool_state::serving;
  ++st.generation;
  st.last_failure = std::move(cause);
  for (auto& id : sessions)
    st.lost.emplace_back(std::move(id), now);
  // The pool logged the cause with its traceback already: one line here.
  auto headline = st.last_failure.substr(0, st.last_failure.find('\n'));
  caf::error final_error;
  if (!ever_served) {
    log().error("the pool failed at its first start and is not restarted: {}", headline);
    final_error = make_error(error_code::unavailable, "the pool failed to start: " + st.last_failure);
  } else if (!st.cfg.restart.enabled) {
    log().error("the pool gave up and restarts are off (on-pool-failure=exit): {}", headline);
    final_error = make_error(error_code::unavailable, "the pool gave up: " + st.last_failure);
  }
  if (final_error && st.core) {
    // The handle ends once the core has (with what it still runs): callers
    // hear now, the keeper quits on the core's down message.
    quit_with(self, std::move(final_error), false);
    self->send_exit(st.core, caf::exit_reason::user_shutdown);
    return;
  }
  if (st.core) {
    self->demonitor(st.core.address());
    // Sent after the last delegated request: the core answers all of them
    // (unavailable) before it sees this.
    self->send_exit(st.core, caf::exit_reason::user_shutdown);
    st.core = nullptr;
  }
  if (final_error) {
    quit_with(self, std::move(final_error));
    return;
  }
  auto& policy = st.cfg.restart.backoff;
  if (was_serving && now - st.serving_since >= policy.reset_after)
    st.consecutive = 0;
  ++st.consecutive;
  std::uniform_real_distribution<double> unit{-1.0, 1.0};
  auto delay = policy.delay(st.consecutive, unit(st.rng));
  st.now = pool_state::restarting;
  ++st.pool_restarts;
  log().warn("restarting the whole pool in {} ms (give-up {} in a row)",
             std::chrono::duration_cast<std::chrono::milliseconds>(delay).count(),
             st.consecutive);
  self->delayed_send(self, delay, restart_pool_atom::value, st.generation);
}

keeper_impl::behavior_type keeper_fun(self_ptr self, pool_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  // However the keeper ends (even killed), the pool behind it ends too.
  self->attach_functor([current = st.current](const caf::error&) {
    if (*current)
      caf::anon_send_exit(*current, caf::exit_reason::kill);
  });
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    if (!st.core || dm.source != st.core.address())
      return;
    if (st.now == pool_state::stopping) {
      st.core = nullptr;
      self->quit(st.stop_reason);
      return;
    }
    // Died without a failure notice (a bug or a kill): same consequence.
    on_core_failed(self,
                   "the pool stopped unexpectedly ("
                     + (dm.reason ? to_string_readable(dm.reason) : std::string{"normal"}) + ")",
                   {});
  });
  self->set_exit_handler([self](caf::exit_msg& msg) {
    auto& st = self->state;
    if (st.now == pool_state::stopping)
      return;
    st.now = pool_state::stopping;
    st.stop_reason = msg.reason;
    for (auto& rp : st.ready_waiters)
      rp.deliver(make_error(error_code::shutting_down, "the pool is stopping"));
    st.ready_waiters.clear();
    if (st.core)
      self->send_exit(st.core, msg.reason);
    else
      self->quit(msg.reason);
  });
  start_core(self);
  return {
    [self](execute& req) -> caf::result<payload> {
      auto& st = self->state;
      if (st.now == pool_state::serving || st.now == pool_state::starting)
        return self->delegate(st.core, std::move(req));
      return not_serving(self);
    },
    [self](ready_atom) -> caf::result<pool_stats> {
      auto& st = self->state;
      if (st.now == pool_state::serving || st.now == pool_state::starting)
        return self->delegate(st.core, ready_atom::value);
      if (st.now == pool_state::stopping)
        return not_serving(self);
      auto rp = self->make_response_promise<pool_stats>();
      st.ready_waiters.push_back(rp);
      return rp;
    },
    [self](status_atom) -> caf::result<pool_stats> {
      auto& st = self->state;
      if (!st.core) {
        pool_stats stats;
        stamp(self, stats);
        return stats;
      }
      auto rp = self->make_response_promise<pool_stats>();
      self->request(st.core, std::chrono::seconds(5), status_atom::value)
        .then(
          [self, rp](pool_stats& stats) mutable {
            stamp(self, stats);
            rp.deliver(std::move(stats));
          },
          [self, rp](caf::error&) mutable {
            pool_stats stats;
            stamp(self, stats);
            rp.deliver(std::move(stats));
          });
      return rp;
    },
    [self](health_atom) -> caf::result<bool> {
      // Serving: the pool itself says whether a worker can take a request.
      if (self->state.now == pool_state::serving)
        return self->delegate(self->state.core, health_atom::value);
      return not_serving(self);
    },
    [self](end_session_atom, std::string& id) -> caf::result<bool> {
      auto& st = self->state;
      if (st.now == pool_state::serving || st.now == pool_state::starting)
        return self->delegate(st.core, end_session_atom::value, std::move(id));
      return not_serving(self);
    },
    [self](configure_atom, caf::timespan timeout) -> caf::result<caf::timespan> {
      // Kept here too, so that a restarted pool starts with it.
      auto& st = self->state;
      auto previous = st.cfg.session.timeout;
      st.cfg.session.timeout = timeout;
      if (st.core && st.now != pool_state::stopping)
        return self->delegate(st.core, configure_atom::value, timeout);
      return previous;
    },
    [self](cancel_atom, uint64_t tag) {
      // As the sender's own: the core cancels what that sender asked for.
      if (auto& core = self->state.core)
        caf::send_as(caf::actor_cast<caf::actor>(self->current_sender()), core,
                     cancel_atom::value, tag);
    },
    [self](taken_atom, uint64_t tag, uint64_t n) {
      // As the sender's own, like a cancel.
      if (auto& core = self->state.core)
        caf::send_as(caf::actor_cast<caf::actor>(self->current_sender()), core,
                     taken_atom::value, tag, n);
    },
    [self](pool_failed_atom, std::string& cause, std::vector<std::string>& sessions) {
      auto& st = self->state;
      if (!st.core || self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(st.core)
          || st.now == pool_state::stopping)
        return;
      on_core_failed(self, std::move(cause), std::move(sessions));
    },
    [self](restart_pool_atom, uint64_t generation) {
      auto& st = self->state;
      // Only the keeper's own timer restarts a pool (the handle may be
      // published to other nodes).
      if (self->current_sender() != self->ctrl() || generation != st.generation
          || st.now != pool_state::restarting)
        return;
      log().info("starting a new pool (restart {})", st.pool_restarts);
      start_core(self);
    },
  };
}

} // namespace

pool_actor spawn_pool_keeper(caf::actor_system& sys, pool_config cfg) {
  return sys.spawn(keeper_fun, std::move(cfg));
}

pool_actor spawn_pool(caf::actor_system& sys, pool_config cfg) {
  // A worker that runs N requests at once is given N: dispatch counts its
  // capacity with them.
  cfg.worker_concurrency = std::max<uint32_t>(1, cfg.worker_concurrency);
  cfg.max_in_flight = std::max(cfg.max_in_flight, cfg.worker_concurrency);
  cfg.worker.concurrency = cfg.worker_concurrency;
  return spawn_pool_keeper(sys, std::move(cfg));
}

} // namespace pyvisor

// The pool core's workers: their supervisor and fork-server template, child
// up and down, proof of health, recycling, the give-up, and the stats
// (core_state.hpp says how the core is split).
#include "actors/pool/core_state.hpp"

#include <signal.h>

#include <algorithm>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>

#include "caf/actor_system.hpp"
#include "caf/exit_reason.hpp"
#include "caf/send.hpp"

#include "actors/fork_server/template_actor.hpp"
#include "actors/process/python_process.hpp"
#include "messages/log.hpp"
#include "actors/worker/reporting_worker.hpp"

namespace pyvisor {

namespace {

/// Resident memory of process `pid` that is its own, in bytes (0 if
/// unknown): the resident set without its shared pages (mapped files and
/// shared memory: RssFile + RssShmem), so that the pages of the worker's
/// shared rings, touched by large values and kept, never count as a leak.
uint64_t rss_of(int64_t pid) {
  if (pid <= 0)
    return 0;
  std::ifstream statm{"/proc/" + std::to_string(pid) + "/statm"};
  uint64_t size = 0;
  uint64_t resident = 0;
  uint64_t shared = 0;
  if (!(statm >> size >> resident >> shared))
    return 0;
  return (resident - std::min(resident, shared)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
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

void recycle_now(self_ptr self, uint32_t slot) {
  auto& st = self->state;
  auto& s = st.slots[slot];
  if (s.recycling)
    return;
  s.recycling = true;
  ++st.counters.recycled;
  log().info("pool: recycling worker {} (pid {}) after {} requests", worker_id_of(slot), s.pid,
             s.dispatched);
  self->request(st.sup, caf::infinite, terminate_child_atom::value, child_id_of(slot))
    .then([](bool) {}, [slot](caf::error& err) {
      log().warn("pool: could not recycle worker {}: {}", worker_id_of(slot),
                 to_string_readable(err));
    });
}

void fail_all_queued(self_ptr self, const caf::error& err) {
  for (auto& q : self->state.queue.take_all())
    fail(self, *q, err);
}

// Quits with `reason` once nothing of the pool runs any more: with a
// fork-server template, after its supervisor stopped it (and so its process
// was reaped), so that no Python process outlives the pool's handle.
void quit_when_done(self_ptr self, caf::error reason) {
  auto& st = self->state;
  if (!st.template_sup) {
    quit_core(self, std::move(reason));
    return;
  }
  st.stop_reason = std::move(reason);
  st.quit_after_template = true;
  self->send_exit(st.template_sup, caf::exit_reason::user_shutdown);
}

std::string restarts_within(const pool_config& cfg) {
  return std::to_string(cfg.max_restarts) + " times within "
         + std::to_string(
           std::chrono::duration_cast<std::chrono::milliseconds>(cfg.restart_period).count())
         + " ms";
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

/// The worker template: every child is one backend worker reporting here.
child_spec worker_spec_of(self_ptr self) {
  auto& st = self->state;
  child_spec spec;
  spec.id = "worker";
  spec.restart = restart_type::permanent;
  spec.shutdown = shutdown_spec::after(st.cfg.shutdown_timeout);
  auto listener = caf::actor_cast<worker_listener_actor>(self);
  auto incarnations = std::make_shared<uint64_t>(0);
  spec.start = [cfg = st.cfg, listener, incarnations,
                forks = st.forks](caf::actor_system& sys, const std::string& id) {
    worker_settings common;
    common.id = worker_id_of(slot_of(id));
    common.request_timeout = cfg.request_timeout;
    common.attempt_timeout = cfg.attempt_timeout;
    common.interrupt_grace = cfg.interrupt_grace;
    common.stream_window = cfg.stream_window;
    common.stream_window_bytes = cfg.stream_window_bytes;
    common.stop_grace = cfg.shutdown_timeout / 2;
    if (cfg.backend == backend_kind::mock) {
      auto mc = cfg.mock;
      static_cast<worker_settings&>(mc) = common;
      mc.seed = cfg.mock.seed * 1000003 + (*incarnations)++;
      return caf::actor_cast<caf::actor>(spawn_mock_worker(sys, mc, listener));
    }
    auto wc = cfg.worker;
    static_cast<worker_settings&>(wc) = common;
    wc.fork_from = forks;
    return caf::actor_cast<caf::actor>(spawn_python_worker(sys, wc, listener));
  };
  return spec;
}

} // namespace

caf::error unavailable_error(const std::string& why) {
  return make_error(error_code::unavailable, "no worker can serve: " + why + "; retry later");
}

void start_workers(self_ptr self) {
  auto& st = self->state;
  if (st.cfg.backend == backend_kind::python)
    log().info("pool: workers import the pyvisor package from {}", default_python_dir());
  if (st.cfg.backend == backend_kind::python && st.cfg.start == start_method::fork_server)
    start_template(self);
  auto flags = supervisor_flags_of(st.cfg, supervision_strategy::simple_one_for_one,
                                   "pool supervisor");
  flags.observer = caf::actor_cast<caf::actor>(self);
  st.sup = spawn_supervisor(self->system(), flags, {worker_spec_of(self)});
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
}

caf::timespan recycle_tick(const pool_config& cfg) {
  caf::timespan tick{0};
  auto at_most = [&](caf::timespan t) {
    if (t.count() > 0 && (tick.count() == 0 || tick > t))
      tick = t;
  };
  at_most(cfg.max_age / 4);
  if (cfg.max_rss > 0)
    at_most(std::chrono::seconds(1));
  at_most(cfg.stopped_check);
  return tick;
}

void kill_if_stopped(self_ptr self, uint32_t slot) {
  auto& st = self->state;
  auto& s = st.slots[slot];
  bool live = s.state == worker_phase::ready || s.state == worker_phase::draining;
  auto state = live && s.pid > 0 ? process_state(static_cast<pid_t>(s.pid)) : 0;
  if (state != 'T' && state != 't') {
    s.stopped_looks = 0;
    return;
  }
  if (++s.stopped_looks < 2)
    return;
  s.stopped_looks = 0;
  log().error("pool: worker {} (pid {}) is stopped (SIGSTOP or a debugger) and serves "
              "nothing: killing it, a new worker takes its place",
              worker_id_of(slot), s.pid);
  ::kill(static_cast<pid_t>(s.pid), SIGKILL);
}

void maybe_recycle(self_ptr self, uint32_t slot, bool check_rss) {
  auto& st = self->state;
  auto& s = st.slots[slot];
  if (s.state == worker_phase::ready) {
    bool too_many = s.max_requests > 0 && s.dispatched >= s.max_requests;
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
void prove(self_ptr self, uint32_t slot, bool excuse) {
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

void on_done(self_ptr self, const completion& c) {
  auto& st = self->state;
  auto worker = c.worker;
  auto code = c.code;
  auto& session = c.session;
  auto& command = c.command;
  // Every session request a worker reports was routed (retried ones route
  // again).
  session_done(self, session);
  auto i = st.slots.find(worker);
  if (code == moved_on_code) {
    // Taken back or retried from a worker that lives on: counted where it
    // ends; here it only leaves.
    if (i)
      st.slots[*i].finished(session);
    return;
  }
  stream_tally tally{c.chunks, c.chunk_bytes};
  st.counters.count(command, static_cast<error_code>(code), c.service_ns,
                    c.stream ? &tally : nullptr);
  if (!i)
    return;
  auto& s = st.slots[*i];
  s.finished(session);
  ++s.served;
  if (!s.served_ok && answered_by_worker(static_cast<error_code>(code))) {
    s.served_ok = true;
    prove(self, *i);
  }
  if (c.retire && s.state == worker_phase::ready) {
    log().warn("pool: worker {} (pid {}) ran out of memory (MemoryError answered to '{}'; "
               "pool.max-memory): recycling it after its requests",
               worker_id_of(*i), s.pid, command);
    s.state = worker_phase::draining;
  }
  maybe_recycle(self, *i);
}

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
  st.counters.fill(result);
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

void quit_core(self_ptr self, caf::error reason) {
  auto& st = self->state;
  for (auto& [n, waiter] : st.stats_waiters)
    waiter.first.deliver(std::move(waiter.second));
  st.stats_waiters.clear();
  self->quit(std::move(reason));
}

void on_child_up(self_ptr self, const std::string& id, caf::actor& hdl) {
  auto& st = self->state;
  auto slot = slot_of(id);
  if (slot >= st.slots.size())
    return;
  auto& s = st.slots[slot];
  s.reset(caf::actor_cast<worker_actor>(hdl));
  s.max_requests = st.cfg.max_requests;
  if (st.cfg.max_requests > 0 && st.cfg.max_requests_jitter > 0)
    s.max_requests += std::uniform_int_distribution<uint64_t>{0, st.cfg.max_requests_jitter}(
      st.jitter);
  s.started = self->clock().now();
  s.started_at_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  auto actor = s.actor;
  if (st.cfg.backend == backend_kind::python)
    self->request(hdl, caf::infinite, link_atom::value)
      .then(guarded(self,
                    [self, slot, actor](worker_link_ptr& link) {
                      auto& s = self->state.slots[slot];
                      if (s.actor != actor)
                        return;
                      link->report_to(self->state.inbox, self->address());
                      s.link = std::move(link);
                    }),
            [](caf::error&) {
              // Gone already: child_down follows.
            });
  self->request(s.handle, caf::infinite, ready_atom::value)
    .then(guarded(self,
                  [self, slot, actor](worker_status& ws) {
                    auto& st = self->state;
                    auto& s = st.slots[slot];
                    if (s.actor != actor || s.state != worker_phase::starting)
                      return;
                    s.state = worker_phase::ready;
                    s.pid = ws.pid;
                    s.ready_at = self->clock().now();
                    self->delayed_send(self, st.cfg.healthy_after, proven_tick_atom::value,
                                       slot, s.incarnation);
                    self->send(st.affinity, worker_up_atom::value, slot, s.incarnation,
                               s.handle);
                    deliver_ready_if_all(self);
                    try_dispatch(self);
                  }),
          [](caf::error&) {
            // The worker failed to start; its exit reaches us as child_down.
          });
}

void on_child_down(self_ptr self, const std::string& id, caf::error& reason) {
  auto& st = self->state;
  auto slot = slot_of(id);
  if (slot >= st.slots.size())
    return;
  auto& s = st.slots[slot];
  bool recycling = s.recycling;
  bool self_recycled = s.self_recycled;
  s.reset();
  self->send(st.affinity, worker_down_atom::value, slot);
  auto info = info_of(reason);
  // A worker the supervisor stopped (giving up, shutting down) did not
  // fail: keep the failure that led there. Giving up, the supervisor stops
  // the others with its own reason (max_restart_intensity, naming the
  // failure but without its details), which may be seen before the pool
  // hears that it gave up.
  bool stopped = reason
                 && (reason.category() == caf::atom("exit")
                     || reason.category() == supervisor_error_category);
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
      fail(self, q, session_lost_error(q.req.session, "worker " + id + " died"));
      st.queue.take(i++);
    } else {
      ++i;
    }
  }
  if (st.stopping)
    return;
  if (info.code == error_code::worker_crashed && info.python_type == configuration_error_type) {
    // No restart fixes the interpreter: give up now, budget untouched.
    give_up(self, "its workers cannot start");
    self->send_exit(st.sup, caf::exit_reason::user_shutdown);
    return;
  }
  if (recycling) {
    self->request(st.sup, caf::infinite, start_child_atom::value, id)
      .then([](caf::actor&) {}, [id](caf::error& err) {
        log().error("pool: cannot restart recycled worker {}: {}", id, to_string_readable(err));
      });
  } else if (!self_recycled) {
    ++s.restarts;
    ++st.counters.restarts;
  }
}

void on_down(self_ptr self, caf::down_msg& dm) {
  auto& st = self->state;
  if (dm.source == st.sup.address()) {
    on_supervisor_down(self, dm.reason);
    return;
  }
  if (st.template_sup && dm.source == st.template_sup.address()) {
    if (st.quit_after_template) {
      quit_core(self, st.stop_reason);
      return;
    }
    // The template kept failing: no worker can start any more.
    if (!st.stopping) {
      // Its workers' callers learn that the pool gave up, not that it stops.
      auto cause = "its fork-server template failed more than " + restarts_within(st.cfg);
      self->send_exit(st.sup, unavailable_error("the pool gave up: " + cause));
      give_up(self, cause);
    }
    return;
  }
  // A requester went away: its queued requests give up their places, and
  // what it has running is cancelled (nobody waits for it).
  if (st.watched.erase(dm.source) > 0)
    cancel_requests(self, dm.source, 0);
}

void on_exit(self_ptr self, caf::exit_msg& msg) {
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
}

} // namespace pyvisor

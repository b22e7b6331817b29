#include "pyvisor/supervisor.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <deque>
#include <map>
#include <memory>
#include <random>

#include <spdlog/logger.h>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/exit_reason.hpp"
#include "caf/send.hpp"
#include "caf/stateful_actor.hpp"
#include "caf/typed_event_based_actor.hpp"

#include "messages/log.hpp"

namespace pyvisor {

// -- free functions -----------------------------------------------------------

caf::error make_error(supervisor_error x, std::string message) {
  if (message.empty())
    return caf::error{static_cast<uint8_t>(x), supervisor_error_category};
  return caf::error{static_cast<uint8_t>(x), supervisor_error_category,
                    caf::make_message(std::move(message))};
}

std::string to_string(supervisor_error x) {
  switch (x) {
    case supervisor_error::none:
      return "none";
    case supervisor_error::max_restart_intensity:
      return "max_restart_intensity";
    case supervisor_error::start_failed:
      return "start_failed";
    case supervisor_error::bad_child:
      return "bad_child";
  }
  return "invalid";
}

std::string to_string(restart_type x) {
  switch (x) {
    case restart_type::permanent:
      return "permanent";
    case restart_type::transient:
      return "transient";
    case restart_type::temporary:
      return "temporary";
  }
  return "invalid";
}

std::string to_string(supervision_strategy x) {
  switch (x) {
    case supervision_strategy::one_for_one:
      return "one_for_one";
    case supervision_strategy::one_for_all:
      return "one_for_all";
    case supervision_strategy::rest_for_one:
      return "rest_for_one";
    case supervision_strategy::simple_one_for_one:
      return "simple_one_for_one";
  }
  return "invalid";
}

caf::timespan backoff_policy::delay(size_t n, double u) const {
  if (initial.count() <= 0 || n == 0)
    return caf::timespan{0};
  double d = static_cast<double>(initial.count()) * std::pow(multiplier, static_cast<double>(n - 1));
  d = std::min(d, static_cast<double>(max.count()));
  d *= 1.0 + jitter * std::clamp(u, -1.0, 1.0);
  return caf::timespan{static_cast<caf::timespan::rep>(std::max(d, 0.0))};
}

void add_supervisor_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<child_info>("pyvisor::child_info");
  cfg.add_message_type<std::vector<child_info>>("std::vector<pyvisor::child_info>");
  cfg.add_message_type<supervisor_counts>("pyvisor::supervisor_counts");
  cfg.add_error_category(supervisor_error_category,
                         [](uint8_t code, caf::atom_value, const caf::message& ctx) {
                           std::string result = "supervisor.";
                           result += to_string(static_cast<supervisor_error>(code));
                           if (ctx.size() == 1 && ctx.match_element<std::string>(0))
                             result += ": " + ctx.get_as<std::string>(0);
                           return result;
                         });
}

namespace {

// -- internal messages -----------------------------------------------------------

using restart_atom = caf::atom_constant<caf::atom("sv_restart")>;
using kill_timer_atom = caf::atom_constant<caf::atom("sv_killtm")>;
using start_failed_atom = caf::atom_constant<caf::atom("sv_startfl")>;

using supervisor_impl = supervisor_actor::extend<
  caf::reacts_to<restart_atom, uint64_t>, caf::reacts_to<kill_timer_atom, std::string, uint64_t>,
  caf::reacts_to<start_failed_atom, std::string, uint64_t>>;


enum class exit_kind { normal, shutdown, killed, abnormal };

exit_kind classify(const caf::error& reason) {
  if (!reason || reason == caf::exit_reason::normal)
    return exit_kind::normal;
  if (reason == caf::exit_reason::user_shutdown)
    return exit_kind::shutdown;
  if (reason == caf::exit_reason::kill)
    return exit_kind::killed;
  return exit_kind::abnormal;
}

bool should_restart(restart_type type, exit_kind kind) {
  switch (type) {
    case restart_type::permanent:
      return true;
    case restart_type::transient:
      return kind == exit_kind::abnormal || kind == exit_kind::killed;
    default:
      return false;
  }
}

struct child_rec {
  child_spec spec;
  caf::actor handle;
  child_state state = child_state::stopped;
  /// Bumped at every start and stop; timers carry it to detect staleness.
  uint64_t gen = 0;
  uint64_t restarts = 0;
  /// Failures in a row without running for reset_after (drives back-off).
  size_t consecutive = 0;
  caf::actor_clock::time_point started_at;
  bool dynamic = false;
  /// The current incarnation proved itself (child_healthy_atom).
  bool proven = false;
};

using child_list = std::vector<child_rec>;

struct supervisor_state {
  supervisor_flags flags;
  child_spec template_spec;
  /// Shared with the clean-up functor, which kills what is left if the
  /// supervisor itself dies without stopping its children.
  std::shared_ptr<child_list> children = std::make_shared<child_list>();
  std::deque<caf::actor_clock::time_point> restart_times;
  std::minstd_rand rng;
  supervisor_counts counts;
  /// Children to stop one at a time, and what to do when all are stopped.
  std::deque<std::string> stop_queue;
  std::function<void()> after_stop;
  /// Restart groups waiting for their back-off timer.
  std::map<uint64_t, std::vector<std::string>> pending_restarts;
  uint64_t next_token = 1;
  /// Promises of terminate_child waiting for the child to be gone.
  std::multimap<std::string, caf::typed_response_promise<bool>> terminate_waiters;
  bool terminating = false;
  /// Why the supervisor shuts down, passed on to its children as their exit
  /// reason (user_shutdown for a plain stop): a child that answers requests
  /// can tell its callers "stopped" from "the service gave up".
  caf::error shutdown_reason;
  /// The last exit logged, digits left out (ids, pids, counts), and how
  /// often children exited that way since: a crash loop is logged once,
  /// not once per restart.
  std::string last_exit_shape;
  size_t same_exits = 0;

  static inline const char* name = "pyvisor.supervisor";
};

using self_ptr = supervisor_impl::stateful_pointer<supervisor_state>;

std::string render(self_ptr self, const caf::error& err) {
  return err ? self->system().render(err) : std::string{"normal"};
}

// Logs that child `id` exited; an exit like the previous one (the same text
// but for numbers: another worker, pid or count) only at debug level, and
// how many there were once a different one comes.
void log_exit(self_ptr self, const std::string& id, const caf::error& reason, exit_kind kind) {
  auto& st = self->state;
  auto text = render(self, reason);
  std::string shape;
  for (char ch : text)
    if (!std::isdigit(static_cast<unsigned char>(ch)))
      shape += ch;
    else if (shape.empty() || shape.back() != '#')
      shape += '#';
  if (shape == st.last_exit_shape) {
    ++st.same_exits;
    log().debug("{}: child '{}' exited: {}", st.flags.name, id, text);
    return;
  }
  if (st.same_exits > 0)
    log().info("{}: {} more exit(s) like the last one logged", st.flags.name, st.same_exits);
  st.last_exit_shape = std::move(shape);
  st.same_exits = 0;
  auto level = kind == exit_kind::abnormal || kind == exit_kind::killed ? spdlog::level::warn
                                                                         : spdlog::level::info;
  log().log(level, "{}: child '{}' exited: {}", st.flags.name, id, text);
}

child_rec* find(self_ptr self, const std::string& id) {
  for (auto& c : *self->state.children)
    if (c.spec.id == id)
      return &c;
  return nullptr;
}

child_rec* find(self_ptr self, const caf::actor_addr& addr) {
  for (auto& c : *self->state.children)
    if (c.handle && c.handle.address() == addr)
      return &c;
  return nullptr;
}

void erase_child(self_ptr self, const std::string& id) {
  auto& cs = *self->state.children;
  cs.erase(std::remove_if(cs.begin(), cs.end(), [&](const child_rec& c) { return c.spec.id == id; }),
           cs.end());
}

void notify_observer(self_ptr self, const child_rec& c, const caf::error* reason) {
  auto& obs = self->state.flags.observer;
  if (!obs)
    return;
  if (reason)
    caf::anon_send(obs, child_down_atom::value, c.spec.id, *reason);
  else
    caf::anon_send(obs, child_up_atom::value, c.spec.id, c.handle);
}

void start_child(self_ptr self, child_rec& c) {
  auto& st = self->state;
  ++c.gen;
  caf::actor hdl;
  try {
    hdl = c.spec.start(self->system(), c.spec.id);
  } catch (const std::exception& e) {
    log().error("{}: start function of child '{}' threw: {}", st.flags.name, c.spec.id, e.what());
  }
  ++st.counts.starts;
  c.proven = false;
  c.handle = hdl;
  c.state = child_state::running;
  c.started_at = self->clock().now();
  if (!hdl) {
    // Handled as an abnormal exit, through the mailbox so that restart logic
    // never recurses into itself.
    self->send(self, start_failed_atom::value, c.spec.id, c.gen);
    return;
  }
  self->monitor(hdl);
  log().debug("{}: started child '{}'", st.flags.name, c.spec.id);
  notify_observer(self, c, nullptr);
}

void finish_terminate_waiters(self_ptr self, const std::string& id) {
  auto& w = self->state.terminate_waiters;
  auto range = w.equal_range(id);
  for (auto i = range.first; i != range.second; ++i)
    i->second.deliver(true);
  w.erase(range.first, range.second);
}

// Stops the children in the stop queue, one at a time in queue order (as
// OTP does for static children); the dynamic children of a simple_one_for_one
// supervisor that shuts down are all told at once and stopped concurrently,
// as OTP does, so that stopping N workers takes one shutdown timeout, not N.
// Runs after_stop when none is left.
void stop_next(self_ptr self) {
  auto& st = self->state;
  bool all_at_once = st.terminating
                     && st.flags.strategy == supervision_strategy::simple_one_for_one;
  bool waiting = false;
  for (auto i = st.stop_queue.begin(); i != st.stop_queue.end();) {
    auto c = find(self, *i);
    if (c == nullptr || c->state == child_state::stopped) {
      i = st.stop_queue.erase(i);
      continue;
    }
    if (c->state == child_state::restarting || !c->handle) {
      // Waiting for its back-off (or never came up): nothing runs to stop.
      ++c->gen;
      c->state = child_state::stopped;
      c->handle = nullptr;
      i = st.stop_queue.erase(i);
      continue;
    }
    if (c->state != child_state::stopping) {
      c->state = child_state::stopping;
      if (c->spec.shutdown.brutal_kill) {
        self->send_exit(c->handle, caf::exit_reason::kill);
      } else {
        auto& why = st.shutdown_reason;
        bool plain = !why || why == caf::exit_reason::user_shutdown
                     || why == caf::exit_reason::normal;
        self->send_exit(c->handle, plain ? caf::error{caf::exit_reason::user_shutdown} : why);
        self->delayed_send(self, c->spec.shutdown.timeout, kill_timer_atom::value, c->spec.id,
                           c->gen);
      }
    }
    // Its down message resumes the queue.
    waiting = true;
    if (!all_at_once)
      return;
    ++i;
  }
  if (waiting)
    return;
  if (st.after_stop) {
    auto f = std::move(st.after_stop);
    st.after_stop = nullptr;
    f();
  }
}

// Queues `ids` for stopping (in the given order) and runs `then` afterwards.
void stop_children(self_ptr self, std::vector<std::string> ids, std::function<void()> then) {
  auto& st = self->state;
  st.stop_queue.insert(st.stop_queue.end(), ids.begin(), ids.end());
  if (then) {
    auto previous = std::move(st.after_stop);
    st.after_stop = [previous, then] {
      if (previous)
        previous();
      then();
    };
  }
  stop_next(self);
}

std::vector<std::string> ids_reversed(self_ptr self, size_t from = 0) {
  std::vector<std::string> result;
  auto& cs = *self->state.children;
  for (size_t i = cs.size(); i > from; --i)
    result.push_back(cs[i - 1].spec.id);
  return result;
}

void shut_down(self_ptr self, caf::error reason) {
  auto& st = self->state;
  if (st.terminating)
    return;
  st.terminating = true;
  st.shutdown_reason = reason;
  st.pending_restarts.clear();
  stop_children(self, ids_reversed(self), [self, reason] {
    log().info("{}: all children stopped, exiting ({})", self->state.flags.name,
               render(self, reason));
    self->quit(reason);
  });
}

// Schedules a restart of `ids` (in start order) after the back-off of `failed`.
void schedule_restart(self_ptr self, child_rec& failed, std::vector<std::string> ids) {
  auto& st = self->state;
  auto now = self->clock().now();
  caf::timespan delay{0};
  if (failed.proven || now - failed.started_at >= st.flags.backoff.reset_after) {
    // It ran fine for a while: not a crash loop, restart it right away.
    failed.consecutive = 0;
  } else {
    ++failed.consecutive;
    std::uniform_real_distribution<double> dist{-1.0, 1.0};
    delay = st.flags.backoff.delay(failed.consecutive, dist(st.rng));
  }
  for (auto& id : ids)
    if (auto c = find(self, id)) {
      c->state = child_state::restarting;
      c->handle = nullptr;
      ++c->gen;
    }
  auto token = st.next_token++;
  st.pending_restarts.emplace(token, std::move(ids));
  if (delay.count() > 0)
    self->delayed_send(self, delay, restart_atom::value, token);
  else
    self->send(self, restart_atom::value, token);
}

void handle_child_exit(self_ptr self, child_rec& c, const caf::error& reason) {
  auto& st = self->state;
  ++st.counts.exits;
  auto id = c.spec.id;
  notify_observer(self, c, &reason);
  if (c.state == child_state::stopping || st.terminating) {
    log().info("{}: child '{}' stopped ({})", st.flags.name, id, render(self, reason));
    c.state = child_state::stopped;
    c.handle = nullptr;
    ++c.gen;
    if (c.dynamic || c.spec.restart == restart_type::temporary)
      erase_child(self, id);
    finish_terminate_waiters(self, id);
    auto& q = st.stop_queue;
    q.erase(std::remove(q.begin(), q.end(), id), q.end());
    stop_next(self);
    return;
  }
  auto kind = classify(reason);
  log_exit(self, id, reason, kind);
  c.handle = nullptr;
  if (!should_restart(c.spec.restart, kind)) {
    c.state = child_state::stopped;
    ++c.gen;
    if (c.dynamic || c.spec.restart == restart_type::temporary)
      erase_child(self, id);
    return;
  }
  // Restart intensity: more than max_restarts within period -> give up. A
  // proven incarnation was fixed by its last restart: its exit is forgiven.
  auto now = self->clock().now();
  if (c.proven)
    ++st.counts.forgiven;
  else
    st.restart_times.push_back(now);
  while (!st.restart_times.empty() && now - st.restart_times.front() > st.flags.period)
    st.restart_times.pop_front();
  if (!c.proven && st.restart_times.size() > st.flags.max_restarts) {
    auto msg = "child '" + id + "' exited (" + render(self, reason) + ") and "
               + std::to_string(st.restart_times.size()) + " restarts within the period exceed "
               + "the limit of " + std::to_string(st.flags.max_restarts);
    log().error("{}: giving up: {}", st.flags.name, msg);
    c.state = child_state::stopped;
    shut_down(self, make_error(supervisor_error::max_restart_intensity, msg));
    return;
  }
  ++c.restarts;
  ++st.counts.restarts;
  auto& cs = *st.children;
  switch (st.flags.strategy) {
    case supervision_strategy::one_for_one:
    case supervision_strategy::simple_one_for_one:
      schedule_restart(self, c, {id});
      return;
    case supervision_strategy::one_for_all:
    case supervision_strategy::rest_for_one: {
      size_t index = 0;
      while (index < cs.size() && cs[index].spec.id != id)
        ++index;
      auto from = st.flags.strategy == supervision_strategy::one_for_all ? 0 : index;
      std::vector<std::string> group;
      for (size_t i = from; i < cs.size(); ++i)
        group.push_back(cs[i].spec.id);
      c.state = child_state::restarting;
      auto to_stop = ids_reversed(self, from);
      stop_children(self, to_stop, [self, group, id] {
        // Temporary siblings are not restarted, as in OTP.
        std::vector<std::string> restart;
        for (auto& gid : group)
          if (auto g = find(self, gid)) {
            if (g->spec.restart == restart_type::temporary && gid != id)
              erase_child(self, gid);
            else
              restart.push_back(gid);
          }
        if (auto f = find(self, id))
          schedule_restart(self, *f, restart);
      });
      return;
    }
  }
}

supervisor_impl::behavior_type supervisor_fun(self_ptr self, supervisor_flags flags,
                                              std::vector<child_spec> specs) {
  auto& st = self->state;
  st.flags = std::move(flags);
  st.rng.seed(static_cast<std::minstd_rand::result_type>(st.flags.seed));
  if (st.flags.strategy == supervision_strategy::simple_one_for_one) {
    if (specs.size() != 1) {
      self->quit(make_error(supervisor_error::bad_child,
                            "simple_one_for_one needs exactly one template child spec"));
      return supervisor_impl::behavior_type::make_empty_behavior();
    }
    st.template_spec = specs.front();
  } else {
    for (auto& s : specs) {
      child_rec c;
      c.spec = std::move(s);
      st.children->push_back(std::move(c));
    }
  }
  // Whatever ends this actor (even exit_reason::kill, which skips the exit
  // handler), its children must not outlive it.
  self->attach_functor([children = st.children](const caf::error&) {
    for (auto& c : *children)
      if (c.handle)
        caf::anon_send_exit(c.handle, caf::exit_reason::kill);
  });
  self->set_down_handler([self](caf::down_msg& dm) {
    if (auto c = find(self, dm.source))
      handle_child_exit(self, *c, dm.reason);
  });
  self->set_exit_handler([self](caf::exit_msg& msg) {
    log().info("{}: shutting down ({})", self->state.flags.name, render(self, msg.reason));
    shut_down(self, std::move(msg.reason));
  });
  for (auto& c : *st.children) {
    start_child(self, c);
    log().info("{}: child '{}' started", st.flags.name, c.spec.id);
  }
  return {
    [self](which_children_atom) {
      std::vector<child_info> result;
      for (auto& c : *self->state.children)
        result.push_back(child_info{c.spec.id, c.handle, c.state, c.restarts, c.dynamic});
      return result;
    },
    [self](count_children_atom) {
      auto counts = self->state.counts;
      counts.specs = self->state.children->size();
      counts.active = 0;
      counts.restarting = 0;
      for (auto& c : *self->state.children) {
        if (c.state == child_state::running && c.handle)
          ++counts.active;
        else if (c.state == child_state::restarting)
          ++counts.restarting;
      }
      return counts;
    },
    [self](start_child_atom, std::string& id) -> caf::result<caf::actor> {
      auto& st = self->state;
      if (st.flags.strategy != supervision_strategy::simple_one_for_one)
        return make_error(supervisor_error::bad_child,
                          "start_child needs a simple_one_for_one supervisor");
      if (st.terminating)
        return make_error(supervisor_error::bad_child, "supervisor is shutting down");
      if (find(self, id) != nullptr)
        return make_error(supervisor_error::bad_child, "child id '" + id + "' already exists");
      child_rec c;
      c.spec = st.template_spec;
      c.spec.id = id;
      c.dynamic = true;
      st.children->push_back(std::move(c));
      auto& rec = st.children->back();
      start_child(self, rec);
      if (!rec.handle)
        return make_error(supervisor_error::start_failed,
                          "start function of child '" + id + "' returned no actor");
      return rec.handle;
    },
    [self](terminate_child_atom, std::string& id) -> caf::result<bool> {
      auto c = find(self, id);
      if (c == nullptr)
        return false;
      auto rp = self->make_response_promise<bool>();
      self->state.terminate_waiters.emplace(id, rp);
      // Terminated on request: not restarted, and forgotten.
      c->spec.restart = restart_type::temporary;
      if (c->state != child_state::running || !c->handle) {
        erase_child(self, id);
        finish_terminate_waiters(self, id);
        return rp;
      }
      stop_children(self, {id}, nullptr);
      return rp;
    },
    [self](restart_atom, uint64_t token) {
      auto& st = self->state;
      auto i = st.pending_restarts.find(token);
      if (i == st.pending_restarts.end())
        return;
      auto ids = std::move(i->second);
      st.pending_restarts.erase(i);
      for (auto& id : ids) {
        auto c = find(self, id);
        if (c == nullptr || c->state != child_state::restarting)
          continue;
        log().info("{}: restarting child '{}' (restart {} of it)", st.flags.name, id, c->restarts);
        start_child(self, *c);
      }
    },
    [self](child_healthy_atom, std::string& id, caf::actor& hdl) {
      auto c = find(self, id);
      if (c != nullptr && c->handle && c->handle == hdl && !c->proven) {
        c->proven = true;
        log().debug("{}: child '{}' proved itself", self->state.flags.name, id);
      }
    },
    [self](kill_timer_atom, std::string& id, uint64_t gen) {
      auto c = find(self, id);
      if (c == nullptr || c->gen != gen || c->state != child_state::stopping || !c->handle)
        return;
      log().warn("{}: child '{}' did not stop within {} ms, killing it", self->state.flags.name,
                 id,
                 std::chrono::duration_cast<std::chrono::milliseconds>(c->spec.shutdown.timeout)
                   .count());
      self->send_exit(c->handle, caf::exit_reason::kill);
    },
    [self](start_failed_atom, std::string& id, uint64_t gen) {
      auto c = find(self, id);
      if (c == nullptr || c->gen != gen)
        return;
      handle_child_exit(self, *c,
                        make_error(supervisor_error::start_failed,
                                   "start function of child '" + id + "' returned no actor"));
    },
  };
}

} // namespace

supervisor_actor spawn_supervisor(caf::actor_system& sys, supervisor_flags flags,
                                  std::vector<child_spec> children) {
  return sys.spawn(supervisor_fun, std::move(flags), std::move(children));
}

} // namespace pyvisor

#include "pyvisor/mock_worker.hpp"

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <unordered_map>

#include "caf/actor_system.hpp"
#include "caf/stateful_actor.hpp"
#include "caf/typed_event_based_actor.hpp"

#include "actors/worker/reporting_worker.hpp"
#include "actors/worker/worker_lifecycle.hpp"
#include "actors/worker/worker_link.hpp"
#include "messages/log.hpp"

namespace pyvisor {

namespace {

using mock_reply_atom = caf::atom_constant<caf::atom("mk_reply")>;
using mock_ready_atom = caf::atom_constant<caf::atom("mk_ready")>;
using mock_stop_timeout_atom = caf::atom_constant<caf::atom("mk_stoptm")>;
/// The link's control message (an interrupt or a revoke), as bytes.
using mock_control_atom = caf::atom_constant<caf::atom("mk_ctl")>;
/// The next chunk of a stream is due.
using mock_chunk_atom = caf::atom_constant<caf::atom("mk_chunk")>;

using mock_impl = worker_actor::extend<caf::reacts_to<mock_reply_atom, uint64_t>,
                                       caf::reacts_to<mock_ready_atom>, caf::reacts_to<sweep_atom>,
                                       caf::reacts_to<mock_stop_timeout_atom>,
                                       caf::reacts_to<mock_control_atom, std::vector<char>>,
                                       caf::reacts_to<cancel_for_atom, caf::actor_addr, uint64_t>,
                                       caf::reacts_to<taken_for_atom, caf::actor_addr, uint64_t, uint64_t>,
                                       caf::reacts_to<mock_chunk_atom, uint64_t>>;

/// A stream the mock plays out (mock_command::chunks, stream.count).
struct mock_stream {
  std::vector<payload> chunks;
  size_t next = 0;
  /// Chunks the consumer has taken (its credit).
  uint64_t taken = 0;
  caf::timespan interval{0};
  caf::expected<payload> result{payload{}};
  /// The window is full: the next chunk goes once credit comes.
  bool waiting = false;
};

struct mock_state {
  mock_config cfg;
  /// The same request path as the Python worker's, without a process: the
  /// mock runs requests itself, on its own timers.
  worker_link_ptr link;
  std::unique_ptr<worker_lifecycle> life;
  worker_status status;
  /// Results computed on arrival, delivered when their latency has passed.
  std::unordered_map<uint64_t, caf::expected<payload>> results;
  std::map<std::string, std::map<std::string, payload>> sessions;
  std::unordered_map<uint64_t, mock_stream> streams;
  std::mt19937_64 rng;

  static inline const char* name = "pyvisor.mock_worker";
};

using self_ptr = mock_impl::stateful_pointer<mock_state>;

std::string tag_of(const mock_state& st) {
  return "mock worker " + std::to_string(st.cfg.id);
}

uint32_t in_flight(const mock_state& st) {
  return st.link->snapshot(st.status).in_flight;
}


caf::error bad_request(std::string msg) {
  return make_error(error_code::bad_request, std::move(msg), "BadRequest", "");
}

// Reads {key: str, value: any} style arguments.
struct map_args {
  msgpack::object_handle handle;
  std::map<std::string, msgpack::object> fields;
};

caf::expected<map_args> read_map(const payload& args) {
  map_args result;
  try {
    result.handle = msgpack::unpack(args.bytes.data(), args.bytes.size());
    if (result.handle.get().type != msgpack::type::MAP)
      return bad_request("expected a map");
    result.fields = result.handle.get().as<std::map<std::string, msgpack::object>>();
  } catch (const std::exception& e) {
    return bad_request(std::string{"cannot read args: "} + e.what());
  }
  return result;
}

/// What the mock does with a request: a result, or a behaviour.
enum class action { reply, stream, crash, hang };

/// The values as one msgpack list (what a generator gives without a stream).
payload as_list(const std::vector<payload>& values) {
  payload result;
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_array(static_cast<uint32_t>(values.size()));
  result.bytes.assign(buf.data(), buf.data() + buf.size());
  for (auto& v : values)
    result.bytes.insert(result.bytes.end(), v.bytes.begin(), v.bytes.end());
  return result;
}

/// A number in args[name], as the Python commands take it (int or float).
std::optional<double> number_arg(const map_args& args, const char* name) {
  auto i = args.fields.find(name);
  if (i == args.fields.end())
    return std::nullopt;
  const auto& v = i->second;
  if (v.type == msgpack::type::POSITIVE_INTEGER || v.type == msgpack::type::NEGATIVE_INTEGER)
    return static_cast<double>(v.as<int64_t>());
  if (v.type == msgpack::type::FLOAT32 || v.type == msgpack::type::FLOAT64)
    return v.as<double>();
  return std::nullopt;
}

caf::timespan millis(double ms) {
  return std::chrono::duration_cast<caf::timespan>(
    std::chrono::duration<double, std::milli>(std::max(0.0, ms)));
}

action run_command(self_ptr self, const execute& req, caf::expected<payload>& result,
                   caf::timespan& extra_delay, std::vector<payload>& chunks) {
  auto& st = self->state;
  const auto& cmd = req.command;
  auto session = [&]() -> std::map<std::string, payload>* {
    if (req.session.empty())
      return nullptr;
    return &st.sessions[req.session];
  };
  if (auto user = st.cfg.commands.find(cmd); user != st.cfg.commands.end()) {
    bool streams = false;
    try {
      if (user->second.chunks) {
        chunks = user->second.chunks(req.args, req.session);
        streams = true;
      }
      result = user->second.run ? user->second.run(req.args, req.session)
                                : caf::expected<payload>{payload{}};
    } catch (const std::exception& e) {
      // What an exception in a Python command gives.
      result = make_error(error_code::python_error, std::string{"C++ exception: "} + e.what(),
                          "Exception", "");
      streams = false;
    }
    extra_delay = user->second.latency;
    if (streams)
      return action::stream;
  } else if (cmd == "stream.count") {
    auto args = read_map(req.args);
    auto n = args ? number_arg(*args, "n") : std::nullopt;
    if (!n || *n < 0) {
      result = bad_request("expected {n: count, ms: number}");
      return action::reply;
    }
    for (int64_t i = 0; i < static_cast<int64_t>(*n); ++i)
      chunks.push_back(pack(i));
    extra_delay = millis(number_arg(*args, "ms").value_or(0));
    result = pack(static_cast<int64_t>(*n));
    return action::stream;
  } else if (cmd == "ping") {
    result = pack(std::string{"pong"});
  } else if (cmd == "echo") {
    result = req.args;
  } else if (cmd == "worker.info") {
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk{buf};
    pk.pack_map(5);
    pk.pack(std::string{"pid"});
    pk.pack(0);
    pk.pack(std::string{"python"});
    pk.pack(std::string{"mock"});
    pk.pack(std::string{"sessions"});
    pk.pack(st.sessions.size());
    pk.pack(std::string{"served"});
    pk.pack(st.link->snapshot(st.status).served);
    pk.pack(std::string{"rss"});
    pk.pack(0);
    result = payload{std::vector<char>(buf.data(), buf.data() + buf.size())};
  } else if (cmd == "session.put" || cmd == "session.get" || cmd == "session.keys"
             || cmd == "session.drop") {
    auto state = session();
    if (state == nullptr) {
      result = bad_request("this command needs a session");
      return action::reply;
    }
    if (cmd == "session.keys") {
      std::vector<std::string> keys;
      for (auto& kv : *state)
        keys.push_back(kv.first);
      result = pack(keys);
    } else if (cmd == "session.drop") {
      result = pack(st.sessions.erase(req.session) > 0);
    } else {
      auto args = read_map(req.args);
      if (!args) {
        result = args.error();
        return action::reply;
      }
      auto key = args->fields.find("key");
      if (key == args->fields.end() || key->second.type != msgpack::type::STR) {
        result = bad_request("expected a map with a string 'key'");
        return action::reply;
      }
      auto k = key->second.as<std::string>();
      if (cmd == "session.get") {
        auto i = state->find(k);
        result = i == state->end() ? payload{} : i->second;
      } else {
        auto value = args->fields.find("value");
        if (value == args->fields.end()) {
          result = bad_request("expected a map with 'key' and 'value'");
          return action::reply;
        }
        (*state)[k] = pack(value->second);
        result = payload{};
      }
    }
  } else if (cmd == "sleep") {
    auto args = read_map(req.args);
    auto ms = args ? args->fields.find("ms") : decltype(args->fields.end()){};
    if (!args || ms == args->fields.end()) {
      result = bad_request("expected {ms: number}");
      return action::reply;
    }
    auto ms_value = number_arg(*args, "ms");
    if (!ms_value) {
      result = bad_request("expected {ms: number}");
      return action::reply;
    }
    extra_delay = millis(*ms_value);
    result = pack(ms->second);
  } else if (cmd == "crash") {
    return action::crash;
  } else if (cmd == "hang") {
    return action::hang;
  } else if (cmd == "raise") {
    result = make_error(error_code::python_error, "ValueError: raised on request", "ValueError",
                        "Traceback (most recent call last):\n  (mock)\nValueError: raised on request\n");
  } else {
    result = make_error(error_code::unknown_command,
                        "no command '" + cmd + "' in this worker", "UnknownCommand", "");
  }
  return action::reply;
}

mock_impl::behavior_type mock_fun(self_ptr self, mock_config cfg,
                                  worker_listener_actor listener) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.link = std::make_shared<worker_link>(self->clock(), self->address(), st.cfg,
                                          std::move(listener), std::numeric_limits<size_t>::max());
  st.life = std::make_unique<worker_lifecycle>(st.link);
  st.link->enable_control([weak = self->address()](const std::vector<char>& msg, bool) {
    if (auto hdl = caf::actor_cast<caf::actor>(weak))
      caf::anon_send(hdl, mock_control_atom::value, msg);
    return true;
  });
  st.rng.seed(st.cfg.seed);
  st.status.id = st.cfg.id;
  st.status.python = "mock";
  st.status.commands = {"crash",        "echo",        "hang",         "ping",
                        "raise",        "session.drop", "session.get", "session.keys",
                        "session.put",  "sleep",        "stream.count", "worker.info"};
  for (auto& kv : st.cfg.commands)
    if (std::find(st.status.commands.begin(), st.status.commands.end(), kv.first)
        == st.status.commands.end())
      st.status.commands.push_back(kv.first);
  if (st.cfg.startup_delay.count() > 0)
    self->delayed_send(self, st.cfg.startup_delay, mock_ready_atom::value);
  else
    self->send(self, mock_ready_atom::value);
  // Stopping, as the Python worker does: what is in flight may finish
  // within the stop grace; then the mock quits.
  st.life->stop_on_exit(self, st.status, [self] {
    auto& st = self->state;
    if (in_flight(st) == 0)
      st.life->finish_stop(self, tag_of(st) + " stopped");
    else
      self->delayed_send(self, st.cfg.stop_grace, mock_stop_timeout_atom::value);
  });
  return {
    [self](execute& req) -> caf::result<payload> {
      auto& st = self->state;
      // What the mock runs, decided before the request goes into the link
      // (which keeps it whole for a retry); run only if admitted.
      execute probe;
      probe.command = req.command;
      probe.args = req.args;
      probe.session = req.session;
      probe.stream = req.stream;
      auto [answer, id] = st.life->submit(self, req, st.cfg.id);
      if (id == 0)
        return std::move(answer);
      std::uniform_real_distribution<double> unit{0.0, 1.0};
      auto dice = unit(st.rng);
      caf::expected<payload> result{payload{}};
      caf::timespan extra{0};
      std::vector<payload> chunks;
      auto act = run_command(self, probe, result, extra, chunks);
      if (act == action::stream && !probe.stream) {
        // No stream asked for: the values are the result, as one list.
        if (result)
          result = as_list(chunks);
        act = action::reply;
      }
      if (act == action::reply || act == action::stream) {
        if (dice < st.cfg.crash_rate)
          act = action::crash;
        else if (dice < st.cfg.crash_rate + st.cfg.hang_rate)
          act = action::hang;
        else if (dice < st.cfg.crash_rate + st.cfg.hang_rate + st.cfg.error_rate) {
          result = make_error(error_code::python_error, "RuntimeError: injected by the mock",
                              "RuntimeError", "");
          act = action::reply;
        }
      }
      if (act == action::crash) {
        auto err = make_error(error_code::worker_crashed, tag_of(st) + " crashed");
        retirement r;
        r.for_requests = err;
        r.reason = err;
        st.life->retire(self, std::move(r));
        return std::move(answer);
      }
      if (act == action::hang)
        return std::move(answer); // the deadline sweep answers it
      std::uniform_int_distribution<caf::timespan::rep> lat{
        st.cfg.latency_min.count(),
        std::max(st.cfg.latency_min.count(), st.cfg.latency_max.count())};
      auto delay = caf::timespan{lat(st.rng)} + extra;
      if (act == action::stream) {
        // One chunk every `delay`, as the window allows (mock_chunk_atom).
        mock_stream ms;
        ms.chunks = std::move(chunks);
        ms.interval = delay;
        ms.result = std::move(result);
        st.streams.emplace(id, std::move(ms));
        self->delayed_send(self, delay, mock_chunk_atom::value, id);
        return std::move(answer);
      }
      if (delay.count() <= 0) {
        // Answered at once: no timer.
        st.link->complete(id, std::move(result));
        return std::move(answer);
      }
      st.results.emplace(id, std::move(result));
      self->delayed_send(self, delay, mock_reply_atom::value, id);
      return std::move(answer);
    },
    [self](mock_chunk_atom, uint64_t id) {
      auto& st = self->state;
      auto i = st.streams.find(id);
      if (i == st.streams.end())
        return;
      auto& ms = i->second;
      if (ms.next == ms.chunks.size()) {
        // The generator returned: its value ends the stream.
        auto result = std::move(ms.result);
        st.streams.erase(i);
        st.link->complete(id, std::move(result));
        if (st.status.phase == worker_phase::stopping && in_flight(st) == 0)
          st.life->finish_stop(self, tag_of(st) + " stopped");
        return;
      }
      // As the Python worker: at most the window sent and not taken.
      auto held = ms.next - std::min<uint64_t>(ms.taken, ms.next);
      uint64_t bytes = 0;
      for (auto k = ms.next - held; k < ms.next; ++k)
        bytes += ms.chunks[k].bytes.size();
      if (held > 0 && (held >= st.cfg.stream_window || bytes >= st.cfg.stream_window_bytes)) {
        ms.waiting = true;
        return;
      }
      // Dropped: its caller has its answer, and the interrupt that comes
      // with that ends the stream (mock_control_atom).
      if (st.link->chunk(id, std::vector<char>{ms.chunks[ms.next].bytes}) != chunk_fate::deliver)
        return;
      ++ms.next;
      if (ms.next == ms.chunks.size())
        self->send(self, mock_chunk_atom::value, id);
      else
        self->delayed_send(self, ms.interval, mock_chunk_atom::value, id);
    },
    [self](ready_atom) { return self->state.life->await_ready(self, self->state.status); },
    [self](status_atom) { return self->state.link->snapshot(self->state.status); },
    [self](drop_session_atom, std::string& session) { self->state.sessions.erase(session); },
    [self](mock_reply_atom, uint64_t id) {
      auto& st = self->state;
      auto i = st.results.find(id);
      if (i == st.results.end())
        return;
      auto result = std::move(i->second);
      st.results.erase(i);
      st.link->complete(id, std::move(result));
      if (st.status.phase == worker_phase::stopping && in_flight(st) == 0)
        st.life->finish_stop(self, tag_of(st) + " stopped");
    },
    [self](mock_ready_atom) {
      auto& st = self->state;
      if (st.status.phase != worker_phase::starting)
        return;
      st.status.phase = worker_phase::ready;
      st.life->announce_ready(st.status);
    },
    [self](sweep_atom) {
      auto& st = self->state;
      // Nothing runs the overdue requests but timers: dropping their
      // results is the mock's kill, and what else is in flight is given up
      // at once (the mock runs requests concurrently: any may have started).
      auto due = st.link->sweep();
      if (!due.late.empty()) {
        // As the Python worker: the caller hears `timeout` now and the
        // request is interrupted (see mock_control_atom).
        st.link->interrupt(due.late,
                           make_error(error_code::timeout,
                                      st.life->timed_out(tag_of(st), due.late.front(),
                                                         "interrupting it")));
        return;
      }
      if (due.stuck.empty())
        return;
      // A hang ignores interrupts: dropping what it runs is the mock's
      // kill, and what else is in flight is given up at once (the mock runs
      // requests concurrently: any may have started).
      auto why = tag_of(st) + ": request " + std::to_string(due.stuck.front())
                 + " still ran after it was interrupted; recycling the worker";
      log().warn("{}", why);
      st.life->recycle(self, why, worker_lifecycle::recycled_error(tag_of(st)), false, [self] {
        self->state.results.clear();
        self->state.streams.clear();
      });
    },
    [self](cancel_for_atom, const caf::actor_addr& requester, uint64_t tag) {
      self->state.link->cancel(requester, tag);
    },
    [self](taken_for_atom, const caf::actor_addr& requester, uint64_t tag, uint64_t n) {
      self->state.link->taken(requester, tag, n);
    },
    [self](mock_control_atom, std::vector<char>& bytes) {
      // What a handler does when interrupted: one that runs on a timer
      // (sleep, latency) stops after latency_min, with the interrupt's
      // code; a hang cannot be interrupted. Everything has begun (the mock
      // runs requests concurrently), so nothing is revoked.
      auto& st = self->state;
      auto msg = wire::decode_control(bytes.data(), bytes.size());
      if (!msg)
        return;
      if (!msg->revoke.empty())
        st.link->on_revoked({});
      if (msg->credit != 0) {
        if (auto s = st.streams.find(msg->credit); s != st.streams.end()) {
          s->second.taken = std::max(s->second.taken, msg->taken);
          if (s->second.waiting) {
            s->second.waiting = false;
            self->send(self, mock_chunk_atom::value, msg->credit);
          }
        }
      }
      if (msg->interrupt != 0 && st.streams.erase(msg->interrupt) > 0)
        // An interrupted stream: its generator is closed, it answers the
        // interrupt's code like any handler (below).
        st.results.emplace(msg->interrupt, payload{});
      auto i = st.results.find(msg->interrupt);
      if (msg->interrupt == 0 || i == st.results.end())
        return;
      auto code = msg->reason == "timeout" ? error_code::timeout : error_code::cancelled;
      i->second = make_error(code, "interrupted", "Interrupted", "");
      self->delayed_send(self, st.cfg.latency_min, mock_reply_atom::value, msg->interrupt);
    },
    [self](mock_stop_timeout_atom) {
      auto& st = self->state;
      st.life->finish_stop(self, tag_of(st) + " stopped before it finished its requests");
    },
  };
}

} // namespace

worker_actor spawn_mock_worker(caf::actor_system& sys, mock_config cfg) {
  return spawn_mock_worker(sys, std::move(cfg), worker_listener_actor{});
}

worker_actor spawn_mock_worker(caf::actor_system& sys, mock_config cfg,
                               worker_listener_actor listener) {
  return sys.spawn(mock_fun, std::move(cfg), std::move(listener));
}

} // namespace pyvisor

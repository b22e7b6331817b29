#include "actors/fork_server/template_actor.hpp"

#include <signal.h>

#include <chrono>
#include <string>

#include <msgpack.hpp>
#include <spdlog/logger.h>

#include "caf/actor_cast.hpp"
#include "caf/actor_system.hpp"
#include "caf/event_based_actor.hpp"
#include "caf/send.hpp"
#include "caf/stateful_actor.hpp"

#include "actors/worker/python_options.hpp"
#include "messages/log.hpp"

namespace pyvisor {

namespace {

using hello_atom = caf::atom_constant<caf::atom("ft_hello")>;
using gone_atom = caf::atom_constant<caf::atom("ft_gone")>;
using start_timeout_atom = caf::atom_constant<caf::atom("ft_starttm")>;

struct template_state {
  worker_config cfg;
  std::shared_ptr<fork_channel> channel;
  std::shared_ptr<python_process> proc;
  std::shared_ptr<fork_server> server;
  std::chrono::steady_clock::time_point spawned_at;
  bool ready = false;
  bool stopping = false;
  caf::error stop_reason;

  static inline const char* name = "pyvisor.fork_template";
};

using self_ptr = caf::stateful_actor<template_state>*;

std::string tag_of(const template_state& st) {
  return "fork-server template (pid " + std::to_string(st.proc ? st.proc->pid() : 0) + ")";
}

// The template cannot serve: forks fail with `why` (what a spawned worker
// would have reported) and the actor quits with it.
void fail(self_ptr self, const wire::remote_error& why) {
  auto& st = self->state;
  st.channel->fail(why);
  if (st.proc)
    st.proc->signal(SIGKILL);
  auto code = error_code::python_error;
  if (!why.code.empty() && !from_string(why.code, code))
    code = error_code::python_error;
  self->quit(make_error(code, tag_of(st) + " failed to start: " + why.message, why.type,
                        why.traceback));
}

// An exit notice of one of the template's workers: a reply frame with id 0
// whose result is {pid, code, signal} (docs/protocol.md, "Fork server").
void note_exit(fork_server& server, const wire::frame& f) {
  try {
    auto oh = msgpack::unpack(f.result.data(), f.result.size());
    auto m = oh.get().as<std::map<std::string, int64_t>>();
    server.exited(static_cast<pid_t>(m.at("pid")),
                  exit_status{static_cast<int>(m.at("code")), static_cast<int>(m.at("signal"))});
  } catch (const std::exception& e) {
    log().error("fork-server template: unreadable exit notice: {}", e.what());
  }
}

caf::behavior template_fun(self_ptr self, worker_config cfg,
                           std::shared_ptr<fork_channel> channel) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.channel = std::move(channel);
  st.spawned_at = std::chrono::steady_clock::now();
  auto opts = python_options(st.cfg, "pyvisor.forkserver", "template");
  opts.args.insert(opts.args.begin() + 6, {"--control-fd", "5"});
  opts.control_socket = true;
  // The I/O thread reads the exit notices and hands them to the server
  // directly (workers wait for them on their own I/O threads); the rest
  // goes to the actor.
  auto server_slot = std::make_shared<std::shared_ptr<fork_server>>();
  auto weak = self->address();
  auto send_to_self = [weak](auto&&... xs) {
    if (auto hdl = caf::actor_cast<caf::actor>(weak))
      caf::anon_send(hdl, std::forward<decltype(xs)>(xs)...);
  };
  process_callbacks cbs;
  cbs.on_frames = [send_to_self, server_slot](std::vector<wire::frame>&& fs) {
    for (auto& f : fs) {
      if (f.type == wire::frame_type::hello)
        send_to_self(hello_atom::value, f.ok, f.error.code, f.error.type, f.error.message,
                     f.error.traceback);
      else if (f.id == 0 && f.ok && *server_slot)
        note_exit(**server_slot, f);
    }
  };
  cbs.on_protocol_error = [send_to_self](std::string reason) {
    log().error("fork-server template broke the protocol: {}", reason);
    send_to_self(gone_atom::value, std::string{"broke the protocol: "} + reason, -1);
  };
  cbs.on_exit = [send_to_self, server_slot](exit_status es) {
    // Its workers died with it: none of their statuses will come.
    if (*server_slot)
      (*server_slot)->gone();
    send_to_self(gone_atom::value, es.describe(), es.code);
  };
  std::string error;
  st.proc = python_process::start(std::move(opts), std::move(cbs), error);
  if (!st.proc) {
    fail(self, wire::remote_error{"worker_crashed", configuration_error_type, error, ""});
    return {};
  }
  // A template forks in milliseconds and runs no user code after its
  // imports: one that misses a fork's deadline while stopped (SIGSTOP, a
  // debugger) would never fork again. It is killed, and its supervisor
  // starts the next one. A running but slow one (an overloaded machine) is
  // left alone: killing it would take every worker with it.
  auto stalled = [weak_proc = std::weak_ptr<python_process>{st.proc},
                  tag = tag_of(st)](const std::string& why) {
    auto proc = weak_proc.lock();
    if (!proc)
      return;
    if (auto state = process_state(proc->pid()); state != 'T' && state != 't') {
      log().warn("{}: {}; it is running, so it is left alone", tag, why);
      return;
    }
    log().error("{}: {} and it is stopped (SIGSTOP or a debugger); killing it so that the "
                "next template takes over", tag, why);
    proc->signal(SIGKILL);
  };
  st.server = std::make_shared<fork_server>(st.proc->take_control_fd(), std::move(stalled));
  *server_slot = st.server;
  self->attach_functor([proc = st.proc, server = st.server, channel = st.channel] {
    channel->detach(server.get());
    server->gone();
    proc->close();
  });
  self->delayed_send(self, st.cfg.startup_timeout, start_timeout_atom::value);
  self->set_exit_handler([self](caf::exit_msg& msg) {
    auto& st = self->state;
    if (st.stopping)
      return;
    st.stopping = true;
    st.stop_reason = std::move(msg.reason);
    st.channel->detach(st.server.get());
    // EOF: the template kills what is left of its workers and exits.
    st.proc->stop(std::chrono::duration_cast<std::chrono::milliseconds>(st.cfg.stop_grace));
  });
  return {
    [self](hello_atom, bool ok, std::string& code, std::string& type, std::string& message,
           std::string& traceback) {
      auto& st = self->state;
      if (st.ready || st.stopping)
        return;
      if (!ok) {
        fail(self, wire::remote_error{std::move(code), std::move(type), std::move(message),
                                      std::move(traceback)});
        return;
      }
      st.ready = true;
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - st.spawned_at)
                  .count();
      log().info("{} ready in {} ms; workers are forked from it", tag_of(st), ms);
      st.channel->attach(st.server, st.proc->pid());
    },
    [self](gone_atom, std::string& why, int code) {
      auto& st = self->state;
      st.channel->detach(st.server.get());
      if (st.stopping) {
        log().info("{} stopped: {}", tag_of(st), why);
        self->quit(st.stop_reason);
        return;
      }
      auto tail = st.proc->stderr_tail();
      if (!st.ready && (says_no_msgpack(code, tail) || says_no_package(code, tail))) {
        // No msgpack (python/pyvisor/worker.py) or no pyvisor package: no
        // restart fixes it.
        fail(self, wire::remote_error{"worker_crashed", configuration_error_type,
                                      code == 3 ? missing_msgpack(st.cfg.python)
                                                : missing_package(),
                                      ""});
        return;
      }
      if (!st.ready) {
        fail(self, wire::remote_error{"worker_crashed", "",
                                      "exited during start-up: " + why
                                        + (tail.empty() ? "" : "; stderr:\n" + tail),
                                      ""});
        return;
      }
      auto msg = tag_of(st) + " exited: " + why + "; its workers died with it";
      log().error("{}", msg);
      self->quit(make_error(error_code::worker_crashed, msg));
    },
    [self](start_timeout_atom) {
      auto& st = self->state;
      if (st.ready || st.stopping)
        return;
      fail(self, wire::remote_error{"timeout", "",
                                    "did not announce itself within the start-up timeout", ""});
    },
  };
}

} // namespace

caf::actor spawn_template(caf::actor_system& sys, worker_config cfg,
                          std::shared_ptr<fork_channel> channel) {
  return sys.spawn(template_fun, std::move(cfg), std::move(channel));
}

} // namespace pyvisor

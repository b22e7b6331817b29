#include "pyvisor/worker.hpp"

#include <signal.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <limits>

#include <spdlog/logger.h>

#include "caf/actor_cast.hpp"
#include "caf/actor_system.hpp"
#include "caf/allowed_unsafe_message_type.hpp"
#include "caf/event_based_actor.hpp"
#include "caf/stateful_actor.hpp"
#include "caf/typed_event_based_actor.hpp"

#include "actors/fork_server/fork_server.hpp"
#include "actors/process/python_process.hpp"
#include "actors/worker/reporting_worker.hpp"
#include "actors/worker/python_options.hpp"
#include "actors/worker/worker_lifecycle.hpp"
#include "actors/worker/worker_link.hpp"
#include "messages/log.hpp"

namespace pyvisor {

namespace {

using frame_atom = caf::atom_constant<caf::atom("pv_frame")>;
using exited_atom = caf::atom_constant<caf::atom("pv_exited")>;
using broken_atom = caf::atom_constant<caf::atom("pv_broken")>;
using start_timeout_atom = caf::atom_constant<caf::atom("pv_starttm")>;
using settle_timeout_atom = caf::atom_constant<caf::atom("pv_settle")>;
using start_failed_atom = caf::atom_constant<caf::atom("pv_startfl")>;
/// The stack of a stuck request was asked for: kill it now.
using kill_stuck_atom = caf::atom_constant<caf::atom("pv_killst")>;

// Frames cross from the I/O thread to the actor in batches (all frames of one
// read) behind a shared pointer: the actor moves the result bytes out instead
// of copying them, and the type needs no serialization (it stays in-process).
using frame_ptr = std::shared_ptr<std::vector<wire::frame>>;

} // namespace
} // namespace pyvisor

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(pyvisor::frame_ptr)

namespace pyvisor {
namespace {

// The actor's full interface: the public contract plus what its own I/O
// thread and timers send it.
using worker_impl = worker_actor::extend<
  caf::replies_to<link_atom>::with<worker_link_ptr>, caf::reacts_to<frame_atom, frame_ptr>,
  caf::reacts_to<exited_atom, int, int>, caf::reacts_to<broken_atom, std::string>,
  caf::reacts_to<sweep_atom>,
  caf::reacts_to<start_timeout_atom>, caf::reacts_to<settle_timeout_atom>,
  caf::reacts_to<kill_stuck_atom, uint64_t>,
  caf::reacts_to<cancel_for_atom, caf::actor_addr, uint64_t>,
  caf::reacts_to<taken_for_atom, caf::actor_addr, uint64_t, uint64_t>,
  caf::reacts_to<start_failed_atom, std::string, std::string, std::string, std::string>>;

/// How long a recycled worker waits for its killed process to be reaped
/// before it settles its requests without knowing which ones started.
constexpr auto settle_limit = std::chrono::seconds(2);

/// Between asking a stuck worker for its stack (faulthandler, on SIGUSR2)
/// and killing it: the dump is written by a C signal handler in
/// microseconds; this leaves the I/O thread time to read it.
constexpr auto dump_wait = std::chrono::milliseconds(200);

struct worker_state {
  worker_config cfg;
  std::shared_ptr<python_process> proc;
  worker_status status;
  /// The request path (shared with the process's I/O thread and with the
  /// pool core, which submits through it) and the actor's life cycle on it.
  worker_link_ptr link;
  std::unique_ptr<worker_lifecycle> life;
  std::chrono::steady_clock::time_point spawned_at;
  /// A stuck request's stack dump was asked for (kill_stuck_atom pending).
  bool dumping = false;
  /// The dump, once taken: the details of what the kill costs others.
  std::string stack_dump;

  static inline const char* name = "pyvisor.worker";
};

using self_ptr = worker_impl::stateful_pointer<worker_state>;

std::string tag_of(const worker_state& st) {
  auto tag = "worker " + std::to_string(st.cfg.id);
  // A forked worker's pid is known at its hello.
  return st.status.pid > 0 ? tag + " (pid " + std::to_string(st.status.pid) + ")" : tag;
}

// Kills the process, fails everything outstanding and terminates.
// `for_requests` goes to the in-flight requests, `reason` becomes the exit
// reason.
void terminate(self_ptr self, const caf::error& for_requests, caf::error reason) {
  auto& st = self->state;
  if (st.link->retiring())
    return;
  if (st.proc)
    st.proc->signal(SIGKILL);
  retirement r;
  r.for_requests = for_requests;
  r.reason = std::move(reason);
  st.life->retire(self, std::move(r));
}

caf::error recycled_error(const worker_state& st) {
  return worker_lifecycle::recycled_error(tag_of(st), st.stack_dump);
}

/// The worker exited with 3 because the interpreter lacks msgpack
/// (python/pyvisor/worker.py), or with exit_no_package because the bootstrap
/// found no package: each says so on stderr first (what user code exiting
/// with the same status does not).
bool no_msgpack(const worker_state& st, const exit_status& es) {
  return st.proc && says_no_msgpack(es.code, st.proc->stderr_tail());
}

bool no_package(const worker_state& st, const exit_status& es) {
  return st.proc && says_no_package(es.code, st.proc->stderr_tail());
}

std::string describe_startup_exit(const worker_state& st, const exit_status& es) {
  // Said plainly, naming interpreter or places and the fix.
  if (no_msgpack(st, es))
    return missing_msgpack(st.cfg.python);
  if (no_package(st, es))
    return missing_package();
  auto msg = "exited during start-up: " + es.describe();
  auto tail = st.proc ? st.proc->stderr_tail() : std::string{};
  if (!tail.empty())
    msg += "; stderr:\n" + tail;
  return msg;
}

// The process is gone and every reply it wrote has been read: settle what is
// still in flight. The Python worker runs requests one at a time in pipe
// order, so the oldest unanswered request (answered `timeout` already, or
// not) is the only one that can have started.
void settle(self_ptr self, const caf::error& err) {
  self->state.life->settle(self, err, 1);
}

// Kills the hung worker's process and retires it deliberately; what it held
// is settled once the process is reaped and its last replies are read.
void recycle(self_ptr self, const std::string& why) {
  auto& st = self->state;
  st.life->recycle(self, why, recycled_error(st), true, [self] {
    auto& st = self->state;
    if (st.proc)
      st.proc->signal(SIGKILL);
    self->delayed_send(self, settle_limit, settle_timeout_atom::value);
  });
}

// A request did not stop when interrupted: its stack goes to the log (and
// into what the kill costs others), then the worker is killed and recycled.
void kill_stuck(self_ptr self, uint64_t id) {
  auto& st = self->state;
  st.dumping = false;
  if (st.link->retiring())
    return;
  if (st.link->command_of(id).empty()) {
    // It stopped during the dump wait after all: the worker lives on (the
    // sweep looks at what else is in flight).
    log().info("{}: request {} stopped {} ms after it was asked for its stack", tag_of(st), id,
               std::chrono::duration_cast<std::chrono::milliseconds>(dump_wait).count());
    if (st.proc)
      st.proc->take_stack_dump();
    self->send(self, sweep_atom::value);
    return;
  }
  st.stack_dump = st.proc ? st.proc->take_stack_dump() : std::string{};
  auto grace = std::chrono::duration_cast<std::chrono::milliseconds>(st.cfg.interrupt_grace);
  auto why = tag_of(st) + ": request " + std::to_string(id) + " ('" + st.link->command_of(id)
             + "') still ran " + std::to_string(grace.count())
             + " ms after it was interrupted; killing the worker";
  log().error("{}; its Python stack:\n{}", why,
              st.stack_dump.empty() ? std::string{"(no stack dump arrived)"} : st.stack_dump);
  recycle(self, why);
}

// The worker could not start: its hello said why, or its template's did (a
// forked worker whose template cannot import a module fails with the
// template's error, exactly as a spawned one fails with its own).
void start_failed(self_ptr self, const wire::remote_error& why) {
  auto& st = self->state;
  auto msg = tag_of(st) + " failed to start: " + why.message;
  // Its supervisor logs the exit (once for a crash loop) and whoever gives
  // up on the worker (the pool) reports the traceback once.
  log().debug("{}", msg);
  auto err = why.code.empty() || why.code == "python_error"
               ? make_error(error_code::python_error, msg, why.type, why.traceback)
               : error_of(why, tag_of(st) + " failed to start: ");
  terminate(self, err, err);
}

void on_frame(self_ptr self, wire::frame& f) {
  auto& st = self->state;
  if (f.type == wire::frame_type::hello) {
    // Asked to stop while it was starting: its hello changes nothing (and
    // is no protocol violation).
    if (st.status.phase == worker_phase::stopping)
      return;
    if (st.status.phase != worker_phase::starting) {
      terminate(self, make_error(error_code::protocol_error, tag_of(st) + ": second hello frame"),
                make_error(error_code::protocol_error, "second hello frame"));
      return;
    }
    if (!f.ok) {
      start_failed(self, f.error);
      return;
    }
    st.status.phase = worker_phase::ready;
    if (f.pid > 0)
      st.status.pid = f.pid; // a forked worker's pid is known only now
    st.status.python = f.python;
    st.status.commands = f.commands;
    if (f.concurrency > 1)
      st.link->announce_starts();
    if (f.shared_memory)
      st.link->enable_shared(st.cfg.shared_threshold);
    if (f.control) {
      // Interrupts instead of kills (docs/protocol.md, "Control"). Weak:
      // the process holds the link through its callbacks.
      std::weak_ptr<python_process> weak = st.proc;
      st.link->enable_control([weak](const std::vector<char>& msg, bool signal) {
        auto proc = weak.lock();
        return proc && proc->send_control(msg, signal ? SIGUSR1 : 0);
      });
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::steady_clock::now() - st.spawned_at)
                .count();
    log().info("{} ready in {} ms (Python {}, {} commands)", tag_of(st), ms, f.python,
                 f.commands.size());
    st.life->announce_ready(st.status);
    return;
  }
  if (f.type == wire::frame_type::started) {
    st.link->begun(f.id);
    return;
  }
  if (f.type == wire::frame_type::chunk) {
    if (st.link->chunk(f.id, std::move(f.result)) == chunk_fate::invalid) {
      auto msg = tag_of(st) + " sent a chunk for request id " + std::to_string(f.id)
                 + ", which is no stream in flight";
      log().error("{}: protocol error, stopping it", msg);
      auto err = make_error(error_code::protocol_error, msg);
      terminate(self, err, err);
    }
    return;
  }
  if (!st.link->complete(f.id, result_of(f))) {
    auto msg = tag_of(st) + " replied to unknown request id " + std::to_string(f.id);
    log().error("{}: protocol error, stopping it", msg);
    auto err = make_error(error_code::protocol_error, msg);
    terminate(self, err, err);
  }
}

worker_impl::behavior_type worker_fun(self_ptr self, worker_config cfg,
                                      worker_listener_actor listener) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.link = std::make_shared<worker_link>(self->clock(), self->address(), st.cfg,
                                          std::move(listener), st.cfg.max_frame_size);
  st.life = std::make_unique<worker_lifecycle>(st.link);
  st.status.id = st.cfg.id;
  st.spawned_at = std::chrono::steady_clock::now();
  // Start the process: spawned, or forked from the pool's template.
  auto opts = python_options(st.cfg, "pyvisor.worker", "worker " + std::to_string(st.cfg.id));
  // The control socket: fd 5 (a forked worker gets it from its template).
  opts.worker_control = true;
  opts.shared_ring_size = st.cfg.shared_threshold > 0 ? st.cfg.shared_memory : 0;
  if (!st.cfg.fork_from)
    opts.args.insert(opts.args.begin() + 6, {"--control-fd", "5"});
  if (st.cfg.fork_from)
    opts.launcher = std::make_shared<fork_launcher>(
      st.cfg.fork_from, std::chrono::steady_clock::now()
                          + std::chrono::duration_cast<std::chrono::nanoseconds>(
                            st.cfg.startup_timeout));
  // The callbacks hold a weak handle: a worker that nobody references any
  // more is destroyed, and its process with it.
  auto weak = self->address();
  auto send_to_self = [weak](auto&&... xs) {
    if (auto hdl = caf::actor_cast<caf::actor>(weak))
      caf::anon_send(hdl, std::forward<decltype(xs)>(xs)...);
  };
  process_callbacks cbs;
  // Replies to requests in flight are answered on the I/O thread, straight
  // to their callers (worker_link::on_frames); the rest comes here, in order.
  cbs.on_frames = [send_to_self, link = st.link](std::vector<wire::frame>&& fs) {
    auto rest = link->on_frames(std::move(fs));
    if (!rest.empty())
      send_to_self(frame_atom::value, std::make_shared<std::vector<wire::frame>>(std::move(rest)));
  };
  cbs.on_revoked = [link = st.link](std::vector<uint64_t> ids) { link->on_revoked(ids); };
  cbs.on_protocol_error = [send_to_self](std::string reason) {
    send_to_self(broken_atom::value, std::move(reason));
  };
  cbs.on_exit = [send_to_self](exit_status es) {
    send_to_self(exited_atom::value, es.code, es.signal);
  };
  cbs.on_start_failed = [send_to_self](wire::remote_error why) {
    send_to_self(start_failed_atom::value, why.code, why.type, why.message, why.traceback);
  };
  std::string error;
  st.proc = python_process::start(std::move(opts), std::move(cbs), error);
  if (!st.proc) {
    log().error("worker {}: {}", st.cfg.id, error);
    auto err = make_error(error_code::worker_crashed, error, configuration_error_type, "");
    self->quit(err);
    return worker_impl::behavior_type::make_empty_behavior();
  }
  st.link->attach(st.proc);
  st.status.pid = std::max(0, st.proc->pid()); // forked: known at its hello
  self->attach_functor([link = st.link] { link->close(); });
  self->delayed_send(self, st.cfg.startup_timeout, start_timeout_atom::value);
  // Stopping: the process gets EOF, finishes what it holds and exits (or
  // is killed after the grace); its exit notice ends the stop.
  st.life->stop_on_exit(self, st.status, [self] {
    auto& st = self->state;
    log().info("{} stopping", tag_of(st));
    st.proc->stop(std::chrono::duration_cast<std::chrono::milliseconds>(st.cfg.stop_grace));
  });
  return {
    [self](execute& req) -> caf::result<payload> {
      return self->state.life->submit(self, req, self->state.cfg.id).first;
    },
    [self](link_atom) { return self->state.link; },
    [self](ready_atom) { return self->state.life->await_ready(self, self->state.status); },
    [self](status_atom) -> worker_status {
      return self->state.link->snapshot(self->state.status);
    },
    [self](drop_session_atom, std::string& session) {
      auto& st = self->state;
      if (st.status.phase == worker_phase::stopping || session.empty())
        return;
      st.link->drop_session(session);
    },
    [self](frame_atom, frame_ptr& fs) {
      auto& st = self->state;
      for (auto& f : *fs) {
        if (st.life->awaiting_settle()) {
          // Recycled, process killed: the replies it wrote before dying
          // still count, and tell which requests it had finished.
          // What began counts for the settlement; chunks no caller will
          // see now count for nothing (nor against a retry).
          if (f.type == wire::frame_type::started)
            st.link->begun(f.id);
          if (f.type != wire::frame_type::reply)
            continue;
          st.link->complete(f.id, result_of(f));
          continue;
        }
        if (st.link->retiring())
          return;
        on_frame(self, f);
      }
    },
    [self](broken_atom, std::string& reason) {
      auto& st = self->state;
      auto msg = tag_of(st) + " broke the protocol: " + reason;
      log().error("{}; stopping it", msg);
      auto err = make_error(error_code::protocol_error, msg);
      terminate(self, err, err);
    },
    [self](exited_atom, int code, int sig) {
      auto& st = self->state;
      exit_status es{code, sig};
      if (st.life->awaiting_settle()) {
        settle(self, recycled_error(st));
        return;
      }
      if (st.link->retiring())
        return; // killed by this actor on purpose; the reason is known
      if (st.status.phase == worker_phase::stopping) {
        log().info("{} stopped: {}", tag_of(st), es.describe());
        st.life->finish_stop(self, tag_of(st) + " stopped: " + es.describe());
        return;
      }
      auto msg = tag_of(st) + " "
                 + (st.status.phase == worker_phase::starting ? describe_startup_exit(st, es)
                                                              : "exited: " + es.describe());
      log().error("{}", msg);
      // No msgpack (exit 3, python/pyvisor/worker.py) or no pyvisor package
      // (exit 7): no restart fixes it.
      auto err = st.status.phase == worker_phase::starting
                     && (no_msgpack(st, es) || no_package(st, es))
                   ? make_error(error_code::worker_crashed, msg, configuration_error_type, "")
                   : make_error(error_code::worker_crashed, msg);
      if (st.status.phase != worker_phase::ready) {
        terminate(self, err, err);
        return;
      }
      // Every reply it wrote was read before this notice: requests waiting
      // behind the one it died on never started and run elsewhere.
      retirement r;
      r.for_requests = err;
      r.reason = err;
      r.settle_later = true;
      st.life->retire(self, std::move(r));
      settle(self, err);
    },
    [self](sweep_atom) {
      auto& st = self->state;
      auto due = st.link->sweep();
      if (!due.stuck.empty()) {
        if (!st.dumping) {
          st.dumping = true;
          if (st.proc)
            st.proc->signal(SIGUSR2); // faulthandler: every thread's stack
          self->delayed_send(self, dump_wait, kill_stuck_atom::value, due.stuck.front());
        }
        return;
      }
      if (due.late.empty())
        return;
      if (st.link->controlled()) {
        // The worker lives on, its sessions too: the handler is
        // interrupted, the caller hears `timeout` now, and only a handler
        // still running after the grace costs the worker (stuck, above).
        log().warn("{}", st.life->timed_out(tag_of(st), due.late.front(), "interrupting it"));
        st.link->interrupt(due.late,
                           make_error(error_code::timeout,
                                      st.life->timed_out(tag_of(st), due.late.front(),
                                                         "its handler was interrupted")));
        return;
      }
      // No interrupts: the caller hears `timeout` at once (detached: the
      // ledger still knows the late request came first); what else is in
      // flight is settled once the killed process is reaped and its last
      // replies are read (see settle): the requests that never started run
      // elsewhere instead of failing.
      auto why = st.life->timed_out(tag_of(st), due.late.front(), "recycling the worker");
      log().warn("{}", why);
      st.link->interrupt(due.late, make_error(error_code::timeout, why));
      recycle(self, why);
    },
    [self](kill_stuck_atom, uint64_t id) { kill_stuck(self, id); },
    [self](cancel_for_atom, const caf::actor_addr& requester, uint64_t tag) {
      self->state.link->cancel(requester, tag);
    },
    [self](taken_for_atom, const caf::actor_addr& requester, uint64_t tag, uint64_t n) {
      self->state.link->taken(requester, tag, n);
    },
    [self](settle_timeout_atom) {
      auto& st = self->state;
      if (!st.life->awaiting_settle())
        return;
      log().warn("{}: killed process not reaped within {} ms; failing what it held", tag_of(st),
                 std::chrono::duration_cast<std::chrono::milliseconds>(settle_limit).count());
      // Without the exit notice it is unknown what started: give all up.
      st.life->settle(self, recycled_error(st), std::numeric_limits<size_t>::max());
    },
    [self](start_failed_atom, std::string& code, std::string& type, std::string& message,
           std::string& traceback) {
      auto& st = self->state;
      if (st.status.phase == worker_phase::stopping) {
        st.life->finish_stop(self, tag_of(st) + " stopped before it started");
        return;
      }
      start_failed(self, wire::remote_error{std::move(code), std::move(type), std::move(message),
                                            std::move(traceback)});
    },
    [self](start_timeout_atom) {
      auto& st = self->state;
      if (st.status.phase != worker_phase::starting)
        return;
      auto msg = tag_of(st) + " did not announce itself within the start-up timeout";
      log().error("{}", msg);
      auto err = make_error(error_code::timeout, msg);
      terminate(self, err, err);
    },
  };
}

} // namespace

process_options python_options(const worker_config& cfg, const std::string& module,
                               std::string tag) {
  process_options opts;
  opts.python = cfg.python;
  // -c rather than -m: runpy costs a few milliseconds of every start-up.
  // The runtime's package goes first on sys.path, before the working
  // directory (-c puts that first): a pyvisor/ folder where the program was
  // started must not shadow it. No package there: exit 7, said plainly
  // (missing_package).
  opts.args = {"-c",
               "import os, sys\n"
               "d = os.environ['PYVISOR_RUNTIME_DIR']\n"
               "if not os.path.isfile(os.path.join(d, 'pyvisor', 'worker.py')):\n"
               "    sys.stderr.write('" + std::string{no_package_mark} + "' + d + '\\n')\n"
               "    sys.exit(" + std::to_string(exit_no_package) + ")\n"
               "sys.path.insert(0, d)\n"
               "from " + module + " import main\n"
               "sys.exit(main())",
               "--in-fd", "3", "--out-fd", "4"};
  for (const auto& m : cfg.modules) {
    opts.args.emplace_back("--module");
    opts.args.push_back(m);
  }
  auto runtime_dir = default_python_dir();
  std::string pythonpath;
  for (const auto& p : cfg.python_path)
    pythonpath += p + ":";
  pythonpath += runtime_dir;
  if (auto existing = getenv("PYTHONPATH"); existing && *existing)
    pythonpath += std::string{":"} + existing;
  opts.env = {"PYTHONPATH=" + pythonpath, "PYVISOR_RUNTIME_DIR=" + runtime_dir,
              "PYTHONUNBUFFERED=1",
              "PYVISOR_LOG_LEVEL=" + std::to_string(python_log_level())};
  // Applied by each worker to itself (python/pyvisor/worker.py), not by a
  // fork-server template, which forks them with its environment.
  if (cfg.max_memory > 0)
    opts.env.push_back("PYVISOR_MAX_MEMORY=" + std::to_string(cfg.max_memory));
  if (cfg.concurrency > 1)
    opts.env.push_back("PYVISOR_CONCURRENCY=" + std::to_string(cfg.concurrency));
  // Large values reuse blocks instead of faulting in fresh pages
  // (keep_large_blocks(), payload.hpp), unless the operator chose otherwise.
  for (auto [name, value] : {std::pair{"MALLOC_MMAP_THRESHOLD_", large_block_threshold},
                             std::pair{"MALLOC_TRIM_THRESHOLD_", large_block_trim}})
    if (getenv(name) == nullptr)
      opts.env.push_back(std::string{name} + "=" + std::to_string(value));
  // A forked worker has it from its template's environment.
  if (cfg.shared_memory > 0)
    opts.env.push_back("PYVISOR_SHM_THRESHOLD=" + std::to_string(cfg.shared_threshold));
  opts.tag = std::move(tag);
  opts.max_frame_size = cfg.max_frame_size;
  opts.reply_spin = std::chrono::duration_cast<std::chrono::microseconds>(cfg.reply_spin);
  return opts;
}

std::string missing_msgpack(const std::string& python) {
  return "interpreter '" + python
         + "' has no msgpack module: install python3-msgpack (apt-get install "
           "python3-msgpack) and use /usr/bin/python3, or set pool.python to an "
           "interpreter with msgpack";
}

} // namespace pyvisor

/// Defined by a program built against an installed pyvisor CMake package
/// (cmake/pyvisor_package_dir.cpp, added by pyvisorConfig.cmake): where that
/// package's Python directory is. Absent otherwise.
extern "C" __attribute__((weak)) const char* pyvisor_package_python_dir();

namespace pyvisor {

std::vector<std::string> python_dir_candidates() {
  std::vector<std::string> result;
  if (auto env = getenv("PYVISOR_PYTHON_DIR"); env && *env) {
    // Set on purpose: the only place looked at.
    result.emplace_back(env);
    return result;
  }
  // An installed program (the node, or an application installed beside it)
  // finds the package relative to itself, wherever the installation lives.
  char exe[PATH_MAX];
  auto n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    std::string dir{exe, static_cast<size_t>(n)};
    dir = dir.substr(0, dir.rfind('/') + 1) + PYVISOR_PYTHON_DIR_FROM_BIN;
    char resolved[PATH_MAX];
    result.push_back(realpath(dir.c_str(), resolved) != nullptr ? resolved : dir);
  }
  // A program built against an installed CMake package, installed elsewhere.
  if (pyvisor_package_python_dir != nullptr)
    result.emplace_back(pyvisor_package_python_dir());
  // The source tree while developing; where the library was to be installed.
  result.emplace_back(PYVISOR_PYTHON_DIR_BUILD);
  result.emplace_back(PYVISOR_PYTHON_DIR_INSTALL);
  return result;
}

std::string default_python_dir() {
  auto candidates = python_dir_candidates();
  for (auto& dir : candidates)
    if (access((dir + "/pyvisor/worker.py").c_str(), R_OK) == 0)
      return dir;
  return candidates.front();
}

std::string missing_package() {
  std::string where;
  for (auto& dir : python_dir_candidates())
    where += (where.empty() ? "" : ", ") + dir;
  return "the pyvisor Python package (a directory holding pyvisor/worker.py) is in none of: "
         + where
         + "; set PYVISOR_PYTHON_DIR to the directory that holds pyvisor/ (an installation "
           "has it in <prefix>/share/pyvisor/python)";
}

worker_actor spawn_python_worker(caf::actor_system& sys, worker_config cfg) {
  return spawn_python_worker(sys, std::move(cfg), worker_listener_actor{});
}

worker_actor spawn_python_worker(caf::actor_system& sys, worker_config cfg,
                                 worker_listener_actor listener) {
  return sys.spawn(worker_fun, std::move(cfg), std::move(listener));
}

} // namespace pyvisor

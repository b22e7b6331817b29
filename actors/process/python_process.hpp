// pyvisor::python_process: one Python worker OS process, its pipes, and the
// thread that does all of its I/O. No CAF in here: the worker actor owns one
// of these and receives its events through the callbacks.
//
// Guarantees:
// - The protocol runs on dedicated pipes (the child's fds 3 and 4); the
//   child's stdout and stderr are read line by line and logged through
//   spdlog, tagged with the worker and pid, so user prints never touch the
//   protocol: stdout at info, stderr at warn, except Python `logging`
//   records (marked lines, python/pyvisor/worker.py), which keep their level
//   and logger name. Its stdin is /dev/null.
// - Two calls block the caller's thread, briefly and boundedly: start(),
//   which waits for exec to succeed or fail (about a millisecond), and
//   close(), which SIGKILLs the child and joins the I/O thread once the child
//   is reaped (a kill and a waitpid: milliseconds, even for a SIGSTOPped
//   child). The worker actor calls close() from its attach functor, i.e. on
//   the scheduler thread that ends it. send() writes what the non-blocking
//   pipe takes at once and leaves the rest to the I/O thread, so a stopped
//   child can never stall a CAF scheduler thread, and the common case costs
//   no thread hop.
// - The child cannot outlive its host: it is forked from the I/O thread with
//   PR_SET_PDEATHSIG = SIGKILL. Linux sends that signal when the *thread* that
//   forked exits, not the process, which is why the fork happens on the I/O
//   thread: that thread lives exactly until the child has been reaped. A host
//   that dies between fork and prctl is caught by re-checking getppid().
// - Exit is observed through a pidfd, so a grandchild that inherited the reply
//   pipe cannot hide the child's death; every child is reaped with waitpid by
//   the I/O thread, and on_exit fires exactly once, after the last on_frames.
// - SIGPIPE is ignored process-wide (once, on first start): a write to a dead
//   child's pipe must yield EPIPE, not kill the host. SIGCHLD must not be set
//   to SIG_IGN by the host application, or children could not be reaped.
//
// Ownership: the owner holds a shared_ptr and must call close() when done:
// it kills the child if still running, joins the I/O thread and drops the
// callbacks (releasing whatever they captured). Callbacks run on the I/O
// thread and must not block. The I/O thread holds a reference of its own
// until it ends, so an owner that lets go from inside a callback is safe
// (close() called there only asks the thread to finish).
// Signals: the child gets its own process group and ignores SIGINT, so
// signals meant for the node's group (Ctrl-C, a service manager) do not hit
// the workers; the node stops them itself.
// Descendants: processes user code starts stay in the worker's process group
// (unless they call setsid). The I/O thread kills that group when it reaps
// the worker, whatever ended it; when the node itself is SIGKILLed there is
// no I/O thread left, so the Python worker forks a guard at start-up that
// kills the group as soon as the worker is gone (python/pyvisor/worker.py).
// Parent-death signals are not inherited, which is why both are needed.

#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "actors/process/shared_ring.hpp"
#include "messages/wire_codec.hpp"

namespace pyvisor {

/// The Python `logging` level matching the node's log level (the workers
/// get it as $PYVISOR_LOG_LEVEL; their records come back on stderr, marked,
/// and are logged at their own level with their logger's name).
int python_log_level();

/// The state letter of process `pid` in /proc/PID/stat (R running, S
/// sleeping, T stopped, t traced, Z zombie, ...), or 0 if there is none.
char process_state(pid_t pid);

/// How a child process ended.
struct exit_status {
  /// Exit code when the process exited by itself, else -1.
  int code = -1;
  /// Terminating signal, else 0.
  int signal = 0;

  /// "exit code 3" or "killed by signal 9 (SIGKILL)".
  std::string describe() const;
};

/// The descriptors a child gets from its host (the child ends of its pipes).
struct child_fds {
  int request = -1; ///< read end of the request pipe (the child's fd 3)
  int reply = -1;   ///< write end of the reply pipe (fd 4)
  int out = -1;     ///< write end of the stdout pipe (fd 1)
  int err = -1;     ///< write end of the stderr pipe (fd 2)
  int control = -1; ///< the child's end of its control socket (fd 5), if any
  int shared_in = -1;  ///< the ring the child reads (fd 6), with a control socket only
  int shared_out = -1; ///< the ring the child writes (fd 7), with shared_in only
};

/// A child someone else created for this host.
struct launched_child {
  pid_t pid = -1;
  /// Names this child and never a recycled pid; owned by the receiver.
  int pidfd = -1;
};

/// Makes children that python_process does not fork and exec itself (a
/// fork-server template forks them: actors/fork_server/). Such a child is
/// not this host's child: its creator reaps it and tells its exit status.
class process_launcher {
public:
  virtual ~process_launcher() = default;

  /// Creates the child with `fds` (not consumed: the caller closes its
  /// copies). Blocks until it exists or fails; gives up early once
  /// `cancelled()` is true. On failure, `error` says why.
  virtual std::optional<launched_child> launch(const child_fds& fds,
                                               const std::function<bool()>& cancelled,
                                               wire::remote_error& error)
    = 0;

  /// How child `pid` ended, once its pidfd said it did; nothing while that
  /// is not known yet.
  virtual std::optional<exit_status> exit_of(pid_t pid) = 0;
};

struct process_options {
  /// The interpreter to execute (a path, or a name looked up in PATH).
  std::string python = "/usr/bin/python3";
  /// Arguments after the interpreter.
  std::vector<std::string> args;
  /// Extra environment entries ("NAME=value"), added to the host's.
  std::vector<std::string> env;
  /// Tag for log lines, e.g. "worker 3".
  std::string tag = "worker";
  /// Largest frame body accepted from the child (the worker actor applies
  /// the same bound to what it sends).
  size_t max_frame_size = wire::default_max_frame_size;
  /// Set: the child comes from this launcher (no exec here; start() then
  /// returns at once and a failure arrives as on_start_failed). Unset: the
  /// I/O thread forks and execs `python`.
  std::shared_ptr<process_launcher> launcher;
  /// Gives the child a SOCK_SEQPACKET socket as fd 5, the host keeping the
  /// other end (take_control_fd), e.g. to pass descriptors to a template.
  bool control_socket = false;
  /// Gives the child a control socket as fd 5 whose other end the I/O
  /// thread reads (a worker's interrupts, revokes and stack dumps:
  /// send_control, on_revoked, take_stack_dump). Implies control_socket.
  bool worker_control = false;
  /// How long the I/O thread busy-polls after a reply before it sleeps
  /// (0: never); only while the child's requests come one at a time from a
  /// quick caller, and by one thread of the process at a time (see run()).
  std::chrono::microseconds reply_spin{0};
  /// worker_control: bytes of each of the two shared rings (node -> child
  /// as its fd 6, child -> node as fd 7; shared_ring.hpp) that carry large
  /// values instead of the pipes; 0: none, everything goes by pipe.
  size_t shared_ring_size = 0;
};

struct process_callbacks {
  /// The frames decoded from one read, in order (batched: under load one
  /// callback carries many replies, which saves the receiver many messages).
  std::function<void(std::vector<wire::frame>&&)> on_frames;
  /// The child broke the protocol; no further frames are delivered.
  std::function<void(std::string)> on_protocol_error;
  std::function<void(exit_status)> on_exit;
  /// With a launcher only: the child could not be created (no on_exit then).
  std::function<void(wire::remote_error)> on_start_failed;
  /// worker_control: the child answered a revoke with the ids it will
  /// never run (before any later on_frames of the same read).
  std::function<void(std::vector<uint64_t>)> on_revoked;
};

class python_process {
public:
  /// Starts the child. On failure (no such interpreter, fork failed) returns
  /// nullptr and sets `error`.
  static std::shared_ptr<python_process> start(process_options opts, process_callbacks cbs,
                                               std::string& error);

  ~python_process();

  python_process(const python_process&) = delete;
  python_process& operator=(const python_process&) = delete;

  /// The child's pid; -1 while a launcher has not created it yet.
  pid_t pid() const noexcept {
    return pid_.load();
  }

  /// The host's end of the control socket (control_socket), once; the
  /// caller owns it.
  int take_control_fd();

  /// Queues bytes for the child's request pipe. Never blocks.
  void send(std::vector<char> bytes);

  /// Room for `len` bytes of a value in the ring to the child: where to copy
  /// them (before send() of the frame that names `ref`), or nullptr when the
  /// ring is full, absent or too small (the value then goes in the frame).
  /// Callers serialise reserve-and-send themselves: reservations must reach
  /// the pipe in the order they were made (the child frees them so).
  char* reserve_shared(size_t len, wire::shared_ref& ref);

  /// Asks the child to stop: closes its request pipe once queued bytes are
  /// written (EOF makes the worker exit after answering what it read), sends
  /// SIGTERM after `grace`, SIGKILL after another `grace`.
  void stop(std::chrono::milliseconds grace);

  /// Sends `sig` to the child unless it has already been reaped (so a
  /// recycled pid can never be hit).
  void signal(int sig);

  /// worker_control: sends one control message and then `sig` (the
  /// message is there before the signal arrives). Never blocks: a child
  /// that does not read its control socket loses the message (false).
  bool send_control(const std::vector<char>& msg, int sig);

  /// worker_control: the stack-dump text the child wrote on its control
  /// socket so far (faulthandler's; at most 64 KiB), taken.
  std::string take_stack_dump();

  /// Kills the child if still running, joins the I/O thread and drops the
  /// callbacks. Idempotent; must not be called from a callback.
  void close();

  /// The last lines the child wrote to stderr (for start-up diagnostics).
  std::string stderr_tail() const;

private:
  python_process(process_options opts, process_callbacks cbs);

  void run(std::promise<std::string>* started);
  /// Writes queued bytes until the pipe would block. Requires mtx_.
  void flush_locked();
  std::string spawn();
  /// The launcher's part of spawn(): the child's ends go to the launcher.
  std::string launch(int req[2], int rep[2], int out[2], int err[2], int ctl_child);
  /// signal() under mtx_.
  void signal_locked(int sig);
  /// Takes the host's ends of the child's pipes (non-blocking from now on).
  void adopt(int req_w, int rep_r, int out_r, int err_r);
  /// Collects the child's exit status if it ended.
  std::optional<exit_status> try_reap(bool pidfd_fired);
  void wake();

  process_options opts_;
  process_callbacks cbs_;
  std::thread thread_;
  std::atomic<pid_t> pid_{-1};
  /// Frames queued by send() (each request owes one reply frame).
  std::atomic<uint64_t> frames_sent_{0};
  /// When send() last queued a frame (steady_clock ticks).
  std::atomic<int64_t> last_send_{0};
  int pidfd_ = -1;
  int control_fd_ = -1;
  wire::remote_error launch_error_;
  int req_w_ = -1;
  int rep_r_ = -1;
  int out_r_ = -1;
  int err_r_ = -1;
  int wake_fd_ = -1;
  /// The shared rings (shared_ring_size): made in spawn(), before the child
  /// exists, and kept until this object goes.
  std::unique_ptr<shared_ring> to_child_;
  std::unique_ptr<shared_ring> from_child_;

  mutable std::mutex mtx_;
  std::deque<std::vector<char>> outbox_;
  size_t front_written_ = 0;
  bool reaped_ = false;
  /// The child exists and req_w_ is its request pipe.
  bool pipes_ready_ = false;
  bool stop_requested_ = false;
  std::chrono::milliseconds stop_grace_{0};
  bool closing_ = false;
  std::deque<std::string> stderr_tail_;
  std::string stack_dump_;
};

} // namespace pyvisor

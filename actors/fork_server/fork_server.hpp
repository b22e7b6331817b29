// The node's end of fork-server templates (pool.start-method = fork-server):
// process management, no CAF, like actors/process/.
//
// A template is a Python process (python/pyvisor/forkserver.py) that
// imported the user modules once and forks a worker whenever asked; its
// protocol is in docs/protocol.md, "Fork server".
//
// - fork_server: one running template, seen from the node: the parent end
//   of its control socket (fork requests with the worker's pipe ends
//   attached, replies with the worker's pid and a pidfd), and the exit
//   statuses of its workers, which the template reaps (it is their parent)
//   and reports on its reply pipe. Once the template is gone no status will
//   come: a worker whose pidfd says it ended is then reported as killed
//   with its template (SIGKILL, its parent-death signal).
// - fork_channel: where a pool's workers get forked, whichever template is
//   current. The template actor attaches a template once it said hello,
//   detaches it when it dies, or marks the channel failed with the error a
//   template could not start with (a user module that does not import): a
//   fork then fails at once with that error, as a spawned worker would have
//   failed. While no template is attached a fork waits for one (bounded by
//   the worker's start-up deadline, and cancellable by the worker).
//
// Thread safety: every member function may be called from any thread; forks
// on one template are serialised (the template forks one at a time anyway).

#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "actors/process/python_process.hpp"
#include "messages/wire_codec.hpp"

namespace pyvisor {

class fork_server {
public:
  /// Called (on the forking thread) when the template did not answer a
  /// fork in time, with the reason.
  using stall_handler = std::function<void(const std::string&)>;

  /// Takes ownership of `control_fd` (the node's end of the socketpair).
  explicit fork_server(int control_fd, stall_handler on_stall = {});

  ~fork_server();

  fork_server(const fork_server&) = delete;
  fork_server& operator=(const fork_server&) = delete;

  /// Asks the template for a worker with `fds` (not consumed: the caller
  /// closes its copies; they travel as SCM_RIGHTS). Waits at most `timeout` for the reply. Returns the
  /// worker or an error text.
  std::optional<launched_child> fork(const child_fds& fds, std::chrono::milliseconds timeout,
                                    std::string& error);

  /// The template reported that worker `pid` ended.
  void exited(pid_t pid, exit_status status);

  /// The template is gone: its workers died with it (parent-death signal).
  void gone();

  /// How worker `pid` ended, once known: reported by the template, or
  /// SIGKILL when the template is gone. Call it once the worker's pidfd
  /// said it ended; the status is handed out once.
  std::optional<exit_status> exit_of(pid_t pid);

private:
  int control_fd_;
  stall_handler on_stall_;
  std::mutex fork_mtx_;
  uint64_t next_id_ = 1;
  std::mutex mtx_;
  std::unordered_map<pid_t, exit_status> exits_;
  bool gone_ = false;
};

class fork_channel {
public:
  /// A template (process `pid`) said hello: forks go to it.
  void attach(std::shared_ptr<fork_server> server, int64_t pid);

  /// Template `server` is gone; forks wait for the next one.
  void detach(const fork_server* server);

  /// No template could start: forks fail with `err` until one attaches.
  void fail(wire::remote_error err);

  /// The pool stops: waiting and later forks fail.
  void close();

  struct template_view {
    /// The template forks go to now (0: none).
    int64_t pid = 0;
    /// Templates that said hello so far.
    uint64_t hellos = 0;
  };

  /// For the pool's status.
  template_view view();

  /// Forks a worker from the current template, waiting for one until
  /// `deadline` unless `cancelled()` turns true (checked every few ms).
  /// On success, `from` is the template that forked it (ask it how the
  /// worker ended). On failure, `error` says why (the template's start-up
  /// error, with its traceback, if that is the reason).
  std::optional<launched_child> fork(const child_fds& fds,
                                     std::chrono::steady_clock::time_point deadline,
                                     const std::function<bool()>& cancelled,
                                     std::shared_ptr<fork_server>& from, wire::remote_error& error);

private:
  std::mutex mtx_;
  std::condition_variable changed_;
  std::shared_ptr<fork_server> current_;
  int64_t current_pid_ = 0;
  uint64_t hellos_ = 0;
  std::optional<wire::remote_error> failure_;
  bool closed_ = false;
};

/// How a worker of a fork-server pool comes to be: forked through
/// `channel` by whichever template is current, waiting for one until
/// `deadline` (the worker's start-up deadline); its exit status comes from
/// the template that forked it.
class fork_launcher : public process_launcher {
public:
  fork_launcher(std::shared_ptr<fork_channel> channel,
                std::chrono::steady_clock::time_point deadline)
    : channel_(std::move(channel)), deadline_(deadline) {
    // nop
  }

  std::optional<launched_child> launch(const child_fds& fds,
                                       const std::function<bool()>& cancelled,
                                       wire::remote_error& error) override {
    return channel_->fork(fds, deadline_, cancelled, from_, error);
  }

  std::optional<exit_status> exit_of(pid_t pid) override {
    return from_ ? from_->exit_of(pid) : std::optional<exit_status>{};
  }

private:
  std::shared_ptr<fork_channel> channel_;
  std::chrono::steady_clock::time_point deadline_;
  std::shared_ptr<fork_server> from_;
};

} // namespace pyvisor

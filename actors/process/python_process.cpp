#include "actors/process/python_process.hpp"
#include "actors/process/child_output.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <optional>
#include <string_view>

#include <spdlog/logger.h>

#include "messages/log.hpp"

extern char** environ;

namespace pyvisor {

namespace {

/// The service manager's variables (sd_notify(3)) of the process that
/// runs the pool: a Python worker must not speak for that service (with
/// NotifyAccess=all a stray READY=1 or WATCHDOG=1 would be believed).
bool owned_by_service_manager(const char* entry) {
  for (const char* name : {"NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="})
    if (std::strncmp(entry, name, std::strlen(name)) == 0)
      return true;
  return false;
}

constexpr size_t stderr_tail_lines = 20;

void close_fd(int& fd) {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

void set_nonblocking(int fd) {
  auto flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

std::once_flag sigpipe_once;

/// One process I/O thread at a time may spin (reply_spin): a sequential
/// caller needs one, and more would take the cores from the workers.
std::atomic<bool> spinning{false};

} // namespace

char process_state(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string line;
  if (!std::getline(in, line))
    return 0;
  // The name in parentheses may hold anything, ')' included.
  auto paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 >= line.size())
    return 0;
  return line[paren + 2];
}

std::string exit_status::describe() const {
  if (signal != 0) {
    auto name = sigabbrev_np(signal);
    return "killed by signal " + std::to_string(signal) + " (SIG"
           + (name ? name : "?") + ")";
  }
  return "exit code " + std::to_string(code);
}

python_process::python_process(process_options opts, process_callbacks cbs)
  : opts_(std::move(opts)), cbs_(std::move(cbs)) {
  // nop
}

python_process::~python_process() {
  // Only reached once the I/O thread has finished (it holds a reference), but
  // possibly on that very thread, which cannot join itself.
  if (thread_.joinable()) {
    if (thread_.get_id() == std::this_thread::get_id())
      thread_.detach();
    else
      thread_.join();
  }
  close_fd(wake_fd_);
  close_fd(control_fd_);
}

std::shared_ptr<python_process> python_process::start(process_options opts,
                                                      process_callbacks cbs,
                                                      std::string& error) {
  std::call_once(sigpipe_once, [] { ::signal(SIGPIPE, SIG_IGN); });
  std::shared_ptr<python_process> self{new python_process(std::move(opts), std::move(cbs))};
  std::promise<std::string> started;
  auto result = started.get_future();
  // The thread keeps its object alive until it ends, so that an owner that
  // lets go from inside a callback cannot pull the object from under it.
  self->thread_ = std::thread{[self, &started]() mutable {
    self->run(&started);
    self = nullptr;
  }};
  error = result.get();
  if (!error.empty()) {
    self->thread_.join();
    return nullptr;
  }
  return self;
}

std::string python_process::spawn() {
  int req[2] = {-1, -1};
  int rep[2] = {-1, -1};
  int out[2] = {-1, -1};
  int err[2] = {-1, -1};
  int status[2] = {-1, -1};
  auto fail = [&](const char* what) {
    auto msg = std::string{what} + ": " + std::strerror(errno);
    for (int* p : {req, rep, out, err, status}) {
      close_fd(p[0]);
      close_fd(p[1]);
    }
    return msg;
  };
  if (pipe2(req, O_CLOEXEC) != 0 || pipe2(rep, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0
      || pipe2(err, O_CLOEXEC) != 0 || pipe2(status, O_CLOEXEC) != 0)
    return fail("cannot create pipes");
  int ctl[2] = {-1, -1};
  if ((opts_.control_socket || opts_.worker_control)
      && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) != 0)
    return fail("cannot create the control socket");
  if (opts_.worker_control && opts_.shared_ring_size > 0 && !to_child_) {
    // Without rings the worker still works, by pipe only.
    std::string why;
    to_child_ = shared_ring::create(opts_.shared_ring_size, "pyvisor-to-worker", why);
    if (to_child_)
      from_child_ = shared_ring::create(opts_.shared_ring_size, "pyvisor-from-worker", why);
    if (!from_child_) {
      to_child_.reset();
      log().warn("[{}] no shared memory ({}): large values go by pipe", opts_.tag, why);
    }
  }
  int ring_in = to_child_ ? to_child_->fd() : -1;
  int ring_out = from_child_ ? from_child_->fd() : -1;
  if (opts_.launcher) {
    close_fd(status[0]);
    close_fd(status[1]);
    control_fd_ = ctl[0];
    return launch(req, rep, out, err, ctl[1]);
  }
  // Everything the child needs is prepared before fork: between fork and exec
  // only async-signal-safe calls are allowed in a multi-threaded process.
  std::vector<std::string> argv_store;
  argv_store.push_back(opts_.python);
  argv_store.insert(argv_store.end(), opts_.args.begin(), opts_.args.end());
  std::vector<char*> argv;
  for (auto& a : argv_store)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e)
    if (!owned_by_service_manager(*e))
      envp.push_back(*e);
  std::vector<std::string> env_store = opts_.env;
  for (auto& e : env_store)
    envp.push_back(e.data());
  envp.push_back(nullptr);
  auto parent = getpid();
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  auto pid = fork();
  if (pid < 0) {
    close_fd(devnull);
    return fail("fork failed");
  }
  if (pid == 0) {
    // Child. Die with the forking thread; catch a parent that died already.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(127);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    // Signals meant for the node's process group (Ctrl-C in a terminal, a
    // supervisor signalling the group) must not reach the workers: the node
    // decides when they stop. Own process group, and SIGINT ignored (kept
    // across exec) for good measure.
    setpgid(0, 0);
    ::signal(SIGINT, SIG_IGN);
    // Move the fds above the targets first: a pipe end may already sit at 3
    // or 4, and dup2 onto itself would keep O_CLOEXEC.
    int fds[8] = {devnull, out[1], err[1], req[0], rep[1], ctl[1], ring_in, ring_out};
    int count = ctl[1] < 0 ? 5 : ring_in < 0 ? 6 : 8;
    for (int i = 0; i < count; ++i)
      fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 10);
    for (int target = 0; target < count; ++target)
      if (dup2(fds[target], target) < 0)
        _exit(126);
    // Nothing else of the host (sockets, other workers' pipes) leaks into the
    // child; the status pipe is O_CLOEXEC and closes itself on exec.
    close_range(static_cast<unsigned>(count), ~0U, CLOSE_RANGE_CLOEXEC);
    execvpe(argv[0], argv.data(), envp.data());
    int e = errno;
    [[maybe_unused]] auto n = write(status[1], &e, sizeof(e));
    _exit(127);
  }
  close_fd(devnull);
  close_fd(status[1]);
  close_fd(ctl[1]);
  control_fd_ = ctl[0];
  close_fd(req[0]);
  close_fd(rep[1]);
  close_fd(out[1]);
  close_fd(err[1]);
  int child_errno = 0;
  ssize_t n;
  do {
    n = read(status[0], &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  close_fd(status[0]);
  if (n == sizeof(child_errno)) {
    int st;
    waitpid(pid, &st, 0);
    for (int* fd : {&req[1], &rep[0], &out[0], &err[0], &control_fd_})
      close_fd(*fd);
    return "cannot execute Python interpreter '" + opts_.python
           + "': " + std::strerror(child_errno);
  }
  {
    std::lock_guard<std::mutex> guard{mtx_};
    pid_ = pid;
    // glibc 2.36's <sys/pidfd.h> lacks C linkage for C++, so call the kernel
    // directly; without pidfd support the loop falls back to polling waitpid.
    pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  }
  adopt(req[1], rep[0], out[0], err[0]);
  return {};
}

void python_process::adopt(int req_w, int rep_r, int out_r, int err_r) {
  for (int fd : {req_w, rep_r, out_r, err_r})
    set_nonblocking(fd);
  if (opts_.worker_control && control_fd_ >= 0)
    set_nonblocking(control_fd_);
  rep_r_ = rep_r;
  out_r_ = out_r;
  err_r_ = err_r;
  // send() may run meanwhile (a launched child is created after start()
  // returned): what it queued is written from now on.
  std::lock_guard<std::mutex> guard{mtx_};
  req_w_ = req_w;
  pipes_ready_ = true;
}

std::string python_process::launch(int req[2], int rep[2], int out[2], int err[2],
                                   int ctl_child) {
  child_fds fds{req[0], rep[1], out[1], err[1], ctl_child};
  if (ctl_child >= 0 && to_child_) {
    fds.shared_in = to_child_->fd();
    fds.shared_out = from_child_->fd();
  }
  auto cancelled = [this] {
    std::lock_guard<std::mutex> guard{mtx_};
    return closing_;
  };
  auto child = opts_.launcher->launch(fds, cancelled, launch_error_);
  // The child holds its ends now (or never will): the host's copies go.
  for (int* fd : {&req[0], &rep[1], &out[1], &err[1], &ctl_child})
    close_fd(*fd);
  if (!child) {
    for (int* fd : {&req[1], &rep[0], &out[0], &err[0], &control_fd_})
      close_fd(*fd);
    if (launch_error_.message.empty())
      launch_error_.message = "the worker could not be created";
    return launch_error_.message;
  }
  {
    std::lock_guard<std::mutex> guard{mtx_};
    pid_ = child->pid;
    pidfd_ = child->pidfd;
  }
  adopt(req[1], rep[0], out[0], err[0]);
  return {};
}

std::optional<exit_status> python_process::try_reap(bool pidfd_fired) {
  std::optional<exit_status> result;
  // With a pidfd, nothing to reap until it fired (no syscall per wake-up).
  if (pidfd_ >= 0 && !pidfd_fired)
    return result;
  std::lock_guard<std::mutex> guard{mtx_};
  if (opts_.launcher) {
    // Not this host's child: its creator reaped it and tells how it ended.
    result = opts_.launcher->exit_of(pid_);
  } else {
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) != pid_)
      return result;
    result.emplace();
    if (WIFEXITED(st))
      result->code = WEXITSTATUS(st);
    else if (WIFSIGNALED(st))
      result->signal = WTERMSIG(st);
  }
  if (result)
    reaped_ = true;
  return result;
}

int python_process::take_control_fd() {
  auto fd = control_fd_;
  control_fd_ = -1;
  return fd;
}

void python_process::run(std::promise<std::string>* started) {
  // Named for top -H and perf (it would inherit its creator's name, a CAF
  // scheduler thread's).
  pthread_setname_np(pthread_self(), "pyvisor.io");
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (opts_.launcher) {
    // Creating the child may wait for its creator (a template that is
    // still starting): the owner is not kept waiting for that.
    started->set_value({});
    if (auto error = spawn(); !error.empty()) {
      // Failed before the launcher was asked (no pipes: descriptors ran
      // out): the cause is ours, not the launcher's.
      if (launch_error_.message.empty())
        launch_error_.message = std::move(error);
      if (cbs_.on_start_failed)
        cbs_.on_start_failed(launch_error_);
      return;
    }
  } else {
    auto error = spawn();
    auto ok = error.empty();
    started->set_value(std::move(error));
    if (!ok) {
      close_fd(wake_fd_);
      return;
    }
  }
  wire::frame_reader reader{opts_.max_frame_size};
  uint64_t frames_received = 0;
  auto last_reply = std::chrono::steady_clock::time_point{};
  // Until replies came, spinning is not known to pay.
  std::chrono::steady_clock::duration think_time = std::chrono::seconds(1);
  uint64_t one_at_a_time = 0;
  bool protocol_broken = false;
  line_logger out_lines;
  line_logger err_lines;
  using clock = std::chrono::steady_clock;
  clock::time_point term_at = clock::time_point::max();
  clock::time_point kill_at = clock::time_point::max();
  bool term_sent = false;
  // A launched child's pidfd fired: its exit status comes from its creator.
  bool child_ended = false;
  clock::time_point ended_at;
  auto log_out = [this](const std::string& line) {
    log().info("[{} pid {}] stdout: {}", opts_.tag, pid_.load(), line);
  };
  auto log_err = [this](const std::string& line) {
    if (auto record = python_log_record(line))
      log().log(record->level, "[{} pid {}] {}: {}", opts_.tag, pid_.load(), record->logger,
                record->text);
    else
      log().warn("[{} pid {}] stderr: {}", opts_.tag, pid_.load(), line);
    std::lock_guard<std::mutex> guard{mtx_};
    stderr_tail_.push_back(line);
    if (stderr_tail_.size() > stderr_tail_lines)
      stderr_tail_.pop_front();
  };
  char buf[65536];
  // Reads what is available on `fd`; returns false on EOF or error.
  auto drain = [&](int& fd, auto&& consume) {
    for (;;) {
      auto n = read(fd, buf, sizeof(buf));
      if (n > 0) {
        consume(buf, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return true;
      close_fd(fd);
      return false;
    }
  };
  auto on_reply_bytes = [&](const char* data, size_t size) {
    if (protocol_broken)
      return;
    std::vector<wire::frame> frames;
    std::string shared_error;
    auto ok = reader.feed(data, size, [&](wire::frame&& f) {
      if (!shared_error.empty())
        return;
      if (f.shared) {
        // Copied out before anything looks at it: the worker could change
        // the bytes while they are checked.
        if (!from_child_)
          shared_error = "the worker named shared memory it was not given";
        else if (f.shared_len > opts_.max_frame_size)
          shared_error = "a shared value of " + std::to_string(f.shared_len)
                         + " bytes exceeds the frame limit of "
                         + std::to_string(opts_.max_frame_size) + " bytes";
        else if (!from_child_->take(f.shared_pos, f.shared_len, f.result))
          shared_error = "the worker named shared memory outside what it may have written";
        else if (!wire::is_single_msgpack_value(f.result.data(), f.result.size()))
          shared_error = "a shared value is not one msgpack value";
        if (!shared_error.empty())
          return;
      }
      if (f.type == wire::frame_type::reply) {
        ++frames_received;
        // How long the caller took to send the next request after the
        // previous reply (0 when it had sent it before), as a moving
        // average (weight 1/4), and how many replies in a row left nothing
        // owed (requests one at a time, not a pipelined load).
        auto sent = clock::time_point{clock::duration{last_send_.load(std::memory_order_relaxed)}};
        auto think = sent > last_reply ? sent - last_reply : clock::duration{0};
        think_time = (3 * think_time + think) / 4;
        last_reply = clock::now();
        if (frames_sent_.load(std::memory_order_relaxed) == frames_received)
          ++one_at_a_time;
        else
          one_at_a_time = 0;
      }
      frames.push_back(std::move(f));
    });
    // Valid frames that preceded a broken one are still delivered first.
    if (!frames.empty() && cbs_.on_frames)
      cbs_.on_frames(std::move(frames));
    if (!ok || !shared_error.empty()) {
      protocol_broken = true;
      if (cbs_.on_protocol_error)
        cbs_.on_protocol_error(ok ? shared_error : reader.error());
    }
  };
  auto on_out = [&](const char* d, size_t n) { out_lines.feed(d, n, log_out); };
  auto on_err = [&](const char* d, size_t n) { err_lines.feed(d, n, log_err); };
  // A worker's control socket: each packet is a message (its answer to a
  // revoke) or a piece of a stack dump.
  int ctl_r = opts_.worker_control ? control_fd_ : -1;
  auto drain_control = [&] {
    while (ctl_r >= 0) {
      auto n = recv(ctl_r, buf, sizeof(buf), MSG_DONTWAIT);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
          ctl_r = -1; // the child's end is gone; the fd is closed with the object
        return;
      }
      auto size = static_cast<size_t>(n);
      if (wire::is_control_message(buf, size)) {
        if (auto ids = wire::decode_revoked(buf, size); ids && cbs_.on_revoked)
          cbs_.on_revoked(std::move(*ids));
        continue;
      }
      std::lock_guard<std::mutex> guard{mtx_};
      constexpr size_t max_dump = size_t{64} << 10;
      if (stack_dump_.size() < max_dump)
        stack_dump_.append(buf, std::min(size, max_dump - stack_dump_.size()));
    }
  };
  // Replies first: every frame the child wrote before dying is delivered
  // before on_exit. The control socket before the replies: a revoked
  // request is settled before any reply that came after the revoke.
  auto drain_pipes = [&] {
    drain_control();
    if (rep_r_ >= 0)
      drain(rep_r_, on_reply_bytes);
    if (out_r_ >= 0)
      drain(out_r_, on_out);
    if (err_r_ >= 0)
      drain(err_r_, on_err);
  };
  for (;;) {
    bool closing;
    bool want_write;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      closing = closing_;
      flush_locked();
      if (stop_requested_ && term_at == clock::time_point::max()) {
        term_at = clock::now() + stop_grace_;
        kill_at = term_at + stop_grace_;
      }
      // Closing the request pipe once everything queued is written gives
      // the worker EOF after it has read (and answered) all requests.
      if (stop_requested_ && outbox_.empty())
        close_fd(req_w_);
      want_write = !outbox_.empty() && req_w_ >= 0;
    }
    if (closing) {
      signal(SIGKILL);
      kill_at = clock::now();
    }
    auto now = clock::now();
    if (now >= term_at && !term_sent) {
      signal(SIGTERM);
      term_sent = true;
    }
    if (now >= kill_at)
      signal(SIGKILL);
    pollfd fds[7];
    nfds_t nfds = 0;
    auto add = [&](int fd, short events) {
      if (fd >= 0)
        fds[nfds++] = pollfd{fd, events, 0};
    };
    add(wake_fd_, POLLIN);
    nfds_t pidfd_at = nfds;
    if (!child_ended)
      add(pidfd_, POLLIN);
    bool polls_pidfd = nfds > pidfd_at;
    add(rep_r_, POLLIN);
    add(out_r_, POLLIN);
    add(err_r_, POLLIN);
    add(ctl_r, POLLIN);
    int write_fd = -1;
    if (want_write) {
      std::lock_guard<std::mutex> guard{mtx_};
      write_fd = req_w_;
    }
    if (write_fd >= 0)
      add(write_fd, POLLOUT);
    int timeout = -1;
    auto next = term_sent ? kill_at : std::min(term_at, kill_at);
    if (next != clock::time_point::max() && next > now)
      timeout = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count() + 1);
    else if (next <= now)
      timeout = 10;
    if (pidfd_ < 0 && rep_r_ < 0)
      timeout = 10; // no pidfd: poll waitpid below
    else if (child_ended)
      timeout = 1; // a launched child ended: its status is a few ms away
    // Busy-poll briefly after a reply while at most one request is owed
    // and callers have lately sent their next request sooner than the spin
    // lasts: a caller that sends its next request as soon as it has the
    // answer gets that reply read without this thread going to sleep and
    // being woken (a thread hand-off on its critical path). Where it would
    // not pay, it is not spent: under a pipelined load (several owed) the
    // thread sleeps as usual, leaving the cores to the workers; a caller
    // that thinks longer than the spin never makes it spin; an idle worker
    // costs nothing (the spin ends reply_spin after the last reply).
    int rc = 0;
    if (opts_.reply_spin.count() > 0 && timeout != 0 && think_time < opts_.reply_spin
        && one_at_a_time >= 4 && frames_sent_.load(std::memory_order_relaxed) <= frames_received + 1
        && clock::now() - last_reply < opts_.reply_spin && !spinning.exchange(true)) {
      auto until = clock::now() + opts_.reply_spin;
      do {
        rc = poll(fds, nfds, 0);
        if (rc == 0)
          sched_yield();
      } while (rc == 0 && clock::now() < until);
      spinning.store(false);
    }
    if (rc == 0)
      rc = poll(fds, nfds, timeout);
    if (rc < 0 && errno != EINTR)
      break;
    // The pidfd's state as of this poll, before the pipes are drained: a
    // child that ended then has written all it ever will.
    bool pidfd_fired = child_ended || (rc > 0 && polls_pidfd && fds[pidfd_at].revents != 0);
    uint64_t ignored;
    [[maybe_unused]] auto n = read(wake_fd_, &ignored, sizeof(ignored));
    // Order matters: read the pipes before looking at the pidfd.
    drain_pipes();
    {
      std::lock_guard<std::mutex> guard{mtx_};
      flush_locked();
    }
    // Has the child exited?
    auto status = try_reap(pidfd_fired);
    if (!status && opts_.launcher && pidfd_ >= 0) {
      if (!child_ended) {
        child_ended = pidfd_fired;
        ended_at = clock::now();
      } else if (clock::now() - ended_at > std::chrono::seconds(2)) {
        // Its creator never told (a hung template): it is gone all the same.
        log().warn("[{} pid {}] ended, but its exit status never arrived", opts_.tag, pid_.load());
        status = exit_status{-1, SIGKILL};
        std::lock_guard<std::mutex> guard{mtx_};
        reaped_ = true;
      }
    }
    if (status) {
      // Whatever user code started in the worker's process group (os.fork,
      // subprocess, multiprocessing) ends with the worker. Processes that
      // left the group (setsid) are not covered.
      ::kill(-pid_, SIGKILL);
      // Collect the last bytes still sitting in the pipes.
      drain_pipes();
      out_lines.flush(log_out);
      err_lines.flush(log_err);
      if (cbs_.on_exit)
        cbs_.on_exit(*status);
      break;
    }
  }
  {
    std::lock_guard<std::mutex> guard{mtx_};
    close_fd(req_w_);
  }
  for (int* fd : {&rep_r_, &out_r_, &err_r_})
    close_fd(*fd);
  std::lock_guard<std::mutex> guard{mtx_};
  close_fd(pidfd_);
}

void python_process::flush_locked() {
  if (!pipes_ready_)
    return; // not created yet: kept until it is
  while (!outbox_.empty()) {
    if (req_w_ < 0) {
      outbox_.clear();
      front_written_ = 0;
      return;
    }
    auto& front = outbox_.front();
    auto w = write(req_w_, front.data() + front_written_, front.size() - front_written_);
    if (w > 0) {
      front_written_ += static_cast<size_t>(w);
      if (front_written_ == front.size()) {
        outbox_.pop_front();
        front_written_ = 0;
      }
      continue;
    }
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return; // the I/O thread finishes once the pipe has room
    // EPIPE: the child closed its end; its exit will be reported.
    close_fd(req_w_);
  }
}

void python_process::wake() {
  uint64_t one = 1;
  if (wake_fd_ >= 0)
    [[maybe_unused]] auto n = write(wake_fd_, &one, sizeof(one));
}

void python_process::send(std::vector<char> bytes) {
  bool pending;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (stop_requested_ || reaped_)
      return;
    outbox_.push_back(std::move(bytes));
    frames_sent_.fetch_add(1, std::memory_order_relaxed);
    last_send_.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                     std::memory_order_relaxed);
    // Write right away from the caller's thread (the fd is non-blocking):
    // waking the I/O thread for every request would cost a thread hop.
    flush_locked();
    pending = !outbox_.empty();
  }
  if (pending)
    wake();
}

char* python_process::reserve_shared(size_t len, wire::shared_ref& ref) {
  if (!to_child_)
    return nullptr;
  auto pos = to_child_->reserve(len);
  if (pos < 0)
    return nullptr;
  ref.pos = static_cast<uint64_t>(pos);
  ref.len = len;
  return to_child_->data(ref.pos);
}

void python_process::stop(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (stop_requested_)
      return;
    stop_requested_ = true;
    stop_grace_ = grace;
  }
  wake();
}

void python_process::signal(int sig) {
  std::lock_guard<std::mutex> guard{mtx_};
  signal_locked(sig);
}

void python_process::signal_locked(int sig) {
  if (reaped_)
    return;
  // Through the pidfd when there is one: a launched child is reaped by its
  // creator, so its pid alone could name a recycled process.
  if (pidfd_ >= 0)
    syscall(SYS_pidfd_send_signal, pidfd_, sig, nullptr, 0);
  else if (pid_ > 0)
    ::kill(pid_, sig);
}

bool python_process::send_control(const std::vector<char>& msg, int sig) {
  std::lock_guard<std::mutex> guard{mtx_};
  if (reaped_ || !opts_.worker_control || control_fd_ < 0)
    return false;
  ssize_t n;
  do {
    n = ::send(control_fd_, msg.data(), msg.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(msg.size()))
    return false;
  if (sig != 0)
    signal_locked(sig);
  return true;
}

std::string python_process::take_stack_dump() {
  std::lock_guard<std::mutex> guard{mtx_};
  return std::exchange(stack_dump_, std::string{});
}

void python_process::close() {
  if (!thread_.joinable())
    return;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    closing_ = true;
  }
  wake();
  if (thread_.get_id() == std::this_thread::get_id()) {
    // Called from a callback: the loop sees closing_ and ends by itself.
    return;
  }
  thread_.join();
  cbs_ = process_callbacks{};
}

std::string python_process::stderr_tail() const {
  std::lock_guard<std::mutex> guard{mtx_};
  std::string result;
  for (const auto& line : stderr_tail_) {
    result += line;
    result += '\n';
  }
  return result;
}

} // namespace pyvisor

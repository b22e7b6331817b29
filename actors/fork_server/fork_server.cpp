#include "actors/fork_server/fork_server.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>

#include <msgpack.hpp>

namespace pyvisor {

namespace {

// Sends `body` with `fds` attached (SCM_RIGHTS) on a SOCK_SEQPACKET socket.
bool send_with_fds(int sock, const std::vector<char>& body, const int* fds, size_t n) {
  iovec iov{const_cast<char*>(body.data()), body.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 7)] = {};
  if (n > 0) {
    msg.msg_control = ctrl;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
    auto* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * n);
    std::memcpy(CMSG_DATA(cm), fds, sizeof(int) * n);
  }
  ssize_t rc;
  do {
    rc = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (rc < 0 && errno == EINTR);
  return rc == static_cast<ssize_t>(body.size());
}

// Receives one message and the descriptors attached to it (at most one is
// expected; any more are closed). Returns the message size, 0 at EOF, -1 on
// error.
ssize_t recv_with_fd(int sock, char* buf, size_t size, int& fd) {
  iovec iov{buf, size};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 4)] = {};
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof(ctrl);
  ssize_t rc;
  do {
    rc = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (rc < 0 && errno == EINTR);
  fd = -1;
  for (auto* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
      continue;
    auto count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int x;
      std::memcpy(&x, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
      if (fd < 0)
        fd = x;
      else
        ::close(x);
    }
  }
  return rc;
}

} // namespace

// -- fork_server ----------------------------------------------------------------

fork_server::fork_server(int control_fd, stall_handler on_stall)
  : control_fd_(control_fd), on_stall_(std::move(on_stall)) {
  // nop
}

fork_server::~fork_server() {
  if (control_fd_ >= 0)
    ::close(control_fd_);
}

std::optional<launched_child> fork_server::fork(const child_fds& fds,
                                               std::chrono::milliseconds timeout,
                                               std::string& error) {
  std::lock_guard<std::mutex> guard{fork_mtx_};
  auto id = next_id_++;
  std::vector<char> body;
  {
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk{buf};
    pk.pack_map(1);
    pk.pack(std::string{"id"});
    pk.pack(id);
    body.assign(buf.data(), buf.data() + buf.size());
  }
  // The worker's control socket, when it has one, goes as a fifth, and
  // its two shared rings, when it has them, as a sixth and seventh.
  int attached[7] = {fds.request, fds.reply, fds.out,       fds.err,
                     fds.control, fds.shared_in, fds.shared_out};
  int count = fds.control < 0 ? 4 : fds.shared_in < 0 ? 5 : 7;
  if (!send_with_fds(control_fd_, body, attached, count)) {
    error = std::string{"cannot reach the fork-server template: "} + std::strerror(errno);
    return std::nullopt;
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                  deadline - std::chrono::steady_clock::now())
                  .count();
    if (left <= 0) {
      error = "the fork-server template did not fork within "
              + std::to_string(timeout.count()) + " ms";
      if (on_stall_)
        on_stall_(error);
      return std::nullopt;
    }
    pollfd p{control_fd_, POLLIN, 0};
    auto rc = poll(&p, 1, static_cast<int>(left));
    if (rc < 0 && errno == EINTR)
      continue;
    if (rc <= 0)
      continue; // the deadline check above ends it
    char buf[1024];
    int pidfd = -1;
    auto n = recv_with_fd(control_fd_, buf, sizeof(buf), pidfd);
    if (n <= 0) {
      error = "the fork-server template is gone";
      return std::nullopt;
    }
    // A late reply to an earlier request that timed out: its worker has no
    // owner here; the template reaps it once it sees EOF on its pipes.
    uint64_t reply_id = 0;
    launched_child result;
    std::string reply_error;
    try {
      auto oh = msgpack::unpack(buf, static_cast<size_t>(n));
      auto fields = oh.get().as<std::map<std::string, msgpack::object>>();
      reply_id = fields.at("id").as<uint64_t>();
      if (auto e = fields.find("error"); e != fields.end())
        reply_error = e->second.as<std::string>();
      else
        result.pid = fields.at("pid").as<pid_t>();
    } catch (const std::exception& e) {
      reply_error = std::string{"unreadable reply from the fork-server template: "} + e.what();
    }
    if (reply_id != id && reply_error.empty()) {
      if (pidfd >= 0) {
        // Its worker would wait on a pipe nobody writes: end it.
        syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
        ::close(pidfd);
      }
      continue;
    }
    if (!reply_error.empty()) {
      if (pidfd >= 0)
        ::close(pidfd);
      error = reply_error;
      return std::nullopt;
    }
    result.pidfd = pidfd;
    return result;
  }
}

void fork_server::exited(pid_t pid, exit_status status) {
  std::lock_guard<std::mutex> guard{mtx_};
  exits_[pid] = status;
}

void fork_server::gone() {
  std::lock_guard<std::mutex> guard{mtx_};
  gone_ = true;
}

std::optional<exit_status> fork_server::exit_of(pid_t pid) {
  std::lock_guard<std::mutex> guard{mtx_};
  if (auto i = exits_.find(pid); i != exits_.end()) {
    auto result = i->second;
    exits_.erase(i);
    return result;
  }
  if (gone_)
    return exit_status{-1, SIGKILL};
  return std::nullopt;
}

// -- fork_channel ---------------------------------------------------------------

void fork_channel::attach(std::shared_ptr<fork_server> server, int64_t pid) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    current_ = std::move(server);
    current_pid_ = pid;
    ++hellos_;
    failure_.reset();
  }
  changed_.notify_all();
}

void fork_channel::detach(const fork_server* server) {
  std::lock_guard<std::mutex> guard{mtx_};
  if (current_.get() == server) {
    current_ = nullptr;
    current_pid_ = 0;
  }
}

fork_channel::template_view fork_channel::view() {
  std::lock_guard<std::mutex> guard{mtx_};
  return {current_pid_, hellos_};
}

void fork_channel::fail(wire::remote_error err) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    current_ = nullptr;
    current_pid_ = 0;
    failure_ = std::move(err);
  }
  changed_.notify_all();
}

void fork_channel::close() {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    closed_ = true;
    current_ = nullptr;
    current_pid_ = 0;
  }
  changed_.notify_all();
}

std::optional<launched_child> fork_channel::fork(const child_fds& fds,
                                                std::chrono::steady_clock::time_point deadline,
                                                const std::function<bool()>& cancelled,
                                                std::shared_ptr<fork_server>& from,
                                                wire::remote_error& error) {
  std::shared_ptr<fork_server> server;
  {
    std::unique_lock<std::mutex> guard{mtx_};
    for (;;) {
      if (closed_) {
        error.code = "shutting_down";
        error.message = "the pool is stopping";
        return std::nullopt;
      }
      if (failure_) {
        error = *failure_;
        return std::nullopt;
      }
      if (current_) {
        server = current_;
        break;
      }
      if (cancelled && cancelled()) {
        error.code = "worker_crashed";
        error.message = "stopped while waiting for the fork-server template";
        return std::nullopt;
      }
      auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        error.code = "timeout";
        error.message = "no fork-server template became ready within the start-up timeout";
        return std::nullopt;
      }
      changed_.wait_until(guard, std::min(deadline, now + std::chrono::milliseconds(20)));
    }
  }
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
    deadline - std::chrono::steady_clock::now());
  std::string why;
  auto result = server->fork(fds, std::max(left, std::chrono::milliseconds(100)), why);
  if (!result) {
    error.code = "worker_crashed";
    error.message = why;
    return std::nullopt;
  }
  from = std::move(server);
  return result;
}

} // namespace pyvisor

#include "node/rpc_sockets.hpp"

#include <cerrno>
#include <cstring>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace pyvisor {

namespace {

std::string errno_text() {
  return std::strerror(errno);
}

/// Whether something accepts connections on the socket file at `path`.
bool someone_listens(const sockaddr_un& addr) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return false;
  bool live = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return live;
}

} // namespace

int listen_unix(const std::string& path, unsigned mode, std::string& error) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    error = "rpc.unix-path must be 1 to " + std::to_string(sizeof(addr.sun_path) - 1)
            + " characters long";
    return -1;
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      error = "rpc.unix-path=" + path + " exists and is not a socket";
      return -1;
    }
    if (someone_listens(addr)) {
      error = "rpc.unix-path=" + path + ": another process listens on it";
      return -1;
    }
    ::unlink(path.c_str()); // left by a node that is gone
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    error = "cannot create a Unix socket: " + errno_text();
    return -1;
  }
  auto fail = [&](const char* what) {
    error = std::string{"rpc.unix-path="} + path + ": " + what + ": " + errno_text();
    ::close(fd);
    return -1;
  };
  // The file gets the mode before the socket listens: until listen(), a
  // connect() is refused whatever the file's mode.
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0)
    return fail("cannot bind");
  if (::chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) {
    ::unlink(path.c_str());
    return fail("cannot set its mode");
  }
  if (::listen(fd, SOMAXCONN) != 0) {
    ::unlink(path.c_str());
    return fail("cannot listen");
  }
  return fd;
}

std::string describe_peer(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return "a peer that is gone";
  char host[INET6_ADDRSTRLEN] = "?";
  switch (ss.ss_family) {
    case AF_INET: {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
      return std::string{host} + ":" + std::to_string(ntohs(a->sin_port));
    }
    case AF_INET6: {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
      return "[" + std::string{host} + "]:" + std::to_string(ntohs(a->sin6_port));
    }
    case AF_UNIX: {
      ucred cred{};
      socklen_t n = sizeof(cred);
      if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &n) != 0)
        return "unix peer (credentials unknown)";
      return "unix peer uid=" + std::to_string(cred.uid) + " gid=" + std::to_string(cred.gid)
             + " pid=" + std::to_string(cred.pid);
    }
    default:
      return "a peer of address family " + std::to_string(ss.ss_family);
  }
}

} // namespace pyvisor

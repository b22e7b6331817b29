// Sockets of the RPC endpoint that CAF 0.17 cannot make: the Unix domain
// listening socket (CAF's doorman accepts on any stream socket it is given,
// but creates only TCP ones), and a peer's description for log lines.
// Plain POSIX, no CAF.
//
// The Unix socket's file is created with the requested mode before the
// socket listens, so no connection can come in under a wider mode. A file
// already at the path is replaced only if it is a socket nobody listens on
// (a node that died); a live socket or any other file is an error.

#pragma once

#include <string>

namespace pyvisor {

/// Listens on a Unix domain socket at `path` with file mode `mode`; returns
/// its descriptor (non-blocking, close-on-exec), or -1 and `error`.
int listen_unix(const std::string& path, unsigned mode, std::string& error);

/// The peer of a connected socket, for log lines: "ADDRESS:PORT" for TCP,
/// "unix peer uid=U gid=G pid=P" (SO_PEERCRED) for a Unix socket.
std::string describe_peer(int fd);

} // namespace pyvisor

// The network gateway: MessagePack-RPC over TCP (plaintext or TLS) and a
// Unix domain socket in front of a pool.
//
// One CAF broker accepts connections; each connection gets its own broker,
// so a slow or stalled client never blocks another. Requests
// ([0, msgid, method, params]) are dispatched as they arrive and answered as
// they complete ([1, msgid, error, result]), in any order; notifications
// ([2, method, params]) run without a response. Methods:
//   ping                        -> "pong" (unavailable while the pool cannot serve)
//   execute [cmd, args(, opts)] -> the command's result; opts: session (str),
//                                  timeout_ms (int), idempotent (bool)
//   cancel [msgid]              -> true (as a notification: nothing); cancels
//                                  that request of this connection
//   session.end [id]            -> true
//   stats                       -> map (workers, sessions, queue, replies, ...)
//   auth [token]                -> true; with a token file, the first call of
//                                  every connection (anything before it, or
//                                  a wrong token, is answered
//                                  `unauthenticated` and the connection closed)
// Errors are maps {code, message} plus `details` (a Python traceback) and
// `type` where useful; code is a runtime error code, or unknown_method /
// bad_request for RPC misuse.
//
// Input is framed by a streaming parser (rpc_framer): how TCP cut it never
// matters, and each byte is parsed once. When a connection's input cannot go
// on - not msgpack, a message over max_message_size, a message that did not
// complete within message_timeout, the node's input buffers full - the node
// answers the message's msgid (when it can be read) with a clear error,
// stops reading, delivers every reply still owed on that connection, then
// closes it. Nothing already accepted is dropped; the same holds when a
// client half-closes after sending. Only a client that leaves more than
// max_pending_output bytes of responses unread is cut off at once.
//
// Admission: a connection's TLS handshake and its `auth` (when asked for)
// must complete within handshake_timeout. A refused handshake (no client
// certificate, a foreign one, not TLS at all) is logged with the peer
// (address, or uid/pid on the Unix socket) and the reason, rate-limited.
// While connections are still being admitted, a new one at max_connections
// closes the oldest of them instead of being refused: clients that never
// finish a handshake cannot lock out those that do.
//
// Limits that protect the node from any one client: max_connections (more
// are accepted and closed at once, logged; never a busy accept loop),
// max_buffered_input across all connections, message_timeout.
// Command arguments are cut out of the RPC message as raw bytes and results
// are spliced into the response: neither is decoded and re-encoded here.

#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "caf/actor.hpp"
#include "caf/expected.hpp"
#include "caf/fwd.hpp"
#include "caf/timespan.hpp"

#include "node/rpc_tls.hpp"
#include "pyvisor/pool.hpp"

namespace pyvisor {

/// What the gateway counts, for the node's metrics (node/metrics.hpp). The
/// gateway's brokers write, a metrics scrape reads from another thread.
struct gateway_counters {
  /// Connections served now.
  std::atomic<uint64_t> open{0};
  /// Connections accepted, refused ones included.
  std::atomic<uint64_t> accepted{0};
  /// Accepted and closed at once: max_connections reached or draining.
  std::atomic<uint64_t> refused{0};
  /// Closed while being admitted: a failed TLS handshake (no client
  /// certificate, a foreign one, not TLS), no or a wrong token, the
  /// handshake timeout, displaced at max_connections.
  std::atomic<uint64_t> refused_admission{0};
  /// Closed by the node: input it could not go on with (malformed, too
  /// large, too slow, input buffers full) or output the client left unread.
  std::atomic<uint64_t> cut_off{0};
  /// RPC messages taken from all connections (requests and notifications).
  std::atomic<uint64_t> messages{0};
  std::atomic<uint64_t> bytes_received{0};
  std::atomic<uint64_t> bytes_sent{0};
};

struct gateway_config {
  std::string host = "127.0.0.1";
  /// 0 lets the OS pick a free port (see the returned port).
  uint16_t port = 7400;
  size_t max_message_size = size_t{64} << 20;
  /// Response bytes a client may leave unread before the node closes its
  /// connection (a client that never reads must not exhaust the node's memory).
  size_t max_pending_output = size_t{64} << 20;
  /// Response bytes all clients together may leave unread: beyond it, a
  /// connection that leaves any unread gets `overloaded` for new requests
  /// until it reads (clients that read keep being served).
  size_t max_pending_output_total = size_t{256} << 20;
  /// Open connections; more are accepted and closed at once. Each costs two
  /// file descriptors (reading and writing ends, see gateway.cpp), so
  /// spawn_gateway lowers it to what RLIMIT_NOFILE allows, with a warning.
  size_t max_connections = 1024;
  /// Bytes of unfinished messages held across all connections; a
  /// connection whose message would pass it is answered `overloaded`.
  size_t max_buffered_input = size_t{256} << 20;
  /// Time a message may take from its first byte to its last.
  caf::timespan message_timeout = std::chrono::seconds(60);
  /// Where the gateway counts (null: a private set nobody reads).
  std::shared_ptr<gateway_counters> counters;
  /// Listen on TCP (host, port). False only with a Unix socket
  /// (rpc.port=0 and rpc.unix-path set).
  bool tcp = true;
  /// TLS on the TCP endpoint (null: plaintext), loaded by the caller
  /// (tls_server_context::make). The Unix socket is never TLS: its file
  /// mode says who may connect.
  std::shared_ptr<tls_server_context> tls;
  /// A file holding the token every connection must give (`auth [token]`)
  /// before anything else; empty: none asked for. Read at start and again
  /// on reload_token_atom; the token is never logged.
  std::string token_file;
  /// Time a connection has to finish its TLS handshake and its `auth`;
  /// closed after it.
  caf::timespan handshake_timeout = std::chrono::seconds(10);
  /// A Unix domain socket to listen on as well (empty: none), with this
  /// file mode (only its owner and group by default).
  std::string unix_path;
  unsigned unix_mode = 0660;
};

/// Asks the gateway to read its token file again (SIGHUP): answered true,
/// or the reason the old token stays.
using reload_token_atom = caf::atom_constant<caf::atom("gw_reltok")>;

/// Reads a token file: its content without trailing whitespace. The reason
/// (naming rpc.token-file, never quoting the file) when it is unreadable,
/// empty or larger than 4 KiB.
caf::expected<std::string> read_token_file(const std::string& path);

/// Asks the gateway to stop accepting, refuse new requests with
/// shutting_down, and answer (true) once no request is in flight.
using drain_atom = caf::atom_constant<caf::atom("gw_drain")>;

/// Starts the gateway; returns the acceptor actor and the bound TCP port (0
/// without TCP), or the reason binding (or reading the token) failed.
caf::expected<std::pair<caf::actor, uint16_t>> spawn_gateway(caf::actor_system& sys,
                                                            pool_actor pool,
                                                            gateway_config cfg);

} // namespace pyvisor

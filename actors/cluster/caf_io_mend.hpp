// The caf-io mend: what CAF 0.17.6's network layer does not do for a port
// that anyone can reach, done where libcaf_io calls out of itself (the
// component and its limits; caf_io_mend.cpp says how). A program gets it by
// linking pyvisor::caf_io_mend (the node does); then, for every connection
// CAF's middleman makes or accepts:
// - a read CAF is told to prepare beyond `max_message_size` (a BASP header
//   announcing its payload: CAF would allocate all of it before reading a
//   byte) ends that connection instead, on published ports and on a front's
//   outgoing connections alike;
// - an accept that finds no descriptor left drains the waiting connection
//   (closed at once) instead of leaving the listening socket readable for
//   CAF's loop to retry without end;
// - a connection whose descriptor falls into the reserve (the last
//   `descriptor_reserve` of the process's limit, kept for workers' pipes, the
//   fork server's sockets and certificate files) is closed at once;
// and for a guarded listener (the node's published port):
// - at most `max_connections` connections are open; more are closed at once;
// - a connection that has not completed its first BASP message (the peer's
//   handshake) within `first_message_timeout` is shut down, which CAF then
//   sees as a closed connection.
// Refusals are counted (counters()) and logged at most every 10 s per kind.
// Everything here is thread-safe; it owns one thread, started by the first
// guard(), that closes late connections.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace pyvisor::caf_io_mend {

/// What a guarded listening port allows.
struct listener_rules {
  /// The configuration section the limits come from, named in log lines
  /// ("publish": publish.max-connections, publish.handshake-timeout).
  std::string name = "publish";
  uint16_t port = 0;
  size_t max_connections = 64;
  std::chrono::milliseconds first_message_timeout{10000};
};

/// Connections refused or ended by the mend since the start.
struct refusals {
  /// Closed at once: the listener had max_connections open.
  uint64_t max_connections = 0;
  /// Closed at once: the accepted descriptor was in the reserve.
  uint64_t descriptor_reserve = 0;
  /// Drained and closed: accept() found no descriptor at all.
  uint64_t no_descriptor = 0;
  /// Shut down: no first message within first_message_timeout.
  uint64_t silent = 0;
  /// Ended: a message announced more than max_message_size.
  uint64_t oversized = 0;
};

/// True when this program's CAF calls pass through the mend (it is linked
/// into the executable and exported).
bool active();

/// The largest message (BASP payload) any CAF connection may announce;
/// 0 allows anything (CAF's own behaviour). `key` names the setting in log
/// lines.
void set_max_message_size(size_t bytes, std::string key = "publish.max-message-size");

/// How many descriptors below the process's limit no accepted connection
/// may take. Reads the limit now: call it after raising the limit.
void set_descriptor_reserve(size_t count);

/// Applies `rules` to the connections accepted on `rules.port` from now on.
void guard(listener_rules rules);

refusals counters();

} // namespace pyvisor::caf_io_mend

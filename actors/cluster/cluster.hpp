// The cluster front: one pool_actor over the pools of several nodes.
//
// spawn_cluster returns a handle with the same typed interface as a local
// pool; behind it a front actor connects to each node's client endpoint
// (client_endpoint.hpp) through CAF's middleman - over TLS when the actor
// system has a certificate - and may include pools of its own process.
// Guarantees:
// - Dispatch goes to the node with the least load against its capacity:
//   (this front's requests in flight there + what the node reported in
//   flight and queued for others) / (ready workers x max_in_flight), among
//   the nodes that are up; never round-robin.
// - A request naming a session binds the session to a node (inside it the
//   node binds it to a worker); later requests go there. Expiry and
//   session_expired are the node's, unchanged; a binding idle for
//   session_retention is forgotten (the node has forgotten it by then too).
// - Node loss is handled like worker loss: a node whose connection drops,
//   or that does not answer its heartbeat (stats every `heartbeat`) within
//   `node_timeout`, is lost. Its in-flight idempotent requests are retried
//   on other nodes (at most max_attempts in all), others fail with
//   worker_crashed, session requests with session_lost; its sessions answer
//   session_lost from then on (for session_retention). The front reconnects
//   with back-off; a node counts as up again only once it answered stats.
// - A request the chosen node answers unavailable, overloaded or
//   shutting_down did not run there: it goes to another node that can take
//   it, if any. With no node up a request fails at once with `unavailable`:
//   never a hang, and every request is answered by its deadline (plus
//   node_timeout when its node falls silent).
// - ready_atom answers once every node was tried once (stats if one is
//   up, else `unavailable`); health_atom is true while a node is up.
// - status_atom: the front's replies and retries, the nodes' workers (ids
//   renumbered), queues, restarts and latency merged, and `nodes`.
// - configure_atom reaches the pools of this process only: a remote node's
//   session timeout is its own to set (its endpoint takes no such message),
//   so with remote peers it fails with bad_request.
// The pools in `pools` stay their owner's: the front never stops them. An
// exit message stops the front; what it has in flight fails with
// shutting_down.

#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "caf/fwd.hpp"
#include "caf/io/middleman_actor.hpp"
#include "caf/timespan.hpp"

#include "pyvisor/pool.hpp"

namespace pyvisor {

struct cluster_config {
  /// Remote nodes: "host:port" of each node's published endpoint
  /// (publish.port), "[v6addr]:port" for IPv6.
  std::vector<std::string> peers;
  /// Pools of this process that take part (e.g. a node's own).
  std::vector<pool_actor> pools;
  /// Period of the stats request each node gets (its load, its liveness).
  caf::timespan heartbeat = std::chrono::seconds(1);
  /// A node that leaves a heartbeat unanswered this long is lost.
  caf::timespan node_timeout = std::chrono::seconds(3);
  /// Time one connection attempt may take.
  caf::timespan connect_timeout = std::chrono::seconds(5);
  /// Delay before each reconnection attempt to a lost node, doubling up to
  /// max; a node that stayed up for reset_after starts over.
  backoff_policy reconnect{std::chrono::milliseconds(200), 2.0, std::chrono::seconds(5), 0.2,
                           std::chrono::seconds(30)};
  /// Deadline of a request that names none (sent on to the node with it).
  caf::timespan request_timeout = std::chrono::seconds(30);
  /// Deadlines by command of requests that name none (sent on with them).
  command_timeout_map command_timeouts;
  /// Longest deadline a caller may ask for (longer ones are clamped).
  caf::timespan max_request_timeout = std::chrono::minutes(10);
  /// Attempts of an idempotent request whose node was lost (first included).
  uint32_t max_attempts = 3;
  /// A session's binding to its node is forgotten after this long idle
  /// (default: a node's session.timeout plus session.remember).
  caf::timespan session_retention = std::chrono::minutes(15);
  /// Sessions bound at most; a request opening one more fails `overloaded`.
  size_t max_sessions = 1000000;
  /// Connect to peers over TLS (caf::openssl::manager loaded, with
  /// openssl.certificate, openssl.key, openssl.cafile); spawn_cluster turns
  /// it on by itself when the actor system has a certificate.
  bool tls = false;
  /// Who connects to peers: a middleman actor (connect_atom, host, port).
  /// Default: CAF's middleman, or caf-openssl's with `tls`. Tests put their
  /// own here.
  caf::io::middleman_actor connector;
};

/// Spawns a cluster front; requires the middleman (and, with TLS, the
/// OpenSSL module) to be loaded when `cfg.peers` is not empty.
pool_actor spawn_cluster(caf::actor_system& sys, cluster_config cfg);

/// Parses "host:port" / "[v6]:port"; false if it is not one.
bool parse_peer(const std::string& peer, std::string& host, uint16_t& port);

} // namespace pyvisor

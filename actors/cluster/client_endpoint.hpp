// The client endpoint: what a node shows the network of its pool.
//
// A pool_actor accepts messages that steer the pool (configure_atom) and its
// internals accept more (workers registering, done reports, exit messages).
// None of those may be reachable from another machine. So a node never
// publishes its pool: it publishes a client endpoint, a separate actor whose
// typed interface is `client_actor` - execute, end_session_atom,
// status_atom, cancel_atom and a stream's taken_atom, nothing else (chunk_atom
// it takes only from this process) - and which:
// - answers every request itself (request + response promise, never
//   delegate), so that the only actor of this process whose address a
//   remote peer ever learns is the endpoint (a delegated request would be
//   answered by a worker, and CAF would hand the worker's address to the
//   peer together with the reply);
// - ignores exit messages (a peer may send one, or link and die) and error
//   messages, and logs them; it ends only when the pool it fronts ends;
// - answers anything else with CAF's unexpected_message error.
// publish_pool publishes an endpoint over TLS with mutual certificate
// authentication (caf-openssl) or in the clear on loopback only, unless the
// caller says publish.insecure explicitly. Peers refused during the TLS
// handshake are logged with their address and OpenSSL's reason.

#pragma once

#include <cstdint>
#include <string>

#include "caf/expected.hpp"
#include "caf/fwd.hpp"
#include "caf/replies_to.hpp"
#include "caf/typed_actor.hpp"

#include "pyvisor/pool.hpp"

namespace pyvisor {

/// What a remote client (a cluster front, a CAF application) may ask of a
/// node: run requests, end sessions, read stats.
using client_actor = caf::typed_actor<
  caf::replies_to<execute>::with<payload>,
  caf::replies_to<end_session_atom, std::string>::with<bool>,
  caf::replies_to<status_atom>::with<pool_stats>,
  /// Cancels the sender's request it tagged so (pool_actor's cancel_atom).
  caf::reacts_to<cancel_atom, uint64_t>,
  /// A stream's credit (pool_actor's taken_atom).
  caf::reacts_to<taken_atom, uint64_t, uint64_t>,
  /// A chunk of a stream the endpoint asked for, from a worker of this
  /// process (a peer's are ignored), passed on to the peer that asked.
  caf::reacts_to<chunk_atom, uint64_t, payload>>;

/// Spawns an endpoint in front of `pool`; it ends when `pool` ends.
client_actor spawn_client_endpoint(caf::actor_system& sys, pool_actor pool);

/// How a node publishes its pool (the node's [publish] keys).
struct publish_config {
  /// Address to listen on; loopback unless TLS or `insecure`.
  std::string host = "127.0.0.1";
  /// 0: the OS picks a free port (see the returned port).
  uint16_t port = 0;
  /// TLS with mutual certificate authentication: needs caf::openssl::manager
  /// loaded and openssl.certificate, openssl.key and openssl.cafile set.
  bool tls = false;
  /// Allows publishing in the clear on an address that is not loopback.
  bool insecure = false;
};

/// True for addresses only this machine can reach (127.0.0.0/8, ::1,
/// "localhost"); empty and wildcard addresses are not.
bool is_loopback(const std::string& host);

/// Checks `cfg` against the actor system's TLS settings without publishing
/// (the node calls it before it starts anything). Empty when fine, else a
/// sentence naming the key to change.
std::string check_publish_config(const caf::actor_system_config& sys_cfg,
                                 const publish_config& cfg);

/// Checks that openssl.certificate, openssl.key and openssl.cafile are set
/// and that OpenSSL can load them (and the key fits the certificate). Empty
/// when fine, else a sentence naming the key.
std::string check_tls_files(const caf::actor_system_config& sys_cfg);

/// Publishes a client endpoint of `pool` as `cfg` says; returns the port.
caf::expected<uint16_t> publish_pool(caf::actor_system& sys, pool_actor pool,
                                     const publish_config& cfg);

/// Registers client_actor and what it carries (includes add_pool_types).
void add_cluster_types(caf::actor_system_config& cfg);

} // namespace pyvisor

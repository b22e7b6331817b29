// A cluster front's view of one node (actors/cluster/cluster.hpp): its
// state and counts, as pool_stats::nodes carries them (a local pool's list
// is empty). Apart from cluster.hpp only because pool_stats, which
// cluster.hpp's interface returns, contains it.

#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "caf/meta/type_name.hpp"

#include "pyvisor/names.hpp"
#include "pyvisor/payload.hpp" // msgpack-c: enums travel as their names

namespace pyvisor {

/// Where one node of a cluster stands, as the front sees it (see
/// actors/cluster/cluster.hpp).
enum class node_state : uint8_t {
  /// Not heard from yet: connecting, or connected and waiting for its first
  /// stats (a node counts as up only once it answered).
  connecting,
  /// Connected, answering, and its pool can serve.
  up,
  /// Connected and answering, but no worker of it can serve (its pool is
  /// starting or restarting).
  unavailable,
  /// Disconnected or silent for longer than cluster.node-timeout; the front
  /// reconnects with back-off.
  lost,
  // Add new states above this line and their names to the table below.
};

constexpr size_t node_state_count = static_cast<size_t>(node_state::lost) + 1;

template <>
struct enum_names<node_state> {
  static constexpr name_table<node_state, node_state_count> table{{{
    {node_state::connecting, "connecting"},
    {node_state::up, "up"},
    {node_state::unavailable, "unavailable"},
    {node_state::lost, "lost"},
  }}};
};

/// One node in the stats of a cluster front (empty for a local pool).
struct node_stats {
  /// "host:port" of a remote node, "local:N" for a pool in the front's process.
  std::string peer;
  node_state state = node_state::connecting;
  /// Workers ready on it, when it last answered.
  uint32_t workers = 0;
  /// This front's requests running on it now.
  uint64_t in_flight = 0;
  /// Replies this front received from it.
  uint64_t served = 0;
  /// How often it was lost and rejoined.
  uint64_t restarts = 0;

  MSGPACK_DEFINE_MAP(peer, state, workers, in_flight, served, restarts);
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_stats& x) {
  return f(caf::meta::type_name("pyvisor::node_stats"), x.peer, x.state, x.workers, x.in_flight,
           x.served, x.restarts);
}

} // namespace pyvisor

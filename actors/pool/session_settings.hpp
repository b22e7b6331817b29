// How a pool keeps sessions (pool_config::session, the [session] section of
// a node's configuration): idle expiry, how long expired and lost ids are
// remembered, and the bounds that keep a client inventing ids from
// exhausting memory. The session-affinity actor that applies them is
// internal (actors/pool/session_affinity.hpp says what it guarantees).

#pragma once

#include <chrono>
#include <cstddef>

#include "caf/timespan.hpp"

namespace pyvisor {

struct session_settings {
  /// Idle time after which a session expires.
  caf::timespan timeout = std::chrono::minutes(5);
  /// Period of the cleanup timer.
  caf::timespan cleanup_interval = std::chrono::seconds(1);
  /// How long an expired or lost id is remembered.
  caf::timespan remember = std::chrono::minutes(10);
  /// Live sessions at most: a request that would open one more is answered
  /// `overloaded` (each costs the node ~120 bytes and its worker its state).
  /// Remembered (expired, lost) ids are capped at the same number, the
  /// oldest forgotten first.
  size_t max_sessions = 100000;
  /// Longest session id, in bytes (checked by the pool: `bad_request`).
  size_t max_id_size = 256;
};

} // namespace pyvisor

// pyvisor::request_state: the life of one request between admission and
// answer, named in one place. The pool core moves a request through the
// first states (actors/pool/), a worker's ledger through the rest
// (actors/worker/request_ledger.hpp); the settle rules that decide the end
// states live in the ledger. A new way for a request to end (cancelled,
// interrupted) or to answer in parts (streaming) is a new state here, a new
// row in the transition table and one rule where it is decided.
//
//   admitted -> queued -> admitted        (a session request leaves the queue
//                                          to be routed and comes back)
//   admitted | queued -> written          (its frame is in a worker's pipe)
//   written -> running                    (the worker may have started it: for
//                                          a sequential worker, the oldest)
//   written | running -> answered         (its reply, an error reply included)
//   written | running -> retried          (idempotent; its worker went away)
//   written -> requeued                   (provably never started there)
//   admitted | queued | written | running -> expired (its deadline passed)
//   retried | requeued -> admitted        (back in the pool, ahead of others)
//
// Guarantees: answered and expired are final (each request is answered
// exactly once); a requeued request never counts as an attempt; only a
// request that never reached `running` may be requeued.

#pragma once

#include <cstddef>
#include <cstdint>

#include "pyvisor/names.hpp"

namespace pyvisor {

enum class request_state : uint8_t {
  admitted,
  queued,
  written,
  running,
  answered,
  retried,
  requeued,
  expired,
  // Add new states above this line, to the table below and to may_move().
};

constexpr size_t request_state_count = static_cast<size_t>(request_state::expired) + 1;

template <>
struct enum_names<request_state> {
  static constexpr name_table<request_state, request_state_count> table{{{
    {request_state::admitted, "admitted"},
    {request_state::queued, "queued"},
    {request_state::written, "written"},
    {request_state::running, "running"},
    {request_state::answered, "answered"},
    {request_state::retried, "retried"},
    {request_state::requeued, "requeued"},
    {request_state::expired, "expired"},
  }}};
};

/// Whether a request in state `from` may move to `to` (the table above).
constexpr bool may_move(request_state from, request_state to) noexcept {
  using s = request_state;
  switch (to) {
    case s::admitted:
      return from == s::queued || from == s::retried || from == s::requeued;
    case s::queued:
      return from == s::admitted;
    case s::written:
      return from == s::admitted || from == s::queued;
    case s::running:
      return from == s::written;
    case s::answered:
    case s::retried:
      return from == s::written || from == s::running;
    case s::requeued:
      return from == s::written;
    case s::expired:
      return from == s::admitted || from == s::queued || from == s::written
             || from == s::running;
  }
  return false;
}

/// Whether `x` ends the request (nothing moves out of it).
constexpr bool is_final(request_state x) noexcept {
  return x == request_state::answered || x == request_state::expired;
}

} // namespace pyvisor

// Streams from C++: taking a generator handler's chunks as they come.
//
// A request with execute::stream set answers its caller in two kinds of
// message: first (chunk_atom, tag, payload) for each value the handler
// yields, in order, then the ordinary response (payload: the generator's
// return value, or the error that ended the stream: a Python exception
// after some chunks, timeout, cancelled, worker_crashed ...). The worker
// produces at most the pool's stream window (pool.stream-window chunks,
// pool.stream-window-bytes bytes) beyond what the caller said it took with
// (taken_atom, tag, n) to the pool, so a slow consumer holds the generator
// back and nothing in between buffers more than that.
//
// An event-based actor handles chunk_atom in its behaviour, sends the
// request with request(...).then(...) for the response, and tells the pool
// after each chunk it took (or after a few). execute_stream() below does
// all of it for code outside actors (a blocking call on its own scoped
// actor). Neither chunk nor response ever comes after the response.

#pragma once

#include <functional>

#include "caf/expected.hpp"
#include "caf/fwd.hpp"

#include "pyvisor/pool.hpp"

namespace pyvisor {

/// Runs `req` on `pool` as a stream and waits for its end: `on_chunk` is
/// called with each chunk as it comes, in order, and the chunk counts as
/// taken once it returns. Returns the generator's return value, or the
/// error that ended the stream. An exception thrown by `on_chunk` cancels
/// the request (its generator is closed on the worker) and is rethrown once
/// the pool answered. Sets req.stream, and req.tag to 1 if it was 0.
caf::expected<payload> execute_stream(caf::actor_system& sys, const pool_actor& pool,
                                      execute req,
                                      const std::function<void(payload& chunk)>& on_chunk);

} // namespace pyvisor

// pyvisor::reply_courier: carries out a worker ledger's settlements
// (request_ledger.hpp): reports each answered request to the listener (the
// pool), then answers its caller, or hands the request back to the
// listener for a retry or a requeue. It is the one place in pyvisor that
// delivers responses without an execution context.
//
// Why without one: a request's promise may belong to another actor (the pool
// core wrote the request itself, worker_link.hpp) and the courier may run on
// another thread (the process I/O thread that read the reply).
// response_promise::deliver and delegate would pass the promise owner's
// execution context, which belongs to the thread running that owner; the
// courier enqueues with none, so the receiver is scheduled as if the message
// came from outside the actor system. This mirrors CAF 0.17.6's
// response_promise::deliver_impl and delegate (a static_assert in the .cpp
// pins the version whose internals it follows).
//
// Chunks of a stream go to its caller the same way, as (chunk_atom, tag,
// value) messages, before the response that ends the stream.
//
// Guarantees: a report goes out before the answer it reports, so that a
// caller who asks the pool for stats after its reply sees the request
// counted; reports go to the listener's completion inbox once it gave one
// (report_to), else as done messages. Responses carry the worker as sender
// (the client endpoint drops responses no local actor sent).
//
// Threads: carry_out() may run on any thread; report_to() may be called
// while another thread carries out (the inbox pointer is swapped
// atomically).

#pragma once

#include <memory>
#include <vector>

#include "caf/actor_addr.hpp"

#include "actors/worker/completion_inbox.hpp"
#include "actors/worker/request_ledger.hpp"
#include "messages/worker_listener.hpp"
#include "pyvisor/worker_actor.hpp"

namespace pyvisor {

/// One chunk of a stream for its caller (request_ledger::chunk): sent as
/// (chunk_atom, tag, value), the worker as sender, like a response.
struct chunk_delivery {
  caf::strong_actor_ptr to;
  uint64_t tag = 0;
  payload value;
};

class reply_courier {
public:
  /// `owner`: the worker (sender of responses, named in reports).
  reply_courier(caf::actor_addr owner, worker_listener_actor listener);

  /// From now on reports go to `inbox`, whose owner `wake` is sent
  /// take_inbox_atom when the inbox asks for it (completion_inbox.hpp).
  void report_to(std::shared_ptr<completion_inbox> inbox, caf::actor_addr wake);

  void carry_out(settlement& s) const;

  void carry_out(std::vector<settlement>& ss) const {
    for (auto& s : ss)
      carry_out(s);
  }

  void carry_out(std::vector<chunk_delivery>& cs) const;

  const worker_listener_actor& listener() const noexcept {
    return listener_;
  }

private:
  struct inbox_ref {
    std::shared_ptr<completion_inbox> inbox;
    caf::actor_addr wake;
  };

  void report(const settlement& s) const;

  caf::actor_addr owner_;
  uint64_t owner_id_;
  worker_listener_actor listener_;
  std::shared_ptr<const inbox_ref> inbox_;
};

} // namespace pyvisor

#include "actors/pool/stream.hpp"

#include <exception>

#include "caf/actor_system.hpp"
#include "caf/scoped_actor.hpp"

namespace pyvisor {

caf::expected<payload> execute_stream(caf::actor_system& sys, const pool_actor& pool,
                                      execute req,
                                      const std::function<void(payload& chunk)>& on_chunk) {
  // Its own mailbox: nothing but this stream's messages arrive there.
  caf::scoped_actor self{sys};
  req.stream = true;
  if (req.tag == 0)
    req.tag = 1;
  auto tag = req.tag;
  // Sent, not requested: the response then comes as an ordinary message,
  // in order with the chunks (a blocking actor's receive of a request's
  // response would skip them).
  self->send(pool, std::move(req));
  caf::expected<payload> result{payload{}};
  std::exception_ptr failure;
  uint64_t taken = 0;
  for (bool done = false; !done;) {
    self->receive(
      [&](chunk_atom, uint64_t t, payload& p) {
        if (t != tag || failure)
          return;
        try {
          on_chunk(p);
        } catch (...) {
          failure = std::current_exception();
          self->send(pool, cancel_atom::value, tag);
          return;
        }
        self->send(pool, taken_atom::value, tag, ++taken);
      },
      [&](payload& p) {
        result = std::move(p);
        done = true;
      },
      [&](caf::error& err) {
        result = std::move(err);
        done = true;
      });
  }
  if (failure)
    std::rethrow_exception(failure);
  return result;
}

} // namespace pyvisor

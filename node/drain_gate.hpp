// pyvisor::drain_gate: "stop taking new work, then say when what is in
// flight has finished", the shutdown step of the node's gateway (each
// connection over its requests, the acceptor over its connections).
//
// Guarantees: once close()d the gate stays closed (the owner refuses new
// work while closed()); every promise handed to close() is answered `true`
// exactly once, at once if nothing is in flight, else when leave() ends the
// last piece of work. Used from its owner actor only.

#pragma once

#include <cstddef>
#include <vector>

#include "caf/response_promise.hpp"

namespace pyvisor {

class drain_gate {
public:
  /// Work begins (admitted while open; the owner checks closed() first).
  void enter() noexcept {
    ++in_flight_;
  }

  /// Work ends; the last one answers the waiters of a closed gate.
  void leave() {
    if (--in_flight_ == 0 && closed_)
      release();
  }

  /// Stops admission; `rp` is answered once nothing is in flight.
  void close(caf::response_promise rp) {
    closed_ = true;
    waiters_.push_back(std::move(rp));
    if (in_flight_ == 0)
      release();
  }

  bool closed() const noexcept {
    return closed_;
  }

  size_t in_flight() const noexcept {
    return in_flight_;
  }

private:
  void release() {
    for (auto& rp : waiters_)
      rp.deliver(true);
    waiters_.clear();
  }

  size_t in_flight_ = 0;
  bool closed_ = false;
  std::vector<caf::response_promise> waiters_;
};

} // namespace pyvisor

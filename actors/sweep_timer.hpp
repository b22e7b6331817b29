// pyvisor::sweep_timer: the one periodic timer an actor keeps while it has
// deadlines to watch (the pool's queue, a worker's requests in flight),
// instead of one timer per deadline: CAF's clock wakes a thread for every
// timer it schedules, and per-request timers pile up under load.
//
// Guarantees: at most one sweep_atom is pending per owner; the owner arms the
// timer whenever it starts watching something and calls fired() first thing
// in its sweep_atom handler, then re-arms while anything is left. A deadline
// is therefore noticed at most one interval late. The owner's actor type must
// react to sweep_atom; the timer is part of its state and needs no cleanup
// (a pending sweep_atom to a dead actor is dropped).

#pragma once

#include <chrono>

#include "caf/actor_addr.hpp"
#include "caf/actor_cast.hpp"
#include "caf/actor_clock.hpp"
#include "caf/atom.hpp"
#include "caf/mailbox_element.hpp"
#include "caf/message_id.hpp"
#include "caf/timespan.hpp"

namespace pyvisor {

using sweep_atom = caf::atom_constant<caf::atom("pv_sweep")>;

class sweep_timer {
public:
  /// Granularity of deadlines by default: a deadline fires at most this late.
  static constexpr caf::timespan default_interval = std::chrono::milliseconds(10);

  explicit sweep_timer(caf::timespan interval = default_interval) : interval_(interval) {
    // nop
  }

  /// Schedules a sweep_atom to `self` unless one is pending.
  template <class Self>
  void arm(Self* self) {
    if (armed_)
      return;
    armed_ = true;
    self->delayed_send(self, interval_, sweep_atom::value);
  }

  /// arm() for a thread that is not `owner`'s own (the owner's state must be
  /// guarded by a lock both hold): schedules through the clock directly.
  void arm(caf::actor_clock& clock, const caf::actor_addr& owner) {
    if (armed_)
      return;
    auto hdl = caf::actor_cast<caf::strong_actor_ptr>(owner);
    if (!hdl)
      return; // gone: nothing left to watch
    armed_ = true;
    clock.schedule_message(clock.now() + interval_, std::move(hdl),
                           caf::make_mailbox_element(nullptr, caf::make_message_id(), {},
                                                     sweep_atom::value));
  }

  /// The pending sweep_atom arrived: the next arm() schedules another.
  void fired() noexcept {
    armed_ = false;
  }

private:
  caf::timespan interval_;
  bool armed_ = false;
};

} // namespace pyvisor

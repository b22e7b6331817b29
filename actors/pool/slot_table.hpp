// pyvisor::slot_table: the pool's worker slots (private to the library).
// Slot i (0-based) holds the supervisor's child "i + 1", and i + 1 is the
// worker's id in logs, stats and the protocol. A slot outlives its workers:
// each new worker in it is a new incarnation, and a session routed to an
// older incarnation has lost its state.
//
// Plain data and the selection rules (least loaded with room, ties rotate);
// the pool core is its only user, on its own thread.

#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "caf/actor_clock.hpp"

#include "actors/pool/session_affinity.hpp"
#include "actors/worker/worker_link.hpp"
#include "pyvisor/worker_actor.hpp"

namespace pyvisor {

inline uint32_t slot_of(const std::string& child_id) {
  return static_cast<uint32_t>(std::stoul(child_id) - 1);
}

inline uint32_t worker_id_of(uint32_t slot) {
  return slot + 1;
}

inline std::string child_id_of(uint32_t slot) {
  return std::to_string(worker_id_of(slot));
}

struct slot_rec {
  worker_actor handle;
  /// The Python backend's request path (actors/worker/worker_link.hpp), once
  /// the worker shared it; without it requests are delegated.
  worker_link_ptr link;
  caf::actor_id actor = 0;
  worker_phase state = worker_phase::down;
  uint32_t in_flight = 0;
  /// Requests dispatched to the current incarnation.
  uint64_t dispatched = 0;
  /// The current incarnation is recycled after this many requests (0:
  /// never): pool_config::max_requests plus its jitter.
  uint64_t max_requests = 0;
  uint64_t served = 0;
  uint64_t restarts = 0;
  int64_t pid = 0;
  int64_t started_at_ms = 0;
  /// Looks in a row (pool_config::stopped_check) that found the process
  /// stopped.
  uint32_t stopped_looks = 0;
  caf::actor_clock::time_point started;
  /// Bumped whenever the slot gets a new worker or loses one.
  uint32_t incarnation = 0;
  /// The pool retires this worker (max_requests, max_age, max_rss): it
  /// starts the replacement itself.
  bool recycling = false;
  /// The worker recycled itself (a request outlived its deadline there):
  /// its supervisor starts the replacement. Counted as recycled, like the
  /// pool's own recycles, not as a restart.
  bool self_recycled = false;
  /// This incarnation answered a request / was told to the supervisor as
  /// proven (its death then does not count toward restart intensity).
  bool served_ok = false;
  bool proven = false;
  caf::actor_clock::time_point ready_at;
  /// Hint mode: requests in flight here per session, so that a session's
  /// request runs on another worker only when none of its earlier ones is
  /// still running (its requests then still run in the order sent).
  std::unordered_map<std::string, uint32_t> running_sessions;

  /// The slot gets worker `hdl` (a new incarnation, starting), or loses
  /// its worker (`hdl` null: down). Counters of the slot's whole life
  /// (served, restarts) stay.
  void reset(worker_actor hdl = worker_actor{}) {
    actor = hdl ? hdl.id() : 0;
    handle = std::move(hdl);
    link = nullptr;
    state = handle ? worker_phase::starting : worker_phase::down;
    in_flight = 0;
    dispatched = 0;
    pid = 0;
    recycling = false;
    self_recycled = false;
    served_ok = false;
    proven = false;
    running_sessions.clear();
    ++incarnation;
  }

  /// A request of `session` (may be empty) left this worker.
  void finished(const std::string& session) {
    if (in_flight > 0)
      --in_flight;
    if (session.empty())
      return;
    auto j = running_sessions.find(session);
    if (j != running_sessions.end() && --j->second == 0)
      running_sessions.erase(j);
  }
};

class slot_table {
public:
  slot_table(size_t n, uint32_t max_in_flight) : slots_(n), max_in_flight_(max_in_flight) {
    // nop
  }

  size_t size() const noexcept {
    return slots_.size();
  }

  slot_rec& operator[](size_t i) {
    return slots_[i];
  }

  const slot_rec& operator[](size_t i) const {
    return slots_[i];
  }

  std::vector<slot_rec>::iterator begin() {
    return slots_.begin();
  }

  std::vector<slot_rec>::iterator end() {
    return slots_.end();
  }

  std::vector<slot_rec>::const_iterator begin() const {
    return slots_.begin();
  }

  std::vector<slot_rec>::const_iterator end() const {
    return slots_.end();
  }

  /// Whether `s` takes a new request: ready, with room.
  bool accepts(const slot_rec& s) const noexcept {
    return s.state == worker_phase::ready && s.in_flight < max_in_flight_;
  }

  /// Whether `s` takes a request of a session it holds: ready or draining
  /// (a draining worker still serves its sessions), with room.
  bool accepts_own(const slot_rec& s) const noexcept {
    return (s.state == worker_phase::ready || s.state == worker_phase::draining)
           && s.in_flight < max_in_flight_;
  }

  /// The least-loaded ready worker with room, or no_slot. Ties rotate.
  uint32_t pick() {
    auto n = slots_.size();
    uint32_t best = no_slot;
    for (size_t k = 0; k < n; ++k) {
      auto i = (rr_ + k) % n;
      auto& s = slots_[i];
      if (!accepts(s))
        continue;
      if (best == no_slot || s.in_flight < slots_[best].in_flight)
        best = static_cast<uint32_t>(i);
    }
    if (best != no_slot)
      rr_ = (best + 1) % n;
    return best;
  }

  /// Whether some worker could take a request now: a new one, or, with
  /// `draining`, one of a session a draining worker still holds.
  bool has_room(bool draining = false) const {
    return std::any_of(slots_.begin(), slots_.end(), [&](const slot_rec& s) {
      return accepts(s) || (draining && accepts_own(s));
    });
  }

  /// Whether a request of `session` is in flight on any worker (hint mode).
  bool session_running(const std::string& session) const {
    return std::any_of(slots_.begin(), slots_.end(), [&](const slot_rec& s) {
      return s.running_sessions.count(session) > 0;
    });
  }

  /// Whether any worker has requests written behind the one it runs.
  bool any_backlog() const {
    return std::any_of(slots_.begin(), slots_.end(),
                       [](const slot_rec& s) { return s.link && s.in_flight >= 2; });
  }

  /// Whether any worker is draining (waits to be recycled).
  bool any_draining() const {
    return std::any_of(slots_.begin(), slots_.end(), [](const slot_rec& s) {
      return s.state == worker_phase::draining;
    });
  }

  /// The slot of worker actor `id`, if it is current.
  std::optional<uint32_t> find(uint64_t id) const {
    for (uint32_t i = 0; i < slots_.size(); ++i)
      if (slots_[i].actor == id && id != 0)
        return i;
    return std::nullopt;
  }

  uint32_t max_in_flight() const noexcept {
    return max_in_flight_;
  }

private:
  std::vector<slot_rec> slots_;
  uint32_t max_in_flight_;
  size_t rr_ = 0;
};

} // namespace pyvisor

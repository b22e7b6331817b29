// pyvisor::fair_queue: the pool's queue of requests waiting for a worker
// (or for their session's route), as plain data (private to the library).
//
// Order: by round, then by arrival. Each requester's requests get
// consecutive rounds, so requesters with waiting work take turns
// (round-robin) instead of being served in order of arrival, where one
// client's burst would make all others wait. Retries and requeues go before
// every round. A session's later request never gets an earlier place than
// its earlier ones, even from another requester, so a session's requests
// run in the order sent.
//
// Bounds: at most `capacity` requests wait (a retry or requeue is never
// refused: it was admitted once), and one requester may hold at most its
// share of them. Requester records are kept only while they matter and are
// pruned, so they stay bounded however many requesters come and go.
//
// The queue knows no actors: it says through on_watch when a requester gets
// its first waiting request and when its last one leaves (the pool monitors
// requesters meanwhile, to drop what a departed requester left).

#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "caf/actor_addr.hpp"
#include "caf/actor_clock.hpp"
#include "caf/typed_response_promise.hpp"

#include "actors/pool/session_affinity.hpp"
#include "actors/request_state.hpp"
#include "pyvisor/error_code.hpp"
#include "pyvisor/execute.hpp"

namespace pyvisor {

/// A place in the queue (see the top).
struct queue_key {
  int64_t round = 0;
  int64_t seq = 0;
  friend bool operator<(const queue_key& x, const queue_key& y) {
    return x.round != y.round ? x.round < y.round : x.seq < y.seq;
  }
};

/// A request admitted by the pool and not yet written to a worker.
struct queued {
  execute req;
  caf::typed_response_promise<payload> rp;
  caf::actor_clock::time_point deadline;
  caf::actor_addr requester;
  request_state state = request_state::admitted;
  /// Routed session requests: the worker slot and incarnation that hold
  /// the session's state.
  uint32_t slot = no_slot;
  uint32_t incarnation = 0;
  bool routed = false;
  /// Cancelled while out of line being routed (see core_state::routing).
  bool cancelled = false;
  /// An end of its session arrived after it: the end waits until this
  /// request has left the pool (core_state::ending).
  bool holds_end = false;
  /// A retry waits for its back-off before it is dispatched again.
  caf::actor_clock::time_point not_before;
  /// Place in the queue, fixed at admission: a session request that leaves
  /// the queue to be routed comes back to the same place.
  queue_key key;
};

using queued_ptr = std::shared_ptr<queued>;

class fair_queue {
public:
  using map_type = std::map<queue_key, queued_ptr>;
  using iterator = map_type::iterator;

  /// Told (requester, true) when a requester gets its first waiting
  /// request, (requester, false) when its last one leaves.
  std::function<void(const caf::actor_addr&, bool)> on_watch;

  /// `max_bytes`: the arguments' bytes that may wait at most (0: any).
  fair_queue(size_t capacity, double share, size_t max_bytes = 0)
    : capacity_(capacity), share_(share), max_bytes_(max_bytes) {
    // nop
  }

  /// Bytes of the arguments of the requests waiting.
  size_t bytes() const noexcept {
    return bytes_;
  }

  bool empty() const noexcept {
    return items_.empty();
  }

  size_t size() const noexcept {
    return items_.size();
  }

  iterator begin() {
    return items_.begin();
  }

  iterator end() {
    return items_.end();
  }

  /// Why a new request of `requester` cannot wait here (the queue is full,
  /// or the requester holds its share), or an empty error.
  caf::error refusal(const caf::actor_addr& requester, size_t bytes = 0) const {
    if (items_.size() >= capacity_)
      return make_error(error_code::overloaded, "the pool's queue is full ("
                                                  + std::to_string(capacity_)
                                                  + " requests waiting); retry later");
    // The first request always waits, whatever its size (the frame limit
    // bounds it): a budget must not refuse what an idle pool would run.
    if (max_bytes_ != 0 && !items_.empty() && bytes_ + bytes > max_bytes_)
      return make_error(error_code::overloaded,
                        "the pool's queue holds " + std::to_string(bytes_)
                          + " bytes of arguments (pool.max-queued-bytes: "
                          + std::to_string(max_bytes_) + "); retry later");
    if (items_.empty())
      return caf::error{};
    auto i = requesters_.find(requester);
    auto share = std::max<size_t>(1, static_cast<size_t>(share_ * static_cast<double>(capacity_)));
    if (i != requesters_.end() && i->second.queued >= share)
      return make_error(error_code::overloaded,
                        "this client already has " + std::to_string(i->second.queued)
                          + " requests waiting (its share of the queue); retry later");
    return caf::error{};
  }

  /// The place of a request admitted now (see the top).
  queue_key place(const queued& q, bool is_retry) {
    if (is_retry)
      return {front_round, next_front_--};
    auto round = round_;
    if (auto i = requesters_.find(q.requester); i != requesters_.end())
      round = std::max(round, i->second.last_round + 1);
    queue_key key{round, next_back_++};
    // Nothing waits: every tail is behind everything waiting (see
    // prune_session_tails). Forgotten now, not at the next sweep, which only
    // runs while requests wait: sessions that are routed at once (the queue
    // is empty) and refused (max-sessions) left one tail each for ever.
    if (items_.empty())
      session_tail_.clear();
    if (!q.req.session.empty()) {
      auto& tail = session_tail_[q.req.session];
      if (key < tail)
        key.round = tail.round;
      tail = key;
    }
    return key;
  }

  /// Puts `q` in line at its place (q->key).
  void push(queued_ptr q) {
    q->state = request_state::queued;
    bytes_ += q->req.args.bytes.size();
    if (q->requester) {
      auto& r = requesters_[q->requester];
      if (r.queued++ == 0 && on_watch)
        on_watch(q->requester, true);
      r.last_round = std::max(r.last_round, q->key.round);
    }
    auto key = q->key;
    items_.emplace(key, std::move(q));
  }

  /// Takes the request at `i` out of line.
  queued_ptr take(iterator i) {
    auto q = std::move(i->second);
    items_.erase(i);
    bytes_ -= q->req.args.bytes.size();
    q->state = request_state::admitted;
    if (!q->requester)
      return q;
    auto r = requesters_.find(q->requester);
    if (r == requesters_.end())
      return q;
    if (--r->second.queued == 0) {
      if (on_watch)
        on_watch(q->requester, false);
      if (r->second.last_round < round_)
        requesters_.erase(r);
    }
    return q;
  }

  /// Everything waiting, in order, taken out of line.
  std::vector<queued_ptr> take_all() {
    std::vector<queued_ptr> result;
    while (!items_.empty())
      result.push_back(take(items_.begin()));
    return result;
  }

  /// `q` is dispatched: its requester has had its turn in that round (also
  /// when it did not have to wait for it).
  void note_turn(const queued& q) {
    round_ = std::max(round_, q.key.round);
    if (!q.requester)
      return;
    auto& r = requesters_[q.requester];
    r.last_round = std::max(r.last_round, q.key.round);
  }

  /// Forgets requesters whose last turn no longer matters (nothing of
  /// theirs waits and the rounds have moved past them); `all`: every
  /// requester without waiting requests.
  void prune(bool all) {
    for (auto i = requesters_.begin(); i != requesters_.end();) {
      if (i->second.queued == 0 && (all || i->second.last_round < round_))
        i = requesters_.erase(i);
      else
        ++i;
    }
  }

  /// Whether the requester records outgrew their bound (prune(true)).
  bool too_many_requesters() const noexcept {
    return requesters_.size() > 2 * capacity_ + 64;
  }

  /// Session tails kept (bounded: see place and prune_session_tails).
  size_t session_tails() const noexcept {
    return session_tail_.size();
  }

  /// Forgets the session tails behind everything waiting (those sessions
  /// have no request left in the queue).
  void prune_session_tails() {
    for (auto i = session_tail_.begin(); i != session_tail_.end();) {
      if (items_.empty() || i->second < items_.begin()->first)
        i = session_tail_.erase(i);
      else
        ++i;
    }
  }

  /// The waiting requests of `requester` (with `tag`, or all when it is
  /// 0), taken out of line.
  std::vector<queued_ptr> take_of(const caf::actor_addr& requester, uint64_t tag) {
    std::vector<queued_ptr> result;
    for (auto i = items_.begin(); i != items_.end();) {
      auto& q = *i->second;
      if (q.requester == requester && (tag == 0 || q.req.tag == tag))
        result.push_back(take(i++));
      else
        ++i;
    }
    return result;
  }

private:
  /// Retries and requeues go before every round.
  static constexpr int64_t front_round = std::numeric_limits<int64_t>::min();

  struct requester_rec {
    /// Its requests in the queue (its share, see refusal).
    size_t queued = 0;
    /// The round of its latest request (queued or dispatched). Kept while
    /// it matters: while it is not behind round_, or requests wait.
    int64_t last_round = 0;
  };

  size_t capacity_;
  double share_;
  size_t max_bytes_;
  size_t bytes_ = 0;
  map_type items_;
  int64_t next_back_ = 1;
  int64_t next_front_ = 0;
  /// The highest round dispatched so far: a requester with nothing waiting
  /// joins at this round, so it is next in turn, not behind every backlog.
  int64_t round_ = 0;
  std::unordered_map<caf::actor_addr, requester_rec> requesters_;
  /// The latest key given to a request of each session with requests
  /// waiting. Pruned by prune_session_tails().
  std::unordered_map<std::string, queue_key> session_tail_;
};

} // namespace pyvisor

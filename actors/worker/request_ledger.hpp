// pyvisor::request_ledger: the bookkeeping of one worker's requests in
// flight and the rules that settle them, as plain data and decisions. No
// actor, no lock, no sends, no clock of its own (the caller passes `now`):
// it is unit-tested without an actor system, and whoever owns it (the
// worker_link, actors/worker/worker_link.hpp) guards it and carries out what
// it decides.
//
// Every request that leaves the ledger leaves as one `settlement`: answered
// (its reply), failed (an error for its caller), retried (an idempotent
// request handed back to the listener for another attempt), requeued (it
// provably never started: it runs elsewhere without counting an attempt) or
// dropped (an internal request nobody waits for). Each settlement is
// produced exactly once per request, so each request is answered exactly
// once. The rules (request_state.hpp names the states):
// - a request past its attempt deadline (an idempotent request's attempt
//   limit, else its own deadline) is `overdue`; the owner expires it;
// - a worker that goes away gives up what may have started: idempotent
//   requests with time left are retried, session requests fail with
//   session_lost (their state died with the worker), the rest with the
//   owner's error;
// - on a sequential worker (the Python worker runs one request at a time in
//   pipe order) only the oldest unanswered request can have started; the
//   others are requeued (a session request still fails: its state is gone);
// - a stream (execute::stream) is retried only while none of its chunks
//   reached its caller;
// - a retry or a requeue keeps what is left of the caller's deadline: an
//   absolute deadline, carried as the remaining timeout;
// - a request answered before the worker finished it (timed out and being
//   interrupted, or cancelled) is *detached*: its caller has its answer,
//   the entry stays until the worker's reply (dropped) or its revoke, so
//   the ledger still knows what the worker is busy with; past its grace
//   it is `stuck` and the owner kills the worker;
// - a request taken back (revoked) from a live worker that confirmed it
//   never began it is requeued; its slot is freed (settlement::frees_slot).

#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "caf/actor_addr.hpp"
#include "caf/actor_cast.hpp"
#include "caf/actor_clock.hpp"
#include "caf/error.hpp"
#include "caf/expected.hpp"
#include "caf/response_promise.hpp"
#include "caf/typed_response_promise.hpp"

#include "actors/request_state.hpp"
#include "pyvisor/error_code.hpp"
#include "pyvisor/execute.hpp"

namespace pyvisor {

using ledger_clock = caf::actor_clock::clock_type;
using ledger_time = caf::actor_clock::time_point;

struct ledger_entry {
  caf::typed_response_promise<payload> promise;
  /// The whole request when it may be handed back (the ledger has a
  /// listener); otherwise what messages and settle rules need of it.
  execute request;
  /// Sent by the worker itself (e.g. drop session); nobody waits for it.
  bool internal = false;
  request_state state = request_state::written;
  /// The caller has its answer (see the top); the worker may still run it.
  bool detached = false;
  /// A revoke was asked for (take_back) and not answered yet.
  bool revoking = false;
  ledger_time started;
  /// When this attempt is overdue (see request_ledger::add).
  ledger_time deadline;
  /// A concurrent worker said it began this request (a started frame).
  bool begun = false;
  /// Chunks of a stream (execute::stream) delivered to the caller so far:
  /// once one was, the request is never retried (the caller saw output).
  uint64_t chunks = 0;
  uint64_t chunk_bytes = 0;
};

/// What becomes of a chunk a worker sent (request_ledger::chunk).
enum class chunk_fate : uint8_t {
  deliver, ///< to the request's caller
  drop,    ///< its caller has its answer already (detached)
  invalid, ///< no stream of that id in flight: a protocol error
};

/// What becomes of one request that leaves the ledger.
enum class verdict : uint8_t {
  answer,  ///< deliver `result` (a value or the worker's error reply)
  fail,    ///< deliver `error`
  retry,   ///< hand (retry_atom, request) to the listener
  requeue, ///< hand (requeue_atom, request) to the listener
  drop,    ///< internal: nobody to answer
};

struct settlement {
  verdict what = verdict::drop;
  ledger_entry entry;
  /// With answer.
  caf::expected<payload> result{payload{}};
  /// With fail.
  caf::error error;
  /// Time since the request was written (reported with answer and fail).
  int64_t service_ns = 0;
  /// A retry or requeue from a worker that lives on: its listener must
  /// hear that the request left (with answer and fail it always does).
  bool frees_slot = false;

  /// The code a done report carries (answer and fail).
  error_code code() const {
    if (what == verdict::fail)
      return code_of(error);
    return result ? error_code::none : code_of(result.error());
  }
};

class request_ledger {
public:
  struct limits {
    /// Deadline of a request that names none.
    caf::timespan request_timeout = std::chrono::seconds(30);
    /// Per-attempt limit of idempotent requests (0: none).
    caf::timespan attempt_timeout{0};
    /// Someone takes requests back (retries, requeues); without one, a
    /// request that cannot be answered here fails.
    bool has_listener = false;
  };

  explicit request_ledger(limits lim) : lim_(lim) {
    // nop
  }

  /// The id the next add() or add_internal() takes (for the wire frame).
  uint64_t peek_id() const noexcept {
    return next_id_;
  }

  /// Records `req` under the next id (returned) and sets its attempt
  /// deadline: its own timeout (the default if it names none), or the
  /// shorter per-attempt limit of an idempotent request (a retry can then
  /// still succeed in time). Moves the whole request in when a listener
  /// may get it back.
  uint64_t add(execute& req, caf::typed_response_promise<payload> promise, ledger_time now) {
    if (req.timeout.count() <= 0)
      req.timeout = lim_.request_timeout;
    ledger_entry e;
    e.promise = std::move(promise);
    e.started = now;
    e.deadline = now + attempt_limit(req);
    if (lim_.has_listener) {
      e.request = std::move(req);
    } else {
      e.request.command = req.command;
      e.request.idempotent = req.idempotent;
      e.request.session = req.session;
      e.request.timeout = req.timeout;
      e.request.tag = req.tag;
      e.request.stream = req.stream;
    }
    auto id = next_id_++;
    if (entries_.empty())
      head_since_ = now;
    entries_.emplace(id, std::move(e));
    ++external_;
    return id;
  }

  /// Records a request of the worker's own (nobody waits for its reply).
  uint64_t add_internal(std::string command, ledger_time now) {
    ledger_entry e;
    e.request.command = std::move(command);
    e.internal = true;
    e.started = now;
    auto id = next_id_++;
    entries_.emplace(id, std::move(e));
    return id;
  }

  /// Whether request `id` is in flight and someone waits for it.
  bool awaits_reply(uint64_t id) const {
    auto i = entries_.find(id);
    return i != entries_.end() && !i->second.internal;
  }

  /// The worker runs several requests at once and says which began
  /// (started frames): settle_sequential then goes by that, not by order.
  void announce_starts() noexcept {
    announced_ = true;
  }

  /// The worker began request `id` (its started frame).
  void begin(uint64_t id) {
    if (auto i = entries_.find(id); i != entries_.end())
      i->second.begun = true;
  }

  /// A chunk of request `id` arrived; with deliver, `*entry` is its entry
  /// (the chunk counted).
  chunk_fate chunk(uint64_t id, ledger_entry** entry) {
    auto i = entries_.find(id);
    if (i == entries_.end() || i->second.internal)
      return chunk_fate::invalid;
    if (i->second.detached)
      return chunk_fate::drop;
    if (!i->second.request.stream)
      return chunk_fate::invalid;
    ++i->second.chunks;
    *entry = &i->second;
    return chunk_fate::deliver;
  }

  const ledger_entry* find(uint64_t id) const {
    auto i = entries_.find(id);
    return i == entries_.end() ? nullptr : &i->second;
  }

  /// The reply to `id` arrived: its settlement (drop for an internal
  /// request), or nothing for an unknown id.
  std::optional<settlement> complete(uint64_t id, caf::expected<payload> result, ledger_time now) {
    auto e = take(id);
    if (!e)
      return std::nullopt;
    // The worker runs one request at a time: having answered this one, it
    // has begun the next.
    head_since_ = now;
    settlement s;
    s.service_ns = elapsed_ns(*e, now);
    if (e->detached) {
      ++served_;
      return s; // drop: its caller had its answer
    }
    if (!e->internal && now - e->started >= e->request.timeout) {
      // Past the caller's deadline (the sweep had not noticed yet): a
      // timeout, never a late success.
      ++served_;
      auto late = std::chrono::duration_cast<std::chrono::milliseconds>(now - e->started
                                                                        - e->request.timeout);
      s.what = verdict::fail;
      s.error = make_error(error_code::timeout, "the reply came " + std::to_string(late.count())
                                                  + " ms after the request's deadline");
      s.entry = std::move(*e);
      s.entry.state = request_state::expired;
      return s;
    }
    if (!e->internal) {
      ++served_;
      s.what = verdict::answer;
      s.result = std::move(result);
      s.entry = std::move(*e);
      s.entry.state = request_state::answered;
    }
    return s;
  }

  /// Request `id` ran out of time on this (now suspect) worker: given up
  /// with `err` (an idempotent request with time left is retried). Its
  /// caller hears `err` itself even when it names a session: it was too
  /// slow, which session_lost would not tell it (its session's state is
  /// lost with the worker all the same; later requests hear that).
  std::optional<settlement> expire(uint64_t id, const caf::error& err, ledger_time now) {
    auto e = take(id);
    if (!e)
      return std::nullopt;
    if (e->internal || e->detached)
      return settlement{};
    return give_up(std::move(*e), err, now, true);
  }

  /// As expire(), but the worker lives on and is interrupted: the caller
  /// hears `err` now (an idempotent request with time left is retried
  /// elsewhere), the entry stays detached until the worker's reply, at
  /// most until `now + grace` (then overdue() calls it stuck).
  std::optional<settlement> detach(uint64_t id, const caf::error& err, ledger_time now,
                                   caf::timespan grace) {
    auto i = entries_.find(id);
    if (i == entries_.end() || i->second.internal || i->second.detached)
      return std::nullopt;
    auto& kept = i->second;
    ledger_entry e;
    e.promise = std::move(kept.promise);
    e.request = std::move(kept.request);
    e.started = kept.started;
    e.deadline = kept.deadline;
    kept.request.command = e.request.command;
    kept.request.session = e.request.session;
    kept.detached = true;
    kept.deadline = now + grace;
    --external_;
    auto s = code_of(err) == error_code::cancelled ? fail_now(std::move(e), err, now)
                                                    : give_up(std::move(e), err, now, true);
    s.frees_slot = true;
    return s;
  }

  /// Requests that may be taken back from this worker to run elsewhere:
  /// stateless ones written behind the request it runs, when that one has
  /// run for `min_age` or is being interrupted. Marked revoking (asked
  /// once); the worker's answer goes to revoked(). `later` (if given) says
  /// whether asking again once the head is older can find any: false when
  /// nothing here could be taken (session requests, asked already).
  std::vector<uint64_t> take_back(ledger_time now, caf::timespan min_age, bool* later = nullptr) {
    std::vector<uint64_t> result;
    if (later != nullptr)
      *later = false;
    auto head = oldest();
    if (head == 0)
      return result;
    auto can_take = [&](uint64_t id, const ledger_entry& e) {
      return id != head && !e.internal && !e.detached && !e.revoking
             && e.request.session.empty();
    };
    auto& h = entries_.at(head);
    if (!h.detached && now - head_since_ < min_age) {
      if (later != nullptr)
        *later = std::any_of(entries_.begin(), entries_.end(),
                             [&](const auto& kv) { return can_take(kv.first, kv.second); });
      return result;
    }
    for (auto& kv : entries_) {
      if (can_take(kv.first, kv.second)) {
        kv.second.revoking = true;
        result.push_back(kv.first);
      }
    }
    std::sort(result.begin(), result.end());
    return result;
  }

  /// The worker will never run `ids` (its answer to a revoke): requeued,
  /// or dropped when detached (a cancelled request that never ran).
  std::vector<settlement> revoked(const std::vector<uint64_t>& ids, ledger_time now) {
    std::vector<settlement> result;
    for (auto id : ids) {
      auto e = take(id);
      if (!e || e->internal || e->detached)
        continue;
      auto s = requeue(std::move(*e), make_error(error_code::timeout, "taken back"), now);
      s.frees_slot = true;
      result.push_back(std::move(s));
    }
    return result;
  }

  /// The worker is gone and cannot tell what started: every request is
  /// given up with `err`.
  std::vector<settlement> fail_all(const caf::error& err, ledger_time now) {
    return settle_sequential(err, std::numeric_limits<size_t>::max(), now);
  }

  /// Settles everything still in flight on a worker that ran its requests
  /// one at a time in pipe order, once its process is gone and every reply
  /// it wrote was read: the `may_have_started` oldest are given up with
  /// `err`, the others never started and are requeued. A worker that
  /// announced its starts (announce_starts) had begun exactly those it said
  /// (unless `may_have_started` is the maximum: nothing is known).
  std::vector<settlement> settle_sequential(const caf::error& err, size_t may_have_started,
                                            ledger_time now) {
    std::vector<uint64_t> ids;
    for (auto& kv : entries_)
      if (!kv.second.internal)
        ids.push_back(kv.first);
    std::sort(ids.begin(), ids.end());
    std::vector<settlement> result;
    result.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      auto e = take(ids[i]);
      if (e->detached)
        continue; // answered already; it still held its place in line
      bool may_have = may_have_started == std::numeric_limits<size_t>::max() ? true
                      : announced_                                          ? e->begun
                                                                : i < may_have_started;
      if (may_have) {
        e->state = request_state::running;
        result.push_back(give_up(std::move(*e), err, now));
      } else {
        result.push_back(requeue(std::move(*e), err, now));
      }
    }
    entries_.clear();
    external_ = 0;
    return result;
  }

  /// A request that reached a worker already going away (`err` says why):
  /// it never started there, so it runs elsewhere, idempotent or not,
  /// unless it names a session (whose state is gone) or nobody takes it.
  settlement refuse(execute& req, caf::typed_response_promise<payload> promise,
                    const caf::error& err) const {
    settlement s;
    s.entry.promise = std::move(promise);
    if (lim_.has_listener && req.session.empty()) {
      s.what = verdict::requeue;
      s.entry.state = request_state::requeued;
      s.entry.request = std::move(req);
      return s;
    }
    s.what = verdict::fail;
    s.error = for_request(req, err);
    s.entry.request.command = std::move(req.command);
    s.entry.request.session = std::move(req.session);
    return s;
  }

  /// Ids of requests whose attempt deadline has passed, oldest first.
  std::vector<uint64_t> overdue(ledger_time now) const {
    return overdue_where(now, false);
  }

  /// Ids of detached requests still unanswered past their grace, oldest
  /// first: the worker did not stop them when asked.
  std::vector<uint64_t> stuck(ledger_time now) const {
    return overdue_where(now, true);
  }

  /// The deadline of a request that names none.
  caf::timespan default_timeout() const noexcept {
    return lim_.request_timeout;
  }

  /// Whether request `id` is detached (its caller has its answer).
  bool detached(uint64_t id) const {
    auto i = entries_.find(id);
    return i != entries_.end() && i->second.detached;
  }

  /// The oldest request still in flight (by id, i.e. pipe order; detached
  /// ones included: what the worker runs), or 0.
  uint64_t oldest() const {
    uint64_t result = 0;
    for (auto& kv : entries_)
      if (!kv.second.internal && (result == 0 || kv.first < result))
        result = kv.first;
    return result;
  }

  bool empty() const noexcept {
    return entries_.empty();
  }

  /// The ids of requests whose caller is `caller` (every one with `tag`
  /// 0, else the one it tagged so), not yet answered.
  std::vector<uint64_t> of_caller(const caf::actor_addr& caller, uint64_t tag) {
    std::vector<uint64_t> result;
    for (auto& kv : entries_) {
      auto& e = kv.second;
      if (e.internal || e.detached || (tag != 0 && e.request.tag != tag))
        continue;
      auto& rp = static_cast<caf::response_promise&>(e.promise);
      if (caf::actor_cast<caf::actor_addr>(rp.source()) == caller)
        result.push_back(kv.first);
    }
    return result;
  }

  /// Requests awaited by callers (internal ones excluded).
  uint32_t in_flight() const noexcept {
    return external_;
  }

  /// Requests answered by the worker.
  uint64_t served() const noexcept {
    return served_;
  }

  /// A session request whose worker goes away has lost its state: say so,
  /// whatever took the worker (unless it stopped, or said so already).
  static caf::error for_request(const execute& req, const caf::error& err) {
    if (req.session.empty())
      return err;
    auto code = code_of(err);
    if (code == error_code::session_lost || code == error_code::shutting_down)
      return err;
    // The details (a stuck handler's stack dump, say) stay with it.
    auto lost = session_lost_error(req.session, "its worker failed: " + to_string_readable(err));
    auto details = info_of(err).traceback;
    if (details.empty())
      return lost;
    return make_error(error_code::session_lost, info_of(lost).message, "", std::move(details));
  }

private:
  caf::timespan attempt_limit(const execute& req) const {
    if (req.idempotent && lim_.attempt_timeout.count() > 0 && lim_.attempt_timeout < req.timeout)
      return lim_.attempt_timeout;
    return req.timeout;
  }

  std::optional<ledger_entry> take(uint64_t id) {
    auto i = entries_.find(id);
    if (i == entries_.end())
      return std::nullopt;
    std::optional<ledger_entry> result{std::move(i->second)};
    entries_.erase(i);
    if (!result->internal && !result->detached)
      --external_;
    return result;
  }

  std::vector<uint64_t> overdue_where(ledger_time now, bool detached) const {
    std::vector<uint64_t> result;
    for (auto& kv : entries_)
      if (!kv.second.internal && kv.second.detached == detached && kv.second.deadline <= now)
        result.push_back(kv.first);
    std::sort(result.begin(), result.end());
    return result;
  }

  // `e` ends with `err` for its caller, retry or not (a cancel).
  settlement fail_now(ledger_entry e, const caf::error& err, ledger_time now) const {
    settlement s;
    s.service_ns = elapsed_ns(e, now);
    s.what = verdict::fail;
    s.error = err;
    e.state = request_state::answered;
    s.entry = std::move(e);
    return s;
  }

  static int64_t elapsed_ns(const ledger_entry& e, ledger_time now) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(now - e.started).count();
  }

  // This worker cannot answer `e`: an idempotent request with time left
  // goes back for another attempt (the caller's deadline is absolute: the
  // next attempt gets what is left of it), any other fails with `err` (for
  // a session request session_lost, unless `own_fault`: `e` itself is why).
  settlement give_up(ledger_entry e, const caf::error& err, ledger_time now,
                     bool own_fault = false) const {
    settlement s;
    s.service_ns = elapsed_ns(e, now);
    auto elapsed = now - e.started;
    bool time_left = elapsed < e.request.timeout;
    if (time_left)
      e.request.timeout -= std::chrono::duration_cast<caf::timespan>(elapsed);
    // A stream whose caller saw output is not run again: it would see it twice.
    if (e.request.idempotent && time_left && lim_.has_listener && e.chunks == 0) {
      s.what = verdict::retry;
      e.state = request_state::retried;
    } else {
      s.what = verdict::fail;
      s.error = own_fault ? err : for_request(e.request, err);
      e.state = code_of(err) == error_code::timeout ? request_state::expired
                                                    : request_state::answered;
    }
    s.entry = std::move(e);
    return s;
  }

  // `e` never started here: it runs elsewhere with what is left of its
  // deadline, unless it names a session or nobody takes it back.
  settlement requeue(ledger_entry e, const caf::error& err, ledger_time now) const {
    if (!lim_.has_listener || !e.request.session.empty())
      return give_up(std::move(e), err, now);
    settlement s;
    s.service_ns = elapsed_ns(e, now);
    auto elapsed = now - e.started;
    if (elapsed >= e.request.timeout) {
      s.what = verdict::fail;
      s.error = make_error(error_code::timeout,
                           "the deadline passed while the request waited on a worker that "
                           "was recycled");
      e.state = request_state::expired;
    } else {
      e.request.timeout -= std::chrono::duration_cast<caf::timespan>(elapsed);
      s.what = verdict::requeue;
      e.state = request_state::requeued;
    }
    s.entry = std::move(e);
    return s;
  }

  limits lim_;
  bool announced_ = false;
  std::unordered_map<uint64_t, ledger_entry> entries_;
  uint64_t next_id_ = 1;
  uint32_t external_ = 0;
  uint64_t served_ = 0;
  /// Since when the oldest request has been the one the worker runs.
  ledger_time head_since_;
};

} // namespace pyvisor

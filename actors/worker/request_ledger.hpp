// pyvisor::request_ledger: the bookkeeping and the decisions shared by every
// worker backend (the Python worker and the in-process mock): requests in
// flight, their deadlines, callers waiting for the worker to become ready,
// stopping and retiring. Both backends keep the same promises to callers and
// to the pool because they run this code; a backend only says how it runs a
// request and what stopping or recycling means for what executes them.
//
// Guarantees: every request added is answered exactly once: by complete()
// (its reply), by the deadline sweep (sweep(): the first request past its
// deadline fails with `timeout` and the worker is recycled), or, when the
// worker dies, stops or is recycled, by retire() and settle_sequential():
// idempotent requests go back to the listener (the pool) for a retry on
// another worker, requests that provably never started are requeued there,
// the rest fail (delegation keeps the original requester, so the reply still
// goes straight to it). Each answer is reported to the listener as
// (done_atom, worker id, code, service time, session, command) so the pool can count load and
// outcomes without sitting on the reply path; the report is sent before the
// answer, so that whatever the caller asks the pool after its reply (stats)
// already reflects it. Replies answered on the reading thread report to the
// listener's completion inbox instead when it gave one (report_elsewhere_to,
// completion_inbox.hpp), posted before the answer likewise.
//
// Threads: the ledger lives in its actor's state and is used from that
// actor, with one exception that saves a thread hand-off per request: the
// thread that reads a worker's replies may answer them itself
// (accepts_elsewhere / complete_elsewhere), straight to the caller, without
// passing the reply through the actor's mailbox. A backend that does this
// (the Python worker) holds mutex() in every handler that touches the ledger;
// the reading thread holds it across both calls. A backend without a second
// thread (the mock) needs no lock.

#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "caf/local_actor.hpp"
#include "caf/mailbox_element.hpp"
#include "caf/result.hpp"
#include "caf/send.hpp"
#include "caf/typed_response_promise.hpp"

#include "actors/sweep_timer.hpp"
#include "actors/worker/completion_inbox.hpp"
#include "messages/log.hpp"
#include "pyvisor/worker_actor.hpp"

namespace pyvisor {

class request_ledger {
public:
  struct entry {
    caf::typed_response_promise<payload> promise;
    /// For idempotent requests the whole request (to retry it); otherwise
    /// only its command name (for messages).
    execute request;
    /// Sent by the worker itself (e.g. drop session); nobody waits for it.
    bool internal = false;
    caf::actor_clock::time_point started;
    /// When this attempt times out (see attempt_limit).
    caf::actor_clock::time_point deadline;
  };

  request_ledger(caf::local_actor* self, const worker_settings& cfg)
    : clock_(&self->clock()),
      id_(self->id()),
      owner_(self->address()),
      listener_(cfg.listener),
      request_timeout_(cfg.request_timeout),
      attempt_timeout_(cfg.attempt_timeout) {
    // nop
  }

  /// Returns a fresh request id (for the wire frame, before add()).
  uint64_t next_id() noexcept {
    return next_id_++;
  }

  /// The id next_id() returns next.
  uint64_t peek_id() const noexcept {
    return next_id_;
  }

  /// Whether new requests may be added from another thread: the owner is
  /// neither retiring nor gone. Requires mutex().
  bool accepts_requests() const noexcept {
    return !closed_ && !retiring_;
  }

  /// Records request `id` and watches its deadline: its own timeout (the
  /// default one if it names none), or the shorter per-attempt limit for
  /// idempotent requests (a retry can then still succeed in time). Moves the
  /// whole request in when a listener may get it back (a retry, or a requeue
  /// of a request that never started).
  /// May run on a thread other than the owner's (see the top): the sweep is
  /// armed through the clock.
  void add(uint64_t id, execute& req, caf::typed_response_promise<payload> promise) {
    if (req.timeout.count() <= 0)
      req.timeout = request_timeout_;
    entry e;
    e.promise = std::move(promise);
    e.started = clock_->now();
    e.deadline = e.started + attempt_limit(req);
    e.request.command = req.command;
    e.request.idempotent = req.idempotent;
    e.request.session = req.session;
    e.request.timeout = req.timeout;
    if (listener_)
      e.request = std::move(req);
    entries_.emplace(id, std::move(e));
    ++external_;
    sweep_.arm(*clock_, owner_);
  }

  /// The oldest request still in flight (by id, i.e. pipe order), or 0.
  uint64_t oldest() const {
    uint64_t result = 0;
    for (auto& kv : entries_)
      if (!kv.second.internal && (result == 0 || kv.first < result))
        result = kv.first;
    return result;
  }

  /// Ids of requests whose attempt deadline has passed.
  std::vector<uint64_t> overdue() const {
    std::vector<uint64_t> result;
    auto now = clock_->now();
    for (auto& kv : entries_)
      if (!kv.second.internal && kv.second.deadline <= now)
        result.push_back(kv.first);
    return result;
  }

  bool empty() const noexcept {
    return entries_.empty();
  }

  uint64_t add_internal(std::string command) {
    auto id = next_id_++;
    entry e;
    e.request.command = std::move(command);
    e.internal = true;
    e.started = clock_->now();
    entries_.emplace(id, std::move(e));
    return id;
  }

  entry* find(uint64_t id) {
    auto i = entries_.find(id);
    return i == entries_.end() ? nullptr : &i->second;
  }

  /// Answers request `id` with `result`; returns false for unknown ids.
  bool complete(uint64_t id, caf::expected<payload> result) {
    return answer_with(id, std::move(result), false);
  }

  /// The lock a second thread takes to answer requests (see the top).
  std::mutex& mutex() noexcept {
    return mtx_;
  }

  /// Whether the reading thread may answer request `id` itself: it is in
  /// flight and the worker is neither retiring nor gone (then the actor
  /// decides what a late reply means). Requires mutex().
  bool accepts_elsewhere(uint64_t id) const {
    if (!accepts_requests())
      return false;
    auto i = entries_.find(id);
    return i != entries_.end() && !i->second.internal;
  }

  /// complete() from the thread that read the reply, after
  /// accepts_elsewhere(id): the reply goes straight to the caller (or the
  /// next stage of its delegation), not through the owner's mailbox.
  /// Requires mutex().
  void complete_elsewhere(uint64_t id, caf::expected<payload> result) {
    answer_with(id, std::move(result), true);
  }

  /// From now on complete_elsewhere() reports to `inbox` (of `owner`, the
  /// listener, woken with take_inbox_atom when the inbox says so) instead
  /// of sending a done message per reply. Requires mutex().
  void report_elsewhere_to(std::shared_ptr<completion_inbox> inbox, caf::actor_addr owner) {
    inbox_ = std::move(inbox);
    inbox_owner_ = std::move(owner);
  }

  /// The owner is going away: from now on only it answers (nothing does).
  /// Requires mutex().
  void close() noexcept {
    closed_ = true;
  }

  /// The worker is going away: idempotent requests go back to the listener
  /// for a retry elsewhere, session requests fail with session_lost (their
  /// state died with the worker), all others fail with `err`.
  void fail_all(const caf::error& err) {
    for (auto& kv : entries_)
      if (!kv.second.internal)
        give_up(kv.second, err);
    entries_.clear();
    external_ = 0;
  }

  /// Request `id` ran out of time on this (now suspect) worker: an
  /// idempotent request with time left is handed back for a retry elsewhere;
  /// otherwise it fails with `err` (session_lost for a session request, as
  /// the worker is recycled with its state). Returns false for unknown ids.
  bool expire(uint64_t id, const caf::error& err) {
    return answer(id, [&](entry& e) { give_up(e, err); });
  }

  /// The deadline sweep (call it on sweep_atom). When a request is past its
  /// deadline the worker counts as hung: `recycle(overdue ids)` stops what
  /// runs them (the Python worker kills its process) and returns whether
  /// the requests still in flight are settled later by settle_sequential()
  /// (true) or given up now; then the overdue requests fail with `timeout`
  /// and the worker retires (deliberately: a recycle, not a crash). `tag`
  /// names the worker in messages. A retiring worker sweeps no more.
  template <class Self, class Recycle>
  void sweep(Self* self, const std::string& tag, Recycle recycle) {
    sweep_.fired();
    if (retiring_)
      return; // what is left is settled by the retirement under way
    auto late = overdue();
    if (late.empty()) {
      if (!empty())
        sweep_.arm(self);
      return;
    }
    auto msg = tag + ": request " + std::to_string(late.front()) + " ('"
               + find(late.front())->request.command + "') timed out; recycling the worker";
    log().warn("{}", msg);
    bool settle_later = recycle(late);
    auto timeout = make_error(error_code::timeout, msg);
    retire(self,
           make_error(error_code::worker_crashed, tag + " recycled after another request timed out"),
           timeout, true, late, timeout, settle_later);
  }

  /// Installs the stop both backends share as `self`'s exit handler: the
  /// first exit message (a supervisor's shutdown) moves `status` to
  /// stopping, so that screen() answers new requests with shutting_down,
  /// keeps the message's reason and calls `drain()`, which lets what is in
  /// flight finish (the Python worker closes its process's input). The
  /// backend ends the stop with finish_stop() once it has drained (or its
  /// stop grace ran out).
  template <class Self, class Drain>
  void stop_on_exit(Self* self, worker_status& status, Drain drain) {
    self->set_exit_handler([this, &status, drain](caf::exit_msg& msg) {
      if (status.phase == worker_phase::stopping)
        return;
      status.phase = worker_phase::stopping;
      stop_reason_ = std::move(msg.reason);
      drain();
    });
  }

  /// Ends a stop: what is still in flight fails with shutting_down (`why`)
  /// and the worker quits with the exit message's reason.
  template <class Self>
  void finish_stop(Self* self, const std::string& why) {
    retire(self, make_error(error_code::shutting_down, why), std::move(stop_reason_));
  }

  /// Ends the worker instead of a plain quit: answers everything in flight
  /// (idempotent requests go back to the listener), tells the listener that
  /// this worker is gone and quits with `reason` once it has acknowledged
  /// (or after a few seconds without answer). Meanwhile refuse() answers
  /// requests the listener dispatched before it learned of the death.
  /// `deliberate`: the worker recycles itself (a timeout), it did not crash.
  /// `late`: requests that outlived their deadline here; they are expired
  /// (expire() with `late_error`) only after the listener was told, so that
  /// a caller who hears of its timeout cannot send its next request to this
  /// worker before the listener knows it is gone.
  /// `settle_later`: the requests still in flight are not failed now but by
  /// settle_sequential(), which the worker calls once its process is gone and
  /// every reply it wrote was read; the worker quits after both that and the
  /// listener's answer.
  template <class Self>
  void retire(Self* self, const caf::error& for_requests, caf::error reason,
              bool deliberate = false, const std::vector<uint64_t>& late = {},
              const caf::error& late_error = {}, bool settle_later = false) {
    if (retiring_)
      return;
    retiring_ = true;
    retire_error_ = for_requests;
    settled_ = !settle_later;
    exit_reason_ = reason;
    for (auto& rp : ready_waiters_)
      rp.deliver(reason ? reason : for_requests);
    ready_waiters_.clear();
    if (!listener_) {
      acked_ = true;
      for (auto id : late)
        expire(id, late_error);
      if (settled_) {
        fail_all(for_requests);
        self->quit(std::move(reason));
      }
      return;
    }
    // The notice goes out before the retries, so the listener stops
    // dispatching here before it re-dispatches them.
    auto acked = [self, this] {
      acked_ = true;
      if (settled_)
        self->quit(exit_reason_);
    };
    self->request(listener_, std::chrono::seconds(5), dying_atom::value,
                  static_cast<uint64_t>(self->id()), deliberate)
      .then([acked](bool) { acked(); }, [acked](caf::error&) { acked(); });
    for (auto id : late)
      expire(id, late_error);
    if (settled_)
      fail_all(for_requests);
  }

  /// Whether retire() waits for settle_sequential().
  bool awaiting_settle() const noexcept {
    return retiring_ && !settled_;
  }

  /// Settles what is still in flight on a worker that runs its requests one
  /// at a time in pipe order (the Python worker; docs/protocol.md), once its
  /// process is gone and every reply it wrote has been read. Of those
  /// requests only the oldest can have started (the others wait behind it
  /// in the pipe); it is given up with `err` (retried if idempotent). All
  /// others provably never started: they are handed back
  /// to the listener (requeue_atom) to run elsewhere, idempotent or not;
  /// session requests fail with session_lost, as their state is gone.
  /// `may_have_started`: how many of the oldest requests are given up (0, 1,
  /// or all of them when the worker cannot tell).
  template <class Self>
  void settle_sequential(Self* self, const caf::error& err, size_t may_have_started) {
    std::vector<uint64_t> ids;
    for (auto& kv : entries_)
      if (!kv.second.internal)
        ids.push_back(kv.first);
    std::sort(ids.begin(), ids.end());
    for (size_t i = 0; i < ids.size(); ++i) {
      auto e = take(ids[i]);
      if (i < may_have_started)
        give_up(*e, err);
      else
        requeue(*e, err);
    }
    entries_.clear();
    external_ = 0;
    if (!settled_) {
      settled_ = true;
      if (acked_)
        self->quit(exit_reason_);
    }
  }

  bool retiring() const noexcept {
    return retiring_;
  }

  /// The checks every backend makes before it accepts a request: a retiring
  /// worker refuses it (see refuse), a stopping one answers shutting_down,
  /// arguments that are not one msgpack value get bad_request. Returns that
  /// answer, or nothing when the request may run.
  template <class Self>
  std::optional<caf::result<payload>> screen(Self* self, execute& req, worker_phase phase,
                                             uint32_t worker_id) {
    if (retiring_) {
      auto rp = self->template make_response_promise<payload>();
      refuse(req, rp);
      return caf::result<payload>{rp};
    }
    if (phase == worker_phase::stopping)
      return caf::result<payload>{make_error(
        error_code::shutting_down, "worker " + std::to_string(worker_id) + " is stopping")};
    if (!is_valid_msgpack(req.args))
      return caf::result<payload>{
        make_error(error_code::bad_request, "args are not exactly one msgpack value")};
    return std::nullopt;
  }

  /// Answers a request that reached a retiring worker: it never started
  /// here, so it goes back to the listener to run elsewhere, idempotent or
  /// not (a session request fails: its state is gone).
  void refuse(execute& req, caf::typed_response_promise<payload> promise) {
    if (listener_ && req.session.empty()) {
      delegate(promise, caf::make_message(requeue_atom::value, std::move(req)));
      return;
    }
    deliver(promise, caf::make_message(for_request(req, retire_error_)));
  }

  /// Requests awaited by callers (internal ones excluded).
  uint32_t in_flight() const noexcept {
    return external_;
  }

  uint64_t served() const noexcept {
    return served_;
  }

  const worker_listener_actor& listener() const noexcept {
    return listener_;
  }

  /// The worker's status with the ledger's counts filled in.
  worker_status snapshot(worker_status status) const {
    status.in_flight = in_flight();
    status.served = served();
    return status;
  }

  /// Answers a ready_atom request now if `status` is ready, else once
  /// announce_ready() runs (or with the error the worker dies of).
  template <class Self>
  caf::result<worker_status> await_ready(Self* self, const worker_status& status) {
    if (status.phase == worker_phase::ready)
      return snapshot(status);
    auto rp = self->template make_response_promise<worker_status>();
    ready_waiters_.push_back(rp);
    return rp;
  }

  void announce_ready(const worker_status& status) {
    for (auto& rp : ready_waiters_)
      rp.deliver(snapshot(status));
    ready_waiters_.clear();
  }

private:
  caf::timespan attempt_limit(const execute& req) const {
    if (req.idempotent && attempt_timeout_.count() > 0 && attempt_timeout_ < req.timeout)
      return attempt_timeout_;
    return req.timeout;
  }

  // Takes request `id` out and lets `f` answer it (internal requests have
  // nobody to answer); false for unknown ids.
  template <class F>
  bool answer(uint64_t id, F f) {
    auto found = take(id);
    if (!found)
      return false;
    if (!found->internal)
      f(*found);
    return true;
  }

  std::optional<entry> take(uint64_t id) {
    auto i = entries_.find(id);
    if (i == entries_.end())
      return std::nullopt;
    std::optional<entry> result{std::move(i->second)};
    entries_.erase(i);
    if (!result->internal)
      --external_;
    return result;
  }

  // This worker cannot answer `e`: an idempotent request goes back to the
  // listener for another attempt (not reported as done: the pool counts it
  // as a retry), any other fails with `err` (or session_lost).
  void give_up(entry& e, const caf::error& err) {
    // The caller's deadline is absolute: another attempt gets only what is
    // left of it (the pool turns the remainder back into a deadline).
    auto elapsed = clock_->now() - e.started;
    if (elapsed >= e.request.timeout)
      e.request.idempotent = false; // no time left for another attempt
    else
      e.request.timeout -= std::chrono::duration_cast<caf::timespan>(elapsed);
    if (e.request.idempotent && listener_) {
      delegate(e.promise, caf::make_message(retry_atom::value, std::move(e.request)));
      return;
    }
    auto final_err = for_request(e.request, err);
    report(e, code_of(final_err));
    deliver(e.promise, caf::make_message(final_err));
  }

  // `e` never started on this worker: it runs elsewhere with what is left of
  // its deadline (not an attempt: it did not run), unless it names a session
  // (whose state is gone) or has no listener to go back to.
  void requeue(entry& e, const caf::error& err) {
    if (!listener_ || !e.request.session.empty()) {
      give_up(e, err);
      return;
    }
    auto elapsed = clock_->now() - e.started;
    if (elapsed >= e.request.timeout) {
      auto timeout = make_error(error_code::timeout,
                                "the deadline passed while the request waited on a worker "
                                "that was recycled");
      report(e, error_code::timeout);
      deliver(e.promise, caf::make_message(timeout));
      return;
    }
    e.request.timeout -= std::chrono::duration_cast<caf::timespan>(elapsed);
    delegate(e.promise, caf::make_message(requeue_atom::value, std::move(e.request)));
  }

  // A session request whose worker goes away has lost its state: say so,
  // whatever killed the worker.
  static caf::error for_request(const execute& req, const caf::error& err) {
    if (req.session.empty())
      return err;
    auto code = code_of(err);
    if (code == error_code::session_lost || code == error_code::shutting_down)
      return err;
    return session_lost_error(req.session, "its worker failed: " + to_string_readable(err));
  }

  // complete() and complete_elsewhere(); `elsewhere`: on the reading
  // thread, where the report goes to the inbox when there is one (see
  // report_elsewhere_to).
  bool answer_with(uint64_t id, caf::expected<payload> result, bool elsewhere) {
    return answer(id, [&](entry& e) {
      ++served_;
      // The listener hears first, so that a caller who asks for stats after
      // its reply sees the request counted (and no longer in flight).
      auto code = result ? error_code::none : code_of(result.error());
      if (!elsewhere || !inbox_)
        report(e, code);
      else if (inbox_->post(completion{static_cast<uint64_t>(id_), static_cast<uint8_t>(code),
                                       service_ns(e), e.request.session, e.request.command}))
        if (auto owner = caf::actor_cast<caf::actor>(inbox_owner_))
          caf::anon_send(owner, take_inbox_atom::value);
      deliver(e.promise, result ? caf::make_message(std::move(*result))
                                : caf::make_message(result.error()));
    });
  }

  // Requests are answered (and handed back to the listener) without the
  // promise's owner: it may be another actor (a dispatcher that wrote the
  // request itself, see worker_channel.hpp) and this may be another thread
  // (the one that read the reply). response_promise::deliver and delegate
  // would pass the owner's execution context, which belongs to the thread
  // running the owner; without one, the receiver is scheduled as if the
  // message came from outside the actor system.

  /// What response_promise::deliver does.
  void deliver(caf::response_promise& rp, caf::message msg) {
    if (!rp.pending())
      return;
    auto stages = rp.stages();
    if (stages.empty()) {
      // From the worker, as CAF's deliver() has it: a receiver may check
      // where a response comes from (the client endpoint drops responses
      // that no actor of its process sent).
      rp.source()->enqueue(caf::make_mailbox_element(caf::actor_cast<caf::strong_actor_ptr>(owner_),
                                                     rp.id().response_id(), {}, std::move(msg)),
                           nullptr);
    } else {
      // As deliver() does: the last stage is next (not next()'s front).
      auto next = std::move(stages.back());
      stages.pop_back();
      next->enqueue(caf::make_mailbox_element(rp.source(), rp.id(), std::move(stages),
                                              std::move(msg)),
                    nullptr);
    }
    rp = caf::response_promise{};
  }

  /// What response_promise::delegate(listener_, ...) does.
  void delegate(caf::response_promise& rp, caf::message msg) {
    auto receiver = caf::actor_cast<caf::strong_actor_ptr>(listener_);
    if (!rp.pending() || !receiver)
      return;
    receiver->enqueue(caf::make_mailbox_element(rp.source(), rp.id(), rp.stages(), std::move(msg)),
                      nullptr);
    rp = caf::response_promise{};
  }

  int64_t service_ns(const entry& e) const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_->now() - e.started).count();
  }

  void report(const entry& e, error_code code) {
    if (!listener_)
      return;
    caf::anon_send(listener_, done_atom::value, static_cast<uint64_t>(id_),
                   static_cast<uint8_t>(code), service_ns(e), e.request.session,
                   e.request.command);
  }

  /// The actor system's clock and the owner's id: what report() needs, also
  /// on the reading thread (the owner may be gone by then; these are not).
  caf::actor_clock* clock_;
  caf::actor_id id_;
  caf::actor_addr owner_;
  std::mutex mtx_;
  /// Set by report_elsewhere_to().
  std::shared_ptr<completion_inbox> inbox_;
  caf::actor_addr inbox_owner_;
  /// The owner is gone: nothing is answered elsewhere any more.
  bool closed_ = false;
  worker_listener_actor listener_;
  caf::timespan request_timeout_;
  caf::timespan attempt_timeout_;
  sweep_timer sweep_;
  caf::error stop_reason_;
  std::unordered_map<uint64_t, entry> entries_;
  uint64_t next_id_ = 1;
  uint32_t external_ = 0;
  uint64_t served_ = 0;
  bool retiring_ = false;
  /// With retire(settle_later): the listener answered / settle_sequential ran.
  bool acked_ = false;
  bool settled_ = true;
  caf::error exit_reason_;
  caf::error retire_error_;
  std::vector<caf::typed_response_promise<worker_status>> ready_waiters_;
};

} // namespace pyvisor

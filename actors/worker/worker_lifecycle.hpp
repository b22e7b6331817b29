// pyvisor::worker_lifecycle: how a worker actor (either backend) starts
// serving, stops and goes away, over its worker_link (worker_link.hpp).
// The link owns the request path; this part owns only what belongs to the
// actor: callers waiting for the worker to become ready, the stop a
// supervisor asks for, and retirement: telling the listener (the pool) that
// the worker goes, settling what it held and quitting.
//
// Guarantees:
// - retire(): the listener hears (dying_atom) before any request is handed
//   back, so it stops dispatching here before it re-dispatches them; the
//   worker quits only after the listener answered (or 5 s passed) and, with
//   `settle_later`, after settle() ran, so that until then every request
//   that still reaches it is refused (handed back), never lost.
// - the first exit message moves the worker to stopping: new requests are
//   answered shutting_down, what is in flight may finish (drain), then
//   finish_stop() fails the rest and quits with the exit message's reason.
// - ready waiters are answered once: with the status at announce_ready(),
//   or with the error the worker dies of.

#pragma once

#include <chrono>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "caf/system_messages.hpp"
#include "caf/result.hpp"
#include "caf/typed_response_promise.hpp"

#include "actors/worker/worker_link.hpp"

namespace pyvisor {

/// How a worker goes away (worker_lifecycle::retire).
struct retirement {
  /// What the requests in flight fail with.
  caf::error for_requests;
  /// The actor's exit reason.
  caf::error reason;
  /// The worker recycles itself on purpose (a timeout), it did not crash.
  bool deliberate = false;
  /// The requests still in flight are settled by settle() (once the process
  /// is gone and every reply it wrote was read), not failed now.
  bool settle_later = false;
};

class worker_lifecycle {
public:
  explicit worker_lifecycle(worker_link_ptr link) : link_(std::move(link)) {
    // nop
  }

  const worker_link_ptr& link() const noexcept {
    return link_;
  }

  /// Answers a request the link did not admit (`verdict`), through `rp`.
  void refuse(admission verdict, execute& req, caf::typed_response_promise<payload> rp,
              uint32_t worker_id) {
    switch (verdict) {
      case admission::retiring:
        link_->refuse(req, std::move(rp));
        return;
      case admission::stopping:
        rp.deliver(make_error(error_code::shutting_down,
                              "worker " + std::to_string(worker_id) + " is stopping"));
        return;
      case admission::bad_args:
        rp.deliver(make_error(error_code::bad_request, "args are not exactly one msgpack value"));
        return;
      case admission::too_large:
        rp.deliver(make_error(error_code::bad_request,
                              "request of " + std::to_string(req.args.bytes.size())
                                + " bytes of args exceeds the "
                                + std::to_string(link_->max_frame_size())
                                + "-byte frame limit"));
        return;
      case admission::accepted:
        return;
    }
  }

  /// The execute handler of both backends: admits `req` through the link
  /// or answers why not. Returns the request's id when admitted (else 0).
  template <class Self>
  std::pair<caf::result<payload>, uint64_t> submit(Self* self, execute& req, uint32_t worker_id) {
    auto rp = self->template make_response_promise<payload>();
    uint64_t id = 0;
    auto verdict = link_->submit(req, rp, &id);
    if (verdict != admission::accepted)
      refuse(verdict, req, rp, worker_id);
    return {caf::result<payload>{rp}, id};
  }

  /// Ends the worker (see the top and `retirement`).
  template <class Self>
  void retire(Self* self, retirement r) {
    if (!link_->begin_retire(r.for_requests))
      return;
    settled_ = !r.settle_later;
    exit_reason_ = r.reason;
    for (auto& rp : ready_waiters_)
      rp.deliver(r.reason ? r.reason : r.for_requests);
    ready_waiters_.clear();
    if (!link_->listener()) {
      acked_ = true;
    } else {
      auto acked = [self, this] {
        acked_ = true;
        if (settled_)
          self->quit(exit_reason_);
      };
      self->request(link_->listener(), std::chrono::seconds(5), dying_atom::value,
                    static_cast<uint64_t>(self->id()), r.deliberate)
        .then([acked](bool) { acked(); }, [acked](caf::error&) { acked(); });
    }
    if (settled_) {
      link_->settle(r.for_requests, std::numeric_limits<size_t>::max());
      if (acked_)
        self->quit(std::move(r.reason));
    }
  }

  /// A request past its deadline cannot be interrupted, or did not stop
  /// when it was: the worker counts as hung. `kill()` stops its process and
  /// the worker retires deliberately (a recycle, not a crash); what it held
  /// fails with `for_requests`, now or (`settle_later`) at settle(); the
  /// late requests were answered `timeout` already (worker_link::interrupt).
  /// `why` says what happened (the caller has logged it).
  template <class Self, class Kill>
  void recycle(Self* self, const std::string& why, caf::error for_requests, bool settle_later,
               Kill kill) {
    kill();
    auto timeout = make_error(error_code::timeout, why);
    retirement r;
    r.for_requests = std::move(for_requests);
    r.reason = timeout;
    r.deliberate = true;
    r.settle_later = settle_later;
    retire(self, std::move(r));
  }

  /// What recycle() says of the late request `id`.
  std::string timed_out(const std::string& tag, uint64_t id, const std::string& then) const {
    return tag + ": request " + std::to_string(id) + " ('" + link_->command_of(id)
           + "') timed out; " + then;
  }

  /// What the other requests of worker `tag`, recycled because a request
  /// would not stop, hear (`details`: that request's stack dump, if any).
  static caf::error recycled_error(const std::string& tag, std::string details = {}) {
    return make_error(error_code::worker_crashed,
                      tag + " recycled after another request timed out", "", std::move(details));
  }

  /// Whether retire() waits for settle().
  bool awaiting_settle() const noexcept {
    return !settled_;
  }

  /// Settles what retire(settle_later) left in flight
  /// (request_ledger::settle_sequential) and quits once the listener
  /// answered too.
  template <class Self>
  void settle(Self* self, const caf::error& err, size_t may_have_started) {
    link_->settle(err, may_have_started);
    if (!settled_) {
      settled_ = true;
      if (acked_)
        self->quit(exit_reason_);
    }
  }

  /// Installs the stop as `self`'s exit handler (see the top); `drain()`
  /// lets what is in flight finish; the backend ends the stop with
  /// finish_stop().
  template <class Self, class Drain>
  void stop_on_exit(Self* self, worker_status& status, Drain drain) {
    self->set_exit_handler([this, &status, drain](caf::exit_msg& msg) {
      if (status.phase == worker_phase::stopping)
        return;
      status.phase = worker_phase::stopping;
      link_->set_phase(worker_phase::stopping);
      stop_reason_ = std::move(msg.reason);
      drain();
    });
  }

  /// Ends a stop: what is still in flight fails with shutting_down (`why`)
  /// and the worker quits with the exit message's reason; with `unavailable`
  /// instead when the stop was not asked for but forced (its supervisor gave
  /// up: the pool restarts, the caller may retry).
  template <class Self>
  void finish_stop(Self* self, const std::string& why) {
    retirement r;
    auto& reason = stop_reason_;
    bool asked = !reason || reason == caf::exit_reason::user_shutdown
                 || reason == caf::exit_reason::normal;
    r.for_requests = asked ? make_error(error_code::shutting_down, why)
                           : make_error(error_code::unavailable,
                                        why + " (" + to_string_readable(reason)
                                          + "); retry later");
    r.reason = std::move(stop_reason_);
    retire(self, std::move(r));
  }

  /// Answers a ready_atom request now if `status` is ready, else once
  /// announce_ready() runs (or with the error the worker dies of).
  template <class Self>
  caf::result<worker_status> await_ready(Self* self, const worker_status& status) {
    if (status.phase == worker_phase::ready)
      return link_->snapshot(status);
    auto rp = self->template make_response_promise<worker_status>();
    ready_waiters_.push_back(rp);
    return rp;
  }

  void announce_ready(const worker_status& status) {
    link_->set_phase(worker_phase::ready);
    for (auto& rp : ready_waiters_)
      rp.deliver(link_->snapshot(status));
    ready_waiters_.clear();
  }

private:
  worker_link_ptr link_;
  bool acked_ = false;
  bool settled_ = true;
  caf::error exit_reason_;
  caf::error stop_reason_;
  std::vector<caf::typed_response_promise<worker_status>> ready_waiters_;
};

} // namespace pyvisor

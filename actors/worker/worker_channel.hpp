// pyvisor::worker_channel: one Python worker's request path for the actor
// that dispatches to it (the pool core). The dispatcher writes the request
// frame to the worker's process and records it in the worker's ledger
// itself, on its own thread, instead of delegating the request to the worker
// actor: one mailbox hop less per request, and no scheduler thread woken
// for it (docs/architecture.md, "Thread hand-offs").
//
// Guarantees: try_submit takes a request only when the worker actor would
// run it in exactly the same way (the worker is ready, neither stopping nor
// retiring nor gone, the args are one msgpack value and the frame is within
// the limit). Otherwise it returns false and changes nothing; the
// dispatcher then delegates to the actor, which answers as it always did
// (shutting_down, bad_request, a requeue from a retiring worker). A request
// taken here is answered by the ledger like any other: by its reply (read
// and answered on the process's I/O thread), the deadline sweep, or the
// worker's retirement.
//
// Ownership: the worker actor makes the channel and shares it with whoever
// asks (channel_atom, local only: it holds pointers). The ledger and the
// process are shared with the actor; every use of either holds the
// ledger's lock. The channel does not keep the actor alive; once the actor
// is gone the ledger is closed and try_submit refuses.

#pragma once

#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "caf/allowed_unsafe_message_type.hpp"
#include "caf/atom.hpp"
#include "caf/typed_response_promise.hpp"

#include "actors/process/python_process.hpp"
#include "actors/worker/request_ledger.hpp"
#include "messages/wire_codec.hpp"
#include "pyvisor/execute.hpp"

namespace pyvisor {

/// Asks a Python worker actor for its channel (answered with a
/// worker_channel_ptr; other backends do not understand it).
using channel_atom = caf::atom_constant<caf::atom("pv_channel")>;

class worker_channel {
public:
  worker_channel(std::shared_ptr<request_ledger> ledger, std::shared_ptr<python_process> proc,
                 size_t max_frame_size)
    : ledger_(std::move(ledger)), proc_(std::move(proc)), max_frame_size_(max_frame_size) {
    // nop
  }

  /// Runs `req` on the worker if it can take it as the actor would (see
  /// the top); `rp` then belongs to the ledger. False: nothing happened.
  bool try_submit(execute& req, caf::typed_response_promise<payload>& rp) {
    // Scanning the args needs no lock: the I/O thread waits on it.
    if (!is_valid_msgpack(req.args))
      return false;
    std::lock_guard<std::mutex> guard{ledger_->mutex()};
    if (!open_ || !ledger_->accepts_requests())
      return false;
    auto frame = encode(req);
    if (!fits(frame))
      return false;
    send_locked(std::move(frame), req, std::move(rp));
    return true;
  }

  /// The frame of `req` under the next request id. Requires the ledger's
  /// lock.
  std::vector<char> encode(const execute& req) const {
    std::vector<char> frame;
    frame.reserve(req.args.bytes.size() + req.command.size() + req.session.size() + 48);
    wire::append_request(frame, ledger_->peek_id(), req.command, req.args.bytes, req.session);
    return frame;
  }

  /// Whether `frame` is within the frame limit (else: bad_request).
  bool fits(const std::vector<char>& frame) const noexcept {
    return frame.size() - 4 <= max_frame_size_;
  }

  /// Writes `frame` (from encode()) and records `req` with `rp`. Requires
  /// the ledger's lock, held since encode().
  void send_locked(std::vector<char> frame, execute& req,
                   caf::typed_response_promise<payload> rp) {
    auto id = ledger_->next_id();
    proc_->send(std::move(frame));
    ledger_->add(id, req, std::move(rp));
  }

  /// The done reports of replies answered on the process's I/O thread go
  /// to `inbox`, whose `owner` is woken when it asks (completion_inbox.hpp).
  void report_to(std::shared_ptr<completion_inbox> inbox, caf::actor_addr owner) {
    std::lock_guard<std::mutex> guard{ledger_->mutex()};
    ledger_->report_elsewhere_to(std::move(inbox), std::move(owner));
  }

  /// Whether dispatchers may submit here: true from the worker's hello
  /// until it stops. Requires the ledger's lock.
  void set_open(bool open) noexcept {
    open_ = open;
  }

private:
  std::shared_ptr<request_ledger> ledger_;
  std::shared_ptr<python_process> proc_;
  size_t max_frame_size_;
  bool open_ = false;
};

using worker_channel_ptr = std::shared_ptr<worker_channel>;

} // namespace pyvisor

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(pyvisor::worker_channel_ptr)

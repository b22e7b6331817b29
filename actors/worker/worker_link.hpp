// pyvisor::worker_link: the one owner of a worker's request path. It holds
// the worker's process (none for the in-process mock), its ledger of
// requests in flight (request_ledger.hpp), the one lock that guards both,
// the deadline sweep's timer and the courier that carries out what the
// ledger decides (reply_courier.hpp). The worker actor keeps only the life
// cycle (worker_lifecycle.hpp); the pool core writes requests through the
// link itself, without a mailbox hop (docs/architecture.md, "Thread
// hand-offs").
//
// Who calls what:
// - submit(): any thread (the pool core's, the worker actor's);
// - on_frames(): the process's I/O thread, with the frames of one read;
// - everything else: the worker actor (and its attach functor: close()).
//
// Lock order, the only one: link, then process (python_process's own lock,
// taken by send()), then CAF's clock (the sweep is armed under the link's
// lock). What runs under the link's lock: admission, frame encoding, the
// write to the process (so that ids reach the pipe in id order) and the
// ledger's bookkeeping. What never does: delivery. Settlements are taken
// out under the lock and carried out after it is released, so no mailbox
// is touched while the lock is held.
//
// Admission (admit()) is the one predicate that decides whether this worker
// may run a request; every entry uses it: the pool's submit, the actor's
// execute handler, the mock's.

#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "caf/actor_addr.hpp"
#include "caf/actor_clock.hpp"
#include "caf/allowed_unsafe_message_type.hpp"
#include "caf/atom.hpp"

#include "actors/sweep_timer.hpp"
#include "actors/worker/reply_courier.hpp"
#include "actors/worker/request_ledger.hpp"
#include "messages/wire_codec.hpp"
#include "pyvisor/worker_actor.hpp"

namespace pyvisor {

class python_process;

/// Asks a Python worker actor for its link (answered with a
/// worker_link_ptr; local only: it holds pointers; other backends do not
/// understand it).
using link_atom = caf::atom_constant<caf::atom("pv_link")>;

/// Whether a worker may run a request now, and if not why.
enum class admission : uint8_t {
  accepted,
  /// The worker is going away: the request goes back (refuse()).
  retiring,
  /// Stopping (a supervisor's shutdown) or gone: shutting_down.
  stopping,
  /// The args are not exactly one msgpack value: bad_request.
  bad_args,
  /// The frame exceeds the frame limit: bad_request.
  too_large,
};

/// What the deadline sweep found (worker_link::sweep).
struct sweep_due {
  /// Past their deadline: to be stopped (interrupted, or the worker killed).
  std::vector<uint64_t> late;
  /// Interrupted or cancelled and still running past the grace: the worker
  /// did not stop them and is killed.
  std::vector<uint64_t> stuck;
};

/// Carries one control message to the worker (worker_link::enable_control),
/// with the signal that makes it read it at once, or without (credit, which
/// the worker reads while it waits for it); false when it could not.
using control_sender = std::function<bool(const std::vector<char>&, bool signal)>;

/// A worker's error reply as the caller sees it; `prefix` goes before its
/// message (a Python error's type before its text).
caf::error error_of(const wire::remote_error& e, const std::string& prefix = {});

/// A reply frame's result (moves the result bytes out).
caf::expected<payload> result_of(wire::frame& f);

class worker_link {
public:
  /// `owner`: the worker actor; `listener`: whom it reports to (the pool;
  /// may be invalid); `max_frame_size`: the largest frame body written to
  /// the process.
  worker_link(caf::actor_clock& clock, caf::actor_addr owner, const worker_settings& cfg,
              worker_listener_actor listener, size_t max_frame_size);

  /// Gives the link its process (before any request; the mock has none).
  void attach(std::shared_ptr<python_process> proc);

  /// Runs `req` on the worker if admit() says so: writes its frame (with a
  /// process), records it and watches its deadline; `rp` then belongs to
  /// the link and the id is returned through `id`. Anything else: nothing
  /// happened, `rp` is untouched, and the answer is the caller's.
  admission submit(execute& req, caf::typed_response_promise<payload>& rp, uint64_t* id = nullptr);

  /// The one admission predicate (see the top), in this order: retiring,
  /// stopping, `valid_args` (the args are one msgpack value, scanned before
  /// the lock), `frame_bytes` (the frame body's size, 0 without a process)
  /// within the limit. Requires the lock.
  admission admit(bool valid_args, size_t frame_bytes) const;

  /// The frame-size limit for messages.
  size_t max_frame_size() const noexcept {
    return max_frame_size_;
  }

  /// The I/O thread's part: answers the replies at the front of `frames`
  /// that the link may answer here (requests in flight, the worker neither
  /// retiring nor gone) straight to their callers; returns the rest (hello,
  /// late or unknown replies, and everything after the first of those) for
  /// the actor, in order.
  std::vector<wire::frame> on_frames(std::vector<wire::frame>&& frames);

  /// A chunk of request `id` that on_frames left to the actor (or the
  /// mock's): delivered to its caller, dropped, or invalid (no such
  /// stream: the actor treats it as a protocol error).
  chunk_fate chunk(uint64_t id, std::vector<char>&& value);

  /// A concurrent worker began request `id` (its started frame, read by the
  /// actor: frames after a hello or while settling).
  void begun(uint64_t id);

  /// The worker runs several requests at once and says which began: its
  /// requests are settled by that (request_ledger::announce_starts), and
  /// interrupts name every late one.
  void announce_starts();

  /// The caller of the stream it tagged `tag` has taken `n` of its chunks:
  /// the worker is told (credit, without a signal) and may send more.
  void taken(const caf::actor_addr& caller, uint64_t tag, uint64_t n);

  /// The worker's phase as dispatchers see it (starting, ready, stopping).
  void set_phase(worker_phase phase);
  worker_phase phase() const;

  /// Answers request `id` from the actor; false for an unknown id.
  bool complete(uint64_t id, caf::expected<payload> result);

  /// Writes session.drop for `session` (a request nobody waits for).
  void drop_session(const std::string& session);

  /// The worker goes away (`err` for what reaches it from now on): false if
  /// it was already going. From now on the I/O thread answers nothing and
  /// submit() says `retiring`.
  bool begin_retire(const caf::error& err);
  bool retiring() const;

  /// Answers a request that reached a retiring worker (see
  /// request_ledger::refuse).
  void refuse(execute& req, caf::typed_response_promise<payload> rp);

  /// request_ledger::settle_sequential (fail_all with the maximum).
  void settle(const caf::error& err, size_t may_have_started);

  /// The sweep_atom arrived: the late and the stuck requests, oldest first
  /// (the sweep is re-armed while requests remain).
  sweep_due sweep();

  /// The worker speaks the control protocol (its hello said so): from now
  /// on a late or cancelled request is interrupted through `send`, and the
  /// worker killed only when it is still running it interrupt_grace later.
  void enable_control(control_sender send);

  /// The worker mapped its shared rings (its hello said so): arguments of
  /// at least `threshold` bytes go through the ring when it has room.
  void enable_shared(size_t threshold);
  bool controlled() const;

  /// Answers the late requests `ids` with `err` now (an idempotent one is
  /// retried elsewhere) and asks the worker to stop them: interrupted if
  /// running, revoked if not begun (request_ledger::detach).
  void interrupt(const std::vector<uint64_t>& ids, const caf::error& err);

  /// Cancels the requests of `caller` (tag 0: all of them, else the one it
  /// tagged so): answered `cancelled` now, then interrupted or revoked as
  /// above. Returns how many. Without control the worker is not told: the
  /// request runs on, its reply dropped, and is stuck (the worker killed)
  /// only past its own deadline.
  size_t cancel(const caf::actor_addr& caller, uint64_t tag);

  /// Asks the worker to give back the stateless requests written behind
  /// the one it has run for `min_age` (request_ledger::take_back); those it
  /// never began are requeued once it answers (on_revoked). Returns how
  /// many were asked for.
  /// `later`: whether asking again once the head is older can find any
  /// (request_ledger::take_back).
  size_t take_back(caf::timespan min_age, bool* later = nullptr);

  /// The I/O thread's part: the worker will never run `ids`.
  void on_revoked(const std::vector<uint64_t>& ids);

  /// The command of request `id` (for messages), or empty.
  std::string command_of(uint64_t id) const;

  /// `status` with the ledger's counts.
  worker_status snapshot(worker_status status) const;

  /// Reports go to the pool's completion inbox from now on.
  void report_to(std::shared_ptr<completion_inbox> inbox, caf::actor_addr wake);

  /// The actor is gone: nothing is answered or submitted any more; the
  /// process is killed and its I/O thread joined. Idempotent.
  void close();

  const std::shared_ptr<python_process>& process() const noexcept {
    return proc_;
  }

  const worker_listener_actor& listener() const noexcept {
    return courier_.listener();
  }

private:
  caf::actor_clock::time_point now() const {
    return clock_->now();
  }

  // Requires mtx_.
  void arm_sweep_locked();

  // A control message made under the lock, sent after it (like delivery,
  // a send never runs under the link's lock).
  struct pending_control {
    std::vector<char> msg;
    control_sender send;
    bool signal = true;
    void flush() const {
      if (send)
        send(msg, signal);
    }
  };

  // Takes a chunk of request `id` for its caller into `out` (deliver).
  // Requires mtx_.
  chunk_fate take_chunk_locked(uint64_t id, std::vector<char>&& value,
                               std::vector<chunk_delivery>& out);

  // Detaches `ids` with `err` and prepares the message that tells the
  // worker to stop them. Requires mtx_; the caller carries out the
  // settlements and sends `out` after unlocking.
  std::vector<settlement> stop_locked(const std::vector<uint64_t>& ids, const caf::error& err,
                                      pending_control& out);

  caf::actor_clock* clock_;
  caf::actor_addr owner_;
  reply_courier courier_;
  size_t max_frame_size_;
  std::shared_ptr<python_process> proc_;

  mutable std::mutex mtx_;
  request_ledger ledger_;
  sweep_timer sweep_;
  worker_phase phase_ = worker_phase::starting;
  bool retiring_ = false;
  bool closed_ = false;
  caf::timespan interrupt_grace_;
  wire::stream_window window_;
  bool concurrent_ = false;
  control_sender control_;
  /// Arguments this large go through the shared ring (0: never).
  size_t shared_threshold_ = 0;
  caf::error retire_error_;
};

using worker_link_ptr = std::shared_ptr<worker_link>;

} // namespace pyvisor

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(pyvisor::worker_link_ptr)

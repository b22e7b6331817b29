#include "actors/worker/worker_link.hpp"

#include <cstring>

#include <atomic>

#include "caf/actor_cast.hpp"
#include "caf/config.hpp"
#include "caf/mailbox_element.hpp"
#include "caf/response_promise.hpp"
#include "caf/send.hpp"

#include "actors/process/python_process.hpp"

// reply_courier mirrors response_promise::deliver_impl / delegate of this
// CAF version (stages: the last one is next; the promise's source, id and
// remaining stages travel along). Re-read those before changing the version.
static_assert(CAF_VERSION == 1706, "reply_courier mirrors CAF 0.17.6's response_promise");

namespace pyvisor {

// -- reply_courier ------------------------------------------------------------------

namespace {

/// What response_promise::deliver does, without an execution context;
/// responses name `sender` (the worker).
void deliver(caf::response_promise& rp, const caf::actor_addr& sender, caf::message msg) {
  if (!rp.pending())
    return;
  auto stages = rp.stages();
  if (stages.empty()) {
    rp.source()->enqueue(caf::make_mailbox_element(caf::actor_cast<caf::strong_actor_ptr>(sender),
                                                   rp.id().response_id(), {}, std::move(msg)),
                         nullptr);
  } else {
    auto next = std::move(stages.back());
    stages.pop_back();
    next->enqueue(caf::make_mailbox_element(rp.source(), rp.id(), std::move(stages),
                                            std::move(msg)),
                  nullptr);
  }
  rp = caf::response_promise{};
}

/// What response_promise::delegate(receiver, ...) does, likewise.
void delegate(caf::response_promise& rp, const caf::strong_actor_ptr& receiver,
              caf::message msg) {
  if (!rp.pending() || !receiver)
    return;
  receiver->enqueue(caf::make_mailbox_element(rp.source(), rp.id(), rp.stages(), std::move(msg)),
                    nullptr);
  rp = caf::response_promise{};
}

} // namespace

reply_courier::reply_courier(caf::actor_addr owner, worker_listener_actor listener)
  : owner_(std::move(owner)), owner_id_(owner_.id()), listener_(std::move(listener)) {
  // nop
}

void reply_courier::report_to(std::shared_ptr<completion_inbox> inbox, caf::actor_addr wake) {
  auto ref = std::make_shared<const inbox_ref>(inbox_ref{std::move(inbox), std::move(wake)});
  std::atomic_store(&inbox_, std::move(ref));
}

void reply_courier::report(const settlement& s) const {
  if (!listener_)
    return;
  auto code = s.what == verdict::retry || s.what == verdict::requeue ? moved_on_code
                                                                      : static_cast<uint8_t>(s.code());
  auto& req = s.entry.request;
  // A MemoryError means the process hit its limit (or is close to it):
  // whatever it holds now may be what fails the next request.
  bool retire = s.what == verdict::answer && !s.result
                && info_of(s.result.error()).python_type == "MemoryError";
  if (auto ref = std::atomic_load(&inbox_)) {
    if (ref->inbox->post(completion{owner_id_, code, s.service_ns, req.session, req.command,
                                    retire, req.stream, s.entry.chunks, s.entry.chunk_bytes}))
      if (auto hdl = caf::actor_cast<caf::actor>(ref->wake))
        caf::anon_send(hdl, take_inbox_atom::value);
    return;
  }
  caf::anon_send(listener_, done_atom::value, owner_id_, code, s.service_ns, req.session,
                 req.command);
}

void reply_courier::carry_out(settlement& s) const {
  auto& rp = static_cast<caf::response_promise&>(s.entry.promise);
  switch (s.what) {
    case verdict::answer:
      report(s);
      deliver(rp, owner_,
              s.result ? caf::make_message(std::move(*s.result))
                       : caf::make_message(s.result.error()));
      return;
    case verdict::fail:
      report(s);
      deliver(rp, owner_, caf::make_message(s.error));
      return;
    case verdict::retry:
      if (s.frees_slot)
        report(s);
      delegate(rp, caf::actor_cast<caf::strong_actor_ptr>(listener_),
               caf::make_message(retry_atom::value, std::move(s.entry.request)));
      return;
    case verdict::requeue:
      if (s.frees_slot)
        report(s);
      delegate(rp, caf::actor_cast<caf::strong_actor_ptr>(listener_),
               caf::make_message(requeue_atom::value, std::move(s.entry.request)));
      return;
    case verdict::drop:
      return;
  }
}

void reply_courier::carry_out(std::vector<chunk_delivery>& cs) const {
  auto sender = caf::actor_cast<caf::strong_actor_ptr>(owner_);
  for (auto& c : cs)
    if (c.to)
      c.to->enqueue(caf::make_mailbox_element(sender, caf::make_message_id(), {},
                                              chunk_atom::value, c.tag, std::move(c.value)),
                    nullptr);
}

// -- worker_link --------------------------------------------------------------------

caf::error error_of(const wire::remote_error& e, const std::string& prefix) {
  auto code = error_code::python_error;
  if (!e.code.empty() && !from_string(e.code, code))
    code = error_code::python_error;
  auto msg = e.type.empty() || code != error_code::python_error ? e.message
                                                                  : e.type + ": " + e.message;
  return make_error(code, prefix + msg, e.type, e.traceback);
}

caf::expected<payload> result_of(wire::frame& f) {
  if (f.ok)
    return payload{std::move(f.result)};
  return error_of(f.error);
}

namespace {

request_ledger::limits limits_of(const worker_settings& cfg, bool has_listener) {
  request_ledger::limits lim;
  lim.request_timeout = cfg.request_timeout;
  lim.attempt_timeout = cfg.attempt_timeout;
  lim.has_listener = has_listener;
  return lim;
}

} // namespace

worker_link::worker_link(caf::actor_clock& clock, caf::actor_addr owner,
                         const worker_settings& cfg, worker_listener_actor listener,
                         size_t max_frame_size)
  : clock_(&clock),
    owner_(owner),
    courier_(std::move(owner), std::move(listener)),
    max_frame_size_(max_frame_size),
    ledger_(limits_of(cfg, static_cast<bool>(courier_.listener()))),
    interrupt_grace_(cfg.interrupt_grace),
    window_{cfg.stream_window, cfg.stream_window_bytes} {
  // nop
}

void worker_link::attach(std::shared_ptr<python_process> proc) {
  std::lock_guard<std::mutex> guard{mtx_};
  proc_ = std::move(proc);
}

admission worker_link::admit(bool valid_args, size_t frame_bytes) const {
  // A retiring worker hands even bad requests back: it never ran them.
  if (retiring_)
    return admission::retiring;
  if (closed_ || phase_ == worker_phase::stopping)
    return admission::stopping;
  if (!valid_args)
    return admission::bad_args;
  if (frame_bytes > max_frame_size_)
    return admission::too_large;
  return admission::accepted;
}

admission worker_link::submit(execute& req, caf::typed_response_promise<payload>& rp,
                              uint64_t* id) {
  // Stamped before anything is written: the I/O thread may write the rest
  // of the frame and read the reply while this thread is preempted between
  // send() and add(), and a stamp taken then would make a late reply look
  // early (a success past the caller's deadline).
  auto stamp = now();
  // Scanning the args needs no lock: the I/O thread may be waiting on it.
  bool valid = is_valid_msgpack(req.args);
  std::vector<char> frame;
  std::lock_guard<std::mutex> guard{mtx_};
  size_t body = 0;
  if (proc_ && valid) {
    // The caller's deadline in the worker's time.monotonic() (CLOCK_MONOTONIC,
    // which steady_clock is here), for ctx.deadline.
    auto timeout = req.timeout.count() > 0 ? req.timeout : ledger_.default_timeout();
    auto deadline = std::chrono::duration<double>(
                      std::chrono::steady_clock::now().time_since_epoch() + timeout)
                      .count();
    // A stream is paced by credit on the control socket; a worker that has
    // none answers a generator as one list.
    auto window = req.stream && control_ ? &window_ : nullptr;
    const auto& args = req.args.bytes;
    bool refused = false;
    if (shared_threshold_ > 0 && args.size() >= shared_threshold_) {
      // The frame without the args says how large it would be with them
      // (the limit is the same either way). Reserved only once admitted:
      // ring bytes never named by a frame would never be freed.
      wire::append_request(frame, ledger_.peek_id(), req.command, {}, req.session, deadline,
                           window);
      body = frame.size() - 4 - 1 + args.size();
      wire::shared_ref ref;
      char* at = nullptr;
      refused = admit(valid, body) != admission::accepted;
      if (!refused)
        at = proc_->reserve_shared(args.size(), ref);
      frame.clear();
      if (at != nullptr) {
        std::memcpy(at, args.data(), args.size());
        wire::append_request(frame, ledger_.peek_id(), req.command, {}, req.session, deadline,
                             window, &ref);
      }
    }
    if (frame.empty() && !refused) {
      frame.reserve(args.size() + req.command.size() + req.session.size() + 64);
      wire::append_request(frame, ledger_.peek_id(), req.command, args, req.session, deadline,
                           window);
      body = frame.size() - 4;
    }
  }
  auto verdict = admit(valid, body);
  if (verdict != admission::accepted)
    return verdict;
  if (proc_)
    proc_->send(std::move(frame));
  auto added = ledger_.add(req, std::move(rp), stamp);
  if (id != nullptr)
    *id = added;
  arm_sweep_locked();
  return admission::accepted;
}

namespace {

/// Where a stream's chunks go: the request's caller (the promise's source).
caf::strong_actor_ptr caller_of(ledger_entry& e) {
  return static_cast<caf::response_promise&>(e.promise).source();
}

} // namespace

chunk_fate worker_link::take_chunk_locked(uint64_t id, std::vector<char>&& value,
                                          std::vector<chunk_delivery>& out) {
  ledger_entry* e = nullptr;
  auto fate = ledger_.chunk(id, &e);
  if (fate == chunk_fate::deliver) {
    e->chunk_bytes += value.size();
    out.push_back(chunk_delivery{caller_of(*e), e->request.tag, payload{std::move(value)}});
  }
  return fate;
}

std::vector<wire::frame> worker_link::on_frames(std::vector<wire::frame>&& fs) {
  std::vector<settlement> answered;
  std::vector<chunk_delivery> chunks;
  size_t n = 0;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (!retiring_ && !closed_) {
      auto t = now();
      for (; n < fs.size(); ++n) {
        auto& f = fs[n];
        if (f.type == wire::frame_type::chunk) {
          // Invalid ones go to the actor (a protocol error).
          if (take_chunk_locked(f.id, std::move(f.result), chunks) == chunk_fate::invalid)
            break;
          continue;
        }
        if (f.type == wire::frame_type::started) {
          ledger_.begin(f.id);
          continue;
        }
        if (f.type != wire::frame_type::reply || !ledger_.awaits_reply(f.id))
          break;
        answered.push_back(*ledger_.complete(f.id, result_of(f), t));
      }
    }
  }
  // A stream's chunks all came before its reply: delivered first, they
  // reach its caller before the response.
  courier_.carry_out(chunks);
  courier_.carry_out(answered);
  fs.erase(fs.begin(), fs.begin() + static_cast<std::ptrdiff_t>(n));
  return std::move(fs);
}

void worker_link::begun(uint64_t id) {
  std::lock_guard<std::mutex> guard{mtx_};
  ledger_.begin(id);
}

void worker_link::announce_starts() {
  std::lock_guard<std::mutex> guard{mtx_};
  ledger_.announce_starts();
  concurrent_ = true;
}

chunk_fate worker_link::chunk(uint64_t id, std::vector<char>&& value) {
  std::vector<chunk_delivery> chunks;
  chunk_fate fate;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (closed_)
      return chunk_fate::drop;
    fate = take_chunk_locked(id, std::move(value), chunks);
  }
  courier_.carry_out(chunks);
  return fate;
}

void worker_link::taken(const caf::actor_addr& caller, uint64_t tag, uint64_t n) {
  pending_control ctl;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (tag == 0 || !control_ || retiring_ || closed_)
      return;
    auto ids = ledger_.of_caller(caller, tag);
    if (ids.size() != 1 || !ledger_.find(ids.front())->request.stream)
      return;
    wire::append_credit(ctl.msg, ids.front(), n);
    ctl.send = control_;
    ctl.signal = false; // read by the worker while it waits for credit
  }
  ctl.flush();
}

void worker_link::set_phase(worker_phase phase) {
  std::lock_guard<std::mutex> guard{mtx_};
  phase_ = phase;
}

worker_phase worker_link::phase() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return phase_;
}

bool worker_link::complete(uint64_t id, caf::expected<payload> result) {
  std::optional<settlement> s;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    s = ledger_.complete(id, std::move(result), now());
  }
  if (!s)
    return false;
  courier_.carry_out(*s);
  return true;
}

void worker_link::drop_session(const std::string& session) {
  std::lock_guard<std::mutex> guard{mtx_};
  if (!proc_ || retiring_ || closed_ || phase_ == worker_phase::stopping)
    return;
  auto id = ledger_.add_internal("session.drop", now());
  std::vector<char> frame;
  wire::append_request(frame, id, "session.drop", payload{}.bytes, session);
  proc_->send(std::move(frame));
}

bool worker_link::begin_retire(const caf::error& err) {
  std::lock_guard<std::mutex> guard{mtx_};
  if (retiring_)
    return false;
  retiring_ = true;
  retire_error_ = err;
  return true;
}

bool worker_link::retiring() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return retiring_;
}

void worker_link::refuse(execute& req, caf::typed_response_promise<payload> rp) {
  settlement s;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    s = ledger_.refuse(req, std::move(rp), retire_error_);
  }
  courier_.carry_out(s);
}

void worker_link::settle(const caf::error& err, size_t may_have_started) {
  std::vector<settlement> out;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    out = ledger_.settle_sequential(err, may_have_started, now());
  }
  courier_.carry_out(out);
}

sweep_due worker_link::sweep() {
  std::lock_guard<std::mutex> guard{mtx_};
  sweep_.fired();
  if (retiring_)
    return {}; // what is left is settled by the retirement under way
  auto t = now();
  sweep_due due{ledger_.overdue(t), ledger_.stuck(t)};
  if (due.stuck.empty() && !ledger_.empty())
    arm_sweep_locked();
  return due;
}

void worker_link::enable_shared(size_t threshold) {
  std::lock_guard<std::mutex> guard{mtx_};
  shared_threshold_ = threshold;
}

void worker_link::enable_control(control_sender send) {
  std::lock_guard<std::mutex> guard{mtx_};
  control_ = std::move(send);
}

bool worker_link::controlled() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return static_cast<bool>(control_);
}

std::vector<settlement> worker_link::stop_locked(const std::vector<uint64_t>& ids,
                                                 const caf::error& err, pending_control& out) {
  std::vector<settlement> result;
  auto t = now();
  std::vector<uint64_t> told;
  for (auto id : ids) {
    // A worker that cannot be interrupted runs a cancelled request to its
    // end: it is stuck (killed) only once past its own deadline.
    auto grace = interrupt_grace_;
    if (!control_)
      if (auto e = ledger_.find(id))
        grace = std::max(caf::timespan{0}, std::chrono::duration_cast<caf::timespan>(
                                             e->deadline - t));
    if (auto s = ledger_.detach(id, err, t, grace)) {
      result.push_back(std::move(*s));
      told.push_back(id);
    }
  }
  if (!told.empty() && control_ && !retiring_ && !closed_) {
    // One message: those not begun are revoked, the one running (only the
    // oldest can be, on a sequential worker; any, on a concurrent one) is
    // interrupted; the worker decides which is which.
    auto reason = code_of(err) == error_code::timeout ? "timeout" : "cancelled";
    if (concurrent_)
      wire::append_control(out.msg, told, told, reason);
    else
      wire::append_control(out.msg, told, told.front(), reason);
    out.send = control_;
  }
  if (!result.empty())
    arm_sweep_locked();
  return result;
}

void worker_link::interrupt(const std::vector<uint64_t>& ids, const caf::error& err) {
  std::vector<settlement> out;
  pending_control ctl;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    out = stop_locked(ids, err, ctl);
  }
  ctl.flush();
  courier_.carry_out(out);
}

size_t worker_link::cancel(const caf::actor_addr& caller, uint64_t tag) {
  std::vector<settlement> out;
  pending_control ctl;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (retiring_ || closed_)
      return 0;
    auto ids = ledger_.of_caller(caller, tag);
    if (ids.empty())
      return 0;
    out = stop_locked(ids, make_error(error_code::cancelled, "the request was cancelled"), ctl);
  }
  ctl.flush();
  courier_.carry_out(out);
  return out.size();
}

size_t worker_link::take_back(caf::timespan min_age, bool* later) {
  pending_control ctl;
  size_t n = 0;
  if (later != nullptr)
    *later = false;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (!control_ || retiring_ || closed_)
      return 0;
    auto ids = ledger_.take_back(now(), min_age, later);
    if (ids.empty())
      return 0;
    wire::append_control(ctl.msg, ids);
    ctl.send = control_;
    n = ids.size();
  }
  ctl.flush();
  return n;
}

void worker_link::on_revoked(const std::vector<uint64_t>& ids) {
  std::vector<settlement> out;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (closed_)
      return;
    out = ledger_.revoked(ids, now());
  }
  courier_.carry_out(out);
}

std::string worker_link::command_of(uint64_t id) const {
  std::lock_guard<std::mutex> guard{mtx_};
  auto e = ledger_.find(id);
  return e ? e->request.command : std::string{};
}

worker_status worker_link::snapshot(worker_status status) const {
  std::lock_guard<std::mutex> guard{mtx_};
  status.in_flight = ledger_.in_flight();
  status.served = ledger_.served();
  return status;
}

void worker_link::report_to(std::shared_ptr<completion_inbox> inbox, caf::actor_addr wake) {
  courier_.report_to(std::move(inbox), std::move(wake));
}

void worker_link::close() {
  std::shared_ptr<python_process> proc;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    closed_ = true;
    proc = proc_;
  }
  // Outside the lock: close() joins the I/O thread, which may be waiting
  // for the lock in on_frames().
  if (proc)
    proc->close();
}

void worker_link::arm_sweep_locked() {
  sweep_.arm(*clock_, owner_);
}

} // namespace pyvisor

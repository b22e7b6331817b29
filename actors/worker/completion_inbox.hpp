// pyvisor::completion_inbox: where a worker's process I/O thread leaves its
// `done` reports for the dispatcher (the pool core) instead of sending a
// message per reply. A message per reply wakes a scheduler thread per reply,
// off the caller's critical path but on a CPU the worker or the caller may
// need; the dispatcher takes the reports at its next activation instead.
//
// Guarantees: a report is posted before the reply it reports is delivered,
// and the dispatcher takes everything posted (take()) first thing in every
// handler that reads or changes load, stats or worker slots, so what it
// decides and what `stats` shows count every reply its callers received, as
// with the messages. When the dispatcher has work waiting for a worker to
// free up (wake_when_posted(true)), the first report posted after it last
// took asks for one wake-up message (post() returns true); otherwise no
// message is sent at all.
//
// Ownership: the dispatcher makes it and hands it to each worker's channel;
// all members are guarded by its own lock, so any thread may post.

#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "caf/atom.hpp"

namespace pyvisor {

/// Wakes the dispatcher to take its inbox (see post()).
using take_inbox_atom = caf::atom_constant<caf::atom("pv_inbox")>;

/// One `done` report: what (done_atom, worker, code, ns, session, command)
/// carries (messages/worker_actor.hpp).
/// The code of a report that only frees the worker's place: the request
/// goes on elsewhere (retried or requeued from a worker that lives on) and
/// is counted where it ends.
constexpr uint8_t moved_on_code = 0xff;

struct completion {
  uint64_t worker = 0;
  uint8_t code = 0;
  int64_t service_ns = 0;
  std::string session;
  std::string command;
  /// The worker should be replaced once its requests are done: a handler
  /// ran out of memory (pool.max-memory; a MemoryError answered).
  bool retire = false;
  /// A stream (execute::stream): what reached its caller of it.
  bool stream = false;
  uint64_t chunks = 0;
  uint64_t chunk_bytes = 0;
};

class completion_inbox {
public:
  /// Adds a report; true when the poster must wake the dispatcher.
  bool post(completion c) {
    std::lock_guard<std::mutex> guard{mtx_};
    items_.push_back(std::move(c));
    if (!wake_wanted_ || wake_pending_)
      return false;
    wake_pending_ = true;
    return true;
  }

  /// Everything posted so far, oldest first.
  std::vector<completion> take() {
    std::lock_guard<std::mutex> guard{mtx_};
    wake_pending_ = false;
    return std::exchange(items_, {});
  }

  /// Whether a report should wake the dispatcher (it has requests or a
  /// recycle waiting for a worker to finish one). True when reports came in
  /// since the last take() and are wanted: the dispatcher then wakes itself.
  bool wake_when_posted(bool wanted) {
    std::lock_guard<std::mutex> guard{mtx_};
    wake_wanted_ = wanted;
    if (!wanted || items_.empty() || wake_pending_)
      return false;
    wake_pending_ = true;
    return true;
  }

private:
  std::mutex mtx_;
  std::vector<completion> items_;
  bool wake_wanted_ = false;
  bool wake_pending_ = false;
};

} // namespace pyvisor

// Unit tests of a worker's request path end to end, with the production
// code on both sides of the pipe but no Python: the worker's process is a
// C++ fake (tests/support/fake_worker.cpp) that speaks the pipe protocol
// and runs requests one at a time, as the Python worker does. Covered:
// submit from another thread, the reply answered on the process's I/O
// thread with its report in the pool's inbox first, the deadline sweep,
// retirement and the settlement after the process's exit (what never
// started is requeued), and, through a pool, the inbox rule in a response
// continuation. Real threads (the I/O thread is the point), bounded waits.
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support/catch_caf.hpp"

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/event_based_actor.hpp"
#include "caf/scoped_actor.hpp"
#include "caf/send.hpp"
#include "caf/typed_event_based_actor.hpp"

#include "actors/process/python_process.hpp"
#include "actors/worker/reporting_worker.hpp"
#include "actors/worker/worker_link.hpp"
#include "pyvisor/pool.hpp"
#include "pyvisor/worker.hpp"

using namespace pyvisor;
using namespace std::chrono_literals;

namespace {

struct link_config : caf::actor_system_config {
  link_config() {
    add_pool_types(*this);
    set("scheduler.max-threads", 2);
    set("logger.verbosity", caf::atom("quiet"));
  }
};

/// What a stand-in for the pool heard from the worker.
struct heard_log {
  std::mutex mtx;
  std::vector<std::string> requeued;
  std::vector<std::string> retried;
  std::vector<bool> dying;
  size_t done = 0;
};

worker_listener_actor::behavior_type fake_listener(std::shared_ptr<heard_log> log) {
  return {
    [log](done_atom, uint64_t, uint8_t, int64_t, std::string&, std::string&) {
      std::lock_guard<std::mutex> guard{log->mtx};
      ++log->done;
    },
    [log](retry_atom, execute& req) {
      std::lock_guard<std::mutex> guard{log->mtx};
      log->retried.push_back(req.command);
      return pack(std::string{"retried"});
    },
    [log](requeue_atom, execute& req) {
      std::lock_guard<std::mutex> guard{log->mtx};
      log->requeued.push_back(req.command);
      return pack(std::string{"requeued"});
    },
    [log](dying_atom, uint64_t, bool deliberate) {
      std::lock_guard<std::mutex> guard{log->mtx};
      log->dying.push_back(deliberate);
      return true;
    },
  };
}

/// Stands in for the pool core: writes each request through the link from
/// a thread of its own (neither this actor's nor the worker's).
caf::behavior dispatcher(caf::event_based_actor* self, worker_link_ptr link) {
  return {
    [self, link](execute& req) -> caf::result<payload> {
      auto rp = self->make_response_promise<payload>();
      admission verdict = admission::stopping;
      std::thread writer{[&] { verdict = link->submit(req, rp); }};
      writer.join();
      if (verdict != admission::accepted)
        rp.deliver(make_error(error_code::shutting_down, "not admitted"));
      return rp;
    },
  };
}

execute with(std::string cmd, int arg, caf::timespan timeout = 10s, bool idempotent = false,
             std::string session = {}) {
  auto req = make_execute(std::move(cmd), arg, std::move(session));
  req.timeout = timeout;
  req.idempotent = idempotent;
  return req;
}

struct fixture {
  link_config cfg;
  caf::actor_system sys{cfg};
  std::shared_ptr<heard_log> heard = std::make_shared<heard_log>();
  worker_listener_actor listener = sys.spawn(fake_listener, heard);
  worker_actor worker;
  worker_link_ptr link;
  caf::actor front;
  std::shared_ptr<completion_inbox> inbox = std::make_shared<completion_inbox>();

  void start() {
    worker_config wc;
    wc.id = 1;
    wc.python = PYVISOR_TEST_FAKE_WORKER;
    worker = spawn_python_worker(sys, wc, listener);
    caf::scoped_actor self{sys};
    self->request(worker, 5s, ready_atom::value)
      .receive([](worker_status&) {}, [](caf::error& err) { FAIL(to_string_readable(err)); });
    self->request(caf::actor_cast<caf::actor>(worker), 5s, link_atom::value)
      .receive([&](worker_link_ptr& l) { link = std::move(l); },
               [](caf::error& err) { FAIL(to_string_readable(err)); });
    link->report_to(inbox, caf::actor_addr{});
    front = sys.spawn(dispatcher, link);
  }

  /// Sends `req` through the front from a requester of its own.
  std::unique_ptr<caf::scoped_actor> send(execute req) {
    auto who = std::make_unique<caf::scoped_actor>(sys);
    (*who)->send(front, std::move(req));
    return who;
  }

  static caf::expected<payload> reply(caf::scoped_actor& who, caf::timespan limit = 5s) {
    caf::expected<payload> result{make_error(error_code::timeout, "no reply in the test")};
    who->receive([&](payload& p) { result = std::move(p); },
                 [&](caf::error& err) { result = std::move(err); },
                 caf::after(limit) >> [] {});
    return result;
  }

  ~fixture() {
    caf::anon_send_exit(worker, caf::exit_reason::kill);
    caf::anon_send_exit(front, caf::exit_reason::kill);
    caf::anon_send_exit(listener, caf::exit_reason::kill);
  }
};

error_code code_of_reply(const caf::expected<payload>& r) {
  return r ? error_code::none : code_of(r.error());
}

} // namespace

TEST_CASE("a reply is answered on the process's I/O thread, reported first",
          "[unit][link]") {
  // The link alone, over a real process and I/O thread, with no actor
  // reading the process's frames: a reply can only be answered where it
  // was read.
  link_config cfg;
  caf::actor_system sys{cfg};
  auto heard = std::make_shared<heard_log>();
  auto listener = sys.spawn(fake_listener, heard);
  caf::scoped_actor owner{sys};
  worker_settings ws;
  auto link = std::make_shared<worker_link>(sys.clock(), owner->address(), ws, listener, 1 << 20);
  auto inbox = std::make_shared<completion_inbox>();
  link->report_to(inbox, caf::actor_addr{});
  std::mutex mtx;
  std::vector<wire::frame> rest;
  std::atomic<bool> exited{false};
  process_options opts;
  opts.python = PYVISOR_TEST_FAKE_WORKER;
  process_callbacks cbs;
  cbs.on_frames = [&, link](std::vector<wire::frame>&& fs) {
    auto left = link->on_frames(std::move(fs));
    std::lock_guard<std::mutex> guard{mtx};
    for (auto& f : left)
      rest.push_back(std::move(f));
  };
  cbs.on_exit = [&](exit_status) { exited = true; };
  std::string error;
  auto proc = python_process::start(opts, cbs, error);
  REQUIRE(proc);
  link->attach(proc);
  auto front = sys.spawn(dispatcher, link);
  // However the test ends (a failed REQUIRE throws), the actors stop and the
  // process is closed, or the actor system would wait for them forever.
  std::shared_ptr<void> cleanup{nullptr, [&](void*) {
                                  link->close();
                                  caf::anon_send_exit(front, caf::exit_reason::kill);
                                  caf::anon_send_exit(listener, caf::exit_reason::kill);
                                }};
  // The hello comes first and is left for the actor (there is none here).
  // Waited for, so that the reply below cannot arrive in the same read: the
  // link answers the replies it knows up to the first frame that is the
  // actor's, and hands the rest over in order (the actor would answer them).
  auto rest_size = [&] {
    std::lock_guard<std::mutex> guard{mtx};
    return rest.size();
  };
  for (int i = 0; i < 2500 && rest_size() == 0; ++i)
    std::this_thread::sleep_for(2ms);
  REQUIRE(rest_size() == 1);
  {
    caf::scoped_actor who{sys};
    who->send(front, with("echo", 7));
    auto r = fixture::reply(who);
    REQUIRE(r);
    CHECK(unpack<int>(*r) == 7);
    // Its report was posted before the answer was delivered.
    auto reports = inbox->take();
    REQUIRE(reports.size() == 1);
    CHECK(reports[0].code == 0);
    CHECK(reports[0].command == "echo");
  }
  {
    // The hello frame is not the link's to answer: it is left for the actor.
    std::lock_guard<std::mutex> guard{mtx};
    REQUIRE(rest.size() == 1);
    CHECK(rest[0].type == wire::frame_type::hello);
  }
  // A reply to a request the link does not know goes to the actor too.
  std::vector<char> stray;
  wire::append_request(stray, 99, "echo", pack(1).bytes, "");
  proc->send(std::move(stray));
  for (int i = 0; i < 500 && rest_size() < 2; ++i)
    std::this_thread::sleep_for(2ms);
  {
    std::lock_guard<std::mutex> guard{mtx};
    REQUIRE(rest.size() == 2);
    CHECK(rest[1].id == 99);
  }
  // Retiring: nothing is admitted any more, and what reaches the worker is
  // handed back to run elsewhere.
  CHECK(link->begin_retire(make_error(error_code::worker_crashed, "going")));
  auto req = with("echo", 1);
  caf::typed_response_promise<payload> none;
  CHECK(link->submit(req, none) == admission::retiring);
  link->close();
  CHECK(exited);
}

TEST_CASE_METHOD(fixture, "a timed-out request recycles the worker: what never started runs elsewhere",
                 "[unit][link]") {
  start();
  auto hung = send(with("hang", 0, 150ms));
  auto plain = send(with("echo", 1));
  auto stateful = send(with("echo", 2, 10s, false, "s1"));
  auto idempotent = send(with("echo", 3, 10s, true));
  auto timed_out = reply(*hung);
  REQUIRE_FALSE(timed_out);
  CHECK(code_of(timed_out.error()) == error_code::timeout);
  // Waiting behind the hung request in the pipe, they never started: run
  // elsewhere, idempotent or not; the session's state died with the worker.
  auto r1 = reply(*plain);
  REQUIRE(r1);
  CHECK(unpack<std::string>(*r1) == "requeued");
  CHECK(code_of_reply(reply(*stateful)) == error_code::session_lost);
  auto r3 = reply(*idempotent);
  REQUIRE(r3);
  CHECK(unpack<std::string>(*r3) == "requeued");
  std::lock_guard<std::mutex> guard{heard->mtx};
  CHECK(heard->dying == std::vector<bool>{true}); // a recycle, not a crash
  CHECK(heard->requeued == std::vector<std::string>{"echo", "echo"});
  CHECK(heard->retried.empty());
}

TEST_CASE_METHOD(fixture, "a crash fails the request it ran and requeues those behind it",
                 "[unit][link]") {
  start();
  auto running = send(with("sleep", 100));
  auto crash = send(with("crash", 0));
  auto behind = send(with("echo", 1));
  auto r0 = reply(*running);
  REQUIRE(r0); // written before the crash: answered
  CHECK(code_of_reply(reply(*crash)) == error_code::worker_crashed);
  auto r1 = reply(*behind);
  REQUIRE(r1);
  CHECK(unpack<std::string>(*r1) == "requeued");
  // Gone: the link admits nothing more.
  caf::scoped_actor self{sys};
  self->monitor(worker);
  self->receive([](caf::down_msg&) {}, caf::after(5s) >> [] { FAIL("worker did not quit"); });
  auto late = with("echo", 1);
  caf::typed_response_promise<payload> none;
  CHECK(link->submit(late, none) != admission::accepted);
  std::lock_guard<std::mutex> guard{heard->mtx};
  CHECK(heard->dying == std::vector<bool>{false});
}

TEST_CASE("a session request queued from a response continuation runs on the next reply",
          "[unit][link][pool]") {
  // The pool with the fake as its worker: one worker, one request at a
  // time, and a sweep that never comes within the test, so only the wake-up
  // of the first reply's report can dispatch the session request that the
  // routing continuation queued behind it.
  link_config cfg;
  caf::actor_system sys{cfg};
  pool_config pc;
  pc.size = 1;
  pc.max_in_flight = 1;
  pc.backend = backend_kind::python;
  pc.worker.python = PYVISOR_TEST_FAKE_WORKER;
  pc.start = start_method::spawn; // the fake is a worker, not a template
  pc.sweep_interval = std::chrono::hours(1);
  pc.healthy_after = std::chrono::hours(1); // no timer of its own wakes the pool either
  auto pool = spawn_pool(sys, pc);
  caf::scoped_actor self{sys};
  self->request(pool, 10s, ready_atom::value)
    .receive([](pool_stats&) {}, [](caf::error& err) { FAIL(to_string_readable(err)); });
  caf::scoped_actor first{sys};
  caf::scoped_actor second{sys};
  first->send(pool, with("sleep", 200));
  second->send(pool, with("echo", 5, 10s, false, "s1"));
  auto r0 = fixture::reply(first);
  REQUIRE(r0);
  auto r1 = fixture::reply(second, 3s);
  REQUIRE(r1);
  CHECK(unpack<int>(*r1) == 5);
  caf::anon_send_exit(pool, caf::exit_reason::user_shutdown);
}

// Unit tests of the deadline sweep and the stop that every worker backend
// runs through request_ledger (actors/worker/request_ledger.hpp), driven on
// CAF's test clock through the mock; the Python worker runs the same code
// (its integration tests add what is particular to a process: the kill, the
// reaping, the replies written before death).
#include <memory>
#include <string>
#include <vector>

#include "support/test_coordinator_fixture.hpp"

#include "caf/event_based_actor.hpp"
#include "caf/send.hpp"
#include "caf/stateful_actor.hpp"
#include "caf/typed_event_based_actor.hpp"

#include "actors/worker/request_ledger.hpp"
#include "pyvisor/mock_worker.hpp"

using namespace pyvisor;
using namespace std::chrono_literals;

namespace {

/// What a stand-in for the pool heard from the worker.
struct listener_log {
  std::vector<execute> retried;
  std::vector<uint8_t> done;
  std::vector<bool> dying;
};

worker_listener_actor::behavior_type fake_listener(std::shared_ptr<listener_log> log) {
  return {
    [log](done_atom, uint64_t, uint8_t code, int64_t, std::string&, std::string&) { log->done.push_back(code); },
    [log](retry_atom, execute& req) {
      log->retried.push_back(req);
      return pack(std::string{"retried"});
    },
    [](requeue_atom, execute&) { return pack(std::string{"requeued"}); },
    [log](dying_atom, uint64_t, bool deliberate) {
      log->dying.push_back(deliberate);
      return true;
    },
  };
}

struct fixture : test::test_coordinator_fixture {
  std::shared_ptr<listener_log> heard = std::make_shared<listener_log>();
  worker_listener_actor listener = sys.spawn(fake_listener, heard);
  worker_actor worker;

  void start(mock_config cfg) {
    cfg.id = 7;
    cfg.listener = listener;
    worker = spawn_mock_worker(sys, cfg);
    watch(worker);
    run();
    ask<worker_status>(worker, ready_atom::value);
  }

  /// Sends `req` from a requester of its own, so that each reply is known.
  std::unique_ptr<caf::scoped_actor> send(execute req) {
    auto who = std::make_unique<caf::scoped_actor>(sys);
    (*who)->send(worker, std::move(req));
    run();
    return who;
  }

  static execute with(execute req, caf::timespan timeout, bool idempotent = false) {
    req.timeout = timeout;
    req.idempotent = idempotent;
    return req;
  }

  static execute sleeping(int ms) {
    return make_execute("sleep", std::map<std::string, int>{{"ms", ms}});
  }

  ~fixture() {
    caf::anon_send_exit(worker, caf::exit_reason::kill);
    caf::anon_send_exit(listener, caf::exit_reason::kill);
    run();
  }
};

error_code code_of_reply(const caf::expected<payload>& r) {
  return r ? error_code::none : code_of(r.error());
}

using retire_atom = caf::atom_constant<caf::atom("t_retire")>;

struct owner_state {
  std::shared_ptr<request_ledger> ledger;
};

/// The smallest owner of a ledger: it records each execute and leaves the
/// answer to whoever plays the thread that reads replies (the test).
caf::behavior ledger_owner(caf::stateful_actor<owner_state>* self,
                           std::shared_ptr<std::shared_ptr<request_ledger>> out,
                           worker_settings cfg) {
  self->state.ledger = std::make_shared<request_ledger>(self, cfg);
  *out = self->state.ledger;
  return {
    [self](execute& req) -> caf::result<payload> {
      auto& ledger = *self->state.ledger;
      std::lock_guard<std::mutex> guard{ledger.mutex()};
      auto rp = self->make_response_promise<payload>();
      ledger.add(ledger.next_id(), req, rp);
      return rp;
    },
    [self](retire_atom) {
      auto& ledger = *self->state.ledger;
      std::lock_guard<std::mutex> guard{ledger.mutex()};
      ledger.retire(self, make_error(error_code::worker_crashed, "gone"),
                    make_error(error_code::worker_crashed, "gone"));
    },
    [](sweep_atom) {},
  };
}

} // namespace

TEST_CASE_METHOD(fixture, "a reply answered on the reading thread goes to its caller, counted first",
                 "[unit][ledger]") {
  worker_settings cfg;
  cfg.listener = listener;
  auto ledger_out = std::make_shared<std::shared_ptr<request_ledger>>();
  auto owner = sys.spawn(ledger_owner, ledger_out, cfg);
  run();
  auto& ledger = **ledger_out;
  auto who = std::make_unique<caf::scoped_actor>(sys);
  (*who)->send(owner, make_execute("echo", std::string{"hi"}));
  run();
  auto drop = ledger.add_internal("session.drop");
  {
    std::lock_guard<std::mutex> guard{ledger.mutex()};
    CHECK(ledger.accepts_elsewhere(1));
    CHECK_FALSE(ledger.accepts_elsewhere(99)); // unknown: the owner decides
    CHECK_FALSE(ledger.accepts_elsewhere(drop)); // nobody waits for it
    ledger.complete_elsewhere(1, pack(std::string{"answered"}));
    CHECK_FALSE(ledger.accepts_elsewhere(1)); // answered exactly once
  }
  run();
  auto r = next_reply(*who);
  REQUIRE(r);
  CHECK(*unpack<std::string>(*r) == "answered");
  CHECK(heard->done == std::vector<uint8_t>{0});
  CHECK(ledger.in_flight() == 0);
  CHECK(ledger.served() == 1);
  auto next = ledger.peek_id();
  (*who)->send(owner, make_execute("echo", std::string{"again"}));
  run();
  SECTION("a retiring owner answers its replies itself") {
    caf::anon_send(owner, retire_atom::value);
    run();
    std::lock_guard<std::mutex> guard{ledger.mutex()};
    CHECK_FALSE(ledger.accepts_elsewhere(next));
    CHECK_FALSE(ledger.accepts_requests());
  }
  SECTION("a closed ledger (its owner is gone) answers nothing elsewhere") {
    std::lock_guard<std::mutex> guard{ledger.mutex()};
    CHECK(ledger.accepts_elsewhere(next));
    ledger.close();
    CHECK_FALSE(ledger.accepts_elsewhere(next));
    CHECK_FALSE(ledger.accepts_requests());
  }
  caf::anon_send_exit(owner, caf::exit_reason::kill);
  run();
}

TEST_CASE_METHOD(fixture, "the deadline sweep recycles a worker whose request outlives it",
                 "[unit][ledger]") {
  start(mock_config{});
  auto hung = send(with(make_execute("hang"), 50ms));
  auto other = send(with(sleeping(1000), 10s));
  auto retried = send(with(sleeping(1000), 10s, true));
  auto session = send(with(make_execute("sleep", std::map<std::string, int>{{"ms", 1000}}, "s1"),
                           10s));
  advance(49ms);
  CHECK_FALSE(next_reply(*hung));
  CHECK(heard->dying.empty());
  // Noticed within one sweep interval.
  advance(11ms);
  auto timed_out = next_reply(*hung);
  REQUIRE_FALSE(timed_out);
  CHECK(code_of(timed_out.error()) == error_code::timeout);
  CHECK(info_of(timed_out.error()).message.find("'hang') timed out; recycling the worker")
        != std::string::npos);
  // The pool heard first that the worker is going, and that it is a
  // recycle, not a crash.
  REQUIRE(heard->dying.size() == 1);
  CHECK(heard->dying[0]);
  // The rest of what it held: an idempotent request goes back for a retry
  // with what is left of its deadline, the others fail as their kind says.
  CHECK(code_of_reply(next_reply(*other)) == error_code::worker_crashed);
  CHECK(code_of_reply(next_reply(*session)) == error_code::session_lost);
  auto again = next_reply(*retried);
  REQUIRE(again);
  CHECK(*unpack<std::string>(*again) == "retried");
  REQUIRE(heard->retried.size() == 1);
  CHECK(heard->retried[0].timeout <= 10s - 50ms);
  CHECK(heard->retried[0].timeout > 9s);
  // And the worker quits with `timeout`, which its supervisor reads.
  auto down = next_down();
  REQUIRE(down);
  CHECK(code_of(*down) == error_code::timeout);
}

TEST_CASE_METHOD(fixture, "an idempotent request past its attempt limit is retried elsewhere",
                 "[unit][ledger]") {
  mock_config cfg;
  cfg.attempt_timeout = 20ms;
  start(cfg);
  auto hung = send(with(make_execute("hang"), 1s, true));
  // The per-attempt limit does not apply to requests that cannot be retried.
  auto plain = send(with(sleeping(100), 1s));
  advance(19ms);
  CHECK(heard->retried.empty());
  advance(11ms);
  REQUIRE(heard->retried.size() == 1);
  CHECK(heard->retried[0].timeout <= 1s - 20ms);
  auto r = next_reply(*hung);
  REQUIRE(r);
  CHECK(*unpack<std::string>(*r) == "retried");
  CHECK(code_of_reply(next_reply(*plain)) == error_code::worker_crashed);
  REQUIRE(next_down());
}

TEST_CASE_METHOD(fixture, "no deadline sweep while nothing is overdue", "[unit][ledger]") {
  start(mock_config{});
  auto slow = send(with(sleeping(200), 1s));
  advance(150ms); // fifteen sweeps
  CHECK_FALSE(next_reply(*slow));
  advance(50ms);
  CHECK(next_reply(*slow));
  CHECK(heard->dying.empty());
  CHECK_FALSE(next_down()); // still serving
  auto ping = send(make_execute("ping"));
  CHECK(next_reply(*ping));
}

TEST_CASE_METHOD(fixture, "a stopping worker finishes what it holds, then quits with the stop's reason",
                 "[unit][ledger]") {
  start(mock_config{});
  auto first = send(sleeping(50));
  auto second = send(with(sleeping(50), 1s, true));
  caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);
  run();
  // New work is refused at once...
  auto late = send(make_execute("ping"));
  CHECK(code_of_reply(next_reply(*late)) == error_code::shutting_down);
  CHECK_FALSE(next_reply(*first));
  // ...what it held completes...
  advance(50ms);
  CHECK(next_reply(*first));
  CHECK(next_reply(*second));
  CHECK(heard->retried.empty());
  // ...and it leaves with the supervisor's reason, not an error of its own.
  auto down = next_down();
  REQUIRE(down);
  CHECK(*down == caf::exit_reason::user_shutdown);
  REQUIRE(heard->dying.size() == 1);
  CHECK_FALSE(heard->dying[0]);
}

TEST_CASE_METHOD(fixture, "a stopping worker that cannot finish within its grace fails what it holds",
                 "[unit][ledger]") {
  mock_config cfg;
  cfg.stop_grace = 100ms;
  start(cfg);
  auto hung = send(with(make_execute("hang"), 10s));
  auto idempotent = send(with(make_execute("hang"), 10s, true));
  caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);
  run();
  advance(99ms);
  CHECK_FALSE(next_reply(*hung));
  advance(1ms);
  CHECK(code_of_reply(next_reply(*hung)) == error_code::shutting_down);
  // An idempotent request can still run on another worker.
  auto r = next_reply(*idempotent);
  REQUIRE(r);
  CHECK(*unpack<std::string>(*r) == "retried");
  auto down = next_down();
  REQUIRE(down);
  CHECK(*down == caf::exit_reason::user_shutdown);
}

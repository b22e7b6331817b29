// Unit tests of the ledger alone (bookkeeping and settle rules, no actor
// system) and of the deadline sweep and the stop that every worker backend
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

#include "actors/request_state.hpp"
#include "actors/worker/request_ledger.hpp"
#include "actors/worker/reporting_worker.hpp"
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
    worker = spawn_mock_worker(sys, cfg, listener);
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

} // namespace

// -- the ledger alone: bookkeeping and settle rules, no actor system ----------

namespace {

using clock_type = ledger_clock;

request_ledger::limits with_listener(bool listener = true) {
  request_ledger::limits lim;
  lim.request_timeout = 1s;
  lim.attempt_timeout = 100ms;
  lim.has_listener = listener;
  return lim;
}

execute request(std::string command, caf::timespan timeout = 0s, bool idempotent = false,
                std::string session = {}) {
  auto req = make_execute(std::move(command));
  req.timeout = timeout;
  req.idempotent = idempotent;
  req.session = std::move(session);
  return req;
}

} // namespace

TEST_CASE("the ledger answers each request once, by id", "[unit][ledger]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto a = request("echo");
  auto id = ledger.add(a, {}, t0);
  CHECK(id == 1);
  CHECK(ledger.peek_id() == 2);
  auto drop = ledger.add_internal("session.drop", t0);
  CHECK(ledger.in_flight() == 1); // internal requests are nobody's
  CHECK(ledger.awaits_reply(id));
  CHECK_FALSE(ledger.awaits_reply(drop));
  CHECK_FALSE(ledger.awaits_reply(99));
  auto s = ledger.complete(id, pack(std::string{"hi"}), t0 + 5ms);
  REQUIRE(s);
  CHECK(s->what == verdict::answer);
  CHECK(s->code() == error_code::none);
  CHECK(s->service_ns == 5000000);
  CHECK(s->entry.state == request_state::answered);
  CHECK_FALSE(ledger.complete(id, payload{}, t0)); // exactly once
  CHECK_FALSE(ledger.complete(42, payload{}, t0)); // unknown
  auto internal = ledger.complete(drop, payload{}, t0);
  REQUIRE(internal);
  CHECK(internal->what == verdict::drop);
  CHECK(ledger.served() == 1);
  CHECK(ledger.empty());
}

TEST_CASE("an idempotent request is overdue at its attempt limit, others at their deadline",
          "[unit][ledger]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto plain = request("sleep", 300ms);
  auto retried = request("sleep", 300ms, true);
  auto defaulted = request("sleep");
  auto p = ledger.add(plain, {}, t0);
  auto r = ledger.add(retried, {}, t0);
  auto d = ledger.add(defaulted, {}, t0);
  CHECK(ledger.overdue(t0 + 99ms).empty());
  CHECK(ledger.overdue(t0 + 100ms) == std::vector<uint64_t>{r});
  CHECK(ledger.overdue(t0 + 300ms) == std::vector<uint64_t>{p, r});
  CHECK(ledger.overdue(t0 + 1s) == std::vector<uint64_t>{p, r, d});
  // Expired with time left, the idempotent request goes back with what is
  // left of its deadline; the plain one fails.
  auto back = ledger.expire(r, make_error(error_code::timeout, "late"), t0 + 100ms);
  REQUIRE(back);
  CHECK(back->what == verdict::retry);
  CHECK(back->entry.request.timeout == 200ms);
  CHECK(back->entry.state == request_state::retried);
  auto failed = ledger.expire(p, make_error(error_code::timeout, "late"), t0 + 300ms);
  REQUIRE(failed);
  CHECK(failed->what == verdict::fail);
  CHECK(failed->code() == error_code::timeout);
  CHECK(failed->entry.state == request_state::expired);
}

TEST_CASE("a session request that times out answers timeout; its session's others session_lost",
          "[unit][ledger]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto slow = request("sleep", 50ms, false, "s1");
  auto next = request("echo", 1s, false, "s1");
  auto slow_id = ledger.add(slow, {}, t0);
  ledger.add(next, {}, t0);
  auto late = make_error(error_code::timeout, "too slow");
  auto expired = ledger.expire(slow_id, late, t0 + 60ms);
  REQUIRE(expired);
  CHECK(expired->what == verdict::fail);
  // Too slow, not "worker died": the caller can tell the two apart.
  CHECK(expired->code() == error_code::timeout);
  CHECK(expired->entry.state == request_state::expired);
  // The worker is recycled: what waited in the session lost its state.
  auto rest = ledger.settle_sequential(late, 0, t0 + 60ms);
  REQUIRE(rest.size() == 1);
  CHECK(rest[0].code() == error_code::session_lost);
}

TEST_CASE("a sequential worker's settlement: the oldest given up, the rest requeued",
          "[unit][ledger]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto running = request("sleep", 1s);
  auto waiting = request("echo", 1s);
  auto in_session = request("echo", 1s, false, "s1");
  auto idempotent = request("echo", 1s, true);
  ledger.add(running, {}, t0);
  ledger.add(waiting, {}, t0);
  ledger.add(in_session, {}, t0);
  ledger.add(idempotent, {}, t0);
  auto crashed = make_error(error_code::worker_crashed, "gone");
  SECTION("one may have started") {
    auto out = ledger.settle_sequential(crashed, 1, t0 + 400ms);
    REQUIRE(out.size() == 4);
    CHECK(out[0].what == verdict::fail);
    CHECK(out[0].code() == error_code::worker_crashed);
    CHECK(out[1].what == verdict::requeue);
    CHECK(out[1].entry.request.timeout == 600ms);
    CHECK(out[1].entry.state == request_state::requeued);
    // Its state died with the worker, whatever it waited behind.
    CHECK(out[2].what == verdict::fail);
    CHECK(out[2].code() == error_code::session_lost);
    CHECK(out[3].what == verdict::requeue); // never started: no attempt counted
  }
  SECTION("none is known to have started: every one is given up") {
    auto out = ledger.fail_all(crashed, t0 + 400ms);
    REQUIRE(out.size() == 4);
    CHECK(out[1].what == verdict::fail);
    CHECK(out[3].what == verdict::retry);
  }
  SECTION("a request whose deadline passed while it waited is not requeued") {
    auto out = ledger.settle_sequential(crashed, 1, t0 + 2s);
    CHECK(out[1].what == verdict::fail);
    CHECK(out[1].code() == error_code::timeout);
    CHECK(out[3].what == verdict::fail); // no time left for another attempt
  }
  CHECK(ledger.empty());
  CHECK(ledger.in_flight() == 0);
}

TEST_CASE("without a listener nothing is handed back", "[unit][ledger]") {
  request_ledger ledger{with_listener(false)};
  auto t0 = clock_type::now();
  auto idempotent = request("echo", 1s, true);
  ledger.add(idempotent, {}, t0);
  auto out = ledger.settle_sequential(make_error(error_code::worker_crashed, "gone"), 0, t0);
  REQUIRE(out.size() == 1);
  CHECK(out[0].what == verdict::fail);
  auto stray = request("echo");
  auto refused = ledger.refuse(stray, {}, make_error(error_code::worker_crashed, "going"));
  CHECK(refused.what == verdict::fail);
}

TEST_CASE("a request refused by a retiring worker runs elsewhere unless it names a session",
          "[unit][ledger]") {
  request_ledger ledger{with_listener()};
  auto going = make_error(error_code::worker_crashed, "going");
  auto stateless = request("echo");
  auto s = ledger.refuse(stateless, {}, going);
  CHECK(s.what == verdict::requeue);
  CHECK(s.entry.request.command == "echo");
  auto stateful = request("echo", 0s, false, "s1");
  auto t = ledger.refuse(stateful, {}, going);
  CHECK(t.what == verdict::fail);
  CHECK(t.code() == error_code::session_lost);
  CHECK(ledger.empty()); // refused requests never enter the ledger
}

TEST_CASE("a request's life follows its state machine", "[unit][ledger]") {
  using s = request_state;
  CHECK(may_move(s::admitted, s::queued));
  CHECK(may_move(s::queued, s::admitted)); // routed, back in line
  CHECK(may_move(s::queued, s::written));
  CHECK(may_move(s::written, s::running));
  CHECK(may_move(s::written, s::requeued));
  CHECK_FALSE(may_move(s::running, s::requeued)); // it may have started
  CHECK(may_move(s::running, s::retried));
  CHECK(may_move(s::requeued, s::admitted));
  for (size_t i = 0; i < request_state_count; ++i) {
    auto from = static_cast<s>(i);
    if (is_final(from))
      for (size_t j = 0; j < request_state_count; ++j)
        CHECK_FALSE(may_move(from, static_cast<s>(j)));
  }
  CHECK(to_string(s::requeued) == "requeued");
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

TEST_CASE_METHOD(fixture, "a timed-out session request answers timeout on the worker's path",
                 "[unit][ledger]") {
  start(mock_config{});
  auto hung = send(with(make_execute("hang", 0, "s1"), 50ms));
  auto behind = send(with(make_execute("sleep", std::map<std::string, int>{{"ms", 1000}}, "s1"),
                          10s));
  advance(60ms);
  auto timed_out = next_reply(*hung);
  REQUIRE_FALSE(timed_out);
  CHECK(code_of(timed_out.error()) == error_code::timeout);
  CHECK(code_of_reply(next_reply(*behind)) == error_code::session_lost);
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

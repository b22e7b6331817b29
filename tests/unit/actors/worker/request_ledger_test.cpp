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

TEST_CASE("a session request that times out answers timeout: its session's others session_lost",
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

TEST_CASE("a detached request keeps its place until the worker answers or its grace ends",
          "[unit][ledger]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto slow = request("sleep", 50ms, false, "s1");
  auto next = request("echo", 1s);
  auto slow_id = ledger.add(slow, {}, t0);
  auto next_id = ledger.add(next, {}, t0);
  auto late = make_error(error_code::timeout, "too slow");
  auto s = ledger.detach(slow_id, late, t0 + 50ms, 100ms);
  REQUIRE(s);
  // The caller hears timeout now (its session lives on); the worker is
  // still busy with it, so the ledger keeps it, nobody's.
  CHECK(s->what == verdict::fail);
  CHECK(s->code() == error_code::timeout);
  CHECK(s->frees_slot);
  CHECK(ledger.in_flight() == 1);
  CHECK(ledger.detached(slow_id));
  CHECK_FALSE(ledger.detach(slow_id, late, t0 + 51ms, 100ms)); // once
  CHECK(ledger.overdue(t0 + 60ms).empty());
  CHECK(ledger.stuck(t0 + 149ms).empty());
  CHECK(ledger.stuck(t0 + 150ms) == std::vector<uint64_t>{slow_id});
  // Its reply, when it comes, is dropped: answered once.
  auto reply = ledger.complete(slow_id, payload{}, t0 + 70ms);
  REQUIRE(reply);
  CHECK(reply->what == verdict::drop);
  CHECK(ledger.awaits_reply(next_id));
}

TEST_CASE("a killed worker's detached head counts as the one that started", "[unit][ledger]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto slow = request("sleep", 50ms);
  auto next = request("echo", 1s);
  auto slow_id = ledger.add(slow, {}, t0);
  ledger.add(next, {}, t0);
  ledger.detach(slow_id, make_error(error_code::timeout, "late"), t0 + 50ms, 10ms);
  auto rest = ledger.settle_sequential(make_error(error_code::worker_crashed, "killed"), 1,
                                       t0 + 70ms);
  // Only the detached one may have run: the echo never began and is requeued.
  REQUIRE(rest.size() == 1);
  CHECK(rest[0].what == verdict::requeue);
}

TEST_CASE("a cancel is answered cancelled and never retried", "[unit][ledger]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto req = request("sleep", 1s, true);
  auto id = ledger.add(req, {}, t0);
  auto s = ledger.detach(id, make_error(error_code::cancelled, "cancelled"), t0, 1s);
  REQUIRE(s);
  CHECK(s->what == verdict::fail);
  CHECK(s->code() == error_code::cancelled);
}

TEST_CASE("take_back asks for what waits behind an old or interrupted head, stateless only",
          "[unit][ledger]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto head = request("sleep", 10s);
  auto a = request("echo", 10s);
  auto in_session = request("echo", 10s, false, "s1");
  auto b = request("echo", 10s);
  auto head_id = ledger.add(head, {}, t0);
  auto a_id = ledger.add(a, {}, t0);
  ledger.add(in_session, {}, t0);
  auto b_id = ledger.add(b, {}, t0);
  bool later = false;
  CHECK(ledger.take_back(t0 + 19ms, 20ms, &later).empty()); // the head may be quick
  CHECK(later);                                              // ask again then
  auto asked = ledger.take_back(t0 + 20ms, 20ms);
  CHECK(asked == std::vector<uint64_t>{a_id, b_id});
  CHECK(ledger.take_back(t0 + 30ms, 20ms, &later).empty()); // asked once
  CHECK_FALSE(later);
  // The worker gives back b only (it had begun a, say): b is requeued and
  // frees its slot; a stays; the head's unknown ids are ignored.
  auto back = ledger.revoked({b_id, 99}, t0 + 21ms);
  REQUIRE(back.size() == 1);
  CHECK(back[0].what == verdict::requeue);
  CHECK(back[0].frees_slot);
  CHECK(back[0].entry.request.timeout < 10s);
  CHECK(ledger.awaits_reply(a_id));
  CHECK_FALSE(ledger.awaits_reply(b_id));
  CHECK(ledger.awaits_reply(head_id));
}

TEST_CASE("nothing but session requests behind the head: no need to look again",
          "[unit][ledger]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto head = request("sleep", 10s, false, "s1");
  auto behind = request("echo", 10s, false, "s2");
  ledger.add(head, {}, t0);
  ledger.add(behind, {}, t0);
  bool later = true;
  CHECK(ledger.take_back(t0 + 1ms, 20ms, &later).empty());
  CHECK_FALSE(later);
}

TEST_CASE("a new head is not taken from until it has run for the limit", "[unit][ledger]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto first = request("echo", 10s);
  auto second = request("sleep", 10s);
  auto third = request("echo", 10s);
  auto first_id = ledger.add(first, {}, t0);
  ledger.add(second, {}, t0);
  ledger.add(third, {}, t0);
  ledger.complete(first_id, payload{}, t0 + 30ms); // the worker begins `second` now
  CHECK(ledger.take_back(t0 + 40ms, 20ms).empty());
  CHECK(ledger.take_back(t0 + 50ms, 20ms).size() == 1);
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

TEST_CASE_METHOD(fixture, "a request past its deadline is interrupted and the worker lives on",
                 "[unit][ledger]") {
  mock_config cfg;
  cfg.latency_min = 2ms;
  start(cfg);
  auto put = send(make_execute("session.put",
                               std::map<std::string, std::string>{{"key", "k"}, {"value", "v"}},
                               "keep"));
  advance(2ms);
  REQUIRE(next_reply(*put));
  auto slow = send(with(sleeping(1000), 50ms));
  advance(49ms);
  CHECK_FALSE(next_reply(*slow));
  advance(11ms); // noticed within one sweep interval
  auto timed_out = next_reply(*slow);
  REQUIRE_FALSE(timed_out);
  CHECK(code_of(timed_out.error()) == error_code::timeout);
  CHECK(info_of(timed_out.error()).message.find("'sleep') timed out") != std::string::npos);
  advance(5ms); // the interrupted handler answers (dropped: its caller had one)
  // No recycle: the pool heard nothing, and the session's state is there.
  CHECK(heard->dying.empty());
  auto get = send(make_execute("session.get", std::map<std::string, std::string>{{"key", "k"}}, "keep"));
  advance(2ms);
  auto kept = next_reply(*get);
  REQUIRE(kept);
  CHECK(*unpack<std::string>(*kept) == "v");
  advance(2s);
  CHECK_FALSE(next_down());
}

TEST_CASE_METHOD(fixture, "a request that ignores its interrupt costs the worker after the grace",
                 "[unit][ledger]") {
  mock_config cfg;
  cfg.interrupt_grace = 100ms;
  start(cfg);
  auto hung = send(with(make_execute("hang"), 50ms));
  auto other = send(with(sleeping(1000), 10s));
  auto retried = send(with(sleeping(1000), 10s, true));
  auto session = send(with(make_execute("sleep", std::map<std::string, int>{{"ms", 1000}}, "s1"),
                           10s));
  advance(60ms);
  auto timed_out = next_reply(*hung);
  REQUIRE_FALSE(timed_out);
  CHECK(code_of(timed_out.error()) == error_code::timeout);
  // By its deadline, and the rest runs on while the interrupt may work.
  CHECK(heard->dying.empty());
  CHECK_FALSE(next_reply(*other));
  advance(89ms);
  CHECK(heard->dying.empty());
  advance(11ms); // the grace is over: recycled, deliberately
  REQUIRE(heard->dying.size() == 1);
  CHECK(heard->dying[0]);
  CHECK(code_of_reply(next_reply(*other)) == error_code::worker_crashed);
  CHECK(code_of_reply(next_reply(*session)) == error_code::session_lost);
  auto again = next_reply(*retried);
  REQUIRE(again);
  CHECK(*unpack<std::string>(*again) == "retried");
  auto down = next_down();
  REQUIRE(down);
  CHECK(code_of(*down) == error_code::timeout);
}

TEST_CASE_METHOD(fixture, "a timed-out session request answers timeout on the worker's path",
                 "[unit][ledger]") {
  mock_config cfg;
  cfg.interrupt_grace = 100ms;
  start(cfg);
  auto hung = send(with(make_execute("hang", 0, "s1"), 50ms));
  auto behind = send(with(make_execute("sleep", std::map<std::string, int>{{"ms", 1000}}, "s1"),
                          10s));
  advance(60ms);
  auto timed_out = next_reply(*hung);
  REQUIRE_FALSE(timed_out);
  CHECK(code_of(timed_out.error()) == error_code::timeout);
  advance(110ms); // the hang ignored its interrupt: the worker goes, its state too
  CHECK(code_of_reply(next_reply(*behind)) == error_code::session_lost);
}

TEST_CASE_METHOD(fixture, "an idempotent request past its attempt limit is retried elsewhere",
                 "[unit][ledger]") {
  mock_config cfg;
  cfg.attempt_timeout = 20ms;
  cfg.interrupt_grace = 200ms;
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
  // Interrupted, not killed: what else runs here finishes.
  advance(80ms);
  CHECK(code_of_reply(next_reply(*plain)) == error_code::none);
  advance(200ms); // the hang outlived its grace
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

TEST_CASE_METHOD(fixture, "a worker stopped because its supervisor gave up answers unavailable",
                 "[unit][ledger]") {
  // Not a stop anyone asked for: the pool restarts, the caller may retry
  // (shutting_down would tell it the service is going away).
  mock_config cfg;
  cfg.stop_grace = 100ms;
  start(cfg);
  auto hung = send(with(make_execute("hang"), 10s));
  self->send_exit(worker, make_error(error_code::unavailable, "the pool gave up"));
  run();
  advance(100ms);
  CHECK(code_of_reply(next_reply(*hung)) == error_code::unavailable);
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

TEST_CASE("a stream is retried only while none of its chunks reached its caller",
          "[unit][ledger][stream]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto quiet = request("tokens", 1s, true);
  quiet.stream = true;
  auto talking = request("tokens", 1s, true);
  talking.stream = true;
  auto plain = request("echo", 1s);
  auto a = ledger.add(quiet, {}, t0);
  auto b = ledger.add(talking, {}, t0);
  auto c = ledger.add(plain, {}, t0);
  ledger_entry* e = nullptr;
  CHECK(ledger.chunk(b, &e) == chunk_fate::deliver);
  REQUIRE(e != nullptr);
  CHECK(e->chunks == 1);
  CHECK(ledger.chunk(c, &e) == chunk_fate::invalid); // not a stream
  CHECK(ledger.chunk(99, &e) == chunk_fate::invalid); // not in flight
  auto out = ledger.fail_all(make_error(error_code::worker_crashed, "gone"), t0 + 10ms);
  REQUIRE(out.size() == 3);
  CHECK(out[0].what == verdict::retry); // nothing seen: run again
  CHECK(out[1].what == verdict::fail);  // its caller saw a chunk
  CHECK(out[1].code() == error_code::worker_crashed);
}

TEST_CASE("a chunk of a stream whose caller has its answer is dropped",
          "[unit][ledger][stream]") {
  request_ledger ledger{with_listener()};
  auto t0 = clock_type::now();
  auto req = request("tokens", 1s);
  req.stream = true;
  auto id = ledger.add(req, {}, t0);
  auto s = ledger.detach(id, make_error(error_code::cancelled, "cancelled"), t0, 1s);
  REQUIRE(s);
  ledger_entry* e = nullptr;
  CHECK(ledger.chunk(id, &e) == chunk_fate::drop);
}

TEST_CASE("a worker that says what began is settled by it, not by order",
          "[unit][ledger][concurrency]") {
  request_ledger ledger{with_listener()};
  ledger.announce_starts();
  auto t0 = clock_type::now();
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) {
    auto req = request("sleep", 1s);
    ids.push_back(ledger.add(req, {}, t0));
  }
  // The second and the fourth began; the others waited on the worker.
  ledger.begin(ids[1]);
  ledger.begin(ids[3]);
  ledger.begin(99); // not in flight: nothing
  auto crashed = make_error(error_code::worker_crashed, "gone");
  SECTION("once every frame was read") {
    auto out = ledger.settle_sequential(crashed, 1, t0 + 10ms);
    REQUIRE(out.size() == 4);
    CHECK(out[0].what == verdict::requeue);
    CHECK(out[1].what == verdict::fail);
    CHECK(out[2].what == verdict::requeue);
    CHECK(out[3].what == verdict::fail);
  }
  SECTION("when nothing is known, everything may have begun") {
    auto out = ledger.fail_all(crashed, t0 + 10ms);
    REQUIRE(out.size() == 4);
    for (auto& s : out)
      CHECK(s.what == verdict::fail);
  }
}

// Unit tests of the pool with in-process mock workers on the deterministic
// test coordinator: no Python, no sleeps; mock latencies run on the test clock.
#include <algorithm>
#include <map>
#include <set>

#include "support/test_coordinator_fixture.hpp"

#include "caf/send.hpp"

#include "pyvisor/pool.hpp"

using namespace pyvisor;
using namespace std::chrono_literals;

namespace {

using sleep_args = std::map<std::string, int>;

pool_config mock_pool(size_t size, uint32_t max_in_flight, caf::timespan latency) {
  pool_config cfg;
  cfg.size = size;
  cfg.backend = backend_kind::mock;
  cfg.mock.latency_min = latency;
  cfg.mock.latency_max = latency;
  cfg.max_in_flight = max_in_flight;
  cfg.backoff = backoff_policy::none();
  cfg.session = session_settings{200ms, 50ms, 1s};
  return cfg;
}

struct fixture : test::test_coordinator_fixture {
  pool_actor pool;

  void start(pool_config cfg) {
    pool = spawn_pool(sys, std::move(cfg));
    run();
    auto st = ask<pool_stats>(pool, ready_atom::value);
    REQUIRE(!st.workers.empty());
  }

  ~fixture() {
    if (pool)
      caf::anon_send_exit(pool, caf::exit_reason::kill);
    run();
  }

  pool_stats stats() {
    return ask<pool_stats>(pool, status_atom::value);
  }

  std::vector<uint32_t> in_flight() {
    std::vector<uint32_t> result;
    for (auto& w : stats().workers)
      result.push_back(w.in_flight);
    return result;
  }

  /// Collects every reply that has arrived so far.
  std::vector<caf::expected<payload>> replies() {
    std::vector<caf::expected<payload>> result;
    bool more = true;
    while (more)
      self->receive([&](payload& p) { result.emplace_back(std::move(p)); },
                    [&](caf::error& e) { result.emplace_back(std::move(e)); },
                    caf::after(0s) >> [&] { more = false; });
    return result;
  }

  caf::expected<payload> call(execute req) {
    self->send(pool, std::move(req));
    run();
    auto r = replies();
    REQUIRE(r.size() == 1);
    return std::move(r.front());
  }
};

size_t count_code(const std::vector<caf::expected<payload>>& rs, error_code code) {
  size_t n = 0;
  for (auto& r : rs)
    if ((code == error_code::none && r) || (!r && code_of(r.error()) == code))
      ++n;
  return n;
}

} // namespace

TEST_CASE_METHOD(fixture, "requests go to the least-loaded worker", "[unit][pool]") {
  start(mock_pool(3, 2, 100ms));
  for (int i = 0; i < 3; ++i)
    self->send(pool, make_execute("ping"));
  run();
  CHECK(in_flight() == std::vector<uint32_t>{1, 1, 1});
  for (int i = 0; i < 2; ++i)
    self->send(pool, make_execute("ping"));
  run();
  auto loads = in_flight();
  CHECK(std::count(loads.begin(), loads.end(), 2u) == 2);
  CHECK(std::count(loads.begin(), loads.end(), 1u) == 1);
  advance(100ms);
  auto rs = replies();
  CHECK(rs.size() == 5);
  CHECK(count_code(rs, error_code::none) == 5);
  CHECK(in_flight() == std::vector<uint32_t>{0, 0, 0});
  CHECK(stats().replies.at("ok") == 5);
}

TEST_CASE_METHOD(fixture, "a full queue answers overloaded at once", "[unit][pool]") {
  auto cfg = mock_pool(1, 1, 1s);
  cfg.queue_size = 2;
  cfg.queue_share = 1.0;
  start(cfg);
  for (int i = 0; i < 4; ++i)
    self->send(pool, make_execute("ping"));
  run();
  // One runs, two wait, the fourth is refused without waiting.
  auto early = replies();
  REQUIRE(early.size() == 1);
  CHECK(code_of(early.front().error()) == error_code::overloaded);
  CHECK(stats().queue == 2);
  advance(1s);
  advance(1s);
  advance(1s);
  CHECK(count_code(replies(), error_code::none) == 3);
}

TEST_CASE_METHOD(fixture, "one requester cannot take more than its share of the queue",
                 "[unit][pool]") {
  auto cfg = mock_pool(1, 1, 1s);
  cfg.queue_size = 4;
  cfg.queue_share = 0.5;
  start(cfg);
  for (int i = 0; i < 5; ++i)
    self->send(pool, make_execute("ping")); // 1 runs, 2 wait, 2 refused
  run();
  auto refused = replies();
  CHECK(count_code(refused, error_code::overloaded) == 2);
  caf::scoped_actor other{sys};
  other->send(pool, make_execute("ping")); // still has room: queued
  run();
  CHECK(stats().queue == 3);
  for (int i = 0; i < 4; ++i)
    advance(1s);
  CHECK(count_code(replies(), error_code::none) == 3);
  bool answered = false;
  other->receive([&](payload&) { answered = true; }, caf::after(0s) >> [] {});
  CHECK(answered);
}

TEST_CASE_METHOD(fixture, "a request waiting past its deadline times out", "[unit][pool]") {
  start(mock_pool(1, 1, 1s));
  self->send(pool, make_execute("ping"));
  auto req = make_execute("ping");
  req.timeout = 300ms;
  self->send(pool, req);
  run();
  for (int i = 0; i < 29; ++i)
    advance(10ms); // t = 290 ms: not yet
  CHECK(replies().empty());
  // Queue deadlines are swept every 10 ms: due at 300 ms, answered by 310 ms.
  advance(10ms);
  advance(10ms);
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  CHECK(code_of(rs.front().error()) == error_code::timeout);
  CHECK(stats().queue == 0);
  advance(700ms);
  CHECK(count_code(replies(), error_code::none) == 1);
}

TEST_CASE_METHOD(fixture, "a deadline beyond max_request_timeout is clamped to it",
                 "[unit][pool][deadline]") {
  // A client asking for a day cannot hold a worker or a queue place beyond
  // the operator's policy: clamped to 300 ms, the running request and the
  // one queued behind it time out as if they had asked for that.
  auto cfg = mock_pool(1, 1, 1s);
  cfg.max_request_timeout = 300ms;
  start(cfg);
  auto req = make_execute("ping");
  req.timeout = 24h;
  self->send(pool, req);
  self->send(pool, req);
  run();
  for (int i = 0; i < 29; ++i)
    advance(10ms);
  CHECK(replies().empty());
  advance(10ms);
  advance(10ms);
  CHECK(count_code(replies(), error_code::timeout) == 2);
}

TEST_CASE_METHOD(fixture, "a command's own default deadline applies to its requests that name none",
                 "[unit][pool][deadline]") {
  auto cfg = mock_pool(2, 1, 1s);
  cfg.command_timeouts = {{"ping", 300ms}};
  start(cfg);
  self->send(pool, make_execute("ping")); // its command's 300 ms
  auto named = make_execute("ping");
  named.timeout = 2s; // what a caller names wins
  self->send(pool, named);
  run();
  for (int i = 0; i < 31; ++i)
    advance(10ms);
  auto rs = replies();
  CHECK(count_code(rs, error_code::timeout) == 1);
  advance(700ms);
  CHECK(count_code(replies(), error_code::none) == 1);
}

TEST_CASE_METHOD(fixture, "a requester that is gone no longer holds a queue place",
                 "[unit][pool]") {
  auto cfg = mock_pool(1, 1, 1s);
  cfg.queue_size = 1;
  start(cfg);
  self->send(pool, make_execute("ping")); // occupies the worker
  {
    caf::scoped_actor gone{sys};
    gone->send(pool, make_execute("ping")); // takes the only queue place
    run();
    CHECK(stats().queue == 1);
  }
  run(); // the pool sees the requester's down message
  CHECK(stats().queue == 0);
  self->send(pool, make_execute("ping"));
  run();
  CHECK(replies().empty()); // queued, not refused
  advance(1s);
  advance(1s);
  CHECK(count_code(replies(), error_code::none) == 2);
}

TEST_CASE_METHOD(fixture, "only idempotent requests are retried when their worker dies",
                 "[unit][pool]") {
  start(mock_pool(1, 8, 100ms));
  auto idem = make_execute("echo", std::string{"again"});
  idem.idempotent = true;
  auto once = make_execute("echo", std::string{"once"});
  self->send(pool, idem);
  self->send(pool, once);
  self->send(pool, make_execute("crash"));
  run();
  // The crash fails itself and the non-idempotent request at once; the
  // idempotent one runs again on the restarted worker.
  auto rs = replies();
  CHECK(count_code(rs, error_code::worker_crashed) == 2);
  // Retry back-off (10 ms, swept every 10 ms), then 100 ms of mock latency.
  advance(10ms);
  CHECK(replies().empty());
  for (int i = 0; i < 11; ++i)
    advance(10ms);
  auto retried = replies();
  REQUIRE(retried.size() == 1);
  REQUIRE(retried.front());
  CHECK(*unpack<std::string>(*retried.front()) == "again");
  auto st = stats();
  CHECK(st.retries == 1);
  CHECK(st.restarts == 1);
}

TEST_CASE_METHOD(fixture, "idempotent retries are bounded", "[unit][pool]") {
  auto cfg = mock_pool(1, 8, 0ms);
  cfg.max_attempts = 3;
  start(cfg);
  auto crash = make_execute("crash");
  crash.idempotent = true;
  self->send(pool, crash);
  run();
  for (int i = 0; i < 10; ++i)
    advance(10ms); // back-offs of 10 and 20 ms between the attempts
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  CHECK(code_of(rs.front().error()) == error_code::worker_crashed);
  CHECK(stats().retries == 3);
}

TEST_CASE_METHOD(fixture, "workers are recycled without failing requests", "[unit][pool]") {
  auto cfg = mock_pool(1, 2, 10ms);
  cfg.max_requests = 3;
  start(cfg);
  for (int i = 0; i < 10; ++i)
    self->send(pool, make_execute("ping"));
  run();
  for (int i = 0; i < 20; ++i)
    advance(10ms);
  auto rs = replies();
  CHECK(rs.size() == 10);
  CHECK(count_code(rs, error_code::none) == 10);
  auto st = stats();
  CHECK(st.recycled >= 3);
  CHECK(st.restarts == 0);
}

TEST_CASE_METHOD(fixture, "max-requests-jitter spreads each worker's recycle over its range",
                 "[unit][pool]") {
  // Requests one after another on one worker: the run of requests between
  // two recycles is that incarnation's own limit.
  auto runs = [&](uint64_t jitter) {
    auto cfg = mock_pool(1, 1, 0ms);
    cfg.max_requests = 3;
    cfg.max_requests_jitter = jitter;
    cfg.jitter_seed = 42;
    if (pool) {
      caf::anon_send_exit(pool, caf::exit_reason::kill);
      run();
    }
    start(cfg);
    std::vector<uint64_t> lengths;
    uint64_t recycled = 0, since = 0;
    for (int i = 0; i < 80; ++i) {
      REQUIRE(call(make_execute("ping")));
      ++since;
      auto now = stats().recycled;
      if (now != recycled) {
        lengths.push_back(since);
        recycled = now;
        since = 0;
      }
    }
    return lengths;
  };
  auto exact = runs(0);
  REQUIRE(exact.size() >= 20);
  CHECK(std::all_of(exact.begin(), exact.end(), [](uint64_t n) { return n == 3; }));
  auto spread = runs(4);
  REQUIRE(spread.size() >= 10);
  CHECK(std::all_of(spread.begin(), spread.end(), [](uint64_t n) { return n >= 3 && n <= 7; }));
  // Seeded: the same limits every run, and not one limit for all.
  CHECK(std::set<uint64_t>(spread.begin(), spread.end()).size() >= 3);
  CHECK(spread == runs(4));
}

TEST_CASE_METHOD(fixture, "session requests stick to the worker that holds the state",
                 "[unit][pool]") {
  start(mock_pool(3, 4, 0ms));
  using kv = std::map<std::string, std::string>;
  for (int s = 0; s < 6; ++s) {
    auto id = "s" + std::to_string(s);
    REQUIRE(call(make_execute("session.put", kv{{"key", "k"}, {"value", id}}, id)));
  }
  for (int round = 0; round < 3; ++round)
    for (int s = 0; s < 6; ++s) {
      auto id = "s" + std::to_string(s);
      auto r = call(make_execute("session.get", kv{{"key", "k"}}, id));
      REQUIRE(r);
      CHECK(*unpack<std::string>(*r) == id);
    }
  // The sessions were spread over the workers, not all on one.
  size_t busy = 0;
  for (auto& w : stats().workers)
    busy += w.served > 0 ? 1 : 0;
  CHECK(busy == 3);
  CHECK(stats().sessions == 6);
}

TEST_CASE_METHOD(fixture, "a session whose worker died reports session_lost", "[unit][pool]") {
  start(mock_pool(2, 4, 0ms));
  using kv = std::map<std::string, std::string>;
  REQUIRE(call(make_execute("session.put", kv{{"key", "k"}, {"value", "v"}}, "s1")));
  // Crash the session's own worker through the session.
  auto crashed = call(make_execute("crash", msgpack::type::nil_t{}, "s1"));
  REQUIRE_FALSE(crashed);
  CHECK(code_of(crashed.error()) == error_code::session_lost); // its state died too
  auto r = call(make_execute("session.get", kv{{"key", "k"}}, "s1"));
  REQUIRE_FALSE(r);
  CHECK(code_of(r.error()) == error_code::session_lost);
  // Stateless work still succeeds.
  CHECK(call(make_execute("ping")));
}

TEST_CASE_METHOD(fixture, "session expiry is configured through the pool", "[unit][pool]") {
  start(mock_pool(1, 4, 0ms));
  REQUIRE(call(make_execute("ping", msgpack::type::nil_t{}, "s1")));
  advance(150ms);
  REQUIRE(call(make_execute("ping", msgpack::type::nil_t{}, "s1")));
  advance(250ms);
  auto r = call(make_execute("ping", msgpack::type::nil_t{}, "s1"));
  REQUIRE_FALSE(r);
  CHECK(code_of(r.error()) == error_code::session_expired);
  CHECK(ask<caf::timespan>(pool, configure_atom::value, caf::timespan{1s}) == 200ms);
  CHECK(ask<bool>(pool, end_session_atom::value, std::string{"s1"}));
  REQUIRE(call(make_execute("ping", msgpack::type::nil_t{}, "s1")));
  advance(500ms);
  CHECK(call(make_execute("ping", msgpack::type::nil_t{}, "s1")));
}

TEST_CASE_METHOD(fixture, "a hung worker costs only its own request", "[unit][pool]") {
  auto cfg = mock_pool(2, 4, 10ms);
  cfg.interrupt_grace = 100ms;
  start(cfg);
  auto hang = make_execute("hang");
  hang.timeout = 500ms;
  self->send(pool, hang);
  run();
  for (int i = 0; i < 5; ++i) {
    self->send(pool, make_execute("ping"));
    run();
    advance(10ms);
  }
  auto rs = replies();
  CHECK(count_code(rs, error_code::none) == 5);
  advance(500ms);
  auto late = replies();
  REQUIRE(late.size() == 1);
  CHECK(code_of(late.front().error()) == error_code::timeout);
  CHECK(stats().recycled == 0); // interrupted; the hang may yet stop
  advance(100ms);
  // It did not: the hung worker was recycled, which counts as that, not
  // as a crash.
  CHECK(stats().recycled == 1);
  CHECK(stats().restarts == 0);
}

TEST_CASE_METHOD(fixture, "an idempotent request stuck on a hung worker is retried in time",
                 "[unit][pool]") {
  auto cfg = mock_pool(2, 4, 10ms);
  cfg.attempt_timeout = 200ms;
  cfg.interrupt_grace = 50ms;
  start(cfg);
  auto hang = make_execute("hang");
  hang.idempotent = true;
  hang.timeout = 1s;
  self->send(pool, hang); // hangs on every worker it reaches
  run();
  advance(200ms); // first attempt times out: interrupted there, retried
  CHECK(replies().empty());
  CHECK(stats().retries == 1);
  for (int i = 0; i < 60; ++i)
    advance(10ms); // two more attempts of 200 ms each, after back-offs
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  CHECK(code_of(rs.front().error()) == error_code::worker_crashed);
  CHECK(stats().recycled == 3); // each hung worker recycled itself
  CHECK(stats().restarts == 0);
}

TEST_CASE_METHOD(fixture, "hint mode runs a session request elsewhere when its owner is busy",
                 "[unit][pool]") {
  using kv = std::map<std::string, std::string>;
  for (auto mode : {affinity_mode::strict, affinity_mode::hint}) {
    INFO((mode == affinity_mode::hint ? "hint" : "strict"));
    auto cfg = mock_pool(2, 1, 100ms);
    cfg.mode = mode;
    cfg.session.timeout = 10s;
    start(cfg);
    // New sessions go to the least-loaded worker, ties in turn: s1 and s3
    // share a worker, s2 has the other.
    for (auto id : {"s1", "s2", "s3"}) {
      self->send(pool, make_execute("ping", msgpack::type::nil_t{}, id));
      run();
      advance(100ms);
      REQUIRE(replies().size() == 1);
    }
    // Keep s1's owner busy with s3's work, then ask for s1.
    self->send(pool, make_execute("sleep", std::map<std::string, int>{{"ms", 500}}, "s3"));
    run();
    self->send(pool, make_execute("session.get", kv{{"key", "k"}}, "s1"));
    run();
    advance(100ms);
    auto early = replies();
    if (mode == affinity_mode::hint) {
      // Served by the other worker at once (without the owner's state).
      REQUIRE(early.size() == 1);
      CHECK(early.front());
    } else {
      CHECK(early.empty()); // waits for the owner
    }
    for (int i = 0; i < 6; ++i)
      advance(100ms);
    CHECK(replies().size() == (mode == affinity_mode::hint ? 1u : 2u));
    caf::anon_send_exit(pool, caf::exit_reason::kill);
    run();
    pool = nullptr;
  }
}

TEST_CASE_METHOD(fixture, "hint mode never runs a session's request beside its earlier one",
                 "[unit][pool][order]") {
  // The owner is busy with the session's own request: the next one waits
  // for it instead of overtaking it on the idle worker.
  auto cfg = mock_pool(2, 1, 0ms);
  cfg.mode = affinity_mode::hint;
  start(cfg);
  self->send(pool, make_execute("sleep", std::map<std::string, int>{{"ms", 300}}, "s1"));
  run();
  self->send(pool, make_execute("echo", std::string{"second"}, "s1"));
  run();
  advance(100ms);
  CHECK(replies().empty());
  advance(200ms);
  auto done = replies();
  REQUIRE(done.size() == 2);
  REQUIRE(done[0]);
  CHECK(*unpack<int>(*done[0]) == 300);
  REQUIRE(done[1]);
  CHECK(*unpack<std::string>(*done[1]) == "second");
}

TEST_CASE_METHOD(fixture, "a graceful stop refuses new work and ends the pool", "[unit][pool]") {
  start(mock_pool(2, 4, 100ms));
  self->send(pool, make_execute("ping"));
  run();
  watch(pool);
  self->send_exit(pool, caf::exit_reason::user_shutdown);
  run();
  advance(100ms);
  auto rs = replies();
  CHECK(count_code(rs, error_code::none) == 1); // in flight: completed
  auto down = next_down();
  REQUIRE(down);
  CHECK(*down == caf::exit_reason::user_shutdown);
  pool = nullptr;
}

TEST_CASE_METHOD(fixture, "queued requests of one session run in the order they were sent",
                 "[unit][pool][order]") {
  auto cfg = mock_pool(1, 1, 10ms);
  for (auto mode : {affinity_mode::strict, affinity_mode::hint}) {
    CAPTURE(static_cast<int>(mode));
    cfg.mode = mode;
    start(cfg);
    // One worker, one request at a time: 29 of the 30 wait in the queue
    // and each is routed (an asynchronous round trip) before it runs.
    for (int i = 0; i < 30; ++i)
      self->send(pool, make_execute("echo", i, "line-counter"));
    run();
    std::vector<int> order;
    for (int step = 0; step < 40 && order.size() < 30; ++step) {
      advance(10ms);
      for (auto& r : replies()) {
        REQUIRE(r);
        order.push_back(*unpack<int>(*r));
      }
    }
    std::vector<int> expected(30);
    for (int i = 0; i < 30; ++i)
      expected[i] = i;
    CHECK(order == expected);
    caf::anon_send_exit(pool, caf::exit_reason::kill);
    run();
  }
}

TEST_CASE_METHOD(fixture, "a retried request keeps the caller's deadline", "[unit][pool][deadline]") {
  // One worker running two at a time; an idempotent request with a 100 ms
  // deadline has run 60 ms when its worker crashes. Its retry may use only
  // the 40 ms left: it must be answered (with timeout) by 100 ms plus the
  // sweep granularity, not run its full 80 ms again on the new worker.
  auto cfg = mock_pool(1, 2, 0ms);
  start(cfg);
  auto req = make_execute("sleep", std::map<std::string, int>{{"ms", 80}});
  req.idempotent = true;
  req.timeout = 100ms;
  self->send(pool, req);
  run();
  advance(60ms);
  auto crash = make_execute("crash");
  self->send(pool, crash);
  run();
  auto early = replies(); // the crash request itself
  REQUIRE(early.size() == 1);
  CHECK(code_of(early.front().error()) == error_code::worker_crashed);
  std::vector<caf::expected<payload>> late;
  caf::timespan waited = 60ms;
  while (late.empty() && waited < 300ms) {
    advance(5ms);
    waited += 5ms;
    late = replies();
  }
  REQUIRE(late.size() == 1);
  REQUIRE(!late.front());
  CHECK(code_of(late.front().error()) == error_code::timeout);
  CHECK(waited <= 100ms + 20ms); // deadline plus the worker's and the pool's sweeps
}

TEST_CASE_METHOD(fixture, "requesters with waiting work take turns", "[unit][pool][fairness]") {
  // One worker, one request at a time, 10 ms each. Requester A queues six,
  // then B queues two: B must not wait for A's whole backlog.
  start(mock_pool(1, 1, 10ms));
  for (int i = 0; i < 6; ++i)
    self->send(pool, make_execute("echo", std::string{"a"} + std::to_string(i)));
  run();
  caf::scoped_actor other{sys};
  for (int i = 0; i < 2; ++i)
    other->send(pool, make_execute("echo", std::string{"b"} + std::to_string(i)));
  run();
  std::vector<std::string> order;
  for (int step = 0; step < 12 && order.size() < 8; ++step) {
    advance(10ms);
    for (auto& r : replies()) {
      REQUIRE(r);
      order.push_back(*unpack<std::string>(*r));
    }
    other->receive([&](payload& p) { order.push_back(*unpack<std::string>(p)); },
                   caf::after(0s) >> [] {});
  }
  CHECK(order == std::vector<std::string>{"a0", "b0", "a1", "b1", "a2", "a3", "a4", "a5"});
}

TEST_CASE_METHOD(fixture, "a session id longer than the limit is a bad request",
                 "[unit][pool]") {
  auto cfg = mock_pool(1, 1, 0ms);
  cfg.session.max_id_size = 8;
  start(cfg);
  auto r = call(make_execute("echo", 1, std::string(9, 's')));
  REQUIRE_FALSE(r);
  CHECK(code_of(r.error()) == error_code::bad_request);
  CHECK(call(make_execute("echo", 1, std::string(8, 's'))));
  self->send(pool, end_session_atom::value, std::string(9, 's'));
  run();
  caf::error end;
  self->receive([&](bool) {}, [&](caf::error& e) { end = std::move(e); },
                caf::after(0s) >> [] { FAIL("no reply"); });
  CHECK(code_of(end) == error_code::bad_request);
}

TEST_CASE_METHOD(fixture, "stats count each command's replies by outcome and service time",
                 "[unit][pool][metrics]") {
  auto cfg = mock_pool(1, 1, 2ms);
  cfg.queue_size = 1;
  cfg.queue_share = 1.0;
  start(cfg);
  for (int i = 0; i < 3; ++i)
    self->send(pool, make_execute("ping"));
  self->send(pool, make_execute("raise"));
  run();
  // One ping runs, one waits, the rest are refused by the full queue
  // before reaching a worker: counted, without a service time.
  CHECK(count_code(replies(), error_code::overloaded) == 2);
  for (int i = 0; i < 3; ++i)
    advance(2ms);
  auto st = stats();
  auto& ping = st.commands.at("ping");
  CHECK(ping.replies.at("ok") == 2);
  CHECK(ping.replies.at("overloaded") == 1);
  CHECK(ping.histogram.count == 2);
  CHECK(ping.latency_us.p50 > 1000); // 2 ms on the test clock
  CHECK(ping.latency_us.p50 <= 2000);
  CHECK(st.commands.at("raise").replies.at("overloaded") == 1);
  CHECK(st.commands.at("raise").histogram.count == 0);
  CHECK(st.replies.at("ok") == 2);
  CHECK(st.replies.at("overloaded") == 2);
  CHECK(st.latency_us.p50 == Approx(ping.latency_us.p50));
}

TEST_CASE_METHOD(fixture, "arbitrary command names cannot grow the statistics without bound",
                 "[unit][pool][metrics]") {
  start(mock_pool(2, 4, 0ms));
  for (size_t i = 0; i < max_tracked_commands + 10; ++i)
    self->send(pool, make_execute("no-such-command-" + std::to_string(i)));
  run();
  CHECK(replies().size() == max_tracked_commands + 10);
  auto st = stats();
  CHECK(st.commands.size() == max_tracked_commands + 1);
  CHECK(st.commands.at(other_commands).replies.at("unknown_command") == 10);
}

TEST_CASE_METHOD(fixture, "command names that are not UTF-8 count as other commands",
                 "[unit][pool][metrics]") {
  start(mock_pool(1, 4, 0ms));
  for (std::string bad : {"\xff\xfe", "ok\xc0\xafslash", "\xed\xa0\x80", "\xe2\x82"})
    self->send(pool, make_execute(bad));
  self->send(pool, make_execute("caf\xc3\xa9")); // "cafe" with an accent: fine
  run();
  CHECK(replies().size() == 5);
  auto st = stats();
  CHECK(st.commands.size() == 2);
  CHECK(st.commands.at(other_commands).replies.at("unknown_command") == 4);
  CHECK(st.commands.count("caf\xc3\xa9") == 1);
}

namespace {

execute tagged(execute req, uint64_t tag, caf::timespan timeout = 10s) {
  req.tag = tag;
  req.timeout = timeout;
  return req;
}

} // namespace

TEST_CASE_METHOD(fixture, "a cancelled queued request is answered cancelled and never runs",
                 "[unit][pool]") {
  start(mock_pool(1, 1, 1ms));
  self->send(pool, tagged(make_execute("sleep", sleep_args{{"ms", 100}}), 1));
  using kv = std::map<std::string, std::string>;
  self->send(pool, tagged(make_execute("session.put", kv{{"key", "k"}, {"value", "v"}}, "s"), 2));
  run();
  CHECK(stats().queue == 1);
  self->send(pool, cancel_atom::value, uint64_t{2});
  run();
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  CHECK(code_of(rs.front().error()) == error_code::cancelled);
  advance(101ms);
  CHECK(count_code(replies(), error_code::none) == 1);
  // It never ran: the session has nothing.
  self->send(pool, make_execute("session.get", kv{{"key", "k"}}, "s"));
  run();
  advance(1ms);
  auto got = replies();
  REQUIRE(got.size() == 1);
  REQUIRE(got.front());
  CHECK(got.front()->bytes == pack(msgpack::type::nil_t{}).bytes);
  CHECK(stats().replies.at("cancelled") == 1);
}

TEST_CASE_METHOD(fixture, "a cancelled running request is answered at once: the worker lives on",
                 "[unit][pool]") {
  start(mock_pool(1, 4, 2ms));
  self->send(pool, tagged(make_execute("sleep", sleep_args{{"ms", 1000}}), 7));
  run();
  advance(10ms);
  CHECK(replies().empty());
  self->send(pool, cancel_atom::value, uint64_t{8}); // unknown: nothing
  self->send(pool, cancel_atom::value, uint64_t{7});
  run();
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  CHECK(code_of(rs.front().error()) == error_code::cancelled);
  self->send(pool, cancel_atom::value, uint64_t{7}); // answered already: nothing
  run();
  CHECK(replies().empty());
  advance(2ms); // the interrupted handler stops
  CHECK(stats().workers.front().in_flight == 0);
  // The same worker serves the next request (the mock's latency is 2 ms).
  self->send(pool, make_execute("ping"));
  run();
  advance(2ms);
  auto next = replies();
  REQUIRE(next.size() == 1);
  CHECK(next.front());
  advance(2s);
  CHECK(stats().recycled == 0);
  CHECK(stats().restarts == 0);
}

TEST_CASE_METHOD(fixture, "the requests of a requester that terminates are cancelled",
                 "[unit][pool]") {
  start(mock_pool(1, 4, 2ms));
  auto p = pool;
  auto requester = sys.spawn([p](caf::event_based_actor* self) {
    self->request(p, caf::infinite, tagged(make_execute("sleep", sleep_args{{"ms", 1000}}), 1))
      .then([](payload&) {}, [](caf::error&) {});
    self->request(p, caf::infinite, tagged(make_execute("sleep", sleep_args{{"ms", 1000}}), 2))
      .then([](payload&) {}, [](caf::error&) {});
  });
  run();
  CHECK(stats().workers.front().in_flight == 2);
  caf::anon_send_exit(requester, caf::exit_reason::kill);
  run();
  advance(2ms);
  CHECK(stats().workers.front().in_flight == 0);
  CHECK(stats().replies.at("cancelled") == 2);
}

TEST_CASE_METHOD(fixture, "a session is active while its requests run: idle time counts from "
                          "the end of the last one",
                 "[unit][pool]") {
  start(mock_pool(1, 4, 1ms)); // session timeout 200 ms, cleanup every 50 ms
  self->send(pool, make_execute("sleep", sleep_args{{"ms", 500}}, "busy"));
  run();
  for (int i = 0; i < 10; ++i)
    advance(50ms); // 500 ms: past the timeout, the cleanup ran ten times
  advance(2ms);
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  CHECK(rs.front());
  self->send(pool, make_execute("ping", msgpack::type::nil_t{}, "busy"));
  run();
  advance(1ms);
  rs = replies();
  REQUIRE(rs.size() == 1);
  CHECK(rs.front()); // not session_expired: it was working, not idle
  for (int i = 0; i < 5; ++i)
    advance(50ms); // now idle for 250 ms
  self->send(pool, make_execute("ping", msgpack::type::nil_t{}, "busy"));
  run();
  advance(1ms);
  rs = replies();
  REQUIRE(rs.size() == 1);
  REQUIRE_FALSE(rs.front());
  CHECK(code_of(rs.front().error()) == error_code::session_expired);
}

TEST_CASE_METHOD(fixture, "a session whose queued request is cancelled becomes idle again",
                 "[unit][pool]") {
  start(mock_pool(1, 1, 1ms));
  self->send(pool, make_execute("ping", msgpack::type::nil_t{}, "s")); // binds it
  run();
  advance(1ms);
  REQUIRE(replies().size() == 1);
  self->send(pool, make_execute("sleep", sleep_args{{"ms", 100}}));
  self->send(pool, tagged(make_execute("ping", msgpack::type::nil_t{}, "s"), 3));
  run();
  CHECK(stats().queue == 1); // routed (active), waiting for the worker
  self->send(pool, cancel_atom::value, uint64_t{3});
  run();
  advance(101ms);
  CHECK(count_code(replies(), error_code::cancelled) == 1);
  for (int i = 0; i < 6; ++i)
    advance(50ms);
  self->send(pool, make_execute("ping", msgpack::type::nil_t{}, "s"));
  run();
  advance(1ms);
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  REQUIRE_FALSE(rs.front());
  CHECK(code_of(rs.front().error()) == error_code::session_expired);
}

TEST_CASE_METHOD(fixture, "a session request cancelled while it is being routed never runs",
                 "[unit][pool]") {
  start(mock_pool(1, 4, 1ms));
  using kv = std::map<std::string, std::string>;
  self->send(pool, make_execute("ping", msgpack::type::nil_t{}, "s")); // binds it
  run();
  advance(1ms);
  REQUIRE(replies().size() == 1);
  // The cancel arrives while the affinity's answer is on its way.
  self->send(pool, tagged(make_execute("session.put", kv{{"key", "k"}, {"value", "v"}}, "s"), 5));
  self->send(pool, cancel_atom::value, uint64_t{5});
  run();
  advance(1ms);
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  REQUIRE_FALSE(rs.front());
  CHECK(code_of(rs.front().error()) == error_code::cancelled);
  self->send(pool, make_execute("session.get", kv{{"key", "k"}}, "s"));
  run();
  advance(1ms);
  auto got = replies();
  REQUIRE(got.size() == 1);
  REQUIRE(got.front());
  CHECK(got.front()->bytes == pack(msgpack::type::nil_t{}).bytes);
}

TEST_CASE_METHOD(fixture, "a session's end runs after its queued requests and the worker forgets "
                          "what they made",
                 "[unit][pool][session]") {
  using kv = std::map<std::string, std::string>;
  start(mock_pool(1, 1, 1ms));
  self->send(pool, make_execute("ping", msgpack::type::nil_t{}, "s")); // binds it
  run();
  advance(1ms);
  REQUIRE(replies().size() == 1);
  // The worker is busy: the put waits in the pool's queue when the end
  // comes.
  self->send(pool, make_execute("sleep", sleep_args{{"ms", 100}}));
  self->send(pool, make_execute("session.put", kv{{"key", "k"}, {"value", "v"}}, "s"));
  self->send(pool, end_session_atom::value, std::string{"s"});
  run();
  bool ended = false;
  self->receive([&](bool existed) { ended = existed; }, caf::after(0s) >> [] {});
  CHECK_FALSE(ended); // not before the put has gone to the worker
  advance(101ms);
  advance(1ms);
  CHECK(count_code(replies(), error_code::none) == 2); // the sleep and the put
  self->receive([&](bool existed) { ended = existed; }, caf::after(0s) >> [] {});
  CHECK(ended);
  // A later request of the same id is a new session: nothing of the put is
  // left on the worker.
  self->send(pool, make_execute("session.keys", msgpack::type::nil_t{}, "s"));
  run();
  advance(1ms);
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  REQUIRE(rs.front());
  CHECK(unpack<std::vector<std::string>>(*rs.front())->empty());
  CHECK(stats().sessions == 1);
}

// -- streams (issue #28) -----------------------------------------------------------

namespace {

using count_args = std::map<std::string, int>;

execute stream_of(int n, int ms, uint64_t tag) {
  auto req = tagged(make_execute("stream.count", count_args{{"n", n}, {"ms", ms}}), tag);
  req.stream = true;
  return req;
}

/// Lets `d` pass on the test clock in steps of 1 ms, so that timers set
/// on the way fire in their time too.
void pass(fixture& f, caf::timespan d) {
  for (auto t = caf::timespan{0}; t < d; t += 1ms)
    f.advance(1ms);
}

/// The chunks that have arrived so far, as (tag, value).
std::vector<std::pair<uint64_t, int64_t>> chunks_of(caf::scoped_actor& self) {
  std::vector<std::pair<uint64_t, int64_t>> result;
  bool more = true;
  while (more)
    self->receive(
      [&](chunk_atom, uint64_t tag, payload& p) { result.emplace_back(tag, *unpack<int64_t>(p)); },
      caf::after(0s) >> [&] { more = false; });
  return result;
}

} // namespace

TEST_CASE_METHOD(fixture, "a stream's chunks reach its caller as they come, then its result",
                 "[unit][pool][stream]") {
  start(mock_pool(1, 1, 0ms));
  self->send(pool, stream_of(4, 10, 5));
  run();
  std::vector<std::pair<uint64_t, int64_t>> seen;
  for (int64_t i = 0; i < 4; ++i) {
    // One chunk per 10 ms of the test clock, none before its time.
    advance(9ms);
    CHECK(chunks_of(self).empty());
    advance(1ms);
    auto got = chunks_of(self);
    REQUIRE(got.size() == 1);
    CHECK(got.front() == std::make_pair(uint64_t{5}, i));
    if (i < 3)
      CHECK(replies().empty()); // the response only after the last chunk
    self->send(pool, taken_atom::value, uint64_t{5}, static_cast<uint64_t>(i + 1));
    run();
  }
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  REQUIRE(rs.front());
  CHECK(*unpack<int64_t>(*rs.front()) == 4);
}

TEST_CASE_METHOD(fixture, "a consumer that takes nothing holds its stream at the window",
                 "[unit][pool][stream]") {
  auto cfg = mock_pool(1, 1, 0ms);
  cfg.stream_window = 3;
  start(cfg);
  self->send(pool, stream_of(10, 1, 9));
  run();
  pass(*this, 100ms);
  CHECK(chunks_of(self).size() == 3); // and no more, however long it waits
  CHECK(replies().empty());
  self->send(pool, taken_atom::value, uint64_t{9}, uint64_t{2});
  run();
  pass(*this, 100ms);
  CHECK(chunks_of(self).size() == 2); // two taken: two more
  self->send(pool, taken_atom::value, uint64_t{9}, uint64_t{10});
  run();
  pass(*this, 100ms);
  CHECK(chunks_of(self).size() == 5);
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  CHECK(rs.front());
}

TEST_CASE_METHOD(fixture, "without the stream option a generator answers one list",
                 "[unit][pool][stream]") {
  start(mock_pool(1, 1, 0ms));
  auto req = stream_of(3, 1, 2);
  req.stream = false;
  self->send(pool, req);
  run();
  advance(5ms);
  CHECK(chunks_of(self).empty());
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  REQUIRE(rs.front());
  CHECK(*unpack<std::vector<int64_t>>(*rs.front()) == std::vector<int64_t>{0, 1, 2});
}

TEST_CASE_METHOD(fixture, "a cancelled stream answers cancelled and sends nothing after",
                 "[unit][pool][stream]") {
  start(mock_pool(1, 1, 0ms));
  self->send(pool, stream_of(100, 10, 4));
  run();
  pass(*this, 25ms);
  CHECK(chunks_of(self).size() == 2);
  self->send(pool, cancel_atom::value, uint64_t{4});
  run();
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  CHECK(code_of(rs.front().error()) == error_code::cancelled);
  pass(*this, 200ms);
  CHECK(chunks_of(self).empty());
  CHECK(replies().empty());
  CHECK(stats().workers.front().in_flight == 0);
  CHECK(call(make_execute("ping"))); // the worker lives on
  CHECK(stats().recycled == 0);
}

TEST_CASE_METHOD(fixture, "a test's own streaming command streams from the mock",
                 "[unit][pool][stream]") {
  auto cfg = mock_pool(1, 1, 0ms);
  cfg.mock.commands["tokens"] = mock_command{
    [](const payload&, const std::string&) -> caf::expected<payload> { return pack(2); }, 5ms,
    [](const payload& args, const std::string&) {
      std::vector<payload> words;
      auto text = unpack<std::string>(args);
      for (auto c : *text)
        words.push_back(pack(int64_t{c}));
      return words;
    }};
  start(cfg);
  auto req = tagged(make_execute("tokens", std::string{"ab"}), 3);
  req.stream = true;
  self->send(pool, req);
  run();
  advance(5ms);
  CHECK(chunks_of(self) == std::vector<std::pair<uint64_t, int64_t>>{{3, 'a'}});
  advance(5ms);
  CHECK(chunks_of(self) == std::vector<std::pair<uint64_t, int64_t>>{{3, 'b'}});
  auto rs = replies();
  REQUIRE(rs.size() == 1);
  REQUIRE(rs.front());
  CHECK(*unpack<int>(*rs.front()) == 2);
}

// Unit tests of escalation to the top (issue #10): the pool keeper restarts a
// pool that gave up, answers `unavailable` meanwhile, and restart intensity
// counts only what restarting does not fix. Mock workers on the deterministic
// test coordinator: no Python, no sleeps, time moves only through advance().
#include "support/test_coordinator_fixture.hpp"

#include "caf/send.hpp"

#include "pyvisor/pool.hpp"

using namespace pyvisor;
using namespace std::chrono_literals;

namespace {

pool_config crashing_pool(size_t max_restarts) {
  pool_config cfg;
  cfg.size = 2;
  cfg.backend = backend_kind::mock;
  cfg.backoff = backoff_policy::none();
  cfg.max_restarts = max_restarts;
  cfg.restart_period = 10s;
  cfg.healthy_after = 50ms;
  cfg.restart.backoff = backoff_policy{1s, 2.0, 4s, 0.0, 60s};
  return cfg;
}

struct fixture : test::test_coordinator_fixture {
  pool_actor pool;

  fixture() {
    add_pool_types(cfg);
  }

  void start(pool_config pc) {
    pool = spawn_pool(sys, std::move(pc));
    run();
    ask<pool_stats>(pool, ready_atom::value);
  }

  ~fixture() {
    if (pool)
      caf::anon_send_exit(pool, caf::exit_reason::kill);
    run();
  }

  /// Sends `xs...`, runs everything and returns the one reply.
  template <class T, class... Ts>
  caf::expected<T> call(Ts&&... xs) {
    self->send(pool, std::forward<Ts>(xs)...);
    run();
    caf::expected<T> result{caf::error{}};
    bool got = false;
    self->receive([&](T& x) { result = std::move(x), got = true; },
                  [&](caf::error& err) { result = std::move(err), got = true; },
                  caf::after(0s) >> [] {});
    REQUIRE(got);
    return result;
  }

  pool_stats stats() {
    return ask<pool_stats>(pool, status_atom::value);
  }

  void crash_one() {
    auto r = call<payload>(make_execute("crash"));
    REQUIRE(!r);
    CHECK(code_of(r.error()) == error_code::worker_crashed);
  }
};

} // namespace

TEST_CASE_METHOD(fixture, "a pool that gives up is restarted and unavailable meanwhile",
                 "[unit][pool][keeper]") {
  start(crashing_pool(2));
  CHECK(call<bool>(health_atom::value) == caf::expected<bool>{true});
  CHECK(stats().state == pool_state::serving);
  // Three unproven crashes exceed an intensity of 2: the pool gives up.
  for (int i = 0; i < 3; ++i)
    crash_one();
  auto st = stats();
  CHECK(st.state == pool_state::restarting);
  CHECK(st.pool_restarts == 1);
  CHECK(st.last_failure.find("more than 2 worker restarts") != std::string::npos);
  for (auto r : {call<bool>(health_atom::value).error(),
                 call<payload>(make_execute("echo", 1)).error(),
                 call<bool>(end_session_atom::value, std::string{"s"}).error()}) {
    CHECK(code_of(r) == error_code::unavailable);
    CHECK(info_of(r).message.find("restarting") != std::string::npos);
  }
  // Not before the back-off...
  advance(900ms);
  CHECK(stats().state == pool_state::restarting);
  // ...but right after it: a new pool serves.
  advance(100ms);
  CHECK(stats().state == pool_state::serving);
  CHECK(call<bool>(health_atom::value) == caf::expected<bool>{true});
  auto r = call<payload>(make_execute("echo", 7));
  REQUIRE(r);
  CHECK(unpack<int>(*r) == 7);
}

TEST_CASE_METHOD(fixture, "give-ups in a row back off longer, a served pool starts over",
                 "[unit][pool][keeper]") {
  start(crashing_pool(0));
  crash_one(); // intensity 0: the first unproven crash gives up
  CHECK(stats().pool_restarts == 1);
  advance(1s);
  REQUIRE(stats().state == pool_state::serving);
  crash_one(); // again, without having served for reset_after: 2 s now
  CHECK(stats().pool_restarts == 2);
  advance(1s);
  CHECK(stats().state == pool_state::restarting);
  advance(1s);
  CHECK(stats().state == pool_state::serving);
}

TEST_CASE_METHOD(fixture, "a ready waiter during a restart is answered once the pool serves",
                 "[unit][pool][keeper]") {
  start(crashing_pool(0));
  crash_one();
  self->send(pool, ready_atom::value);
  run();
  bool answered = false;
  self->receive([&](pool_stats&) { answered = true; }, caf::after(0s) >> [] {});
  CHECK(!answered);
  advance(1s);
  self->receive([&](pool_stats& st) { answered = st.state == pool_state::serving; },
                caf::after(0s) >> [] {});
  CHECK(answered);
}

TEST_CASE_METHOD(fixture, "proven workers do not count toward restart intensity",
                 "[unit][pool][keeper]") {
  start(crashing_pool(2));
  for (int round = 0; round < 6; ++round) {
    // Both workers answer a request and stay up for healthy_after: proven.
    REQUIRE(call<payload>(make_execute("echo", round)));
    REQUIRE(call<payload>(make_execute("echo", round)));
    advance(50ms);
    crash_one();
  }
  auto st = stats();
  CHECK(st.state == pool_state::serving);
  CHECK(st.pool_restarts == 0);
  CHECK(st.restarts == 6);
}

TEST_CASE_METHOD(fixture, "a worker that dies before it proved itself still counts",
                 "[unit][pool][keeper]") {
  start(crashing_pool(2));
  // Served, but killed before healthy_after: as good as a crash loop.
  for (int i = 0; i < 3; ++i) {
    REQUIRE(call<payload>(make_execute("echo", i)));
    REQUIRE(call<payload>(make_execute("echo", i)));
    advance(10ms);
    crash_one();
  }
  CHECK(stats().state == pool_state::restarting);
}

TEST_CASE_METHOD(fixture, "timeouts recycle workers without counting as crashes",
                 "[unit][pool][keeper]") {
  auto cfg = crashing_pool(1);
  start(cfg);
  for (int i = 0; i < 6; ++i) {
    auto req = make_execute("hang");
    req.timeout = 100ms;
    self->send(pool, req);
    run();
    advance(100ms);
    bool timed_out = false;
    self->receive([&](caf::error& e) { timed_out = code_of(e) == error_code::timeout; },
                  [](payload&) {}, caf::after(0s) >> [] {});
    CHECK(timed_out);
  }
  auto st = stats();
  CHECK(st.state == pool_state::serving);
  CHECK(st.pool_restarts == 0);
}

TEST_CASE_METHOD(fixture, "with restarts off the keeper quits with unavailable",
                 "[unit][pool][keeper]") {
  auto cfg = crashing_pool(0);
  cfg.restart.enabled = false;
  start(cfg);
  watch(pool);
  crash_one();
  auto reason = next_down();
  REQUIRE(reason);
  CHECK(code_of(*reason) == error_code::unavailable);
  pool = nullptr;
}

TEST_CASE_METHOD(fixture, "an exit message stops the keeper and the pool behind it",
                 "[unit][pool][keeper]") {
  start(crashing_pool(0));
  watch(pool);
  caf::anon_send_exit(pool, caf::exit_reason::user_shutdown);
  run();
  advance(5s);
  auto reason = next_down();
  REQUIRE(reason);
  pool = nullptr;
}

TEST_CASE_METHOD(fixture, "huge deadlines are clamped, not overflowed", "[unit][pool][keeper]") {
  start(crashing_pool(2));
  auto req = make_execute("echo", 1);
  req.timeout = caf::timespan::max();
  auto r = call<payload>(req);
  REQUIRE(r);
  CHECK(unpack<int>(*r) == 1);
}

TEST_CASE_METHOD(fixture, "health is unavailable while every worker is restarting",
                 "[unit][pool][keeper]") {
  auto cfg = crashing_pool(10);
  cfg.size = 1;
  cfg.backoff = backoff_policy{100ms, 2.0, 1s, 0.0, 1s};
  start(cfg);
  CHECK(call<bool>(health_atom::value) == caf::expected<bool>{true});
  crash_one(); // the only worker waits 100 ms for its restart
  auto down = call<bool>(health_atom::value);
  REQUIRE(!down);
  CHECK(code_of(down.error()) == error_code::unavailable);
  CHECK(stats().state == pool_state::serving); // the pool did not give up
  advance(100ms);
  CHECK(call<bool>(health_atom::value) == caf::expected<bool>{true});
}

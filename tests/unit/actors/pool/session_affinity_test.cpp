// Unit tests of session affinity on the deterministic test coordinator: the
// clock only moves when the test says so, so "t = 150 ms" is exact.
#include "support/test_coordinator_fixture.hpp"

#include "caf/send.hpp"

#include "pyvisor/mock_worker.hpp"
#include "actors/pool/session_affinity.hpp"

using namespace pyvisor;
using namespace std::chrono_literals;

namespace {

struct fixture : test::test_coordinator_fixture {
  session_affinity_actor aff;
  worker_actor worker0;

  explicit fixture(session_settings s = {200ms, 50ms, 1s}) {
    aff = spawn_session_affinity(sys, s);
    worker0 = spawn_mock_worker(sys, mock_config{});
    run();
    self->send(aff, worker_up_atom::value, uint32_t{0}, uint32_t{1}, worker0);
    run();
  }

  ~fixture() {
    caf::anon_send_exit(aff, caf::exit_reason::kill);
    caf::anon_send_exit(worker0, caf::exit_reason::kill);
    run();
  }

  /// The incarnation the last successful route() named.
  uint32_t last_incarnation = 0;

  /// A request of `id` with candidate slot 0: routed and, when it got a
  /// slot, ended at once (session_done); the slot or the error.
  caf::expected<uint32_t> route(const std::string& id, uint32_t candidate = 0) {
    auto r = route_only(id, candidate);
    if (r && *r != no_slot) {
      self->send(aff, session_done_atom::value, id);
      run();
    }
    return r;
  }

  /// Routes `id` and leaves its request running (the session is active).
  caf::expected<uint32_t> route_only(const std::string& id, uint32_t candidate = 0) {
    self->send(aff, route_atom::value, id, candidate);
    run();
    caf::expected<uint32_t> result{caf::error{}};
    self->receive(
      [&](uint32_t s, uint32_t incarnation) {
        result = s;
        last_incarnation = incarnation;
      },
      [&](caf::error& e) { result = std::move(e); },
      caf::after(0s) >> [] { FAIL("no reply from affinity"); });
    return result;
  }

  affinity_stats stats() {
    return ask<affinity_stats>(aff, status_atom::value);
  }

  /// Number of sessions whose state the mock worker holds.
  uint64_t sessions_in_worker() {
    auto info = ask<payload>(worker0, make_execute("worker.info"));
    auto h = msgpack::unpack(info.bytes.data(), info.bytes.size());
    return h.get().as<std::map<std::string, msgpack::object>>().at("sessions").as<uint64_t>();
  }

  void put_state(const std::string& session) {
    ask<payload>(worker0, make_execute("session.put",
                                        std::map<std::string, std::string>{{"key", "k"},
                                                                           {"value", "v"}},
                                        session));
  }
};

} // namespace

TEST_CASE_METHOD(fixture, "a session keeps its worker while used within the timeout",
                 "[unit][affinity]") {
  REQUIRE(route("s1") == uint32_t{0});
  advance(150ms);
  // Another candidate is offered, but the session stays where its state is.
  CHECK(route("s1", 7) == uint32_t{0});
  advance(150ms); // idle 150 ms since the last use: still alive
  CHECK(route("s1", 7) == uint32_t{0});
  CHECK(stats().sessions == 1);
}

TEST_CASE("lookup expiry is exact, without waiting for a cleanup tick", "[unit][affinity]") {
  // Cleanup effectively never runs: only the lookup can expire the session.
  fixture f{session_settings{200ms, std::chrono::hours(1), 1s}};
  f.put_state("s1");
  REQUIRE(f.route("s1") == uint32_t{0});
  f.advance(200ms);
  CHECK(f.route("s1") == uint32_t{0}); // exactly the timeout: not yet idle *longer*
  f.advance(201ms);
  auto r = f.route("s1");
  REQUIRE_FALSE(r);
  CHECK(code_of(r.error()) == error_code::session_expired);
  CHECK(f.sessions_in_worker() == 0); // the worker was told to drop the state
}

TEST_CASE_METHOD(fixture, "the cleanup tick expires idle sessions and drops their state",
                 "[unit][affinity]") {
  put_state("s1");
  put_state("s2");
  REQUIRE(route("s1") == uint32_t{0});
  REQUIRE(route("s2") == uint32_t{0});
  CHECK(sessions_in_worker() == 2);
  advance(100ms);
  REQUIRE(route("s2") == uint32_t{0}); // s2 is used again, s1 is not
  advance(150ms);                      // t = 250: s1 idle 250 ms, s2 idle 150 ms
  auto st = stats();
  CHECK(st.sessions == 1);
  CHECK(st.expired == 1);
  CHECK(sessions_in_worker() == 1);
  auto r = route("s1");
  REQUIRE_FALSE(r);
  CHECK(code_of(r.error()) == error_code::session_expired);
}

TEST_CASE_METHOD(fixture, "a timeout changed at run time is obeyed at once", "[unit][affinity]") {
  REQUIRE(route("s1") == uint32_t{0});
  REQUIRE(route("s2") == uint32_t{0});
  advance(100ms);
  auto previous = ask<caf::timespan>(aff, configure_atom::value, caf::timespan{50ms});
  CHECK(previous == 200ms);
  CHECK(stats().sessions == 0); // both idle 100 ms > 50 ms
  REQUIRE(route("s3") == uint32_t{0});
  ask<caf::timespan>(aff, configure_atom::value, caf::timespan{10s});
  advance(5s);
  CHECK(route("s3") == uint32_t{0}); // the longer timeout holds too
}

TEST_CASE_METHOD(fixture, "an expired id is remembered, then is new again", "[unit][affinity]") {
  REQUIRE(route("s1") == uint32_t{0});
  advance(250ms);
  auto r = route("s1");
  REQUIRE_FALSE(r);
  CHECK(code_of(r.error()) == error_code::session_expired);
  advance(500ms);
  CHECK_FALSE(route("s1")); // still remembered (remember = 1 s)
  advance(600ms);
  CHECK(route("s1") == uint32_t{0}); // forgotten: a fresh session
  CHECK(stats().remembered == 0);
}

TEST_CASE_METHOD(fixture, "a session whose worker died is lost", "[unit][affinity]") {
  REQUIRE(route("s1") == uint32_t{0});
  self->send(aff, worker_down_atom::value, uint32_t{0});
  run();
  auto r = route("s1");
  REQUIRE_FALSE(r);
  CHECK(code_of(r.error()) == error_code::session_lost);
  // A replacement worker in the same slot does not bring the state back.
  self->send(aff, worker_up_atom::value, uint32_t{0}, uint32_t{2}, worker0);
  run();
  auto again = route("s1");
  REQUIRE_FALSE(again);
  CHECK(code_of(again.error()) == error_code::session_lost);
  // Ending it explicitly makes the id usable again, on the new incarnation.
  CHECK(ask<bool>(aff, end_session_atom::value, std::string{"s1"}));
  CHECK(route("s1") == uint32_t{0});
  CHECK(last_incarnation == 2);
}

TEST_CASE_METHOD(fixture, "a route names the incarnation that holds the state",
                 "[unit][affinity]") {
  REQUIRE(route("s1") == uint32_t{0});
  CHECK(last_incarnation == 1);
  // The owner is replaced between two routes the pool has not yet seen
  // answered: the second answer still names incarnation 1, so the pool can
  // tell that its current worker (incarnation 2) lacks the state.
  REQUIRE(route("s1") == uint32_t{0});
  CHECK(last_incarnation == 1);
}

TEST_CASE_METHOD(fixture, "ending a session drops its state", "[unit][affinity]") {
  put_state("s1");
  REQUIRE(route("s1") == uint32_t{0});
  CHECK(ask<bool>(aff, end_session_atom::value, std::string{"s1"}));
  CHECK(sessions_in_worker() == 0);
  CHECK_FALSE(ask<bool>(aff, end_session_atom::value, std::string{"never-seen"}));
}

TEST_CASE_METHOD(fixture, "a new session without a candidate stays unbound", "[unit][affinity]") {
  CHECK(route("s1", no_slot) == no_slot);
  CHECK(stats().sessions == 0);
}

namespace {

struct capped_fixture : fixture {
  capped_fixture() : fixture(session_settings{200ms, 50ms, 1s, 3, 256}) {
    // nop
  }
};

} // namespace

TEST_CASE_METHOD(capped_fixture, "sessions beyond max_sessions are refused as overloaded",
                 "[unit][affinity]") {
  for (auto id : {"a", "b", "c"})
    REQUIRE(route(id) == uint32_t{0});
  auto fourth = route("d");
  REQUIRE_FALSE(fourth);
  CHECK(code_of(fourth.error()) == error_code::overloaded);
  // Known sessions are still served, and ending one makes room.
  CHECK(route("a") == uint32_t{0});
  CHECK(ask<bool>(aff, end_session_atom::value, std::string{"b"}));
  CHECK(route("d") == uint32_t{0});
}

TEST_CASE_METHOD(capped_fixture, "remembered ids are capped too, the oldest forgotten first",
                 "[unit][affinity]") {
  for (auto id : {"a", "b", "c"})
    REQUIRE(route(id) == uint32_t{0});
  advance(300ms); // all three expire
  CHECK(stats().remembered == 3);
  for (auto id : {"d", "e"}) {
    REQUIRE(route(id) == uint32_t{0});
    advance(300ms);
  }
  // d and e expired later and pushed out the oldest two.
  CHECK(stats().remembered == 3);
  CHECK(route("a") == uint32_t{0}); // forgotten: new again
  CHECK(code_of(route("e").error()) == error_code::session_expired);
}

TEST_CASE_METHOD(fixture, "a session with a request running never expires: idle counts from its end",
                 "[unit][affinity]") {
  REQUIRE(route_only("s") == 0u); // its request runs ...
  advance(10s);                   // ... far past the timeout and many cleanups
  REQUIRE(route("s") == 0u);      // still its session (a second request, ended)
  self->send(aff, session_done_atom::value, std::string{"s"}); // the first ends
  run();
  CHECK(stats().expired == 0);
  advance(300ms); // the timeout is 200 ms
  CHECK_FALSE(route("s"));
  CHECK(stats().expired == 1);
}

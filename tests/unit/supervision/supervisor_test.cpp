// Unit tests of the OTP-style supervisor with plain CAF actors as children,
// on CAF's deterministic test coordinator (no sleeps, no Python).
#include <memory>
#include <stdexcept>

#include "support/test_coordinator_fixture.hpp"

#include "caf/event_based_actor.hpp"
#include "caf/exit_reason.hpp"
#include "caf/send.hpp"

using namespace pyvisor;
using namespace std::chrono_literals;

namespace {

using die_atom = caf::atom_constant<caf::atom("t_die")>;
using throw_atom = caf::atom_constant<caf::atom("t_throw")>;

enum class exit_kind { normal, shutdown, abnormal, killed };

const char* name_of(exit_kind k) {
  switch (k) {
    case exit_kind::normal:
      return "normal";
    case exit_kind::shutdown:
      return "shutdown";
    case exit_kind::abnormal:
      return "abnormal (exception)";
    default:
      return "killed";
  }
}

/// A child that dies on request; optionally records the order in which
/// children were asked to stop, and optionally ignores stop requests.
struct child_options {
  std::shared_ptr<std::vector<std::string>> stop_log;
  bool ignore_shutdown = false;
};

caf::behavior test_child(caf::event_based_actor* self, std::string id, child_options opts) {
  // Same exit reason as CAF's default handler, without its stderr report.
  self->set_exception_handler(
    [](std::exception_ptr&) -> caf::error { return caf::sec::runtime_error; });
  if (opts.stop_log || opts.ignore_shutdown)
    self->set_exit_handler([self, id, opts](caf::exit_msg& msg) {
      if (opts.stop_log)
        opts.stop_log->push_back(id);
      if (!opts.ignore_shutdown)
        self->quit(msg.reason);
    });
  return {
    [self](die_atom, caf::error& reason) { self->quit(reason); },
    [](throw_atom) { throw std::runtime_error("boom"); },
  };
}

child_spec spec(std::string id, restart_type rt = restart_type::permanent,
                child_options opts = {}, shutdown_spec sd = shutdown_spec::after(1s)) {
  child_spec result;
  result.id = id;
  result.restart = rt;
  result.shutdown = sd;
  result.start = [opts](caf::actor_system& sys, const std::string& child_id) {
    return sys.spawn(test_child, child_id, opts);
  };
  return result;
}

supervisor_flags flags(supervision_strategy s, size_t max_restarts = 10) {
  supervisor_flags result;
  result.strategy = s;
  result.max_restarts = max_restarts;
  result.period = 5s;
  result.backoff = backoff_policy::none();
  return result;
}

struct fixture : test::test_coordinator_fixture {
  std::vector<child_info> children(const supervisor_actor& sup) {
    return ask<std::vector<child_info>>(sup, which_children_atom::value);
  }

  supervisor_counts counts(const supervisor_actor& sup) {
    return ask<supervisor_counts>(sup, count_children_atom::value);
  }

  caf::actor handle_of(const supervisor_actor& sup, const std::string& id) {
    for (auto& c : children(sup))
      if (c.id == id)
        return c.handle;
    return caf::actor{};
  }

  bool has_child(const supervisor_actor& sup, const std::string& id) {
    for (auto& c : children(sup))
      if (c.id == id)
        return true;
    return false;
  }

  void make_exit(const caf::actor& child, exit_kind kind) {
    REQUIRE(child);
    switch (kind) {
      case exit_kind::normal:
        self->send(child, die_atom::value, caf::error{});
        break;
      case exit_kind::shutdown:
        self->send(child, die_atom::value, caf::error{caf::exit_reason::user_shutdown});
        break;
      case exit_kind::abnormal:
        self->send(child, throw_atom::value);
        break;
      case exit_kind::killed:
        caf::anon_send_exit(child, caf::exit_reason::kill);
        break;
    }
    run();
  }

  ~fixture() {
    // Leave nothing running for the actor system's destructor to wait for.
    for (auto& s : supervisors)
      caf::anon_send_exit(s, caf::exit_reason::kill);
    run();
  }

  supervisor_actor spawn_sup(supervisor_flags f, std::vector<child_spec> specs) {
    auto sup = spawn_supervisor(sys, std::move(f), std::move(specs));
    supervisors.push_back(sup);
    run();
    return sup;
  }

  std::vector<supervisor_actor> supervisors;
};

bool otp_restarts(restart_type rt, exit_kind kind) {
  // OTP: permanent always; transient unless normal or shutdown; temporary never.
  if (rt == restart_type::permanent)
    return true;
  if (rt == restart_type::transient)
    return kind == exit_kind::abnormal || kind == exit_kind::killed;
  return false;
}

} // namespace

TEST_CASE_METHOD(fixture, "strategy x restart type x exit kind behaves as OTP specifies",
                 "[unit][supervisor]") {
  auto strategy = GENERATE(supervision_strategy::one_for_one, supervision_strategy::one_for_all,
                           supervision_strategy::rest_for_one);
  auto rt = GENERATE(restart_type::permanent, restart_type::transient, restart_type::temporary);
  auto kind = GENERATE(exit_kind::normal, exit_kind::shutdown, exit_kind::abnormal,
                       exit_kind::killed);
  INFO("strategy " << to_string(strategy) << ", child b " << to_string(rt) << ", exit "
                   << name_of(kind));
  auto sup = spawn_sup(flags(strategy), {spec("a"), spec("b", rt), spec("c")});
  auto a0 = handle_of(sup, "a");
  auto b0 = handle_of(sup, "b");
  auto c0 = handle_of(sup, "c");
  REQUIRE((a0 && b0 && c0));
  make_exit(b0, kind);
  auto restarted = otp_restarts(rt, kind);
  auto b1 = handle_of(sup, "b");
  if (restarted) {
    CHECK(b1);
    CHECK(b1 != b0);
  } else {
    CHECK_FALSE(b1);
    // Temporary children are forgotten; transient ones stay, stopped.
    CHECK(has_child(sup, "b") == (rt != restart_type::temporary));
  }
  auto a1 = handle_of(sup, "a");
  auto c1 = handle_of(sup, "c");
  REQUIRE((a1 && c1));
  bool siblings_after = restarted && strategy != supervision_strategy::one_for_one;
  bool siblings_before = restarted && strategy == supervision_strategy::one_for_all;
  CHECK((c1 != c0) == siblings_after);
  CHECK((a1 != a0) == siblings_before);
  auto n = counts(sup);
  CHECK(n.restarts == (restarted ? 1u : 0u));
  CHECK(n.active == (restarted ? 3u : 2u));
}

TEST_CASE_METHOD(fixture, "one_for_all does not restart temporary siblings",
                 "[unit][supervisor]") {
  auto sup = spawn_sup(flags(supervision_strategy::one_for_all),
                       {spec("a"), spec("t", restart_type::temporary), spec("c")});
  make_exit(handle_of(sup, "a"), exit_kind::abnormal);
  CHECK(handle_of(sup, "a"));
  CHECK(handle_of(sup, "c"));
  CHECK_FALSE(has_child(sup, "t"));
}

TEST_CASE_METHOD(fixture, "simple_one_for_one starts, restarts and terminates dynamic children",
                 "[unit][supervisor]") {
  auto sup = spawn_sup(flags(supervision_strategy::simple_one_for_one),
                       {spec("template", restart_type::transient)});
  CHECK(children(sup).empty());
  auto w1 = ask<caf::actor>(sup, start_child_atom::value, std::string{"w1"});
  auto w2 = ask<caf::actor>(sup, start_child_atom::value, std::string{"w2"});
  CHECK(w1);
  CHECK(w2);
  CHECK(counts(sup).active == 2);
  SECTION("an abnormal exit restarts that child alone") {
    make_exit(w1, exit_kind::abnormal);
    auto w1b = handle_of(sup, "w1");
    CHECK(w1b);
    CHECK(w1b != w1);
    CHECK(handle_of(sup, "w2") == w2);
  }
  SECTION("a normal exit of a transient dynamic child forgets it") {
    make_exit(w1, exit_kind::normal);
    CHECK_FALSE(has_child(sup, "w1"));
  }
  SECTION("terminate_child stops and forgets the child") {
    watch(w2);
    CHECK(ask<bool>(sup, terminate_child_atom::value, std::string{"w2"}));
    CHECK(next_down());
    CHECK_FALSE(has_child(sup, "w2"));
    CHECK(counts(sup).restarts == 0);
  }
  SECTION("duplicate ids are refused") {
    self->send(sup, start_child_atom::value, std::string{"w1"});
    run();
    bool refused = false;
    self->receive([&](caf::actor&) {}, [&](caf::error& err) {
      refused = err.category() == supervisor_error_category;
    }, caf::after(0s) >> [] {});
    CHECK(refused);
  }
}

TEST_CASE_METHOD(fixture, "exceeding the restart intensity stops all children and escalates",
                 "[unit][supervisor]") {
  auto log = std::make_shared<std::vector<std::string>>();
  child_options opts{log, false};
  auto sup = spawn_sup(flags(supervision_strategy::one_for_one, 2),
                       {spec("a", restart_type::permanent, opts),
                        spec("b", restart_type::permanent, opts),
                        spec("c", restart_type::permanent, opts)});
  watch(sup);
  make_exit(handle_of(sup, "b"), exit_kind::abnormal);
  make_exit(handle_of(sup, "b"), exit_kind::abnormal);
  CHECK_FALSE(next_down()); // two restarts within the period: allowed
  make_exit(handle_of(sup, "b"), exit_kind::abnormal);
  auto reason = next_down();
  REQUIRE(reason);
  CHECK(reason->category() == supervisor_error_category);
  CHECK(reason->code() == static_cast<uint8_t>(supervisor_error::max_restart_intensity));
  // The remaining children were stopped in reverse start order.
  CHECK(*log == std::vector<std::string>{"c", "a"});
}

TEST_CASE_METHOD(fixture, "a proven child's exit does not count toward intensity",
                 "[unit][supervisor]") {
  auto f = flags(supervision_strategy::one_for_one, 1);
  f.backoff = backoff_policy{100ms, 2.0, 1s, 0.0, 1s};
  auto sup = spawn_sup(f, {spec("a")});
  watch(sup);
  for (auto kind : {exit_kind::abnormal, exit_kind::killed, exit_kind::abnormal,
                    exit_kind::abnormal}) {
    CAPTURE(name_of(kind));
    auto hdl = handle_of(sup, "a");
    self->send(sup, child_healthy_atom::value, std::string{"a"}, hdl);
    run();
    make_exit(hdl, kind);
    // Restarted at once (no back-off although it died right after its start).
    auto next = handle_of(sup, "a");
    REQUIRE(next);
    CHECK(next != hdl);
  }
  CHECK_FALSE(next_down());
  CHECK(counts(sup).forgiven == 4);
  // A mark for an incarnation that is gone changes nothing: two unproven
  // exits exceed an intensity of 1.
  auto old = handle_of(sup, "a");
  make_exit(old, exit_kind::abnormal);
  advance(100ms);
  self->send(sup, child_healthy_atom::value, std::string{"a"}, old);
  run();
  make_exit(handle_of(sup, "a"), exit_kind::abnormal);
  auto reason = next_down();
  REQUIRE(reason);
  CHECK(reason->code() == static_cast<uint8_t>(supervisor_error::max_restart_intensity));
}

TEST_CASE_METHOD(fixture, "restarts spread over more than the period never exhaust intensity",
                 "[unit][supervisor]") {
  auto sup = spawn_sup(flags(supervision_strategy::one_for_one, 2), {spec("a")});
  watch(sup);
  for (int i = 0; i < 6; ++i) {
    make_exit(handle_of(sup, "a"), exit_kind::abnormal);
    advance(3s);
  }
  CHECK_FALSE(next_down());
  CHECK(counts(sup).restarts == 6);
}

TEST_CASE_METHOD(fixture, "a nested supervisor that gives up is restarted by its parent",
                 "[unit][supervisor]") {
  child_spec inner;
  inner.id = "inner";
  inner.shutdown = shutdown_spec::after(10s);
  inner.start = [](caf::actor_system& sys, const std::string&) {
    return caf::actor_cast<caf::actor>(
      spawn_supervisor(sys, flags(supervision_strategy::one_for_one, 1), {spec("leaf")}));
  };
  auto outer = spawn_sup(flags(supervision_strategy::one_for_one, 1), {inner});
  auto inner0 = caf::actor_cast<supervisor_actor>(handle_of(outer, "inner"));
  REQUIRE(inner0);
  watch(outer);
  // Two leaf crashes exceed the inner intensity (1): inner gives up.
  make_exit(handle_of(inner0, "leaf"), exit_kind::abnormal);
  make_exit(handle_of(inner0, "leaf"), exit_kind::abnormal);
  auto inner1 = caf::actor_cast<supervisor_actor>(handle_of(outer, "inner"));
  REQUIRE(inner1);
  CHECK(inner1 != inner0);
  CHECK(counts(outer).restarts == 1);
  CHECK(handle_of(inner1, "leaf"));
  // Doing it again exceeds the outer intensity too: escalation to the top.
  make_exit(handle_of(inner1, "leaf"), exit_kind::abnormal);
  make_exit(handle_of(inner1, "leaf"), exit_kind::abnormal);
  auto reason = next_down();
  REQUIRE(reason);
  CHECK(reason->category() == supervisor_error_category);
}

TEST_CASE_METHOD(fixture, "shutdown stops children in reverse start order", "[unit][supervisor]") {
  auto log = std::make_shared<std::vector<std::string>>();
  child_options opts{log, false};
  auto sup = spawn_sup(flags(supervision_strategy::one_for_one),
                       {spec("a", restart_type::permanent, opts),
                        spec("b", restart_type::permanent, opts),
                        spec("c", restart_type::permanent, opts)});
  watch(sup);
  self->send_exit(sup, caf::exit_reason::user_shutdown);
  run();
  auto reason = next_down();
  REQUIRE(reason);
  CHECK(*reason == caf::exit_reason::user_shutdown);
  CHECK(*log == std::vector<std::string>{"c", "b", "a"});
}

TEST_CASE_METHOD(fixture, "a child that ignores shutdown is killed after its timeout",
                 "[unit][supervisor]") {
  child_options stubborn{nullptr, true};
  auto sup = spawn_sup(flags(supervision_strategy::one_for_one),
                       {spec("a", restart_type::permanent, stubborn, shutdown_spec::after(2s))});
  auto a = handle_of(sup, "a");
  watch(sup);
  watch(a);
  self->send_exit(sup, caf::exit_reason::user_shutdown);
  run();
  CHECK_FALSE(next_down()); // still waiting for the child
  advance(1999ms);
  CHECK_FALSE(next_down());
  advance(1ms);
  auto first = next_down();
  auto second = next_down();
  REQUIRE(first);
  REQUIRE(second);
  // The child went down killed, then the supervisor with its own reason.
  CHECK(*first == caf::exit_reason::kill);
  CHECK(*second == caf::exit_reason::user_shutdown);
}

TEST_CASE_METHOD(fixture, "simple_one_for_one children stop concurrently on shutdown",
                 "[unit][supervisor]") {
  // Three stubborn dynamic children with a 2 s shutdown timeout each: as in
  // OTP they are all told at once, so the supervisor is down after 2 s, not 6.
  child_options stubborn{nullptr, true};
  auto sup = spawn_sup(flags(supervision_strategy::simple_one_for_one),
                       {spec("template", restart_type::permanent, stubborn,
                             shutdown_spec::after(2s))});
  for (auto id : {"w1", "w2", "w3"})
    ask<caf::actor>(sup, start_child_atom::value, std::string{id});
  watch(sup);
  self->send_exit(sup, caf::exit_reason::user_shutdown);
  run();
  advance(1999ms);
  CHECK_FALSE(next_down());
  advance(1ms);
  auto down = next_down();
  REQUIRE(down);
  CHECK(*down == caf::exit_reason::user_shutdown);
}

TEST_CASE_METHOD(fixture, "brutal_kill stops a child at once", "[unit][supervisor]") {
  child_options stubborn{nullptr, true};
  auto sup = spawn_sup(flags(supervision_strategy::one_for_one),
                       {spec("a", restart_type::permanent, stubborn, shutdown_spec::brutal())});
  watch(sup);
  self->send_exit(sup, caf::exit_reason::user_shutdown);
  run();
  CHECK(next_down());
}

TEST_CASE_METHOD(fixture, "a killed supervisor takes its children with it", "[unit][supervisor]") {
  auto sup = spawn_sup(flags(supervision_strategy::one_for_one), {spec("a"), spec("b")});
  auto a = handle_of(sup, "a");
  auto b = handle_of(sup, "b");
  watch(a);
  watch(b);
  caf::anon_send_exit(sup, caf::exit_reason::kill);
  run();
  CHECK(next_down());
  CHECK(next_down());
}

TEST_CASE("back-off delays grow, cap and jitter as specified", "[unit][supervisor]") {
  backoff_policy p{100ms, 2.0, 1s, 0.0, 10s};
  CHECK(p.delay(1, 0.0) == 100ms);
  CHECK(p.delay(2, 0.0) == 200ms);
  CHECK(p.delay(3, 0.0) == 400ms);
  CHECK(p.delay(4, 0.0) == 800ms);
  CHECK(p.delay(5, 0.0) == 1s);
  CHECK(p.delay(50, 0.0) == 1s);
  p.jitter = 0.25;
  CHECK(p.delay(1, -1.0) == 75ms);
  CHECK(p.delay(1, 1.0) == 125ms);
  CHECK(backoff_policy::none().delay(3, 0.5) == caf::timespan{0});
}

TEST_CASE_METHOD(fixture, "a restart waits for its back-off delay", "[unit][supervisor]") {
  auto f = flags(supervision_strategy::one_for_one);
  f.backoff = backoff_policy{100ms, 2.0, 1s, 0.0, 10s};
  auto sup = spawn_sup(f, {spec("a")});
  make_exit(handle_of(sup, "a"), exit_kind::abnormal);
  CHECK_FALSE(handle_of(sup, "a"));
  CHECK(counts(sup).restarting == 1);
  advance(99ms);
  CHECK_FALSE(handle_of(sup, "a"));
  advance(1ms);
  CHECK(handle_of(sup, "a"));
  // Second failure in a row: twice the delay.
  make_exit(handle_of(sup, "a"), exit_kind::abnormal);
  advance(199ms);
  CHECK_FALSE(handle_of(sup, "a"));
  advance(1ms);
  CHECK(handle_of(sup, "a"));
  // A child that ran longer than reset_after is restarted at once...
  advance(11s);
  make_exit(handle_of(sup, "a"), exit_kind::abnormal);
  CHECK(handle_of(sup, "a"));
  // ...and a quick death after that starts the back-off over at its initial delay.
  make_exit(handle_of(sup, "a"), exit_kind::abnormal);
  advance(99ms);
  CHECK_FALSE(handle_of(sup, "a"));
  advance(1ms);
  CHECK(handle_of(sup, "a"));
}

TEST_CASE_METHOD(fixture, "a start function that fails counts against the intensity",
                 "[unit][supervisor]") {
  child_spec broken;
  broken.id = "broken";
  broken.start = [](caf::actor_system&, const std::string&) { return caf::actor{}; };
  auto sup = spawn_supervisor(sys, flags(supervision_strategy::one_for_one, 3), {broken});
  supervisors.push_back(sup);
  watch(sup);
  run();
  auto reason = next_down();
  REQUIRE(reason);
  CHECK(reason->code() == static_cast<uint8_t>(supervisor_error::max_restart_intensity));
}

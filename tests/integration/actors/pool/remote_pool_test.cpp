// The pool as CAF applications on other nodes see it (issue #10): published
// through the middleman on 127.0.0.1 and reached with remote_actor from a
// second actor system, a pool that gives up answers `unavailable` (never
// request_receiver_down) and serves again after its restart. Mock workers:
// what is tested is the path through the middleman, not Python.
#include <thread>

#include "support/catch_caf.hpp"

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/io/middleman.hpp"
#include "caf/scoped_actor.hpp"

#include "pyvisor/pool.hpp"

using namespace pyvisor;
using namespace std::chrono_literals;

namespace {

struct node_config : caf::actor_system_config {
  node_config() {
    add_pool_types(*this);
    load<caf::io::middleman>();
    set("scheduler.max-threads", 2);
    set("logger.verbosity", caf::atom("quiet"));
  }
};

caf::expected<payload> call(caf::scoped_actor& self, const pool_actor& pool, execute req) {
  caf::expected<payload> result{caf::error{}};
  self->request(pool, 10s, std::move(req))
    .receive([&](payload& p) { result = std::move(p); },
             [&](caf::error& err) { result = std::move(err); });
  return result;
}

pool_stats stats(caf::scoped_actor& self, const pool_actor& pool) {
  pool_stats result;
  self->request(pool, 10s, status_atom::value)
    .receive([&](pool_stats& st) { result = std::move(st); },
             [&](caf::error& err) { FAIL("stats failed: " << to_string_readable(err)); });
  return result;
}

} // namespace

TEST_CASE("a published pool that gives up answers unavailable to remote callers",
          "[integration][pool][keeper][remote]") {
  node_config server_cfg;
  caf::actor_system server{server_cfg};
  pool_config pc;
  pc.size = 2;
  pc.backend = backend_kind::mock;
  pc.max_restarts = 0;
  // The crash below must count: a worker that answered a request and stayed
  // up for healthy_after would be proven and its death forgiven, and over a
  // remote connection (slower still under sanitizers) the crash can arrive
  // later than the default 50 ms. Whether proving works is a unit test's job.
  pc.healthy_after = std::chrono::hours(1);
  pc.backoff = backoff_policy::none();
  // The checks below run while the pool restarts: a handful of remote round
  // trips, which a loaded sanitizer run can stretch past a few hundred ms,
  // so the window is seconds wide (the wait for it to end is bounded below).
  pc.restart.backoff = backoff_policy{2s, 2.0, 4s, 0.0, 60s};
  auto pool = spawn_pool(server, pc);
  // Stops the pool however the test ends: a failed REQUIRE would otherwise
  // leave it running and the server's actor system would wait for it forever.
  std::shared_ptr<void> stop_pool{nullptr, [pool](void*) {
                                    caf::anon_send_exit(pool, caf::exit_reason::user_shutdown);
                                  }};
  {
    caf::scoped_actor self{server};
    self->request(pool, 10s, ready_atom::value)
      .receive([](pool_stats&) {}, [](caf::error& err) { FAIL(to_string_readable(err)); });
  }
  auto port = server.middleman().publish(pool, 0, "127.0.0.1");
  REQUIRE(port);

  node_config client_cfg;
  caf::actor_system client{client_cfg};
  auto remote = client.middleman().remote_actor<pool_actor>("127.0.0.1", *port);
  REQUIRE(remote);
  caf::scoped_actor self{client};
  auto ok = call(self, *remote, make_execute("echo", 1));
  REQUIRE(ok);
  // An unproven crash exceeds an intensity of 0: the pool gives up.
  auto crashed = call(self, *remote, make_execute("crash"));
  REQUIRE(!crashed);
  CHECK(code_of(crashed.error()) == error_code::worker_crashed);
  // The caller hears of the crash before the supervisor has counted it: the
  // pool gives up a moment later (meanwhile the other worker may serve).
  auto t_crash = std::chrono::steady_clock::now();
  auto seen = stats(self, *remote);
  while (seen.state != pool_state::restarting
         && std::chrono::steady_clock::now() - t_crash < 5s) {
    std::this_thread::sleep_for(1ms);
    seen = stats(self, *remote);
  }
  INFO("waited " << std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - t_crash).count()
                 << " ms; state " << to_string(seen.state) << ", pool restarts "
                 << seen.pool_restarts << ", worker restarts " << seen.restarts);
  auto during = call(self, *remote, make_execute("echo", 2));
  INFO("then: " << (during ? std::string{"served"} : to_string_readable(during.error()))
                << "; state " << to_string(stats(self, *remote).state));
  REQUIRE(!during);
  CHECK(code_of(during.error()) == error_code::unavailable);
  CHECK(during.error().category() == error_category); // a pyvisor error, not CAF's
  CHECK(stats(self, *remote).state == pool_state::restarting);
  bool healthy = true;
  self->request(*remote, 10s, health_atom::value)
    .receive([&](bool) {}, [&](caf::error& err) {
      healthy = false;
      CHECK(code_of(err) == error_code::unavailable);
    });
  CHECK(!healthy);
  // Back after the back-off, through the same remote handle.
  auto t0 = std::chrono::steady_clock::now();
  caf::expected<payload> again{caf::error{}};
  while (std::chrono::steady_clock::now() - t0 < 10s) {
    again = call(self, *remote, make_execute("echo", 3));
    if (again)
      break;
    CHECK(code_of(again.error()) == error_code::unavailable);
    std::this_thread::sleep_for(20ms);
  }
  REQUIRE(again);
  CHECK(unpack<int>(*again) == 3);
  CHECK(stats(self, *remote).pool_restarts == 1);
}

// Unit tests of the cluster front (issue #16): dispatch by load against
// capacity, sessions bound to nodes, node loss handled like worker loss,
// silence detected by the heartbeat, reconnection with back-off. Nodes are
// mock-backend pools behind client endpoints (or a scripted node), reached
// through a fake connector instead of the middleman; everything runs on the
// deterministic test coordinator.
#include "support/test_coordinator_fixture.hpp"

#include <map>
#include <memory>
#include <set>

#include "caf/event_based_actor.hpp"
#include "caf/send.hpp"
#include "caf/stateful_actor.hpp"

#include "pyvisor/client_endpoint.hpp"
#include "pyvisor/cluster.hpp"

using namespace pyvisor;
using namespace std::chrono_literals;

namespace {

/// What the fake network answers: the actor published on each port, and
/// the ports that refuse connections.
struct fake_network {
  std::map<uint16_t, caf::actor> published;
  std::set<uint16_t> refusing;
  /// Ports whose actor has another interface (an old node publishing its pool).
  std::set<uint16_t> other_interface;
};

caf::behavior fake_connector(caf::event_based_actor* self, std::shared_ptr<fake_network> net) {
  return {
    [=](caf::connect_atom, std::string&, uint16_t port)
      -> caf::result<caf::node_id, caf::strong_actor_ptr, std::set<std::string>> {
      auto i = net->published.find(port);
      if (i == net->published.end() || net->refusing.count(port) > 0)
        return caf::make_error(caf::sec::cannot_connect_to_node);
      auto ifs = net->other_interface.count(port) > 0 ? self->system().message_types<pool_actor>()
                                                      : self->system().message_types<client_actor>();
      // A node of its own for each port, as a real peer has (the front
      // refuses a peer whose node is its own: itself).
      caf::node_id::default_data::host_id_type host{};
      host[0] = static_cast<uint8_t>(port >> 8);
      host[1] = static_cast<uint8_t>(port);
      return {caf::make_node_id(port, host), caf::actor_cast<caf::strong_actor_ptr>(i->second),
              ifs};
    },
  };
}

using mute_atom = caf::atom_constant<caf::atom("t_mute")>;

struct scripted_state {
  bool muted = false;
  /// Requests it holds without answering (while muted).
  std::vector<caf::response_promise> held;
};

/// A node that answers like a serving one-worker pool until muted, then
/// answers nothing at all (a stopped process behind an open connection).
caf::behavior scripted_node(caf::stateful_actor<scripted_state>* self) {
  auto hold = [self]() -> bool {
    if (!self->state.muted)
      return false;
    self->state.held.push_back(self->make_response_promise());
    return true;
  };
  return {
    [=](execute& x) -> caf::result<payload> {
      if (hold())
        return caf::delegated<payload>{};
      return x.args;
    },
    [=](status_atom) -> caf::result<pool_stats> {
      if (hold())
        return caf::delegated<pool_stats>{};
      pool_stats st;
      st.state = pool_state::serving;
      st.capacity = 4;
      st.workers.push_back(worker_stats{1, 0, worker_phase::ready, 0, 0, 0, 0});
      return st;
    },
    [=](end_session_atom, std::string&) { return true; },
    [=](mute_atom) { self->state.muted = true; },
  };
}

pool_config mock_pool(size_t workers) {
  pool_config cfg;
  cfg.size = workers;
  cfg.backend = backend_kind::mock;
  cfg.backoff = backoff_policy::none();
  return cfg;
}

struct kv {
  std::string key;
  int value;
  MSGPACK_DEFINE_MAP(key, value);
};

struct key_only {
  std::string key;
  MSGPACK_DEFINE_MAP(key);
};

execute sleeping(int ms, bool idempotent = false, std::string session = {}) {
  auto x = make_execute("sleep", std::map<std::string, int>{{"ms", ms}}, std::move(session));
  x.idempotent = idempotent;
  return x;
}

struct fixture : test::test_coordinator_fixture {
  std::shared_ptr<fake_network> net = std::make_shared<fake_network>();
  caf::actor connector;
  std::vector<pool_actor> pools;
  pool_actor front;

  fixture() {
    add_cluster_types(cfg);
    connector = sys.spawn(fake_connector, net);
  }

  ~fixture() {
    if (front)
      caf::anon_send_exit(front, caf::exit_reason::kill);
    for (auto& p : pools)
      caf::anon_send_exit(p, caf::exit_reason::kill);
    for (auto& [port, hdl] : net->published)
      self->send_exit(hdl, caf::exit_reason::kill);
    caf::anon_send_exit(connector, caf::exit_reason::kill);
    run();
  }

  /// A mock pool of `workers` published on `port` behind a client endpoint.
  void add_node(uint16_t port, size_t workers) {
    auto pool = spawn_pool(sys, mock_pool(workers));
    run();
    ask<pool_stats>(pool, ready_atom::value);
    pools.push_back(pool);
    net->published[port] = caf::actor_cast<caf::actor>(spawn_client_endpoint(sys, pool));
  }

  cluster_config config(std::vector<uint16_t> ports) {
    cluster_config cc;
    for (auto p : ports)
      cc.peers.push_back("node:" + std::to_string(p));
    cc.connector = caf::actor_cast<caf::io::middleman_actor>(connector);
    cc.heartbeat = 1s;
    cc.node_timeout = 3s;
    cc.reconnect = backoff_policy{200ms, 2.0, 2s, 0.0, 30s};
    return cc;
  }

  void start(cluster_config cc) {
    front = spawn_cluster(sys, std::move(cc));
    run();
  }

  pool_stats stats() {
    return ask<pool_stats>(front, status_atom::value);
  }

  node_stats node(size_t i) {
    auto st = stats();
    REQUIRE(st.nodes.size() > i);
    return st.nodes[i];
  }

  /// Sends `x` from `who` (a caller of its own, so that replies stay apart).
  void send_from(caf::scoped_actor& who, execute x) {
    who->send(front, std::move(x));
    run();
  }

  caf::expected<payload> call(execute x) {
    send_from(self, std::move(x));
    return next_reply();
  }

  /// Kills the endpoint published on `port`: to the front, the node's
  /// connection closed.
  void kill_node(uint16_t port) {
    // Not anonymous: an endpoint ignores exit messages that no actor of its
    // process sent.
    self->send_exit(net->published[port], caf::exit_reason::kill);
    net->published.erase(port);
    run();
  }
};

error_code code(const caf::expected<payload>& r) {
  return r ? error_code::none : code_of(r.error());
}

} // namespace

TEST_CASE("parse_peer takes host:port and [v6]:port", "[unit][cluster]") {
  std::string host;
  uint16_t port = 0;
  CHECK(parse_peer("10.0.0.2:7410", host, port));
  CHECK((host == "10.0.0.2" && port == 7410));
  CHECK(parse_peer("[::1]:80", host, port));
  CHECK((host == "::1" && port == 80));
  for (auto bad : {"10.0.0.2", "host:", ":7410", "host:0", "host:65536", "host:7x", "::1:80",
                   "[::1]80"})
    CHECK_FALSE(parse_peer(bad, host, port));
}

TEST_CASE_METHOD(fixture, "requests go to the node least loaded against its capacity",
                 "[unit][cluster]") {
  add_node(7001, 1); // capacity 4
  add_node(7002, 3); // capacity 12
  start(config({7001, 7002}));
  auto ready = ask<pool_stats>(front, ready_atom::value);
  CHECK(ready.capacity == 16);
  REQUIRE(ready.nodes.size() == 2);
  CHECK(ready.nodes[0].state == node_state::up);
  CHECK(ready.nodes[1].state == node_state::up);
  // Eight requests that stay in flight: 1:3 as the capacities are (round
  // robin would give 4:4).
  for (int i = 0; i < 8; ++i)
    self->send(front, sleeping(1000));
  run();
  CHECK(node(0).in_flight == 2);
  CHECK(node(1).in_flight == 6);
  advance(1s);
  for (int i = 0; i < 8; ++i)
    CHECK(next_reply());
  auto st = stats();
  CHECK(st.nodes[0].served == 2);
  CHECK(st.nodes[1].served == 6);
  CHECK(st.replies["ok"] == 8);
  CHECK(st.workers.size() == 4);
}

TEST_CASE_METHOD(fixture, "a session stays on the node it was bound to", "[unit][cluster]") {
  add_node(7001, 1);
  add_node(7002, 1);
  start(config({7001, 7002}));
  ask<pool_stats>(front, ready_atom::value);
  REQUIRE(call(make_execute("session.put", kv{"k", 42}, "s1")));
  // Both nodes equally idle: without the binding, requests would alternate.
  for (int i = 0; i < 4; ++i) {
    auto r = call(make_execute("session.get", key_only{"k"}, "s1"));
    REQUIRE(r);
    CHECK(unpack<int>(*r) == 42);
  }
  auto st = stats();
  CHECK(st.sessions == 1);
  CHECK(st.nodes[0].served + st.nodes[1].served == 5);
  CHECK((st.nodes[0].served == 5 || st.nodes[1].served == 5));
  // Ended through the front, on its node.
  CHECK(ask<bool>(front, end_session_atom::value, std::string{"s1"}));
  CHECK(stats().sessions == 0);
}

TEST_CASE_METHOD(fixture, "a lost node's requests are retried or failed, its sessions lost",
                 "[unit][cluster]") {
  add_node(7001, 1);
  add_node(7002, 1);
  net->refusing.insert(7002); // B joins later: everything goes to A first
  start(config({7001, 7002}));
  ask<pool_stats>(front, ready_atom::value);
  CHECK(node(1).state == node_state::lost);
  caf::scoped_actor idem{sys};
  caf::scoped_actor plain{sys};
  caf::scoped_actor session{sys};
  send_from(idem, sleeping(500, true));
  send_from(plain, sleeping(500, false));
  send_from(session, sleeping(500, true, "s1"));
  CHECK(node(0).in_flight == 3);
  // B comes up (after its reconnect back-off), then A goes down.
  net->refusing.clear();
  advance(200ms);
  REQUIRE(node(1).state == node_state::up);
  kill_node(7001);
  CHECK(node(0).state == node_state::lost);
  CHECK(code(next_reply(plain)) == error_code::worker_crashed);
  CHECK(code(next_reply(session)) == error_code::session_lost);
  // The idempotent one runs again on B.
  CHECK(code(next_reply(idem)) == error_code::timeout); // (nothing yet)
  CHECK(node(1).in_flight == 1);
  advance(500ms);
  CHECK(code(next_reply(idem)) == error_code::none);
  // The session's state went with A: it stays lost, it does not restart on B.
  CHECK(code(call(make_execute("echo", 1, "s1"))) == error_code::session_lost);
  auto st = stats();
  CHECK(st.retries >= 1);
  CHECK(st.replies["worker_crashed"] == 1);
  CHECK(st.replies["session_lost"] == 2);
  // Stateless requests go on over B.
  CHECK(call(make_execute("echo", 2)));
}

TEST_CASE_METHOD(fixture, "a lost node rejoins after its back-off and gets work again",
                 "[unit][cluster]") {
  add_node(7001, 1);
  add_node(7002, 1);
  start(config({7001, 7002}));
  ask<pool_stats>(front, ready_atom::value);
  kill_node(7002);
  CHECK(node(1).state == node_state::lost);
  // Reconnection fails while nothing is published there, backing off.
  advance(200ms);
  CHECK(node(1).state == node_state::lost);
  add_node(7002, 1);
  advance(400ms); // the second attempt, 2 x 200 ms after the first
  auto n = node(1);
  CHECK(n.state == node_state::up);
  CHECK(n.restarts == 1);
  for (int i = 0; i < 8; ++i)
    self->send(front, sleeping(100));
  run();
  CHECK(node(1).in_flight == 4);
  advance(100ms);
  for (int i = 0; i < 8; ++i)
    CHECK(next_reply());
}

TEST_CASE_METHOD(fixture, "a silent node is lost within heartbeat plus node_timeout",
                 "[unit][cluster]") {
  auto quiet = sys.spawn(scripted_node);
  net->published[7001] = quiet;
  start(config({7001}));
  ask<pool_stats>(front, ready_atom::value);
  CHECK(ask<bool>(front, health_atom::value));
  caf::anon_send(quiet, mute_atom::value);
  run();
  caf::scoped_actor caller{sys};
  send_from(caller, make_execute("echo", 1));
  CHECK(code(next_reply(caller)) == error_code::timeout); // held: nothing yet
  advance(1s);  // the heartbeat goes out and is not answered...
  advance(2900ms);
  CHECK(node(0).state == node_state::up);
  advance(100ms); // ...for node_timeout
  CHECK(node(0).state == node_state::lost);
  CHECK(code(next_reply(caller)) == error_code::worker_crashed);
  // With no node left: unavailable at once, never a hang.
  CHECK(code(call(make_execute("echo", 2))) == error_code::unavailable);
  self->send(front, health_atom::value);
  run();
  bool unavailable = false;
  self->receive([](bool) {},
                [&](caf::error& err) { unavailable = code_of(err) == error_code::unavailable; },
                caf::after(0s) >> [] {});
  CHECK(unavailable);
}

TEST_CASE_METHOD(fixture, "a front whose nodes are all away answers ready with unavailable",
                 "[unit][cluster]") {
  start(config({7001, 7002}));
  self->send(front, ready_atom::value);
  run();
  bool unavailable = false;
  self->receive([](pool_stats&) {},
                [&](caf::error& err) { unavailable = code_of(err) == error_code::unavailable; },
                caf::after(0s) >> [] {});
  CHECK(unavailable);
  CHECK(stats().state == pool_state::restarting);
  CHECK(code(call(make_execute("echo", 1))) == error_code::unavailable);
}

TEST_CASE_METHOD(fixture, "a front over pools of its own process needs no network",
                 "[unit][cluster]") {
  cluster_config cc;
  for (int i = 0; i < 2; ++i) {
    auto pool = spawn_pool(sys, mock_pool(1));
    run();
    pools.push_back(pool);
    cc.pools.push_back(pool);
  }
  start(std::move(cc));
  auto ready = ask<pool_stats>(front, ready_atom::value);
  CHECK(ready.nodes.size() == 2);
  CHECK(ready.nodes[0].peer == "local:1");
  REQUIRE(call(make_execute("echo", 3)));
  // configure_atom reaches the local pools (the front has no remote peers).
  CHECK(ask<caf::timespan>(front, configure_atom::value, caf::timespan{1min}) == 5min);
}

TEST_CASE_METHOD(fixture, "a peer with another interface is not used, and retried like a lost one",
                 "[unit][cluster]") {
  add_node(7001, 1);
  net->other_interface.insert(7001);
  start(config({7001}));
  self->send(front, ready_atom::value);
  run();
  CHECK(code(next_reply()) == error_code::unavailable);
  CHECK(node(0).state == node_state::lost);
  CHECK(stats().last_failure.find("another interface") != std::string::npos);
  advance(200ms); // the second attempt: still the wrong interface, lost again
  CHECK(node(0).state == node_state::lost);
  // Upgraded: the third attempt (400 ms later) finds the endpoint.
  net->other_interface.clear();
  advance(400ms);
  CHECK(node(0).state == node_state::up);
  CHECK(call(make_execute("echo", 1)));
}

TEST_CASE_METHOD(fixture, "a cancel reaches the node that runs the request", "[unit][cluster]") {
  add_node(7001, 1);
  start(config({7001}));
  ask<pool_stats>(front, ready_atom::value);
  auto slow = sleeping(5000);
  slow.tag = 42;
  self->send(front, slow);
  run();
  CHECK(node(0).in_flight == 1);
  self->send(front, cancel_atom::value, uint64_t{41}); // another tag: nothing
  run();
  CHECK(node(0).in_flight == 1);
  self->send(front, cancel_atom::value, uint64_t{42});
  run();
  auto r = next_reply();
  REQUIRE_FALSE(r);
  CHECK(code_of(r.error()) == error_code::cancelled);
  // On the node too: its worker is free at once (the mock stops at its
  // latency, 0 here), not after the 5 s sleep.
  advance(1ms);
  auto pool_side = ask<pool_stats>(pools[0], status_atom::value);
  CHECK(pool_side.workers.front().in_flight == 0);
  CHECK(pool_side.replies.at("cancelled") == 1);
}

TEST_CASE_METHOD(fixture, "a vanished caller's requests are cancelled on their nodes",
                 "[unit][cluster]") {
  add_node(7001, 1);
  start(config({7001}));
  ask<pool_stats>(front, ready_atom::value);
  auto f = front;
  auto caller = sys.spawn([f](caf::event_based_actor* self) {
    self->request(f, caf::infinite, sleeping(5000)).then([](payload&) {}, [](caf::error&) {});
  });
  run();
  CHECK(node(0).in_flight == 1);
  caf::anon_send_exit(caller, caf::exit_reason::kill);
  run();
  advance(1ms);
  CHECK(node(0).in_flight == 0);
  auto pool_side = ask<pool_stats>(pools[0], status_atom::value);
  CHECK(pool_side.workers.front().in_flight == 0);
}

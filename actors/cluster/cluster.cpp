#include "actors/cluster/cluster.hpp"

#include <algorithm>
#include <limits>
#include <random>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/exit_reason.hpp"
#include "caf/io/middleman.hpp"
#include "caf/openssl/manager.hpp"
#include "caf/sec.hpp"
#include "caf/send.hpp"
#include "caf/stateful_actor.hpp"
#include "caf/typed_event_based_actor.hpp"

#include "actors/cluster/client_endpoint.hpp"
#include "actors/pool/expiring_index.hpp"
#include "actors/pool/outcome_counts.hpp"
#include "actors/pool/pool_counters.hpp"
#include "actors/sweep_timer.hpp"
#include "messages/log.hpp"

namespace pyvisor {

namespace {

using heartbeat_atom = caf::atom_constant<caf::atom("cl_beat")>;
using reconnect_atom = caf::atom_constant<caf::atom("cl_reconn")>;

using cluster_impl = pool_actor::extend<caf::reacts_to<heartbeat_atom>,
                                        caf::reacts_to<reconnect_atom, uint32_t, uint64_t>,
                                        caf::reacts_to<sweep_atom>,
                                        caf::reacts_to<chunk_atom, uint64_t, payload>>;

constexpr uint32_t no_node = std::numeric_limits<uint32_t>::max();

struct node_rec {
  /// As the user wrote it ("host:port"), or "local:N".
  std::string peer;
  std::string host;
  uint16_t port = 0;
  /// The peer turned out to be this process's own published port: its
  /// workers are counted once, as the local pool's; never reconnected.
  bool itself = false;
  /// A pool of this process: never reconnected (its owner stops it).
  pool_actor local;
  client_actor hdl;
  node_state state = node_state::connecting;
  /// Bumped at each loss: replies and bindings of an older one are stale.
  uint64_t gen = 0;
  /// Its first connection attempt has resolved (ready_atom waits for all).
  bool tried = false;
  bool ever_up = false;
  bool beat_pending = false;
  /// This front's requests there now, and when the last heartbeat left.
  uint64_t in_flight = 0;
  uint64_t in_flight_at_beat = 0;
  /// Others' requests there (in flight and queued), when it last answered.
  uint64_t external = 0;
  uint64_t capacity = 0;
  uint64_t served = 0;
  uint64_t restarts = 0;
  /// Connection attempts that failed in a row (the reconnect back-off).
  size_t failures = 0;
  caf::actor_clock::time_point up_since;
  pool_stats last;
};

struct pending_req {
  caf::typed_response_promise<payload> rp;
  execute req;
  caf::actor_clock::time_point deadline;
  uint32_t node = no_node;
  uint64_t gen = 0;
  /// Nodes this request was sent to (bit i: node i, for i < 64).
  uint64_t tried = 0;
  /// It created its session's binding: it may move while nothing ran.
  bool fresh_binding = false;
  /// Who asked, and its tag (execute::tag): what a cancel names. On the
  /// nodes the front is the requester, and the request's tag is its id here.
  caf::actor_addr caller;
  uint64_t caller_tag = 0;
  /// A stream's chunks passed on to its caller: once one was, it is not
  /// run again elsewhere (the caller saw output).
  uint64_t chunks = 0;
};

struct binding {
  uint32_t node = no_node;
  uint64_t gen = 0;
  bool lost = false;
};

struct cluster_state {
  cluster_config cfg;
  std::vector<node_rec> nodes;
  std::unordered_map<uint64_t, pending_req> pending;
  uint64_t next_id = 0;
  expiring_index<binding> sessions;
  outcome_counts replies{};
  /// The answers this front made itself (no node's reply: a node lost,
  /// none up, a deadline, a cancel), per command: the nodes' stats cannot
  /// hold them, so they are added to the commands of this front's stats.
  pool_counters own;
  uint64_t retries = 0;
  std::vector<caf::typed_response_promise<pool_stats>> ready_waiters;
  sweep_timer sweep;
  std::minstd_rand rng{0xc1a5};
  uint32_t rotate = 0;
  std::string last_failure;
  /// Callers monitored until they go down: a vanished caller's requests
  /// are cancelled on their nodes.
  std::unordered_set<caf::actor_addr> callers;

  static inline const char* name = "pyvisor.cluster";
};

using self_ptr = cluster_impl::stateful_pointer<cluster_state>;

int64_t stamp_of(caf::actor_clock::time_point t) {
  return t.time_since_epoch().count();
}

uint64_t bit(uint32_t n) {
  return n < 64 ? uint64_t{1} << n : 0;
}

bool can_take(const node_rec& n) {
  return n.state == node_state::up && n.capacity > 0;
}

/// The node with the least load against its capacity among those that can
/// take work and are not in `exclude`; equal loads take turns (`advance`).
uint32_t pick(self_ptr self, uint64_t exclude, bool advance = true) {
  auto& st = self->state;
  auto count = static_cast<uint32_t>(st.nodes.size());
  uint32_t best = no_node;
  double best_load = 0;
  for (uint32_t k = 0; k < count; ++k) {
    auto i = (st.rotate + k) % count;
    auto& n = st.nodes[i];
    if (!can_take(n) || (exclude & bit(i)) != 0)
      continue;
    auto load = static_cast<double>(n.in_flight + n.external) / static_cast<double>(n.capacity);
    if (best == no_node || load < best_load) {
      best = i;
      best_load = load;
    }
  }
  if (advance)
    ++st.rotate;
  return best;
}

caf::error none_up(self_ptr self) {
  auto& st = self->state;
  std::string states;
  for (auto& n : st.nodes)
    states += (states.empty() ? "" : ", ") + n.peer + " " + std::string{name_of(n.state)};
  return make_error(error_code::unavailable,
                    "no node can serve (" + (states.empty() ? "no nodes" : states)
                      + "); retry later");
}

void count(self_ptr self, error_code code) {
  ++self->state.replies[static_cast<size_t>(code)];
}

/// Answers request `id` with `err`; `made_here`: by this front, not passed on
/// from the node that ran it (counted in that node's stats already).
void finish(self_ptr self, uint64_t id, caf::error err, bool made_here = true) {
  auto& st = self->state;
  auto i = st.pending.find(id);
  if (i == st.pending.end())
    return;
  count(self, code_of(err));
  if (made_here)
    st.own.count(i->second.req.command, code_of(err));
  i->second.rp.deliver(std::move(err));
  st.pending.erase(i);
}

void release(self_ptr self, pending_req& r);

/// Cancels the requests of `caller` (tagged `tag`, or all with 0): answered
/// `cancelled` now, and the node that has one cancels it there.
void cancel_of(self_ptr self, const caf::actor_addr& caller, uint64_t tag) {
  auto& st = self->state;
  std::vector<uint64_t> ids;
  for (auto& kv : st.pending)
    if (kv.second.caller == caller && (tag == 0 || kv.second.caller_tag == tag))
      ids.push_back(kv.first);
  for (auto id : ids) {
    auto& r = st.pending[id];
    if (r.node != no_node && st.nodes[r.node].gen == r.gen && st.nodes[r.node].hdl)
      self->send(st.nodes[r.node].hdl, cancel_atom::value, id);
    release(self, r);
    finish(self, id, make_error(error_code::cancelled, "the request was cancelled"));
  }
}

/// Takes request `id` off the node it was sent to.
void release(self_ptr self, pending_req& r) {
  auto& st = self->state;
  if (r.node != no_node && st.nodes[r.node].gen == r.gen && st.nodes[r.node].in_flight > 0)
    --st.nodes[r.node].in_flight;
  r.node = no_node;
}

void on_reply(self_ptr self, uint64_t id, uint32_t node, uint64_t gen, payload& p);
void on_error(self_ptr self, uint64_t id, uint32_t node, uint64_t gen, caf::error& err);

void send_to(self_ptr self, uint64_t id, uint32_t n) {
  auto& st = self->state;
  auto& r = st.pending[id];
  auto& node = st.nodes[n];
  if (!node.hdl) // not reachable by how nodes are picked; never send into the void
    return finish(self, id, none_up(self));
  r.node = n;
  r.gen = node.gen;
  r.tried |= bit(n);
  ++node.in_flight;
  auto left = r.deadline - self->clock().now();
  r.req.timeout = std::max(left, caf::timespan{std::chrono::milliseconds(1)});
  auto gen = node.gen;
  // No CAF timeout per request (a clock wake-up each): the sweep fails what
  // outlives its deadline plus node_timeout, the heartbeat finds silent nodes.
  self->request(node.hdl, caf::infinite, r.req)
    .then([self, id, n, gen](payload& p) { on_reply(self, id, n, gen, p); },
          [self, id, n, gen](caf::error& err) { on_error(self, id, n, gen, err); });
  st.sweep.arm(self);
}

/// Sends request `id` to a node: its session's, else the least loaded one
/// not in `exclude`.
void dispatch(self_ptr self, uint64_t id, uint64_t exclude) {
  auto& st = self->state;
  auto& r = st.pending[id];
  auto now = self->clock().now();
  if (r.req.session.empty()) {
    auto n = pick(self, exclude);
    if (n == no_node)
      return finish(self, id, none_up(self));
    return send_to(self, id, n);
  }
  auto& session = r.req.session;
  if (auto e = st.sessions.find(session)) {
    auto& b = e->value;
    if (!b.lost && (b.node >= st.nodes.size() || st.nodes[b.node].gen != b.gen))
      b.lost = true;
    if (b.lost)
      return finish(self, id,
                    make_error(error_code::session_lost,
                               "session '" + session
                                 + "' was lost: the node that held its state was lost"));
    if (!r.fresh_binding || can_take(st.nodes[b.node])) {
      st.sessions.touch(*e, stamp_of(now));
      return send_to(self, id, b.node);
    }
    // A new session whose first request did not run: it may move.
    auto n = pick(self, exclude);
    if (n == no_node)
      return finish(self, id, none_up(self));
    b = binding{n, st.nodes[n].gen, false};
    return send_to(self, id, n);
  }
  auto n = pick(self, exclude);
  if (n == no_node)
    return finish(self, id, none_up(self));
  if (st.sessions.size() >= st.cfg.max_sessions)
    return finish(self, id,
                  make_error(error_code::overloaded,
                             "the cluster holds " + std::to_string(st.cfg.max_sessions)
                               + " sessions (its max_sessions); end some or retry later"));
  st.sessions.insert(session, binding{n, st.nodes[n].gen, false}, stamp_of(now));
  r.fresh_binding = true;
  send_to(self, id, n);
}

/// Outcomes that prove a request did not run on the node that gave them.
bool did_not_run(error_code code) {
  return code == error_code::unavailable || code == error_code::overloaded
         || code == error_code::shutting_down;
}

void lose(self_ptr self, uint32_t n, const std::string& why, bool logged = false);

void on_reply(self_ptr self, uint64_t id, uint32_t n, uint64_t gen, payload& p) {
  auto& st = self->state;
  auto i = st.pending.find(id);
  if (i == st.pending.end() || i->second.node != n || i->second.gen != gen)
    return; // answered already (its node was lost, or its deadline passed)
  release(self, i->second);
  ++st.nodes[n].served;
  count(self, error_code::none);
  i->second.rp.deliver(std::move(p));
  st.pending.erase(i);
}

/// What a CAF error about a node's connection means, in words a client can
/// be given (no CAF names: README, Error codes); the CAF text goes to the
/// log.
std::string in_words(self_ptr self, const caf::error& err) {
  log().debug("cluster: CAF says {}", self->system().render(err));
  if (err == caf::exit_reason::remote_link_unreachable)
    return "the connection to it broke (its process or the network went away)";
  if (err.category() == caf::atom("exit"))
    return "its endpoint stopped";
  if (err == caf::sec::request_timeout)
    return "it did not answer in time";
  if (err == caf::sec::request_receiver_down)
    return "its endpoint is gone";
  if (err == caf::sec::cannot_connect_to_node)
    return "nothing accepted the connection there";
  return "its connection failed";
}

void on_error(self_ptr self, uint64_t id, uint32_t n, uint64_t gen, caf::error& err) {
  auto& st = self->state;
  auto i = st.pending.find(id);
  if (i == st.pending.end() || i->second.node != n || i->second.gen != gen)
    return;
  auto& r = i->second;
  if (err.category() != error_category) {
    // CAF's own errors (the proxy is gone, the connection broke): the node
    // is lost, and with it what it held, this request included.
    lose(self, n, in_words(self, err));
    return;
  }
  release(self, r);
  ++st.nodes[n].served;
  auto code = code_of(err);
  if (did_not_run(code)) {
    if (code == error_code::unavailable && st.nodes[n].state == node_state::up)
      st.nodes[n].state = node_state::unavailable; // until its next heartbeat says more
    if ((r.req.session.empty() || r.fresh_binding)
        && pick(self, r.tried | bit(n), false) != no_node) {
      ++st.retries;
      return dispatch(self, id, r.tried);
    }
  }
  finish(self, id, std::move(err), false);
}

void deliver_ready_if_all_tried(self_ptr self);
void beat(self_ptr self, uint32_t n);
void connect(self_ptr self, uint32_t n);

/// Node `n` is lost: what it held is retried or failed, its sessions are
/// lost, and a remote node is reconnected after a back-off.
void lose(self_ptr self, uint32_t n, const std::string& why, bool logged) {
  auto& st = self->state;
  auto& node = st.nodes[n];
  if (node.state == node_state::lost)
    return;
  auto now = self->clock().now();
  bool was_up = node.ever_up && node.state != node_state::connecting;
  if (node.local)
    log().error("cluster: local pool {} is gone: {}", node.peer, why);
  else if (!logged && (was_up || !node.tried))
    log().warn("cluster: node {} lost: {}", node.peer, why);
  st.last_failure = "node " + node.peer + " lost: " + why;
  if (was_up && now - node.up_since >= st.cfg.reconnect.reset_after)
    node.failures = 0;
  ++node.failures;
  node.state = node_state::lost;
  node.tried = true;
  ++node.gen;
  node.in_flight = 0;
  node.external = 0;
  node.capacity = 0;
  node.beat_pending = false;
  if (node.hdl)
    self->demonitor(node.hdl.address());
  node.hdl = nullptr;
  std::vector<uint64_t> held;
  for (auto& [id, r] : st.pending)
    if (r.node == n)
      held.push_back(id);
  std::sort(held.begin(), held.end()); // in the order they came
  for (auto id : held) {
    auto& r = st.pending[id];
    r.node = no_node;
    if (!r.req.session.empty()) {
      finish(self, id,
             make_error(error_code::session_lost,
                        "session '" + r.req.session + "' was lost: node " + node.peer
                          + " was lost while its request ran (" + why + ")"));
    } else if (r.req.idempotent && r.chunks == 0 && r.req.attempts + 1 < st.cfg.max_attempts
               && r.deadline > now) {
      ++r.req.attempts;
      ++st.retries;
      dispatch(self, id, 0);
    } else {
      finish(self, id,
             make_error(error_code::worker_crashed,
                        "node " + node.peer + " was lost while the request ran (" + why + ")"
                          + (r.req.idempotent ? "; no attempts left" : "; not idempotent")));
    }
  }
  if (!node.local && !node.itself) {
    std::uniform_real_distribution<double> u{-1.0, 1.0};
    auto delay = st.cfg.reconnect.delay(node.failures, u(st.rng));
    self->delayed_send(self, delay, reconnect_atom::value, n, node.gen);
  }
  deliver_ready_if_all_tried(self);
}

void connect(self_ptr self, uint32_t n) {
  auto& st = self->state;
  auto gen = st.nodes[n].gen;
  self
    ->request(st.cfg.connector, st.cfg.connect_timeout, caf::connect_atom::value,
              st.nodes[n].host, st.nodes[n].port)
    .then(
      [self, n, gen](caf::node_id& nid, caf::strong_actor_ptr& ptr,
                     std::set<std::string>& ifs) {
        auto& st = self->state;
        auto& node = st.nodes[n];
        if (node.gen != gen)
          return;
        if (nid == self->system().node()) {
          log().error("cluster: peer {} is this node's own published port (cluster.peers "
                      "lists this node): ignored, its pool serves as this node's own",
                      node.peer);
          node.itself = true;
          node.state = node_state::connecting; // lose() is a no-op on lost
          lose(self, n, "it is this node itself (cluster.peers lists this node)", true);
          return;
        }
        auto expected = self->system().message_types<client_actor>();
        if (!ptr || ifs != expected) {
          node.state = node_state::connecting; // lose() is a no-op on lost
          lose(self, n,
               ptr ? "it publishes another interface than pyvisor's client endpoint (not a "
                     "pyvisor node of this version?)"
                   : "nothing is published on that port");
          return;
        }
        node.hdl = caf::actor_cast<client_actor>(ptr);
        self->monitor(node.hdl);
        node.state = node_state::connecting;
        beat(self, n);
      },
      [self, n, gen](caf::error& err) {
        auto& st = self->state;
        if (st.nodes[n].gen != gen)
          return;
        // Logged on the first failure and then at growing intervals, so that
        // a peer that stays away does not flood the log.
        auto f = st.nodes[n].failures;
        if ((f & (f + 1)) == 0)
          log().warn("cluster: cannot connect to node {} (attempt {}): {}", st.nodes[n].peer,
                     f + 1, self->system().render(err));
        st.nodes[n].state = node_state::connecting; // lose() is a no-op on lost
        lose(self, n, "cannot connect: " + in_words(self, err), true);
      });
}

void on_stats(self_ptr self, uint32_t n, pool_stats& stats) {
  auto& st = self->state;
  auto& node = st.nodes[n];
  node.beat_pending = false;
  auto load = stats.in_flight() + stats.queue;
  node.external = load > node.in_flight_at_beat ? load - node.in_flight_at_beat : 0;
  node.capacity = stats.capacity;
  bool serving = stats.state == pool_state::serving && stats.capacity > 0;
  auto before = node.state;
  node.state = serving ? node_state::up : node_state::unavailable;
  node.last = std::move(stats);
  if (before == node_state::connecting) {
    node.up_since = self->clock().now();
    if (node.ever_up) {
      ++node.restarts;
      log().info("cluster: node {} rejoined ({} workers ready)", node.peer,
                 node.last.workers_in(worker_phase::ready));
    } else {
      log().info("cluster: node {} joined ({} workers ready)", node.peer,
                 node.last.workers_in(worker_phase::ready));
    }
    node.ever_up = true;
    node.tried = true;
    deliver_ready_if_all_tried(self);
  }
}

void beat(self_ptr self, uint32_t n) {
  auto& st = self->state;
  auto& node = st.nodes[n];
  if (!node.hdl || node.beat_pending)
    return;
  node.beat_pending = true;
  node.in_flight_at_beat = node.in_flight;
  auto gen = node.gen;
  self->request(node.hdl, st.cfg.node_timeout, status_atom::value)
    .then(
      [self, n, gen](pool_stats& stats) {
        if (self->state.nodes[n].gen == gen)
          on_stats(self, n, stats);
      },
      [self, n, gen](caf::error& err) {
        if (self->state.nodes[n].gen != gen)
          return;
        if (err == caf::sec::request_timeout)
          lose(self, n, "it did not answer its heartbeat within node_timeout");
        else
          lose(self, n, in_words(self, err));
      });
}

pool_stats make_stats(self_ptr self) {
  auto& st = self->state;
  pool_stats r;
  bool any_up = false;
  bool all_new = true;
  latency_histogram all;
  uint32_t worker_id = 0;
  for (auto& n : st.nodes) {
    any_up = any_up || can_take(n);
    all_new = all_new && !n.ever_up && n.state == node_state::connecting;
    r.nodes.push_back(node_stats{n.peer, n.state,
                                 static_cast<uint32_t>(n.state == node_state::lost
                                                         ? 0
                                                         : n.last.workers_in(worker_phase::ready)),
                                 n.in_flight, n.served, n.restarts});
    if (n.state != node_state::up && n.state != node_state::unavailable)
      continue;
    for (auto w : n.last.workers) {
      w.id = ++worker_id;
      r.workers.push_back(w);
    }
    r.capacity += n.capacity;
    r.queue += n.last.queue;
    r.retries += n.last.retries;
    r.requeued += n.last.requeued;
    r.restarts += n.last.restarts;
    r.recycled += n.last.recycled;
    r.pool_restarts += n.last.pool_restarts;
    r.streams_open += n.last.streams_open;
    for (auto& [name, cs] : n.last.commands) {
      auto& mine = r.commands[name];
      for (auto& [outcome, k] : cs.replies)
        mine.replies[outcome] += k;
      mine.histogram.merge(cs.histogram);
      mine.streams += cs.streams;
      mine.chunks += cs.chunks;
      mine.chunk_bytes += cs.chunk_bytes;
    }
  }
  for (auto& [name, rec] : st.own.commands)
    for (auto& [outcome, k] : outcome_map(rec.replies))
      r.commands[name].replies[outcome] += k;
  for (auto& [name, cs] : r.commands) {
    cs.latency_us = cs.histogram.percentiles();
    all.merge(cs.histogram);
  }
  r.latency_us = all.percentiles();
  r.state = any_up ? pool_state::serving : all_new ? pool_state::starting : pool_state::restarting;
  r.last_failure = st.last_failure;
  r.replies = outcome_map(st.replies);
  r.retries += st.retries;
  st.sessions.for_each([&](const std::string&, const binding& b, int64_t) {
    r.sessions += b.lost ? 0 : 1;
  });
  return r;
}

void deliver_ready_if_all_tried(self_ptr self) {
  auto& st = self->state;
  if (st.ready_waiters.empty())
    return;
  for (auto& n : st.nodes)
    if (!n.tried)
      return;
  auto stats = make_stats(self);
  auto any_up = std::any_of(st.nodes.begin(), st.nodes.end(), can_take);
  for (auto& rp : st.ready_waiters) {
    if (any_up)
      rp.deliver(stats);
    else
      rp.deliver(none_up(self));
  }
  st.ready_waiters.clear();
}

cluster_impl::behavior_type cluster_actor(self_ptr self, cluster_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  for (size_t i = 0; i < st.cfg.pools.size(); ++i) {
    node_rec n;
    n.peer = "local:" + std::to_string(i + 1);
    n.local = st.cfg.pools[i];
    st.nodes.push_back(std::move(n));
  }
  for (auto& peer : st.cfg.peers) {
    node_rec n;
    n.peer = peer;
    if (!parse_peer(peer, n.host, n.port)) {
      n.state = node_state::lost;
      n.tried = true;
      log().error("cluster: '{}' is not host:port; that node is left out", peer);
    } else if (!st.cfg.connector) {
      n.state = node_state::lost;
      n.tried = true;
      n.port = 0;
    }
    st.nodes.push_back(std::move(n));
  }
  for (uint32_t i = 0; i < st.nodes.size(); ++i) {
    auto& n = st.nodes[i];
    if (n.local) {
      n.hdl = caf::actor_cast<client_actor>(n.local);
      self->monitor(n.hdl);
      beat(self, i);
    } else if (n.port != 0) {
      connect(self, i);
    }
  }
  self->delayed_send(self, st.cfg.heartbeat, heartbeat_atom::value);
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    if (st.callers.erase(dm.source) > 0) {
      cancel_of(self, dm.source, 0);
      return;
    }
    for (uint32_t i = 0; i < st.nodes.size(); ++i)
      if (st.nodes[i].hdl && st.nodes[i].hdl.address() == dm.source)
        lose(self, i, in_words(self, dm.reason));
  });
  self->set_exit_handler([self](caf::exit_msg& em) {
    auto& st = self->state;
    std::vector<uint64_t> ids;
    for (auto& kv : st.pending)
      ids.push_back(kv.first);
    for (auto id : ids)
      finish(self, id, make_error(error_code::shutting_down, "the cluster front is stopping"));
    for (auto& rp : st.ready_waiters)
      rp.deliver(make_error(error_code::shutting_down, "the cluster front is stopping"));
    st.ready_waiters.clear();
    self->quit(em.reason);
  });
  return {
    [self](execute& x) -> caf::result<payload> {
      auto& st = self->state;
      auto rp = self->make_response_promise<payload>();
      auto id = ++st.next_id;
      auto& r = st.pending[id];
      r.rp = rp;
      r.deadline = self->clock().now()
                   + effective_timeout(x.timeout, x.command, st.cfg.command_timeouts,
                                       st.cfg.request_timeout,
                                       st.cfg.max_request_timeout);
      r.caller = caf::actor_cast<caf::actor_addr>(
        static_cast<caf::response_promise&>(rp).source());
      r.caller_tag = x.tag;
      if (r.caller && st.callers.insert(r.caller).second)
        self->monitor(r.caller);
      r.req = std::move(x);
      r.req.tag = id;
      dispatch(self, id, 0);
      return rp;
    },
    [self](cancel_atom, uint64_t tag) {
      cancel_of(self, caf::actor_cast<caf::actor_addr>(self->current_sender()), tag);
    },
    [self](chunk_atom, uint64_t id, payload& p) {
      // From the node that runs stream `id` (never a stale or other one):
      // passed on to its caller under the caller's tag.
      auto& st = self->state;
      auto i = st.pending.find(id);
      if (i == st.pending.end() || i->second.node == no_node)
        return;
      auto& r = i->second;
      auto& node = st.nodes[r.node];
      if (node.gen != r.gen || !node.hdl
          || self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(node.hdl))
        return;
      ++r.chunks;
      if (auto caller = caf::actor_cast<caf::actor>(r.caller))
        caf::send_as(caf::actor_cast<caf::actor>(self), caller, chunk_atom::value, r.caller_tag,
                     std::move(p));
    },
    [self](taken_atom, uint64_t tag, uint64_t n) {
      // The caller's credit, to the node that runs its stream.
      auto& st = self->state;
      auto who = caf::actor_cast<caf::actor_addr>(self->current_sender());
      for (auto& [id, r] : st.pending)
        if (tag != 0 && r.caller == who && r.caller_tag == tag && r.node != no_node
            && st.nodes[r.node].gen == r.gen && st.nodes[r.node].hdl) {
          self->send(st.nodes[r.node].hdl, taken_atom::value, id, n);
          return;
        }
    },
    [self](ready_atom) -> caf::result<pool_stats> {
      auto rp = self->make_response_promise<pool_stats>();
      self->state.ready_waiters.push_back(rp);
      deliver_ready_if_all_tried(self);
      return rp;
    },
    [self](status_atom) -> pool_stats { return make_stats(self); },
    [self](health_atom) -> caf::result<bool> {
      auto& st = self->state;
      if (std::any_of(st.nodes.begin(), st.nodes.end(), can_take))
        return true;
      return none_up(self);
    },
    [self](end_session_atom, std::string& id) -> caf::result<bool> {
      auto& st = self->state;
      auto e = st.sessions.find(id);
      if (!e)
        return false;
      auto b = e->value;
      st.sessions.erase(*e);
      if (b.lost || b.node >= st.nodes.size() || st.nodes[b.node].gen != b.gen
          || !st.nodes[b.node].hdl)
        return true; // its state went with its node
      auto rp = self->make_response_promise<bool>();
      self->request(st.nodes[b.node].hdl, st.cfg.node_timeout, end_session_atom::value, id)
        .then([rp](bool existed) mutable { rp.deliver(existed); },
              [rp](caf::error&) mutable {
                // The node is lost or silent: the session goes with it.
                rp.deliver(true);
              });
      return rp;
    },
    [self](configure_atom, caf::timespan timeout) -> caf::result<caf::timespan> {
      auto& st = self->state;
      if (!st.cfg.peers.empty())
        return make_error(error_code::bad_request,
                          "a remote node's session timeout is its own (session.timeout in "
                          "its configuration): a published node takes no configure message");
      if (st.cfg.pools.empty())
        return timeout;
      for (size_t i = 1; i < st.cfg.pools.size(); ++i)
        caf::anon_send(st.cfg.pools[i], configure_atom::value, timeout);
      return self->delegate(st.cfg.pools.front(), configure_atom::value, timeout);
    },
    [self](heartbeat_atom) {
      auto& st = self->state;
      for (uint32_t i = 0; i < st.nodes.size(); ++i)
        beat(self, i);
      auto now = self->clock().now();
      st.sessions.expire(stamp_of(now - st.cfg.session_retention),
                         [](const std::string&, const binding&) {});
      self->delayed_send(self, st.cfg.heartbeat, heartbeat_atom::value);
    },
    [self](reconnect_atom, uint32_t n, uint64_t gen) {
      auto& st = self->state;
      if (n < st.nodes.size() && st.nodes[n].gen == gen && st.nodes[n].state == node_state::lost)
        connect(self, n);
    },
    [self](sweep_atom) {
      auto& st = self->state;
      st.sweep.fired();
      auto now = self->clock().now();
      std::vector<uint64_t> late;
      for (auto& [id, r] : st.pending)
        if (now > r.deadline + st.cfg.node_timeout)
          late.push_back(id);
      for (auto id : late) {
        auto& r = st.pending[id];
        auto where = r.node != no_node ? st.nodes[r.node].peer : std::string{"no node"};
        release(self, r);
        finish(self, id,
               make_error(error_code::timeout, "node " + where
                                                 + " did not answer by the request's deadline"));
      }
      if (!st.pending.empty())
        st.sweep.arm(self);
    },
  };
}

} // namespace

pool_actor spawn_cluster(caf::actor_system& sys, cluster_config cfg) {
  if (!cfg.peers.empty() && !cfg.connector) {
    if (!cfg.tls && !sys.config().openssl_certificate.empty() && sys.has_openssl_manager())
      cfg.tls = true;
    if (cfg.tls && sys.has_openssl_manager())
      cfg.connector = sys.openssl_manager().actor_handle();
    else if (!cfg.tls && sys.has_middleman())
      cfg.connector = sys.middleman().actor_handle();
    else
      log().error("cluster: {}; every remote node stays unreachable",
                  cfg.tls ? "TLS needs CAF's OpenSSL module (cfg.load<caf::openssl::manager>())"
                          : "remote nodes need CAF's middleman (cfg.load<caf::io::middleman>())");
  }
  return sys.spawn(cluster_actor, std::move(cfg));
}

} // namespace pyvisor

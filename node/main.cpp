// pyvisor-node: a supervised Python worker pool served over MessagePack-RPC.
//
// Start-up: read the configuration (configs/node.ini by default), start the
// pool, wait until every worker said hello; with cluster.peers, start the
// cluster front over the pool and the peers (actors/cluster/) and serve
// that; then listen on rpc.host:rpc.port and, if publish.port is set,
// publish the pool's client endpoint (never the pool itself) to CAF
// applications and cluster fronts, over TLS with publish.tls. Once
// listening it prints a line to stdout, "pyvisor-node listening on
// HOST:PORT" (and "... on unix:PATH" for rpc.unix-path), so that scripts
// (and tests using rpc.port=0) can find it.
//
// SIGHUP (systemctl reload): read rpc.token-file again (a token that cannot
// be read leaves the old one in force); the node serves on.
// SIGTERM / SIGINT: stop accepting connections and new requests, let the
// requests in flight finish (up to node.shutdown-timeout), stop the workers
// (each is asked first and killed after pool.shutdown-timeout), exit 0.
// The pool behind the endpoint is kept by its keeper (actors/pool/pool_keeper.hpp),
// which restarts it when it gives up; with node.on-pool-failure=exit the
// keeper quits instead and the node exits with status 3 (exit_pool_failed) so
// that a service manager restarts it. A pool that cannot start at all at
// start-up makes the node exit with status 1.
// A SIGKILLed node leaves no Python process behind: workers carry a
// parent-death signal (see actors/process/python_process.hpp).

#include <signal.h>
#include <sys/resource.h>

#include <chrono>
#include <iostream>
#include <string_view>
#include <thread>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "caf/actor_system.hpp"
#include "caf/exit_reason.hpp"
#include "caf/io/middleman.hpp"
#include "caf/openssl/manager.hpp"
#include "caf/scoped_actor.hpp"

#include "node/gateway.hpp"
#include "node/metrics.hpp"
#include "node/node_config.hpp"
#include "node/service_notify.hpp"
#include "pyvisor/caf_io_mend.hpp"
#include "pyvisor/caf_openssl_mend.hpp"
#include "pyvisor/client_endpoint.hpp"
#include "pyvisor/cluster.hpp"
#include "pyvisor/pool.hpp"
#include "messages/log.hpp"

namespace {

using namespace pyvisor;

/// Exit status when the pool gave up and node.on-pool-failure=exit.
constexpr int exit_pool_failed = 3;

using signal_atom = caf::atom_constant<caf::atom("nd_signal")>;

/// The signals the node handles (blocked in every thread, taken by
/// sigwait in one).
sigset_t handled_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

int wait_for_signal() {
  auto set = handled_signals();
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

// Registers the "pyvisor" logger with the configured destination and level
// before any component asks for it.
void setup_logging(const node_config& cfg) {
  std::shared_ptr<spdlog::logger> logger;
  if (cfg.log_file.empty())
    logger = spdlog::stderr_color_mt("pyvisor");
  else
    logger = spdlog::basic_logger_mt("pyvisor", cfg.log_file);
  logger->set_level(spdlog::level::from_str(cfg.log_level));
  logger->flush_on(spdlog::level::info);
}

/// A server's descriptor limit is the hard one: the soft default (often
/// 1024) would cap connections far below what the machine can serve.
void raise_descriptor_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &lim) != 0)
      log().warn("could not raise the file descriptor limit to {}", lim.rlim_max);
  }
}

/// Limits on whatever reaches CAF's ports (actors/cluster/caf_io_mend.hpp),
/// set before the actor system makes its first connection.
/// Returns what stops the node from starting (empty: nothing).
std::string guard_ports(const node_config& cfg) {
  if (!caf_io_mend::active())
    log().warn("the caf-io mend is not in effect: the published port has no connection, "
               "handshake or message size limit");
  // The node's own descriptors: per worker its pipes, control socket,
  // pidfd, wake-up eventfd and two shared rings (fewer than 10), the fork
  // server's, the log, certificate files, the metrics endpoint.
  caf_io_mend::set_descriptor_reserve(128 + 10 * cfg.pool.size);
  caf_io_mend::set_max_message_size(cfg.publish_message_limit());
  if (cfg.publish_port != 0)
    caf_io_mend::guard({"publish", cfg.publish_port, cfg.publish_max_connections,
                        std::chrono::duration_cast<std::chrono::milliseconds>(
                          cfg.publish_handshake_timeout)});
  // Credentials read once, now, rather than per connection by CAF.
  if (!cfg.openssl_certificate.empty() || !cfg.openssl_key.empty()
      || !cfg.openssl_cafile.empty() || !cfg.openssl_capath.empty())
    return caf_openssl_mend::preload(cfg.openssl_certificate, cfg.openssl_key,
                                     cfg.openssl_passphrase, cfg.openssl_cafile,
                                     cfg.openssl_capath);
  return {};
}

/// Where the RPC endpoint listens, for log lines.
std::string endpoints(const node_config& cfg, uint16_t port) {
  std::string result;
  if (cfg.rpc.port != 0 || cfg.rpc.unix_path.empty())
    result = cfg.rpc.host + ":" + std::to_string(port);
  if (!cfg.rpc.unix_path.empty())
    result += (result.empty() ? "unix:" : " and unix:") + cfg.rpc.unix_path;
  return result;
}

bool stop_within(caf::scoped_actor& self, const caf::actor& who, caf::exit_reason reason,
                 caf::timespan limit) {
  bool stopped = false;
  self->monitor(who);
  self->send_exit(who, reason);
  self->receive([&](caf::down_msg&) { stopped = true; }, caf::after(limit) >> [] {});
  return stopped;
}

/// Stops what run() started, newest first: connections, the cluster front,
/// the pool (asked first, its workers killed after pool.shutdown-timeout).
struct started_parts {
  caf::scoped_actor& self;
  const node_config& cfg;
  caf::actor gateway;
  caf::actor front;
  caf::actor pool;

  void stop_all() {
    if (gateway)
      stop_within(self, gateway, caf::exit_reason::kill, std::chrono::seconds(2));
    if (front)
      stop_within(self, front, caf::exit_reason::user_shutdown, std::chrono::seconds(2));
    if (pool && !stop_within(self, pool, caf::exit_reason::user_shutdown,
                             cfg.pool.shutdown_timeout * 2 + std::chrono::seconds(1)))
      log().warn("the pool did not stop in time");
  }
};

int run(caf::actor_system& sys, const node_config& cfg) {
  service_notifier service;
  caf::scoped_actor self{sys};
  started_parts parts{self, cfg, {}, {}, {}};
  service.status("starting " + std::to_string(cfg.pool.size) + " workers");
  log().info("pyvisor-node starting: config {}, {}{}",
             cfg.config_file_used.empty() ? "built-in defaults" : cfg.config_file_used,
             cfg.pool.size == 0 ? std::string{"no pool of its own"}
                                : std::to_string(cfg.pool.size) + " " + cfg.pool_backend
                                    + " workers (" + cfg.pool.worker.python + ")",
             cfg.cluster.peers.empty()
               ? std::string{}
               : ", over " + std::to_string(cfg.cluster.peers.size()) + " peer nodes");
  auto t0 = std::chrono::steady_clock::now();
  // What the RPC endpoint serves: the pool, or the cluster over it and the peers.
  pool_actor served;
  pool_actor pool;
  if (cfg.pool.size > 0) {
    pool = spawn_pool(sys, cfg.make_pool_config());
    parts.pool = caf::actor_cast<caf::actor>(pool);
  }
  if (!cfg.cluster.peers.empty()) {
    auto cc = cfg.make_cluster_config();
    if (pool)
      cc.pools.push_back(pool);
    served = spawn_cluster(sys, std::move(cc));
    parts.front = caf::actor_cast<caf::actor>(served);
  } else {
    served = pool;
  }
  // Metrics from the start, so that a slow or failing start-up shows.
  std::string rpc_problem;
  auto rpc_cfg = cfg.make_gateway_config(rpc_problem);
  if (!rpc_cfg) {
    // Checked at start-up already; a file that changed since.
    log().error("{}", rpc_problem);
    parts.stop_all();
    return 1;
  }
  auto& rpc = *rpc_cfg;
  rpc.counters = std::make_shared<gateway_counters>();
  std::unique_ptr<metrics_exporter> metrics;
  if (cfg.metrics_port != 0) {
    std::string why;
    metrics = start_metrics(sys, served, {rpc.counters, caf_io_mend::counters}, cfg.metrics_host,
                            cfg.metrics_port, why);
    if (!metrics) {
      log().error("{}", why);
      parts.stop_all();
      return 1;
    }
    log().info("serving Prometheus metrics on http://{}:{}/metrics", cfg.metrics_host,
               cfg.metrics_port);
  }
  pool_stats first_stats;
  if (pool) {
    bool ready = false;
    self->request(pool, cfg.pool.worker.startup_timeout * 3 + std::chrono::seconds(5), ready_atom::value)
      .receive(
        [&](pool_stats& st) {
          ready = true;
          first_stats = st;
          auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - t0)
                      .count();
          std::string pids;
          for (auto& w : st.workers)
            pids += (pids.empty() ? "" : ", ") + std::to_string(w.pid);
          log().info("pool ready: {} workers in {} ms (pids {})", st.workers.size(), ms, pids);
        },
        [&](caf::error& err) {
          // The pool logged the cause with its Python traceback already.
          auto msg = info_of(err).message;
          log().error("the pool failed to start: {}", msg.substr(0, msg.find('\n')));
        });
    if (!ready) {
      parts.stop_all();
      return 1;
    }
  }
  if (parts.front) {
    // Peers may come later (start order does not matter): a front that
    // reaches none yet serves `unavailable` until one answers.
    self->request(served, cfg.cluster.connect_timeout + cfg.cluster.node_timeout * 2,
                  ready_atom::value)
      .receive(
        [&](pool_stats& st) {
          first_stats = st;
          size_t up = 0;
          for (auto& n : st.nodes)
            up += n.state == node_state::up ? 1 : 0;
          log().info("cluster ready: {} of {} nodes up, {} workers", up, st.nodes.size(),
                     st.workers_in(worker_phase::ready));
        },
        [&](caf::error& err) {
          log().warn("no node of the cluster can serve yet ({}); serving `unavailable` until "
                     "one can",
                     info_of(err).message);
        });
  }
  auto gw = spawn_gateway(sys, served, rpc);
  if (!gw) {
    log().error("cannot listen on {} (rpc.host, rpc.port, rpc.unix-path, rpc.token-file): {}",
                endpoints(cfg, cfg.rpc.port), to_string_readable(gw.error()));
    parts.stop_all();
    return 1;
  }
  // Named, not a structured binding: a C++17 lambda below captures it.
  auto gateway = gw->first;
  auto port = gw->second;
  parts.gateway = gateway;
  log().info("listening for MessagePack-RPC on {}{}{}", endpoints(cfg, port),
             rpc.tls ? (rpc.tls->verifies_clients()
                          ? " (TLS on TCP, clients need a certificate signed by rpc.client-ca)"
                          : " (TLS on TCP)")
                     : "",
             rpc.token_file.empty() ? "" : "; every connection must first auth with the token");
  if (cfg.publish_port != 0) {
    auto published = publish_pool(sys, pool, cfg.make_publish_config());
    if (!published) {
      log().error("cannot publish the pool on {}:{} (publish.host, publish.port): {}",
                  cfg.publish_host, cfg.publish_port, to_string_readable(published.error()));
      parts.stop_all();
      return 1;
    }
    log().info("pool published for CAF applications on {}:{} ({})", cfg.publish_host,
               *published,
               cfg.publish_tls ? "TLS, peers need a certificate signed by openssl.cafile"
                               : "no TLS");
  }
  if (rpc.tcp)
    std::cout << "pyvisor-node listening on " << cfg.rpc.host << ":" << port << std::endl;
  if (!rpc.unix_path.empty())
    std::cout << "pyvisor-node listening on unix:" << rpc.unix_path << std::endl;
  service.ready(sys, served, status_line(first_stats));
  // Wait for a stop signal or for the pool's keeper to give up (only with
  // node.on-pool-failure=exit does it ever quit on its own; a cluster front
  // never does).
  self->monitor(pool ? pool : served);
  std::thread signal_waiter{[hdl = caf::actor_cast<caf::actor>(self)] {
    for (;;) {
      auto s = wait_for_signal();
      caf::anon_send(hdl, signal_atom::value, s);
      if (s != SIGHUP)
        return;
    }
  }};
  int sig = 0;
  caf::error pool_down;
  bool pool_gone = false;
  while (sig == 0 && !pool_gone)
    self->receive(
      [&](signal_atom, int s) {
        if (s != SIGHUP) {
          sig = s;
          return;
        }
        // SIGHUP (systemctl reload): the token file is read again; a
        // token that cannot be read leaves the old one in force.
        if (rpc.token_file.empty()) {
          log().info("received SIGHUP: nothing to reload (no rpc.token-file)");
          return;
        }
        self->request(gateway, std::chrono::seconds(10), reload_token_atom::value)
          .receive([&](bool) { log().info("received SIGHUP: rpc.token-file read again"); },
                   [&](caf::error& err) {
                     log().error("received SIGHUP: the old token stays in force: {}",
                                 to_string_readable(err));
                   });
      },
      [&](caf::down_msg& dm) {
        pool_gone = true;
        pool_down = dm.reason;
      });
  if (pool_gone) {
    // Wake the waiter with a signal of its own (blocked everywhere, so only
    // its sigwait takes it).
    pthread_kill(signal_waiter.native_handle(), SIGTERM);
    signal_waiter.join();
    self->receive([](signal_atom, int) {}, caf::after(std::chrono::seconds(1)) >> [] {});
    // With on-pool-failure=restart the keeper never quits on its own: if it
    // is gone anyway, nothing serves any more, and exiting is all that helps.
    service.stopping("the pool is gone; exiting");
    log().error("{} ({}); exiting with status {}",
                cfg.node_on_pool_failure == "exit"
                  ? "the pool gave up and node.on-pool-failure=exit"
                  : "the pool's keeper stopped unexpectedly",
                pool_down ? to_string_readable(pool_down) : std::string{"normal"},
                exit_pool_failed);
    parts.stop_all();
    return exit_pool_failed;
  }
  signal_waiter.join();
  log().info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  service.stopping("draining: finishing the requests in flight");
  // 1. No new connections or requests; in-flight ones finish.
  bool drained = false;
  self->request(gateway, cfg.node_shutdown_timeout, drain_atom::value)
    .receive([&](bool) { drained = true; },
             [&](caf::error&) {
               log().warn("requests still in flight after node.shutdown-timeout; stopping anyway");
             });
  if (drained)
    log().info("all in-flight requests completed");
  // 2. The front, the workers (asked to stop, killed after
  // pool.shutdown-timeout), then the connections.
  parts.gateway = nullptr;
  parts.stop_all();
  stop_within(self, gateway, caf::exit_reason::kill, std::chrono::seconds(2));
  log().info("pyvisor-node stopped");
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  // Only the main thread's sigwait sees the stop signals: block them before
  // CAF starts its threads (children get an empty mask again).
  auto set = handled_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  for (int i = 1; i < argc; ++i)
    if (std::string_view{argv[i]} == "--version") {
      std::cout << "pyvisor-node " << PYVISOR_VERSION << std::endl;
      return 0;
    }
  pyvisor::node_config cfg;
  auto problem = cfg.read(argc, argv);
  if (cfg.cli_helptext_printed)
    return 0;
  if (!problem.empty()) {
    std::cerr << "pyvisor-node: " << problem << std::endl;
    return 1;
  }
  setup_logging(cfg);
  raise_descriptor_limit();
  pyvisor::keep_large_blocks();
  if (auto problem = guard_ports(cfg); !problem.empty()) {
    log().error("{}", problem);
    return 1;
  }
  cfg.load<caf::io::middleman>();
  cfg.load<caf::openssl::manager>();
  caf::actor_system sys{cfg};
  return run(sys, cfg);
}

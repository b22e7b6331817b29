// The node's Prometheus endpoint (metrics.host:metrics.port, path /metrics).
//
// Pull only: nothing is counted for Prometheus on the request path. A scrape
// asks the pool for its status (the same pool_stats the RPC `stats` method
// returns: replies per command and outcome, service time histograms,
// workers, queue, sessions, restarts) and reads the gateway's counters, and
// turns both into metric families. So `stats` and the metrics never
// disagree, and a node whose pool is busy or restarting still answers a
// scrape (without the pool's families if it did not answer within 2 s; the
// gateway's families and pyvisor_pool_up 0 are still there).
//
// The exporter owns prometheus-cpp's HTTP server (its own threads); it must
// be destroyed before the actor system.

#pragma once

#include <functional>
#include <memory>
#include <string>

#include "caf/fwd.hpp"

#include "node/gateway.hpp"
#include "pyvisor/caf_io_mend.hpp"
#include "pyvisor/pool.hpp"

namespace pyvisor {

/// The running endpoint; destroying it stops serving.
class metrics_exporter {
public:
  virtual ~metrics_exporter();
};

/// What the node counts besides the pool and the gateway.
struct metrics_sources {
  std::shared_ptr<const gateway_counters> rpc;
  /// The caf-io mend's refusals (published port, descriptors); may be empty.
  std::function<caf_io_mend::refusals()> port_refusals;
};

/// Serves the pool's, the gateway's and the mend's metrics on host:port; or
/// returns null and says in `why` why it cannot (the address is taken, not
/// an address, ...). Several threads serve scrapes, and a connection that
/// sends no request within 2 s is closed: an idle client cannot hold the
/// endpoint.
std::unique_ptr<metrics_exporter> start_metrics(caf::actor_system& sys, pool_actor pool,
                                                metrics_sources sources,
                                                const std::string& host, uint16_t port,
                                                std::string& why);

} // namespace pyvisor

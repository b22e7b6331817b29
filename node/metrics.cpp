#include "node/metrics.hpp"

#include <algorithm>
#include <chrono>
#include <exception>
#include <initializer_list>
#include <limits>
#include <utility>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include "caf/actor_system.hpp"
#include "caf/scoped_actor.hpp"

#include "messages/log.hpp"

namespace pyvisor {

metrics_exporter::~metrics_exporter() = default;

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

/// How long a scrape waits for the pool's status.
constexpr auto status_wait = std::chrono::seconds(2);

MetricFamily family(std::string name, std::string help, MetricType type) {
  return MetricFamily{std::move(name), std::move(help), type, {}};
}

ClientMetric sample(MetricType type, double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter)
    m.counter.value = value;
  else
    m.gauge.value = value;
  return m;
}

/// A metric without labels.
struct scalar {
  const char* name;
  const char* help;
  MetricType type;
  double value;
};

void add_scalars(std::vector<MetricFamily>& out, std::initializer_list<scalar> xs) {
  for (auto& x : xs) {
    auto f = family(x.name, x.help, x.type);
    f.metric.push_back(sample(x.type, x.value));
    out.push_back(std::move(f));
  }
}

/// One metric per name of an enum, labelled with the name and valued by
/// `count_of(value)` (workers in that state; or 1 for the current state and
/// 0 for the others): every state is there, also at 0, so that a dashboard
/// can graph each without knowing the set.
template <class Enum, class Count>
MetricFamily one_per_state(std::string name, std::string help, const char* label,
                           Count count_of) {
  auto f = family(std::move(name), std::move(help), MetricType::Gauge);
  for (auto& entry : enum_names<Enum>::table.entries)
    f.metric.push_back(sample(MetricType::Gauge, count_of(entry.value),
                              {{label, std::string{entry.name}}}));
  return f;
}

ClientMetric histogram_of(const latency_histogram& h, std::vector<ClientMetric::Label> labels) {
  ClientMetric m;
  m.label = std::move(labels);
  m.histogram.sample_count = h.count;
  m.histogram.sample_sum = h.sum_us / 1e6;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < latency_bounds_us.size(); ++i) {
    cumulative += i < h.counts.size() ? h.counts[i] : 0;
    m.histogram.bucket.push_back({cumulative, latency_bounds_us[i] / 1e6});
  }
  m.histogram.bucket.push_back({h.count, std::numeric_limits<double>::infinity()});
  return m;
}

void add_pool(std::vector<MetricFamily>& out, const pool_stats& st) {
  using T = MetricType;
  auto requests = family("pyvisor_requests_total",
                         "Requests answered, by command and outcome (ok or the error code)",
                         T::Counter);
  auto durations = family("pyvisor_request_duration_seconds",
                          "Worker service time of the requests a worker answered, by command",
                          T::Histogram);
  auto streams = family("pyvisor_streams_total", "Streams answered, by command", T::Counter);
  auto chunks = family("pyvisor_stream_chunks_total",
                       "Chunks of streams that reached their callers, by command", T::Counter);
  auto chunk_bytes = family("pyvisor_stream_bytes_total",
                            "Bytes of the chunks that reached their callers, by command",
                            T::Counter);
  for (auto& [command, cs] : st.commands) {
    for (auto& [outcome, n] : cs.replies)
      requests.metric.push_back(sample(T::Counter, static_cast<double>(n),
                                       {{"command", command}, {"outcome", outcome}}));
    if (cs.histogram.count > 0)
      durations.metric.push_back(histogram_of(cs.histogram, {{"command", command}}));
    if (cs.streams > 0) {
      streams.metric.push_back(
        sample(T::Counter, static_cast<double>(cs.streams), {{"command", command}}));
      chunks.metric.push_back(
        sample(T::Counter, static_cast<double>(cs.chunks), {{"command", command}}));
      chunk_bytes.metric.push_back(
        sample(T::Counter, static_cast<double>(cs.chunk_bytes), {{"command", command}}));
    }
  }
  out.push_back(std::move(requests));
  out.push_back(std::move(durations));
  out.push_back(std::move(streams));
  out.push_back(std::move(chunks));
  out.push_back(std::move(chunk_bytes));
  out.push_back(one_per_state<worker_phase>(
    "pyvisor_workers", "Workers by state", "state",
    [&](worker_phase p) { return static_cast<double>(st.workers_in(p)); }));
  out.push_back(one_per_state<pool_state>("pyvisor_pool_state", "1 for the pool's current state",
                                          "state", [&](pool_state s) {
                                            return s == st.state ? 1.0 : 0.0;
                                          }));
  if (!st.nodes.empty())
    out.push_back(one_per_state<node_state>(
      "pyvisor_cluster_nodes", "Nodes of this cluster front by state", "state",
      [&](node_state s) {
        return static_cast<double>(std::count_if(st.nodes.begin(), st.nodes.end(),
                                                 [s](const node_stats& n) { return n.state == s; }));
      }));
  auto num = [](uint64_t x) { return static_cast<double>(x); };
  add_scalars(out, {
    {"pyvisor_queue_depth", "Requests waiting for a worker", T::Gauge, num(st.queue)},
    {"pyvisor_requests_in_flight", "Requests running on workers", T::Gauge, num(st.in_flight())},
    {"pyvisor_sessions", "Sessions bound to a worker", T::Gauge, num(st.sessions)},
    {"pyvisor_streams_open", "Streams taken in and not answered yet", T::Gauge,
     num(st.streams_open)},
    {"pyvisor_worker_restarts_total",
     "Worker restarts by the supervisor (crashes and recycles alike)", T::Counter,
     num(st.restarts)},
    {"pyvisor_request_retries_total", "Idempotent requests retried after their worker died",
     T::Counter, num(st.retries)},
    {"pyvisor_requests_requeued_total",
     "Requests handed back by a dying worker on which they never started", T::Counter,
     num(st.requeued)},
    {"pyvisor_worker_recycles_total",
     "Workers recycled (max-requests, max-age, max-rss, a hung request)", T::Counter,
     num(st.recycled)},
    {"pyvisor_template_up", "1 while a fork-server template is ready to fork workers (0 with spawn)",
     T::Gauge, st.fork_template.pid != 0 ? 1.0 : 0.0},
    {"pyvisor_template_restarts_total", "Fork-server templates started after the first",
     T::Counter, num(st.fork_template.restarts)},
    {"pyvisor_pool_restarts_total", "Restarts of the whole pool by its keeper after it gave up",
     T::Counter, num(st.pool_restarts)},
  });
}

void add_gateway(std::vector<MetricFamily>& out, const gateway_counters& c) {
  using T = MetricType;
  auto val = [](const std::atomic<uint64_t>& x) { return static_cast<double>(x.load()); };
  add_scalars(out, {
    {"pyvisor_rpc_connections", "RPC connections open", T::Gauge, val(c.open)},
    {"pyvisor_rpc_connections_accepted_total", "RPC connections accepted (refused ones included)",
     T::Counter, val(c.accepted)},
    {"pyvisor_rpc_connections_refused_total",
     "RPC connections closed at once (rpc.max-connections reached, or draining)", T::Counter,
     val(c.refused)},
    {"pyvisor_rpc_connections_unadmitted_total",
     "RPC connections closed before they were admitted: a failed TLS handshake (no or a "
     "foreign client certificate, not TLS), no or a wrong token, rpc.handshake-timeout, or "
     "displaced by a new connection at rpc.max-connections",
     T::Counter, val(c.refused_admission)},
    {"pyvisor_rpc_connections_cut_off_total",
     "RPC connections the node stopped reading or closed: malformed, too large or too slow "
     "input, input buffers full, responses left unread",
     T::Counter, val(c.cut_off)},
    {"pyvisor_rpc_messages_total", "RPC messages received (requests, notifications)", T::Counter,
     val(c.messages)},
    {"pyvisor_rpc_received_bytes_total", "Bytes received on RPC connections", T::Counter,
     val(c.bytes_received)},
    {"pyvisor_rpc_sent_bytes_total", "Bytes written to RPC connections", T::Counter,
     val(c.bytes_sent)},
  });
}

void add_port_refusals(std::vector<MetricFamily>& out, const caf_io_mend::refusals& r) {
  auto f = family("pyvisor_port_refusals_total",
                  "Connections to CAF's ports (the published port; descriptors for every "
                  "port) refused or closed by the node, by reason: max_connections "
                  "(publish.max-connections), silent (nothing within "
                  "publish.handshake-timeout), oversized (over publish.max-message-size), "
                  "descriptor_reserve (the descriptors kept for workers were reached), "
                  "no_descriptor (none left at all)",
                  MetricType::Counter);
  for (auto [reason, value] : {std::pair{"max_connections", r.max_connections},
                               std::pair{"silent", r.silent},
                               std::pair{"oversized", r.oversized},
                               std::pair{"descriptor_reserve", r.descriptor_reserve},
                               std::pair{"no_descriptor", r.no_descriptor}}) {
    auto m = sample(MetricType::Counter, static_cast<double>(value));
    m.label.push_back({"reason", reason});
    f.metric.push_back(std::move(m));
  }
  out.push_back(std::move(f));
}

class pool_collector : public prometheus::Collectable {
public:
  pool_collector(caf::actor_system& sys, pool_actor pool, metrics_sources sources)
    : sys_(sys), pool_(std::move(pool)), sources_(std::move(sources)) {
    // nop
  }

  std::vector<MetricFamily> Collect() const override {
    std::vector<MetricFamily> out;
    bool up = false;
    {
      caf::scoped_actor self{sys_};
      self->request(pool_, status_wait, status_atom::value)
        .receive(
          [&](pool_stats& st) {
            up = true;
            add_pool(out, st);
          },
          [&](caf::error& err) {
            log().debug("metrics: the pool's status did not arrive: {}", to_string_readable(err));
          });
    }
    add_scalars(out, {{"pyvisor_pool_up",
                       "1 if the pool answered this scrape's status request within 2 s",
                       MetricType::Gauge, up ? 1.0 : 0.0}});
    if (sources_.rpc)
      add_gateway(out, *sources_.rpc);
    if (sources_.port_refusals)
      add_port_refusals(out, sources_.port_refusals());
    return out;
  }

private:
  caf::actor_system& sys_;
  pool_actor pool_;
  metrics_sources sources_;
};

class exporter final : public metrics_exporter {
public:
  exporter(std::unique_ptr<prometheus::Exposer> exposer, std::shared_ptr<pool_collector> collector)
    : exposer_(std::move(exposer)), collector_(std::move(collector)) {
    exposer_->RegisterCollectable(collector_);
  }

  ~exporter() override {
    // The server's threads stop before the collector (and its actor
    // system reference) goes away.
    exposer_.reset();
  }

private:
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<pool_collector> collector_;
};

} // namespace

std::unique_ptr<metrics_exporter> start_metrics(caf::actor_system& sys, pool_actor pool,
                                                metrics_sources sources,
                                                const std::string& host, uint16_t port,
                                                std::string& why) {
  // civetweb's notation: an IPv6 address goes in brackets.
  auto address = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":"
                 + std::to_string(port);
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // civetweb's options: a connection holds a thread until its request is
    // read (30 s by default); with one thread, one idle client blocked
    // every scrape.
    exposer = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
      "listening_ports", address, "num_threads", "4", "request_timeout_ms", "2000"});
  } catch (const std::exception& ex) {
    why = "cannot serve metrics on " + address + " (metrics.host, metrics.port): " + ex.what();
    return nullptr;
  }
  auto collector = std::make_shared<pool_collector>(sys, std::move(pool), std::move(sources));
  return std::make_unique<exporter>(std::move(exposer), std::move(collector));
}

} // namespace pyvisor

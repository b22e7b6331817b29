// pyvisor-bench: pyvisor's performance, as ratios to references measured in
// the same run on the same machine (absolute times on shared machines mean
// little). Scenarios: startup, rtt, throughput, sessions, recovery, interrupts
// (what a cancel and a timeout cost now that they interrupt), large,
// forkserver (start methods with a heavy user module); the
// references are a raw pipe floor, the worker floor (the real Python worker
// driven by one C++ thread, no runtime) and Python's ProcessPoolExecutor
// (bench/references.hpp). rtt also reports thread hand-offs per request
// (voluntary context switches of this process, which hosts the pool, the
// gateway and the RPC client). Prints a table; --json FILE writes every figure and
// ratio; --compare FILE checks the ratios against a stored baseline and exits
// 1 with a readable list when one is worse than its tolerance; --quick runs
// tiny counts (what CI does, to prove the tool works; it asserts no times).
//
//   pyvisor-bench [--quick] [--json=FILE] [--compare=FILE] [--scenarios=["rtt"]]
//   pyvisor-bench --from-json=FILE --compare=FILE   (compare stored figures)

#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <functional>
#include <thread>
#include <tuple>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/exit_reason.hpp"
#include "caf/io/middleman.hpp"
#include "caf/scoped_actor.hpp"

#include "actors/pool/expiring_index.hpp"
#include "node/gateway.hpp"
#include "pyvisor/client_endpoint.hpp"
#include "pyvisor/cluster.hpp"
#include "pyvisor/pool.hpp"
#include "pyvisor/stream.hpp"
#include "actors/pool/session_affinity.hpp"
#include "pyvisor/worker.hpp"
#include "bench/references.hpp"
#include "messages/log.hpp"
#include "node/rpc_tls.hpp"
#include "support/test_certificates.hpp"

namespace {

using namespace pyvisor;
using namespace pyvisor::bench;
using namespace std::chrono_literals;

struct bench_config : caf::actor_system_config {
  bool quick = false;
  std::string json;
  std::string compare;
  std::string from_json;
  std::string python = "/usr/bin/python3";
  std::string ppe_script = PYVISOR_BENCH_DIR "/ppe_reference.py";
  std::string client_script = PYVISOR_BENCH_DIR "/python_client_rtt.py";
  caf::timespan reply_spin = worker_config{}.reply_spin;
  size_t rtt_64b_only = 0;
  std::string node = PYVISOR_NODE_PATH;
  std::vector<std::string> scenarios{"startup", "rtt",        "throughput", "sessions",
                                     "recovery", "interrupts", "stream", "large", "payloads",
                                     "tls", "forkserver", "cluster"};

  bench_config() {
    add_cluster_types(*this);
    use_sharing_scheduler(*this); // as the node does

    opt_group{custom_options_, "global"}
      .add(quick, "quick", "tiny counts: proves the tool works, measures little")
      .add(json, "json", "write figures and ratios to this JSON file")
      .add(compare, "compare", "check ratios against this baseline; exit 1 if worse")
      .add(from_json, "from-json", "compare the figures of this file instead of running")
      .add(python, "python", "interpreter for workers and references")
      .add(ppe_script, "ppe-script", "path of bench/ppe_reference.py")
      .add(client_script, "client-script", "path of bench/python_client_rtt.py")
      .add(node, "node", "pyvisor-node binary (scenario large runs it as a process)")
      .add(scenarios, "scenarios", "which scenarios to run")
      .add(reply_spin, "reply-spin", "the workers' pool.reply-spin")
      .add(rtt_64b_only, "rtt-64b-only",
           "scenario rtt: only 64 B round trips, this many (e.g. under perf)");
  }
};

/// A ratio with its target: direction "lower" means smaller is better.
struct ratio {
  double value = 0;
  double target = 0;
  std::string direction = "lower";
  std::string what;
};

struct report {
  std::map<std::string, double> figures;
  std::map<std::string, ratio> ratios;
};

std::vector<char> bytes_of(size_t n) {
  return std::vector<char>(n, 'x');
}

pool_config python_pool(const bench_config& cfg, size_t size) {
  pool_config pc;
  pc.size = size;
  pc.worker.python = cfg.python;
  pc.worker.reply_spin = cfg.reply_spin;
  pc.max_in_flight = 8;
  pc.queue_size = 100000;
  return pc;
}

struct running_pool {
  caf::actor_system& sys;
  pool_actor pool;
  pool_stats ready_stats;

  running_pool(caf::actor_system& s, const pool_config& pc) : sys(s) {
    pool = spawn_pool(sys, pc);
    caf::scoped_actor self{sys};
    bool ok = false;
    self->request(pool, 60s, ready_atom::value)
      .receive([&](pool_stats& st) {
        ready_stats = std::move(st);
        ok = true;
      },
               [&](caf::error& err) { std::cerr << "pool failed: " << sys.render(err) << "\n"; });
    if (!ok)
      throw std::runtime_error("pool did not become ready");
  }

  ~running_pool() {
    caf::scoped_actor self{sys};
    self->send_exit(pool, caf::exit_reason::user_shutdown);
    self->wait_for(pool);
  }

  pool_stats stats() {
    caf::scoped_actor self{sys};
    pool_stats result;
    self->request(pool, 10s, status_atom::value)
      .receive([&](pool_stats& st) { result = std::move(st); }, [](caf::error&) {});
    return result;
  }
};

double median(std::vector<double> xs) {
  std::sort(xs.begin(), xs.end());
  return xs.empty() ? 0 : xs[(xs.size() - 1) / 2];
}

// -- scenarios ------------------------------------------------------------------

double bare_startup_us(const bench_config& cfg, int reps) {
  std::vector<double> xs;
  for (int i = 0; i < reps; ++i) {
    pipe_floor floor{cfg.python, pipe_floor::kind::raw};
    xs.push_back(floor.first_reply_us());
  }
  return median(xs);
}

void startup(caf::actor_system& sys, const bench_config& cfg, report& r) {
  int reps = cfg.quick ? 1 : 5;
  std::vector<double> xs;
  for (int i = 0; i < reps; ++i) {
    auto t = now_us();
    running_pool p{sys, python_pool(cfg, 4)};
    xs.push_back(now_us() - t);
  }
  auto bare = bare_startup_us(cfg, reps);
  // The mock backend starts without any process: what users' tests gain.
  auto mock = python_pool(cfg, 4);
  mock.backend = backend_kind::mock;
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    auto t = now_us();
    running_pool p{sys, mock};
    ms.push_back(now_us() - t);
  }
  r.figures["startup.mock_pool4_ready_us"] = median(ms);
  r.ratios["startup.python_vs_mock"] = {median(xs) / median(ms), 10.0, "higher",
                                        "pool of 4 ready: real Python / mock backend"};
  r.figures["startup.pool4_ready_us"] = median(xs);
  r.figures["startup.bare_interpreter_us"] = bare;
  r.ratios["startup.pool4_vs_bare"] = {median(xs) / bare, 1.5, "lower",
                                       "pool of 4 ready / one bare interpreter's first reply"};
}

/// Sequential echo round trips through the C++ API. The caller sets no
/// timeout of its own, as the README recommends (the pool answers every
/// request by its deadline); `caller_timeout` measures what one costs.
template <class Handle>
latency api_rtt(caf::actor_system& sys, const Handle& pool, size_t size, size_t count,
                caf::duration caller_timeout = caf::infinite) {
  caf::scoped_actor self{sys};
  auto req = make_execute("echo", bytes_of(size));
  std::vector<double> samples;
  samples.reserve(count);
  for (size_t i = 0; i < count + 5; ++i) {
    // Built before the clock starts and moved in, as a caller that made
    // its arguments does: a large copy here would be the bench's own.
    auto sent = req;
    auto t = now_us();
    self->request(pool, caller_timeout, std::move(sent)).receive([](payload&) {}, [&](caf::error& err) {
      throw std::runtime_error("echo failed: " + to_string_readable(err));
    });
    if (i >= 5) // warm-up
      samples.push_back(now_us() - t);
  }
  return summarize(std::move(samples));
}

void rtt(caf::actor_system& sys, const bench_config& cfg, report& r, const ppe_figures& ppe) {
  std::vector<size_t> sizes{64, 4096, size_t{1} << 20};
  std::vector<size_t> counts = cfg.quick ? std::vector<size_t>{50, 20, 3}
                                         : std::vector<size_t>{3000, 2000, 50};
  if (cfg.rtt_64b_only > 0) {
    // For a profiler: one size, as many round trips as asked.
    sizes = {64};
    counts = {cfg.rtt_64b_only};
  }
  running_pool p{sys, python_pool(cfg, 1)};
  auto gw = spawn_gateway(sys, p.pool, gateway_config{"127.0.0.1", 0, size_t{64} << 20});
  if (!gw)
    throw std::runtime_error("cannot start the gateway");
  rpc_client rpc{gw->second};
  pipe_floor floor{cfg.python, pipe_floor::kind::raw};
  pipe_floor worker_floor{cfg.python, pipe_floor::kind::worker, default_python_dir()};
  // Hand-offs per request by thread name since `before` (those above 0.05).
  auto per_thread = [&r](const std::string& prefix, std::map<std::string, double>& before,
                         double requests) {
    for (auto& [thread, count] : voluntary_switches_by_thread())
      if (auto per_request = (count - before[thread]) / requests; per_request >= 0.05)
        r.figures[prefix + thread] = per_request;
  };
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto name = sizes[i] == 64 ? std::string{"64B"} : sizes[i] == 4096 ? "4KiB" : "1MiB";
    // Thread hand-offs per request on this process's side (the actor
    // system, the gateway and the RPC client all run here): voluntary
    // context switches per request, warm-up included on both sides.
    auto n = static_cast<double>(counts[i] + 5);
    auto cs = voluntary_switches();
    auto by_thread = voluntary_switches_by_thread();
    auto api = api_rtt(sys, p.pool, sizes[i], counts[i]);
    auto api_handoffs = (voluntary_switches() - cs) / n;
    if (sizes[i] == 64)
      per_thread("rtt.64B.api_handoffs.", by_thread, n);
    std::vector<double> rs;
    auto payload = bytes_of(sizes[i]);
    cs = voluntary_switches();
    by_thread = voluntary_switches_by_thread();
    for (size_t k = 0; k < counts[i] + 5; ++k) {
      auto t = now_us();
      rpc.echo(payload);
      if (k >= 5)
        rs.push_back(now_us() - t);
    }
    auto rpc_handoffs = (voluntary_switches() - cs) / n;
    if (sizes[i] == 64)
      per_thread("rtt.64B.rpc_handoffs.", by_thread, n);
    auto rpc_l = summarize(rs);
    auto raw = floor.rtt(sizes[i], counts[i]);
    cs = voluntary_switches();
    auto wfloor = worker_floor.rtt(sizes[i], counts[i]);
    auto floor_handoffs = (voluntary_switches() - cs) / n;
    r.figures["rtt." + name + ".worker_floor_p50_us"] = wfloor.p50;
    if (sizes[i] == 64) {
      r.figures["rtt.64B.api_handoffs"] = api_handoffs;
      r.figures["rtt.64B.rpc_handoffs"] = rpc_handoffs;
      r.figures["rtt.64B.worker_floor_handoffs"] = floor_handoffs;
      // A caller's own timeout costs CAF's clock thread a wake-up per
      // request (thread_safe_actor_clock::set_request_timeout and
      // cancel_request_timeout each push to its queue and notify it).
      cs = voluntary_switches();
      auto timed = api_rtt(sys, p.pool, sizes[i], counts[i], caf::duration{30s});
      r.figures["rtt.64B.api_caller_timeout_handoffs"] = (voluntary_switches() - cs) / n;
      r.figures["rtt.64B.api_caller_timeout_p50_us"] = timed.p50;
      r.ratios["rtt.64B.api_vs_worker_floor"] = {api.p50 / wfloor.p50, 2.0, "lower",
                                                 "C++ API p50 / worker floor p50"};
    }
    r.figures["rtt." + name + ".api_p50_us"] = api.p50;
    r.figures["rtt." + name + ".api_p99_us"] = api.p99;
    r.figures["rtt." + name + ".rpc_p50_us"] = rpc_l.p50;
    r.figures["rtt." + name + ".rpc_p99_us"] = rpc_l.p99;
    r.figures["rtt." + name + ".raw_floor_p50_us"] = raw.p50;
    if (ppe.ok && i < ppe.rtt.size())
      r.figures["rtt." + name + ".ppe_p50_us"] = ppe.rtt[i].p50;
    if (sizes[i] == 64) {
      r.ratios["rtt.64B.api_vs_raw_floor"] = {api.p50 / raw.p50, 2.0, "lower",
                                              "C++ API p50 / raw pipe floor p50"};
      if (ppe.ok)
        r.ratios["rtt.64B.api_vs_ppe"] = {api.p50 / ppe.rtt[0].p50, 0.25, "lower",
                                          "C++ API p50 / ProcessPoolExecutor p50"};
      r.ratios["rtt.64B.rpc_overhead_us"] = {rpc_l.p50 - api.p50, 30.0, "lower",
                                             "RPC p50 - C++ API p50 (us)"};
      auto py = python_client_rtt(cfg.python, cfg.client_script, default_python_dir(),
                                  gw->second, sizes[i], counts[i] / 3, 20);
      r.figures["rtt.64B.python_client_p50_us"] = py.p50;
      if (ppe.ok)
        r.ratios["rtt.64B.python_client_vs_ppe"] = {
          py.p50 / ppe.rtt[0].p50, 0.4, "lower",
          "Python client over RPC p50 / ProcessPoolExecutor p50 (both sequential)"};
    }
  }
  caf::anon_send_exit(gw->first, caf::exit_reason::kill);
}

// Large values, issue #29: the same bytes echoed one after the other by
// the C++ API, by pyvisor's Python client over RPC (a gateway in this
// process) and by ProcessPoolExecutor, each on one worker, in this run.
void payloads(caf::actor_system& sys, const bench_config& cfg, report& r) {
  std::vector<size_t> sizes{size_t{1} << 20, size_t{16} << 20, size_t{60} << 20};
  std::vector<size_t> counts = cfg.quick ? std::vector<size_t>{3, 2, 1}
                                         : std::vector<size_t>{60, 16, 6};
  auto ppe = run_ppe(cfg.python, cfg.ppe_script, sizes, cfg.quick ? 2 : 12, {1}, 1, 64);
  if (!ppe.ok)
    std::cerr << "ProcessPoolExecutor reference unavailable: " << ppe.error << "\n";
  running_pool p{sys, python_pool(cfg, 1)};
  auto gw = spawn_gateway(sys, p.pool, gateway_config{"127.0.0.1", 0, size_t{64} << 20});
  if (!gw)
    throw std::runtime_error("cannot start the gateway");
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto name = "payloads." + std::to_string(sizes[i] >> 20) + "MiB.";
    auto api = api_rtt(sys, p.pool, sizes[i], counts[i]);
    auto py = python_client_rtt(cfg.python, cfg.client_script, default_python_dir(),
                                gw->second, sizes[i], counts[i], cfg.quick ? 1 : 3);
    r.figures[name + "api_p50_us"] = api.p50;
    r.figures[name + "rpc_p50_us"] = py.p50;
    // Payload bytes each way per second of a round trip.
    r.figures[name + "api_gb_per_s"] = static_cast<double>(sizes[i]) / api.p50 / 1e3;
    if (ppe.ok) {
      r.figures[name + "ppe_p50_us"] = ppe.rtt[i].p50;
      if (i < 2)
        r.ratios[name + "rpc_vs_ppe"] = {py.p50 / ppe.rtt[i].p50, 0.5, "lower",
                                         "Python client over RPC p50 / ProcessPoolExecutor p50"};
    }
    if (i == 1)
      r.ratios[name + "api_gb_per_s"] = {static_cast<double>(sizes[i]) / api.p50 / 1e3, 2.0,
                                         "higher", "C++ API: GB/s of payload each way"};
  }
  caf::anon_send_exit(gw->first, caf::exit_reason::kill);
}

// TLS on the RPC endpoint, issue #30: pyvisor's Python client, the same
// echoes one after the other over a plaintext and a TLS gateway on one pool,
// in this run (certificates made in-process).
void tls(caf::actor_system& sys, const bench_config& cfg, report& r) {
  pyvisor::test::test_certificates certs;
  tls_settings settings;
  settings.certificate = certs.server_cert;
  settings.key = certs.server_key;
  std::string error;
  gateway_config secure{"127.0.0.1", 0, size_t{64} << 20};
  secure.tls = tls_server_context::make(settings, error);
  if (!secure.tls)
    throw std::runtime_error("cannot load the TLS bench certificates: " + error);
  running_pool p{sys, python_pool(cfg, 1)};
  auto plain = spawn_gateway(sys, p.pool, gateway_config{"127.0.0.1", 0, size_t{64} << 20});
  auto tls_gw = spawn_gateway(sys, p.pool, secure);
  if (!plain || !tls_gw)
    throw std::runtime_error("cannot start the gateways");
  std::vector<size_t> sizes{64, size_t{1} << 20};
  std::vector<size_t> counts = cfg.quick ? std::vector<size_t>{30, 3}
                                         : std::vector<size_t>{2000, 60};
  std::vector<double> targets{1.5, 1.5};
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto name = std::string{"tls."} + (sizes[i] == 64 ? "64B." : "1MiB.");
    auto warmup = cfg.quick ? 2 : 20;
    auto a = python_client_rtt(cfg.python, cfg.client_script, default_python_dir(),
                               plain->second, sizes[i], counts[i], warmup);
    auto b = python_client_rtt(cfg.python, cfg.client_script, default_python_dir(),
                               tls_gw->second, sizes[i], counts[i], warmup, certs.ca_cert);
    r.figures[name + "plain_p50_us"] = a.p50;
    r.figures[name + "tls_p50_us"] = b.p50;
    r.ratios[name + "tls_vs_plain"] = {b.p50 / a.p50, targets[i], "lower",
                                       "Python client p50 over TLS / over plaintext"};
  }
  caf::anon_send_exit(plain->first, caf::exit_reason::kill);
  caf::anon_send_exit(tls_gw->first, caf::exit_reason::kill);
}

double api_throughput(caf::actor_system& sys, const pool_actor& pool, size_t count,
                      size_t window) {
  caf::scoped_actor self{sys};
  auto req = make_execute("echo", bytes_of(64));
  auto t = now_us();
  size_t sent = 0;
  size_t received = 0;
  while (received < count) {
    while (sent < count && sent - received < window) {
      self->send(pool, req);
      ++sent;
    }
    self->receive([](payload&) {}, [](caf::error& err) {
      throw std::runtime_error("echo failed: " + to_string_readable(err));
    });
    ++received;
  }
  return static_cast<double>(count) / ((now_us() - t) / 1e6);
}

void throughput(caf::actor_system& sys, const bench_config& cfg, report& r,
                const ppe_figures& ppe) {
  std::vector<size_t> workers{1, 2, 4};
  size_t count = cfg.quick ? 300 : 20000;
  for (size_t i = 0; i < workers.size(); ++i) {
    auto n = workers[i];
    running_pool p{sys, python_pool(cfg, n)};
    auto window = 16 * n;
    api_throughput(sys, p.pool, count / 10, window); // warm-up
    auto api = api_throughput(sys, p.pool, count, window);
    auto gw = spawn_gateway(sys, p.pool, gateway_config{"127.0.0.1", 0, size_t{1} << 20});
    if (!gw)
      throw std::runtime_error("cannot start the gateway");
    double rpc_rate = 0;
    {
      rpc_client rpc{gw->second};
      rpc_rate = rpc.pipelined(bytes_of(64), count, window);
    }
    caf::anon_send_exit(gw->first, caf::exit_reason::kill);
    auto key = "throughput." + std::to_string(n) + "w";
    r.figures[key + ".api_per_s"] = api;
    r.figures[key + ".rpc_per_s"] = rpc_rate;
    if (ppe.ok && i < ppe.throughput.size())
      r.figures[key + ".ppe_per_s"] = ppe.throughput[i];
    if (n == 2 && ppe.ok)
      r.ratios["throughput.2w.api_vs_ppe"] = {api / ppe.throughput[i], 10.0, "higher",
                                              "C++ API / ProcessPoolExecutor, 2 workers"};
  }
  pipe_floor floor{cfg.python, pipe_floor::kind::raw};
  r.figures["throughput.raw_floor_1w_per_s"] = floor.throughput(64, count, 32);
  pipe_floor worker_floor{cfg.python, pipe_floor::kind::worker, default_python_dir()};
  r.figures["throughput.worker_floor_1w_per_s"] = worker_floor.throughput(64, count, 32);
  // The mock backend, as users' actor tests use it instead of real Python.
  auto mock = python_pool(cfg, 2);
  mock.backend = backend_kind::mock;
  running_pool m{sys, mock};
  api_throughput(sys, m.pool, count / 10, 32);
  auto mock_rate = api_throughput(sys, m.pool, count, 32);
  r.figures["throughput.2w.mock_api_per_s"] = mock_rate;
}

void sessions(caf::actor_system& sys, const bench_config& cfg, report& r) {
  // Bookkeeping bytes per session, measured on the index itself.
  for (size_t n : {size_t{100000}, size_t{1000000}}) {
    if (cfg.quick && n > 100000)
      continue;
    struct binding {
      uint32_t slot;
      uint32_t incarnation;
    };
    std::vector<std::string> ids;
    ids.reserve(n);
    for (size_t i = 0; i < n; ++i)
      ids.push_back("s" + std::to_string(10000000 + i)); // 9 characters
    auto before = mallinfo2().uordblks;
    {
      auto idx = std::make_unique<expiring_index<binding>>();
      for (size_t i = 0; i < n; ++i)
        idx->insert(ids[i], binding{static_cast<uint32_t>(i % 4), 0}, static_cast<int64_t>(i));
      auto after = mallinfo2().uordblks;
      auto per = static_cast<double>(after - before) / static_cast<double>(n);
      auto key = n == 100000 ? std::string{"1e5"} : std::string{"1e6"};
      r.figures["sessions.bytes_per_session_" + key] = per;
      if (n == 1000000 || cfg.quick)
        r.ratios["sessions.bytes_per_session"] = {per, 150.0, "lower",
                                                  "affinity bookkeeping bytes per session (" + key
                                                    + ")"};
    }
  }
  // Bind and lookup rates through the affinity actor (pipelined messages).
  auto aff = spawn_session_affinity(sys, session_settings{});
  caf::scoped_actor self{sys};
  auto dummy = spawn_mock_worker(sys, mock_config{});
  self->send(aff, worker_up_atom::value, uint32_t{0}, uint32_t{1}, dummy);
  size_t n = cfg.quick ? 2000 : 200000;
  auto rate = [&](bool fresh) {
    auto t = now_us();
    size_t window = 256;
    size_t sent = 0;
    size_t got = 0;
    while (got < n) {
      while (sent < n && sent - got < window) {
        self->send(aff, route_atom::value, "b" + std::to_string(fresh ? sent : sent % 1000),
                   uint32_t{0});
        ++sent;
      }
      self->receive([](uint32_t, uint32_t) {}, [](caf::error&) {});
      ++got;
    }
    return static_cast<double>(n) / ((now_us() - t) / 1e6);
  };
  r.figures["sessions.bind_per_s"] = rate(true);
  r.figures["sessions.lookup_per_s"] = rate(false);
  caf::anon_send_exit(aff, caf::exit_reason::kill);
  caf::anon_send_exit(dummy, caf::exit_reason::kill);
}

/// kill -9 of worker 1 to its replacement ready, in microseconds.
double kill_to_replacement_us(running_pool& p) {
  auto victim = p.stats().workers[0].pid;
  auto t = now_us();
  kill(static_cast<pid_t>(victim), SIGKILL);
  for (;;) {
    auto st = p.stats();
    auto& w = st.workers[0];
    if (w.state == worker_phase::ready && w.pid != victim && w.pid != 0)
      return now_us() - t;
    std::this_thread::sleep_for(1ms); // polling must not steal the CPU it measures
  }
}

void recovery(caf::actor_system& sys, const bench_config& cfg, report& r) {
  int reps = cfg.quick ? 1 : 5;
  running_pool p{sys, python_pool(cfg, 2)};
  std::vector<double> xs;
  for (int i = 0; i < reps; ++i) {
    xs.push_back(kill_to_replacement_us(p));
    std::this_thread::sleep_for(1200ms); // longer than backoff-reset: a healthy worker
  }
  auto bare = bare_startup_us(cfg, reps);
  r.figures["recovery.kill9_to_replacement_us"] = median(xs);
  r.figures["recovery.bare_interpreter_us"] = bare;
  r.ratios["recovery.vs_bare"] = {median(xs) / bare, 2.0, "lower",
                                  "kill -9 to replacement ready / bare interpreter start-up"};
}

// -- interrupts and cancels (issue #25) ----------------------------------------------

/// What a cancel and a timeout cost now that they interrupt instead of
/// killing: microseconds from the cancel to its answer and to the worker
/// being free (the next ping answered), from a timeout's answer to the
/// worker being free, against what a kill costs (replacement ready).
void interrupts(caf::actor_system& sys, const bench_config& cfg, report& r) {
  int reps = cfg.quick ? 2 : 20;
  auto pc = python_pool(cfg, 1);
  pc.worker.modules = {"pyvisor.testing"};
  running_pool p{sys, pc};
  caf::scoped_actor self{sys};
  auto ping_us = [&](double since) {
    double t = 0;
    self->request(p.pool, 10s, make_execute("ping"))
      .receive([&](payload&) { t = now_us() - since; }, [](caf::error&) {});
    return t;
  };
  std::vector<double> to_answer;
  std::vector<double> to_free;
  std::vector<double> timeout_free;
  for (int i = 0; i < reps; ++i) {
    auto req = make_execute("sleep", std::map<std::string, int>{{"ms", 5000}});
    req.tag = 1;
    self->send(p.pool, req);
    std::this_thread::sleep_for(50ms);
    auto t0 = now_us();
    self->send(p.pool, cancel_atom::value, uint64_t{1});
    self->receive([&](caf::error&) { to_answer.push_back(now_us() - t0); },
                  [&](payload&) { to_answer.push_back(now_us() - t0); });
    to_free.push_back(ping_us(t0));
    auto late = make_execute("sleep", std::map<std::string, int>{{"ms", 5000}});
    late.timeout = 100ms;
    double answered = 0;
    self->request(p.pool, 10s, late)
      .receive([&](payload&) { answered = now_us(); }, [&](caf::error&) { answered = now_us(); });
    timeout_free.push_back(ping_us(answered));
  }
  auto replacement = kill_to_replacement_us(p);
  r.figures["interrupts.cancel_to_answer_us"] = median(to_answer);
  r.figures["interrupts.cancel_to_worker_free_us"] = median(to_free);
  r.figures["interrupts.timeout_to_worker_free_us"] = median(timeout_free);
  r.figures["interrupts.kill_to_replacement_us"] = replacement;
  r.ratios["interrupts.free_after_interrupt_vs_kill"] = {
    median(timeout_free) / replacement, 0.5, "lower",
    "worker free after a timeout's interrupt / a killed worker's replacement ready"};
}

// -- streams (issue #28) ------------------------------------------------------------

/// What a stream costs against separate requests: chunks per second of 64 B
/// and 64 KiB chunks (a generator yielding bytes, taken by execute_stream)
/// against as many echo round trips of that size per second, and the time
/// from sending a stream to its first chunk against a 64 B round trip.
void stream(caf::actor_system& sys, const bench_config& cfg, report& r) {
  auto pc = python_pool(cfg, 1);
  pc.worker.modules = {"pyvisor.testing"};
  running_pool p{sys, pc};
  caf::scoped_actor self{sys};
  using args = std::map<std::string, int>;
  for (auto [size, name, n] : {std::tuple<int, const char*, int>{64, "64B", 20000},
                               std::tuple<int, const char*, int>{65536, "64KiB", 2000}}) {
    if (cfg.quick)
      n /= 100;
    auto t = now_us();
    int got = 0;
    auto res = execute_stream(sys, p.pool, make_execute("stream.count", args{{"n", n}, {"size", size}}),
                              [&](payload&) { ++got; });
    auto stream_s = (now_us() - t) / 1e6;
    if (!res || got != n)
      throw std::runtime_error("stream: " + std::to_string(got) + " of " + std::to_string(n)
                               + " chunks");
    auto echo = api_rtt(sys, p.pool, static_cast<size_t>(size), static_cast<size_t>(n));
    auto per_s = n / stream_s;
    auto echo_per_s = 1e6 / echo.p50;
    r.figures[std::string{"stream."} + name + ".chunks_per_s"] = per_s;
    r.figures[std::string{"stream."} + name + ".echo_per_s"] = echo_per_s;
    r.ratios[std::string{"stream."} + name + "_chunks_vs_requests"] = {
      per_s / echo_per_s, size == 64 ? 3.0 : 1.0, "higher",
      std::string{"chunks per second of a stream / echo round trips per second, "} + name};
  }
  int reps = cfg.quick ? 5 : 200;
  std::vector<double> first;
  for (int i = 0; i < reps; ++i) {
    auto t = now_us();
    double at = 0;
    execute_stream(sys, p.pool, make_execute("stream.count", args{{"n", 1}}), [&](payload&) {
      if (at == 0)
        at = now_us() - t;
    });
    first.push_back(at);
  }
  auto rtt64 = api_rtt(sys, p.pool, 64, cfg.quick ? 20 : 2000);
  r.figures["stream.first_chunk_us"] = median(first);
  r.figures["stream.rtt64_us"] = rtt64.p50;
  r.ratios["stream.first_chunk_vs_rtt"] = {median(first) / rtt64.p50, 2.0, "lower",
                                           "send to first chunk / a 64 B round trip (p50)"};
}

// -- fork server (issue #13) --------------------------------------------------------

/// Proportional set size of `pid` in bytes (shared pages split between the
/// processes sharing them), 0 when unreadable.
double pss_bytes(int64_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/smaps_rollup"};
  std::string key;
  double kb = 0;
  while (in >> key) {
    if (key == "Pss:") {
      in >> kb;
      return kb * 1024;
    }
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0;
}

/// The fork-server templates among this process's children.
std::vector<int64_t> template_pids() {
  std::vector<int64_t> result;
  for (auto& entry : std::filesystem::directory_iterator{"/proc"}) {
    auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    std::ifstream stat{entry.path() / "stat"};
    std::string line;
    std::getline(stat, line);
    auto close = line.rfind(')');
    if (close == std::string::npos)
      continue;
    std::istringstream rest{line.substr(close + 2)};
    std::string state;
    int64_t ppid = 0;
    rest >> state >> ppid;
    if (ppid != getpid())
      continue;
    std::ifstream cmd{entry.path() / "cmdline"};
    std::string cmdline{std::istreambuf_iterator<char>{cmd}, {}};
    if (cmdline.find("pyvisor.forkserver") != std::string::npos)
      result.push_back(std::stoll(name));
  }
  return result;
}

/// Wall time of one bare `python3 -c "import heavy_module"`.
double bare_import_us(const bench_config& cfg) {
  auto cmd = "PYTHONPATH=" + std::string{PYVISOR_BENCH_DIR} + "/python:" + default_python_dir()
             + " " + cfg.python + " -c 'import heavy_module'";
  auto t = now_us();
  if (std::system(cmd.c_str()) != 0)
    throw std::runtime_error("cannot import bench/python/heavy_module.py");
  return now_us() - t;
}

/// Start-up, recovery and memory of a pool of 4 with a heavy user module
/// (bench/python/heavy_module.py), for both start methods in the same run,
/// against one bare import of the module.
void forkserver(caf::actor_system& sys, const bench_config& cfg, report& r) {
  int reps = cfg.quick ? 1 : 3;
  std::vector<double> imports;
  for (int i = 0; i < reps; ++i)
    imports.push_back(bare_import_us(cfg));
  auto bare = median(imports);
  r.figures["forkserver.bare_import_us"] = bare;
  double one_worker_pss = 0;
  for (auto method : {start_method::spawn, start_method::fork_server}) {
    auto tag = "forkserver." + std::string{method == start_method::spawn ? "spawn" : "fork"};
    auto pc = python_pool(cfg, 4);
    pc.start = method;
    pc.worker.modules = {"heavy_module"};
    pc.worker.python_path = {PYVISOR_BENCH_DIR "/python"};
    pc.worker.startup_timeout = 60s;
    std::vector<double> ready;
    std::vector<double> recover;
    double pss_total = 0;
    for (int i = 0; i < reps; ++i) {
      auto t = now_us();
      running_pool p{sys, pc};
      ready.push_back(now_us() - t);
      if (i + 1 < reps)
        continue;
      std::this_thread::sleep_for(200ms); // let start-up garbage settle
      std::vector<double> pss;
      for (auto& w : p.stats().workers)
        pss.push_back(pss_bytes(w.pid));
      for (auto x : pss)
        pss_total += x;
      for (auto tp : template_pids())
        pss_total += pss_bytes(tp);
      if (method == start_method::spawn)
        one_worker_pss = median(pss);
      for (int k = 0; k < reps; ++k) {
        recover.push_back(kill_to_replacement_us(p));
        std::this_thread::sleep_for(1200ms); // past backoff-reset: a healthy worker
      }
    }
    r.figures[tag + ".pool4_ready_us"] = median(ready);
    r.figures[tag + ".kill9_to_replacement_us"] = median(recover);
    r.figures[tag + ".pss4_total_mib"] = pss_total / (1024 * 1024);
    if (method == start_method::spawn) {
      r.figures["forkserver.spawn.pool4_vs_import"] = median(ready) / bare;
      r.figures["forkserver.spawn.recovery_vs_import"] = median(recover) / bare;
      r.figures["forkserver.one_worker_pss_mib"] = one_worker_pss / (1024 * 1024);
      r.figures["forkserver.spawn.pss4_vs_one_worker"] = pss_total / one_worker_pss;
      continue;
    }
    r.ratios["forkserver.pool4_vs_import"] = {
      median(ready) / bare, 1.2, "lower",
      "fork-server pool of 4 ready (heavy module) / one bare import of it"};
    r.ratios["forkserver.recovery_vs_import"] = {
      median(recover) / bare, 0.05, "lower",
      "fork-server kill -9 to replacement ready / one bare import"};
    r.ratios["forkserver.pss4_vs_one_worker"] = {
      pss_total / one_worker_pss, 1.5, "lower",
      "fork-server template + 4 workers' PSS / one spawned worker's PSS"};
  }
}

/// A list of `n` small integers (one byte each), as one msgpack value.
std::vector<char> packed_ints(size_t n) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_array(static_cast<uint32_t>(n));
  for (size_t i = 0; i < n; ++i)
    pk.pack(static_cast<uint8_t>(i % 100));
  return std::vector<char>(buf.data(), buf.data() + buf.size());
}

std::vector<char> packed_bin(size_t n) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  auto body = bytes_of(n);
  pk.pack_bin(static_cast<uint32_t>(n));
  pk.pack_bin_body(body.data(), static_cast<uint32_t>(n));
  return std::vector<char>(buf.data(), buf.data() + buf.size());
}

// Large messages through a real node (issue #11): a 60 MiB binary and a list
// of 5 million small integers echoed, the node process's CPU for each, the
// cost per element of one large list against ten lists a tenth its size
// (linear framing: ~1; the old quadratic probe: ~10), and a second client's
// p99 while the large messages pass. The node's connections share one I/O
// thread, so the question is whether a large message stalls the others: the
// second client's p99 with the large messages on its own node is compared
// with its p99 while the same messages go to another node (same machine,
// same CPU contention, no shared thread).
void large(const bench_config& cfg, report& r) {
  size_t bin_size = cfg.quick ? size_t{1} << 20 : size_t{60} << 20;
  size_t ints = cfg.quick ? 50000 : 5000000;
  std::string ini = "size=2\n[rpc]\nport=0\nmax-message-size=134217728\n"
                    "max-buffered-input=268435456\nmax-pending-output=268435456\n"
                    "message-timeout=300s\n";
  node_process node{cfg.node, cfg.python, ini};
  node_process other{cfg.node, cfg.python, ini};
  rpc_client probe{node.port()};
  auto small = bytes_of(64);
  struct outcome {
    double seconds = 0;
    double cpu = 0;
  };
  auto bin = packed_bin(bin_size);
  auto list = packed_ints(ints);
  auto tenth = packed_ints(ints / 10);
  // Sends the large messages to `target` while the probe measures; returns
  // the probe's latencies and what each large echo cost `target`.
  auto phase = [&](node_process& target, std::map<std::string, outcome>& results) {
    rpc_client big{target.port()};
    auto run = [&](const std::vector<char>& arg, size_t elements, int times) {
      outcome o;
      auto cpu0 = target.cpu_seconds();
      auto t0 = now_us();
      for (int i = 0; i < times; ++i) {
        auto reply = big.echo_packed(arg);
        const auto& result = reply.get().via.array.ptr[3];
        auto got = result.type == msgpack::type::ARRAY ? result.via.array.size
                                                       : result.via.bin.size;
        if (got != elements)
          throw std::runtime_error("large echo came back with " + std::to_string(got)
                                   + " elements instead of " + std::to_string(elements));
      }
      o.seconds = (now_us() - t0) / 1e6;
      o.cpu = target.cpu_seconds() - cpu0;
      return o;
    };
    std::atomic<bool> busy{true};
    std::string failure;
    std::thread sender{[&] {
      try {
        results["bin"] = run(bin, bin_size, 1);
        results["ints"] = run(list, ints, 1);
        results["ints_tenth_x10"] = run(tenth, ints / 10, 10);
      } catch (const std::exception& e) {
        failure = e.what();
      }
      busy = false;
    }};
    std::vector<double> xs;
    while (busy) {
      auto t = now_us();
      probe.echo(small);
      xs.push_back(now_us() - t);
    }
    sender.join();
    if (!failure.empty())
      throw std::runtime_error("scenario large: " + failure);
    return summarize(xs);
  };
  std::map<std::string, outcome> control_results;
  std::map<std::string, outcome> results;
  auto control = phase(other, control_results);
  auto shared = phase(node, results);
  auto mib = std::to_string(bin_size >> 20) + "MiB";
  auto kints = std::to_string(ints / 1000) + "k";
  r.figures["large.bin" + mib + ".seconds"] = results["bin"].seconds;
  r.figures["large.bin" + mib + ".node_cpu_s"] = results["bin"].cpu;
  r.figures["large.ints" + kints + ".seconds"] = results["ints"].seconds;
  r.figures["large.ints" + kints + ".node_cpu_s"] = results["ints"].cpu;
  r.figures["large.ints" + kints + ".tenth_x10.node_cpu_s"] = results["ints_tenth_x10"].cpu;
  r.figures["large.probe_same_node_p99_us"] = shared.p99;
  r.figures["large.probe_same_node_p50_us"] = shared.p50;
  r.figures["large.probe_other_node_p99_us"] = control.p99;
  r.figures["large.probe_other_node_p50_us"] = control.p50;
  // CPU is counted in clock ticks (10 ms): the ratio needs both sides well
  // above that, which the full run's 5 million elements give.
  if (results["ints_tenth_x10"].cpu > 0)
    r.ratios["large.cpu_one_vs_ten_tenths"] = {
      results["ints"].cpu / results["ints_tenth_x10"].cpu, 2.0, "lower",
      "node CPU: one list of N ints / ten lists of N/10 (linear: ~1)"};
  if (control.p99 > 0)
    r.ratios["large.probe_p99_same_vs_other_node"] = {
      shared.p99 / control.p99, 1.5, "lower",
      "2nd client's p99, large messages on its node / on another node"};
}

// -- output -----------------------------------------------------------------------

uint16_t free_port() {
  auto fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0
      || ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error("cannot find a free port");
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// A mock-backend node publishing its pool on a free port.
struct published_node {
  uint16_t publish_port = free_port();
  node_process proc;

  published_node(const bench_config& cfg, caf::timespan latency)
    : proc(cfg.node, cfg.python,
           "size=2\nbackend=\"mock\"\nmax-in-flight=4\n[mock]\nlatency-min="
             + std::to_string(latency.count()) + "ns\nlatency-max=" + std::to_string(latency.count())
             + "ns\n[rpc]\nport=0\n[publish]\nport=" + std::to_string(publish_port) + "\n") {
  }

  std::string peer() const {
    return "127.0.0.1:" + std::to_string(publish_port);
  }
};

/// A cluster front (in this process) over `peers`, once ready.
pool_actor ready_front(caf::actor_system& sys, std::vector<std::string> peers) {
  cluster_config cc;
  cc.peers = std::move(peers);
  auto front = spawn_cluster(sys, cc);
  caf::scoped_actor self{sys};
  bool ok = false;
  self->request(front, 30s, ready_atom::value)
    .receive([&](pool_stats& st) {
      ok = std::all_of(st.nodes.begin(), st.nodes.end(),
                       [](const node_stats& n) { return n.state == node_state::up; });
    },
             [](caf::error&) {});
  if (!ok)
    throw std::runtime_error("the cluster front did not reach all its nodes");
  return front;
}

/// Issue #16: a front over 1, 2 and 3 nodes whose workers are the limit
/// (mock workers taking 20 ms: 2 x 4 in flight = 400 requests/s per node),
/// and what the front adds to one request's round trip.
void cluster(caf::actor_system& sys, const bench_config& cfg, report& r) {
  std::vector<std::unique_ptr<published_node>> nodes;
  for (int i = 0; i < 3; ++i)
    nodes.push_back(std::make_unique<published_node>(cfg, 20ms));
  double one = 0;
  for (size_t n = 1; n <= 3; ++n) {
    std::vector<std::string> peers;
    for (size_t i = 0; i < n; ++i)
      peers.push_back(nodes[i]->peer());
    auto front = ready_front(sys, peers);
    // Twice the capacity in flight: every worker always has work waiting.
    auto window = 2 * 8 * n;
    auto count = (cfg.quick ? 60 : 1200) * n;
    api_throughput(sys, front, window, window); // warm-up
    auto rate = api_throughput(sys, front, count, window);
    caf::anon_send_exit(front, caf::exit_reason::user_shutdown);
    r.figures["cluster." + std::to_string(n) + "nodes_per_s"] = rate;
    if (n == 1)
      one = rate;
    else
      r.ratios["cluster.scaling_" + std::to_string(n) + "_nodes"] = {
        rate / (static_cast<double>(n) * one), 0.8, "higher",
        "throughput through a front over " + std::to_string(n)
          + " worker-bound mock nodes / (" + std::to_string(n) + " x over 1 node)"};
  }
  nodes.clear();
  // Round trips to an idle, instant node: straight to its endpoint and
  // through a front in this process.
  published_node fast{cfg, caf::timespan{0}};
  auto count = cfg.quick ? 50 : 2000;
  auto direct = sys.middleman().remote_actor<client_actor>("127.0.0.1", fast.publish_port);
  if (!direct)
    throw std::runtime_error("cannot reach the node's endpoint: " + sys.render(direct.error()));
  auto straight = api_rtt(sys, *direct, 64, count);
  auto front = ready_front(sys, {fast.peer()});
  auto through = api_rtt(sys, front, 64, count);
  caf::anon_send_exit(front, caf::exit_reason::user_shutdown);
  r.figures["cluster.direct_p50_us"] = straight.p50;
  r.figures["cluster.front_p50_us"] = through.p50;
  r.figures["cluster.front_added_p50_us"] = through.p50 - straight.p50;
}

bool meets(const ratio& x) {
  return x.direction == "lower" ? x.value <= x.target : x.value >= x.target;
}

void print(const report& r) {
  std::cout << "\n" << std::left << std::setw(42) << "figure" << "value\n";
  for (auto& [k, v] : r.figures)
    std::cout << std::setw(42) << k << std::fixed << std::setprecision(1) << v << "\n";
  std::cout << "\n"
            << std::setw(34) << "ratio" << std::setw(10) << "value" << std::setw(12) << "target"
            << "meaning\n";
  for (auto& [k, x] : r.ratios)
    std::cout << std::setw(34) << k << std::setw(10) << std::setprecision(3) << x.value
              << std::setw(12)
              << ((x.direction == "lower" ? "<= " : ">= ") + std::to_string(x.target).substr(0, 5))
              << x.what << (meets(x) ? "" : "  (target missed)") << "\n";
}

std::string to_json(const report& r) {
  std::ostringstream os;
  os << std::setprecision(6) << "{\n  \"figures\": {";
  bool first = true;
  for (auto& [k, v] : r.figures) {
    os << (first ? "\n" : ",\n") << "    \"" << k << "\": " << v;
    first = false;
  }
  os << "\n  },\n  \"ratios\": {";
  first = true;
  for (auto& [k, x] : r.ratios) {
    os << (first ? "\n" : ",\n") << "    \"" << k << "\": {\"value\": " << x.value
       << ", \"target\": " << x.target << ", \"direction\": \"" << x.direction << "\"}";
    first = false;
  }
  os << "\n  }\n}\n";
  return os.str();
}

/// Reads the "ratios" of a file written by to_json (or a baseline, which adds
/// "tolerance"): name -> {value, target/tolerance, direction}. The format is
/// ours and flat, so a small reader suffices.
std::map<std::string, std::map<std::string, std::string>> read_ratios(const std::string& path) {
  std::ifstream in{path};
  if (!in)
    throw std::runtime_error("cannot read " + path);
  std::string text{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  std::map<std::string, std::map<std::string, std::string>> out;
  auto pos = text.find("\"ratios\"");
  if (pos == std::string::npos)
    throw std::runtime_error(path + " has no \"ratios\"");
  pos = text.find('{', pos);
  auto strip = [](std::string x) {
    x.erase(0, x.find_first_not_of(" \n\t\""));
    x.erase(x.find_last_not_of(" \n\t\"") + 1);
    return x;
  };
  for (;;) {
    pos = text.find_first_not_of(" \n\t,", pos + 1);
    if (pos == std::string::npos || text[pos] != '"')
      break; // the closing brace of "ratios", or the end
    auto end = text.find('"', pos + 1);
    auto name = text.substr(pos + 1, end - pos - 1);
    auto open = text.find('{', end);
    auto close = text.find('}', open);
    if (open == std::string::npos || close == std::string::npos)
      throw std::runtime_error(path + ": malformed entry " + name);
    std::map<std::string, std::string> fields;
    std::istringstream fs{text.substr(open + 1, close - open - 1)};
    std::string item;
    while (std::getline(fs, item, ',')) {
      auto colon = item.find(':');
      if (colon != std::string::npos)
        fields[strip(item.substr(0, colon))] = strip(item.substr(colon + 1));
    }
    out[name] = fields;
    pos = close;
  }
  return out;
}

int compare(const std::map<std::string, double>& current, const std::string& baseline_path) {
  auto baseline = read_ratios(baseline_path);
  std::vector<std::string> worse;
  size_t compared = 0;
  for (auto& [name, fields] : baseline) {
    auto i = current.find(name);
    if (i == current.end())
      continue; // scenario not run
    ++compared;
    auto base = std::stod(fields.at("value"));
    auto tol = fields.count("tolerance") ? std::stod(fields.at("tolerance")) : 0.5;
    auto lower = !fields.count("direction") || fields.at("direction") == "lower";
    auto limit = lower ? base * (1 + tol) : base * (1 - tol);
    auto bad = lower ? i->second > limit : i->second < limit;
    if (bad) {
      std::ostringstream os;
      os << "  " << name << ": " << i->second << " is worse than the baseline " << base
         << " beyond its tolerance of " << tol * 100 << " % (limit " << limit << ")";
      worse.push_back(os.str());
    }
  }
  if (compared == 0) {
    std::cout << "compare: no ratio of " << baseline_path << " was measured in this run\n";
    return 1;
  }
  if (worse.empty()) {
    std::cout << "compare: all " << compared << " ratios within tolerance of " << baseline_path
              << "\n";
    return 0;
  }
  std::cout << "compare: " << worse.size() << " ratio(s) regressed against " << baseline_path
            << ":\n";
  for (auto& w : worse)
    std::cout << w << "\n";
  return 1;
}

} // namespace

int main(int argc, char** argv) {
  bench_config cfg;
  if (auto err = cfg.parse(argc, argv, "/dev/null")) {
    std::cerr << "pyvisor-bench: " << caf::actor_system_config::render(err) << "\n";
    return 1;
  }
  if (cfg.cli_helptext_printed)
    return 0;
  if (!cfg.from_json.empty()) {
    if (cfg.compare.empty()) {
      std::cerr << "pyvisor-bench: --from-json needs --compare\n";
      return 1;
    }
    std::map<std::string, double> current;
    for (auto& [name, fields] : read_ratios(cfg.from_json))
      current[name] = std::stod(fields.at("value"));
    return compare(current, cfg.compare);
  }
  log().set_level(spdlog::level::warn);
  cfg.set("scheduler.max-threads", 2);
  cfg.load<caf::io::middleman>();
  keep_large_blocks(); // as the node does
  caf::actor_system sys{cfg};
  report r;
  auto want = [&](const std::string& s) {
    return std::find(cfg.scenarios.begin(), cfg.scenarios.end(), s) != cfg.scenarios.end();
  };
  try {
    ppe_figures ppe;
    if (want("rtt") || want("throughput")) {
      ppe = run_ppe(cfg.python, cfg.ppe_script, {64, 4096, size_t{1} << 20},
                    cfg.quick ? 20 : 1000, {1, 2, 4}, cfg.quick ? 200 : 5000, 64);
      if (!ppe.ok)
        std::cerr << "ProcessPoolExecutor reference unavailable: " << ppe.error << "\n";
      else
        r.figures["reference.ppe_startup4_us"] = ppe.startup_us;
    }
    if (want("startup"))
      startup(sys, cfg, r);
    if (want("rtt"))
      rtt(sys, cfg, r, ppe);
    if (want("throughput"))
      throughput(sys, cfg, r, ppe);
    if (want("sessions"))
      sessions(sys, cfg, r);
    if (want("recovery"))
      recovery(sys, cfg, r);
    if (want("interrupts"))
      interrupts(sys, cfg, r);
    if (want("stream"))
      stream(sys, cfg, r);
    if (want("large"))
      large(cfg, r);
    if (want("payloads"))
      payloads(sys, cfg, r);
    if (want("tls"))
      tls(sys, cfg, r);
    if (want("forkserver"))
      forkserver(sys, cfg, r);
    if (want("cluster"))
      cluster(sys, cfg, r);
  } catch (const std::exception& e) {
    std::cerr << "pyvisor-bench: " << e.what() << "\n";
    return 1;
  }
  print(r);
  if (!cfg.json.empty()) {
    std::ofstream out{cfg.json};
    out << to_json(r);
  }
  if (!cfg.compare.empty()) {
    std::map<std::string, double> current;
    for (auto& [k, x] : r.ratios)
      current[k] = x.value;
    return compare(current, cfg.compare);
  }
  return 0;
}

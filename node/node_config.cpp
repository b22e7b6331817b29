#include "node/node_config.hpp"

#include <unistd.h>

#include <spdlog/common.h>

#include "caf/config_option_set.hpp"
#include "caf/config_value.hpp"

#include "pyvisor/pool.hpp"

namespace pyvisor {

node_config::node_config() {
  add_pool_types(*this);
  // A shared queue with a condition variable wakes idle threads at once;
  // CAF's default work stealing polls with sleeps, which costs each of the
  // several actor hops of a request tens of microseconds on a quiet node.
  // --scheduler.policy=stealing restores it.
  set("scheduler.policy", caf::atom("sharing"));
  opt_group{custom_options_, "pool"}
    .add(pool_size, "size", "number of Python workers")
    .add(pool_backend, "backend", "python (real processes) or mock (in-process, for tests)")
    .add(pool_python, "python", "Python interpreter; needs the msgpack module")
    .add(pool_modules, "modules", "user modules every worker imports, e.g. [\"my_commands\"]")
    .add(pool_python_path, "python-path", "extra import paths for the workers")
    .add(pool_startup_timeout, "startup-timeout", "time a worker may take to say hello")
    .add(pool_request_timeout, "request-timeout", "deadline of a request that names none")
    .add(pool_queue_size, "queue-size", "requests that may wait for a worker")
    .add(pool_queue_share, "queue-share", "share of the queue one connection may hold")
    .add(pool_max_in_flight, "max-in-flight", "requests in flight per worker")
    .add(pool_max_requests, "max-requests", "recycle a worker after N requests (0: never)")
    .add(pool_max_age, "max-age", "recycle a worker after this long (0: never)")
    .add(pool_max_attempts, "max-attempts", "attempts of an idempotent request")
    .add(pool_retry_backoff, "retry-backoff", "delay before retrying an idempotent request")
    .add(pool_attempt_timeout, "attempt-timeout",
         "limit of one attempt of an idempotent request (0s: its whole deadline)")
    .add(pool_max_restarts, "max-restarts", "restart intensity: restarts per period")
    .add(pool_restart_period, "restart-period", "restart intensity: the period")
    .add(pool_backoff_initial, "backoff-initial", "delay before a first restart")
    .add(pool_backoff_max, "backoff-max", "longest delay before a restart (doubling)")
    .add(pool_backoff_reset, "backoff-reset", "a worker that ran this long restarts at once")
    .add(pool_healthy_after, "healthy-after",
         "a worker that answered a request and was ready this long no longer counts "
         "toward restart intensity when it dies")
    .add(pool_shutdown_timeout, "shutdown-timeout", "time a worker gets to stop")
    .add(pool_max_frame_size, "max-frame-size", "largest frame a worker may send");
  opt_group{custom_options_, "mock"}
    .add(mock_latency_min, "latency-min", "mock backend: least latency")
    .add(mock_latency_max, "latency-max", "mock backend: most latency")
    .add(mock_error_rate, "error-rate", "mock backend: share of python_error replies")
    .add(mock_crash_rate, "crash-rate", "mock backend: share of requests that crash it")
    .add(mock_hang_rate, "hang-rate", "mock backend: share of requests that hang")
    .add(mock_seed, "seed", "mock backend: random seed");
  opt_group{custom_options_, "session"}
    .add(session_timeout, "timeout", "idle time after which a session expires")
    .add(session_cleanup_interval, "cleanup-interval", "period of the expiry cleanup")
    .add(session_remember, "remember", "how long expired or lost ids are remembered")
    .add(session_mode, "mode", "strict (wait for the owner) or hint (may run elsewhere)")
    .add(session_max_sessions, "max-sessions",
         "live sessions at most (more: overloaded); as many expired ids are remembered")
    .add(session_max_id_size, "max-id-size", "longest session id in bytes (longer: bad_request)");
  opt_group{custom_options_, "rpc"}
    .add(rpc_host, "host", "address the MessagePack-RPC endpoint listens on")
    .add(rpc_port, "port", "port of the MessagePack-RPC endpoint (0: any free port)")
    .add(rpc_max_message_size, "max-message-size", "largest RPC message accepted")
    .add(rpc_max_pending_output, "max-pending-output",
         "response bytes a client may leave unread before it is disconnected")
    .add(rpc_max_connections, "max-connections",
         "open connections; more are accepted and closed at once")
    .add(rpc_max_buffered_input, "max-buffered-input",
         "bytes of unfinished messages held across all connections")
    .add(rpc_message_timeout, "message-timeout",
         "time a message may take from its first byte to its last");
  opt_group{custom_options_, "publish"}
    .add(publish_port, "port", "publish the pool to CAF applications on this port (0: off)")
    .add(publish_host, "host", "address the published pool listens on");
  opt_group{custom_options_, "node"}
    .add(node_shutdown_timeout, "shutdown-timeout", "time in-flight requests get on SIGTERM")
    .add(node_on_pool_failure, "on-pool-failure",
         "when the pool gives up: restart (it, with back-off) or exit (the node, status 3)")
    .add(node_pool_restart_backoff, "pool-restart-backoff", "delay before restarting the pool")
    .add(node_pool_restart_backoff_max, "pool-restart-backoff-max",
         "longest delay before restarting the pool (doubling per give-up in a row)")
    .add(node_pool_restart_reset, "pool-restart-reset",
         "a pool that served this long restarts after the first delay again");
  opt_group{custom_options_, "log"}
    .add(log_level, "level", "trace, debug, info, warn, error, critical or off")
    .add(log_file, "file", "log file (empty: stderr)");
}

std::string node_config::read(int argc, char** argv) {
  bool explicit_file = false;
  for (int i = 1; i < argc; ++i)
    if (std::string{argv[i]}.rfind("--config-file", 0) == 0)
      explicit_file = true;
  const char* file = "/dev/null";
  if (explicit_file) {
    file = nullptr; // CAF takes it from the command line
  } else if (access("configs/node.ini", R_OK) == 0) {
    file = "configs/node.ini";
  }
  if (auto err = parse(argc, argv, file))
    return "invalid configuration: " + render(err);
  if (explicit_file) {
    if (auto p = caf::get_if<std::string>(&content, "config-file"))
      config_file_used = *p;
  } else if (std::string{file} != "/dev/null") {
    config_file_used = file;
  }
  return validate();
}

std::string node_config::validate() const {
  // Unknown keys and values of the wrong type in the file.
  if (!config_file_used.empty()) {
    auto raw = parse_config_file(config_file_used.c_str());
    if (!raw)
      return "cannot read " + config_file_used + ": " + render(raw.error());
    for (const auto& category : *raw) {
      auto section = caf::get_if<caf::config_value::dictionary>(&category.second);
      if (section == nullptr)
        continue;
      for (const auto& kv : *section) {
        auto key = category.first + "." + kv.first;
        auto opt = custom_options_.qualified_name_lookup(category.first, kv.first);
        if (opt == nullptr)
          return config_file_used + ": unknown key '" + key + "' (see --long-help)";
        if (auto err = opt->check(kv.second))
          return config_file_used + ": invalid value " + caf::to_string(kv.second) + " for '"
                 + key + "': expected " + std::string(opt->type_name().data(), opt->type_name().size());
      }
    }
  }
  auto positive = [](caf::timespan t) { return t.count() > 0; };
  if (pool_size < 1 || pool_size > 1024)
    return "invalid value for 'pool.size': must be between 1 and 1024";
  if (pool_backend != "python" && pool_backend != "mock")
    return "invalid value for 'pool.backend': \"" + pool_backend + "\" (python or mock)";
  if (pool_python.empty())
    return "invalid value for 'pool.python': empty";
  if (!positive(pool_startup_timeout))
    return "invalid value for 'pool.startup-timeout': must be > 0";
  if (!positive(pool_request_timeout))
    return "invalid value for 'pool.request-timeout': must be > 0";
  if (pool_queue_size < 1)
    return "invalid value for 'pool.queue-size': must be >= 1";
  if (pool_queue_share <= 0 || pool_queue_share > 1)
    return "invalid value for 'pool.queue-share': must be in (0, 1]";
  if (pool_max_in_flight < 1)
    return "invalid value for 'pool.max-in-flight': must be >= 1";
  if (pool_max_attempts < 1)
    return "invalid value for 'pool.max-attempts': must be >= 1";
  if (!positive(pool_restart_period))
    return "invalid value for 'pool.restart-period': must be > 0";
  if (pool_backoff_max < pool_backoff_initial)
    return "invalid value for 'pool.backoff-max': below pool.backoff-initial";
  if (!positive(pool_shutdown_timeout))
    return "invalid value for 'pool.shutdown-timeout': must be > 0";
  if (pool_max_frame_size < 1024)
    return "invalid value for 'pool.max-frame-size': must be >= 1024";
  for (auto [rate, key] : {std::pair{mock_error_rate, "mock.error-rate"},
                           std::pair{mock_crash_rate, "mock.crash-rate"},
                           std::pair{mock_hang_rate, "mock.hang-rate"}})
    if (rate < 0 || rate > 1)
      return std::string{"invalid value for '"} + key + "': must be between 0 and 1";
  if (mock_latency_max < mock_latency_min)
    return "invalid value for 'mock.latency-max': below mock.latency-min";
  if (!positive(session_timeout))
    return "invalid value for 'session.timeout': must be > 0";
  if (!positive(session_cleanup_interval))
    return "invalid value for 'session.cleanup-interval': must be > 0";
  if (session_max_sessions == 0)
    return "invalid value for 'session.max-sessions': must be > 0";
  if (session_max_id_size == 0)
    return "invalid value for 'session.max-id-size': must be > 0";
  if (session_mode != "strict" && session_mode != "hint")
    return "invalid value for 'session.mode': \"" + session_mode + "\" (strict or hint)";
  if (rpc_max_message_size < 1024)
    return "invalid value for 'rpc.max-message-size': must be >= 1024";
  if (rpc_max_pending_output < rpc_max_message_size)
    return "invalid value for 'rpc.max-pending-output': below rpc.max-message-size";
  if (rpc_max_connections == 0)
    return "invalid value for 'rpc.max-connections': must be > 0";
  if (rpc_max_buffered_input < rpc_max_message_size)
    return "invalid value for 'rpc.max-buffered-input': below rpc.max-message-size";
  if (!positive(rpc_message_timeout))
    return "invalid value for 'rpc.message-timeout': must be > 0";
  if (!positive(node_shutdown_timeout))
    return "invalid value for 'node.shutdown-timeout': must be > 0";
  if (node_on_pool_failure != "restart" && node_on_pool_failure != "exit")
    return "invalid value for 'node.on-pool-failure': \"" + node_on_pool_failure
           + "\" (restart or exit)";
  if (!positive(node_pool_restart_backoff))
    return "invalid value for 'node.pool-restart-backoff': must be > 0";
  if (node_pool_restart_backoff_max < node_pool_restart_backoff)
    return "invalid value for 'node.pool-restart-backoff-max': below node.pool-restart-backoff";
  if (pool_healthy_after.count() < 0)
    return "invalid value for 'pool.healthy-after': must be >= 0";
  if (spdlog::level::from_str(log_level) == spdlog::level::off && log_level != "off")
    return "invalid value for 'log.level': \"" + log_level
           + "\" (trace, debug, info, warn, error, critical or off)";
  return {};
}

pool_config node_config::make_pool_config() const {
  pool_config cfg;
  cfg.size = pool_size;
  cfg.backend = pool_backend == "mock" ? backend_kind::mock : backend_kind::python;
  cfg.worker.python = pool_python;
  cfg.worker.modules = pool_modules;
  cfg.worker.python_path = pool_python_path;
  cfg.worker.startup_timeout = pool_startup_timeout;
  cfg.worker.request_timeout = pool_request_timeout;
  cfg.worker.max_frame_size = pool_max_frame_size;
  cfg.worker.stop_grace = pool_shutdown_timeout / 2;
  cfg.worker.attempt_timeout = pool_attempt_timeout;
  cfg.mock.attempt_timeout = pool_attempt_timeout;
  cfg.mock.latency_min = mock_latency_min;
  cfg.mock.latency_max = mock_latency_max;
  cfg.mock.error_rate = mock_error_rate;
  cfg.mock.crash_rate = mock_crash_rate;
  cfg.mock.hang_rate = mock_hang_rate;
  cfg.mock.seed = mock_seed;
  cfg.mock.request_timeout = pool_request_timeout;
  cfg.max_in_flight = static_cast<uint32_t>(pool_max_in_flight);
  cfg.queue_size = pool_queue_size;
  cfg.queue_share = pool_queue_share;
  cfg.request_timeout = pool_request_timeout;
  cfg.max_attempts = static_cast<uint32_t>(pool_max_attempts);
  cfg.retry_backoff = pool_retry_backoff;
  cfg.max_requests = pool_max_requests;
  cfg.max_age = pool_max_age;
  cfg.session.timeout = session_timeout;
  cfg.session.cleanup_interval = session_cleanup_interval;
  cfg.session.remember = session_remember;
  cfg.session.max_sessions = session_max_sessions;
  cfg.session.max_id_size = session_max_id_size;
  cfg.mode = session_mode == "hint" ? affinity_mode::hint : affinity_mode::strict;
  cfg.max_restarts = pool_max_restarts;
  cfg.restart_period = pool_restart_period;
  cfg.backoff = backoff_policy{pool_backoff_initial, 2.0, pool_backoff_max, 0.2,
                               pool_backoff_reset};
  cfg.shutdown_timeout = pool_shutdown_timeout;
  cfg.healthy_after = pool_healthy_after;
  cfg.restart.enabled = node_on_pool_failure == "restart";
  cfg.restart.backoff = backoff_policy{node_pool_restart_backoff, 2.0,
                                       node_pool_restart_backoff_max, 0.1,
                                       node_pool_restart_reset};
  return cfg;
}

gateway_config node_config::make_gateway_config() const {
  gateway_config cfg;
  cfg.host = rpc_host;
  cfg.port = rpc_port;
  cfg.max_message_size = rpc_max_message_size;
  cfg.max_pending_output = rpc_max_pending_output;
  cfg.max_connections = rpc_max_connections;
  cfg.max_buffered_input = rpc_max_buffered_input;
  cfg.message_timeout = rpc_message_timeout;
  return cfg;
}

} // namespace pyvisor

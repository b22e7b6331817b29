// pyvisor::node_config: the configuration of a pyvisor node, read with CAF's
// own config machinery (INI file plus command-line overrides such as
// --pool.size=8; --long-help lists every key, --dump-config shows the result).
//
// CAF 0.17 silently drops unknown keys and wrongly typed values in the file;
// validate() closes that gap: it re-reads the file, reports every unknown key
// and every value of the wrong type, then checks ranges and enumerations, and
// names the key in each message. configs/node.ini documents every key.

#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "caf/actor_system_config.hpp"

#include "node/gateway.hpp"
#include "pyvisor/pool.hpp"

namespace pyvisor {

struct node_config : caf::actor_system_config {
  // [pool]
  size_t pool_size = 2;
  std::string pool_backend = "python";
  std::string pool_python = "/usr/bin/python3";
  std::vector<std::string> pool_modules;
  std::vector<std::string> pool_python_path;
  caf::timespan pool_startup_timeout = std::chrono::seconds(10);
  caf::timespan pool_request_timeout = std::chrono::seconds(30);
  size_t pool_queue_size = 1024;
  double pool_queue_share = 0.5;
  size_t pool_max_in_flight = 4;
  size_t pool_max_requests = 0;
  caf::timespan pool_max_age{0};
  size_t pool_max_attempts = 3;
  caf::timespan pool_attempt_timeout = std::chrono::seconds(5);
  caf::timespan pool_retry_backoff = std::chrono::milliseconds(10);
  size_t pool_max_restarts = 10;
  caf::timespan pool_restart_period = std::chrono::seconds(10);
  caf::timespan pool_backoff_initial = std::chrono::milliseconds(10);
  caf::timespan pool_backoff_max = std::chrono::seconds(2);
  caf::timespan pool_backoff_reset = std::chrono::seconds(1);
  caf::timespan pool_shutdown_timeout = std::chrono::seconds(5);
  caf::timespan pool_healthy_after = std::chrono::milliseconds(50);
  size_t pool_max_frame_size = wire::default_max_frame_size;
  // [mock]
  caf::timespan mock_latency_min{0};
  caf::timespan mock_latency_max{0};
  double mock_error_rate = 0;
  double mock_crash_rate = 0;
  double mock_hang_rate = 0;
  size_t mock_seed = 1;
  // [session]
  caf::timespan session_timeout = std::chrono::minutes(5);
  caf::timespan session_cleanup_interval = std::chrono::seconds(1);
  caf::timespan session_remember = std::chrono::minutes(10);
  std::string session_mode = "strict";
  size_t session_max_sessions = 100000;
  size_t session_max_id_size = 256;
  // [rpc]
  std::string rpc_host = "127.0.0.1";
  uint16_t rpc_port = 7400;
  size_t rpc_max_message_size = size_t{64} << 20;
  size_t rpc_max_pending_output = size_t{64} << 20;
  size_t rpc_max_connections = 1024;
  size_t rpc_max_buffered_input = size_t{256} << 20;
  caf::timespan rpc_message_timeout = std::chrono::seconds(60);
  // [publish]
  uint16_t publish_port = 0;
  std::string publish_host = "127.0.0.1";
  // [node]
  caf::timespan node_shutdown_timeout = std::chrono::seconds(10);
  std::string node_on_pool_failure = "restart";
  caf::timespan node_pool_restart_backoff = std::chrono::seconds(1);
  caf::timespan node_pool_restart_backoff_max = std::chrono::seconds(30);
  caf::timespan node_pool_restart_reset = std::chrono::seconds(60);
  // [log]
  std::string log_level = "info";
  std::string log_file;

  node_config();

  /// Parses `argv` and the config file (`--config-file`, else
  /// configs/node.ini if it exists, else built-in defaults) and validates.
  /// Returns an empty string on success, else a message naming the key.
  std::string read(int argc, char** argv);

  /// The file actually read (empty: none).
  std::string config_file_used;

  pool_config make_pool_config() const;
  gateway_config make_gateway_config() const;

private:
  std::string validate() const;
};

} // namespace pyvisor

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
#include <optional>
#include <string>
#include <vector>

#include "caf/actor_system_config.hpp"

#include "node/gateway.hpp"
#include "pyvisor/client_endpoint.hpp"
#include "pyvisor/cluster.hpp"
#include "pyvisor/pool.hpp"

namespace pyvisor {

struct node_config : caf::actor_system_config {
  /// The pool's and the gateway's settings: the [pool], [mock], [session]
  /// and [rpc] keys are bound to these structs' own fields, so each key's
  /// default is the library's, written once (pool.hpp, gateway.hpp).
  pool_config pool;
  gateway_config rpc;
  // Keys whose values are names of an enum, read as text (CAF 0.17 options
  // take no enums); their defaults are taken from `pool` at construction.
  std::string pool_backend;
  std::string pool_start_method;
  std::string session_mode;
  std::string node_on_pool_failure;
  /// pool.command-timeouts as written ("command=duration"), read into
  /// pool.command_timeouts.
  std::vector<std::string> command_timeouts;
  // [rpc] beyond gateway_config's own fields: TLS, who may connect.
  bool rpc_tls = false;
  tls_settings rpc_tls_files;
  /// rpc.unix-mode as written (octal, "0660").
  std::string rpc_unix_mode = "0660";
  bool rpc_insecure = false;
  // [publish]
  uint16_t publish_port = 0;
  std::string publish_host = "127.0.0.1";
  bool publish_tls = false;
  bool publish_insecure = false;
  size_t publish_max_connections = 64;
  caf::timespan publish_handshake_timeout = std::chrono::seconds(10);
  /// 0: automatic (publish_message_limit()). Never below
  /// pool.max-frame-size and rpc.max-message-size: a front forwards
  /// requests of that size to the nodes, which answer alike.
  size_t publish_max_message_size = 0;

  /// The CAF message size the node's connections allow: the key's value,
  /// or the larger of rpc.max-message-size and pool.max-frame-size plus
  /// 1 MiB.
  size_t publish_message_limit() const;
  // [cluster]: peers, heartbeat, timeouts, back-off (the front's settings;
  // its request deadline and attempts are the pool's).
  cluster_config cluster;
  // [metrics]
  uint16_t metrics_port = 0;
  std::string metrics_host = "127.0.0.1";
  bool metrics_insecure = false;
  // [node]
  caf::timespan node_shutdown_timeout = std::chrono::seconds(10);
  // [log]
  std::string log_level = "info";
  std::string log_file;

  node_config();

  /// Parses `argv` and the config file (`--config-file`, else
  /// configs/node.ini if it exists, else built-in defaults) and validates.
  /// Returns an empty string on success, else a message naming the key.
  /// Answers --help, --long-help and --dump-config on stdout (and sets
  /// cli_helptext_printed: the caller exits).
  std::string read(int argc, char** argv);

  /// The file actually read (empty: none).
  std::string config_file_used;

  /// `pool` with the enum-valued keys applied.
  pool_config make_pool_config() const;

  /// The [rpc] keys, TLS credentials loaded (null and `error` when they
  /// cannot be, naming the key).
  std::optional<gateway_config> make_gateway_config(std::string& error) const;

  /// The [publish] keys.
  publish_config make_publish_config() const;

  /// `cluster` with the pool's request deadline and attempts.
  cluster_config make_cluster_config() const;

  /// What --help / --long-help print: pyvisor's keys with types and defaults.
  std::string help_text(bool long_help) const;

  /// What --dump-config prints: every pyvisor key's effective value, in INI
  /// syntax, and the scheduler.
  std::string dump() const;

private:
  std::string validate() const;

  /// The rpc.* keys on TLS, tokens and sockets, and what may listen off
  /// loopback (rpc, metrics).
  std::string check_rpc_access() const;

  /// A parse error as a sentence naming the option or the file's line
  /// (CAF says parser_error(not_an_option, ...)).
  std::string explain(const caf::error& err, const std::string& file) const;

  /// The pyvisor key closest to `key` if it is a near miss (a typo), else "".
  std::string near_miss(const std::string& key) const;

  /// The option `key` ("pool.size"), or null.
  const caf::config_option* option(const std::string& key) const;

  /// pyvisor's options and their built-in defaults, in declaration order.
  std::vector<std::pair<const caf::config_option*, std::string>> defaults_;
};

} // namespace pyvisor

#include "node/node_config.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <iostream>
#include <sstream>

#include <spdlog/common.h>

#include "caf/config_option_set.hpp"
#include "caf/config_value.hpp"
#include "caf/defaults.hpp"
#include "caf/pec.hpp"

#include "pyvisor/pool.hpp"

namespace pyvisor {

namespace {

constexpr caf::timespan longest_duration = std::chrono::hours(24 * 365);

/// The smallest CAF message limit that never ends a caller's connection:
/// a front forwards what its clients send, a node answers what its workers
/// return.
/// An octal file mode ("0660", "660"), at most 0777.
std::optional<unsigned> parse_mode(const std::string& text) {
  if (text.empty() || text.size() > 4)
    return std::nullopt;
  unsigned mode = 0;
  for (char c : text) {
    if (c < '0' || c > '7')
      return std::nullopt;
    mode = mode * 8 + static_cast<unsigned>(c - '0');
  }
  if (mode > 0777)
    return std::nullopt;
  return mode;
}

size_t least_message_limit(const gateway_config& rpc, const pool_config& pool) {
  return std::max(rpc.max_message_size, pool.worker.max_frame_size) + (size_t{1} << 20);
}

const char* name_of(backend_kind x) {
  return x == backend_kind::mock ? "mock" : "python";
}

const char* name_of(affinity_mode x) {
  return x == affinity_mode::hint ? "hint" : "strict";
}

} // namespace

node_config::node_config()
  : pool_backend(name_of(pool.backend)),
    pool_start_method(name_of(pool.start)),
    session_mode(name_of(pool.mode)),
    node_on_pool_failure(pool.restart.enabled ? "restart" : "exit") {
  add_cluster_types(*this);
  use_sharing_scheduler(*this);
  auto& w = pool.worker;
  opt_group{custom_options_, "pool"}
    .add(pool.size, "size", "number of Python workers (0: none, with cluster.peers)")
    .add(pool_backend, "backend", "python (real processes) or mock (in-process, for tests)")
    .add(pool_start_method, "start-method",
         "fork-server (one template imports the modules once and forks every worker) or "
         "spawn (every worker starts its own interpreter)")
    .add(w.python, "python", "Python interpreter; needs the msgpack module")
    .add(w.modules, "modules", "user modules every worker imports, e.g. [\"my_commands\"]")
    .add(w.python_path, "python-path", "extra import paths for the workers")
    .add(w.startup_timeout, "startup-timeout", "time a worker may take to say hello")
    .add(pool.request_timeout, "request-timeout", "deadline of a request that names none")
    .add(command_timeouts, "command-timeouts",
         "deadlines by command of requests that name none, e.g. [\"llm.call=120s\"] "
         "(others: request-timeout)")
    .add(pool.max_request_timeout, "max-request-timeout",
         "longest deadline a request may ask for (timeout_ms); longer ones are clamped to it")
    .add(pool.queue_size, "queue-size", "requests that may wait for a worker")
    .add(pool.queue_share, "queue-share", "share of the queue one connection may hold")
    .add(pool.max_queued_bytes, "max-queued-bytes",
         "bytes of arguments the queue may hold (0: any); more: overloaded")
    .add(pool.max_in_flight, "max-in-flight",
         "requests in flight per worker (at least worker-concurrency)")
    .add(pool.worker_concurrency, "worker-concurrency",
         "requests a worker runs at once: async handlers interleave at their awaits, sync "
         "ones run one at a time (1: one request at a time)")
    .add(pool.max_requests, "max-requests", "recycle a worker after N requests (0: never)")
    .add(pool.max_requests_jitter, "max-requests-jitter",
         "add 0..N (drawn per worker) to max-requests, so that workers are not all recycled "
         "at once")
    .add(pool.max_age, "max-age", "recycle a worker after this long (0: never)")
    .add(w.max_memory, "max-memory",
         "hard limit of a worker's data in bytes (RLIMIT_DATA; 0: none): a handler that "
         "allocates beyond it gets a MemoryError (python_error) and the worker is replaced "
         "after its requests")
    .add(pool.max_rss, "max-rss",
         "recycle a worker whose resident set exceeds this many bytes (0: never)")
    .add(pool.stopped_check, "stopped-check",
         "how often the pool looks for stopped worker processes (SIGSTOP); one stopped at "
         "two looks in a row is killed and replaced (0s: never)")
    .add(pool.max_attempts, "max-attempts", "attempts of an idempotent request")
    .add(pool.retry_backoff, "retry-backoff", "delay before retrying an idempotent request")
    .add(pool.attempt_timeout, "attempt-timeout",
         "limit of one attempt of an idempotent request (0s: its whole deadline)")
    .add(pool.interrupt_grace, "interrupt-grace",
         "time an interrupted handler (timed out or cancelled) gets to stop before its "
         "worker is killed")
    .add(pool.stream_window, "stream-window",
         "chunks of a stream sent and not yet taken by its consumer, at most (a slow "
         "consumer holds its generator back)")
    .add(pool.stream_window_bytes, "stream-window-bytes",
         "bytes of a stream sent and not yet taken by its consumer, at most (one chunk "
         "always)")
    .add(pool.take_back_after, "take-back-after",
         "a request written behind one that has run this long is taken back to run on an "
         "idle worker")
    .add(pool.max_restarts, "max-restarts", "restart intensity: restarts per period")
    .add(pool.restart_period, "restart-period", "restart intensity: the period")
    .add(pool.backoff.initial, "backoff-initial", "delay before a first restart")
    .add(pool.backoff.max, "backoff-max", "longest delay before a restart (doubling)")
    .add(pool.backoff.reset_after, "backoff-reset", "a worker that ran this long restarts at once")
    .add(pool.healthy_after, "healthy-after",
         "a worker that answered a request and was ready this long no longer counts "
         "toward restart intensity when it dies")
    .add(pool.shutdown_timeout, "shutdown-timeout", "time a worker gets to stop")
    .add(w.max_frame_size, "max-frame-size",
         "largest frame between the node and a worker, either direction")
    .add(w.shared_memory, "shared-memory",
         "bytes of each of a worker's two shared rings (to it and from it) that carry large "
         "values instead of its pipes (0: none)")
    .add(w.shared_threshold, "shared-memory-threshold",
         "a value (arguments, a result, a chunk) this large goes through the shared ring")
    .add(w.reply_spin, "reply-spin",
         "how long a worker's I/O thread busy-polls for the next reply before it sleeps "
         "(0s: never; costs CPU only while requests come one at a time)");
  auto& m = pool.mock;
  opt_group{custom_options_, "mock"}
    .add(m.latency_min, "latency-min", "mock backend: least latency")
    .add(m.latency_max, "latency-max", "mock backend: most latency")
    .add(m.error_rate, "error-rate", "mock backend: share of python_error replies")
    .add(m.crash_rate, "crash-rate", "mock backend: share of requests that crash it")
    .add(m.hang_rate, "hang-rate", "mock backend: share of requests that hang")
    .add(m.seed, "seed", "mock backend: random seed");
  auto& ss = pool.session;
  opt_group{custom_options_, "session"}
    .add(ss.timeout, "timeout", "idle time after which a session expires")
    .add(ss.cleanup_interval, "cleanup-interval", "period of the expiry cleanup")
    .add(ss.remember, "remember", "how long expired or lost ids are remembered")
    .add(session_mode, "mode", "strict (wait for the owner) or hint (may run elsewhere)")
    .add(ss.max_sessions, "max-sessions",
         "live sessions at most (more: overloaded); as many expired ids are remembered")
    .add(ss.max_id_size, "max-id-size", "longest session id in bytes (longer: bad_request)");
  opt_group{custom_options_, "rpc"}
    .add(rpc.host, "host", "address the MessagePack-RPC endpoint listens on")
    .add(rpc.port, "port", "port of the MessagePack-RPC endpoint (0: any free port)")
    .add(rpc.max_message_size, "max-message-size", "largest RPC message accepted")
    .add(rpc.max_pending_output, "max-pending-output",
         "response bytes a client may leave unread before it is disconnected")
    .add(rpc.max_pending_output_total, "max-pending-output-total",
         "response bytes all clients together may leave unread; beyond it, a client that "
         "leaves any unread gets overloaded for new requests")
    .add(rpc.max_connections, "max-connections",
         "open connections; more are accepted and closed at once")
    .add(rpc.max_buffered_input, "max-buffered-input",
         "bytes of unfinished messages held across all connections")
    .add(rpc.message_timeout, "message-timeout",
         "time a message may take from its first byte to its last")
    .add(rpc_tls, "tls", "serve the TCP endpoint over TLS (needs rpc.certificate and rpc.key)")
    .add(rpc_tls_files.certificate, "certificate", "PEM certificate chain of the TLS endpoint")
    .add(rpc_tls_files.key, "key", "PEM private key of rpc.certificate")
    .add(rpc_tls_files.key_passphrase, "key-passphrase", "passphrase of an encrypted rpc.key")
    .add(rpc_tls_files.client_ca, "client-ca",
         "require a client certificate signed by this PEM CA (with rpc.tls)")
    .add(rpc.token_file, "token-file",
         "file holding the token each connection must first give (auth [token]); re-read "
         "on SIGHUP")
    .add(rpc.handshake_timeout, "handshake-timeout",
         "time a connection has to finish its TLS handshake and its auth")
    .add(rpc.unix_path, "unix-path",
         "also listen on this Unix domain socket (with rpc.port=0: only on it)")
    .add(rpc_unix_mode, "unix-mode", "file mode of rpc.unix-path, octal")
    .add(rpc_insecure, "insecure",
         "allow an rpc.host that is not loopback without TLS and authentication");
  opt_group{custom_options_, "publish"}
    .add(publish_port, "port",
         "publish the pool (its client endpoint: execute, session end, stats) to CAF "
         "applications and cluster fronts on this port (0: off)")
    .add(publish_host, "host", "address the published pool listens on")
    .add(publish_tls, "tls",
         "publish over TLS with mutual certificate authentication (needs openssl.certificate, "
         "openssl.key and openssl.cafile)")
    .add(publish_insecure, "insecure",
         "allow publishing without TLS on an address that is not loopback")
    .add(publish_max_connections, "max-connections",
         "open connections to the published port; more are closed at once")
    .add(publish_handshake_timeout, "handshake-timeout",
         "a connection to the published port that has not sent its first message (TLS and "
         "CAF handshakes) within this long is closed")
    .add(publish_max_message_size, "max-message-size",
         "largest CAF message a peer may announce, on the published port and on this node's "
         "connections to cluster.peers (more: the connection is closed before anything is "
         "allocated); 0: the larger of rpc.max-message-size and pool.max-frame-size, plus "
         "1 MiB");
  auto& cl = cluster;
  opt_group{custom_options_, "cluster"}
    .add(cl.peers, "peers",
         "serve over these nodes' published pools too, e.g. [\"10.0.0.2:7410\"] (their "
         "publish.port); this node's own pool takes part unless pool.size=0")
    .add(cl.heartbeat, "heartbeat", "how often each node is asked for its stats and load")
    .add(cl.node_timeout, "node-timeout",
         "a node that leaves a heartbeat unanswered this long is lost")
    .add(cl.connect_timeout, "connect-timeout", "time one connection attempt may take")
    .add(cl.reconnect.initial, "reconnect-backoff", "delay before reconnecting to a lost node")
    .add(cl.reconnect.max, "reconnect-backoff-max",
         "longest delay before reconnecting (doubling per failed attempt)")
    .add(cl.session_retention, "session-retention",
         "how long an idle session stays bound to its node (keep it above the nodes' "
         "session.timeout plus session.remember)");
  opt_group{custom_options_, "metrics"}
    .add(metrics_port, "port",
         "serve Prometheus metrics on http://HOST:PORT/metrics (0: off)")
    .add(metrics_host, "host", "address the metrics endpoint listens on")
    .add(metrics_insecure, "insecure",
         "allow a metrics.host that is not loopback (plain HTTP, no authentication)");
  auto& rb = pool.restart.backoff;
  opt_group{custom_options_, "node"}
    .add(node_shutdown_timeout, "shutdown-timeout", "time in-flight requests get on SIGTERM")
    .add(node_on_pool_failure, "on-pool-failure",
         "when the pool gives up: restart (it, with back-off) or exit (the node, status 3)")
    .add(rb.initial, "pool-restart-backoff", "delay before restarting the pool")
    .add(rb.max, "pool-restart-backoff-max",
         "longest delay before restarting the pool (doubling per give-up in a row)")
    .add(rb.reset_after, "pool-restart-reset",
         "a pool that served this long restarts after the first delay again");
  opt_group{custom_options_, "log"}
    .add(log_level, "level", "trace, debug, info, warn, error, critical or off")
    .add(log_file, "file", "log file (empty: stderr)");
}

namespace {

/// The sections whose keys are pyvisor's own (the rest are CAF's).
bool ours(caf::string_view category) {
  for (const char* c :
       {"pool", "mock", "session", "rpc", "publish", "cluster", "metrics", "node", "log"})
    if (category.compare(c) == 0)
      return true;
  return false;
}

std::string str(caf::string_view x) {
  return std::string(x.data(), x.size());
}

/// The current value of an option bound to a field, as the INI syntax
/// writes it (strings quoted, lists in brackets).
std::string value_of(const caf::config_option& opt) {
  auto v = opt.get();
  if (!v)
    return "?";
  // CAF writes some durations in units its own parser refuses ("0d"): the
  // largest unit it reads that divides the value exactly.
  if (auto t = caf::get_if<caf::timespan>(&*v)) {
    auto ns = t->count();
    for (auto [unit, size] : {std::pair{"h", int64_t{3600000000000}},
                              std::pair{"min", int64_t{60000000000}},
                              std::pair{"s", int64_t{1000000000}}, std::pair{"ms", int64_t{1000000}},
                              std::pair{"us", int64_t{1000}}})
      if (ns != 0 && ns % size == 0)
        return std::to_string(ns / size) + unit;
    return ns == 0 ? "0s" : std::to_string(ns) + "ns";
  }
  return caf::to_string(*v);
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

} // namespace

std::string node_config::near_miss(const std::string& key) const {
  std::string best;
  size_t best_distance = 4; // suggest only near misses
  for (auto& o : custom_options_)
    if (ours(o.category())) {
      auto name = str(o.full_name());
      if (auto d = edit_distance(key, name); d < best_distance) {
        best_distance = d;
        best = name;
      }
    }
  return best;
}

const caf::config_option* node_config::option(const std::string& key) const {
  auto dot = key.find('.');
  if (dot == std::string::npos)
    return custom_options_.qualified_name_lookup("global", key);
  return custom_options_.qualified_name_lookup(key.substr(0, dot), key.substr(dot + 1));
}

std::string node_config::explain(const caf::error& err, const std::string& file) const {
  auto& ctx = err.context();
  if (err == caf::sec::cannot_open_file && ctx.match_elements<std::string>())
    return "cannot open the configuration file '" + ctx.get_as<std::string>(0) + "'";
  if (err.category() != caf::atom("parser"))
    return "invalid configuration: " + render(err);
  auto code = static_cast<caf::pec>(err.code());
  if (!ctx.match_elements<caf::settings>())
    return "invalid configuration: " + render(err);
  auto& where = ctx.get_as<caf::settings>(0);
  // In the file: CAF reports the position.
  auto line = caf::get_if<int64_t>(&where, "line");
  auto column = caf::get_if<int64_t>(&where, "column");
  if (line && column) {
    // CAF finds a line's unexpected end when it is already on the next one.
    if (*column == 1 && *line > 1)
      return file + ": syntax error (" + caf::to_string(code) + ") at the end of line "
             + std::to_string(*line - 1);
    return file + ": syntax error (" + caf::to_string(code) + ") at line "
           + std::to_string(*line) + ", column " + std::to_string(*column);
  }
  // On the command line: CAF names the argument.
  auto argument = caf::get_if<std::string>(&where, "argument");
  if (!argument)
    return "invalid configuration: " + render(err);
  auto& arg = *argument;
  auto eq = arg.find('=');
  auto key = arg.substr(0, eq).substr(arg.rfind("--", 0) == 0 ? 2 : 0);
  auto opt = option(key);
  if (code == caf::pec::not_an_option || opt == nullptr) {
    auto best = near_miss(key);
    return "unknown option '" + arg + "'" + (best.empty() ? "" : "; did you mean --" + best + "?")
           + " (--long-help lists every option)";
  }
  if (eq == std::string::npos)
    return "option '--" + key + "' needs a value: --" + key + "=<" + str(opt->type_name()) + ">";
  auto type = str(opt->type_name());
  if (type == "timespan")
    type = "a duration with its unit, such as 500ms, 5s or 2min";
  else if (type.rfind("list", 0) == 0)
    type += ", such as [\"a\", \"b\"]";
  return "invalid value '" + arg.substr(eq + 1) + "' for '--" + key + "': expected " + type
         + " (" + str(opt->description()) + ")";
}

std::string node_config::help_text(bool long_help) const {
  std::ostringstream out;
  out << "usage: pyvisor-node [--config-file=FILE] [--SECTION.KEY=VALUE ...]\n\n"
         "Serves a supervised pool of Python workers over MessagePack-RPC.\n"
         "Configuration: FILE if given, else configs/node.ini in the working directory if\n"
         "it exists, else the built-in defaults shown below; then the command line\n"
         "(--pool.size=8 overrides [pool] size). Scheduler: CAF's sharing scheduler\n"
         "with scheduler.max-threads threads (default: the number of cores, at least 4).\n\n"
         "  --help             this text\n"
         "  --long-help        every option with its type and default\n"
         "  --dump-config      the effective configuration (file, command line, defaults)\n"
         "  --version          the version\n";
  if (!long_help) {
    out << "\nsections: pool, mock, session, rpc, publish, cluster, metrics, node, log\n"
           "(--long-help lists their keys; configs/node.ini documents each)\n";
    return out.str();
  }
  std::string category;
  for (auto& [opt, default_value] : defaults_) {
    if (str(opt->category()) != category) {
      category = str(opt->category());
      out << "\n[" << category << "]\n";
    }
    out << "  --" << str(opt->full_name()) << "=<" << str(opt->type_name()) << ">\n      "
        << str(opt->description()) << " (default: " << default_value << ")\n";
  }
  out << "\nCAF's own options (scheduler.*, middleman.*, ...) are accepted too, e.g.\n"
         "  --scheduler.max-threads=<size>, --scheduler.policy=<'sharing' or 'stealing'>\n"
         "and for TLS (publish.tls, and the cluster's connections to its peers):\n"
         "  --openssl.certificate=<file>  this node's certificate (PEM)\n"
         "  --openssl.key=<file>          its private key (PEM)\n"
         "  --openssl.cafile=<file>       the CA that signed every node's and client's\n"
         "  --openssl.passphrase=<text>   the key's passphrase, if it has one\n";
  return out.str();
}

std::string node_config::dump() const {
  std::ostringstream out;
  // A configuration file as it is (comments are ';'): loading it gives the
  // same effective configuration, and dumping that gives this again.
  out << "; pyvisor-node's effective configuration (pyvisor-node --dump-config)\n";
  std::string category;
  for (auto& [opt, default_value] : defaults_) {
    if (str(opt->category()) != category) {
      category = str(opt->category());
      out << "\n[" << category << "]\n";
    }
    // Secrets are never printed (a dump of a configuration with one needs
    // it added back).
    if (category == "rpc" && str(opt->long_name()) == "key-passphrase") {
      if (!rpc_tls_files.key_passphrase.empty())
        out << "; key-passphrase = (set, not shown)\n";
      continue;
    }
    out << str(opt->long_name()) << " = " << value_of(*opt) << "\n";
  }
  auto policy = caf::get_or(content, "scheduler.policy", caf::atom("stealing"));
  auto threads = caf::get_or(content, "scheduler.max-threads", caf::defaults::scheduler::max_threads);
  out << "\n[scheduler]\npolicy = '" << caf::to_string(policy) << "'\nmax-threads = " << threads
      << "\n";
  // The passphrase is a secret: never printed (a dump of a configuration
  // with one needs it added back).
  auto quoted = [](const std::string& x) { return caf::to_string(caf::config_value{x}); };
  out << "\n[openssl]\ncertificate = " << quoted(openssl_certificate)
      << "\nkey = " << quoted(openssl_key) << "\ncafile = " << quoted(openssl_cafile)
      << "\ncapath = " << quoted(openssl_capath) << "\n";
  if (!openssl_passphrase.empty())
    out << "; passphrase = (set, not shown)\n";
  return out.str();
}

std::string node_config::read(int argc, char** argv) {
  // pyvisor's options with their built-in defaults, in declaration order.
  defaults_.clear();
  for (auto& opt : custom_options_)
    if (ours(opt.category()))
      defaults_.emplace_back(&opt, value_of(opt));
  // --help, --long-help and --dump-config are answered here, with pyvisor's
  // keys and values (CAF's would list its own logger, stream and OpenCL
  // options and omit defaults).
  bool help = false;
  bool long_help = false;
  bool dump_config = false;
  string_list args;
  bool explicit_file = false;
  // CAF 0.17 takes a boolean on the command line only as a bare flag
  // (--publish.tls): --key=true|false (1/0, yes/no, on/off) is applied here,
  // after the file, so that the command line can also turn a key off.
  std::vector<std::pair<const caf::config_option*, bool>> booleans;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      auto opt = option(arg.substr(2, eq - 2));
      if (opt != nullptr && opt->is_flag()) {
        auto value = arg.substr(eq + 1);
        for (auto& c : value)
          c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (value == "true" || value == "1" || value == "yes" || value == "on")
          booleans.emplace_back(opt, true);
        else if (value == "false" || value == "0" || value == "no" || value == "off")
          booleans.emplace_back(opt, false);
        else
          return "invalid value '" + arg.substr(eq + 1) + "' for '" + arg.substr(0, eq)
                 + "': expected true or false (also 1/0, yes/no, on/off)";
        continue;
      }
    }
    if (arg == "--help" || arg == "-h" || arg == "-?")
      help = true;
    else if (arg == "--long-help")
      long_help = true;
    else if (arg == "--dump-config")
      dump_config = true;
    else
      args.push_back(arg);
    if (arg.rfind("--config-file", 0) == 0)
      explicit_file = true;
  }
  if (help || long_help) {
    std::cout << help_text(long_help) << std::flush;
    cli_helptext_printed = true;
    return {};
  }
  const char* file = "/dev/null";
  if (explicit_file) {
    file = nullptr; // CAF takes it from the command line
  } else if (access("configs/node.ini", R_OK) == 0) {
    file = "configs/node.ini";
  }
  std::string file_name = file != nullptr ? file : "";
  for (auto& arg : args)
    if (arg.rfind("--config-file=", 0) == 0)
      file_name = arg.substr(14);
  if (auto err = parse(std::move(args), file))
    return explain(err, file_name);
  if (!remainder.empty())
    return "unexpected argument '" + remainder.front()
           + "' (options are --SECTION.KEY=VALUE; see --help)";
  for (auto [opt, value] : booleans) {
    opt->store(caf::config_value{value});
    caf::put(content, str(opt->full_name()), value);
  }
  // "command=duration" (INI keys cannot hold a command's dots), the
  // duration read by CAF's own parser.
  pool.command_timeouts.clear();
  for (auto& entry : command_timeouts) {
    auto eq = entry.rfind('=');
    auto value = eq == std::string::npos ? caf::expected<caf::config_value>{caf::sec::invalid_argument}
                                         : caf::config_value::parse(entry.substr(eq + 1));
    auto t = value ? caf::get_if<caf::timespan>(&*value) : nullptr;
    if (t == nullptr || eq == 0)
      return "invalid value \"" + entry
             + "\" in 'pool.command-timeouts': expected \"command=duration\", e.g. "
               "\"llm.call=120s\"";
    pool.command_timeouts[entry.substr(0, eq)] = *t;
  }
  if (explicit_file) {
    if (auto p = caf::get_if<std::string>(&content, "config-file"))
      config_file_used = *p;
  } else if (std::string{file} != "/dev/null") {
    config_file_used = file;
  }
  auto problem = validate();
  if (problem.empty() && dump_config) {
    std::cout << dump() << std::flush;
    cli_helptext_printed = true;
  }
  return problem;
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
        if (opt == nullptr) {
          auto best = near_miss(key);
          return config_file_used + ": unknown key '" + key + "'"
                 + (best.empty() ? "" : "; did you mean '" + best + "'?") + " (see --long-help)";
        }
        if (auto err = opt->check(kv.second))
          return config_file_used + ": invalid value " + caf::to_string(kv.second) + " for '"
                 + key + "': expected " + std::string(opt->type_name().data(), opt->type_name().size());
      }
    }
  }
  auto positive = [](caf::timespan t) { return t.count() > 0; };
  // Every duration, whatever it is for: not negative (none means "before
  // now"), and not beyond a year (a deadline that far is no policy, and
  // `now + it` overflows CAF's clock near 292 years).
  for (auto& opt : custom_options_) {
    if (!ours(opt.category()))
      continue;
    auto value = opt.get();
    auto t = value ? caf::get_if<caf::timespan>(&*value) : nullptr;
    if (t == nullptr)
      continue;
    if (t->count() < 0)
      return "invalid value for '" + str(opt.full_name()) + "': must not be negative";
    if (*t > longest_duration)
      return "invalid value for '" + str(opt.full_name()) + "': must be at most 8760h (365 days)";
  }
  if (!positive(pool.max_request_timeout) || pool.max_request_timeout > max_request_timeout)
    return "invalid value for 'pool.max-request-timeout': must be between 1ns and 720h (30 days)";
  if (pool.request_timeout > pool.max_request_timeout)
    return "invalid value for 'pool.request-timeout': above pool.max-request-timeout";
  for (auto& [command, timeout] : pool.command_timeouts)
    if (!positive(timeout) || timeout > pool.max_request_timeout)
      return "invalid value for 'pool.command-timeouts': \"" + command
             + "\" must be above 0 and at most pool.max-request-timeout";
  // A cleanup runs over every session: more often than this, it is all the
  // pool does.
  if (pool.session.cleanup_interval < std::chrono::milliseconds(10))
    return "invalid value for 'session.cleanup-interval': must be >= 10ms";
  // CAF's own keys that start but cannot work.
  if (caf::get_or(content, "scheduler.max-threads", caf::defaults::scheduler::max_threads) == 0)
    return "invalid value for 'scheduler.max-threads': must be >= 1 (0 runs no actor)";
  if (caf::get_or(content, "middleman.max-consecutive-reads",
                  caf::defaults::middleman::max_consecutive_reads)
      == 0)
    return "invalid value for 'middleman.max-consecutive-reads': must be >= 1 (0 reads "
           "nothing)";
  if (pool.size > 1024)
    return "invalid value for 'pool.size': must be between 1 and 1024 (or 0 with cluster.peers)";
  if (pool.size == 0 && cluster.peers.empty())
    return "invalid value for 'pool.size': 0 needs cluster.peers (a node without workers "
           "only serves over other nodes)";
  if (pool.size == 0 && publish_port != 0)
    return "invalid value for 'publish.port': this node has no pool to publish (pool.size=0)";
  for (auto& peer : cluster.peers) {
    std::string host;
    uint16_t port = 0;
    if (!parse_peer(peer, host, port))
      return "invalid value for 'cluster.peers': \"" + peer
             + "\" is not host:port (e.g. \"10.0.0.2:7410\", \"[::1]:7410\")";
  }
  if (!positive(cluster.heartbeat))
    return "invalid value for 'cluster.heartbeat': must be > 0";
  if (!positive(cluster.node_timeout))
    return "invalid value for 'cluster.node-timeout': must be > 0";
  if (!positive(cluster.connect_timeout))
    return "invalid value for 'cluster.connect-timeout': must be > 0";
  if (!positive(cluster.reconnect.initial))
    return "invalid value for 'cluster.reconnect-backoff': must be > 0";
  if (cluster.reconnect.max < cluster.reconnect.initial)
    return "invalid value for 'cluster.reconnect-backoff-max': below cluster.reconnect-backoff";
  if (!positive(cluster.session_retention))
    return "invalid value for 'cluster.session-retention': must be > 0";
  if (publish_max_connections < 1)
    return "invalid value for 'publish.max-connections': must be >= 1";
  if (!positive(publish_handshake_timeout))
    return "invalid value for 'publish.handshake-timeout': must be > 0";
  if (auto needed = least_message_limit(rpc, pool);
      publish_max_message_size != 0 && publish_max_message_size < needed)
    return "invalid value for 'publish.max-message-size': must be >= " + std::to_string(needed)
           + " (rpc.max-message-size or pool.max-frame-size plus 1 MiB)";
  // TLS: CAF's OpenSSL module throws from the actor system's constructor
  // (or from its I/O thread at the first connection) on half a setting or
  // an unreadable file; check everything here and name the key.
  bool any_tls_key = !openssl_certificate.empty() || !openssl_key.empty()
                     || !openssl_cafile.empty() || !openssl_passphrase.empty()
                     || !openssl_capath.empty();
  if (publish_port != 0) {
    if (auto problem = check_publish_config(*this, make_publish_config()); !problem.empty())
      return problem;
  } else if (publish_tls) {
    return "invalid value for 'publish.tls': publish.port is 0 (nothing is published)";
  }
  if (any_tls_key)
    if (auto problem = check_tls_files(*this); !problem.empty())
      return problem;
  if (pool_backend != "python" && pool_backend != "mock")
    return "invalid value for 'pool.backend': \"" + pool_backend + "\" (python or mock)";
  if (pool.worker.python.empty())
    return "invalid value for 'pool.python': empty";
  if (!positive(pool.worker.startup_timeout))
    return "invalid value for 'pool.startup-timeout': must be > 0";
  if (!positive(pool.request_timeout))
    return "invalid value for 'pool.request-timeout': must be > 0";
  if (pool.queue_size < 1)
    return "invalid value for 'pool.queue-size': must be >= 1";
  if (pool.queue_share <= 0 || pool.queue_share > 1)
    return "invalid value for 'pool.queue-share': must be in (0, 1]";
  if (pool.max_in_flight < 1)
    return "invalid value for 'pool.max-in-flight': must be >= 1";
  if (pool.worker_concurrency < 1 || pool.worker_concurrency > 1024)
    return "invalid value for 'pool.worker-concurrency': must be 1 to 1024";
  if (pool.stream_window < 1)
    return "invalid value for 'pool.stream-window': must be >= 1";
  if (pool.stream_window_bytes < 1)
    return "invalid value for 'pool.stream-window-bytes': must be >= 1";
  if (pool.max_attempts < 1)
    return "invalid value for 'pool.max-attempts': must be >= 1";
  if (!positive(pool.restart_period))
    return "invalid value for 'pool.restart-period': must be > 0";
  if (pool.backoff.max < pool.backoff.initial)
    return "invalid value for 'pool.backoff-max': below pool.backoff-initial";
  if (!positive(pool.shutdown_timeout))
    return "invalid value for 'pool.shutdown-timeout': must be > 0";
  if (pool.worker.reply_spin.count() < 0 || pool.worker.reply_spin > std::chrono::milliseconds(10))
    return "invalid value for 'pool.reply-spin': must be between 0s and 10ms";
  if (pool.worker.shared_memory != 0
      && (pool.worker.shared_memory < (size_t{1} << 20) || pool.worker.shared_memory > (size_t{1} << 32)))
    return "invalid value for 'pool.shared-memory': must be 0 or between 1 MiB and 4 GiB";
  if (pool.worker.shared_threshold < 1024)
    return "invalid value for 'pool.shared-memory-threshold': must be >= 1024";
  if (pool.worker.max_frame_size < 1024)
    return "invalid value for 'pool.max-frame-size': must be >= 1024";
  for (auto [rate, key] : {std::pair{pool.mock.error_rate, "mock.error-rate"},
                           std::pair{pool.mock.crash_rate, "mock.crash-rate"},
                           std::pair{pool.mock.hang_rate, "mock.hang-rate"}})
    if (rate < 0 || rate > 1)
      return std::string{"invalid value for '"} + key + "': must be between 0 and 1";
  if (pool.mock.latency_max < pool.mock.latency_min)
    return "invalid value for 'mock.latency-max': below mock.latency-min";
  if (!positive(pool.session.timeout))
    return "invalid value for 'session.timeout': must be > 0";
  if (pool.session.max_sessions == 0)
    return "invalid value for 'session.max-sessions': must be > 0";
  if (pool.session.max_id_size == 0)
    return "invalid value for 'session.max-id-size': must be > 0";
  if (start_method m; !from_string(pool_start_method, m))
    return "invalid value for 'pool.start-method': \"" + pool_start_method
           + "\" (fork-server or spawn)";
  if (session_mode != "strict" && session_mode != "hint")
    return "invalid value for 'session.mode': \"" + session_mode + "\" (strict or hint)";
  if (rpc.max_message_size < 1024)
    return "invalid value for 'rpc.max-message-size': must be >= 1024";
  if (rpc.max_pending_output < rpc.max_message_size)
    return "invalid value for 'rpc.max-pending-output': below rpc.max-message-size";
  if (rpc.max_pending_output_total < rpc.max_pending_output)
    return "invalid value for 'rpc.max-pending-output-total': below rpc.max-pending-output";
  if (rpc.max_connections == 0)
    return "invalid value for 'rpc.max-connections': must be > 0";
  if (rpc.max_buffered_input < rpc.max_message_size)
    return "invalid value for 'rpc.max-buffered-input': below rpc.max-message-size";
  if (!positive(rpc.message_timeout))
    return "invalid value for 'rpc.message-timeout': must be > 0";
  if (auto problem = check_rpc_access(); !problem.empty())
    return problem;
  if (!positive(node_shutdown_timeout))
    return "invalid value for 'node.shutdown-timeout': must be > 0";
  if (node_on_pool_failure != "restart" && node_on_pool_failure != "exit")
    return "invalid value for 'node.on-pool-failure': \"" + node_on_pool_failure
           + "\" (restart or exit)";
  if (!positive(pool.restart.backoff.initial))
    return "invalid value for 'node.pool-restart-backoff': must be > 0";
  if (pool.restart.backoff.max < pool.restart.backoff.initial)
    return "invalid value for 'node.pool-restart-backoff-max': below node.pool-restart-backoff";
  // By name only: spdlog also takes "warning" and anything else as off.
  auto levels = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  if (std::none_of(levels.begin(), levels.end(),
                   [&](const char* name) { return log_level == name; }))
    return "invalid value for 'log.level': \"" + log_level
           + "\" (trace, debug, info, warn, error, critical or off)";
  return {};
}

pool_config node_config::make_pool_config() const {
  auto cfg = pool;
  cfg.backend = pool_backend == "mock" ? backend_kind::mock : backend_kind::python;
  cfg.mode = session_mode == "hint" ? affinity_mode::hint : affinity_mode::strict;
  from_string(pool_start_method, cfg.start); // checked by validate()
  cfg.restart.enabled = node_on_pool_failure == "restart";
  return cfg;
}

std::string node_config::check_rpc_access() const {
  if (rpc.handshake_timeout.count() <= 0)
    return "invalid value for 'rpc.handshake-timeout': must be > 0";
  if (!parse_mode(rpc_unix_mode))
    return "invalid value for 'rpc.unix-mode': \"" + rpc_unix_mode
           + "\" (an octal file mode such as \"0660\", at most 0777)";
  if (!rpc_tls) {
    for (auto [key, value] : {std::pair{"rpc.certificate", &rpc_tls_files.certificate},
                              std::pair{"rpc.key", &rpc_tls_files.key},
                              std::pair{"rpc.client-ca", &rpc_tls_files.client_ca}})
      if (!value->empty())
        return std::string{"invalid value for '"} + key
               + "': it is set but rpc.tls is false (set rpc.tls=true to serve TLS)";
  } else if (rpc.port == 0 && !rpc.unix_path.empty()) {
    return "invalid value for 'rpc.tls': rpc.port=0 turns TCP off, and the Unix socket "
           "(rpc.unix-path) is never TLS";
  }
  std::string problem;
  if (!make_gateway_config(problem))
    return problem;
  bool tcp = rpc.port != 0 || rpc.unix_path.empty();
  bool authenticated = !rpc.token_file.empty() || !rpc_tls_files.client_ca.empty();
  if (tcp && !rpc_insecure && !is_loopback(rpc.host) && !(rpc_tls && authenticated)) {
    auto host = rpc.host.empty() ? std::string{"(all addresses)"} : rpc.host;
    return "rpc.host=" + host + " is not a loopback address, and serving there "
           + (rpc_tls ? std::string{"without authentication"}
                      : std::string{authenticated ? "without TLS" : "without TLS or authentication"})
           + " lets anyone who reaches it " + (rpc_tls ? "" : "read the traffic and ")
           + "run code on this node: set rpc.tls=true (with rpc.certificate, rpc.key) and "
             "rpc.client-ca or rpc.token-file, or, on a network you trust, rpc.insecure=true";
  }
  if (metrics_port != 0 && !metrics_insecure && !is_loopback(metrics_host))
    return "metrics.host=" + (metrics_host.empty() ? std::string{"(all addresses)"} : metrics_host)
           + " is not a loopback address: the metrics endpoint is plain HTTP without "
             "authentication; keep it on loopback and let a local agent or a TLS proxy expose "
             "it, or set metrics.insecure=true";
  return {};
}

std::optional<gateway_config> node_config::make_gateway_config(std::string& error) const {
  auto cfg = rpc;
  cfg.tcp = rpc.port != 0 || rpc.unix_path.empty();
  cfg.unix_mode = parse_mode(rpc_unix_mode).value_or(0660);
  if (rpc_tls) {
    cfg.tls = tls_server_context::make(rpc_tls_files, error);
    if (!cfg.tls)
      return std::nullopt;
  }
  if (!cfg.token_file.empty())
    if (auto token = read_token_file(cfg.token_file); !token) {
      error = info_of(token.error()).message;
      return std::nullopt;
    }
  return cfg;
}

size_t node_config::publish_message_limit() const {
  return publish_max_message_size != 0 ? publish_max_message_size
                                       : least_message_limit(rpc, pool);
}

publish_config node_config::make_publish_config() const {
  publish_config cfg;
  cfg.host = publish_host;
  cfg.port = publish_port;
  cfg.tls = publish_tls;
  cfg.insecure = publish_insecure;
  return cfg;
}

cluster_config node_config::make_cluster_config() const {
  auto cfg = cluster;
  cfg.request_timeout = pool.request_timeout;
  cfg.max_request_timeout = pool.max_request_timeout;
  cfg.command_timeouts = pool.command_timeouts;
  cfg.max_attempts = pool.max_attempts;
  cfg.tls = !openssl_certificate.empty();
  return cfg;
}

} // namespace pyvisor

// Unit tests of the node's configuration checks (node/node_config.hpp) for
// the limits an operator sets (issue #26) and for who may reach the RPC
// endpoint (issue #30: off loopback only with TLS and authentication): what cannot work is refused at
// start, naming the key, instead of starting and misbehaving (a deadline
// that overflows, a negative delay, a cleanup that takes a core, a
// scheduler without threads).
#include "support/catch_caf.hpp"

#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "node/node_config.hpp"
#include "support/test_certificates.hpp"

using namespace pyvisor;

namespace {

/// What the node would say about these arguments (empty: it starts).
std::string problem_with(std::vector<std::string> args) {
  args.insert(args.begin(), {"pyvisor-node", "--config-file=/dev/null"});
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  node_config cfg;
  return cfg.read(static_cast<int>(argv.size()), argv.data());
}

} // namespace

TEST_CASE("the defaults start", "[unit][node][config]") {
  CHECK(problem_with({}) == "");
}

TEST_CASE("negative durations are refused, naming the key", "[unit][node][config]") {
  for (std::string key : {"pool.max-age", "pool.attempt-timeout", "pool.retry-backoff",
                          "pool.backoff-initial", "pool.backoff-reset", "session.remember",
                          "pool.healthy-after", "cluster.session-retention"}) {
    INFO(key);
    auto problem = problem_with({"--" + key + "=-1s"});
    CHECK(problem == "invalid value for '" + key + "': must not be negative");
  }
}

TEST_CASE("durations beyond their maximum are refused, not clamped", "[unit][node][config]") {
  // 2562047h is what overflowed into ~10 ms deadlines.
  CHECK(problem_with({"--pool.request-timeout=2562047h"})
        == "invalid value for 'pool.request-timeout': must be at most 8760h (365 days)");
  CHECK(problem_with({"--pool.max-age=9600h"})
        == "invalid value for 'pool.max-age': must be at most 8760h (365 days)");
  CHECK(problem_with({"--pool.max-request-timeout=744h"})
        == "invalid value for 'pool.max-request-timeout': must be between 1ns and 720h (30 days)");
  CHECK(problem_with({"--pool.request-timeout=20min"})
        == "invalid value for 'pool.request-timeout': above pool.max-request-timeout");
  CHECK(problem_with({"--pool.request-timeout=20min", "--pool.max-request-timeout=1h"}) == "");
}

TEST_CASE("settings that start but cannot work are refused", "[unit][node][config]") {
  CHECK(problem_with({"--session.cleanup-interval=1ns"})
        == "invalid value for 'session.cleanup-interval': must be >= 10ms");
  CHECK(problem_with({"--scheduler.max-threads=0"}).find("'scheduler.max-threads'")
        != std::string::npos);
  CHECK(problem_with({"--middleman.max-consecutive-reads=0"})
          .find("'middleman.max-consecutive-reads'")
        != std::string::npos);
  CHECK(problem_with({"--scheduler.max-threads=1", "--middleman.max-consecutive-reads=1"})
        == "");
}

TEST_CASE("the published port's limits are checked", "[unit][node][config]") {
  CHECK(problem_with({"--publish.max-connections=0"})
        == "invalid value for 'publish.max-connections': must be >= 1");
  CHECK(problem_with({"--publish.handshake-timeout=0s"})
        == "invalid value for 'publish.handshake-timeout': must be > 0");
  // Below what a front forwards or a worker answers: every caller would
  // lose the connection.
  CHECK(problem_with({"--publish.max-message-size=1000000"}).find("publish.max-message-size")
        != std::string::npos);
  CHECK(problem_with({"--publish.max-message-size=1000000", "--rpc.max-message-size=4096",
                      "--pool.max-frame-size=4096", "--rpc.max-pending-output=4096",
                      "--rpc.max-buffered-input=4096"})
        == "invalid value for 'publish.max-message-size': must be >= 1052672 "
           "(rpc.max-message-size or pool.max-frame-size plus 1 MiB)");
}

namespace {

/// Reads `args` (after the program name) into `cfg`; returns the problem.
std::string read_into(node_config& cfg, std::vector<std::string> args) {
  args.insert(args.begin(), "pyvisor-node");
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  return cfg.read(static_cast<int>(argv.size()), argv.data());
}

} // namespace

TEST_CASE("command-line booleans take a value, also to turn off a file's setting",
          "[unit][node][config]") {
  for (auto [arg, expected] : {std::pair{"--publish.insecure=true", true},
                               std::pair{"--publish.insecure=1", true},
                               std::pair{"--publish.insecure=YES", true},
                               std::pair{"--publish.insecure=on", true},
                               std::pair{"--publish.insecure", true},
                               std::pair{"--publish.insecure=false", false},
                               std::pair{"--publish.insecure=0", false},
                               std::pair{"--publish.insecure=no", false}}) {
    INFO(arg);
    node_config cfg;
    REQUIRE(read_into(cfg, {"--config-file=/dev/null", arg}) == "");
    CHECK(cfg.publish_insecure == expected);
  }
  node_config bad;
  CHECK(read_into(bad, {"--config-file=/dev/null", "--publish.insecure=maybe"})
        == "invalid value 'maybe' for '--publish.insecure': expected true or false (also "
           "1/0, yes/no, on/off)");
  // A file says true, the command line says false: the command line wins.
  char path[] = "/tmp/pyvisor-config-test-XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  std::string text = "[publish]\ninsecure=true\n";
  REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  ::close(fd);
  node_config from_file;
  CHECK(read_into(from_file, {std::string{"--config-file="} + path}) == "");
  CHECK(from_file.publish_insecure);
  node_config overridden;
  CHECK(read_into(overridden, {std::string{"--config-file="} + path, "--publish.insecure=false"})
        == "");
  CHECK_FALSE(overridden.publish_insecure);
  ::unlink(path);
}

TEST_CASE("the dumped configuration (--dump-config) is a file that reproduces itself",
          "[unit][node][config]") {
  // Values that CAF would write in units of its own that its parser refuses
  // (0d), lists, strings, doubles, booleans.
  node_config first;
  REQUIRE(read_into(first, {"--config-file=/dev/null", "--pool.max-age=0s",
                            "--pool.modules=[\"a\",\"b\"]", "--pool.queue-share=0.25",
                            "--publish.insecure=true", "--session.timeout=90s",
                            "--pool.attempt-timeout=1500ms"})
          == "");
  auto dumped = first.dump();
  CHECK(dumped.rfind(";", 0) == 0);
  CHECK(dumped.find("[openssl]") != std::string::npos);
  char path[] = "/tmp/pyvisor-dump-test-XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, dumped.data(), dumped.size()) == static_cast<ssize_t>(dumped.size()));
  ::close(fd);
  node_config second;
  CHECK(read_into(second, {std::string{"--config-file="} + path}) == "");
  CHECK(second.dump() == dumped);
  CHECK(second.pool.session.timeout == std::chrono::seconds(90));
  ::unlink(path);
}

TEST_CASE("log levels are taken by their listed names only", "[unit][node][config]") {
  CHECK(problem_with({"--log.level=warn"}) == "");
  CHECK(problem_with({"--log.level=warning"}).find("'log.level'") != std::string::npos);
  CHECK(problem_with({"--log.level=arn"}).find("'log.level'") != std::string::npos);
}

TEST_CASE("per-command timeouts are read as command=duration", "[unit][node][config]") {
  node_config cfg;
  REQUIRE(read_into(cfg, {"--config-file=/dev/null",
                          "--pool.command-timeouts=[\"llm.call=120s\", \"echo=250ms\"]"})
          == "");
  CHECK(cfg.pool.command_timeouts.at("llm.call") == std::chrono::seconds(120));
  CHECK(cfg.pool.command_timeouts.at("echo") == std::chrono::milliseconds(250));
  CHECK(cfg.make_cluster_config().command_timeouts == cfg.pool.command_timeouts);
  node_config bad;
  CHECK(read_into(bad, {"--config-file=/dev/null", "--pool.command-timeouts=[\"llm.call\"]"})
          .find("expected \"command=duration\"")
        != std::string::npos);
  node_config too_long;
  CHECK(read_into(too_long, {"--config-file=/dev/null", "--pool.command-timeouts=[\"x=1h\"]"})
          .find("at most pool.max-request-timeout")
        != std::string::npos);
}

// -- who may reach the endpoint ------------------------------------------------

namespace {

bool has(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

const pyvisor::test::test_certificates& certs() {
  return pyvisor::test::shared_certificates();
}

std::string write_file(const std::string& name, const std::string& content) {
  auto path = certs().dir + "/" + name;
  std::ofstream{path, std::ios::binary} << content;
  return path;
}

} // namespace

TEST_CASE("off loopback the RPC endpoint needs TLS and authentication, or insecure",
          "[unit][node][config][tls]") {
  auto cert = "--rpc.certificate=" + certs().server_cert;
  auto key = "--rpc.key=" + certs().server_key;
  auto token_path = write_file("rules-token", "t0ken\n");
  auto token = "--rpc.token-file=" + token_path;
  auto ca = "--rpc.client-ca=" + certs().ca_cert;
  CHECK(problem_with({"--rpc.host=127.0.0.1"}) == "");
  CHECK(problem_with({"--rpc.host=::1"}) == "");
  auto plain = problem_with({"--rpc.host=0.0.0.0"});
  CHECK(has(plain, "rpc.host=0.0.0.0 is not a loopback address"));
  CHECK(has(plain, "without TLS or authentication"));
  CHECK(has(plain, "rpc.insecure=true"));
  CHECK(has(problem_with({"--rpc.host=10.1.2.3", token}), "without TLS"));
  CHECK(has(problem_with({"--rpc.host=::", "--rpc.tls", cert, key}), "rpc.host=:: is not"));
  CHECK(has(problem_with({"--rpc.host=0.0.0.0", "--rpc.tls", cert, key}),
            "without authentication"));
  CHECK(problem_with({"--rpc.host=0.0.0.0", "--rpc.tls", cert, key, token}) == "");
  CHECK(problem_with({"--rpc.host=0.0.0.0", "--rpc.tls", cert, key, ca}) == "");
  CHECK(problem_with({"--rpc.host=0.0.0.0", "--rpc.insecure"}) == "");
  // Only the Unix socket: nothing is reachable off the machine.
  CHECK(problem_with({"--rpc.host=0.0.0.0", "--rpc.port=0", "--rpc.unix-path=/tmp/x.sock"})
        == "");
  CHECK(has(problem_with({"--metrics.port=9464", "--metrics.host=0.0.0.0"}),
            "metrics.insecure=true"));
  CHECK(problem_with({"--metrics.port=9464", "--metrics.host=0.0.0.0", "--metrics.insecure"})
        == "");
  ::unlink(token_path.c_str());
}

TEST_CASE("half a TLS or socket setting stops start-up naming the key",
          "[unit][node][config][tls]") {
  CHECK(problem_with({"--rpc.certificate=" + certs().server_cert})
        == "invalid value for 'rpc.certificate': it is set but rpc.tls is false (set "
           "rpc.tls=true to serve TLS)");
  CHECK(has(problem_with({"--rpc.tls"}), "rpc.tls needs rpc.certificate"));
  CHECK(has(problem_with({"--rpc.tls", "--rpc.port=0", "--rpc.unix-path=/tmp/x.sock"}),
            "'rpc.tls': rpc.port=0 turns TCP off"));
  CHECK(has(problem_with({"--rpc.unix-mode=0999"}), "invalid value for 'rpc.unix-mode'"));
  CHECK(has(problem_with({"--rpc.unix-mode=01777"}), "invalid value for 'rpc.unix-mode'"));
  CHECK(problem_with({"--rpc.unix-mode=600"}) == "");
  CHECK(problem_with({"--rpc.handshake-timeout=0s"})
        == "invalid value for 'rpc.handshake-timeout': must be > 0");
  CHECK(has(problem_with({"--rpc.token-file=" + certs().dir + "/none"}),
            "rpc.token-file=" + certs().dir + "/none: cannot open it"));
}

TEST_CASE("the dumped configuration never prints rpc.key-passphrase", "[unit][node][config][tls]") {
  node_config cfg;
  REQUIRE(read_into(cfg, {"--config-file=/dev/null", "--rpc.tls",
                          "--rpc.certificate=" + certs().server_cert,
                          "--rpc.key=" + certs().server_key_encrypted,
                          std::string{"--rpc.key-passphrase="}
                            + pyvisor::test::test_certificates::passphrase})
          == "");
  auto dumped = cfg.dump();
  CHECK_FALSE(has(dumped, pyvisor::test::test_certificates::passphrase));
  CHECK(has(dumped, "; key-passphrase = (set, not shown)"));
  CHECK(has(dumped, "key = \"" + certs().server_key_encrypted + "\""));
}

"""Integration tests of running pyvisor-node as a service (issue #14):
Prometheus metrics scraped and parsed, systemd readiness over a fake
NOTIFY_SOCKET, and the command line (errors, --long-help, --dump-config).

Every node is killed in tearDown, even when a test fails, and its workers
are checked to be gone.

Run: PYVISOR_NODE=build/pyvisor-node python3 -m unittest -v test_operations
"""

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

import msgpack

from test_node import NODE, Node, NodeTest, Rpc, wait_gone


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    """Prometheus text format -> {(name, frozenset(labels)): value}; checks
    every line is a comment, blank, or a well-formed sample."""
    samples = {}
    types = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if m is None:
            raise AssertionError("not a sample line: %r" % line)
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        samples[(m.group(1), labels)] = float(m.group(4))
    return samples, types


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        return parse_exposition(r.read().decode())


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


class MetricsTest(NodeTest):
    def setUp(self):
        self.metrics_port = free_port()
        self.extra_ini = "[metrics]\nport=%d\n" % self.metrics_port
        super().setUp()

    def test_requests_by_command_and_outcome_and_their_latency(self):
        for i in range(5):
            self.assertEqual(self.rpc.call("execute", "echo", [i]), (None, [i]))
        for _ in range(2):
            err, _ = self.rpc.call("execute", "divide", {"a": 1, "b": 0})
            self.assertEqual(err["code"], "python_error")
        err, _ = self.rpc.call("execute", "no_such_command", [])
        self.assertEqual(err["code"], "unknown_command")
        samples, types = scrape(self.metrics_port)
        self.assertEqual(types["pyvisor_requests_total"], "counter")
        self.assertEqual(types["pyvisor_request_duration_seconds"], "histogram")
        self.assertEqual(value(samples, "pyvisor_requests_total", command="echo", outcome="ok"), 5)
        self.assertEqual(value(samples, "pyvisor_requests_total", command="divide",
                               outcome="python_error"), 2)
        self.assertEqual(value(samples, "pyvisor_requests_total", command="no_such_command",
                               outcome="unknown_command"), 1)
        # The histogram: cumulative buckets ending in +Inf = count, a sum of
        # plausible service times (an echo takes well under a second).
        buckets = sorted((float(dict(k[1])["le"]), v) for k, v in samples.items()
                         if k[0] == "pyvisor_request_duration_seconds_bucket"
                         and dict(k[1]).get("command") == "echo")
        # Bounds in seconds: 10 us to 60 s, 1-2-3-5-7 per decade, then +Inf.
        expected = [m * 10.0 ** e for e in range(-5, 1) for m in (1, 2, 3, 5, 7)]
        expected += [10, 20, 30, 60, float("inf")]
        self.assertEqual(len(buckets), len(expected))
        for (le, _), want in zip(buckets, expected):
            self.assertAlmostEqual(le, want, delta=want * 1e-9 if want != float("inf") else 0)
        counts = [v for _, v in buckets]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(buckets[-1], (float("inf"), 5))
        self.assertEqual(value(samples, "pyvisor_request_duration_seconds_count", command="echo"), 5)
        total = value(samples, "pyvisor_request_duration_seconds_sum", command="echo")
        self.assertGreater(total, 0)
        self.assertLess(total, 5)
        # The same numbers in stats, which gains per-command latency.
        err, stats = self.rpc.call("stats")
        self.assertIsNone(err)
        echo = stats["commands"]["echo"]
        self.assertEqual(echo["replies"], {"ok": 5})
        self.assertEqual(echo["histogram"]["count"], 5)
        self.assertGreater(echo["latency_us"]["p50"], 0)
        self.assertLessEqual(echo["latency_us"]["p50"], echo["latency_us"]["p99"])

    def test_pool_and_connection_gauges(self):
        other = Rpc(self.node.port)
        try:
            self.assertEqual(other.call("ping"), (None, "pong"))
            err, _ = self.rpc.call("execute", "session.put", {"key": "k", "value": 1},
                                   {"session": "s1"})
            self.assertIsNone(err)
            samples, _ = scrape(self.metrics_port)
        finally:
            other.close()
        self.assertEqual(value(samples, "pyvisor_pool_up"), 1)
        self.assertEqual(value(samples, "pyvisor_pool_state", state="serving"), 1)
        for state in ("starting", "restarting", "stopping"):
            self.assertEqual(value(samples, "pyvisor_pool_state", state=state), 0)
        self.assertEqual(value(samples, "pyvisor_workers", state="ready"), 2)
        self.assertEqual(value(samples, "pyvisor_workers", state="down"), 0)
        self.assertEqual(value(samples, "pyvisor_queue_depth"), 0)
        self.assertEqual(value(samples, "pyvisor_requests_in_flight"), 0)
        self.assertEqual(value(samples, "pyvisor_sessions"), 1)
        # setUp's connection (stats), self.rpc, other.
        self.assertEqual(value(samples, "pyvisor_rpc_connections"), 2)
        self.assertEqual(value(samples, "pyvisor_rpc_connections_accepted_total"), 3)
        self.assertEqual(value(samples, "pyvisor_rpc_connections_refused_total"), 0)
        self.assertEqual(value(samples, "pyvisor_rpc_messages_total"), 3)
        self.assertGreater(value(samples, "pyvisor_rpc_received_bytes_total"), 0)
        self.assertGreater(value(samples, "pyvisor_rpc_sent_bytes_total"), 0)
        self.assertEqual(value(samples, "pyvisor_template_up"), 1)
        for name in ("pyvisor_worker_restarts_total", "pyvisor_request_retries_total",
                     "pyvisor_template_restarts_total",
                     "pyvisor_worker_recycles_total", "pyvisor_pool_restarts_total",
                     "pyvisor_requests_requeued_total"):
            self.assertEqual(value(samples, name), 0, name)

    def test_a_killed_worker_shows_as_a_restart(self):
        os.kill(self.pids[0], signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline:
            samples, _ = scrape(self.metrics_port)
            if (value(samples, "pyvisor_worker_restarts_total") >= 1
                    and value(samples, "pyvisor_workers", state="ready") == 2):
                break
            time.sleep(0.05)
        self.assertEqual(value(samples, "pyvisor_worker_restarts_total"), 1)
        self.assertEqual(value(samples, "pyvisor_workers", state="ready"), 2)
        self.pids = self.node.pids() + self.pids

    def test_a_malformed_message_counts_as_a_connection_cut_off(self):
        s = socket.create_connection(("127.0.0.1", self.node.port))
        try:
            s.sendall(b"\xc1")  # never valid msgpack
            self.assertEqual(s.recv(100), b"")
        finally:
            s.close()
        samples, _ = scrape(self.metrics_port)
        self.assertEqual(value(samples, "pyvisor_rpc_connections_cut_off_total"), 1)

    def test_a_command_name_that_is_not_text_does_not_spoil_stats_or_metrics(self):
        # execute with a msgpack str of invalid UTF-8 as its command name.
        s = socket.create_connection(("127.0.0.1", self.node.port))
        try:
            s.sendall(b"\x94\x00\x07" + msgpack.packb("execute") + b"\x92\xd9\x02\xff\xfe\xc0")
            reply = msgpack.Unpacker(raw=True)
            reply.feed(s.recv(65536))
            msg = next(reply)
            self.assertEqual(msg[1], 7)
            self.assertEqual(msg[2][b"code"], b"bad_request")
        finally:
            s.close()
        err, stats = self.rpc.call("stats")  # decodes as text
        self.assertIsNone(err)
        self.assertEqual(stats["commands"]["(other)"]["replies"], {"bad_request": 1})
        samples, _ = scrape(self.metrics_port)  # decodes and parses as text
        self.assertEqual(value(samples, "pyvisor_requests_total", command="(other)",
                               outcome="bad_request"), 1)

    def test_metrics_port_taken_fails_start_up_readably(self):
        d = tempfile.TemporaryDirectory()
        try:
            proc = subprocess.run(
                [NODE, "--pool.backend=mock", "--rpc.port=0",
                 "--metrics.port=%d" % self.metrics_port, "--config-file=/dev/null"],
                capture_output=True, text=True, timeout=30, cwd=d.name)
        finally:
            d.cleanup()
        self.assertEqual(proc.returncode, 1)
        self.assertIn("cannot serve metrics on 127.0.0.1:%d (metrics.host, metrics.port)"
                      % self.metrics_port, proc.stderr)


class NotifySocket:
    """A fake service manager's notification socket (sd_notify(3))."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []

    def wait_for(self, key, limit=20.0):
        """Messages up to and including the first that sets `key`."""
        deadline = time.time() + limit
        while time.time() < deadline:
            for i, m in enumerate(self.messages):
                if key in m:
                    seen = self.messages[:i + 1]
                    self.messages = self.messages[i + 1:]
                    return seen
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            self.messages.append(dict(line.split("=", 1) for line in data.split("\n") if line))
        raise AssertionError("no %s within %.0f s; got %r" % (key, limit, self.messages))

    def close(self):
        self.sock.close()
        self.dir.cleanup()


class SystemdNotifyTest(unittest.TestCase):
    def start(self, env_extra, extra_ini=""):
        self.notify = NotifySocket()
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path, **env_extra)
        old = os.environ.copy()
        os.environ.clear()
        os.environ.update(env)
        try:
            self.node = Node(extra_ini)
        finally:
            os.environ.clear()
            os.environ.update(old)
        self.pids = self.node.pids()

    def tearDown(self):
        self.node.close()
        self.notify.close()
        self.assertTrue(wait_gone(self.pids), "a Python worker outlived its node")

    def test_ready_once_serving_then_status_then_stopping(self):
        self.start({})
        before = self.notify.wait_for("READY")
        # Start-up progress first; READY only once the pool is ready and the
        # port listens.
        self.assertIn("STATUS", before[0])
        self.assertNotIn("READY", before[0])
        ready = before[-1]
        self.assertEqual(ready["READY"], "1")
        self.assertTrue(ready["STATUS"].startswith("serving: 2/2 workers ready"), ready)
        rpc = Rpc(self.node.port)
        self.assertEqual(rpc.call("ping"), (None, "pong"))
        rpc.close()
        # No watchdog asked for: none sent.
        self.node.proc.send_signal(signal.SIGTERM)
        stopping = self.notify.wait_for("STOPPING")
        self.assertEqual(stopping[-1]["STOPPING"], "1")
        self.assertFalse(any("WATCHDOG" in m for m in stopping))
        self.assertEqual(self.node.proc.wait(20), 0)

    def test_watchdog_pings_at_half_the_period(self):
        self.start({"WATCHDOG_USEC": "400000"})
        self.notify.wait_for("READY")
        t0 = time.time()
        for _ in range(4):
            m = self.notify.wait_for("WATCHDOG")[-1]
            self.assertEqual(m["WATCHDOG"], "1")
            self.assertIn("serving", m["STATUS"])
        # Four pings at 200 ms apart, with room for a loaded machine.
        self.assertLess(time.time() - t0, 3.0)

    def test_workers_do_not_see_the_notify_socket(self):
        self.start({"WATCHDOG_USEC": "10000000"})
        self.notify.wait_for("READY")
        rpc = Rpc(self.node.port)
        try:
            err, env = rpc.call("execute", "env", ["NOTIFY_SOCKET", "WATCHDOG_USEC"])
        finally:
            rpc.close()
        self.assertIsNone(err)
        self.assertEqual(env, [None, None])


class CommandLineTest(unittest.TestCase):
    """The node's command line, run where no configs/node.ini is found."""

    def run_node(self, *args):
        with tempfile.TemporaryDirectory() as d:
            return subprocess.run([NODE] + list(args), capture_output=True, text=True,
                                  timeout=30, cwd=d)

    def assertRefused(self, args, message):
        proc = self.run_node(*args)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertEqual(proc.stderr.strip(), "pyvisor-node: " + message)
        self.assertEqual(proc.stdout, "")

    def test_errors_name_the_option_and_what_was_expected(self):
        self.assertRefused(["--pool.sise=3"], "unknown option '--pool.sise=3'; did you mean "
                           "--pool.size? (--long-help lists every option)")
        self.assertRefused(["--nothing.like.it=1"], "unknown option '--nothing.like.it=1' "
                           "(--long-help lists every option)")
        self.assertRefused(["--pool.size=abc"], "invalid value 'abc' for '--pool.size': expected "
                           "uint64 (number of Python workers (0: none, with cluster.peers))")
        self.assertRefused(["--pool.request-timeout=5"],
                           "invalid value '5' for '--pool.request-timeout': expected a duration "
                           "with its unit, such as 500ms, 5s or 2min (deadline of a request "
                           "that names none)")
        self.assertRefused(["--pool.size"], "option '--pool.size' needs a value: "
                           "--pool.size=<uint64>")
        self.assertRefused(["--pool.size=3", "8"], "unexpected argument '8' (options are "
                           "--SECTION.KEY=VALUE; see --help)")
        self.assertRefused(["--config-file=/nonexistent/node.ini"],
                           "cannot open the configuration file '/nonexistent/node.ini'")
        # The cluster's keys (issue #16).
        self.assertRefused(["--pool.size=0"], "invalid value for 'pool.size': 0 needs "
                           "cluster.peers (a node without workers only serves over other nodes)")
        self.assertRefused(['--cluster.peers=["10.0.0.2"]'], "invalid value for 'cluster.peers': "
                           '"10.0.0.2" is not host:port (e.g. "10.0.0.2:7410", "[::1]:7410")')
        self.assertRefused(["--pool.size=0", '--cluster.peers=["127.0.0.1:7410"]',
                            "--publish.port=7411"],
                           "invalid value for 'publish.port': this node has no pool to publish "
                           "(pool.size=0)")
        self.assertRefused(["--openssl.certificate=/nonexistent.pem"],
                           "TLS needs openssl.key (with openssl.certificate, openssl.key and "
                           "openssl.cafile: this node's certificate, its private key and the CA "
                           "that signed every node's and client's certificate)")
        with tempfile.NamedTemporaryFile("w", suffix=".ini") as f:
            f.write("[pool\nsize=3\n")
            f.flush()
            self.assertRefused(["--config-file=" + f.name],
                               f.name + ": syntax error (unexpected_newline) at the end of line 1")

    def test_long_help_shows_pyvisors_keys_with_defaults(self):
        proc = self.run_node("--long-help")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = proc.stdout
        for expected in ("--pool.size=<uint64>",
                         "number of Python workers (0: none, with cluster.peers) (default: 2)",
                         "--cluster.peers=<list of string>", "--publish.tls=<boolean>",
                         "--publish.insecure=<boolean>", "--openssl.certificate=<file>",
                         "--metrics.port=<uint16>", "--rpc.port=<uint16>", "(default: 7400)",
                         "--pool.start-method=<string>", '(default: "fork-server")',
                         "configs/node.ini in the working directory", "sharing scheduler",
                         "--dump-config", "--version"):
            self.assertIn(expected, out)
        for caf_only in ("logger.", "opencl", "stream.", "caf#", "caf-application.ini"):
            self.assertNotIn(caf_only, out)
        short = self.run_node("--help")
        self.assertEqual(short.returncode, 0)
        self.assertIn("--long-help", short.stdout)
        self.assertNotIn("--pool.size=<uint64>", short.stdout)

    def test_dump_config_shows_the_effective_configuration(self):
        with tempfile.NamedTemporaryFile("w", suffix=".ini") as f:
            f.write("[pool]\nmax-in-flight=9\n[session]\ntimeout=3s\n")
            f.flush()
            proc = self.run_node("--config-file=" + f.name, "--pool.size=7", "--dump-config")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = proc.stdout
        sections = {}
        current = None
        for line in out.splitlines():
            if line.startswith("["):
                current = line.strip("[]")
                sections[current] = {}
            elif " = " in line and current:
                k, v = line.split(" = ", 1)
                sections[current][k] = v
        self.assertEqual(sections["pool"]["size"], "7")             # command line
        self.assertEqual(sections["pool"]["max-in-flight"], "9")    # file
        self.assertEqual(sections["session"]["timeout"], "3s")      # file
        self.assertEqual(sections["pool"]["queue-size"], "1024")    # default
        self.assertEqual(sections["metrics"]["port"], "0")          # default
        self.assertEqual(sections["scheduler"]["policy"], "'sharing'")
        self.assertNotIn("listening", out)
        # It is a configuration file: loaded, it dumps the same again.
        with tempfile.NamedTemporaryFile("w", suffix=".ini") as d:
            d.write(out)
            d.flush()
            again = self.run_node("--config-file=" + d.name, "--dump-config")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(again.stdout, out)

    def test_a_pyvisor_folder_where_the_node_starts_does_not_shadow_the_package(self):
        with tempfile.TemporaryDirectory() as d:
            os.mkdir(os.path.join(d, "pyvisor"))
            with open(os.path.join(d, "pyvisor", "__init__.py"), "w") as f:
                f.write("raise SystemExit('the wrong pyvisor was imported')\n")
            for method in ("fork-server", "spawn"):
                proc = subprocess.Popen([NODE, "--config-file=/dev/null", "--rpc.port=0",
                                         "--pool.size=1", "--pool.start-method=" + method],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, cwd=d)
                try:
                    line = proc.stdout.readline()
                    self.assertIn("listening on", line, method)
                    rpc = Rpc(int(line.strip().rsplit(":", 1)[1]), timeout=10)
                    self.assertEqual(rpc.call("execute", "echo", 1), (None, 1))
                    rpc.close()
                finally:
                    proc.kill()
                    proc.communicate()

    def test_a_missing_python_package_says_where_it_was_looked_for(self):
        env = dict(os.environ, PYVISOR_PYTHON_DIR="/nonexistent/pyvisor-python")
        for method in ("fork-server", "spawn"):
            with tempfile.TemporaryDirectory() as d:
                proc = subprocess.run([NODE, "--config-file=/dev/null", "--rpc.port=0",
                                       "--pool.size=1", "--pool.start-method=" + method],
                                      capture_output=True, text=True, timeout=60, cwd=d, env=env)
            self.assertEqual(proc.returncode, 1, method)
            self.assertIn("is in none of: /nonexistent/pyvisor-python", proc.stderr)
            self.assertIn("set PYVISOR_PYTHON_DIR", proc.stderr)

    def test_version(self):
        proc = self.run_node("--version")
        self.assertEqual(proc.returncode, 0)
        self.assertRegex(proc.stdout, r"^pyvisor-node \d+\.\d+\.\d+\n$")


if __name__ == "__main__":
    unittest.main()

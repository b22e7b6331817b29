"""Integration tests of the cluster (issue #16): a front node over three
nodes, each a separate pyvisor-node process with real Python workers on
loopback ports; node loss under load, rejoin, TLS with certificates made at
test time by the openssl CLI, and the refusal to publish in the clear beyond
loopback. The attacks on a published node are replayed by a CAF program
(tests/integration/actors/cluster/endpoint_attack_test.cpp).

Every process is killed in tearDown, even when a test fails, and every
worker pid a node reported is checked to be gone.

Run: PYVISOR_NODE=build/pyvisor-node python3 -m unittest -v test_cluster
"""

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

from test_node import NODE, TEST_PY, Rpc, wait_gone


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ini(sections):
    out = []
    for name, keys in sections.items():
        out.append("[%s]" % name)
        for k, v in keys.items():
            out.append("%s=%s" % (k, v))
    return "\n".join(out) + "\n"


def worker_sections(size=2):
    return {
        "pool": {"size": size, "modules": '["pyvisor.testing", "sample_commands"]',
                 "python-path": '["%s"]' % TEST_PY, "shutdown-timeout": "2s"},
        "rpc": {"port": 0},
        "log": {"level": '"info"'},
    }


class Proc:
    """A pyvisor-node process; `sections` is its whole configuration."""

    def __init__(self, sections, expect_start=True, preexec=None):
        self.dir = tempfile.TemporaryDirectory()
        path = os.path.join(self.dir.name, "node.ini")
        with open(path, "w") as f:
            f.write(ini(sections))
        self.log = open(os.path.join(self.dir.name, "node.log"), "w+")
        self.proc = subprocess.Popen([NODE, "--config-file=" + path], stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, preexec_fn=preexec)
        self.port = None
        if expect_start:
            line = self.proc.stdout.readline()
            if "listening on" not in line:
                log = self.read_log()
                self.close()
                raise RuntimeError("node did not start: %r\n%s" % (line, log))
            self.port = int(line.strip().rsplit(":", 1)[1])

    def read_log(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stats(self):
        rpc = Rpc(self.port)
        try:
            err, st = rpc.call("stats")
            assert err is None, err
            return st
        finally:
            rpc.close()

    def pids(self):
        return [w["pid"] for w in self.stats()["workers"] if w["pid"]]

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.log.close()
        self.dir.cleanup()


def wait_for(predicate, limit=15.0, step=0.05):
    deadline = time.time() + limit
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


class ClusterTest(unittest.TestCase):
    """Three worker nodes publishing their pools, and a front over them."""

    front_cluster = {"heartbeat": "200ms", "node-timeout": "1s", "reconnect-backoff": "100ms",
                     "reconnect-backoff-max": "500ms"}

    def setUp(self):
        self.procs = []
        self.pids = []
        self.publish_ports = [free_port() for _ in range(3)]
        self.nodes = [self.start_node(p) for p in self.publish_ports]
        self.front = self.start_front()

    def tearDown(self):
        for p in self.procs:
            p.close()
        self.assertTrue(wait_gone(self.pids), "a Python worker outlived its node")

    def node_sections(self, publish_port):
        s = worker_sections()
        s["publish"] = {"port": publish_port}
        return s

    def start_node(self, publish_port):
        node = Proc(self.node_sections(publish_port))
        self.procs.append(node)
        self.pids += node.pids()
        return node

    def front_sections(self):
        self.metrics_port = free_port()
        return {
            "pool": {"size": 0},
            "rpc": {"port": 0},
            "metrics": {"port": self.metrics_port},
            "cluster": dict(self.front_cluster,
                            peers="[%s]" % ", ".join('"127.0.0.1:%d"' % p
                                                     for p in self.publish_ports)),
            "log": {"level": '"info"'},
        }

    def start_front(self):
        front = Proc(self.front_sections())
        self.procs.append(front)
        return front

    def node_of(self, rpc, opts):
        """The index of the node whose worker ran a request with `opts`."""
        err, info = rpc.call("execute", "worker.info", None, opts)
        self.assertIsNone(err)
        for i, node in enumerate(self.nodes):
            if node.proc.poll() is None and info["pid"] in node.pids():
                return i
        self.fail("worker pid %s is on no node" % info["pid"])

    def wait_nodes(self, states):
        return wait_for(lambda: [n["state"] for n in self.front.stats()["nodes"]] == states)


class FrontTest(ClusterTest):
    def test_serves_execute_sessions_and_stats_over_three_nodes(self):
        rpc = Rpc(self.front.port)
        self.assertEqual(rpc.call("ping"), (None, "pong"))
        self.assertEqual(rpc.call("execute", "echo", {"a": [1, 2]}), (None, {"a": [1, 2]}))
        # Sessions: each keeps its node (and its state there).
        opts = {"session": "s1"}
        self.assertIsNone(rpc.call("execute", "session.put", {"key": "k", "value": 7}, opts)[0])
        home = self.node_of(rpc, opts)
        for _ in range(5):
            self.assertEqual(rpc.call("execute", "session.get", {"key": "k"}, opts), (None, 7))
            self.assertEqual(self.node_of(rpc, opts), home)
        self.assertEqual(rpc.call("session.end", "s1"), (None, True))
        self.assertEqual(rpc.call("execute", "session.get", {"key": "k"}, opts), (None, None))
        # Load spreads: 60 requests in flight at once reach every node.
        ids = [rpc.send("execute", ["sleep", {"ms": 50}]) for _ in range(60)]
        for i in ids:
            self.assertEqual(rpc.wait(i)[0], None)
        err, st = rpc.call("stats")
        self.assertIsNone(err)
        self.assertEqual(len(st["nodes"]), 3)
        for n in st["nodes"]:
            self.assertEqual(n["state"], "up", st["nodes"])
            self.assertEqual(n["workers"], 2)
            self.assertGreater(n["served"], 5, st["nodes"])
            for key in ("peer", "in_flight", "restarts"):
                self.assertIn(key, n)
        self.assertEqual(len(st["workers"]), 6)
        self.assertEqual(st["capacity"], 6 * 4)
        self.assertGreaterEqual(st["replies"]["ok"], 60)
        rpc.close()
        scrape = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port,
                                        timeout=10).read().decode()
        self.assertIn('pyvisor_cluster_nodes{state="up"} 3', scrape)
        self.assertIn('pyvisor_cluster_nodes{state="lost"} 0', scrape)

    def test_sigkill_of_a_node_under_load_loses_nothing_and_it_rejoins(self):
        victim = 1
        rpc = Rpc(self.front.port)
        # Sessions until two live on the victim (binding is by load).
        on_victim = []
        n = 0
        while len(on_victim) < 2 and n < 60:
            n += 1
            opts = {"session": "v%d" % n}
            self.assertIsNone(rpc.call("execute", "counter.incr", None, opts)[0])
            if self.node_of(rpc, opts) == victim:
                on_victim.append(opts)
        self.assertEqual(len(on_victim), 2)
        # 8 clients sending idempotent requests; the victim is SIGKILLed
        # while they run.
        results = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(k):
            c = Rpc(self.front.port, timeout=30)
            mine = []
            i = 0
            try:
                while not stop.is_set():
                    i += 1
                    err, res = c.call("execute", "echo", [k, i], {"idempotent": True})
                    mine.append("ok" if err is None and res == [k, i] else err["code"])
            except Exception as e:  # a lost reply or connection: counted, never hidden
                mine.append("lost: %r" % e)
            finally:
                c.close()
                with lock:
                    results.extend(mine)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        dead_pids = self.nodes[victim].pids()
        self.nodes[victim].proc.kill()
        self.nodes[victim].proc.wait()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(60)
        self.assertTrue(wait_gone(dead_pids), "the killed node's workers outlived it")
        lost = [r for r in results if r.startswith("lost")]
        ok = results.count("ok")
        self.assertEqual(lost, [])
        self.assertGreater(len(results), 200)
        self.assertGreaterEqual(ok / len(results), 0.99,
                                {r: results.count(r) for r in set(results)})
        st = self.front.stats()
        self.assertEqual(st["nodes"][victim]["state"], "lost")
        # Its sessions answer session_lost, in words, never CAF's; the others
        # go on.
        for opts in on_victim:
            err, _ = rpc.call("execute", "counter.incr", None, opts)
            self.assertEqual(err and err["code"], "session_lost", err)
            for caf_text in ("exit_reason", "remote_link", "sec::", "system_error", "caf::"):
                self.assertNotIn(caf_text, err["message"])
        # Every answer the front made itself is counted with its command.
        commands = self.front.stats()["commands"]
        self.assertGreaterEqual(commands["counter.incr"]["replies"].get("session_lost", 0), 2,
                                commands.get("counter.incr"))
        # Restarted on the same port, it rejoins and gets work again.
        self.nodes[victim] = self.start_node(self.publish_ports[victim])
        self.assertTrue(self.wait_nodes(["up", "up", "up"]), self.front.stats()["nodes"])
        self.assertEqual(self.front.stats()["nodes"][victim]["restarts"], 1)
        before = self.front.stats()["nodes"][victim]["served"]
        ids = [rpc.send("execute", ["sleep", {"ms": 50}]) for _ in range(30)]
        for i in ids:
            self.assertIsNone(rpc.wait(i)[0])
        self.assertGreater(self.front.stats()["nodes"][victim]["served"], before)
        self.assertIn("rejoined", self.front.read_log())
        rpc.close()

    def test_a_stopped_node_is_lost_within_node_timeout_and_rejoins(self):
        rpc = Rpc(self.front.port, timeout=10)
        victim = self.nodes[2]
        # Requests in flight on it when it stops are retried elsewhere.
        ids = [rpc.send("execute", ["sleep", {"ms": 300}, {"idempotent": True}])
               for _ in range(12)]
        time.sleep(0.1)
        stopped_at = time.time()
        os.kill(victim.proc.pid, signal.SIGSTOP)
        try:
            for i in ids:
                self.assertIsNone(rpc.wait(i)[0])
            self.assertTrue(wait_for(lambda: self.front.stats()["nodes"][2]["state"] == "lost"))
            # heartbeat (200ms) + node-timeout (1s), with slack for a loaded machine
            self.assertLess(time.time() - stopped_at, 4.0)
            self.assertIn("did not answer its heartbeat", self.front.read_log())
            for k in range(20):
                self.assertEqual(rpc.call("execute", "echo", k), (None, k))
        finally:
            os.kill(victim.proc.pid, signal.SIGCONT)
        self.assertTrue(self.wait_nodes(["up", "up", "up"]), self.front.stats()["nodes"])
        self.assertEqual(self.front.stats()["nodes"][2]["restarts"], 1)
        rpc.close()

    def test_losing_every_node_gives_unavailable_never_a_hang(self):
        rpc = Rpc(self.front.port, timeout=10)
        for node in self.nodes:
            node.proc.kill()
            node.proc.wait()
        self.assertTrue(self.wait_nodes(["lost", "lost", "lost"]))
        err, _ = rpc.call("ping")
        self.assertEqual(err["code"], "unavailable")
        err, _ = rpc.call("execute", "echo", 1, {"idempotent": True})
        self.assertEqual(err["code"], "unavailable")
        self.assertIn("lost", err["message"])
        rpc.close()


class SessionExpiryTest(ClusterTest):
    """Expiry stays the nodes' own: session_expired comes through unchanged."""

    def node_sections(self, publish_port):
        s = super().node_sections(publish_port)
        s["session"] = {"timeout": "300ms", "cleanup-interval": "50ms", "remember": "10s"}
        return s

    def test_an_idle_session_expires_on_its_node(self):
        rpc = Rpc(self.front.port)
        opts = {"session": "short"}
        self.assertIsNone(rpc.call("execute", "session.put", {"key": "k", "value": 1}, opts)[0])
        self.assertEqual(rpc.call("execute", "session.get", {"key": "k"}, opts), (None, 1))
        time.sleep(0.6)
        err, _ = rpc.call("execute", "session.get", {"key": "k"}, opts)
        self.assertEqual(err and err["code"], "session_expired", err)
        # Still bound to its node, which remembers the id: expired again.
        err, _ = rpc.call("execute", "session.get", {"key": "k"}, opts)
        self.assertEqual(err and err["code"], "session_expired", err)
        rpc.close()


class FrontWithOwnPoolTest(ClusterTest):
    """A front whose own pool takes part (pool.size > 0 with cluster.peers)."""

    def start_front(self):
        sections = self.front_sections()
        sections["pool"] = worker_sections(size=1)["pool"]
        front = Proc(sections)
        self.procs.append(front)
        self.pids += [w["pid"] for w in front.stats()["workers"] if w["pid"]]
        return front

    def test_own_pool_is_a_node_too(self):
        st = self.front.stats()
        self.assertEqual([n["peer"] for n in st["nodes"]][0], "local:1")
        self.assertEqual(len(st["nodes"]), 4)
        self.assertTrue(self.wait_nodes(["up"] * 4))


def make_certificates(directory):
    """A CA, certificates it signed for a node, a front and a client (named
    localhost and 127.0.0.1), a self-signed one it did not sign, and the
    node's key once more, encrypted with the passphrase "sesame" (openssl
    CLI). Returns {file name: path}."""

    def run(*args):
        subprocess.run(["openssl"] + list(args), cwd=directory, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=pyvisor test CA")
    for name in ("node", "front", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out",
            name + ".csr", "-subj", "/CN=" + name,
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
        run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", name + ".pem", "-days", "1", "-copy_extensions", "copy")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out",
        "rogue.pem", "-days", "1", "-subj", "/CN=rogue")
    run("pkey", "-in", "node.key", "-aes256", "-passout", "pass:sesame", "-out", "node-enc.key")
    return {name: os.path.join(directory, name) for name in os.listdir(directory)}


def openssl_section(certs, who, ca="ca.pem"):
    return {"certificate": '"%s"' % certs[who + ".pem"], "key": '"%s"' % certs[who + ".key"],
            "cafile": '"%s"' % certs[ca]}


class TlsTest(ClusterTest):
    """Nodes publishing over TLS with mutual certificate authentication."""

    def setUp(self):
        self.certdir = tempfile.TemporaryDirectory()
        self.certs = make_certificates(self.certdir.name)
        super().setUp()

    def tearDown(self):
        super().tearDown()
        self.certdir.cleanup()

    def node_sections(self, publish_port):
        s = super().node_sections(publish_port)
        s["publish"]["tls"] = "true"
        s["openssl"] = openssl_section(self.certs, "node")
        return s

    def front_sections(self):
        s = super().front_sections()
        s["openssl"] = openssl_section(self.certs, "front")
        return s

    def extra_front(self, openssl=None):
        s = super().front_sections()
        s["cluster"]["connect-timeout"] = "2s"
        if openssl:
            s["openssl"] = openssl
        front = Proc(s)
        self.procs.append(front)
        return front

    def test_front_with_a_signed_certificate_serves(self):
        self.assertTrue(self.wait_nodes(["up", "up", "up"]), self.front.stats()["nodes"])
        rpc = Rpc(self.front.port)
        self.assertEqual(rpc.call("execute", "echo", "over tls"), (None, "over tls"))
        ids = [rpc.send("execute", ["echo", i]) for i in range(50)]
        self.assertEqual([rpc.wait(i) for i in ids], [(None, i) for i in range(50)])
        rpc.close()
        # Still connected a few heartbeats later (CAF's TLS sessions closed
        # healthy connections after their first message: see
        # actors/cluster/client_endpoint.cpp).
        time.sleep(1.0)
        self.assertEqual([n["restarts"] for n in self.front.stats()["nodes"]], [0, 0, 0])

    def test_peers_without_a_signed_certificate_are_refused_and_logged(self):
        plain = self.extra_front()
        rogue = self.extra_front(openssl_section(self.certs, "rogue"))
        for front in (plain, rogue):
            rpc = Rpc(front.port)
            err, _ = rpc.call("execute", "echo", 1)
            self.assertEqual(err["code"], "unavailable", err)
            rpc.close()
            self.assertEqual({n["state"] for n in front.stats()["nodes"]}, {"lost"})
        log = self.nodes[0].read_log()
        self.assertTrue(wait_for(lambda: "certificate verify failed" in self.nodes[0].read_log()),
                        log)
        self.assertIn("TLS: refused 127.0.0.1:", self.nodes[0].read_log())
        # The refusals did not disturb the front that has a certificate.
        rpc = Rpc(self.front.port)
        self.assertEqual(rpc.call("execute", "echo", 2), (None, 2))
        rpc.close()
        self.assertEqual([n["state"] for n in self.front.stats()["nodes"]], ["up"] * 3)
        self.assertEqual([n["restarts"] for n in self.front.stats()["nodes"]], [0, 0, 0])


class PublishRulesTest(unittest.TestCase):
    def start(self, publish, expect_start):
        s = worker_sections(size=1)
        s["pool"]["backend"] = '"mock"'
        s["publish"] = dict({"port": free_port()}, **publish)
        return Proc(s, expect_start)

    def test_non_loopback_without_tls_refuses_to_start(self):
        p = self.start({"host": '"0.0.0.0"'}, expect_start=False)
        try:
            self.assertEqual(p.proc.wait(20), 1)
            log = p.read_log()
            self.assertIn("not a loopback address", log)
            self.assertIn("publish.insecure=true", log)
            self.assertIn("publish.tls=true", log)
        finally:
            p.close()

    def test_non_loopback_without_tls_starts_when_insecure_says_so(self):
        p = self.start({"host": '"0.0.0.0"', "insecure": "true"}, expect_start=True)
        rpc = Rpc(p.port)
        try:
            self.assertEqual(rpc.call("ping"), (None, "pong"))
        finally:
            rpc.close()
            p.close()

    def test_tls_without_certificates_refuses_to_start(self):
        p = self.start({"tls": "true"}, expect_start=False)
        try:
            self.assertEqual(p.proc.wait(20), 1)
            self.assertIn("openssl.certificate", p.read_log())
        finally:
            p.close()


if __name__ == "__main__":
    unittest.main()

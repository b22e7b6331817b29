"""The RPC endpoint off-host (issue #30): TLS, client certificates, a token,
a Unix socket, and no plaintext off loopback unless the operator says so.

Certificates are made with the openssl CLI at set-up (test_cluster's
make_certificates: a CA, a node's and a client's certificate it signed, a
self-signed "rogue" one, the node's key encrypted). Every node is
killed in tearDown, even when a test fails.

Run: PYVISOR_NODE=build/pyvisor-node python3 -m unittest -v test_security
"""

import asyncio
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import unittest
import warnings

import msgpack

from test_cluster import Proc, free_port, make_certificates, wait_for, worker_sections
from test_node import ROOT, wait_gone

sys.path.insert(0, os.path.join(ROOT, "python"))
from pyvisor.client import AsyncClient, Client, RemoteError  # noqa: E402

TOKEN = "0f3c9d2e8b7a6f5e4d3c2b1a00112233"


def q(path):
    return '"%s"' % path


class SecurityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certdir = tempfile.TemporaryDirectory()
        cls.certs = make_certificates(cls.certdir.name)
        cls.token_file = os.path.join(cls.certdir.name, "token")
        with open(cls.token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(cls.token_file, 0o600)

    @classmethod
    def tearDownClass(cls):
        cls.certdir.cleanup()

    def setUp(self):
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            p.close()

    def start(self, rpc, mock=True, expect_start=True, extra=None):
        sections = worker_sections(size=1)
        if mock:
            sections["pool"] = {"backend": '"mock"', "size": 1}
        sections["rpc"].update(rpc)
        for k, v in (extra or {}).items():
            sections.setdefault(k, {}).update(v)
        p = Proc(sections, expect_start=expect_start)
        self.procs.append(p)
        return p

    def tls_rpc(self, **more):
        rpc = {"tls": "true", "certificate": q(self.certs["node.pem"]),
               "key": q(self.certs["node.key"]), "handshake-timeout": '2s'}
        rpc.update(more)
        return rpc

    def context(self, cert=None):
        ctx = ssl.create_default_context(cafile=self.certs["ca.pem"])
        if cert:
            ctx.load_cert_chain(self.certs[cert + ".pem"], self.certs[cert + ".key"])
        return ctx

    def refused_lines(self, node):
        return [l for l in node.read_log().splitlines() if "refused a connection from" in l]

    # -- TLS -----------------------------------------------------------------------

    def test_execute_over_tls_with_a_ca_verified_client(self):
        node = self.start(self.tls_rpc())
        with Client("localhost", node.port, ssl=self.context()) as c:
            self.assertEqual(c.ping(), "pong")
            payload = os.urandom(3 << 20)
            self.assertEqual(c.execute("echo", payload), payload)
            self.assertEqual(c.execute("echo", {"x": [1, 2]}), {"x": [1, 2]})
            self.assertEqual(c._sock.version()[:5], "TLSv1")

    def test_tls_1_2_and_1_3_and_nothing_older(self):
        node = self.start(self.tls_rpc())
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = self.context()
            ctx.minimum_version = ctx.maximum_version = version
            with Client("localhost", node.port, ssl=ctx) as c:
                self.assertEqual(c.ping(), "pong")
                self.assertEqual(c._sock.version(), version.name.replace("_", "."))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.certs["ca.pem"])
        with warnings.catch_warnings():  # what is deprecated is what is tested
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        # Debian's default security level would not even offer TLS 1.1.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with self.assertRaises(ssl.SSLError) as cm:
            Client("localhost", node.port, ssl=ctx, reconnect=0)
        self.assertIn("PROTOCOL_VERSION", str(cm.exception))
        self.assertTrue(wait_for(lambda: any("unsupported protocol" in l
                                             for l in self.refused_lines(node))),
                        node.read_log())

    def test_a_plaintext_client_gets_no_answer_and_tls_clients_stay_served(self):
        node = self.start(self.tls_rpc())
        plain = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        plain.sendall(msgpack.packb([0, 1, "ping", []]))
        with Client("localhost", node.port, ssl=self.context()) as c:
            self.assertEqual(c.execute("echo", "still served"), "still served")
        # No answer, only the end of the connection (rpc.handshake-timeout).
        start = time.time()
        data = b""
        try:
            while True:
                chunk = plain.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        self.assertFalse(data.startswith(b"\x94"), data)
        self.assertNotIn(b"pong", data)
        self.assertLess(time.time() - start, 8)
        plain.close()
        with Client("localhost", node.port, ssl=self.context()) as c:
            self.assertEqual(c.ping(), "pong")

    def test_an_encrypted_key_needs_its_passphrase(self):
        rpc = self.tls_rpc(key=q(self.certs["node-enc.key"]))
        node = self.start(rpc, expect_start=False)
        self.assertEqual(node.proc.wait(timeout=10), 1)
        self.assertIn("rpc.key-passphrase", node.read_log() + node.proc.stdout.read())
        rpc["key-passphrase"] = '"sesame"'
        node = self.start(rpc)
        with Client("localhost", node.port, ssl=self.context()) as c:
            self.assertEqual(c.ping(), "pong")

    def test_tls_without_a_certificate_refuses_to_start_naming_the_key(self):
        node = self.start({"tls": "true"}, expect_start=False)
        self.assertEqual(node.proc.wait(timeout=10), 1)
        self.assertIn("rpc.certificate", node.read_log())

    # -- client certificates -------------------------------------------------------

    def test_client_certificates(self):
        node = self.start(self.tls_rpc(**{"client-ca": q(self.certs["ca.pem"])}))
        with Client("localhost", node.port, ssl=self.context("client")) as c:
            self.assertEqual(c.execute("echo", "signed"), "signed")
        for cert in (None, "rogue"):
            with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
                with Client("localhost", node.port, ssl=self.context(cert), reconnect=0) as c:
                    c.ping()  # TLS 1.3: the server's verdict comes after the client's Finished
        lines = wait_for(lambda: len(self.refused_lines(node)) >= 2 and self.refused_lines(node))
        self.assertEqual(len(lines), 2, node.read_log())
        self.assertIn("127.0.0.1:", lines[0])
        self.assertIn("did not return a certificate", lines[0])
        self.assertIn("certificate verify failed", lines[1])
        with Client("localhost", node.port, ssl=self.context("client")) as c:
            self.assertEqual(c.ping(), "pong")

    # -- the token -----------------------------------------------------------------

    def raw_calls(self, port, *messages):
        """Sends `messages` at once; returns the responses until the node closes."""
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        for m in messages:
            s.sendall(msgpack.packb(m))
        u = msgpack.Unpacker(raw=False)
        out = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            u.feed(data)
            out.extend(u)
        s.close()
        return out

    def test_the_token_flow(self):
        node = self.start({"token-file": q(self.token_file)})
        # Anything before auth: unauthenticated, then closed (the rest unread).
        out = self.raw_calls(node.port, [0, 1, "ping", []], [0, 2, "ping", []])
        self.assertEqual(len(out), 1, out)
        self.assertEqual(out[0][2]["code"], "unauthenticated")
        # A wrong token: unauthenticated, then closed.
        out = self.raw_calls(node.port, [0, 1, "auth", ["wrong"]], [0, 2, "ping", []])
        self.assertEqual([m[2]["code"] for m in out], ["unauthenticated"])
        # A notification before auth gets nothing, and the connection ends.
        self.assertEqual(self.raw_calls(node.port, [2, "execute", ["echo", [1]]]), [])
        # The right token: served (auth and a request sent at once).
        s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        s.sendall(msgpack.packb([0, 1, "auth", [TOKEN]]) + msgpack.packb([0, 2, "ping", []]))
        u = msgpack.Unpacker(raw=False)
        got = []
        while len(got) < 2:
            u.feed(s.recv(65536))
            got.extend(u)
        self.assertEqual(got, [[1, 1, None, True], [1, 2, None, "pong"]])
        s.close()
        with Client("127.0.0.1", node.port, token=TOKEN) as c:
            self.assertEqual(c.execute("echo", "in"), "in")
        with self.assertRaises(RemoteError) as cm:
            Client("127.0.0.1", node.port, token="nope", reconnect=0)
        self.assertEqual(cm.exception.code, "unauthenticated")
        log = node.read_log()
        self.assertNotIn(TOKEN, log)
        self.assertIn("a wrong token", log)

    def test_a_connection_that_never_authenticates_is_closed(self):
        node = self.start({"token-file": q(self.token_file), "handshake-timeout": '1s'})
        s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        start = time.time()
        self.assertEqual(s.recv(100), b"")
        self.assertLess(time.time() - start, 5)
        s.close()

    def test_token_over_tls_and_the_async_client(self):
        node = self.start(self.tls_rpc(**{"token-file": q(self.token_file)}))

        async def go():
            c = await AsyncClient.connect("localhost", node.port, ssl=self.context(),
                                          token=TOKEN)
            try:
                return await asyncio.gather(c.execute("echo", 1), c.execute("echo", 2))
            finally:
                await c.close()

        self.assertEqual(asyncio.run(go()), [1, 2])

        async def wrong():
            await AsyncClient.connect("localhost", node.port, ssl=self.context(),
                                      token="wrong", reconnect=0)

        with self.assertRaises(RemoteError) as cm:
            asyncio.run(wrong())
        self.assertEqual(cm.exception.code, "unauthenticated")

    def test_sighup_reads_the_token_file_again(self):
        path = os.path.join(self.certdir.name, "token-reloaded")
        with open(path, "w") as f:
            f.write("first\n")
        node = self.start({"token-file": q(path)})
        with Client("127.0.0.1", node.port, token="first") as c:
            self.assertEqual(c.ping(), "pong")
        with open(path, "w") as f:
            f.write("second\n")
        node.proc.send_signal(1)  # SIGHUP
        self.assertTrue(wait_for(lambda: "rpc.token-file read again" in node.read_log()))
        with self.assertRaises(RemoteError):
            Client("127.0.0.1", node.port, token="first", reconnect=0)
        with Client("127.0.0.1", node.port, token="second") as c:
            self.assertEqual(c.ping(), "pong")
        # An unreadable file leaves the token in force; the node serves on.
        os.unlink(path)
        node.proc.send_signal(1)
        self.assertTrue(wait_for(lambda: "the old token stays in force" in node.read_log()))
        with Client("127.0.0.1", node.port, token="second") as c:
            self.assertEqual(c.ping(), "pong")
        self.assertIsNone(node.proc.poll())

    # -- off loopback ----------------------------------------------------------------

    def test_all_addresses_without_tls_refuse_to_start_unless_insecure(self):
        for rpc in ({"host": '"0.0.0.0"'},
                    {"host": '"0.0.0.0"', "token-file": q(self.token_file)},
                    dict(self.tls_rpc(), host='"0.0.0.0"')):
            node = self.start(rpc, expect_start=False)
            self.assertEqual(node.proc.wait(timeout=10), 1, rpc)
            log = node.read_log()
            self.assertIn("rpc.host=0.0.0.0", log)
            self.assertIn("rpc.insecure", log)
        node = self.start({"host": '"0.0.0.0"', "insecure": "true"})
        with Client("127.0.0.1", node.port) as c:
            self.assertEqual(c.ping(), "pong")
        node = self.start(dict(self.tls_rpc(), host='"0.0.0.0"',
                               **{"token-file": q(self.token_file)}))
        with Client("localhost", node.port, ssl=self.context(), token=TOKEN) as c:
            self.assertEqual(c.ping(), "pong")

    def test_metrics_off_loopback_need_insecure(self):
        port = free_port()
        node = self.start({}, expect_start=False,
                          extra={"metrics": {"port": port, "host": '"0.0.0.0"'}})
        self.assertEqual(node.proc.wait(timeout=10), 1)
        self.assertIn("metrics.insecure", node.read_log())
        self.start({}, extra={"metrics": {"port": port, "host": '"0.0.0.0"',
                                          "insecure": "true"}})

    def test_a_cluster_front_off_loopback_with_tls_and_a_token(self):
        # The walk-through's front: on all addresses, TLS and a token, over
        # a node that publishes its pool on loopback.
        publish_port = free_port()
        sections = worker_sections(size=1)
        sections["publish"] = {"port": publish_port}
        node = Proc(sections)
        self.procs.append(node)
        front = self.start({}, mock=False, extra={
            "pool": {"size": 0},
            "rpc": dict(self.tls_rpc(), host='"0.0.0.0"', **{"token-file": q(self.token_file)}),
            "cluster": {"peers": '["127.0.0.1:%d"]' % publish_port, "heartbeat": "200ms"}})
        with Client("localhost", front.port, ssl=self.context(), token=TOKEN) as c:
            self.assertTrue(wait_for(lambda: c.ping() == "pong"))
            pid = c.execute("worker.info", None, session="s")["pid"]
            self.assertIn(pid, node.pids())
            self.assertEqual(c.execute("echo", "through the front"), "through the front")
        with self.assertRaises(RemoteError) as cm:
            Client("localhost", front.port, ssl=self.context(), token="wrong", reconnect=0)
        self.assertEqual(cm.exception.code, "unauthenticated")
        with self.assertRaises((ssl.SSLError, OSError)):
            Client("127.0.0.1", front.port, reconnect=0, timeout=5).ping()

    def test_the_npm_client_over_tls(self):
        # msgpack5rpc over Node's tls.connect (tests/integration/npm), as the
        # README shows it. .ci/setup --checks installs it and CMake passes
        # its directory; a run configured with it never skips this.
        modules = os.environ.get("PYVISOR_NPM_MODULES")
        if not modules:
            self.skipTest("PYVISOR_NPM_MODULES is not set (bash .ci/setup --checks installs "
                          "the npm client)")
        self.assertTrue(os.path.isdir(os.path.join(modules, "msgpack5rpc")), modules)
        node = self.start(self.tls_rpc(**{"client-ca": q(self.certs["ca.pem"]),
                                          "token-file": q(self.token_file)}))
        script = os.path.join(ROOT, "tests", "integration", "npm", "tls_client.js")

        def run(token):
            out = subprocess.run(["node", script, str(node.port), self.certs["ca.pem"],
                                  self.certs["client.pem"], self.certs["client.key"], token],
                                 env=dict(os.environ, NODE_PATH=modules), capture_output=True,
                                 text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            return json.loads(out.stdout)

        got = run(TOKEN)
        self.assertEqual(got["auth"], [None, True])
        self.assertEqual(got["echo"], [[None, {"n": 1}], [None, 100000]])
        self.assertIn(got["protocol"], ("TLSv1.2", "TLSv1.3"))
        got = run("wrong")
        self.assertEqual(got["auth"][0]["code"], "unauthenticated")
        self.assertEqual(got["echo"], [])

    # -- the Unix socket ------------------------------------------------------------

    def test_the_unix_socket(self):
        path = os.path.join(self.certdir.name, "rpc.sock")
        sections = worker_sections(size=1)
        sections["rpc"] = {"port": 0, "unix-path": q(path)}
        node = Proc(sections, expect_start=False)
        self.procs.append(node)
        line = node.proc.stdout.readline()
        self.assertEqual(line.strip(), "pyvisor-node listening on unix:" + path, node.read_log())
        mode = stat.S_IMODE(os.stat(path).st_mode)
        self.assertEqual(mode & 0o007, 0, oct(mode))
        self.assertEqual(mode, 0o660)
        with Client(unix_path=path) as c:
            self.assertEqual(c.execute("echo", "local"), "local")
            pids = [w["pid"] for w in c.stats()["workers"] if w["pid"]]
        self.assertTrue(wait_for(lambda: "unix peer uid=%d" % os.getuid() in node.read_log()))
        self.assertIn("pid=%d" % os.getpid(), node.read_log())
        # SIGTERM: the node removes its socket file as it exits.
        node.proc.send_signal(signal.SIGTERM)
        self.assertEqual(node.proc.wait(timeout=30), 0)
        self.assertTrue(wait_gone(pids))
        self.assertFalse(os.path.exists(path), "the socket file outlived its node")
        # SIGKILL leaves the file; the next node at that path replaces it.
        node = Proc(sections, expect_start=False)
        self.procs.append(node)
        self.assertIn("unix:" + path, node.proc.stdout.readline())
        node.proc.kill()
        node.proc.wait()
        self.assertTrue(os.path.exists(path))
        node = Proc(sections, expect_start=False)
        self.procs.append(node)
        self.assertIn("unix:" + path, node.proc.stdout.readline(), node.read_log())
        with Client(unix_path=path) as c:
            self.assertEqual(c.ping(), "pong")
        # A live node's socket is never taken over: the second node refuses.
        other = Proc(sections, expect_start=False)
        self.procs.append(other)
        self.assertEqual(other.proc.wait(timeout=30), 1)
        self.assertIn(path, other.read_log())
        with Client(unix_path=path) as c:
            self.assertEqual(c.ping(), "pong")

    def test_unix_socket_beside_tcp_with_a_token_and_its_mode(self):
        path = os.path.join(self.certdir.name, "rpc2.sock")
        port = free_port()
        node = self.start({"port": port, "unix-path": q(path), "unix-mode": '"0600"',
                           "token-file": q(self.token_file)})
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with Client(unix_path=path, token=TOKEN) as c:
            self.assertEqual(c.ping(), "pong")
        with Client("127.0.0.1", port, token=TOKEN) as c:
            self.assertEqual(c.ping(), "pong")
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(msgpack.packb([0, 1, "ping", []]))
        u = msgpack.Unpacker(raw=False)
        u.feed(s.recv(4096))
        self.assertEqual(next(u)[2]["code"], "unauthenticated")
        s.close()


class HostileTlsTest(unittest.TestCase):
    """Hostile input over TLS: the node keeps serving, within bounds."""

    @classmethod
    def setUpClass(cls):
        cls.certdir = tempfile.TemporaryDirectory()
        cls.certs = make_certificates(cls.certdir.name)

    @classmethod
    def tearDownClass(cls):
        cls.certdir.cleanup()

    def setUp(self):
        sections = {"pool": {"backend": '"mock"', "size": 1},
                    "rpc": {"port": 0, "tls": "true", "certificate": q(self.certs["node.pem"]),
                            "key": q(self.certs["node.key"]), "handshake-timeout": '3s',
                            "max-connections": 1100},
                    "log": {"level": '"info"'}}
        self.node = Proc(sections)

    def tearDown(self):
        self.node.close()

    def client(self):
        ctx = ssl.create_default_context(cafile=self.certs["ca.pem"])
        return Client("localhost", self.node.port, ssl=ctx, reconnect=0)

    def tls_socket(self):
        ctx = ssl.create_default_context(cafile=self.certs["ca.pem"])
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.node.port),
                                                        timeout=10),
                               server_hostname="localhost")

    def ends_within(self, sock, seconds):
        """True when the node ends `sock` (EOF or reset) within `seconds`."""
        sock.settimeout(seconds)
        try:
            while sock.recv(65536):
                pass
            return True
        except socket.timeout:
            return False
        except (ssl.SSLError, OSError):
            return True

    def test_garbage_after_the_handshake(self):
        # Encrypted garbage (0xc1 is never MessagePack): a framing error ends it.
        s = self.tls_socket()
        try:
            s.sendall(b"\xc1" + os.urandom(70000))
        except (ssl.SSLError, OSError):
            pass  # the node ended it while the rest was still being sent
        self.assertTrue(self.ends_within(s, 10))
        s.close()
        # Raw bytes inside the TLS stream (not a record), written on the
        # descriptor under the TLS layer: the connection ends.
        s = self.tls_socket()
        raw = socket.socket(fileno=os.dup(s.fileno()))
        raw.sendall(os.urandom(5000))
        self.assertTrue(self.ends_within(raw, 10))
        raw.close()
        s.close()
        with self.client() as c:
            self.assertEqual(c.execute("echo", "fine"), "fine")

    def test_a_handshake_dribbled_a_byte_at_a_time(self):
        ctx = ssl.create_default_context(cafile=self.certs["ca.pem"])
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        s = socket.create_connection(("127.0.0.1", self.node.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            data = outgoing.read()
            for b in data:
                s.sendall(bytes([b]))
                time.sleep(0.0005)
            if not data:
                incoming.write(s.recv(65536))
        for b in outgoing.read():
            s.sendall(bytes([b]))
        tls.write(msgpack.packb([0, 7, "ping", []]))
        for b in outgoing.read():
            s.sendall(bytes([b]))
        u = msgpack.Unpacker(raw=False)
        while True:
            try:
                u.feed(tls.read(65536))
                msgs = list(u)
                if msgs:
                    break
            except ssl.SSLWantReadError:
                incoming.write(s.recv(65536))
        self.assertEqual(msgs[0], [1, 7, None, "pong"])
        s.close()

    def fds_and_rss(self):
        pid = self.node.proc.pid
        fds = len(os.listdir("/proc/%d/fd" % pid))
        with open("/proc/%d/status" % pid) as f:
            rss = [int(l.split()[1]) for l in f if l.startswith("VmRSS:")][0]
        return fds, rss

    def test_a_thousand_half_open_handshakes(self):
        with self.client() as c:
            self.assertEqual(c.ping(), "pong")
        fds0, rss0 = self.fds_and_rss()
        # A ClientHello's first bytes, never finished.
        ctx = ssl.create_default_context(cafile=self.certs["ca.pem"])
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        hello_tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        try:
            hello_tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outgoing.read()
        socks = []
        try:
            for i in range(1000):
                s = socket.create_connection(("127.0.0.1", self.node.port), timeout=10)
                s.sendall(hello[: len(hello) // 2])
                socks.append(s)
            # Others are served meanwhile.
            with self.client() as c:
                self.assertEqual(c.execute("echo", "served"), "served")
            fds, rss = self.fds_and_rss()
            # Two descriptors per connection at most; memory per connection
            # bounded (well under 100 KiB each).
            self.assertLessEqual(fds - fds0, 2 * 1000 + 10)
            self.assertLess(rss - rss0, 100 * 1000, (rss0, rss))
            # They are closed at rpc.handshake-timeout.
            self.assertTrue(wait_for(lambda: self.fds_and_rss()[0] <= fds0 + 10, limit=15),
                            (fds0, self.fds_and_rss()))
        finally:
            for s in socks:
                s.close()
        with self.client() as c:
            self.assertEqual(c.ping(), "pong")


if __name__ == "__main__":
    unittest.main()

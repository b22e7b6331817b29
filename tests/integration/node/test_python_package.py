"""Integration tests of the Python package (issue #14): `pip install ./python`
gives `pyvisor` and `pyvisor.client`, and the asyncio client against a real
node (concurrent requests on one connection, errors, sessions, timeouts, a
node that goes away). Nodes are killed in tearDown, even when a test fails.

Run: PYVISOR_NODE=build/pyvisor-node python3 -m unittest -v test_python_package
"""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import unittest

from test_node import NODE, ROOT, Node, wait_gone

sys.path.insert(0, os.path.join(ROOT, "python"))
from pyvisor.client import AsyncClient, Client, RemoteError  # noqa: E402  (the source tree's)


class PipInstallTest(unittest.TestCase):
    def test_pip_install_gives_pyvisor_and_its_clients(self):
        with tempfile.TemporaryDirectory() as d:
            venv = os.path.join(d, "venv")
            # As the README says: Debian's msgpack through the venv's system
            # site packages, the build backend (setuptools, wheel) from
            # Debian's wheels, no package index.
            subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv],
                           check=True, timeout=120)
            python = os.path.join(venv, "bin", "python")
            # Built from a copy, so that nothing is written into the source tree.
            src = os.path.join(d, "src")
            subprocess.run(["cp", "-r", os.path.join(ROOT, "python"), src], check=True)
            pip = subprocess.run([python, "-m", "pip", "install", "--no-index", "--find-links",
                                  "/usr/share/python-wheels", "--quiet", src],
                                 capture_output=True, text=True, timeout=300)
            self.assertEqual(pip.returncode, 0, pip.stdout + pip.stderr)
            # What the build leaves beside the package is ignored by git.
            left = sorted(set(os.listdir(src)) - set(os.listdir(os.path.join(ROOT, "python"))))
            in_git = os.path.isdir(os.path.join(ROOT, ".git"))
            for name in left if in_git else []:
                ignored = subprocess.run(["git", "-C", ROOT, "check-ignore", "-q",
                                          "python/" + name + "/"])
                self.assertEqual(ignored.returncode, 0, "python/%s is not ignored" % name)
            probe = subprocess.run(
                [python, "-c", "import pyvisor, pyvisor.client; "
                 "print(pyvisor.__file__); print(pyvisor.__version__); "
                 "print(pyvisor.client.Client.__name__, pyvisor.client.AsyncClient.__name__)"],
                capture_output=True, text=True, timeout=60, cwd=d)
            self.assertEqual(probe.returncode, 0, probe.stderr)
            where, version, clients = probe.stdout.splitlines()
            self.assertTrue(where.startswith(venv), where)
            self.assertEqual(clients, "Client AsyncClient")
            node = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30)
            self.assertEqual(node.stdout.strip(), "pyvisor-node " + version)
            # The installed async client against a real node.
            n = Node()
            try:
                script = ("import asyncio\nfrom pyvisor.client import AsyncClient\n"
                          "async def main():\n"
                          "    async with await AsyncClient.connect('127.0.0.1', %d) as c:\n"
                          "        print(await c.execute('echo', 'installed'))\n"
                          "asyncio.run(main())\n" % n.port)
                run = subprocess.run([python, "-c", script], capture_output=True, text=True,
                                     timeout=60, cwd=d)
            finally:
                pids = n.pids()
                n.close()
                self.assertTrue(wait_gone(pids))
            self.assertEqual(run.returncode, 0, run.stderr)
            self.assertEqual(run.stdout, "installed\n")


class AsyncClientTest(unittest.TestCase):
    def setUp(self):
        self.node = Node()
        self.pids = self.node.pids()

    def tearDown(self):
        self.node.close()
        self.assertTrue(wait_gone(self.pids), "a Python worker outlived its node")

    def run_async(self, coro):
        return asyncio.run(asyncio.wait_for(coro, 60))

    def test_requests_on_one_connection_run_concurrently(self):
        async def main():
            async with await AsyncClient.connect("127.0.0.1", self.node.port) as c:
                slow = asyncio.ensure_future(c.execute("sleep", {"ms": 1500}))
                fast = asyncio.ensure_future(c.execute("echo", "fast"))
                done, _ = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
                # The echo was answered while the sleep still ran on the
                # same connection.
                self.assertEqual(done, {fast})
                self.assertEqual(fast.result(), "fast")
                self.assertEqual(await slow, 1500)
                values = list(range(64))
                results = await asyncio.gather(*(c.execute("echo", v) for v in values))
                self.assertEqual(results, values)
                self.assertEqual(await c.ping(), "pong")
        self.run_async(main())

    def test_errors_sessions_and_stats(self):
        async def main():
            async with await AsyncClient.connect("127.0.0.1", self.node.port) as c:
                with self.assertRaises(RemoteError) as e:
                    await c.execute("divide", {"a": 1, "b": 0})
                self.assertEqual(e.exception.code, "python_error")
                self.assertEqual(e.exception.type, "ZeroDivisionError")
                self.assertIn("Traceback", e.exception.details)
                with self.assertRaises(RemoteError) as e:
                    await c.call("no.such.method")
                self.assertEqual(e.exception.code, "unknown_method")
                await c.execute("session.put", {"key": "k", "value": 42}, session="a1")
                self.assertEqual(await c.execute("session.get", {"key": "k"}, session="a1"), 42)
                self.assertTrue(await c.end_session("a1"))
                stats = await c.stats()
                self.assertEqual(len(stats["workers"]), 2)
                self.assertEqual(stats["commands"]["session.get"]["replies"], {"ok": 1})
        self.run_async(main())

    def test_a_timeout_leaves_the_connection_usable(self):
        async def main():
            async with await AsyncClient.connect("127.0.0.1", self.node.port) as c:
                with self.assertRaises(asyncio.TimeoutError):
                    await c.execute("sleep", {"ms": 800}, timeout=0.1)
                # The late answer is dropped; later requests get their own.
                self.assertEqual(await c.execute("echo", "after"), "after")
                await asyncio.sleep(1.0)
                self.assertEqual(await c.execute("echo", "later"), "later")
        self.run_async(main())

    def test_a_cancelled_task_cancels_its_request_on_the_node(self):
        async def main():
            async with await AsyncClient.connect("127.0.0.1", self.node.port) as c:
                pids = sorted((await c.stats())["workers"], key=lambda w: w["id"])
                task = asyncio.ensure_future(c.execute("sleep", {"ms": 5000}))
                await asyncio.sleep(0.2)
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
                # wait_for running out cancels too.
                with self.assertRaises(asyncio.TimeoutError):
                    await asyncio.wait_for(c.execute("sleep", {"ms": 5000}), 0.2)
                await asyncio.sleep(0.2)
                stats = await c.stats()
                self.assertEqual(stats["replies"].get("cancelled"), 2, stats)
                self.assertEqual(sum(w["in_flight"] for w in stats["workers"]), 0)
                # Interrupted, not killed: the same workers serve on.
                self.assertEqual([w["pid"] for w in sorted(stats["workers"], key=lambda w: w["id"])],
                                 [w["pid"] for w in pids])
        self.run_async(main())

    def test_the_blocking_client_cancels_a_pipelined_request(self):
        with Client("127.0.0.1", self.node.port) as c:
            slow = c.send("execute", ["sleep", {"ms": 5000}])
            fast = c.send("execute", ["echo", 1])
            c.cancel(slow)
            with self.assertRaises(RemoteError) as e:
                c.receive(slow)
            self.assertEqual(e.exception.code, "cancelled")
            self.assertEqual(c.receive(fast), 1)

    def test_a_node_that_goes_away_fails_what_waits(self):
        async def main():
            c = await AsyncClient.connect("127.0.0.1", self.node.port, reconnect=0)
            waiting = asyncio.ensure_future(c.execute("sleep", {"ms": 5000}))
            await asyncio.sleep(0.2)
            self.node.proc.send_signal(signal.SIGKILL)
            with self.assertRaises(ConnectionError):
                await waiting
            with self.assertRaises(ConnectionError):
                await c.ping()
            await c.close()
        self.run_async(main())


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReconnectTest(unittest.TestCase):
    """A node restarted under a client: what was in flight fails with
    ConnectionError (or is resent, idempotent and asked for), and the next
    request reaches the new node."""

    def setUp(self):
        self.port = free_port()
        self.nodes = []
        self.start_node()

    def start_node(self):
        node = Node(args=["--rpc.port=%d" % self.port])
        self.nodes.append((node, node.pids()))
        return node

    def kill_node(self):
        node, _ = self.nodes[-1]
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()

    def tearDown(self):
        for node, pids in self.nodes:
            node.close()
            self.assertTrue(wait_gone(pids))

    def test_the_blocking_client_reconnects(self):
        with Client("127.0.0.1", self.port, timeout=20) as c:
            self.assertEqual(c.ping(), "pong")
            slow = c.send("execute", ["sleep", {"ms": 5000}])
            self.kill_node()
            with self.assertRaises(ConnectionError):
                c.receive(slow)
            self.start_node()
            self.assertEqual(c.ping(), "pong")
            self.assertEqual(c.execute("echo", "again"), "again")

    def test_the_asyncio_client_reconnects_and_resends_idempotent_requests(self):
        async def main():
            c = await AsyncClient.connect("127.0.0.1", self.port, resend_idempotent=True)
            plain = asyncio.ensure_future(c.execute("sleep", {"ms": 3000}))
            resent = asyncio.ensure_future(
                c.execute("sleep_then_report", {"ms": 300}, idempotent=True))
            await asyncio.sleep(0.2)
            self.kill_node()
            with self.assertRaises(ConnectionError):
                await plain
            await asyncio.sleep(0.3)
            self.start_node()
            self.assertEqual(await resent, 300)
            self.assertEqual(await c.ping(), "pong")
            await c.close()
        asyncio.run(main())

    def test_without_reconnect_the_client_stays_closed(self):
        c = Client("127.0.0.1", self.port, reconnect=0)
        self.assertEqual(c.ping(), "pong")
        self.kill_node()
        self.start_node()
        with self.assertRaises(ConnectionError):
            c.ping()
            c.ping()  # the first may still see the old connection end
        c.close()


if __name__ == "__main__":
    unittest.main()

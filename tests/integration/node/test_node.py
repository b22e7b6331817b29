"""Integration tests of pyvisor-node as a separate process, over TCP.

The client here is a few lines of socket + msgpack written for these tests;
it shares no code with the node. Every node is started on a free loopback
port (rpc.port=0, read back from its stdout) and is killed in tearDown, even
when a test fails; every worker pid the node reported is checked to be gone.

Run: PYVISOR_NODE=build/pyvisor-node python3 -m unittest -v tests/integration/node/test_node.py
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
NODE = os.environ.get("PYVISOR_NODE", os.path.join(ROOT, "build", "pyvisor-node"))
TEST_PY = os.path.join(ROOT, "tests", "python")


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        return False


def wait_gone(pids, limit=5.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


class Rpc:
    """A minimal MessagePack-RPC client."""

    def __init__(self, port, timeout=30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.next_id = 0
        self.done = {}

    def send(self, method, params):
        self.next_id += 1
        self.sock.sendall(msgpack.packb([0, self.next_id, method, params], use_bin_type=True))
        return self.next_id

    def read_one(self):
        """Next response in arrival order: (msgid, error, result)."""
        while True:
            for msg in self.unpacker:
                return msg[1], msg[2], msg[3]
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.unpacker.feed(data)

    def wait(self, msgid):
        while msgid not in self.done:
            i, e, r = self.read_one()
            self.done[i] = (e, r)
        return self.done.pop(msgid)

    def call(self, method, *params):
        return self.wait(self.send(method, list(params)))

    def close(self):
        self.sock.close()


class Node:
    """A pyvisor-node process with a temporary configuration."""

    def __init__(self, extra_ini="", args=()):
        self.dir = tempfile.TemporaryDirectory()
        ini = os.path.join(self.dir.name, "node.ini")
        with open(ini, "w") as f:
            f.write(
                '[pool]\nsize=2\nmodules=["pyvisor.testing", "sample_commands"]\n'
                'python-path=["%s"]\nshutdown-timeout=2s\n'
                '[rpc]\nport=0\n[log]\nlevel="warn"\n' % TEST_PY
            )
            f.write(extra_ini)
        self.log = open(os.path.join(self.dir.name, "node.log"), "w+")
        self.proc = subprocess.Popen(
            [NODE, "--config-file=" + ini] + list(args),
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.stop(signal.SIGKILL)
            raise RuntimeError("node did not start: %r\n%s" % (line, self.read_log()))
        self.port = int(line.strip().rsplit(":", 1)[1])
        self.worker_pids = []

    def read_log(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def pids(self):
        rpc = Rpc(self.port)
        try:
            err, stats = rpc.call("stats")
            return [w["pid"] for w in stats["workers"] if w["pid"]]
        finally:
            rpc.close()

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def close(self):
        self.stop(signal.SIGKILL)
        self.proc.stdout.close()
        self.log.close()
        self.dir.cleanup()


class NodeTest(unittest.TestCase):
    extra_ini = '[session]\ntimeout=400ms\ncleanup-interval=50ms\nremember=5s\n'

    def setUp(self):
        self.node = Node(self.extra_ini)
        self.pids = self.node.pids()
        self.rpc = Rpc(self.node.port)

    def tearDown(self):
        self.rpc.close()
        self.node.close()
        self.assertTrue(wait_gone(self.pids), "a Python worker outlived its node")

    def assertCode(self, err, code):
        self.assertIsNotNone(err, "expected an error %s" % code)
        self.assertEqual(err["code"], code, err)


class MethodsTest(NodeTest):
    def test_ping(self):
        self.assertEqual(self.rpc.call("ping"), (None, "pong"))

    def test_execute_echoes_values(self):
        value = {"n": None, "t": True, "f": False, "neg": -(2**40), "big": 2**64 - 1,
                 "x": 1.5, "s": "gr\u00fc\u00df \U0001f40d", "b": b"\x00\xff", "l": [1, [2, {}]]}
        self.assertEqual(self.rpc.call("execute", "echo", value), (None, value))

    def test_execute_with_session_and_end(self):
        opts = {"session": "s1"}
        self.assertEqual(self.rpc.call("execute", "session.put", {"key": "k", "value": 7}, opts)[0], None)
        self.assertEqual(self.rpc.call("execute", "session.get", {"key": "k"}, opts), (None, 7))
        self.assertEqual(self.rpc.call("execute", "session.get", {"key": "k"}, {"session": "s2"}), (None, None))
        self.assertEqual(self.rpc.call("session.end", "s1"), (None, True))
        self.assertEqual(self.rpc.call("execute", "session.get", {"key": "k"}, opts), (None, None))

    def test_stats(self):
        self.rpc.call("execute", "ping", None)
        err, stats = self.rpc.call("stats")
        self.assertIsNone(err)
        for key in ("workers", "sessions", "queue", "replies", "restarts"):
            self.assertIn(key, stats)
        self.assertEqual(len(stats["workers"]), 2)
        for w in stats["workers"]:
            for key in ("id", "pid", "state", "served", "restarts"):
                self.assertIn(key, w)
            self.assertEqual(w["state"], "ready")
        self.assertGreaterEqual(stats["replies"].get("ok", 0), 1)

    def test_stats_count_every_request_already_answered(self):
        # A worker reports a completion to the pool before the caller gets the
        # reply: stats asked right after a reply never lag it.
        err, stats = self.rpc.call("stats")
        base_ok = stats["replies"].get("ok", 0)
        base_err = stats["replies"].get("python_error", 0)
        for i in range(1, 101):
            if i % 2:
                self.assertEqual(self.rpc.call("execute", "ping", None), (None, "pong"))
            else:
                self.assertEqual(self.rpc.call("execute", "raise", {"message": "x"})[0]["code"],
                                 "python_error")
            err, stats = self.rpc.call("stats")
            self.assertEqual(sum(w["in_flight"] for w in stats["workers"]), 0, stats)
            self.assertEqual(stats["replies"].get("ok", 0) - base_ok, (i + 1) // 2, stats)
            self.assertEqual(stats["replies"].get("python_error", 0) - base_err, i // 2, stats)

    def test_notification_runs_without_response(self):
        self.rpc.sock.sendall(msgpack.packb([2, "execute", ["ping", None]]))
        self.assertEqual(self.rpc.call("ping"), (None, "pong"))


class ErrorsTest(NodeTest):
    def test_unknown_method(self):
        err, _ = self.rpc.call("no.such.method")
        self.assertCode(err, "unknown_method")

    def test_bad_request(self):
        self.assertCode(self.rpc.call("execute", 42, None)[0], "bad_request")
        self.assertCode(self.rpc.call("execute", "echo", 1, {"nonsense": 1})[0], "bad_request")
        self.assertCode(self.rpc.call("execute", "echo")[0], "bad_request")
        # Not a request array at all, but the msgid is readable.
        self.rpc.sock.sendall(msgpack.packb([7, 99, "ping", []]))
        msgid, err, _ = self.rpc.read_one()
        self.assertEqual(msgid, 99)
        self.assertCode(err, "bad_request")
        self.rpc.sock.sendall(msgpack.packb([0, 98]))  # truncated request
        msgid, err, _ = self.rpc.read_one()
        self.assertEqual(msgid, 98)
        self.assertCode(err, "bad_request")

    def test_unknown_command(self):
        self.assertCode(self.rpc.call("execute", "nope", None)[0], "unknown_command")

    def test_python_error_carries_traceback(self):
        err, _ = self.rpc.call("execute", "divide", {"a": 1, "b": 0})
        self.assertCode(err, "python_error")
        self.assertEqual(err["type"], "ZeroDivisionError")
        self.assertIn("sample_commands.py", err["details"])

    def test_timeout(self):
        pids = sorted(self.node.pids())
        err, _ = self.rpc.call("execute", "sleep", {"ms": 2000}, {"timeout_ms": 200})
        self.assertCode(err, "timeout")
        self.assertEqual(self.rpc.call("execute", "ping", None), (None, "pong"))
        # The handler was interrupted, not its worker killed: no recycle.
        _, st = self.rpc.call("stats")
        self.assertEqual((st["recycled"], st["restarts"]), (0, 0), st)
        self.assertEqual(sorted(self.node.pids()), pids)

    def test_a_timed_out_session_request_answers_timeout(self):
        # Too slow is not a dead worker: the caller hears timeout, and the
        # interrupted handler leaves its session as it was.
        self.rpc.call("execute", "session.put", {"key": "k", "value": 1}, {"session": "slow"})
        err, _ = self.rpc.call("execute", "sleep", {"ms": 2000},
                               {"session": "slow", "timeout_ms": 200})
        self.assertCode(err, "timeout")
        self.assertEqual(self.rpc.call("execute", "session.get", {"key": "k"},
                                       {"session": "slow"}), (None, 1))

    def test_worker_crashed(self):
        err, _ = self.rpc.call("execute", "crash", {"code": 3})
        self.assertCode(err, "worker_crashed")
        self.assertEqual(self.rpc.call("execute", "ping", None), (None, "pong"))

    def test_protocol_error(self):
        err, _ = self.rpc.call("execute", "garbage", None)
        self.assertCode(err, "protocol_error")
        self.assertEqual(self.rpc.call("execute", "ping", None), (None, "pong"))

    def test_session_lost_and_expired(self):
        self.rpc.call("execute", "session.put", {"key": "k", "value": 1}, {"session": "doomed"})
        err, _ = self.rpc.call("execute", "crash", None, {"session": "doomed"})
        self.assertCode(err, "session_lost")  # the session's state died with its worker
        self.assertCode(self.rpc.call("execute", "ping", None, {"session": "doomed"})[0], "session_lost")
        self.rpc.call("execute", "ping", None, {"session": "idle"})
        time.sleep(0.6)
        self.assertCode(self.rpc.call("execute", "ping", None, {"session": "idle"})[0], "session_expired")


class OverloadTest(NodeTest):
    extra_ini = '[pool]\nqueue-size=2\nmax-in-flight=1\n'

    def test_overloaded_and_keeps_serving(self):
        ids = [self.rpc.send("execute", ["sleep", {"ms": 300}]) for _ in range(8)]
        errors = [self.rpc.wait(i)[0] for i in ids]
        codes = [e["code"] for e in errors if e]
        self.assertIn("overloaded", codes)
        self.assertEqual(set(codes), {"overloaded"})
        self.assertEqual(self.rpc.call("execute", "ping", None), (None, "pong"))


class ConnectionsTest(NodeTest):
    def test_pipelined_requests_complete_out_of_order(self):
        slow = self.rpc.send("execute", ["sleep", {"ms": 400}])
        fast = self.rpc.send("execute", ["echo", "quick"])
        first = self.rpc.read_one()
        self.assertEqual(first[0], fast)
        self.assertEqual(first[2], "quick")
        second = self.rpc.read_one()
        self.assertEqual(second[0], slow)

    def test_fifty_concurrent_connections(self):
        failures = []

        def client(n):
            try:
                rpc = Rpc(self.node.port)
                for i in range(10):
                    err, res = rpc.call("execute", "echo", [n, i], {"idempotent": True})
                    if err or res != [n, i]:
                        failures.append((n, i, err, res))
                rpc.close()
            except Exception as e:  # pragma: no cover - reported below
                failures.append((n, repr(e)))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(failures, [])

    def test_garbage_closes_only_that_connection(self):
        bad = socket.create_connection(("127.0.0.1", self.node.port), timeout=10)
        bad.sendall(b"\xc1\xc1\xc1 this is not msgpack")
        self.assertEqual(bad.recv(100), b"")  # closed by the node
        bad.close()
        self.assertEqual(self.rpc.call("ping"), (None, "pong"))

    def test_stalled_client_does_not_block_others(self):
        # A client that sends a lot and never reads its responses: the node
        # buffers for it, everybody else is still served promptly.
        stalled = socket.create_connection(("127.0.0.1", self.node.port), timeout=10)
        big = b"y" * 65536
        for i in range(64):
            stalled.sendall(msgpack.packb([0, i, "execute", ["echo", big]], use_bin_type=True))
        t = time.time()
        for _ in range(20):
            self.assertEqual(self.rpc.call("ping"), (None, "pong"))
            self.assertEqual(self.rpc.call("execute", "echo", 1), (None, 1))
        self.assertLess(time.time() - t, 10)
        stalled.close()

    def test_client_that_never_reads_is_disconnected(self):
        node = Node('[rpc]\nmax-message-size=65536\nmax-pending-output=1048576\n')
        try:
            stalled = socket.create_connection(("127.0.0.1", node.port), timeout=20)
            big = b"z" * 60000
            closed = False
            try:
                for i in range(256):  # about 15 MiB of responses, never read
                    stalled.sendall(msgpack.packb([0, i, "execute", ["echo", big]],
                                                  use_bin_type=True))
                time.sleep(1.0)
                while stalled.recv(1 << 20):  # what the kernel buffered, then EOF
                    pass
                closed = True
            except (ConnectionResetError, BrokenPipeError):
                closed = True  # the node closed it while we were still writing
            except socket.timeout:
                pass
            self.assertTrue(closed, "the node kept a client that never reads")
            stalled.close()
            other = Rpc(node.port)
            self.assertEqual(other.call("ping"), (None, "pong"))
            other.close()
        finally:
            node.close()

    def test_client_disconnecting_mid_request(self):
        gone = Rpc(self.node.port)
        gone.send("execute", ["sleep", {"ms": 300}])
        gone.close()
        time.sleep(0.5)
        self.assertEqual(self.rpc.call("execute", "ping", None), (None, "pong"))
        err, stats = self.rpc.call("stats")
        self.assertEqual(sum(w["in_flight"] for w in stats["workers"]), 0)


class RecycleTest(NodeTest):
    """One worker, so that requests pipeline behind each other on it."""

    extra_ini = "[pool]\nsize=1\nmax-in-flight=8\ninterrupt-grace=200ms\n"

    def pipelined(self, first, first_opts):
        ids = [self.rpc.send("execute", [first, {"ms": 1000} if first == "stuck" else {"code": 9},
                                         first_opts])]
        for i in range(5):
            ids.append(self.rpc.send("execute", ["echo", i]))
        return [self.rpc.wait(i) for i in ids]

    def test_a_kill_after_a_timeout_requeues_the_requests_that_never_started(self):
        # Stuck where the interrupt cannot reach (one long C call): killed
        # after the grace; what waited behind it never started.
        answers = self.pipelined("stuck", {"timeout_ms": 200})
        self.assertCode(answers[0][0], "timeout")
        # Not idempotent, but they never started: they run on the new worker.
        self.assertEqual(answers[1:], [(None, i) for i in range(5)])
        err, stats = self.rpc.call("stats")
        self.assertGreaterEqual(stats["requeued"], 5, stats)

    def test_a_crash_requeues_the_requests_behind_it(self):
        answers = self.pipelined("crash", {})
        self.assertCode(answers[0][0], "worker_crashed")
        self.assertEqual(answers[1:], [(None, i) for i in range(5)])


class LifecycleTest(unittest.TestCase):
    def test_sigterm_lets_in_flight_requests_complete(self):
        node = Node()
        try:
            pids = node.pids()
            rpc = Rpc(node.port)
            ids = [rpc.send("execute", ["sleep", {"ms": 300}]) for _ in range(4)]
            time.sleep(0.1)
            node.proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            # New work is refused while the requests in flight complete.
            err, _ = rpc.call("execute", "echo", 1)
            self.assertEqual(err["code"], "shutting_down")
            for i in ids:
                self.assertEqual(rpc.wait(i), (None, 300))
            self.assertEqual(node.proc.wait(20), 0)
            self.assertTrue(wait_gone(pids))
            rpc.close()
        finally:
            node.close()

    def test_sigkill_leaves_no_python_process(self):
        node = Node('[pool]\nsize=3\n')
        try:
            pids = node.pids()
            self.assertEqual(len(pids), 3)
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)
            self.assertTrue(wait_gone(pids), "workers survived a SIGKILLed node")
        finally:
            node.close()

    def test_invalid_configuration_names_the_key(self):
        for args, needle in ((["--pool.size=0"], "pool.size"),
                             (["--session.mode=\"sometimes\""], "session.mode")):
            out = subprocess.run([NODE] + args, capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 1)
            self.assertIn(needle, out.stderr)
        with tempfile.NamedTemporaryFile("w", suffix=".ini") as f:
            f.write("[pool]\nszie=3\n")
            f.flush()
            out = subprocess.run([NODE, "--config-file=" + f.name], capture_output=True,
                                 text=True, timeout=30)
            self.assertEqual(out.returncode, 1)
            self.assertIn("unknown key 'pool.szie'; did you mean 'pool.size'?", out.stderr)
        out = subprocess.run([NODE, "--pool.start-method=fork"], capture_output=True, text=True,
                             timeout=30)
        self.assertEqual(out.returncode, 1)
        self.assertIn("'pool.start-method': \"fork\" (fork-server or spawn)", out.stderr)


class UserChildrenTest(unittest.TestCase):
    """Processes that user code starts in a worker do not outlive it, nor
    the node, however either ends (issue #11, 3c)."""

    def start(self):
        self.node = Node()
        self.rpc = Rpc(self.node.port)
        children = []
        for how in ("fork", "popen"):
            err, pid = self.rpc.call("execute", "spawn_child", {"how": how})
            self.assertIsNone(err, err)
            self.assertTrue(alive(pid))
            children.append(pid)
        return children

    def tearDown(self):
        self.rpc.close()
        self.node.close()

    def test_node_sigterm(self):
        children = self.start()
        self.assertEqual(self.node.stop(signal.SIGTERM), 0)
        self.assertTrue(wait_gone(children), "a user process outlived the node's SIGTERM")

    def test_node_sigkill(self):
        children = self.start()
        workers = self.node.pids()
        self.node.stop(signal.SIGKILL)
        self.assertTrue(wait_gone(workers + children), "a process outlived the node's SIGKILL")

    def test_worker_killed(self):
        children = self.start()
        for pid in self.node.pids():
            os.kill(pid, signal.SIGKILL)
        self.assertTrue(wait_gone(children), "a user process outlived its worker")
        # The node goes on serving with new workers.
        deadline = time.time() + 5
        while time.time() < deadline:
            err, res = self.rpc.call("execute", "ping", None)
            if err is None:
                break
            time.sleep(0.05)
        self.assertEqual(res, "pong")


class ClientModuleTest(NodeTest):
    def test_pyvisor_client(self):
        sys.path.insert(0, os.path.join(ROOT, "python"))
        from pyvisor.client import Client, RemoteError

        with Client("127.0.0.1", self.node.port) as c:
            self.assertEqual(c.ping(), "pong")
            self.assertEqual(c.execute("echo", {"a": [1, 2]}), {"a": [1, 2]})
            c.execute("session.put", {"key": "k", "value": "v"}, session="cs")
            self.assertEqual(c.execute("session.get", {"key": "k"}, session="cs"), "v")
            self.assertTrue(c.end_session("cs"))
            with self.assertRaises(RemoteError) as ctx:
                c.execute("divide", {"a": 1, "b": 0})
            self.assertEqual(ctx.exception.code, "python_error")
            out = c.pipeline([("execute", ["echo", 1]), ("execute", ["nope", None]), ("ping", [])])
            self.assertEqual(out[0], 1)
            self.assertEqual(out[1].code, "unknown_command")
            self.assertEqual(out[2], "pong")
            self.assertEqual(len(c.stats()["workers"]), 2)


class MaxRssTest(NodeTest):
    extra_ini = "[pool]\nsize=1\nmax-rss=%d\n" % (120 * 1024 * 1024)

    def test_a_worker_past_max_rss_is_recycled_after_its_request(self):
        before = self.node.pids()
        err, res = self.rpc.call("execute", "hog", 200)
        self.assertIsNone(err, err)  # the request that grew it completes
        deadline = time.time() + 10
        while time.time() < deadline:
            err, st = self.rpc.call("stats")
            if st["recycled"] >= 1 and st["workers"][0]["state"] == "ready":
                break
            time.sleep(0.05)
        self.assertEqual(st["recycled"], 1, st)
        self.assertNotEqual(st["workers"][0]["pid"], before[0])
        self.pids.append(st["workers"][0]["pid"])
        # The replacement is small again and stays.
        time.sleep(1.5)
        err, st2 = self.rpc.call("stats")
        self.assertEqual(st2["recycled"], 1, st2)
        err, res = self.rpc.call("execute", "echo", 3)
        self.assertEqual(res, 3)


class PythonLoggingTest(unittest.TestCase):
    """`logging` in a user module reaches the node's log with its level,
    logger name, worker and pid, under both start methods; print() stays
    at info."""

    def check(self, method):
        node = Node('[pool]\nsize=1\nstart-method="%s"\n'
                    'modules=["pyvisor.testing", "logs_things"]\n' % method,
                    args=["--log.level=info"])
        pids = node.pids()
        rpc = Rpc(node.port)
        try:
            err, ok = rpc.call("execute", "log.some", 42)
            self.assertIsNone(err, err)
            time.sleep(0.2)  # the log lines cross a pipe and the I/O thread
            text = node.read_log()
        finally:
            rpc.close()
            node.close()
        self.assertTrue(wait_gone(pids), "a Python worker outlived its node")
        tag = "pid %d]" % pids[0]
        lines = [line for line in text.splitlines() if tag in line]
        def find(level, needle):
            hits = [line for line in lines if needle in line]
            self.assertTrue(hits, "no %r in %s" % (needle, "\n".join(lines)))
            self.assertIn("[%s]" % level, hits[0])
            return hits[0]
        self.assertIn("logs_things: an info record: 42", find("info", "an info record"))
        find("warning", "a warning record")
        find("warning", "with a second line")
        find("error", "an error record")
        find("error", "ZeroDivisionError")  # the traceback, at the record's level
        find("info", "stdout: printed 42")
        self.assertFalse([line for line in lines if "not at info level" in line])
        # Logged at import: in the worker (spawn) or in the template (fork-server).
        self.assertIn("logs_things: imported", text)

    def test_spawn(self):
        self.check("spawn")

    def test_fork_server(self):
        self.check("fork-server")


if __name__ == "__main__":
    unittest.main()

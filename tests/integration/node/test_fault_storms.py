"""Integration tests of issue #10: a node survives fault storms and hostile
clients, never answers "pong" while it cannot serve, and comes back.

The node runs as a separate process on a free loopback port (the Node and Rpc
helpers of test_node.py); every test kills its node in tearDown, even on
failure, and checks that no Python process it ever saw outlives it.

Run: PYVISOR_NODE=build/pyvisor-node python3 -m unittest -v test_fault_storms
"""

import os
import random
import signal
import sys
import tempfile
import threading
import time
import unittest

import msgpack

from test_node import Node, Rpc, wait_gone

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "chaos"))
from chaos import descendants_of  # noqa: E402  (the harness's /proc scan)


class StormTest(unittest.TestCase):
    """Starts a node per test; remembers every worker pid seen."""

    extra_ini = ""
    env = None

    def start(self, extra_ini=None):
        old = {}
        for k, v in (self.env or {}).items():
            old[k] = os.environ.get(k)
            os.environ[k] = v
        try:
            self.node = Node(self.extra_ini if extra_ini is None else extra_ini)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.seen = set(descendants_of(self.node.proc.pid))
        self.rpc = Rpc(self.node.port)

    def tearDown(self):
        node = getattr(self, "node", None)
        if node is None:
            return
        self.seen.update(descendants_of(node.proc.pid))
        self.rpc.close()
        node.close()
        self.assertTrue(wait_gone(self.seen), "a Python worker outlived its node")

    def stats(self):
        err, st = self.rpc.call("stats")
        self.assertIsNone(err, err)
        self.seen.update(w["pid"] for w in st["workers"] if w["pid"])
        return st

    def wait_serving(self, limit):
        """Seconds until ping says pong and an execute succeeds (or fails the test)."""
        t0 = time.time()
        while time.time() - t0 < limit:
            err, res = self.rpc.call("ping")
            if err is None:
                err, res = self.rpc.call("execute", "echo", 5, {"idempotent": True})
                if err is None and res == 5:
                    return time.time() - t0
            time.sleep(0.02)
        self.fail("the node did not serve again within %.1f s: %r" % (limit, self.stats()))

    def assertCode(self, err, code):
        # With the node's log: a late success under load was seen and not
        # yet understood (what the node logged around it is the evidence).
        self.assertIsNotNone(err, "expected an error %s; the node's log ends:\n%s"
                             % (code, self.node.read_log()[-3000:]))
        self.assertEqual(err["code"], code, err)


def raw_request(msgid, command, args_bytes):
    """An execute request whose args are spliced in as raw msgpack bytes
    (values that Python's msgpack refuses to encode in the first place)."""
    return (b"\x94" + msgpack.packb(0) + msgpack.packb(msgid) + msgpack.packb("execute")
            + b"\x92" + msgpack.packb(command) + args_bytes)


BAD_ARGS = {
    # a str holding invalid UTF-8
    "invalid_utf8": b"\xa2\xff\xfe",
    # a map whose key is an array (unhashable in Python)
    "array_key": b"\x81\x92\x01\x02\x01",
    # a map whose key is a map
    "map_key": b"\x81\x81\x01\x02\x03",
    # a timestamp ext (-1) of an invalid length (3 bytes)
    "bad_timestamp": b"\xc7\x03\xff\x00\x00\x00",
}


class HostileRequestsTest(StormTest):
    extra_ini = "[pool]\nrequest-timeout=5s\n"

    def setUp(self):
        self.start()

    def send_raw(self, frame_builder):
        msgid = self.rpc.next_id = self.rpc.next_id + 1
        self.rpc.sock.sendall(frame_builder(msgid))
        return self.rpc.wait(msgid)

    def assert_pool_intact(self):
        st = self.stats()
        self.assertEqual(st["state"], "serving", st)
        self.assertEqual(st["pool_restarts"], 0, st)
        self.assertEqual(self.rpc.call("ping"), (None, "pong"))
        self.assertEqual(self.rpc.call("execute", "echo", [1, "x"]), (None, [1, "x"]))

    def test_undecodable_args_are_bad_request_and_not_crashes(self):
        for name, args in BAD_ARGS.items():
            with self.subTest(name):
                for _ in range(50):
                    err, _ = self.send_raw(lambda i: raw_request(i, "echo", args))
                    self.assertCode(err, "bad_request")
                    self.assertNotIn("system_error", err["message"])
                st = self.stats()
                self.assertEqual(st["restarts"], 0, "a bad_request crashed a worker: %r" % st)
        self.assert_pool_intact()

    def test_handler_exceptions_that_are_hard_to_report(self):
        for command, args in (("raise_unprintable", None), ("exit", {"code": 3}),
                              ("exit", {"code": "text"})):
            with self.subTest(command):
                for _ in range(50):
                    err, _ = self.rpc.call("execute", command, args)
                    self.assertCode(err, "python_error")
        self.assertEqual(self.stats()["restarts"], 0)
        self.assert_pool_intact()

    def test_timeouts_cost_no_worker(self):
        big = "x" * (4 << 20)
        for _ in range(50):
            # A reply after the deadline is a timeout too, never a late success.
            err, _ = self.rpc.call("execute", "echo", big, {"timeout_ms": 1})
            self.assertCode(err, "timeout")
        # A request that times out on its worker is interrupted there.
        for _ in range(30):
            err, _ = self.rpc.call("execute", "sleep", {"ms": 300}, {"timeout_ms": 20})
            self.assertCode(err, "timeout")
        st = self.stats()
        self.assertEqual((st["restarts"], st["recycled"]), (0, 0), st)
        self.assert_pool_intact()

    def test_out_of_range_timeout_is_bad_request(self):
        for ms in (2**63 // 10**6, 2**62, 2**64 - 1, 30 * 86400 * 1000 + 1):
            for _ in range(50):
                err, _ = self.rpc.call("execute", "echo", 1, {"timeout_ms": ms})
                self.assertCode(err, "bad_request")
        # The largest accepted deadline is a real one, not an overflow.
        self.assertEqual(self.rpc.call("execute", "echo", 1, {"timeout_ms": 30 * 86400 * 1000}),
                         (None, 1))
        self.assert_pool_intact()


class KillStormUnderLoadTest(StormTest):
    """4 workers, a random one SIGKILLed every 300 ms for 10 s, 8 clients
    sending idempotent requests, default intensity: the pool never gives up
    and serves >= 99 % of the requests."""

    extra_ini = "[pool]\nsize=4\n"

    def test_storm_with_default_intensity(self):
        self.start()
        stop = threading.Event()
        lock = threading.Lock()
        outcomes = {"ok": 0}

        def client(n):
            rpc = Rpc(self.node.port)
            i = 0
            try:
                while not stop.is_set():
                    i += 1
                    err, res = rpc.call("execute", "echo", [n, i],
                                        {"idempotent": True, "timeout_ms": 5000})
                    key = "ok" if err is None and res == [n, i] else (err or {}).get("code", "wrong")
                    with lock:
                        outcomes[key] = outcomes.get(key, 0) + 1
            finally:
                rpc.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        rng = random.Random(10)
        kills = 0
        gave_up = False
        t0 = time.time()
        try:
            while time.time() - t0 < 10:
                st = self.stats()
                if st["state"] != "serving" or st["pool_restarts"] > 0:
                    gave_up = True
                pids = [w["pid"] for w in st["workers"] if w["pid"]]
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass
                time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        st = self.stats()
        total = sum(outcomes.values())
        ok_rate = outcomes["ok"] / float(total)
        print("\nkill storm: %d kills, %d requests, ok %.4f, outcomes %r, worker restarts %d"
              % (kills, total, ok_rate, outcomes, st["restarts"]))
        self.assertGreaterEqual(kills, 25)
        self.assertFalse(gave_up, "the pool gave up during the storm: %r" % st)
        self.assertEqual(st["pool_restarts"], 0, st)
        self.assertGreater(total, 1000)
        self.assertGreaterEqual(ok_rate, 0.99, outcomes)


class CrashLoopTest(StormTest):
    """Workers that die a few ms after every hello are a crash loop: the pool
    gives up within the intensity limit, the node answers unavailable (ping
    included) and restarts the pool with back-off, and serves again once the
    cause is gone."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.marker = os.path.join(self.tmp.name, "die")
        self.env = {"PYVISOR_TEST_DIE_MARKER": self.marker}
        self.start('[pool]\nmodules=["pyvisor.testing", "dies_after_hello"]\n'
                   "max-restarts=5\nrestart-period=10s\n"
                   "[node]\npool-restart-backoff=300ms\npool-restart-backoff-max=600ms\n")

    def tearDown(self):
        super().tearDown()
        self.tmp.cleanup()

    def test_gives_up_then_comes_back(self):
        open(self.marker, "w").close()
        for pid in [w["pid"] for w in self.stats()["workers"]]:
            os.kill(pid, signal.SIGKILL)
        t0 = time.time()
        # The pool gives up: bounded restarts, then unavailable everywhere.
        while time.time() - t0 < 10:
            st = self.stats()
            if st["pool_restarts"] >= 1:
                break
            time.sleep(0.01)
        self.assertGreaterEqual(st["pool_restarts"], 1, st)
        self.assertIn("restarts within", st["last_failure"])
        err, _ = self.rpc.call("ping")
        if err is not None:
            self.assertCode(err, "unavailable")
        # Within the next seconds, at most (max_restarts + size) worker starts
        # per pool start, and every answer is unavailable, never a CAF text.
        seen_codes = set()
        for _ in range(40):
            for method, params in (("ping", []), ("execute", ["echo", 1]),
                                   ("session.end", ["s"])):
                err, _ = self.rpc.call(method, *params)
                if err is not None:
                    seen_codes.add(err["code"])
                    self.assertNotIn("system_error", err["message"])
                    self.assertNotIn("request_receiver_down", err["message"])
            time.sleep(0.05)
        self.assertIn("unavailable", seen_codes)
        self.assertTrue(seen_codes <= {"unavailable", "worker_crashed"}, seen_codes)
        st = self.stats()
        log = self.node.read_log()
        starts = sum(1 for line in log.splitlines()
                     if "[error] worker " in line and "exit code 7" in line)
        self.assertLessEqual(starts, (5 + 2 + 1) * (st["pool_restarts"] + 1), log[-2000:])
        # The cause goes away: the node serves again on its own.
        os.unlink(self.marker)
        took = self.wait_serving(15)
        st = self.stats()
        self.assertEqual(st["state"], "serving")
        print("\ncrash loop: pool restarts %d; serving again %.2f s after the cause went away"
              % (st["pool_restarts"], took))


class SessionsAcrossPoolRestartTest(StormTest):
    def test_sessions_of_the_lost_pool_answer_session_lost(self):
        self.start("[pool]\nmax-restarts=1\n[node]\npool-restart-backoff=100ms\n")
        opts = {"session": "kept"}
        self.assertIsNone(self.rpc.call("execute", "session.put", {"key": "k", "value": 1}, opts)[0])
        # Kill workers until the pool gives up.
        t0 = time.time()
        while self.stats()["pool_restarts"] == 0 and time.time() - t0 < 10:
            for w in self.stats()["workers"]:
                if w["pid"]:
                    try:
                        os.kill(w["pid"], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.05)
        self.assertGreaterEqual(self.stats()["pool_restarts"], 1)
        self.wait_serving(10)
        err, _ = self.rpc.call("execute", "session.get", {"key": "k"}, opts)
        self.assertCode(err, "session_lost")
        # A new session works on the new pool.
        self.assertEqual(self.rpc.call("execute", "session.get", {"key": "k"}, {"session": "new"}),
                         (None, None))


class StartupFailureTest(unittest.TestCase):
    def test_an_interpreter_without_msgpack_fails_at_once(self):
        """No restart budget spent on what no restart fixes, either start method."""
        from test_node import NODE, TEST_PY
        import subprocess
        for method in ("fork-server", "spawn"):
            with tempfile.TemporaryDirectory() as tmp:
                ini = os.path.join(tmp, "node.ini")
                with open(ini, "w") as f:
                    f.write('[pool]\nstart-method="%s"\npython="%s/python-without-msgpack"\n'
                            '[rpc]\nport=0\n' % (method, TEST_PY))
                proc = subprocess.run([NODE, "--config-file=" + ini], capture_output=True,
                                      text=True, timeout=60)
                self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
                self.assertIn("has no msgpack module", proc.stderr)
                self.assertIn("install python3-msgpack", proc.stderr)
                restarts = proc.stderr.count("restarting child")
                self.assertLessEqual(restarts, 2, "%s: %s" % (method, proc.stderr[-3000:]))

    def test_a_module_that_does_not_import_stops_the_node_at_start(self):
        """Not restarted (a configuration error): exit 1 within the intensity
        limit, the Python traceback logged once, no Python process left."""
        from test_node import NODE, TEST_PY
        import subprocess
        with tempfile.TemporaryDirectory() as tmp:
            ini = os.path.join(tmp, "node.ini")
            with open(ini, "w") as f:
                f.write('[pool]\nmodules=["broken_module"]\npython-path=["%s"]\n'
                        '[rpc]\nport=0\n' % TEST_PY)
            t0 = time.time()
            proc = subprocess.Popen([NODE, "--config-file=" + ini], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            seen = set()
            while proc.poll() is None and time.time() - t0 < 30:
                seen.update(descendants_of(proc.pid))
                time.sleep(0.01)
            try:
                out, err = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
            self.assertEqual(proc.returncode, 1, err[-2000:])
            self.assertLess(time.time() - t0, 15)
            self.assertNotIn("listening on", out)
            self.assertEqual(err.count("Traceback (most recent call last)"), 1, err[-3000:])
            self.assertIn("broken on purpose", err)
            self.assertTrue(wait_gone(seen), "a Python worker outlived its node")


class ExitStatusTest(unittest.TestCase):
    def test_a_module_exiting_with_the_bootstraps_status_is_no_missing_package(self):
        """Exit status 7 means "no pyvisor package" only when the bootstrap
        says so on stderr: a user module that exits with 7 is a start-up
        failure like any other, and is reported as one."""
        from test_node import NODE, TEST_PY
        import subprocess
        with tempfile.TemporaryDirectory() as tmp:
            ini = os.path.join(tmp, "node.ini")
            with open(ini, "w") as f:
                f.write('[pool]\nmodules=["exits_at_import"]\npython-path=["%s"]\n'
                        '[rpc]\nport=0\n' % TEST_PY)
            proc = subprocess.run([NODE, "--config-file=" + ini], capture_output=True,
                                  text=True, timeout=60)
            self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
            self.assertIn("exit code 7", proc.stderr)
            self.assertNotIn("pyvisor/worker.py) is in none of", proc.stderr)


class ExitOnPoolFailureTest(StormTest):
    def test_node_exits_3_when_configured(self):
        self.start('[pool]\nmax-restarts=1\n[node]\non-pool-failure="exit"\n')
        t0 = time.time()
        while self.node.proc.poll() is None and time.time() - t0 < 10:
            try:
                for w in self.stats()["workers"]:
                    if w["pid"]:
                        os.kill(w["pid"], signal.SIGKILL)
            except (ConnectionError, OSError, ProcessLookupError):
                pass
            time.sleep(0.05)
        self.assertEqual(self.node.proc.wait(10), 3, self.node.read_log()[-2000:])
        self.assertIn("on-pool-failure=exit", self.node.read_log())


if __name__ == "__main__":
    unittest.main()
